//! `/v1/inbound`: what came back, as the operator reads it. Lists the workspace's recorded
//! replies, auto-replies, bounces, complaints and reported opt-outs (newest first, filtered by
//! enrollment, sequence, lead address or kind), and shows one with its raw message. Recording
//! and acting on them are `pulse_shared::feedback`'s; reading mail is the inbound role's.

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use pulse_shared::{
    domain::validate,
    feedback::Kind,
    http::{ApiError, ApiPath, ApiQuery, ApiResult, Auth},
    model::{InboundList, InboundMessage},
};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ApiState;

const COLUMNS: &str = "id, received_at, source, kind, mail_from, idempotency_key, enrollment_id,
    sequence_id, lead_id, address, detail, processed_at, outcome, digest";

/// Filters and cursor of the inbound list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboundFilter {
    pub enrollment_id: Option<Uuid>,
    pub sequence_id: Option<Uuid>,
    /// The address it is about (a lead's), as written: a line of text.
    #[param(format = "text")]
    pub address: Option<String>,
    /// `reply`, `auto_reply`, `bounce`, `soft_bounce`, `complaint`, `unsubscribe`, `other`.
    #[param(pattern = "^(reply|auto_reply|bounce|soft_bounce|complaint|unsubscribe|other)$")]
    pub kind: Option<String>,
    /// Only messages older than this id (the previous page's `next`).
    pub before: Option<i64>,
    /// Most returned (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// What came back to the workspace's sends, newest first.
#[utoipa::path(
    get, operation_id = "list_inbound", path = "/v1/inbound", tag = "inbound",
    params(InboundFilter),
    responses(
        (status = 200, body = InboundList),
        (status = 401, body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(state: &ApiState, auth: &Auth, f: InboundFilter) -> ApiResult<InboundList> {
    let limit = crate::Page { limit: f.limit }.limit()?;
    if let Some(kind) = &f.kind
        && Kind::parse(kind).is_none()
    {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(ApiError::invalid(
            "kind",
            format!("{kind:?} is not one of {}", kinds.join(", ")),
        ));
    }
    if let Some(address) = &f.address {
        validate::no_control(address).map_err(|m| ApiError::invalid("address", m))?;
    }
    let address = f.address.as_deref().map(|a| a.trim().to_lowercase());
    let messages: Vec<InboundMessage> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM inbound_messages
         WHERE workspace_id = $1
           AND ($2::uuid IS NULL OR enrollment_id = $2)
           AND ($3::uuid IS NULL OR sequence_id = $3)
           AND ($4::text IS NULL OR lower(address) = $4)
           AND ($5::text IS NULL OR kind = $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7"
    ))
    .bind(auth.workspace)
    .bind(f.enrollment_id)
    .bind(f.sequence_id)
    .bind(&address)
    .bind(&f.kind)
    .bind(f.before)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let (messages, next) = crate::page_of(messages, limit, |m| m.id);
    Ok(InboundList { messages, next })
}

/// One message that came back; `?raw=true` answers the message as received
/// (`message/rfc822`), when the inbound listener received it.
#[utoipa::path(
    get, operation_id = "get_inbound_message", path = "/v1/inbound/{id}", tag = "inbound",
    params(("id" = i64, Path), RawParam),
    responses(
        (status = 200, body = InboundMessage),
        (status = 401, body = pulse_shared::http::ErrorBody),
        (status = 404, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(state: &ApiState, auth: &Auth, id: i64, raw: RawParam) -> ApiResult<Response> {
    if raw.raw.unwrap_or(false) {
        let bytes = load_raw(&state.db, auth.workspace, id)
            .await?
            .ok_or(ApiError::NotFound("raw message (reported through the API)"))?;
        return Ok(([(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response());
    }
    Ok(Json(load(&state.db, auth.workspace, id).await?).into_response())
}

/// One message of `workspace`.
pub(crate) async fn load(
    db: &PgPool,
    workspace: Uuid,
    id: i64,
) -> Result<InboundMessage, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM inbound_messages WHERE workspace_id = $1 AND id = $2"
    ))
    .bind(workspace)
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("inbound message"))
}

/// The bytes of one message of `workspace` as received (`None`: reported through the API).
pub(crate) async fn load_raw(
    db: &PgPool,
    workspace: Uuid,
    id: i64,
) -> Result<Option<Vec<u8>>, ApiError> {
    sqlx::query_scalar("SELECT raw FROM inbound_messages WHERE workspace_id = $1 AND id = $2")
        .bind(workspace)
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or(ApiError::NotFound("inbound message"))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RawParam {
    /// Answer the message as received.
    pub raw: Option<bool>,
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn list(
        State(state): State<ApiState>,
        auth: Auth,
        ApiQuery(f): ApiQuery<InboundFilter>,
    ) -> ApiResult<Json<InboundList>> {
        super::list(&state, &auth, f).await.map(Json)
    }

    pub async fn get_one(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<i64>,
        ApiQuery(raw): ApiQuery<RawParam>,
    ) -> ApiResult<Response> {
        super::get_one(&state, &auth, id, raw).await
    }
}
