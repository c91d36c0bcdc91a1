//! Taking control of a live sequence: pause, resume (with its preview), delete, cancel one
//! enrollment, re-enroll, and the audit trail every one of them writes.
//!
//! Each action commits PostgreSQL first (the truth), then updates the Redis flag, then waits for
//! sends already claimed in the ledger (`SENDING`) to settle. Senders re-check the sequence and
//! enrollment *after* claiming, so once the action has committed and the claims made before it
//! have settled, nothing more can go out: that is when the call returns. This module never sends
//! and never touches RabbitMQ; messages already queued are held or dropped by the senders.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use pulse_shared::{
    domain::{validate, window},
    enroll,
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth, MaybeJson},
    limits::{self, LIMIT_COLUMNS, Pacer},
    model::{
        CancelManyRequest, CancelManyResponse, CancelRequest, Enrollment, EnrollmentStatus,
        ReenrollRequest, ReenrollResponse, ReenrollResult, ResumeItem, ResumePreview,
        SequenceChange, SequenceStatus, outcome,
    },
    schedule::{self, Planned},
    transitions::{self, Replan},
};
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::drain::{Scope, in_flight_warning, wait_in_flight};
use crate::{
    ApiState,
    sequences::{load_one, lock_status},
};

/// Records a control action in the audit trail (its error converts to `ApiError` with `?`).
pub(crate) use pulse_shared::audit::record as audit;

async fn set_flag(state: &ApiState, sequence: Uuid, status: SequenceStatus) {
    // PostgreSQL already holds the new status and senders re-check it after claiming, so a
    // failed flag update costs efficiency, not correctness.
    if let Err(e) = state.flags.set(sequence, status).await {
        tracing::warn!(%sequence, error = %e, "pause flag not updated in Redis; senders fall back to PostgreSQL");
    }
}

async fn change(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    warnings: Vec<String>,
) -> ApiResult<SequenceChange> {
    let mut conn = state.db.acquire().await?;
    Ok(SequenceChange {
        sequence: load_one(&mut conn, auth.workspace, id).await?,
        warnings,
    })
}

/// After a pause or delete has committed: the flag, then the wait for sends claimed before it,
/// then the sequence as it now is.
async fn stop_sends(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    status: SequenceStatus,
    mut warnings: Vec<String>,
) -> ApiResult<SequenceChange> {
    set_flag(state, id, status).await;
    let left = wait_in_flight(&state.db, Scope::Sequence(id), state.drain_timeout).await?;
    warnings.extend(in_flight_warning(left, state.drain_timeout));
    change(state, auth, id, warnings).await
}

