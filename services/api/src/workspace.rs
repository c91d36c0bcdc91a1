//! `GET` and `PATCH /v1/workspace`: the caller's workspace and its settings (the address policy,
//! the workspace's DKIM key, write-only, its sending limits). Owns the settings columns of `workspaces`; what each setting changes is enforced where that input enters (the
//! address policy by `domain::validate::address`, through `Auth::addresses`).

use axum::{Json, extract::State};
use pulse_shared::{
    domain::validate,
    http::{ApiError, ApiJson, ApiResult, Auth},
    limits::{self, Limit},
    mailbox,
};
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
    /// Mail from this domain is DKIM-signed with the workspace's key (unless its mailbox has
    /// one of its own).
    pub dkim_domain: Option<String>,
    pub dkim_selector: Option<String>,
    /// Sending limits of the whole workspace (`docs/sending-rules.md`).
    #[sqlx(json)]
    pub limits: Vec<Limit>,
    /// The zone the workspace's `P1D` limit rolls over in.
    pub timezone: String,
}

/// The settings to change; a setting left out keeps its value.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    pub allow_dotless_domains: Option<bool>,
    /// The workspace's DKIM key (`null` removes it; the private key is write-only).
    #[serde(default, deserialize_with = "pulse_shared::model::present")]
    #[schema(value_type = Option<WorkspaceDkim>)]
    pub dkim: Option<Option<WorkspaceDkim>>,
    /// The workspace's sending limits, replaced as a whole (`[]` removes them).
    #[schema(max_items = 5)]
    pub limits: Option<Vec<Limit>>,
    /// IANA zone of the workspace's `P1D` limit.
    #[schema(format = "timezone")]
    pub timezone: Option<String>,
}

/// A DKIM key for the mail of one domain.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDkim {
    /// The domain whose mail is signed (`d=`), e.g. `example.com`.
    #[schema(format = "domain")]
    pub domain: String,
    /// `<selector>._domainkey.<domain>` holds the public key.
    #[schema(format = "dkim-selector")]
    pub selector: String,
    /// RSA in PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`), or an Ed25519 seed in base64.
    #[schema(format = "dkim-key")]
    pub private_key: String,
}

/// The caller's workspace and its settings.
#[utoipa::path(
    get, operation_id = "get_workspace", path = "/v1/workspace", tag = "workspace",
    responses((status = 200, body = Workspace), (status = 401, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_one(state: &ApiState, auth: &Auth) -> ApiResult<Workspace> {
    fetch(state, auth.workspace).await
}

/// Change the caller's workspace settings. Takes effect for the next request: addresses
/// already stored are not re-checked.
#[utoipa::path(
    patch, operation_id = "patch_workspace", path = "/v1/workspace", tag = "workspace",
    request_body = WorkspacePatch,
    responses(
        (status = 200, body = Workspace),
        (status = 400, description = "Malformed JSON or an unknown setting", body = pulse_shared::http::ErrorBody),
        (status = 401, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch(state: &ApiState, auth: &Auth, req: WorkspacePatch) -> ApiResult<Workspace> {
    if let Some(dkim) = &req.dkim {
        let checked = match dkim {
            Some(d) => {
                let domain =
                    validate::domain(&d.domain).map_err(|m| ApiError::invalid("dkim.domain", m))?;
                let selector = mailbox::dkim_selector(&d.selector)
                    .map_err(|m| ApiError::invalid("dkim.selector", m))?;
                mailbox::dkim_key(&d.private_key)
                    .map_err(|m| ApiError::invalid("dkim.private_key", m))?;
                Some((domain, selector, d.private_key.trim().to_owned()))
            }
            None => None,
        };
        sqlx::query(
            "UPDATE workspaces SET dkim_domain = $2, dkim_selector = $3, dkim_private_key = $4,
                 dkim_updated_at = now()
             WHERE id = $1",
        )
        .bind(auth.workspace)
        .bind(checked.as_ref().map(|c| &c.0))
        .bind(checked.as_ref().map(|c| &c.1))
        .bind(checked.as_ref().map(|c| &c.2))
        .execute(&state.db)
        .await?;
        tracing::info!(workspace = %auth.workspace, actor = %auth.actor, dkim_domain = ?checked.as_ref().map(|c| &c.0), "workspace DKIM key changed");
    }
    if req.limits.is_some() || req.timezone.is_some() {
        let new_limits = req
            .limits
            .as_deref()
            .map(|l| limits::to_store("limits", l))
            .transpose()?;
        let timezone = req
            .timezone
            .as_deref()
            .map(crate::sequences::check_timezone)
            .transpose()?;
        sqlx::query(
            "UPDATE workspaces SET limits = CASE WHEN $2 THEN $3 ELSE limits END,
                 timezone = COALESCE($4, timezone)
             WHERE id = $1",
        )
        .bind(auth.workspace)
        .bind(new_limits.is_some())
        .bind(new_limits.flatten())
        .bind(timezone)
        .execute(&state.db)
        .await?;
        tracing::info!(workspace = %auth.workspace, actor = %auth.actor, limits = ?req.limits, "workspace sending limits changed");
    }
    if let Some(dotless) = req.allow_dotless_domains {
        sqlx::query("UPDATE workspaces SET allow_dotless_domains = $2 WHERE id = $1")
            .bind(auth.workspace)
            .bind(dotless)
            .execute(&state.db)
            .await?;
        tracing::info!(workspace = %auth.workspace, actor = %auth.actor, allow_dotless_domains = dotless, "workspace setting changed");
    }
    fetch(state, auth.workspace).await
}

async fn fetch(state: &ApiState, workspace: Uuid) -> Result<Workspace, ApiError> {
    sqlx::query_as(
        "SELECT id, name, allow_dotless_domains, dkim_domain, dkim_selector,
                COALESCE(limits, '[]'::jsonb) AS limits, timezone
         FROM workspaces WHERE id = $1",
    )
    .bind(workspace)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound("workspace"))
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn get_one(State(state): State<ApiState>, auth: Auth) -> ApiResult<Json<Workspace>> {
        super::get_one(&state, &auth).await.map(Json)
    }

    pub async fn patch(
        State(state): State<ApiState>,
        auth: Auth,
        ApiJson(req): ApiJson<WorkspacePatch>,
    ) -> ApiResult<Json<Workspace>> {
        super::patch(&state, &auth, req).await.map(Json)
    }
}
