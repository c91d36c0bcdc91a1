//! What settles a step run no claim was made for. A sender claims only at the gate (the body out,
//! the final dot held), so everything that stops a send before it settles the run alone:
//!
//! * refused before sending ([`settle_unsent`], [`hold`]): the sequence paused, the enrollment
//!   ended, the lead suppressed, the send window closed, the rate spent, no relay connection
//!   free in time;
//! * failed before the gate ([`record_unclaimed`]): the connection could not be opened, or the
//!   relay refused MAIL, RCPT or DATA. Nothing reached the relay, so a retry is always safe.
//!
//! Each write locks the run by id (waiting for a scheduler that has not committed QUEUED yet),
//! then applies only while the run is QUEUED and no sender holds a claim on it: a duplicate
//! delivery that claimed meanwhile owns the run, and this one changes nothing. It never claims
//! and never sends.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow};
use uuid::Uuid;

use super::{Release, Reply, settle};
use crate::{
    db::StoreError,
    schedule,
    state::{LedgerState, StepRunState},
};

/// Locks `step_run` and returns its row if it is QUEUED with no SENDING claim. The state and the
/// claim are read in statements after the lock, so they are the committed ones.
async fn lock_unclaimed(
    conn: &mut PgConnection,
    step_run: Uuid,
) -> Result<Option<PgRow>, StoreError> {
    sqlx::query("SELECT 1 FROM step_runs WHERE id = $1 FOR UPDATE")
        .bind(step_run)
        .fetch_optional(&mut *conn)
        .await?;
    let row = sqlx::query(
        "SELECT sr.state, sr.enrollment_id, sr.sequence_id, sr.position, e.lead_id,
                st.end_date AS step_end
         FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN sequence_steps st ON st.id = sr.step_id
         WHERE sr.id = $1 AND sr.state = 'QUEUED'
           AND NOT EXISTS (SELECT 1 FROM send_ledger sl
                           WHERE sl.sequence_id = sr.sequence_id AND sl.step_run_id = sr.id
                             AND sl.state = 'SENDING')",
    )
    .bind(step_run)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row)
}

/// Skips a QUEUED step run no claim holds because it can no longer go out within its step's
/// `max_lateness`, and moves its enrollment on (`schedule::skip_and_advance`). Takes the
/// sequence lock first, as recording a send does.
pub async fn skip_late(db: &PgPool, step_run: Uuid, reason: &str) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    if schedule::lock_sequence_of(&mut tx, step_run)
        .await?
        .is_none()
    {
        return Ok(());
    }
    if lock_unclaimed(&mut tx, step_run).await?.is_none() {
        return Ok(());
    }
    schedule::skip_and_advance(&mut tx, step_run, reason, Utc::now()).await?;
    tx.commit().await?;
    Ok(())
}

/// Puts a QUEUED step run back to SCHEDULED: a paused sequence (`until` None: due as before) or
/// a spent rate budget (`until` the minute with room). A later time goes through the one rule for
/// due times ([`schedule::plan`]): it is moved into the send window, and a step that can then no
/// longer go out before an end date is skipped and its enrollment ends.
pub async fn hold(
    db: &PgPool,
    step_run: Uuid,
    until: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    settle_unsent(db, step_run, Release::Hold(until), None).await
}

/// Settles a QUEUED step run that is not sent and was never claimed, as `how` says, with
/// `reason` as its last error: held (re-planned as [`hold`] says), cancelled, skipped, or left.
pub async fn settle_unsent(
    db: &PgPool,
    step_run: Uuid,
    how: Release,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    if how == Release::Leave {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    let Some(row) = lock_unclaimed(&mut tx, step_run).await? else {
        return Ok(());
    };
    let how = match how {
        Release::Hold(Some(until)) => {
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
                schedule::Planned::At(at) => Release::Hold(Some(at)),
                schedule::Planned::Late(reason) => {
                    schedule::skip_and_advance(&mut tx, step_run, &reason, Utc::now()).await?;
                    tx.commit().await?;
                    return Ok(());
                }
                schedule::Planned::Expired(reason) => {
                    let skip = [(step_run, row.try_get("enrollment_id")?, reason)];
                    crate::transitions::skip_and_end(&mut tx, &skip).await?;
                    tx.commit().await?;
                    return Ok(());
                }
            }
        }
        other => other,
    };
    set_unsent(&mut tx, step_run, how, reason).await?;
    tx.commit().await?;
    Ok(())
}

