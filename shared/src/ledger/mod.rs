//! The send ledger: one row per idempotency key `(enrollment, step, generation)`, the
//! server-side record of what actually went out. Owns the ledger protocol of `docs/send-path.md`:
//!
//! 1. Before the send, nothing is written: the sender reads the run's [`snapshot`] and checks it
//!    ([`Status::refusal`]); a refused run is settled unclaimed (`unclaimed`).
//! 2. `claim` — at the gate, once the message body is out and before its final dot: insert the
//!    key as SENDING (or take over a DEFERRED one), naming the worker that owns it and marked as
//!    on the wire (`wire_at`). It commits on its own, *before* the sender re-checks the run
//!    ([`recheck_many`]), so a pause or cancel that commits first is always seen by the
//!    re-check, and one that commits later finds the SENDING claim and waits for it. Only then
//!    does the final dot follow. A claim is therefore made only when the relay may receive the
//!    message: the window RFC 1047 describes.
//! 3. `release` — the re-check said no: remove the claim; no dot is sent.
//! 4. `record_sent` / `record_deferred` / `record_failed` / `record_unknown` — one transaction
//!    each, with the step run and, for a send, the next step or the enrollment's completion.
//!
//! A stale SENDING claim ([`Leases`]: its owner stopped heartbeating, or a lease ran out) becomes
//! UNKNOWN, never sent again automatically. A claim without a wire mark was made by a sender of
//! an earlier version (which claimed before connecting) and sent nothing yet: it is given back
//! (sent again, no operator needed), so a rolling upgrade strands nothing. Rows are never
//! deleted except by `release` and a give-back.
//!
//! **Claims are fenced.** Each claim gets its own `claim_id`, and every write that settles a
//! claim (sent, deferred, failed, unknown, release, unclaim) names it and applies only while
//! that claim still holds the key (`SENDING` with the same id). A worker whose claim expired
//! and was taken over (UNKNOWN, an operator's resend, a new claim) changes nothing and is told
//! so ([`Settled::ClaimLost`]).
//!
//! The module is in four parts: this one (keys, claims, the sweep and an operator's resolve),
//! `snapshot` (what a sender reads before sending and re-checks after claiming), `settle`
//! (every write that settles a claim) and `unclaimed` (what settles a run no claim was made
//! for: held, cancelled, deferred or failed before the gate).

mod settle;
mod snapshot;
mod unclaimed;

pub use settle::*;
pub use snapshot::*;
pub use unclaimed::*;

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

use crate::{db::StoreError, schedule, state::LedgerState};

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
    Settled { state: LedgerState },
    /// Another worker holds a fresh SENDING claim.
    InFlight,
    /// A stale SENDING claim was found and marked UNKNOWN (an operator decides).
    BecameUnknown,
    /// The step run is not QUEUED (held by a pause, cancelled, or already handled).
    StaleMessage,
}

/// Claims `key` for the QUEUED step run `step_run`, on behalf of worker `owner`
/// (`crate::workers`), marked as on the wire: a sender claims at the gate, with the body out
/// and the final dot held. A stale claim found on the key is settled first ([`Leases`]).
pub async fn claim(
    db: &PgPool,
    step_run: Uuid,
    key: &str,
    leases: &Leases,
    owner: Uuid,
) -> Result<Claim, StoreError> {
    let claimed = match insert_claims(db, &[step_run], &[key.to_owned()], owner).await {
        Ok(mut claimed) => claimed.remove(key),
        // A concurrent claim of the same key won the race on its unique index.
        Err(e) if lost_race(&e) => None,
        Err(e) => return Err(e),
    };
    if let Some((attempts, claim)) = claimed {
        return Ok(Claim::Claimed { attempts, claim });
    }
    let existing: Option<LedgerState> =
        sqlx::query_scalar("SELECT state FROM send_ledger WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(db)
            .await?;
    let Some(state) = existing else {
        return Ok(Claim::StaleMessage);
    };
    match state {
        LedgerState::Sending => {
            let settled = settle_stale(db, Some(key), leases).await?;
            if settled.unknown > 0 {
                Ok(Claim::BecameUnknown)
            } else if settled.given_back > 0 {
                // Its step run is SCHEDULED again: this delivery is an old copy.
                Ok(Claim::StaleMessage)
            } else {
                Ok(Claim::InFlight)
            }
        }
        // DEFERRED but the step run is not QUEUED: a stale duplicate delivery.
        LedgerState::Deferred => Ok(Claim::StaleMessage),
        LedgerState::Sent
        | LedgerState::Failed
        | LedgerState::Unknown
        | LedgerState::Bounced
        | LedgerState::Complained => Ok(Claim::Settled { state }),
    }
}

/// One delivery's claim request, for [`claim_many`].
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub step_run: Uuid,
    pub key: String,
}

