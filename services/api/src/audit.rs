//! The audit logs over HTTP, newest first and paged by `before` (the `next` of the previous
//! page): a sequence's (`GET /v1/sequences/{id}/audit`: who created, edited, paused, resumed,
//! cancelled, re-enrolled, and the guardrails' pauses) and the workspace's own (`GET /v1/audit`:
//! keys made and revoked). Writing events is `pulse_shared::audit`'s, in the transaction of each
//! change; this module only reads.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use pulse_shared::{
    http::{ApiPath, ApiQuery, ApiResult, Auth},
    model::{AuditEvent, AuditList},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ApiState;

/// Paging of an audit log, newest first.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditPage {
    /// Most events (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Events older than this id (the `next` of the previous page).
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

impl AuditPage {
    fn limit(&self) -> Result<i64, pulse_shared::http::ApiError> {
        if self.before.is_some_and(|b| b < 1) {
            return Err(pulse_shared::http::ApiError::invalid(
                "before",
                "must be an event id (1 or more)",
            ));
        }
        crate::Page { limit: self.limit }.limit()
    }
}

/// The sequence's audit trail, newest first: who did what, when, before and after.
#[utoipa::path(
    get, path = "/v1/sequences/{id}/audit", tag = "audit",
    params(("id" = Uuid, Path, description = "Sequence id"), AuditPage),
    responses((status = 200, body = AuditList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn audit_list(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    page: AuditPage,
) -> ApiResult<AuditList> {
    let limit = page.limit()?;
    crate::sequences::exists(&state.db, auth.workspace, id).await?;
    let events: Vec<AuditEvent> = sqlx::query_as(
        "SELECT id, sequence_id, enrollment_id, actor, action, before, after, at FROM audit_events
         WHERE workspace_id = $1 AND sequence_id = $2 AND ($3::int8 IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(auth.workspace)
    .bind(id)
    .bind(page.before)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let (events, next) = crate::page_of(events, limit, |e| e.id);
    Ok(AuditList { events, next })
}

/// One workspace-level audit event (keys, webhooks).
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WorkspaceEvent {
    pub id: i64,
    pub actor: String,
    /// `key_created`, `key_revoked`, …
    pub action: String,
    /// What the action concerned.
    pub detail: Option<serde_json::Value>,
    pub at: DateTime<Utc>,
}

/// A page of the workspace's audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkspaceAudit {
    pub events: Vec<WorkspaceEvent>,
    /// Pass as `before` for the next page; `null` when this is the last.
    pub next: Option<i64>,
}

/// The workspace's own audit log (what belongs to no sequence: keys, webhooks), newest first.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit", params(AuditPage),
    responses((status = 200, body = WorkspaceAudit), (status = 401, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn audit_log(
    state: &ApiState,
    auth: &Auth,
    page: AuditPage,
) -> ApiResult<WorkspaceAudit> {
    let limit = page.limit()?;
    let events: Vec<WorkspaceEvent> = sqlx::query_as(
        "SELECT id, actor, action, after AS detail, at FROM audit_events
         WHERE workspace_id = $1 AND sequence_id IS NULL AND ($2::int8 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(auth.workspace)
    .bind(page.before)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let (events, next) = crate::page_of(events, limit, |e| e.id);
    Ok(WorkspaceAudit { events, next })
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn audit_list(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiQuery(page): ApiQuery<AuditPage>,
    ) -> ApiResult<Json<AuditList>> {
        super::audit_list(&state, &auth, id, page).await.map(Json)
    }

    pub async fn audit_log(
        State(state): State<ApiState>,
        auth: Auth,
        ApiQuery(page): ApiQuery<AuditPage>,
    ) -> ApiResult<Json<WorkspaceAudit>> {
        super::audit_log(&state, &auth, page).await.map(Json)
    }
}
