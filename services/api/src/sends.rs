//! The send history: the ledger, per sequence or per enrollment. It survives a sequence's
//! deletion; nothing here writes.

use axum::{Json, extract::State};
use pulse_shared::{
    http::{ApiError, ApiPath, ApiQuery, ApiResult, Auth},
    model::{Send, SendList},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{ApiState, Page};

const SEND_QUERY: &str = "SELECT sl.idempotency_key, sl.enrollment_id, sl.sequence_id,
        l.email AS lead_email, sl.step_id, sl.position AS step_position, sl.generation, sl.state,
        sl.message_id, sl.smtp_code, sl.smtp_reply, sl.attempts, sl.sent_at, sl.updated_at
    FROM send_ledger sl JOIN leads l ON l.id = sl.lead_id
    WHERE sl.workspace_id = $1";

pub(crate) async fn ensure_sequence(
    db: &PgPool,
    workspace: Uuid,
    id: Uuid,
) -> Result<(), ApiError> {
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM sequences WHERE id = $1 AND workspace_id = $2")
            .bind(id)
            .bind(workspace)
            .fetch_optional(db)
            .await?;
    found.map(|_| ()).ok_or(ApiError::NotFound("sequence"))
}

/// What went out (or was attempted) for a sequence, oldest first.
#[utoipa::path(
    get, path = "/v1/sequences/{id}/sends", tag = "sends",
    params(("id" = Uuid, Path, description = "Sequence id"), Page),
    responses((status = 200, body = SendList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn for_sequence(
    State(state): State<ApiState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<Page>,
) -> ApiResult<Json<SendList>> {
    let limit = page.limit()?;
    ensure_sequence(&state.db, auth.workspace, id).await?;
    let sends: Vec<Send> = sqlx::query_as(&format!(
        "{SEND_QUERY} AND sl.sequence_id = $2 ORDER BY sl.created_at, sl.idempotency_key LIMIT $3"
    ))
    .bind(auth.workspace)
    .bind(id)
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(SendList { sends }))
}

/// What went out (or was attempted) for one enrollment, in step order.
#[utoipa::path(
    get, path = "/v1/enrollments/{id}/sends", tag = "sends",
    params(("id" = Uuid, Path, description = "Enrollment id")),
    responses((status = 200, body = SendList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn for_enrollment(
    State(state): State<ApiState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<SendList>> {
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM enrollments WHERE id = $1 AND workspace_id = $2")
            .bind(id)
            .bind(auth.workspace)
            .fetch_optional(&state.db)
            .await?;
    found.ok_or(ApiError::NotFound("enrollment"))?;
    let sends: Vec<Send> = sqlx::query_as(&format!(
        "{SEND_QUERY} AND sl.enrollment_id = $2 ORDER BY sl.position, sl.created_at"
    ))
    .bind(auth.workspace)
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(SendList { sends }))
}
