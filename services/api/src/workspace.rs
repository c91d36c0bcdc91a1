//! `GET` and `PATCH /v1/workspace`: the caller's workspace and its settings. Owns the settings
//! columns of `workspaces`; what each setting changes is enforced where that input enters (the
//! address policy by `domain::validate::address`, through `Auth::addresses`).

use axum::{Json, extract::State};
use pulse_shared::http::{ApiError, ApiJson, ApiResult, Auth};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ApiState;

/// A workspace and its settings.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    /// Accept lead addresses whose domain has no dot (`ops@mailhub`), for internal relays.
    pub allow_dotless_domains: bool,
}

/// The settings to change; a setting left out keeps its value.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    pub allow_dotless_domains: Option<bool>,
}

/// The caller's workspace and its settings.
#[utoipa::path(
    get, path = "/v1/workspace", tag = "workspace",
    responses((status = 200, body = Workspace), (status = 401, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_one(State(state): State<ApiState>, auth: Auth) -> ApiResult<Json<Workspace>> {
    Ok(Json(fetch(&state, auth.workspace).await?))
}

/// Change the caller's workspace settings. Takes effect for the next request: addresses
/// already stored are not re-checked.
#[utoipa::path(
    patch, path = "/v1/workspace", tag = "workspace",
    request_body = WorkspacePatch,
    responses(
        (status = 200, body = Workspace),
        (status = 400, description = "Malformed JSON or an unknown setting", body = pulse_shared::http::ErrorBody),
        (status = 401, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    State(state): State<ApiState>,
    auth: Auth,
    ApiJson(req): ApiJson<WorkspacePatch>,
) -> ApiResult<Json<Workspace>> {
    if let Some(dotless) = req.allow_dotless_domains {
        sqlx::query("UPDATE workspaces SET allow_dotless_domains = $2 WHERE id = $1")
            .bind(auth.workspace)
            .bind(dotless)
            .execute(&state.db)
            .await?;
        tracing::info!(workspace = %auth.workspace, actor = %auth.actor, allow_dotless_domains = dotless, "workspace setting changed");
    }
    Ok(Json(fetch(&state, auth.workspace).await?))
}

async fn fetch(state: &ApiState, workspace: Uuid) -> Result<Workspace, ApiError> {
    sqlx::query_as("SELECT id, name, allow_dotless_domains FROM workspaces WHERE id = $1")
        .bind(workspace)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound("workspace"))
}
