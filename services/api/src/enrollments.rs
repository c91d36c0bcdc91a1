//! Manual enrollment and the enrollments view of a sequence.

use axum::{Json, extract::State, http::StatusCode};
use chrono::Utc;
use pulse_shared::{
    enroll::{self, ValidLead},
    http::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth, Created},
    model::{
        Enrollment, EnrollmentList, EnrollmentStatus, EnrollmentStep, ManualEnrollment,
        SequenceStatus, outcome,
    },
};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ApiState;

const ENROLLMENT_COLUMNS: &str = "e.id, e.sequence_id, e.lead_id, l.email AS lead_email, e.status,
    e.end_reason, e.current_step, e.generation, e.mailbox_id,
    (SELECT min(sr.due_at) FROM step_runs sr
      WHERE sr.enrollment_id = e.id AND sr.state IN ('SCHEDULED', 'QUEUED')) AS next_due_at,
    e.created_at, e.ended_at";

/// Enroll one lead by hand.
///
/// 201 with the new enrollment; 200 with the existing one when the lead is already ACTIVE in
/// this sequence (deduplicated). A lead whose enrollment ended is not restarted (409): that is
/// what re-enroll is for.
#[utoipa::path(
    post, operation_id = "create_enrollment", path = "/v1/sequences/{id}/enrollments", tag = "enrollments",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = ManualEnrollment,
    responses(
        (status = 201, description = "Enrolled", body = Enrollment,
         headers(("Location" = String, description = "The enrollment: /v1/enrollments/{id}"))),
        (status = 200, description = "Already enrolled (deduplicated)", body = Enrollment),
        (status = 404, body = pulse_shared::http::ErrorBody),
        (status = 409, description = "Sequence paused or deleted, or the lead's enrollment ended", body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    state: &ApiState,
    auth: &Auth,
    sequence: Uuid,
    req: ManualEnrollment,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let lead = ValidLead::parse(&req.lead, "lead", auth.addresses)?;
    let mut tx = state.db.begin().await?;
    // FOR SHARE: a pause or delete committing meanwhile waits for this enrollment.
    let status: Option<SequenceStatus> = sqlx::query_scalar(
        "SELECT status FROM sequences WHERE id = $1 AND workspace_id = $2 FOR SHARE",
    )
    .bind(sequence)
    .bind(auth.workspace)
    .fetch_optional(&mut *tx)
    .await?;
    match status {
        None => return Err(ApiError::NotFound("sequence")),
        Some(SequenceStatus::Active) => {}
        Some(SequenceStatus::Paused) => {
            return Err(ApiError::Conflict(
                "the sequence is paused: no new enrollments".into(),
            ));
        }
        Some(other) => {
            return Err(ApiError::Conflict(format!(
                "the sequence is {}",
                other.as_str().to_lowercase()
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
    if done.outcome == outcome::SUPPRESSED {
        return Err(ApiError::Conflict(format!(
            "{} is on the suppression list ({}); lift it first with DELETE /v1/suppressions/…",
            lead.email,
            outcome::SUPPRESSED
        )));
    }
    let id = done.enrollment_id.ok_or(ApiError::NotFound("enrollment"))?;
    let enrollment = fetch(&state.db, auth.workspace, id).await?;
    match done.outcome {
        outcome::CREATED => {
            Ok(Created(format!("/v1/enrollments/{id}"), enrollment).into_response())
        }
        outcome::ALREADY_ACTIVE => Ok((StatusCode::OK, Json(enrollment)).into_response()),
        _ => Err(ApiError::Conflict(format!(
            "{} already went through this sequence (enrollment {id} is {}); use re-enroll to start again",
            lead.email, enrollment.status
        ))),
    }
}

pub(crate) async fn fetch(db: &PgPool, workspace: Uuid, id: Uuid) -> Result<Enrollment, ApiError> {
    let enrollment: Enrollment = sqlx::query_as(&format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE e.id = $1 AND e.workspace_id = $2"
    ))
    .bind(id)
    .bind(workspace)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("enrollment"))?;
    let mut one = vec![enrollment];
    attach_steps(db, &mut one).await?;
    one.pop().ok_or(ApiError::NotFound("enrollment"))
}

/// Fills in each enrollment's steps: who got what, and when.
async fn attach_steps(db: &PgPool, enrollments: &mut [Enrollment]) -> Result<(), ApiError> {
    let ids: Vec<Uuid> = enrollments.iter().map(|e| e.id).collect();
    let steps: Vec<EnrollmentStep> = sqlx::query_as(
        "SELECT enrollment_id, step_id, position, state, due_at, sent_at, sequence_version,
                last_error AS note
         FROM step_runs WHERE enrollment_id = ANY($1) ORDER BY created_at, position",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    for e in enrollments.iter_mut() {
        e.steps = steps
            .iter()
            .filter(|s| s.enrollment_id == e.id)
            .cloned()
            .collect();
    }
    Ok(())
}

/// One enrollment with each step's state and time.
#[utoipa::path(
    get, operation_id = "get_enrollment", path = "/v1/enrollments/{id}", tag = "enrollments",
    params(("id" = Uuid, Path, description = "Enrollment id")),
    responses((status = 200, body = Enrollment), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_one(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<Enrollment> {
    fetch(&state.db, auth.workspace, id).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnrollmentFilter {
    /// Only enrollments in this status (any letter case).
    #[param(
        pattern = "^(active|completed|cancelled|ineligible|failed|ACTIVE|COMPLETED|CANCELLED|INELIGIBLE|FAILED)$"
    )]
    pub status: Option<String>,
    /// Only enrollments at this step position.
    pub step: Option<i32>,
    /// Only this lead's enrollments (email).
    #[param(format = "address")]
    pub lead: Option<String>,
    /// Most items returned (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Continue after this enrollment id (from the previous page's `next`).
    pub after: Option<Uuid>,
}

/// The enrollments of a sequence, oldest first, each with its steps' states and times.
#[utoipa::path(
    get, operation_id = "list_enrollments", path = "/v1/sequences/{id}/enrollments", tag = "enrollments",
    params(("id" = Uuid, Path, description = "Sequence id"), EnrollmentFilter),
    responses((status = 200, body = EnrollmentList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(
    state: &ApiState,
    auth: &Auth,
    sequence: Uuid,
    filter: EnrollmentFilter,
) -> ApiResult<EnrollmentList> {
    let status = filter
        .status
        .as_deref()
        .map(|s| s.to_uppercase().parse::<EnrollmentStatus>())
        .transpose()
        .map_err(|e| ApiError::invalid("status", e.to_string()))?;
    let limit = crate::Page {
        limit: filter.limit,
    }
    .limit()?;
    let lead = filter
        .lead
        .as_deref()
        .map(|l| pulse_shared::domain::validate::email(l).map_err(|m| ApiError::invalid("lead", m)))
        .transpose()?;
    crate::sequences::exists(&state.db, auth.workspace, sequence).await?;
    let mut enrollments: Vec<Enrollment> = sqlx::query_as(&format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE e.workspace_id = $1 AND e.sequence_id = $2 AND ($3::text IS NULL OR e.status = $3)
           AND ($4::uuid IS NULL OR (e.created_at, e.id) >
                (SELECT created_at, id FROM enrollments WHERE id = $4))
           AND ($6::int IS NULL OR e.current_step = $6)
           AND ($7::text IS NULL OR l.email = $7)
         ORDER BY e.created_at, e.id LIMIT $5"
    ))
    .bind(auth.workspace)
    .bind(sequence)
    .bind(status)
    .bind(filter.after)
    .bind(limit)
    .bind(filter.step)
    .bind(lead)
    .fetch_all(&state.db)
    .await?;
    attach_steps(&state.db, &mut enrollments).await?;
    let next = (enrollments.len() as i64 == limit)
        .then(|| enrollments.last().map(|e| e.id))
        .flatten();
    Ok(EnrollmentList { enrollments, next })
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn create(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(sequence): ApiPath<Uuid>,
        ApiJson(req): ApiJson<ManualEnrollment>,
    ) -> ApiResult<axum::response::Response> {
        super::create(&state, &auth, sequence, req).await
    }

    pub async fn get_one(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<Enrollment>> {
        super::get_one(&state, &auth, id).await.map(Json)
    }

    pub async fn list(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(sequence): ApiPath<Uuid>,
        ApiQuery(filter): ApiQuery<EnrollmentFilter>,
    ) -> ApiResult<Json<EnrollmentList>> {
        super::list(&state, &auth, sequence, filter).await.map(Json)
    }
}
