//! The send ledger: one row per idempotency key `(enrollment, step, generation)`, the
//! server-side record of what actually went out. Owns the ledger protocol of `docs/send-path.md`:
//!
//! 1. `claim` — insert the key as SENDING (or take over a DEFERRED one). Commits on its own,
//!    *before* the sender re-checks the enrollment, so a pause or cancel that commits first is
//!    always seen by the re-check, and one that commits later can find the SENDING claim.
//! 2. `release` — nothing was sent (the re-check said no): remove the claim.
//! 3. `record_sent` / `record_deferred` / `record_failed` — one transaction each, with the
//!    step run and, for a send, the next step or the enrollment's completion.
//!
//! A SENDING row older than the lease belongs to a worker that died mid-send: it becomes
//! UNKNOWN and is never sent again automatically. Rows are never deleted except by `release`.
//!
//! **Claims are fenced.** Each claim gets its own `claim_id`, and every write that settles a
//! claim (sent, deferred, failed, unknown, release, unclaim) names it and applies only while
//! that claim still holds the key (`SENDING` with the same id). A worker whose claim expired
//! and was taken over (UNKNOWN, an operator's resend, a new claim) changes nothing and is told
//! so ([`Settled::ClaimLost`]).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

use crate::{
    db::StoreError,
    model::enrollment_status,
    schedule::{self, Rules, StepSpec, Target},
};

/// The idempotency key of one step of one enrollment generation.
pub fn idempotency_key(enrollment: Uuid, step: Uuid, generation: i32) -> String {
    format!("{enrollment}:{step}:{generation}")
}

/// The deterministic Message-ID of a key, so a relay's logs can settle what went out.
pub fn message_id(key: &str, sender_domain: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("<pulse.{hex}@{sender_domain}>")
}

/// The outcome of trying to claim a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This worker owns the send; `attempts` counts this one, and `claim` names the claim in
    /// every write that settles it.
    Claimed { attempts: i32, claim: Uuid },
    /// The key is already SENT, FAILED or UNKNOWN: nothing to do.
    Settled { state: String },
    /// Another worker holds a fresh SENDING claim.
    InFlight,
    /// A stale SENDING claim was found and marked UNKNOWN (an operator decides).
    BecameUnknown,
    /// The step run is not QUEUED (held by a pause, cancelled, or already handled).
    StaleMessage,
}

/// Claims `key` for the QUEUED step run `step_run`.
pub async fn claim(
    db: &PgPool,
    step_run: Uuid,
    key: &str,
    lease: Duration,
) -> Result<Claim, StoreError> {
    let claimed: Option<(i32, Uuid)> = sqlx::query_as(
        // The lock (by id alone) waits for a scheduler that published this run but has not
        // committed QUEUED yet, and returns the committed row; only then is the state checked.
        // A state predicate inside the locking query would be judged on the old snapshot and
        // skip the wait.
        "WITH run AS (SELECT * FROM step_runs WHERE id = $1 FOR SHARE)
         INSERT INTO send_ledger (enrollment_id, step_id, generation, idempotency_key, workspace_id,
                                  sequence_id, lead_id, step_run_id, position, state, message_id,
                                  claim_id, claimed_at)
         SELECT sr.enrollment_id, sr.step_id, sr.generation, $2, sr.workspace_id, sr.sequence_id,
                e.lead_id, sr.id, sr.position, 'SENDING', sr.message_id, gen_random_uuid(),
                clock_timestamp()
         FROM run sr JOIN enrollments e ON e.id = sr.enrollment_id
         WHERE sr.state = 'QUEUED' AND sr.message_id IS NOT NULL
         ON CONFLICT (enrollment_id, step_id, generation) DO UPDATE
             SET state = 'SENDING', attempts = send_ledger.attempts + 1,
                 claimed_at = EXCLUDED.claimed_at, claim_id = EXCLUDED.claim_id,
                 updated_at = now(), step_run_id = EXCLUDED.step_run_id
             WHERE send_ledger.state = 'DEFERRED'
         RETURNING attempts, claim_id",
    )
    .bind(step_run)
    .bind(key)
    .fetch_optional(db)
    .await?;
    if let Some((attempts, claim)) = claimed {
        return Ok(Claim::Claimed { attempts, claim });
    }
    let existing = sqlx::query(
        "SELECT state, claimed_at < now() - make_interval(secs => $2) AS stale
         FROM send_ledger WHERE idempotency_key = $1",
    )
    .bind(key)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await?;
    let Some(existing) = existing else {
        return Ok(Claim::StaleMessage);
    };
    let state: String = existing.get("state");
    match state.as_str() {
        "SENDING" if existing.get::<bool, _>("stale") => {
            expire_claims(db, Some(key), lease).await?;
            Ok(Claim::BecameUnknown)
        }
        "SENDING" => Ok(Claim::InFlight),
        // DEFERRED but the step run is not QUEUED: a stale duplicate delivery.
        "DEFERRED" => Ok(Claim::StaleMessage),
        _ => Ok(Claim::Settled { state }),
    }
}