/// Pause a sequence: it sends nothing from the moment this call returns.
///
/// No new enrollments; pending steps are held (not sent, not skipped, not lost), including steps
/// already queued in RabbitMQ or prefetched by a sender. Sends claimed before the pause are
/// waited for (up to the SMTP timeout) before the call returns.
#[utoipa::path(
    post, path = "/v1/sequences/{id}/pause", tag = "control",
    params(("id" = Uuid, Path, description = "Sequence id")),
    responses((status = 200, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted", body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn pause(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<SequenceChange> {
    let mut tx = state.db.begin().await?;
    let status = lock_status(&mut tx, auth.workspace, id).await?;
    let mut warnings = Vec::new();
    match status {
        SequenceStatus::Active => {
            sqlx::query("UPDATE sequences SET status = 'PAUSED', updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit(
                &mut tx,
                auth.workspace,
                id,
                None,
                &auth.actor,
                "paused",
                Some(json!({"status": status})),
                Some(json!({"status": SequenceStatus::Paused})),
            )
            .await?;
        }
        SequenceStatus::Paused => warnings.push("the sequence was already paused".to_owned()),
        SequenceStatus::Deleted => {
            return Err(ApiError::Conflict("the sequence is deleted".into()));
        }
    }
    tx.commit().await?;
    tracing::info!(sequence = %id, actor = %auth.actor, "sequence paused");
    stop_sends(state, auth, id, SequenceStatus::Paused, warnings).await
}

/// Plans what resuming `sequence` at `now` does with each pending step: steps due during the
/// pause move to the next valid time (now, or the send window's next opening), spaced by the
/// sequence's rate; a step whose next valid time lies past its own or the sequence's end date is
/// skipped and its enrollment ends.
async fn resume_plan(
    conn: &mut PgConnection,
    sequence: Uuid,
    now: DateTime<Utc>,
) -> Result<(Vec<ResumeItem>, i64), ApiError> {
    let seq = sqlx::query("SELECT timezone, send_window, end_date FROM sequences WHERE id = $1")
        .bind(sequence)
        .fetch_one(&mut *conn)
        .await?;
    let rules = schedule::rules_from_row(&seq)?;
    // Each step's limits as its send will see them: the enrollment's mailbox (or the one its run
    // was frozen with), the lead's domain, the workspace and the sequence.
    let rows = sqlx::query(&format!(
        "SELECT sr.id, sr.enrollment_id, st.position, sr.due_at, l.email, l.timezone AS lead_tz,
                st.end_date AS step_end, sr.workspace_id, sr.sequence_id, s.timezone,
                st.max_lateness,
                COALESCE(sr.first_due_at, sr.due_at) + st.max_lateness::interval AS late_after,
                {LIMIT_COLUMNS}
         FROM step_runs sr
         JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN leads l ON l.id = e.lead_id
         JOIN sequence_steps st ON st.id = sr.step_id
         JOIN sequences s ON s.id = sr.sequence_id
         JOIN workspaces w ON w.id = sr.workspace_id
         LEFT JOIN mailboxes mb ON mb.id = COALESCE(sr.mailbox_id, e.mailbox_id)
         LEFT JOIN domain_limits dl ON dl.workspace_id = sr.workspace_id
                                   AND dl.domain = split_part(l.email, '@', 2)
         WHERE sr.sequence_id = $1 AND sr.state = 'SCHEDULED' AND e.status = 'ACTIVE'
         ORDER BY sr.due_at, sr.id"
    ))
    .bind(sequence)
    .fetch_all(&mut *conn)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    // The backlog goes out at the next valid times under the sending limits: each send is
    // moved into its lead's window first, then to its first slot under every limit there.
    let mut pacer = Pacer::new();
    for row in &rows {
        let due: DateTime<Utc> = row.get("due_at");
        let lead_tz = schedule::lead_zone(row.get("lead_tz"));
        let late_after: Option<DateTime<Utc>> = row.get("late_after");
        let position: i32 = row.get("position");
        let base = if due <= now {
            let zone = lead_tz.unwrap_or(rules.timezone);
            let limits = limits::from_row(row)?;
            pacer.place_by(
                now,
                |t| window::next_valid(t, rules.window.as_ref(), zone),
                &limits,
                late_after,
            )
        } else {
            Some(due)
        };
        let planned = match (base, late_after) {
            (Some(at), _) => schedule::plan(at, &rules, lead_tz, position, row.get("step_end")),
            (None, by) => Planned::Late(schedule::late_reason(
                row.get::<Option<&str>, _>("max_lateness")
                    .unwrap_or_default(),
                by.unwrap_or(now),
            )),
        };
        let (outcome, send_at, reason) = match planned {
            Planned::At(t) => ("send", Some(t), None),
            Planned::Expired(r) => ("skip", None, Some(r)),
            Planned::Late(r) => ("late", None, Some(r)),
        };
        items.push(ResumeItem {
            step_run_id: row.get("id"),
            enrollment_id: row.get("enrollment_id"),
            lead_email: row.get("email"),
            step_position: position,
            due_at: due,
            outcome: outcome.into(),
            send_at,
            reason,
        });
    }
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM step_runs WHERE sequence_id = $1 AND state = 'QUEUED'",
    )
    .bind(sequence)
    .fetch_one(&mut *conn)
    .await?;
    Ok((items, queued))
}

/// What resuming this paused sequence now would send, to whom and when, and what an end date
/// would skip. Nothing is changed.
#[utoipa::path(
    get, path = "/v1/sequences/{id}/resume-preview", tag = "control",
    params(("id" = Uuid, Path, description = "Sequence id")),
    responses((status = 200, body = ResumePreview), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Not paused", body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn resume_preview(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<ResumePreview> {
    let mut conn = state.db.acquire().await?;
    let sequence = load_one(&mut conn, auth.workspace, id).await?;
    if sequence.status != SequenceStatus::Paused {
        return Err(ApiError::Conflict(format!(
            "the sequence is {}, not paused",
            sequence.status.as_str().to_lowercase()
        )));
    }
    let now = Utc::now();
    let (items, queued) = resume_plan(&mut conn, id, now).await?;
    Ok(ResumePreview {
        sequence_id: id,
        as_of: now,
        sends: items.iter().filter(|i| i.outcome == "send").count(),
        skips: items.iter().filter(|i| i.outcome != "send").count(),
        queued,
        items,
    })
}

