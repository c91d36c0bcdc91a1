//! `/v1/webhooks` (admin keys): endpoints that receive the workspace's events, signed per
//! Standard Webhooks. Make one (its secret is in that answer only), list, read, change (URL,
//! events, enabled), delete, send it a test event, read its deliveries and replay one. Every
//! change is in the workspace's audit log. What an event is and how it is signed and guarded is
//! `pulse_shared::webhooks`'; delivery is the webhooks role's. This module never delivers.

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use pulse_shared::{
    audit,
    http::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth, Created},
    webhooks::{self, EVENTS},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::ApiState;

/// An endpoint to make.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where events are posted: `https://` (or `http://`); not a private address.
    #[schema(
        example = "https://crm.example.com/hooks/pulse",
        format = "endpoint-url"
    )]
    pub url: String,
    /// The events it receives, e.g. `["sequence.paused", "lead.suppressed"]`.
    #[schema(min_items = 1, format = "webhook-event")]
    pub events: Vec<String>,
}

/// What to change; what is left out stays.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    #[schema(format = "endpoint-url")]
    pub url: Option<String>,
    #[schema(min_items = 1, format = "webhook-event")]
    pub events: Option<Vec<String>>,
    /// `false` stops deliveries (messages wait); `true` starts them again and clears a
    /// disabled endpoint's reason.
    pub enabled: Option<bool>,
}