/// One delivery's claim request, for [`claim_many`].
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub step_run: Uuid,
    pub key: String,
}

/// Claims many keys in one statement, with [`claim`]'s rules (each run is locked by id, then its
/// state is checked on the committed row). Requests the statement does not claim, and repeats
/// of a key or run already in the batch, are then settled one by one by [`claim`], so each gets
/// the same answer it would have got alone.
pub async fn claim_many(
    db: &PgPool,
    requests: &[ClaimRequest],
    lease: Duration,
) -> Result<Vec<Result<Claim, StoreError>>, StoreError> {
    let mut keys = std::collections::HashSet::new();
    let mut runs_seen = std::collections::HashSet::new();
    let (mut runs, mut batch_keys) = (Vec::new(), Vec::new());
    for r in requests {
        let new_key = keys.insert(r.key.as_str());
        let new_run = runs_seen.insert(r.step_run);
        if new_key && new_run {
            runs.push(r.step_run);
            batch_keys.push(r.key.clone());
        }
    }
    let claimed: Vec<(String, i32, Uuid)> = sqlx::query_as(
        // Same lock-by-id-then-check rule as `claim`; the rows are locked in id order.
        "WITH req AS (SELECT * FROM UNNEST($1::uuid[], $2::text[]) AS r(run_id, claim_key)),
              run AS (SELECT sr.*, req.claim_key FROM step_runs sr JOIN req ON sr.id = req.run_id
                      ORDER BY sr.id FOR SHARE OF sr)
         INSERT INTO send_ledger (enrollment_id, step_id, generation, idempotency_key, workspace_id,
                                  sequence_id, lead_id, step_run_id, position, state, message_id,
                                  claim_id, claimed_at)
         SELECT sr.enrollment_id, sr.step_id, sr.generation, sr.claim_key, sr.workspace_id,
                sr.sequence_id, e.lead_id, sr.id, sr.position, 'SENDING', sr.message_id,
                gen_random_uuid(), clock_timestamp()
         FROM run sr JOIN enrollments e ON e.id = sr.enrollment_id
         WHERE sr.state = 'QUEUED' AND sr.message_id IS NOT NULL
         ON CONFLICT (enrollment_id, step_id, generation) DO UPDATE
             SET state = 'SENDING', attempts = send_ledger.attempts + 1,
                 claimed_at = EXCLUDED.claimed_at, claim_id = EXCLUDED.claim_id,
                 updated_at = now(), step_run_id = EXCLUDED.step_run_id
             WHERE send_ledger.state = 'DEFERRED'
         RETURNING idempotency_key, attempts, claim_id",
    )
    .bind(&runs)
    .bind(&batch_keys)
    .fetch_all(db)
    .await?;
    let mut claimed: std::collections::HashMap<String, (i32, Uuid)> = claimed
        .into_iter()
        .map(|(key, attempts, claim)| (key, (attempts, claim)))
        .collect();
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        // `remove`: a repeat of a claimed key is not claimed twice.
        out.push(match claimed.remove(&r.key) {
            Some((attempts, id)) => Ok(Claim::Claimed {
                attempts,
                claim: id,
            }),
            None => claim(db, r.step_run, &r.key, lease).await,
        });
    }
    Ok(out)
}

/// Marks SENDING claims older than `lease` UNKNOWN, with their step runs (all of them, or only
/// `key`'s). Returns how many.
async fn expire_claims(db: &PgPool, key: Option<&str>, lease: Duration) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "WITH stale AS (
             UPDATE send_ledger SET state = 'UNKNOWN', updated_at = now(),
                 smtp_reply = 'worker stopped after claiming; the relay may or may not have accepted it'
             WHERE state = 'SENDING' AND claimed_at < now() - make_interval(secs => $1)
               AND ($2::text IS NULL OR idempotency_key = $2)
             RETURNING step_run_id)
         UPDATE step_runs sr SET state = 'UNKNOWN', updated_at = now(),
             last_error = 'send outcome unknown: see the send ledger'
         FROM stale WHERE sr.id = stale.step_run_id",
    )
    .bind(lease.as_secs_f64())
    .bind(key)
    .execute(db)
    .await?
    .rows_affected())
}

/// What a sweep found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// SENDING claims older than the lease, now UNKNOWN.
    pub unknown: u64,
    /// QUEUED step runs older than the lease with no claim, back to SCHEDULED.
    pub requeued: u64,
}