/// Resume a paused sequence. Pending steps pick up where they left off; steps due during the
/// pause go out at the next valid time, paced by `max_sends_per_minute`, or are skipped (ending
/// the enrollment with the reason) when an end date passes first.
#[utoipa::path(
    post, path = "/v1/sequences/{id}/resume", tag = "control",
    params(("id" = Uuid, Path, description = "Sequence id")),
    responses((status = 200, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted", body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn resume(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<SequenceChange> {
    let mut tx = state.db.begin().await?;
    let status = lock_status(&mut tx, auth.workspace, id).await?;
    let mut warnings = Vec::new();
    match status {
        SequenceStatus::Paused => {
            let (items, _) = resume_plan(&mut tx, id, Utc::now()).await?;
            let moved = items
                .iter()
                .filter(|i| i.send_at.is_some_and(|at| at != i.due_at))
                .count();
            let plans: Vec<Replan> = items
                .iter()
                .map(|i| Replan {
                    run: i.step_run_id,
                    enrollment: i.enrollment_id,
                    plan: match (i.send_at, &i.reason) {
                        (Some(at), _) => Planned::At(at),
                        (None, Some(reason)) if i.outcome == "late" => {
                            Planned::Late(reason.clone())
                        }
                        (None, reason) => Planned::Expired(
                            reason
                                .clone()
                                .unwrap_or_else(|| "end date passed".to_owned()),
                        ),
                    },
                })
                .collect();
            let skipped = transitions::apply_plans(&mut tx, &plans).await?.skipped;
            sqlx::query("UPDATE sequences SET status = 'ACTIVE', updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit(
                &mut tx,
                auth.workspace,
                id,
                None,
                &auth.actor,
                "resumed",
                Some(json!({"status": SequenceStatus::Paused})),
                Some(json!({"status": SequenceStatus::Active, "rescheduled": moved, "skipped": skipped})),
            )
            .await?;
        }
        SequenceStatus::Active => warnings.push("the sequence was not paused".to_owned()),
        _ => return Err(ApiError::Conflict("the sequence is deleted".into())),
    }
    tx.commit().await?;
    set_flag(state, id, SequenceStatus::Active).await;
    tracing::info!(sequence = %id, actor = %auth.actor, "sequence resumed");
    change(state, auth, id, warnings).await
}

/// Delete a sequence, permanently: nothing unsent is ever sent, active enrollments are
/// cancelled, and the sequence, its enrollments and its send ledger stay readable for audit.
#[utoipa::path(
    delete, operation_id = "delete_sequence", path = "/v1/sequences/{id}", tag = "control",
    params(("id" = Uuid, Path, description = "Sequence id")),
    responses((status = 200, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn delete(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<SequenceChange> {
    let mut tx = state.db.begin().await?;
    let status = lock_status(&mut tx, auth.workspace, id).await?;
    let mut warnings = Vec::new();
    if status == SequenceStatus::Deleted {
        warnings.push("the sequence was already deleted".to_owned());
    } else {
        sqlx::query("UPDATE sequences SET status = 'DELETED', updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let cancelled = sqlx::query(
            "UPDATE enrollments SET status = 'CANCELLED', end_reason = 'sequence deleted',
                 ended_at = now(), updated_at = now()
             WHERE sequence_id = $1 AND status = 'ACTIVE'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE step_runs SET state = 'CANCELLED', last_error = 'sequence deleted', updated_at = now()
             WHERE sequence_id = $1 AND state = 'SCHEDULED'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            auth.workspace,
            id,
            None,
            &auth.actor,
            "deleted",
            Some(json!({"status": status})),
            Some(json!({"status": SequenceStatus::Deleted, "enrollments_cancelled": cancelled})),
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(sequence = %id, actor = %auth.actor, "sequence deleted");
    stop_sends(state, auth, id, SequenceStatus::Deleted, warnings).await
}

/// Cancels an ACTIVE enrollment the caller has locked: ends it (its pending runs are cancelled)
/// and audits who did it and why. Shared by the single and the bulk cancel.
async fn cancel_locked(
    conn: &mut PgConnection,
    auth: &Auth,
    sequence: Uuid,
    enrollment: Uuid,
    reason: &str,
) -> Result<(), ApiError> {
    let end = [(enrollment, reason.to_owned())];
    transitions::end_enrollments(conn, EnrollmentStatus::Cancelled, &end).await?;
    audit(
        conn,
        auth.workspace,
        sequence,
        Some(enrollment),
        &auth.actor,
        "enrollment_cancelled",
        Some(json!({"status": EnrollmentStatus::Active})),
        Some(json!({"status": EnrollmentStatus::Cancelled, "reason": reason})),
    )
    .await?;
    Ok(())
}

/// Cancel one enrollment: nothing more is sent to that lead from this sequence, not even a step
/// already queued. The lead can be re-enrolled later.
#[utoipa::path(
    post, path = "/v1/enrollments/{id}/cancel", tag = "control",
    params(("id" = Uuid, Path, description = "Enrollment id")),
    request_body(content = CancelRequest, description = "Optional reason"),
    responses((status = 200, body = Enrollment), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Already ended otherwise", body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn cancel(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    body: Option<CancelRequest>,
) -> ApiResult<Enrollment> {
    let reason = body
        .and_then(|b| b.reason)
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::invalid("reason", "at most 500 characters"));
    }
    let mut tx = state.db.begin().await?;
    let row = sqlx::query(
        "SELECT status, sequence_id FROM enrollments WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(auth.workspace)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("enrollment"))?;
    let status: EnrollmentStatus = row.get("status");
    let sequence: Uuid = row.get("sequence_id");
    match status {
        EnrollmentStatus::Active => {
            let reason = reason.unwrap_or_else(|| format!("cancelled by {}", auth.actor));
            cancel_locked(&mut tx, auth, sequence, id, &reason).await?;
        }
        EnrollmentStatus::Cancelled => {}
        other => {
            return Err(ApiError::Conflict(format!(
                "the enrollment already ended ({other})"
            )));
        }
    }
    tx.commit().await?;
    let left = wait_in_flight(&state.db, Scope::Enrollment(id), state.drain_timeout).await?;
    if left > 0 {
        tracing::warn!(enrollment = %id, in_flight = left, "cancel returned with a send claimed before it still waiting for the mail server");
    }
    tracing::info!(enrollment = %id, actor = %auth.actor, "enrollment cancelled");
    crate::enrollments::fetch(&state.db, auth.workspace, id).await
}

/// Most enrollments named in one bulk cancel, and cancelled per transaction.
const MAX_CANCEL: usize = 10_000;
const CANCEL_CHUNK: i64 = 500;

/// Cancel many enrollments of a sequence at once: the ones named, or every ACTIVE one. Each is
/// cancelled as by `POST /v1/enrollments/{id}/cancel` (audited one by one), in transactions of
/// 500, then sends claimed before the call are waited for once. Named enrollments that already
/// ended are left alone and counted.
#[utoipa::path(
    post, path = "/v1/sequences/{id}/enrollments/cancel", tag = "control",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = CancelManyRequest,
    responses((status = 200, body = CancelManyResponse), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn cancel_many(
    state: &ApiState,
    auth: &Auth,
    sequence: Uuid,
    req: CancelManyRequest,
) -> ApiResult<CancelManyResponse> {
    let named = match (req.enrollment_ids, req.all_active) {
        (Some(ids), None | Some(false)) if ids.is_empty() => {
            return Err(ApiError::invalid(
                "enrollment_ids",
                "name at least one enrollment",
            ));
        }
        (Some(ids), None | Some(false)) if ids.len() > MAX_CANCEL => {
            return Err(ApiError::invalid(
                "enrollment_ids",
                format!(
                    "{} enrollments in one call; the limit is {MAX_CANCEL}",
                    ids.len()
                ),
            ));
        }
        (Some(mut ids), None | Some(false)) => {
            ids.sort_unstable();
            ids.dedup();
            Some(ids)
        }
        (None, Some(true)) => None,
        _ => {
            return Err(ApiError::invalid(
                "enrollment_ids",
                "give either enrollment_ids or all_active: true",
            ));
        }
    };
    let reason = req
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| format!("cancelled by {}", auth.actor));
    if reason.chars().count() > 500 {
        return Err(ApiError::invalid("reason", "at most 500 characters"));
    }
    crate::sequences::exists(&state.db, auth.workspace, sequence).await?;
    let mut out = CancelManyResponse {
        cancelled: 0,
        already_ended: 0,
        not_found: 0,
        warnings: Vec::new(),
    };
    // Chunks in id order (locks always taken in the same order): the named ids, or the ACTIVE
    // enrollments after the last one handled.
    let mut last: Option<Uuid> = None;
    let mut chunks = named
        .as_deref()
        .map(|ids| ids.chunks(CANCEL_CHUNK as usize));
    loop {
        let chunk: Vec<Uuid> = match chunks.as_mut() {
            Some(c) => match c.next() {
                Some(ids) => ids.to_vec(),
                None => break,
            },
            None => {
                let ids: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM enrollments
                     WHERE sequence_id = $1 AND workspace_id = $2 AND status = 'ACTIVE'
                       AND ($3::uuid IS NULL OR id > $3)
                     ORDER BY id LIMIT $4",
                )
                .bind(sequence)
                .bind(auth.workspace)
                .bind(last)
                .bind(CANCEL_CHUNK)
                .fetch_all(&state.db)
                .await?;
                if ids.is_empty() {
                    break;
                }
                ids
            }
        };
        last = chunk.last().copied();
        let mut tx = state.db.begin().await?;
        let rows: Vec<(Uuid, EnrollmentStatus)> = sqlx::query_as(
            "SELECT id, status FROM enrollments
             WHERE id = ANY($1) AND sequence_id = $2 AND workspace_id = $3
             ORDER BY id FOR UPDATE",
        )
        .bind(&chunk)
        .bind(sequence)
        .bind(auth.workspace)
        .fetch_all(&mut *tx)
        .await?;
        out.not_found += chunk.len() - rows.len();
        for (id, status) in rows {
            if status != EnrollmentStatus::Active {
                out.already_ended += 1;
                continue;
            }
            cancel_locked(&mut tx, auth, sequence, id, &reason).await?;
            out.cancelled += 1;
        }
        tx.commit().await?;
    }
    let left = wait_in_flight(&state.db, Scope::Sequence(sequence), state.drain_timeout).await?;
    out.warnings
        .extend(in_flight_warning(left, state.drain_timeout));
    tracing::info!(%sequence, cancelled = out.cancelled, actor = %auth.actor, "enrollments cancelled in bulk");
    Ok(out)
}

/// Most leads named in one re-enroll call.
const MAX_REENROLL: usize = 10_000;

/// Re-enroll leads that completed, were cancelled or were ineligible: each starts again from
/// step 1 as a new enrollment generation whose sends never collide with the old one's. Leads
/// still ACTIVE are reported, not duplicated.
#[utoipa::path(
    post, path = "/v1/sequences/{id}/re-enroll", tag = "control",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = ReenrollRequest,
    responses((status = 200, body = ReenrollResponse), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Paused or deleted", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn reenroll(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    req: ReenrollRequest,
) -> ApiResult<ReenrollResponse> {
    let emails = match (&req.lead_emails, req.all_not_active) {
        (Some(list), None | Some(false)) => {
            if list.is_empty() || list.len() > MAX_REENROLL {
                return Err(ApiError::invalid(
                    "lead_emails",
                    format!("1 to {MAX_REENROLL} addresses"),
                ));
            }
            let mut clean = Vec::with_capacity(list.len());
            for (i, e) in list.iter().enumerate() {
                clean.push(
                    validate::email(e)
                        .map_err(|m| ApiError::invalid(format!("lead_emails[{i}]"), m))?,
                );
            }
            clean.sort();
            clean.dedup();
            Some(clean)
        }
        (None, Some(true)) => None,
        _ => {
            return Err(ApiError::invalid(
                "lead_emails",
                "give either lead_emails or \"all_not_active\": true",
            ));
        }
    };
    let mut tx = state.db.begin().await?;
    match lock_status(&mut tx, auth.workspace, id).await? {
        SequenceStatus::Active => {}
        SequenceStatus::Paused => {
            return Err(ApiError::Conflict(
                "the sequence is paused: resume it before re-enrolling".into(),
            ));
        }
        _ => return Err(ApiError::Conflict("the sequence is deleted".into())),
    }
    let leads: Vec<(Uuid, String)> =
        match &emails {
            Some(emails) => {
                sqlx::query_as(
                    "SELECT id, email FROM leads WHERE workspace_id = $1 AND email = ANY($2)",
                )
                .bind(auth.workspace)
                .bind(emails)
                .fetch_all(&mut *tx)
                .await?
            }
            None => sqlx::query_as(
                "SELECT DISTINCT l.id, l.email FROM enrollments e JOIN leads l ON l.id = e.lead_id
             WHERE e.sequence_id = $1
               AND NOT EXISTS (SELECT 1 FROM enrollments a WHERE a.sequence_id = $1
                               AND a.lead_id = e.lead_id AND a.status = 'ACTIVE')
             ORDER BY l.email",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?,
        };
    let now = Utc::now();
    let mut results = Vec::new();
    for (lead, email) in &leads {
        let done = enroll::reenroll(&mut tx, auth.workspace, id, *lead, now).await?;
        results.push(ReenrollResult {
            lead_email: email.clone(),
            enrollment_id: done.enrollment_id,
            outcome: done.outcome.into(),
        });
    }
    for email in emails.iter().flatten() {
        if !leads.iter().any(|(_, e)| e == email) {
            results.push(ReenrollResult {
                lead_email: email.clone(),
                enrollment_id: None,
                outcome: "unknown_lead".into(),
            });
        }
    }
    let count = |o: &str| results.iter().filter(|r| r.outcome == o).count();
    let response = ReenrollResponse {
        reenrolled: count(outcome::REENROLLED),
        already_active: count(outcome::ALREADY_ACTIVE),
        never_enrolled: count(outcome::NEVER_ENROLLED),
        unknown_lead: count("unknown_lead"),
        suppressed: count(outcome::SUPPRESSED),
        results,
    };
    // Audited only when someone was re-enrolled, naming who (the audit log is the operator's,
    // not telemetry).
    if response.reenrolled > 0 {
        let who: Vec<&str> = response
            .results
            .iter()
            .filter(|r| r.outcome == outcome::REENROLLED)
            .map(|r| r.lead_email.as_str())
            .collect();
        audit(
            &mut tx,
            auth.workspace,
            id,
            None,
            &auth.actor,
            "re_enrolled",
            Some(json!({"lead_emails": emails, "all_not_active": emails.is_none()})),
            Some(json!({"reenrolled": response.reenrolled, "leads": who,
                        "already_active": response.already_active,
                        "never_enrolled": response.never_enrolled,
                        "unknown_lead": response.unknown_lead,
                        "suppressed": response.suppressed})),
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(sequence = %id, actor = %auth.actor, reenrolled = response.reenrolled, "leads re-enrolled");
    Ok(response)
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn pause(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<SequenceChange>> {
        super::pause(&state, &auth, id).await.map(Json)
    }

    pub async fn resume_preview(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<ResumePreview>> {
        super::resume_preview(&state, &auth, id).await.map(Json)
    }

    pub async fn resume(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<SequenceChange>> {
        super::resume(&state, &auth, id).await.map(Json)
    }

    pub async fn delete(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<SequenceChange>> {
        super::delete(&state, &auth, id).await.map(Json)
    }

    pub async fn cancel(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        MaybeJson(body): MaybeJson<CancelRequest>,
    ) -> ApiResult<Json<Enrollment>> {
        super::cancel(&state, &auth, id, body).await.map(Json)
    }

    pub async fn cancel_many(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(sequence): ApiPath<Uuid>,
        ApiJson(req): ApiJson<CancelManyRequest>,
    ) -> ApiResult<Json<CancelManyResponse>> {
        super::cancel_many(&state, &auth, sequence, req)
            .await
            .map(Json)
    }

    pub async fn reenroll(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(req): ApiJson<ReenrollRequest>,
    ) -> ApiResult<Json<ReenrollResponse>> {
        super::reenroll(&state, &auth, id, req).await.map(Json)
    }
}
