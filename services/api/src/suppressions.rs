//! `/v1/suppressions`: the workspace's suppression list. Owns the API of adding entries
//! (returning only once nothing more can go out to the leads they reach: the guarantee pause
//! gives), listing them and lifting one (recorded with who and why). What an entry is, adding
//! one with the enrollments it ends, and the check at enrollment are
//! `pulse_shared::suppression`'s.

use axum::{Json, extract::State, http::StatusCode};
use pulse_shared::{
    domain::validate,
    http::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth},
    model::{AddSuppressions, Suppression, SuppressionList, SuppressionReason, SuppressionsAdded},
    suppression::{self, Entry},
};
use serde::Deserialize;
use sqlx::Row;
use uuid::Uuid;

use crate::{
    ApiState,
    drain::{Scope, in_flight_warning, wait_in_flight},
};

/// Add addresses or domains to the suppression list; ends every ACTIVE enrollment of the leads
/// they reach.
#[utoipa::path(
    post, operation_id = "add_suppressions", path = "/v1/suppressions", tag = "suppressions",
    request_body = AddSuppressions,
    responses(
        (status = 200, body = SuppressionsAdded),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 401, body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn add(
    state: &ApiState,
    auth: &Auth,
    req: AddSuppressions,
) -> ApiResult<SuppressionsAdded> {
    if req.entries.is_empty() || req.entries.len() > suppression::MAX_PER_CALL {
        return Err(ApiError::invalid(
            "entries",
            format!("must have 1 to {} entries", suppression::MAX_PER_CALL),
        ));
    }
    let mut entries = Vec::with_capacity(req.entries.len());
    for (i, e) in req.entries.iter().enumerate() {
        let entry = Entry::parse(e.email.as_deref(), e.domain.as_deref())
            .map_err(|(field, m)| ApiError::invalid(format!("entries[{i}].{field}"), m))?;
        entries.push((entry, e.reason.unwrap_or(SuppressionReason::Manual)));
    }
    let source = format!("api:{}", auth.actor);
    suppress(state, auth.workspace, &auth.actor, &source, entries).await
}

/// Adds `entries` (idempotent), then ends the ACTIVE enrollments they reach
/// (`suppression::add`) and waits for sends already claimed. Shared by the API and the one-click
/// endpoint.
pub(crate) async fn suppress(
    state: &ApiState,
    workspace: Uuid,
    actor: &str,
    source: &str,
    entries: Vec<(Entry, SuppressionReason)>,
) -> Result<SuppressionsAdded, ApiError> {
    let done = suppression::add(&state.db, workspace, actor, source, entries).await?;
    let mut out = SuppressionsAdded {
        added: done.added,
        already: done.already,
        enrollments_cancelled: done.ended,
        warnings: Vec::new(),
    };
    if !done.leads.is_empty() {
        let left = wait_in_flight(&state.db, Scope::Leads(done.leads), state.drain_timeout).await?;
        out.warnings
            .extend(in_flight_warning(left, state.drain_timeout));
    }
    tracing::info!(%workspace, %actor, added = out.added, cancelled = out.enrollments_cancelled, "suppressions added");
    Ok(out)
}

/// Filters and cursor of the suppression list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuppressionFilter {
    /// This address (and, when its domain is suppressed, that entry).
    #[param(format = "address")]
    pub email: Option<String>,
    /// Entries of this domain: the domain itself and its addresses.
    #[param(format = "domain")]
    pub domain: Option<String>,
    pub reason: Option<SuppressionReason>,
    /// The `next` of the previous page.
    #[param(format = "text")]
    pub after: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The suppression list, by value.
#[utoipa::path(
    get, operation_id = "list_suppressions", path = "/v1/suppressions", tag = "suppressions",
    params(SuppressionFilter),
    responses((status = 200, body = SuppressionList), (status = 400, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(
    state: &ApiState,
    auth: &Auth,
    f: SuppressionFilter,
) -> ApiResult<SuppressionList> {
    let limit = f.limit.unwrap_or(100);
    if let Some(after) = &f.after {
        validate::no_control(after).map_err(|m| ApiError::invalid("after", m))?;
    }
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 1000"));
    }
    let email = f
        .email
        .as_deref()
        .map(|e| Entry::parse(Some(e), None).map_err(|(_, m)| ApiError::invalid("email", m)))
        .transpose()?;
    let domain = f
        .domain
        .as_deref()
        .map(|d| validate::domain(d).map_err(|m| ApiError::invalid("domain", m)))
        .transpose()?;
    let email_domain = email
        .as_ref()
        .map(|e| suppression::domain_of(e.value()).to_owned());
    let rows = sqlx::query(
        "SELECT kind, value, reason, source, created_at FROM suppressions
         WHERE workspace_id = $1
           AND ($2::text IS NULL OR (kind = 'email' AND value = $2) OR (kind = 'domain' AND value = $3))
           AND ($4::text IS NULL OR value = $4 OR value LIKE '%@' || $4)
           AND ($5::text IS NULL OR reason = $5)
           AND ($6::text IS NULL OR value > $6)
         ORDER BY value, kind LIMIT $7",
    )
    .bind(auth.workspace)
    .bind(email.as_ref().map(Entry::value))
    .bind(email_domain)
    .bind(domain)
    .bind(f.reason.map(SuppressionReason::as_str))
    .bind(f.after)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let mut suppressions = Vec::with_capacity(rows.len());
    for r in rows {
        let reason: String = r.get("reason");
        suppressions.push(Suppression {
            kind: r.get("kind"),
            value: r.get("value"),
            reason: SuppressionReason::parse(&reason)
                .ok_or_else(|| ApiError::Internal(format!("stored reason {reason}").into()))?,
            source: r.get("source"),
            created_at: r.get("created_at"),
        });
    }
    let (suppressions, next) = crate::page_of(suppressions, limit, |s| s.value.clone());
    Ok(SuppressionList { suppressions, next })
}

/// Why a suppression is lifted.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiftQuery {
    /// Recorded with who lifted it (at most 500 characters).
    #[param(format = "text", max_length = 500)]
    pub reason: Option<String>,
}

/// Lift a suppression (an address or a domain): the lead can be enrolled again. Recorded with
/// who lifted it and why. Enrollments it ended stay ended (re-enroll them).
#[utoipa::path(
    delete, path = "/v1/suppressions/{value}", tag = "suppressions",
    params(("value" = String, Path, description = "An address or a domain", format = "address-or-domain"), LiftQuery),
    responses((status = 204, description = "Lifted"), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn lift(
    state: &ApiState,
    auth: &Auth,
    value: String,
    q: LiftQuery,
) -> ApiResult<StatusCode> {
    // A value that cannot be an address or a domain names no suppression.
    let entry = Entry::parse_value(&value).map_err(|_| ApiError::NotFound("suppression"))?;
    let why = q
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| format!("lifted by {}", auth.actor));
    if why.chars().count() > 500 {
        return Err(ApiError::invalid("reason", "at most 500 characters"));
    }
    validate::no_control(&why).map_err(|m| ApiError::invalid("reason", m))?;
    let mut tx = state.db.begin().await?;
    let was: Option<String> = sqlx::query_scalar(
        "DELETE FROM suppressions WHERE workspace_id = $1 AND kind = $2 AND value = $3
         RETURNING reason",
    )
    .bind(auth.workspace)
    .bind(entry.kind())
    .bind(entry.value())
    .fetch_optional(&mut *tx)
    .await?;
    let was = was.ok_or(ApiError::NotFound("suppression"))?;
    sqlx::query(
        "INSERT INTO suppression_lifts (workspace_id, kind, value, reason, was_reason, actor)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(auth.workspace)
    .bind(entry.kind())
    .bind(entry.value())
    .bind(&why)
    .bind(&was)
    .bind(&auth.actor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(workspace = %auth.workspace, actor = %auth.actor, kind = entry.kind(), reason = %why, "suppression lifted");
    Ok(StatusCode::NO_CONTENT)
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn add(
        State(state): State<ApiState>,
        auth: Auth,
        ApiJson(req): ApiJson<AddSuppressions>,
    ) -> ApiResult<Json<SuppressionsAdded>> {
        super::add(&state, &auth, req).await.map(Json)
    }

    pub async fn list(
        State(state): State<ApiState>,
        auth: Auth,
        ApiQuery(f): ApiQuery<SuppressionFilter>,
    ) -> ApiResult<Json<SuppressionList>> {
        super::list(&state, &auth, f).await.map(Json)
    }

    pub async fn lift(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(value): ApiPath<String>,
        ApiQuery(q): ApiQuery<LiftQuery>,
    ) -> ApiResult<StatusCode> {
        super::lift(&state, &auth, value, q).await
    }
}