/// Finds stale work: a SENDING claim older than `sending_lease` belongs to a worker that died
/// mid-send and becomes UNKNOWN (never resent automatically; an operator resolves it); a step run
/// QUEUED longer than `queued_lease` with no claim lost its message and goes back to SCHEDULED to
/// be published again (a duplicate delivery, should the message still exist, is absorbed by the
/// ledger). Safe to run from any number of schedulers at once.
pub async fn sweep(
    db: &PgPool,
    sending_lease: Duration,
    queued_lease: Duration,
) -> Result<Swept, StoreError> {
    let unknown = expire_claims(db, None, sending_lease).await?;
    let requeued = sqlx::query(
        "UPDATE step_runs sr SET state = 'SCHEDULED', updated_at = now(),
             last_error = 'published again: the queued message was not handled in time'
         WHERE sr.state = 'QUEUED' AND sr.queued_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM send_ledger sl
                           WHERE sl.step_run_id = sr.id AND sl.state = 'SENDING')",
    )
    .bind(queued_lease.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected();
    Ok(Swept { unknown, requeued })
}

/// How an operator settles an UNKNOWN send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The relay's logs show it went out: record it SENT and move the enrollment on.
    Sent,
    /// It did not go out: send it again (a new attempt under the same key).
    Resend,
}

/// Settles an UNKNOWN key; returns the step run's enrollment and sequence, or `None` when the key
/// is not UNKNOWN (or does not exist).
pub async fn resolve(
    db: &PgPool,
    workspace: Uuid,
    key: &str,
    how: Resolution,
    note: &str,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "SELECT sl.step_run_id, sl.enrollment_id, sl.sequence_id FROM send_ledger sl
         WHERE sl.idempotency_key = $1 AND sl.workspace_id = $2 AND sl.state = 'UNKNOWN' FOR UPDATE",
    )
    .bind(key)
    .bind(workspace)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let run: Uuid = row.get("step_run_id");
    match how {
        Resolution::Sent => {
            // The edit lock before any write: the next step is read below.
            schedule::lock_sequences(&mut tx, &[row.get("sequence_id")]).await?;
            sqlx::query(
                "UPDATE send_ledger SET state = 'SENT', sent_at = claimed_at, smtp_reply = $2,
                     updated_at = now() WHERE idempotency_key = $1",
            )
            .bind(key)
            .bind(note)
            .execute(&mut *tx)
            .await?;
            let sent = sqlx::query(
                "UPDATE step_runs sr SET state = 'SENT', sent_at = sl.claimed_at, last_error = NULL,
                     updated_at = now()
                 FROM send_ledger sl, enrollments e
                 WHERE sr.id = $1 AND sl.step_run_id = sr.id AND e.id = sr.enrollment_id
                 RETURNING sr.workspace_id, sr.sequence_id, sr.enrollment_id, sr.step_id,
                           sr.generation, e.lead_id, e.status, sl.claimed_at",
            )
            .bind(run)
            .fetch_one(&mut *tx)
            .await?;
            if sent.get::<String, _>("status") == enrollment_status::ACTIVE {
                let target = Target {
                    workspace: sent.get("workspace_id"),
                    sequence: sent.get("sequence_id"),
                    enrollment: sent.get("enrollment_id"),
                    lead: sent.get("lead_id"),
                    generation: sent.get("generation"),
                };
                schedule::advance(&mut tx, target, sent.get("step_id"), sent.get("claimed_at"))
                    .await?;
            }
        }
        Resolution::Resend => {
            sqlx::query(
                "UPDATE send_ledger SET state = 'DEFERRED', smtp_reply = $2, updated_at = now()
                 WHERE idempotency_key = $1",
            )
            .bind(key)
            .bind(note)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE step_runs SET state = 'SCHEDULED', due_at = now(), last_error = $2,
                     updated_at = now() WHERE id = $1",
            )
            .bind(run)
            .bind(note)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Some((row.get("enrollment_id"), row.get("sequence_id"))))
}

/// The claimed step run's content snapshot and the state of everything it depends on, read
/// after the claim committed.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub subject: String,
    pub body: String,
    pub from_addr: String,
    pub to_addr: String,
    pub message_id: String,
    pub enrollment_status: String,
    pub sequence_status: String,
    pub lead_suppressed: bool,
    /// What follows this step, read in the same query, for [`record_sent`]'s fast path.
    pub followup: Followup,
}

