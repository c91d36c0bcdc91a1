//! Every write that settles a claim — sent (with the next step), deferred, failed, unknown,
//! released unsent, given back — each fenced by the claim's id. It never claims, and never
//! writes a run no claim was made for (`unclaimed` does).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Followup;
use crate::{db::StoreError, schedule, state::LedgerState};

/// What to do with a step run that is not sent (its claim released, or never made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The run is no longer QUEUED: it is someone else's (sent, held, cancelled, a duplicate
    /// delivery), and is left as it is.
    Leave,
    /// Back to SCHEDULED: the sequence is paused (due as before; resume picks it up), or the
    /// send window is closed (due at its next opening).
    Hold(Option<DateTime<Utc>>),
    /// The enrollment ended or the sequence was deleted: the step will never be sent.
    Cancel,
    /// The lead is suppressed (its address or domain is on the suppression list).
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

/// The claim a write settles: the key and the claim's id from [`super::Claim::Claimed`].
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
    let mut tx = db.begin().await?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    unclaim_in(&mut tx, &fence.key).await?;
    super::unclaimed::set_unsent(&mut tx, step_run, how, Some(reason)).await?;
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

/// The relay's answer to a send.
#[derive(Clone, Debug)]
pub struct Reply {
    pub code: Option<i32>,
    pub text: String,
}

impl Reply {
    /// A reply as the relay (or the transport) worded it, with every email address in it
    /// replaced by a short hash (`crate::domain::redact`): relays echo the recipient
    /// (`<ada@example.com>: Recipient address rejected`), and this text is stored, logged and
    /// traced. The code and the enhanced status stay.
    pub fn from_relay(code: Option<i32>, text: &str) -> Self {
        Self {
            code,
            text: crate::domain::redact::addresses(text),
        }
    }
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
    // The edit lock first: the next step is read below, after any edit has committed.
    schedule::lock_sequence_of(&mut tx, step_run)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("step run {step_run} not found")))?;
    if !own(&mut tx, fence).await? {
        return Ok(Settled::ClaimLost);
    }
    mark_sent_and_advance(&mut tx, &fence.key, step_run, now, reply).await?;
    tx.commit().await?;
    Ok(Settled::Recorded)
}

/// Records a key SENT (at `at`, with the relay's reply, or the operator's note) and its run
/// SENT, then, while the enrollment is ACTIVE (locked here: a concurrent cancel either came
/// first, and nothing follows, or waits), schedules the step that now follows or completes the
/// enrollment. The one way a send is marked and its enrollment moved on, but for
/// [`record_sent`]'s one-statement form when nothing changed since the snapshot. The caller holds
/// the sequence lock (`schedule::lock_sequences`) and owns the key.
pub(super) async fn mark_sent_and_advance(
    tx: &mut sqlx::PgConnection,
    key: &str,
    step_run: Uuid,
    at: DateTime<Utc>,
    reply: &Reply,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE send_ledger SET state = 'SENT', smtp_code = $2, smtp_reply = $3, sent_at = $4,
             updated_at = now()
         WHERE idempotency_key = $1",
    )
    .bind(key)
    .bind(reply.code)
    .bind(&reply.text)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let run = sqlx::query(
        "UPDATE step_runs sr SET state = 'SENT', sent_at = $2, last_error = NULL, updated_at = now()
         FROM enrollments e WHERE sr.id = $1 AND e.id = sr.enrollment_id
         RETURNING sr.workspace_id, sr.sequence_id, sr.enrollment_id, sr.step_id, sr.generation,
                   e.lead_id",
    )
    .bind(step_run)
    .bind(at)
    .fetch_one(&mut *tx)
    .await?;
    schedule::advance_if_active(&mut *tx, &run, at).await
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
    state: LedgerState,
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
    set_outcome(&mut tx, &fence.key, LedgerState::Deferred, reply).await?;
    defer_run(&mut tx, step_run, reply, retry_at).await?;
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
    set_outcome(&mut tx, &fence.key, LedgerState::Unknown, reply).await?;
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
    set_outcome(&mut tx, &fence.key, LedgerState::Failed, reply).await?;
    fail_run(&mut tx, step_run, reply).await?;
    tx.commit().await?;
    Ok(Settled::Recorded)
}

/// A transient failure's effect on the run: SCHEDULED again at `retry_at`, one more attempt.
pub(super) async fn defer_run(
    conn: &mut sqlx::PgConnection,
    step_run: Uuid,
    reply: &Reply,
    retry_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE step_runs SET state = 'SCHEDULED', due_at = $2, attempts = attempts + 1,
             first_due_at = COALESCE(first_due_at, due_at), last_error = $3, updated_at = now()
         WHERE id = $1",
    )
    .bind(step_run)
    .bind(retry_at)
    .bind(&reply.text)
    .execute(conn)
    .await?;
    Ok(())
}

/// A permanent failure's effect: the run and its enrollment FAILED with the reply.
pub(super) async fn fail_run(
    conn: &mut sqlx::PgConnection,
    step_run: Uuid,
    reply: &Reply,
) -> Result<(), StoreError> {
    let enrollment: Uuid = sqlx::query_scalar(
        "UPDATE step_runs SET state = 'FAILED', attempts = attempts + 1, last_error = $2,
             updated_at = now()
         WHERE id = $1 RETURNING enrollment_id",
    )
    .bind(step_run)
    .bind(&reply.text)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE enrollments SET status = 'FAILED', end_reason = $2, ended_at = now(),
             updated_at = now()
         WHERE id = $1 AND status = 'ACTIVE'",
    )
    .bind(enrollment)
    .bind(format!("send failed: {}", reply.text))
    .execute(conn)
    .await?;
    Ok(())
}