/// The claim statement, for one run or many: inserts each key as SENDING, on the wire, for
/// worker `owner`
/// (or takes over a DEFERRED one) where its run is QUEUED. Each run is locked by id alone, in id
/// order: the lock waits for a scheduler that published the run but has not committed QUEUED
/// yet and returns the committed row; only then is the state checked (a state predicate inside
/// the locking query would be judged on the old snapshot and skip the wait). Returns the keys
/// claimed, with their attempts and claim ids. `runs` and `keys` are pairs, each unique.
async fn insert_claims(
    db: &PgPool,
    runs: &[Uuid],
    keys: &[String],
    owner: Uuid,
) -> Result<std::collections::HashMap<String, (i32, Uuid)>, StoreError> {
    let claimed: Vec<(String, i32, Uuid)> = sqlx::query_as(
        "WITH req AS (SELECT * FROM UNNEST($1::uuid[], $2::text[]) AS r(run_id, claim_key)),
              run AS (SELECT sr.*, req.claim_key FROM step_runs sr JOIN req ON sr.id = req.run_id
                      ORDER BY sr.id FOR SHARE OF sr)
         INSERT INTO send_ledger (enrollment_id, step_id, generation, idempotency_key, workspace_id,
                                  sequence_id, lead_id, step_run_id, position, state, message_id,
                                  claim_id, claimed_at, owner_id, wire_at)
         SELECT sr.enrollment_id, sr.step_id, sr.generation, sr.claim_key, sr.workspace_id,
                sr.sequence_id, e.lead_id, sr.id, sr.position, 'SENDING', sr.message_id,
                gen_random_uuid(), clock_timestamp(), $3, clock_timestamp()
         FROM run sr JOIN enrollments e ON e.id = sr.enrollment_id
         WHERE sr.state = 'QUEUED' AND sr.message_id IS NOT NULL
         ON CONFLICT (enrollment_id, step_id, generation) DO UPDATE
             SET state = 'SENDING', attempts = send_ledger.attempts + 1,
                 claimed_at = EXCLUDED.claimed_at, claim_id = EXCLUDED.claim_id,
                 owner_id = EXCLUDED.owner_id, wire_at = EXCLUDED.wire_at,
                 updated_at = now(), step_run_id = EXCLUDED.step_run_id
             WHERE send_ledger.state = 'DEFERRED'
         RETURNING idempotency_key, attempts, claim_id",
    )
    .bind(runs)
    .bind(keys)
    .bind(owner)
    .fetch_all(db)
    .await?;
    Ok(claimed
        .into_iter()
        .map(|(key, attempts, claim)| (key, (attempts, claim)))
        .collect())
}

/// Whether `e` is a unique violation: two claims of one key inserted at the same moment. `ON
/// CONFLICT` takes over a row only through its arbiter (the key's columns); the same key's
/// second unique index (`idempotency_key`) can still refuse the loser, which then reads the
/// winner's row like any claim that found one.
fn lost_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505"))
}

/// Claims many keys in one statement, with [`claim`]'s rules (each run is locked by id, then its
/// state is checked on the committed row). Requests the statement does not claim, and repeats
/// of a key or run already in the batch, are then settled one by one by [`claim`], so each gets
/// the same answer it would have got alone.
pub async fn claim_many(
    db: &PgPool,
    requests: &[ClaimRequest],
    leases: &Leases,
    owner: Uuid,
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
    let mut claimed = match insert_claims(db, &runs, &batch_keys, owner).await {
        Ok(claimed) => claimed,
        // Another claim of one of these keys raced this statement: each is claimed alone.
        Err(e) if lost_race(&e) => Default::default(),
        Err(e) => return Err(e),
    };
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        // `remove`: a repeat of a claimed key is not claimed twice.
        out.push(match claimed.remove(&r.key) {
            Some((attempts, id)) => Ok(Claim::Claimed {
                attempts,
                claim: id,
            }),
            None => claim(db, r.step_run, &r.key, leases, owner).await,
        });
    }
    Ok(out)
}