/// The step after a claimed one and the rules that time it, as read with the snapshot. If the
/// sequence and that step are unchanged when the send is recorded (same versions), recording and
/// scheduling the next step take one statement; otherwise the full transaction recomputes.
#[derive(Clone, Debug)]
pub struct Followup {
    pub sequence: Uuid,
    pub sequence_version: i32,
    pub rules: Rules,
    pub lead_tz: Option<chrono_tz::Tz>,
    /// The next live step and its version; `None` when this is the last step.
    pub next: Option<(StepSpec, i32)>,
}

impl Followup {
    /// When the send window (in the lead's zone, else the sequence's) next opens, if it is
    /// closed at `now`: the same rule every due time goes through, checked again at send time.
    pub fn window_opens_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let zone = self.lead_tz.unwrap_or(self.rules.timezone);
        let at = crate::domain::window::next_valid(now, self.rules.window.as_ref(), zone);
        (at > now).then_some(at)
    }
}

/// Loads the snapshot of a claimed step run.
pub async fn snapshot(db: &PgPool, step_run: Uuid) -> Result<Snapshot, StoreError> {
    let mut all = snapshot_many(db, &[step_run]).await?;
    all.pop().unwrap_or_else(|| {
        Err(StoreError::Corrupt(format!(
            "step run {step_run} not found"
        )))
    })
}

/// Loads the snapshots of many claimed step runs in one query, one result per id, in order.
pub async fn snapshot_many(
    db: &PgPool,
    step_runs: &[Uuid],
) -> Result<Vec<Result<Snapshot, StoreError>>, StoreError> {
    let rows = sqlx::query(
        "SELECT sr.id, sr.subject, sr.body, sr.from_addr, sr.to_addr, sr.message_id, sr.sequence_id,
                e.status AS enrollment_status, s.status AS sequence_status,
                (l.unsubscribed_at IS NOT NULL OR l.bounced_at IS NOT NULL) AS suppressed,
                s.version AS sequence_version, s.timezone, s.send_window, s.end_date,
                l.timezone AS lead_tz, nx.id AS next_id, nx.position AS next_position,
                nx.timing AS next_timing, nx.end_date AS next_end_date, nx.version AS next_version
         FROM step_runs sr
         JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN sequences s ON s.id = sr.sequence_id
         JOIN leads l ON l.id = e.lead_id
         JOIN sequence_steps cur ON cur.id = sr.step_id
         LEFT JOIN LATERAL (
             SELECT st.id, st.position, st.timing, st.end_date, st.version FROM sequence_steps st
             WHERE st.sequence_id = sr.sequence_id AND st.position > cur.position
               AND st.deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM step_runs r WHERE r.enrollment_id = sr.enrollment_id
                               AND r.generation = sr.generation AND r.step_id = st.id)
             ORDER BY st.position LIMIT 1) nx ON true
         WHERE sr.id = ANY($1)",
    )
    .bind(step_runs)
    .fetch_all(db)
    .await?;
    let mut by_id = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        by_id.insert(row.try_get::<Uuid, _>("id")?, row);
    }
    Ok(step_runs
        .iter()
        .map(|id| match by_id.get(id) {
            Some(row) => snapshot_from_row(row, *id),
            None => Err(StoreError::Corrupt(format!("step run {id} not found"))),
        })
        .collect())
}

fn snapshot_from_row(row: &sqlx::postgres::PgRow, step_run: Uuid) -> Result<Snapshot, StoreError> {
    let text = |col: &str| -> Result<String, StoreError> {
        row.try_get::<Option<String>, _>(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("queued step run {step_run} has no {col}")))
    };
    let next = match row.try_get::<Option<Uuid>, _>("next_id")? {
        None => None,
        Some(id) => Some((
            StepSpec {
                id,
                position: row.try_get("next_position")?,
                timing: serde_json::from_value(row.try_get("next_timing")?)
                    .map_err(|e| StoreError::Corrupt(format!("step timing: {e}")))?,
                end_date: row.try_get("next_end_date")?,
            },
            row.try_get("next_version")?,
        )),
    };
    Ok(Snapshot {
        subject: text("subject")?,
        body: text("body")?,
        from_addr: text("from_addr")?,
        to_addr: text("to_addr")?,
        message_id: text("message_id")?,
        enrollment_status: row.try_get("enrollment_status")?,
        sequence_status: row.try_get("sequence_status")?,
        lead_suppressed: row.try_get("suppressed")?,
        followup: Followup {
            sequence: row.try_get("sequence_id")?,
            sequence_version: row.try_get("sequence_version")?,
            rules: schedule::rules_from_row(row)?,
            lead_tz: schedule::lead_zone(row.try_get("lead_tz")?),
            next,
        },
    })
}