/// The run's state when it is not sent, if it is still QUEUED: SCHEDULED (at `until`, else due
/// as before), CANCELLED or SKIPPED, with `reason` as its last error (kept when `None`). The
/// caller holds the run's lock.
pub(super) async fn set_unsent(
    conn: &mut PgConnection,
    step_run: Uuid,
    how: Release,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    let (state, until) = match how {
        Release::Leave => return Ok(()),
        Release::Hold(until) => (StepRunState::Scheduled, until),
        Release::Cancel => (StepRunState::Cancelled, None),
        Release::Skip => (StepRunState::Skipped, None),
    };
    sqlx::query(
        "UPDATE step_runs SET state = $2, last_error = COALESCE($3, last_error),
             first_due_at = CASE WHEN $4::timestamptz IS NULL THEN first_due_at
                                 ELSE COALESCE(first_due_at, due_at) END,
             due_at = COALESCE($4, due_at), updated_at = now()
         WHERE id = $1 AND state = 'QUEUED'",
    )
    .bind(step_run)
    .bind(state)
    .bind(reason)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(())
}

/// How a send that never reached its gate failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying: due again at this time.
    Deferred(DateTime<Utc>),
    /// Never worth retrying (a 5xx, or the attempts are spent).
    Failed,
}

/// Records a send that failed before its gate, with no claim: the key's ledger row says
/// DEFERRED or FAILED with the relay's reply (one more attempt), and the run and enrollment
/// follow as for a claimed send. Returns whether it applied (`false`: the run was no longer
/// QUEUED, or another delivery holds a claim on it).
pub async fn record_unclaimed(
    db: &PgPool,
    step_run: Uuid,
    key: &str,
    reply: &Reply,
    failure: Failure,
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    if lock_unclaimed(&mut tx, step_run).await?.is_none() {
        return Ok(false);
    }
    let state = match failure {
        Failure::Deferred(_) => LedgerState::Deferred,
        Failure::Failed => LedgerState::Failed,
    };
    sqlx::query(
        "INSERT INTO send_ledger (enrollment_id, step_id, generation, idempotency_key, workspace_id,
                                  sequence_id, lead_id, step_run_id, position, state, message_id,
                                  smtp_code, smtp_reply)
         SELECT sr.enrollment_id, sr.step_id, sr.generation, $2, sr.workspace_id, sr.sequence_id,
                e.lead_id, sr.id, sr.position, $3, sr.message_id, $4, $5
         FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         WHERE sr.id = $1
         ON CONFLICT (enrollment_id, step_id, generation) DO UPDATE
             SET state = EXCLUDED.state, attempts = send_ledger.attempts + 1,
                 smtp_code = EXCLUDED.smtp_code, smtp_reply = EXCLUDED.smtp_reply,
                 claimed_at = now(), updated_at = now()
             WHERE send_ledger.state = 'DEFERRED'",
    )
    .bind(step_run)
    .bind(key)
    .bind(state)
    .bind(reply.code)
    .bind(&reply.text)
    .execute(&mut *tx)
    .await?;
    match failure {
        Failure::Deferred(retry_at) => {
            settle::defer_run(&mut tx, step_run, reply, retry_at).await?
        }
        Failure::Failed => settle::fail_run(&mut tx, step_run, reply).await?,
    }
    tx.commit().await?;
    Ok(true)
}
