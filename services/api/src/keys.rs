//! Keys and workspaces over HTTP:
//! * `/v1/keys` (an admin key of the workspace): make a key (shown once), list them (never the
//!   key), revoke one. Every key action is in the workspace's audit log (`crate::audit`).
//! * `/v1/admin/workspaces` (the platform key, `PULSE_ADMIN_KEY`): make a workspace with its
//!   first admin key, list workspaces. Without `PULSE_ADMIN_KEY` these answer 404.
//!
//! The table and the scope rule are `pulse_shared::keys`'; this module only checks input,
//! audits, and answers. It never shows a key twice.

use axum::{
    Json,
    extract::{FromRequestParts, State},
    http::request::Parts,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use pulse_shared::{
    audit,
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth, Created},
    keys::{self, KeyInfo, NewKey, Scope},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::ApiState;

/// A key to make.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// What the key is for; the audit trail names it (1–100 characters).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f]([^\\x00-\\x1f\\x7f-\\x9f]{0,98}[^\\s\\x00-\\x1f\\x7f-\\x9f])?$",
        example = "CRM sync"
    )]
    pub label: String,
    pub scope: Scope,
}

/// The keys of the caller's workspace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// A label or a name: 1 to 100 characters, no control characters; `field` names it in errors.
fn check_text<'a>(field: &str, text: &'a str) -> Result<&'a str, ApiError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 100 || text.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "give 1 to 100 characters, no control characters",
        ));
    }
    Ok(text)
}

/// Make an API key in the caller's workspace. The key is in this answer only.
#[utoipa::path(
    post, operation_id = "create_key", path = "/v1/keys", tag = "keys", request_body = KeyRequest,
    responses((status = 201, body = NewKey, headers(("Location" = String, description = "The key's listing"))),
              (status = 401, body = pulse_shared::http::ErrorBody),
              (status = 403, description = "Not an admin key", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create(state: &ApiState, auth: &Auth, req: KeyRequest) -> ApiResult<Created<NewKey>> {
    let label = check_text("label", &req.label)?;
    let mut tx = state.db.begin().await?;
    let made = keys::create(&mut tx, auth.workspace, label, req.scope, &auth.actor).await?;
    audit::record_workspace(
        &mut tx,
        auth.workspace,
        &auth.actor,
        "key_created",
        json!({"id": made.info.id, "label": made.info.label, "scope": made.info.scope}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(key = %made.info.id, scope = made.info.scope.as_str(), actor = %auth.actor, "API key created");
    Ok(Created(format!("/v1/keys/{}", made.info.id), made))
}

/// The keys of the caller's workspace, newest first, revoked ones included. Never the keys.
#[utoipa::path(
    get, operation_id = "list_keys", path = "/v1/keys", tag = "keys",
    responses((status = 200, body = KeyList), (status = 401, body = pulse_shared::http::ErrorBody),
              (status = 403, description = "Not an admin key", body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(state: &ApiState, auth: &Auth) -> ApiResult<KeyList> {
    Ok(KeyList {
        keys: keys::list(&state.db, auth.workspace).await?,
    })
}

/// Revoke a key: from the next request it opens nothing, on every API instance, and its Hub
/// sessions end. Revoking the key that makes the request is allowed.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path, description = "Key id")),
    responses((status = 200, body = KeyInfo), (status = 401, body = pulse_shared::http::ErrorBody),
              (status = 403, description = "Not an admin key", body = pulse_shared::http::ErrorBody),
              (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn revoke(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<KeyInfo> {
    let mut tx = state.db.begin().await?;
    let key = keys::revoke(&mut tx, auth.workspace, id)
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    audit::record_workspace(
        &mut tx,
        auth.workspace,
        &auth.actor,
        "key_revoked",
        json!({"id": key.id, "label": key.label, "scope": key.scope}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(key = %id, actor = %auth.actor, "API key revoked");
    Ok(key)
}

/// The platform administrator: a request with `PULSE_ADMIN_KEY` as its bearer key.
pub struct PlatformAdmin;

impl FromRequestParts<ApiState> for PlatformAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let given = pulse_shared::http::bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let Some(expected) = state.admin_key.as_ref() else {
            return Err(ApiError::NotFound("route"));
        };
        // Compared as hashes: equal length, and no early exit on the first differing byte.
        if pulse_shared::db::key_hash(given) == pulse_shared::db::key_hash(expected.expose()) {
            Ok(PlatformAdmin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// A workspace to make.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceRequest {
    #[schema(min_length = 1, max_length = 100, example = "Acme")]
    pub name: String,
}

/// A workspace as the platform administrator sees it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WorkspaceInfo {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A new workspace and its first admin key, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewWorkspace {
    pub workspace: WorkspaceInfo,
    pub key: NewKey,
}

/// Every workspace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<WorkspaceInfo>,
}

/// Make a workspace and its first admin key (`PULSE_ADMIN_KEY` only).
#[utoipa::path(
    post, path = "/v1/admin/workspaces", tag = "admin", request_body = WorkspaceRequest,
    responses((status = 201, body = NewWorkspace, headers(("Location" = String, description = "The workspace list"))),
              (status = 401, body = pulse_shared::http::ErrorBody),
              (status = 404, description = "No PULSE_ADMIN_KEY is set", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_workspace(
    state: &ApiState,
    _admin: PlatformAdmin,
    req: WorkspaceRequest,
) -> ApiResult<Response> {
    let name = check_text("name", &req.name)?;
    let (id, created_at, key) = keys::create_workspace(&state.db, name, "platform admin").await?;
    tracing::info!(workspace = %id, "workspace created");
    let made = NewWorkspace {
        workspace: WorkspaceInfo {
            id,
            name: name.to_owned(),
            created_at,
        },
        key,
    };
    Ok(Created("/v1/admin/workspaces".to_owned(), made).into_response())
}

/// Every workspace, oldest first (`PULSE_ADMIN_KEY` only).
#[utoipa::path(
    get, path = "/v1/admin/workspaces", tag = "admin",
    responses((status = 200, body = WorkspaceList), (status = 401, body = pulse_shared::http::ErrorBody),
              (status = 404, description = "No PULSE_ADMIN_KEY is set", body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_workspaces(state: &ApiState, _admin: PlatformAdmin) -> ApiResult<WorkspaceList> {
    let workspaces =
        sqlx::query_as("SELECT id, name, created_at FROM workspaces ORDER BY created_at, id")
            .fetch_all(&state.db)
            .await?;
    Ok(WorkspaceList { workspaces })
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn create(
        State(state): State<ApiState>,
        auth: Auth,
        ApiJson(req): ApiJson<KeyRequest>,
    ) -> ApiResult<Response> {
        super::create(&state, &auth, req)
            .await
            .map(IntoResponse::into_response)
    }

    pub async fn list(State(state): State<ApiState>, auth: Auth) -> ApiResult<Json<KeyList>> {
        super::list(&state, &auth).await.map(Json)
    }

    pub async fn revoke(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<KeyInfo>> {
        super::revoke(&state, &auth, id).await.map(Json)
    }

    pub async fn create_workspace(
        State(state): State<ApiState>,
        _admin: PlatformAdmin,
        ApiJson(req): ApiJson<WorkspaceRequest>,
    ) -> ApiResult<Response> {
        super::create_workspace(&state, _admin, req).await
    }

    pub async fn list_workspaces(
        State(state): State<ApiState>,
        _admin: PlatformAdmin,
    ) -> ApiResult<Json<WorkspaceList>> {
        super::list_workspaces(&state, _admin).await.map(Json)
    }
}