/// What the gate found for one send ([`gate_many`]).
#[derive(Debug)]
pub enum Gated {
    /// This worker owns the send; `status` is the run's state read after the claim committed:
    /// the final dot may follow only if [`Status::refusal`] says nothing.
    Claimed { fence: Fence, status: Status },
    /// Claimed, but the re-check could not be read: the caller gives the claim back
    /// ([`unclaim`]) and sends no dot.
    Unchecked { fence: Fence, error: String },
    /// Not claimed ([`claim`]'s answer): this delivery sends nothing.
    NotClaimed(Claim),
}

/// The gate, for many sends whose bodies are out and whose final dots are held: claims each key
/// ([`claim_many`]), which commits, and only then reads the claimed runs' state again
/// ([`recheck_many`]), so a pause, cancel or suppression that committed before the re-check is
/// seen, and one that commits after it finds the claim and waits for it. One result per request,
/// in order. `Err` means nothing was claimed; once claims are made, a failed re-check is
/// reported per claim ([`Gated::Unchecked`]), never as `Err`.
pub async fn gate_many(
    db: &PgPool,
    requests: &[ClaimRequest],
    leases: &Leases,
    owner: Uuid,
) -> Result<Vec<Result<Gated, StoreError>>, StoreError> {
    let claims = claim_many(db, requests, leases, owner).await?;
    let claimed: Vec<Uuid> = requests
        .iter()
        .zip(&claims)
        .filter(|(_, c)| matches!(c, Ok(Claim::Claimed { .. })))
        .map(|(r, _)| r.step_run)
        .collect();
    let mut rechecked = if claimed.is_empty() {
        Ok(Vec::new())
    } else {
        recheck_many(db, &claimed).await
    }
    .map(|statuses| statuses.into_iter());
    Ok(requests
        .iter()
        .zip(claims)
        .map(|(r, c)| {
            let claim = match c? {
                Claim::Claimed { claim, .. } => claim,
                other => return Ok(Gated::NotClaimed(other)),
            };
            let fence = Fence {
                key: r.key.clone(),
                claim,
            };
            let status = match &mut rechecked {
                Ok(statuses) => match statuses.next() {
                    Some(Ok(status)) => Ok(status),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("no re-check for a claimed run".to_owned()),
                },
                Err(e) => Err(e.to_string()),
            };
            Ok(match status {
                Ok(status) => Gated::Claimed { fence, status },
                Err(error) => Gated::Unchecked { fence, error },
            })
        })
        .collect())
}

/// When a SENDING claim is stale, and what becomes of it. Every claim this version makes is on
/// the wire: it may have reached the relay and becomes UNKNOWN, for an operator. A claim without
/// a wire mark (made by an earlier version, which claimed before connecting) sent nothing and is
/// given back (its step run due again at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leases {
    /// Any claim this old belongs to a worker that is hung or gone (`PULSE_SENDING_LEASE_MS`).
    pub sending: Duration,
    /// An unmarked claim (an earlier version's) this old is given back even though its owner
    /// heartbeats: such a sender marked within
    /// [`crate::config::SenderSettings::unmarked_lease`] of claiming, or never.
    pub unmarked: Duration,
    /// A worker that has not heartbeaten for this long is dead (`PULSE_OWNER_TIMEOUT_MS`): its
    /// claims are settled at once (UNKNOWN once [`Leases::answer`] has passed; unmarked ones
    /// given back), and so are the runs a dead scheduler may not have
    /// published. `None` judges nobody dead (the sweeping worker's own heartbeats are not
    /// steady yet, see [`crate::workers::Registration::steady`]); the leases still apply.
    pub owner: Option<Duration>,
    /// A dead worker's claim becomes UNKNOWN once its mark is this old (one SMTP
    /// timeout and a margin: a sender that was only cut off from PostgreSQL has recorded its
    /// answer by then).
    pub answer: Duration,
    /// A step run QUEUED this long with no claim lost its message (`PULSE_QUEUED_LEASE_MS`).
    pub queued: Duration,
}

impl Leases {
    pub fn new(settings: &crate::Settings) -> Self {
        Self {
            sending: settings.sender.sending_lease,
            unmarked: settings.sender.unmarked_lease(),
            owner: Some(settings.owner_timeout),
            answer: settings.sender.smtp_timeout + Duration::from_secs(5),
            queued: settings.scheduler.queued_lease,
        }
    }
}