/// An endpoint, never its secret.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why Pulse disabled it (a day of failed deliveries).
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint just made, with its signing secret (shown once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_…`: verify each delivery's `webhook-signature` with it (any Standard Webhooks
    /// library). Shown once.
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One message to an endpoint and what became of it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// The `webhook-id` header: stable across retries.
    pub webhook_id: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    /// `PENDING`, `DELIVERED` or `FAILED`.
    pub state: String,
    pub attempts: i32,
    pub next_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<Delivery>,
    /// Pass as `before` for the next page.
    pub next: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryPage {
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

const COLUMNS: &str =
    "id, url, events, enabled, disabled_reason, failing_since, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, 'msg_' || id AS webhook_id, type, state, attempts, next_at,
    last_status, last_error, delivered_at, created_at, payload";

fn check(state: &ApiState, url: Option<&str>, events: Option<&[String]>) -> Result<(), ApiError> {
    if let Some(url) = url {
        webhooks::check_url(url, state.webhooks_allow_private)
            .map_err(|m| ApiError::invalid("url", m))?;
    }
    if let Some(events) = events {
        if events.is_empty() {
            return Err(ApiError::invalid("events", "name at least one event"));
        }
        if let Some((i, e)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| !EVENTS.contains(&e.as_str()))
        {
            return Err(ApiError::invalid(
                format!("events[{i}]"),
                format!("{e:?} is not one of {}", EVENTS.join(", ")),
            ));
        }
    }
    Ok(())
}

async fn fetch(state: &ApiState, auth: &Auth, id: Uuid) -> Result<Webhook, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND workspace_id = $2"
    ))
    .bind(id)
    .bind(auth.workspace)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound("webhook"))
}

/// Make an endpoint. Its signing secret is in this answer only.
#[utoipa::path(
    post, operation_id = "create_webhook", path = "/v1/webhooks", tag = "webhooks", request_body = WebhookRequest,
    responses((status = 201, body = NewWebhook, headers(("Location" = String, description = "The endpoint"))),
              (status = 403, description = "Not an admin key", body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create(
    state: &ApiState,
    auth: &Auth,
    req: WebhookRequest,
) -> ApiResult<Created<NewWebhook>> {
    check(state, Some(&req.url), Some(&req.events))?;
    let secret = webhooks::new_secret();
    let mut tx = state.db.begin().await?;
    let webhook: Webhook = sqlx::query_as(&format!(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(auth.workspace)
    .bind(req.url.trim())
    .bind(&req.events)
    .bind(&secret)
    .fetch_one(&mut *tx)
    .await?;
    audit::record_workspace(
        &mut tx,
        auth.workspace,
        &auth.actor,
        "webhook_created",
        json!({"id": webhook.id, "url": webhook.url, "events": webhook.events}),
    )
    .await?;
    tx.commit().await?;
    let location = format!("/v1/webhooks/{}", webhook.id);
    Ok(Created(location, NewWebhook { webhook, secret }))
}

/// The workspace's endpoints, newest first.
#[utoipa::path(
    get, operation_id = "list_webhooks", path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList)), security(("bearer" = []))
)]
pub async fn list(state: &ApiState, auth: &Auth) -> ApiResult<WebhookList> {
    let webhooks = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE workspace_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(auth.workspace)
    .fetch_all(&state.db)
    .await?;
    Ok(WebhookList { webhooks })
}

/// One endpoint.
#[utoipa::path(
    get, operation_id = "get_webhook", path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses((status = 200, body = Webhook)), security(("bearer" = []))
)]
pub async fn get_one(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<Webhook> {
    fetch(state, auth, id).await
}

/// Change an endpoint's URL, events, or whether it is enabled.
#[utoipa::path(
    patch, operation_id = "patch_webhook", path = "/v1/webhooks/{id}", tag = "webhooks", request_body = WebhookPatch,
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses((status = 200, body = Webhook)), security(("bearer" = []))
)]
pub async fn patch(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    req: WebhookPatch,
) -> ApiResult<Webhook> {
    check(state, req.url.as_deref(), req.events.as_deref())?;
    let mut tx = state.db.begin().await?;
    let webhook: Webhook = sqlx::query_as(&format!(
        "UPDATE webhooks SET url = COALESCE($3, url), events = COALESCE($4, events),
             enabled = COALESCE($5, enabled),
             disabled_reason = CASE WHEN $5 THEN NULL ELSE disabled_reason END,
             failing_since = CASE WHEN $5 THEN NULL ELSE failing_since END, updated_at = now()
         WHERE id = $1 AND workspace_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(auth.workspace)
    .bind(req.url.as_deref().map(str::trim))
    .bind(&req.events)
    .bind(req.enabled)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("webhook"))?;
    audit::record_workspace(
        &mut tx,
        auth.workspace,
        &auth.actor,
        "webhook_edited",
        json!({"id": id, "url": webhook.url, "events": webhook.events, "enabled": webhook.enabled}),
    )
    .await?;
    tx.commit().await?;
    Ok(webhook)
}

/// Delete an endpoint and its undelivered messages.
#[utoipa::path(
    delete, operation_id = "delete_webhook", path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses((status = 200, body = Webhook)), security(("bearer" = []))
)]
pub async fn delete(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<Webhook> {
    let mut tx = state.db.begin().await?;
    let webhook: Webhook = sqlx::query_as(&format!(
        "DELETE FROM webhooks WHERE id = $1 AND workspace_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(auth.workspace)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("webhook"))?;
    audit::record_workspace(
        &mut tx,
        auth.workspace,
        &auth.actor,
        "webhook_deleted",
        json!({"id": id, "url": webhook.url}),
    )
    .await?;
    tx.commit().await?;
    Ok(webhook)
}

/// Send the endpoint a `webhook.test` event (whatever it subscribes to).
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses((status = 202, body = Delivery)), security(("bearer" = []))
)]
pub async fn test(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<Delivery> {
    fetch(state, auth, id).await?;
    let delivery: Delivery = sqlx::query_as(&format!(
        "INSERT INTO webhook_messages (webhook_id, workspace_id, type, payload)
         VALUES ($1, $2, 'webhook.test', jsonb_build_object('type', 'webhook.test',
                 'timestamp', now(), 'data', jsonb_build_object('webhook_id', $1::uuid,
                 'actor', $3::text)))
         RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(id)
    .bind(auth.workspace)
    .bind(&auth.actor)
    .fetch_one(&state.db)
    .await?;
    Ok(delivery)
}

/// The endpoint's messages, newest first: what was sent, how often, and the last answer.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id"), DeliveryPage),
    responses((status = 200, body = DeliveryList)), security(("bearer" = []))
)]
pub async fn deliveries(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    page: DeliveryPage,
) -> ApiResult<DeliveryList> {
    fetch(state, auth, id).await?;
    let limit = crate::Page { limit: page.limit }.limit()?;
    if page.before.is_some_and(|b| b < 1) {
        return Err(ApiError::invalid(
            "before",
            "must be a delivery id (1 or more)",
        ));
    }
    let deliveries: Vec<Delivery> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_messages
         WHERE webhook_id = $1 AND ($2::int8 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(id)
    .bind(page.before)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let (deliveries, next) = crate::page_of(deliveries, limit, |d| d.id);
    Ok(DeliveryList { deliveries, next })
}

/// Deliver a message again, now (the same `webhook-id`).
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/deliveries/{delivery}/replay", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id"), ("delivery" = i64, Path, description = "Delivery id")),
    responses((status = 202, body = Delivery)), security(("bearer" = []))
)]
pub async fn replay(
    state: &ApiState,
    auth: &Auth,
    (id, delivery): (Uuid, i64),
) -> ApiResult<Delivery> {
    fetch(state, auth, id).await?;
    let again: Delivery = sqlx::query_as(&format!(
        "UPDATE webhook_messages SET state = 'PENDING', next_at = now(), created_at = now()
         WHERE id = $1 AND webhook_id = $2 RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(delivery)
    .bind(id)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound("delivery"))?;
    Ok(again)
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn create(
        State(state): State<ApiState>,
        auth: Auth,
        ApiJson(req): ApiJson<WebhookRequest>,
    ) -> ApiResult<Response> {
        super::create(&state, &auth, req)
            .await
            .map(IntoResponse::into_response)
    }

    pub async fn list(State(state): State<ApiState>, auth: Auth) -> ApiResult<Json<WebhookList>> {
        super::list(&state, &auth).await.map(Json)
    }

    pub async fn get_one(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<Webhook>> {
        super::get_one(&state, &auth, id).await.map(Json)
    }

    pub async fn patch(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(req): ApiJson<WebhookPatch>,
    ) -> ApiResult<Json<Webhook>> {
        super::patch(&state, &auth, id, req).await.map(Json)
    }

    pub async fn delete(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<Webhook>> {
        super::delete(&state, &auth, id).await.map(Json)
    }

    pub async fn test(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Response> {
        let delivery = super::test(&state, &auth, id).await?;
        Ok((axum::http::StatusCode::ACCEPTED, Json(delivery)).into_response())
    }

    pub async fn deliveries(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiQuery(page): ApiQuery<DeliveryPage>,
    ) -> ApiResult<Json<DeliveryList>> {
        super::deliveries(&state, &auth, id, page).await.map(Json)
    }

    pub async fn replay(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath((id, delivery)): ApiPath<(Uuid, i64)>,
    ) -> ApiResult<Response> {
        let again = super::replay(&state, &auth, (id, delivery)).await?;
        Ok((axum::http::StatusCode::ACCEPTED, Json(again)).into_response())
    }
}