/// What to do with a step run whose claim is released unsent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Back to SCHEDULED: the sequence is paused (due as before; resume picks it up), or the
    /// send window is closed (due at its next opening).
    Hold(Option<DateTime<Utc>>),
    /// The enrollment ended or the sequence was deleted: the step will never be sent.
    Cancel,
    /// The lead is unsubscribed or bounced.
    Skip,
}

/// What became of a write that settles a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Settled {
    /// The claim was still this worker's: the write applied.
    Recorded,
    /// The claim had expired and was taken over (UNKNOWN, resent, claimed again): nothing
    /// changed. The worker must not act on the key any further.
    ClaimLost,
}

/// The claim a write settles: the key and the claim's id from [`Claim::Claimed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub claim: Uuid,
}

/// Locks the ledger row of `fence` if the claim still holds it. Every settling write starts
/// with this, in its transaction.
async fn own(conn: &mut sqlx::PgConnection, fence: &Fence) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar::<_, i32>(
        "SELECT 1 FROM send_ledger
         WHERE idempotency_key = $1 AND claim_id = $2 AND state = 'SENDING' FOR UPDATE",
    )
    .bind(&fence.key)
    .bind(fence.claim)
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// Undoes a claim that was not sent (see [`unclaim`]), and settles the step run as `how` says.
pub async fn release(
    db: &PgPool,
    fence: &Fence,
    step_run: Uuid,
    how: Release,
    reason: &str,
) -> Result<Settled, StoreError> {
    let (state, until) = match how {
        Release::Hold(until) => ("SCHEDULED", until),
        Release::Cancel => ("CANCELLED", None),
        Release::Skip => ("SKIPPED", None),
    };
    let mut tx = db.begin().await?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    unclaim_in(&mut tx, &fence.key).await?;
    sqlx::query(
        "UPDATE step_runs SET state = $2, last_error = $3, due_at = COALESCE($4, due_at),
             updated_at = now()
         WHERE id = $1 AND state = 'QUEUED'",
    )
    .bind(step_run)
    .bind(state)
    .bind(reason)
    .bind(until)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Settled::Recorded)
}

/// Undoes a claim taken before any SMTP attempt (the re-check could not be read): a first claim
/// is removed; a DEFERRED key that was taken over goes back to DEFERRED, this non-attempt not
/// counted. A later delivery can then claim it again instead of finding it "in flight".
pub async fn unclaim(db: &PgPool, fence: &Fence) -> Result<Settled, StoreError> {
    let mut tx = db.begin().await?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    unclaim_in(&mut tx, &fence.key).await?;
    tx.commit().await?;
    Ok(Settled::Recorded)
}

/// The unclaim itself; the caller has checked the fence in the same transaction.
async fn unclaim_in(conn: &mut sqlx::PgConnection, key: &str) -> Result<(), StoreError> {
    sqlx::query(
        "WITH first AS (
             DELETE FROM send_ledger WHERE idempotency_key = $1 AND state = 'SENDING' AND attempts = 1
             RETURNING 1)
         UPDATE send_ledger SET state = 'DEFERRED', attempts = attempts - 1, updated_at = now()
         WHERE idempotency_key = $1 AND state = 'SENDING' AND attempts > 1",
    )
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts a step run back to SCHEDULED without touching the ledger, before any claim was made: a
/// paused sequence (`until` None: due as before) or a spent rate budget (`until` the minute
/// with room). A later time goes through the one rule for due times ([`schedule::plan`]): it is
/// moved into the send window, and a step that can then no longer go out before an end date is
/// skipped and its enrollment ends.
///
/// The message may arrive before the scheduler has committed QUEUED. The row lock waits for
/// that commit, and the update, a later statement, then sees it; a single `UPDATE … WHERE state =
/// 'QUEUED'` would judge the old snapshot, change nothing, and leave the run QUEUED for ever.
pub async fn hold(
    db: &PgPool,
    step_run: Uuid,
    until: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "SELECT sr.state, sr.enrollment_id, sr.sequence_id, sr.position, e.lead_id,
                st.end_date AS step_end
         FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN sequence_steps st ON st.id = sr.step_id
         WHERE sr.id = $1 FOR UPDATE OF sr",
    )
    .bind(step_run)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    if row.try_get::<&str, _>("state")? != "QUEUED" {
        return Ok(());
    }
    let mut due = None;
    if let Some(until) = until {
        let (rules, lead_tz) = schedule::load_rules(
            &mut tx,
            row.try_get("sequence_id")?,
            row.try_get("lead_id")?,
        )
        .await?;
        match schedule::plan(
            until,
            &rules,
            lead_tz,
            row.try_get("position")?,
            row.try_get("step_end")?,
        ) {
            schedule::Planned::At(at) => due = Some(at),
            schedule::Planned::Expired(reason) => {
                schedule::skip_and_end(&mut tx, step_run, row.try_get("enrollment_id")?, &reason)
                    .await?;
                tx.commit().await?;
                return Ok(());
            }
        }
    }
    sqlx::query(
        "UPDATE step_runs SET state = 'SCHEDULED', due_at = COALESCE($2, due_at), updated_at = now()
         WHERE id = $1",
    )
    .bind(step_run)
    .bind(due)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The relay's answer to a send.
