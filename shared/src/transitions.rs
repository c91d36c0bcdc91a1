//! The step-run and enrollment transitions that more than one role makes, each written once and
//! in batched form (one change is a batch of one):
//!
//! * [`apply_plans`]: what `schedule::plan` decided for SCHEDULED runs: re-timed, or (an end date
//!   passes first) skipped with their enrollment ended. Used by the scheduler's claim, resume and
//!   re-timing after an edit or a lead's time-zone change.
//! * [`skip_and_end`]: runs that can no longer go out, SKIPPED with the reason, their enrollments
//!   COMPLETED with it (the scheduler, a sender's window re-check, [`apply_plans`]).
//! * [`end_enrollments`]: ACTIVE enrollments ended (cancel, suppression, a merge, the last step
//!   sent), their SCHEDULED runs CANCELLED with the reason.
//!
//! It decides nothing: callers plan (`schedule`) and take the locks the design requires
//! (`schedule::lock_sequences`, the rows `FOR UPDATE`); this module only writes. Send outcomes
//! and their fencing are `ledger`'s; it calls in here for what they do to enrollments.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{db::StoreError, schedule::Planned, state::EnrollmentStatus};

/// A SCHEDULED run and what the plan says about it.
#[derive(Clone, Debug)]
pub struct Replan {
    pub run: Uuid,
    pub enrollment: Uuid,
    pub plan: Planned,
}

/// What [`apply_plans`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub retimed: usize,
    pub skipped: usize,
}

/// Re-times every `Planned::At` run (one statement; only runs still SCHEDULED) and skips every
/// `Planned::Expired` one, ending its enrollment with the reason.
pub async fn apply_plans(conn: &mut PgConnection, plans: &[Replan]) -> Result<Applied, StoreError> {
    let (mut ids, mut dues): (Vec<Uuid>, Vec<DateTime<Utc>>) = (Vec::new(), Vec::new());
    let mut expired = Vec::new();
    let mut late = Vec::new();
    for p in plans {
        match &p.plan {
            Planned::At(at) => {
                ids.push(p.run);
                dues.push(*at);
            }
            Planned::Expired(reason) => expired.push((p.run, p.enrollment, reason.clone())),
            Planned::Late(reason) => late.push((p.run, reason)),
        }
    }
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE step_runs sr SET due_at = u.due, updated_at = now(),
                 first_due_at = CASE WHEN sr.due_at <= now()
                                     THEN COALESCE(sr.first_due_at, sr.due_at)
                                     ELSE sr.first_due_at END
             FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, due)
             WHERE sr.id = u.id AND sr.state = 'SCHEDULED'",
        )
        .bind(&ids)
        .bind(&dues)
        .execute(&mut *conn)
        .await?;
    }
    skip_and_end(conn, &expired).await?;
    let now = Utc::now();
    for (run, reason) in &late {
        crate::schedule::skip_and_advance(conn, *run, reason, now).await?;
    }
    Ok(Applied {
        retimed: ids.len(),
        skipped: expired.len() + late.len(),
    })
}

/// Marks each run SKIPPED with its reason and ends its enrollment (COMPLETED, with the reason):
/// what happens to a step that can no longer go out in time. Items are (run, enrollment, reason).
pub async fn skip_and_end(
    conn: &mut PgConnection,
    items: &[(Uuid, Uuid, String)],
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let runs: Vec<Uuid> = items.iter().map(|i| i.0).collect();
    let reasons: Vec<&str> = items.iter().map(|i| i.2.as_str()).collect();
    sqlx::query(
        "UPDATE step_runs sr SET state = 'SKIPPED', last_error = u.reason, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[]) AS u(id, reason) WHERE sr.id = u.id",
    )
    .bind(&runs)
    .bind(&reasons)
    .execute(&mut *conn)
    .await?;
    let ends: Vec<(Uuid, String)> = items.iter().map(|i| (i.1, i.2.clone())).collect();
    end_enrollments(conn, EnrollmentStatus::Completed, &ends).await?;
    Ok(())
}

/// Ends the ACTIVE ones of these enrollments with `status` and each one's reason; their
/// SCHEDULED runs are CANCELLED with it. Returns the enrollments it ended (one already ended is
/// left as it is). Rows are written in id order, so concurrent calls never deadlock.
pub async fn end_enrollments(
    conn: &mut PgConnection,
    status: EnrollmentStatus,
    items: &[(Uuid, String)],
) -> Result<Vec<Uuid>, StoreError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut items: Vec<&(Uuid, String)> = items.iter().collect();
    items.sort_by_key(|i| i.0);
    items.dedup_by_key(|i| i.0);
    let ids: Vec<Uuid> = items.iter().map(|i| i.0).collect();
    let reasons: Vec<&str> = items.iter().map(|i| i.1.as_str()).collect();
    let ended: Vec<Uuid> = sqlx::query_scalar(
        "WITH ended AS (
             UPDATE enrollments e SET status = $3, end_reason = u.reason, ended_at = now(),
                 updated_at = now()
             FROM UNNEST($1::uuid[], $2::text[]) AS u(id, reason)
             WHERE e.id = u.id AND e.status = 'ACTIVE'
             RETURNING e.id, u.reason),
         runs AS (
             UPDATE step_runs sr SET state = 'CANCELLED', last_error = ended.reason,
                 updated_at = now()
             FROM ended WHERE sr.enrollment_id = ended.id AND sr.state = 'SCHEDULED')
         SELECT id FROM ended ORDER BY id",
    )
    .bind(&ids)
    .bind(&reasons)
    .bind(status)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ended)
}
