//! `/v1/domain-limits`: sending limits per recipient domain (`gmail.com`), within the workspace.
//! Owns the `domain_limits` rows; what a limit means and how it is enforced at send time is
//! `pulse_shared::limits`'s. A change applies from the next send's check; nothing queued moves.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use pulse_shared::{
    domain::validate,
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth},
    limits::{self, Limit},
};
use serde::{Deserialize, Serialize};

use crate::ApiState;

/// The limits on sends to one recipient domain.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DomainLimit {
    /// The domain, canonical (lower case, IDNA).
    pub domain: String,
    #[sqlx(json)]
    pub limits: Vec<Limit>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DomainLimitList {
    pub domain_limits: Vec<DomainLimit>,
}

/// `PUT /v1/domain-limits/{domain}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDomainLimit {
    /// One to five limits, e.g. `[{"max": 20, "per": "PT1M"}]`; `P1D` counts the UTC day.
    #[schema(min_items = 1, max_items = 5)]
    pub limits: Vec<Limit>,
}

/// The workspace's limits per recipient domain, by domain.
#[utoipa::path(
    get, operation_id = "list_domain_limits", path = "/v1/domain-limits", tag = "sending limits",
    responses((status = 200, body = DomainLimitList), (status = 401, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(state: &ApiState, auth: &Auth) -> ApiResult<DomainLimitList> {
    let domain_limits = sqlx::query_as(
        "SELECT domain, limits, updated_at FROM domain_limits WHERE workspace_id = $1
         ORDER BY domain LIMIT 1000",
    )
    .bind(auth.workspace)
    .fetch_all(&state.db)
    .await?;
    Ok(DomainLimitList { domain_limits })
}

/// Set the limits on sends to a recipient domain (replacing any it had).
#[utoipa::path(
    put, path = "/v1/domain-limits/{domain}", tag = "sending limits",
    params(("domain" = String, Path, description = "Recipient domain, e.g. gmail.com", format = "domain")),
    request_body = SetDomainLimit,
    responses(
        (status = 200, body = DomainLimit),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 401, body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set(
    state: &ApiState,
    auth: &Auth,
    domain: String,
    req: SetDomainLimit,
) -> ApiResult<DomainLimit> {
    let domain = check_domain(&domain)?;
    let Some(stored) = limits::to_store("limits", &req.limits)? else {
        return Err(ApiError::invalid(
            "limits",
            "give at least one limit; DELETE removes a domain's limits",
        ));
    };
    let saved = sqlx::query_as(
        "INSERT INTO domain_limits (workspace_id, domain, limits) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, domain) DO UPDATE SET limits = $3, updated_at = now()
         RETURNING domain, limits, updated_at",
    )
    .bind(auth.workspace)
    .bind(&domain)
    .bind(stored)
    .fetch_one(&state.db)
    .await?;
    tracing::info!(workspace = %auth.workspace, actor = %auth.actor, %domain, limits = ?req.limits, "domain sending limits set");
    Ok(saved)
}

/// Remove the limits on a recipient domain.
#[utoipa::path(
    delete, path = "/v1/domain-limits/{domain}", tag = "sending limits",
    params(("domain" = String, Path, description = "Recipient domain", format = "domain")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 404, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn remove(state: &ApiState, auth: &Auth, domain: String) -> ApiResult<StatusCode> {
    let domain = check_domain(&domain)?;
    let removed = sqlx::query("DELETE FROM domain_limits WHERE workspace_id = $1 AND domain = $2")
        .bind(auth.workspace)
        .bind(&domain)
        .execute(&state.db)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::NotFound("domain limit"));
    }
    tracing::info!(workspace = %auth.workspace, actor = %auth.actor, %domain, "domain sending limits removed");
    Ok(StatusCode::NO_CONTENT)
}

fn check_domain(raw: &str) -> Result<String, ApiError> {
    validate::domain(raw).map_err(|m| ApiError::invalid("domain", m))
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn list(
        State(state): State<ApiState>,
        auth: Auth,
    ) -> ApiResult<Json<DomainLimitList>> {
        super::list(&state, &auth).await.map(Json)
    }

    pub async fn set(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(domain): ApiPath<String>,
        ApiJson(req): ApiJson<SetDomainLimit>,
    ) -> ApiResult<Json<DomainLimit>> {
        super::set(&state, &auth, domain, req).await.map(Json)
    }

    pub async fn remove(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(domain): ApiPath<String>,
    ) -> ApiResult<StatusCode> {
        super::remove(&state, &auth, domain).await
    }
}