#[derive(Clone, Debug)]
pub struct Reply {
    pub code: Option<i32>,
    pub text: String,
}

/// Records a send the relay accepted, and atomically schedules the next step (or completes the
/// enrollment). With the snapshot's `followup` this is one statement when nothing changed since
/// the snapshot; otherwise (or without one) a transaction that recomputes from current data.
pub async fn record_sent(
    db: &PgPool,
    fence: &Fence,
    step_run: Uuid,
    reply: &Reply,
    now: DateTime<Utc>,
    followup: Option<&Followup>,
) -> Result<Settled, StoreError> {
    if let Some(f) = followup {
        let sent = SentRecord {
            fence: fence.clone(),
            step_run,
            reply: reply.clone(),
            at: now,
            followup: f.clone(),
        };
        if let Some(settled) = record_sent_unchanged(db, std::slice::from_ref(&sent))
            .await?
            .remove(&fence.key)
        {
            return Ok(settled);
        }
    }
    let mut tx = db.begin().await?;
    let sequence: Option<Uuid> =
        sqlx::query_scalar("SELECT sequence_id FROM step_runs WHERE id = $1")
            .bind(step_run)
            .fetch_optional(&mut *tx)
            .await?;
    let sequence =
        sequence.ok_or_else(|| StoreError::Corrupt(format!("step run {step_run} not found")))?;
    // The edit lock first: the next step is read below, after any edit has committed.
    schedule::lock_sequences(&mut tx, &[sequence]).await?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    sqlx::query(
        "UPDATE send_ledger SET state = 'SENT', smtp_code = $2, smtp_reply = $3, sent_at = $4,
             updated_at = now()
         WHERE idempotency_key = $1",
    )
    .bind(&fence.key)
    .bind(reply.code)
    .bind(&reply.text)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let run = sqlx::query(
        "UPDATE step_runs sr SET state = 'SENT', sent_at = $2, last_error = NULL, updated_at = now()
         FROM enrollments e WHERE sr.id = $1 AND e.id = sr.enrollment_id
         RETURNING sr.workspace_id, sr.sequence_id, sr.enrollment_id, sr.step_id, sr.generation,
                   e.lead_id",
    )
    .bind(step_run)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let enrollment: Uuid = run.get("enrollment_id");
    // Lock the enrollment: a concurrent cancel either happened before (no next step) or waits.
    let status: String =
        sqlx::query_scalar("SELECT status FROM enrollments WHERE id = $1 FOR UPDATE")
            .bind(enrollment)
            .fetch_one(&mut *tx)
            .await?;
    if status == enrollment_status::ACTIVE {
        let target = Target {
            workspace: run.get("workspace_id"),
            sequence: run.get("sequence_id"),
            enrollment,
            lead: run.get("lead_id"),
            generation: run.get("generation"),
        };
        schedule::advance(&mut tx, target, run.get("step_id"), now).await?;
    }
    tx.commit().await?;
    Ok(Settled::Recorded)
}

/// A send the relay accepted, with what the snapshot read about the step after it.
#[derive(Clone, Debug)]
pub struct SentRecord {
    pub fence: Fence,
    pub step_run: Uuid,
    pub reply: Reply,
    pub at: DateTime<Utc>,
    pub followup: Followup,
}

/// Records many accepted sends: one statement for every send whose sequence and next step are
/// unchanged since its snapshot, then [`record_sent`]'s transaction for each of the others. One
/// result per record, in order.
pub async fn record_sent_many(
    db: &PgPool,
    records: &[SentRecord],
) -> Result<Vec<Result<Settled, StoreError>>, StoreError> {
    let mut settled = record_sent_unchanged(db, records).await?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        out.push(match settled.remove(&r.fence.key) {
            Some(s) => Ok(s),
            None => record_sent(db, &r.fence, r.step_run, &r.reply, r.at, None).await,
        });
    }
    Ok(out)
}