/// What [`settle_stale`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stale {
    pub unknown: u64,
    pub given_back: u64,
}

/// Settles stale SENDING claims (all of them, or only `key`'s) by [`Leases`]' rules, with their
/// step runs, in one statement. Claims another transaction holds are left for the next sweep.
async fn settle_stale(
    db: &PgPool,
    key: Option<&str>,
    leases: &Leases,
) -> Result<Stale, StoreError> {
    let (unknown, given_back): (i64, i64) = sqlx::query_as(
        "WITH stale AS (
             SELECT sl.idempotency_key, sl.attempts, sl.wire_at IS NOT NULL AS marked
             FROM send_ledger sl
             WHERE sl.state = 'SENDING' AND ($1::text IS NULL OR sl.idempotency_key = $1)
               AND (sl.claimed_at < now() - make_interval(secs => $2)
                    OR (sl.wire_at IS NULL AND sl.claimed_at < now() - make_interval(secs => $3))
                    OR ($4::float8 IS NOT NULL AND sl.owner_id IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = sl.owner_id
                                          AND w.heartbeat_at > now() - make_interval(secs => $4))
                        AND (sl.wire_at IS NULL
                             OR sl.wire_at < now() - make_interval(secs => $5))))
             FOR UPDATE OF sl SKIP LOCKED),
         unknown AS (
             UPDATE send_ledger sl SET state = 'UNKNOWN', updated_at = now(),
                 smtp_reply = 'worker stopped after the message went to the relay; the relay may or may not have accepted it'
             FROM stale WHERE sl.idempotency_key = stale.idempotency_key AND stale.marked
             RETURNING sl.step_run_id),
         dropped AS (
             DELETE FROM send_ledger sl USING stale
             WHERE sl.idempotency_key = stale.idempotency_key AND NOT stale.marked
               AND stale.attempts = 1
             RETURNING sl.step_run_id),
         deferred AS (
             UPDATE send_ledger sl SET state = 'DEFERRED', attempts = sl.attempts - 1,
                 owner_id = NULL, updated_at = now()
             FROM stale WHERE sl.idempotency_key = stale.idempotency_key AND NOT stale.marked
               AND stale.attempts > 1
             RETURNING sl.step_run_id),
         runs_unknown AS (
             UPDATE step_runs sr SET state = 'UNKNOWN', updated_at = now(),
                 last_error = 'send outcome unknown: see the send ledger'
             FROM unknown WHERE sr.id = unknown.step_run_id RETURNING 1),
         runs_back AS (
             UPDATE step_runs sr SET state = 'SCHEDULED', due_at = now(), updated_at = now(),
                 first_due_at = COALESCE(sr.first_due_at, sr.due_at),
                 last_error = 'given back unsent: its sender stopped before the message went out'
             WHERE sr.state = 'QUEUED'
               AND sr.id IN (SELECT step_run_id FROM dropped
                             UNION ALL SELECT step_run_id FROM deferred)
             RETURNING 1)
         SELECT (SELECT count(*) FROM runs_unknown),
                (SELECT count(*) FROM dropped) + (SELECT count(*) FROM deferred)",
    )
    .bind(key)
    .bind(leases.sending.as_secs_f64())
    .bind(leases.unmarked.as_secs_f64())
    .bind(leases.owner.map(|d| d.as_secs_f64()))
    .bind(leases.answer.as_secs_f64())
    .fetch_one(db)
    .await?;
    Ok(Stale {
        unknown: unknown as u64,
        given_back: given_back as u64,
    })
}

/// What a sweep found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Stale claims that may have reached the relay, now UNKNOWN.
    pub unknown: u64,
    /// Stale claims that sent nothing, given back: their steps are due again.
    pub given_back: u64,
    /// QUEUED step runs with no claim back to SCHEDULED: older than the queued lease, or
    /// queued by a dead scheduler too shortly before its death to be sure it published them.
    pub requeued: u64,
}

