//! Manual enrollment and the enrollments view of a sequence.

use axum::{Json, extract::State, http::StatusCode};
use chrono::Utc;
use pulse_shared::{
    enroll::{self, ValidLead},
    http::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth},
    model::{
        Enrollment, EnrollmentList, ManualEnrollment, enrollment_status, outcome, sequence_status,
    },
};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ApiState;

const ENROLLMENT_COLUMNS: &str = "e.id, e.sequence_id, e.lead_id, l.email AS lead_email, e.status,
    e.end_reason, e.current_step, e.generation,
    (SELECT min(sr.due_at) FROM step_runs sr
      WHERE sr.enrollment_id = e.id AND sr.state IN ('SCHEDULED', 'QUEUED')) AS next_due_at,
    e.created_at, e.ended_at";

/// Enroll one lead by hand.
///
/// 201 with the new enrollment; 200 with the existing one when the lead is already ACTIVE in
/// this sequence (deduplicated). A lead whose enrollment ended is not restarted (409): that is
/// what re-enroll is for.
#[utoipa::path(
    post, path = "/v1/sequences/{id}/enrollments", tag = "enrollments",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = ManualEnrollment,
    responses(
        (status = 201, description = "Enrolled", body = Enrollment),
        (status = 200, description = "Already enrolled (deduplicated)", body = Enrollment),
        (status = 404, body = pulse_shared::http::ErrorBody),
        (status = 409, description = "Sequence paused or deleted, or the lead's enrollment ended", body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<ApiState>,
    auth: Auth,
    ApiPath(sequence): ApiPath<Uuid>,
    ApiJson(req): ApiJson<ManualEnrollment>,
) -> ApiResult<(StatusCode, Json<Enrollment>)> {
    let lead = ValidLead::parse(&req.lead, "lead")?;
    let mut tx = state.db.begin().await?;
    // FOR SHARE: a pause or delete committing meanwhile waits for this enrollment.
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM sequences WHERE id = $1 AND workspace_id = $2 FOR SHARE",
    )
    .bind(sequence)
    .bind(auth.workspace)
    .fetch_optional(&mut *tx)
    .await?;
    match status.as_deref() {
        None => return Err(ApiError::NotFound("sequence")),
        Some(sequence_status::ACTIVE) => {}
        Some(sequence_status::PAUSED) => {
            return Err(ApiError::Conflict(
                "the sequence is paused: no new enrollments".into(),
            ));
        }
        Some(other) => {
            return Err(ApiError::Conflict(format!(
                "the sequence is {}",
                other.to_lowercase()
            )));
        }
    }
    let lead_id = enroll::upsert_lead(&mut tx, auth.workspace, &lead).await?;
    let done = enroll::enroll(
        &mut tx,
        auth.workspace,
        sequence,
        lead_id,
        "manual",
        Utc::now(),
    )
    .await?;
    tx.commit().await?;
    let id = done.enrollment_id.ok_or(ApiError::NotFound("enrollment"))?;
    let enrollment = fetch(&state.db, auth.workspace, id).await?;
    match done.outcome {
        outcome::CREATED => Ok((StatusCode::CREATED, Json(enrollment))),
        outcome::ALREADY_ACTIVE => Ok((StatusCode::OK, Json(enrollment))),
        _ => Err(ApiError::Conflict(format!(
            "{} already went through this sequence (enrollment {id} is {}); use re-enroll to start again",
            lead.email, enrollment.status
        ))),
    }
}

async fn fetch(db: &PgPool, workspace: Uuid, id: Uuid) -> Result<Enrollment, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE e.id = $1 AND e.workspace_id = $2"
    ))
    .bind(id)
    .bind(workspace)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("enrollment"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EnrollmentFilter {
    /// Only enrollments in this status.
    pub status: Option<String>,
    /// Most items returned (1–1000, default 100).
    pub limit: Option<i64>,
    /// Continue after this enrollment id (from the previous page's `next`).
    pub after: Option<Uuid>,
}

/// The enrollments of a sequence, oldest first.
#[utoipa::path(
    get, path = "/v1/sequences/{id}/enrollments", tag = "enrollments",
    params(("id" = Uuid, Path, description = "Sequence id"), EnrollmentFilter),
    responses((status = 200, body = EnrollmentList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<ApiState>,
    auth: Auth,
    ApiPath(sequence): ApiPath<Uuid>,
    ApiQuery(filter): ApiQuery<EnrollmentFilter>,
) -> ApiResult<Json<EnrollmentList>> {
    let status = match filter.status.as_deref().map(str::to_uppercase) {
        None => None,
        Some(s) if enrollment_status::ALL.contains(&s.as_str()) => Some(s),
        Some(s) => {
            return Err(ApiError::invalid(
                "status",
                format!("{s:?} is not one of {}", enrollment_status::ALL.join(", ")),
            ));
        }
    };
    let limit = crate::Page {
        limit: filter.limit,
    }
    .limit()?;
    crate::sends::ensure_sequence(&state.db, auth.workspace, sequence).await?;
    let enrollments: Vec<Enrollment> = sqlx::query_as(&format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE e.workspace_id = $1 AND e.sequence_id = $2 AND ($3::text IS NULL OR e.status = $3)
           AND ($4::uuid IS NULL OR (e.created_at, e.id) >
                (SELECT created_at, id FROM enrollments WHERE id = $4))
         ORDER BY e.created_at, e.id LIMIT $5"
    ))
    .bind(auth.workspace)
    .bind(sequence)
    .bind(status)
    .bind(filter.after)
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    let next = (enrollments.len() as i64 == limit)
        .then(|| enrollments.last().map(|e| e.id))
        .flatten();
    Ok(Json(EnrollmentList { enrollments, next }))
}