/// The one-statement record, for many sends at once: each send's writes are conditioned on its
/// claim still being its own, and on its sequence and next step still having the versions its
/// snapshot read, so each applies whole or not at all. The sequence rows are locked
/// `FOR KEY SHARE` inside the statement (see [`schedule::lock_sequences`]): an edit committed
/// before the lock was taken shows as a new version (the row is re-read after the wait), and
/// one not yet begun waits for this statement. Returns, per key it settled, whether it applied
/// or found its claim lost; keys it left alone (edited meanwhile, or a next step that could not
/// be planned here) go through [`record_sent`]'s transaction. A cancel committed meanwhile is
/// honoured: an enrollment is only moved on while ACTIVE (its row lock makes a concurrent
/// cancel wait or win).
async fn record_sent_unchanged(
    db: &PgPool,
    records: &[SentRecord],
) -> Result<std::collections::HashMap<String, Settled>, StoreError> {
    let n = records.len();
    let mut keys = Vec::with_capacity(n);
    let mut claims = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    let mut sent_at = Vec::with_capacity(n);
    let mut runs = Vec::with_capacity(n);
    let mut sequences = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut next_ids = Vec::with_capacity(n);
    let mut next_versions = Vec::with_capacity(n);
    let mut next_positions = Vec::with_capacity(n);
    let mut dues = Vec::with_capacity(n);
    let mut skips = Vec::with_capacity(n);
    let mut new_ids = Vec::with_capacity(n);
    for r in records {
        let f = &r.followup;
        let (next_id, next_position, next_version, due, skipped) = match &f.next {
            None => (None, None, None, None, None),
            Some((step, version)) => {
                // A step that cannot be planned here goes through the full transaction.
                let Ok((due, skipped)) = schedule::plan_run(step, r.at, &f.rules, f.lead_tz) else {
                    continue;
                };
                (
                    Some(step.id),
                    Some(step.position),
                    Some(*version),
                    Some(due),
                    skipped,
                )
            }
        };
        keys.push(r.fence.key.clone());
        claims.push(r.fence.claim);
        codes.push(r.reply.code);
        replies.push(r.reply.text.clone());
        sent_at.push(r.at);
        runs.push(r.step_run);
        sequences.push(f.sequence);
        versions.push(f.sequence_version);
        next_ids.push(next_id);
        next_versions.push(next_version);
        next_positions.push(next_position);
        dues.push(due);
        skips.push(skipped);
        new_ids.push(Uuid::new_v4());
    }
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let settled: Vec<(String, bool)> = sqlx::query_as(
        "WITH req AS (
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::timestamptz[],
                                  $5::uuid[], $6::uuid[], $7::int4[], $8::uuid[], $9::int4[],
                                  $10::int4[], $11::timestamptz[], $12::text[], $13::uuid[],
                                  $14::uuid[])
                 AS r(key, code, reply, sent_at, run_id, seq_id, seq_version, next_id,
                      next_version, next_position, due, skipped, new_id, claim)),
         fresh AS (
             SELECT req.* FROM req JOIN sequences s ON s.id = req.seq_id AND s.version = req.seq_version
             WHERE req.next_id IS NULL OR EXISTS (
                 SELECT 1 FROM sequence_steps st
                 WHERE st.id = req.next_id AND st.deleted_at IS NULL AND st.version = req.next_version)
             ORDER BY s.id
             FOR KEY SHARE OF s),
         ledger AS (
             UPDATE send_ledger sl SET state = 'SENT', smtp_code = f.code, smtp_reply = f.reply,
                 sent_at = f.sent_at, updated_at = now()
             FROM fresh f
             WHERE sl.idempotency_key = f.key AND sl.claim_id = f.claim AND sl.state = 'SENDING'
             RETURNING f.*),
         run AS (
             UPDATE step_runs sr SET state = 'SENT', sent_at = f.sent_at, last_error = NULL,
                 updated_at = now()
             FROM ledger f WHERE sr.id = f.run_id
             RETURNING sr.id, sr.workspace_id, sr.sequence_id, sr.enrollment_id, sr.generation),
         enr AS (
             UPDATE enrollments e SET
                 current_step = COALESCE(f.next_position, e.current_step),
                 status = CASE WHEN f.next_id IS NULL OR f.skipped IS NOT NULL THEN 'COMPLETED' ELSE e.status END,
                 end_reason = CASE WHEN f.next_id IS NULL THEN 'all steps sent' ELSE f.skipped END,
                 ended_at = CASE WHEN f.next_id IS NULL OR f.skipped IS NOT NULL THEN now() END,
                 updated_at = now()
             FROM run JOIN ledger f ON f.run_id = run.id
             WHERE e.id = run.enrollment_id AND e.status = 'ACTIVE'
             RETURNING e.id),
         ins AS (
             INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position,
                                    generation, due_at, state, last_error)
             SELECT f.new_id, run.workspace_id, run.sequence_id, run.enrollment_id, f.next_id,
                    f.next_position, run.generation, f.due,
                    CASE WHEN f.skipped IS NULL THEN 'SCHEDULED' ELSE 'SKIPPED' END, f.skipped
             FROM run JOIN ledger f ON f.run_id = run.id JOIN enr ON enr.id = run.enrollment_id
             WHERE f.next_id IS NOT NULL
             ON CONFLICT (enrollment_id, step_id, generation) DO NOTHING)
         SELECT f.key, l.key IS NOT NULL FROM fresh f LEFT JOIN ledger l ON l.key = f.key",
    )
    .bind(&keys)
    .bind(&codes)
    .bind(&replies)
    .bind(&sent_at)
    .bind(&runs)
    .bind(&sequences)
    .bind(&versions)
    .bind(&next_ids)
    .bind(&next_versions)
    .bind(&next_positions)
    .bind(&dues)
    .bind(&skips)
    .bind(&new_ids)
    .bind(&claims)
    .fetch_all(db)
    .await?;
    Ok(settled
        .into_iter()
        .map(|(key, applied)| {
            let how = if applied {
                Settled::Recorded
            } else {
                Settled::ClaimLost
            };
            (key, how)
        })
        .collect())
}