/// Finds stale work ([`Leases`]): a stale claim that was on the wire becomes UNKNOWN (never
/// resent automatically; an operator resolves it), one that was not is given back and sent
/// again; a step run QUEUED longer than the queued lease with no claim lost its message and
/// goes back to SCHEDULED to be published again, and so does one a dead scheduler queued just
/// before it died (a duplicate delivery, should the message still exist, is absorbed by the
/// ledger). Dead workers holding nothing are forgotten. Safe to run from any number of
/// schedulers at once.
pub async fn sweep(db: &PgPool, leases: &Leases) -> Result<Swept, StoreError> {
    let stale = settle_stale(db, None, leases).await?;
    let mut requeued = requeue_unclaimed(db, Requeue::OlderThan(leases.queued)).await?;
    if let Some(owner) = leases.owner {
        requeued += requeue_unclaimed(db, Requeue::DeadScheduler(owner)).await?;
        crate::workers::forget_dead(db, owner).await?;
    }
    Ok(Swept {
        unknown: stale.unknown,
        given_back: stale.given_back,
        requeued,
    })
}

/// Which QUEUED step runs [`requeue_unclaimed`] gives back: runs whose message may never have
/// reached the queue.
#[derive(Clone, Copy, Debug)]
pub enum Requeue<'a> {
    /// These runs: the broker did not confirm their publish.
    Runs(&'a [Uuid]),
    /// Runs QUEUED longer than this (the queued lease): their message was lost or never sent.
    OlderThan(Duration),
    /// Runs queued by a scheduler silent for this long (dead), in its last seconds or after its
    /// last heartbeat ([`crate::workers::UNCONFIRMED_AFTER_BEAT`]): it may have died before the
    /// broker confirmed them. Earlier ones were confirmed, or given back by itself.
    DeadScheduler(Duration),
    /// Every run this scheduler queued: called when it starts a new session after one failed,
    /// because a commit whose answer was lost (PostgreSQL restarting) leaves runs QUEUED that
    /// it never published. Those it did publish are published again; the ledger absorbs it.
    QueuedBy(Uuid),
}

/// Puts QUEUED runs back to SCHEDULED (due again at once, their old due time having passed),
/// unless a sender holds a claim on them: the one transition that publishes a run again. A copy
/// of the message that reached the queue anyway is absorbed by the ledger (the run is not
/// QUEUED when it arrives, or its key is taken). Returns how many went back.
pub async fn requeue_unclaimed(db: &PgPool, which: Requeue<'_>) -> Result<u64, StoreError> {
    let (condition, reason) = match which {
        Requeue::Runs(_) => (
            "sr.id = ANY($2)",
            "published again: the broker did not confirm the message",
        ),
        Requeue::OlderThan(_) => (
            "sr.queued_at < now() - make_interval(secs => $2)",
            "published again: the queued message was not handled in time",
        ),
        Requeue::QueuedBy(_) => (
            "sr.queued_by = $2",
            "published again: its scheduler lost its session before it could be sure",
        ),
        Requeue::DeadScheduler(_) => (
            "EXISTS (SELECT 1 FROM workers w
                     WHERE w.id = sr.queued_by AND w.heartbeat_at < now() - make_interval(secs => $2)
                       AND sr.queued_at >= w.heartbeat_at - make_interval(secs => $3))",
            "published again: its scheduler stopped before the broker confirmed it",
        ),
    };
    let sql = format!(
        "UPDATE step_runs sr SET state = 'SCHEDULED', updated_at = now(), last_error = $1
         WHERE sr.state = 'QUEUED' AND {condition}
           AND NOT EXISTS (SELECT 1 FROM send_ledger sl
                           WHERE sl.sequence_id = sr.sequence_id AND sl.step_run_id = sr.id
                             AND sl.state = 'SENDING')"
    );
    let query = sqlx::query(&sql).bind(reason);
    let query = match which {
        Requeue::Runs(ids) => query.bind(ids),
        Requeue::QueuedBy(owner) => query.bind(owner),
        Requeue::OlderThan(age) => query.bind(age.as_secs_f64()),
        Requeue::DeadScheduler(timeout) => query
            .bind(timeout.as_secs_f64())
            .bind(crate::workers::UNCONFIRMED_AFTER_BEAT.as_secs_f64()),
    };
    Ok(query.execute(db).await?.rows_affected())
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
        "SELECT sl.step_run_id, sl.enrollment_id, sl.sequence_id, sl.claimed_at FROM send_ledger sl
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
            let reply = Reply {
                code: None,
                text: note.to_owned(),
            };
            settle::mark_sent_and_advance(&mut tx, key, run, row.get("claimed_at"), &reply).await?;
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
                     first_due_at = COALESCE(first_due_at, due_at), updated_at = now()
                 WHERE id = $1",
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