/// Writes the relay's answer and a failure state (DEFERRED, FAILED, UNKNOWN) on a claim the
/// caller has checked with [`own`].
async fn set_outcome(
    conn: &mut sqlx::PgConnection,
    key: &str,
    state: &str,
    reply: &Reply,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE send_ledger SET state = $2, smtp_code = $3, smtp_reply = $4, updated_at = now()
         WHERE idempotency_key = $1",
    )
    .bind(key)
    .bind(state)
    .bind(reply.code)
    .bind(&reply.text)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a transient failure: nothing went out; the step run is due again at `retry_at`.
pub async fn record_deferred(
    db: &PgPool,
    fence: &Fence,
    step_run: Uuid,
    reply: &Reply,
    retry_at: DateTime<Utc>,
) -> Result<Settled, StoreError> {
    let mut tx = db.begin().await?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    set_outcome(&mut tx, &fence.key, "DEFERRED", reply).await?;
    sqlx::query(
        "UPDATE step_runs SET state = 'SCHEDULED', due_at = $2, attempts = attempts + 1,
             last_error = $3, updated_at = now()
         WHERE id = $1",
    )
    .bind(step_run)
    .bind(retry_at)
    .bind(&reply.text)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Settled::Recorded)
}

/// Records a send whose outcome is unknown (the message was on the wire, the answer was lost):
/// ledger and step run UNKNOWN, never retried automatically; an operator settles it.
pub async fn record_unknown(
    db: &PgPool,
    fence: &Fence,
    step_run: Uuid,
    reply: &Reply,
) -> Result<Settled, StoreError> {
    let mut tx = db.begin().await?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    set_outcome(&mut tx, &fence.key, "UNKNOWN", reply).await?;
    sqlx::query(
        "UPDATE step_runs SET state = 'UNKNOWN', attempts = attempts + 1,
             last_error = 'send outcome unknown: see the send ledger', updated_at = now()
         WHERE id = $1",
    )
    .bind(step_run)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Settled::Recorded)
}

/// Records a permanent failure: the step run and the enrollment are FAILED with the reply.
pub async fn record_failed(
    db: &PgPool,
    fence: &Fence,
    step_run: Uuid,
    reply: &Reply,
) -> Result<Settled, StoreError> {
    let mut tx = db.begin().await?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    set_outcome(&mut tx, &fence.key, "FAILED", reply).await?;
    let enrollment: Uuid = sqlx::query_scalar(
        "UPDATE step_runs SET state = 'FAILED', attempts = attempts + 1, last_error = $2,
             updated_at = now()
         WHERE id = $1 RETURNING enrollment_id",
    )
    .bind(step_run)
    .bind(&reply.text)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE enrollments SET status = 'FAILED', end_reason = $2, ended_at = now(),
             updated_at = now()
         WHERE id = $1 AND status = 'ACTIVE'",
    )
    .bind(enrollment)
    .bind(format!("send failed: {}", reply.text))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Settled::Recorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_message_ids_are_deterministic() {
        let (e, s) = (Uuid::from_u128(7), Uuid::from_u128(9));
        let k = idempotency_key(e, s, 2);
        assert_eq!(k, idempotency_key(e, s, 2));
        assert_ne!(k, idempotency_key(e, s, 3), "a new generation is a new key");
        let m = message_id(&k, "example.com");
        assert_eq!(m, message_id(&k, "example.com"));
        assert!(m.starts_with("<pulse.") && m.ends_with("@example.com>"));
        assert_ne!(m, message_id(&idempotency_key(e, s, 3), "example.com"));
    }
}
