//! `Idempotency-Key` on the routes that create (`POST /v1/sequences`,
//! `POST /v1/sequences/{id}/enrollments`): a client that retries a create after a timeout gets
//! the first answer again instead of a second sequence. Owns the `idempotency_keys` table.
//!
//! Per workspace, route and key, for 24 hours:
//! * the first request runs; a 2xx answer is kept (status, `Location`, body) and replayed, with
//!   `Idempotent-Replayed: true`, to a later request with the same key and the same body;
//! * the same key with another body is refused (422, field `Idempotency-Key`);
//! * the same key while the first request still runs is refused (409): retry after it. A key
//!   whose first request never answered for [`ABANDONED`] (its process died) is taken over by
//!   the next request with the same body;
//! * a first request that failed (4xx or 5xx) keeps nothing, so a corrected retry runs.
//!
//! Without the header, the route runs as it always does. This layer never changes what the
//! handler does; it only decides whether the handler runs.

use axum::{
    body::Body,
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use pulse_shared::http::{ApiError, Auth};
use sqlx::Row;

use crate::ApiState;

/// The header.
pub const HEADER: &str = "idempotency-key";
/// A key claimed this long ago whose request never answered was abandoned (the process that
/// ran it died); the next request with the same body takes it over. Creates answer in well under
/// a second, so this cannot cut a live request short.
const ABANDONED: &str = "5 minutes";
/// Largest body hashed and kept (the API's own limit is 8 MiB).
const LIMIT: usize = 8 * 1024 * 1024;

fn malformed(message: &str) -> Response {
    ApiError::Malformed {
        field: Some("Idempotency-Key".to_owned()),
        message: message.to_owned(),
    }
    .into_response()
}

/// The layer: see the module doc.
pub async fn layer(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(raw) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = match raw.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x21..0x7f).contains(&b)) => {
            k.to_owned()
        }
        _ => return malformed("give 1 to 255 printable ASCII characters, no spaces"),
    };
    let (mut parts, body) = req.into_parts();
    let auth = match Auth::from_request_parts(&mut parts, &state).await {
        Ok(auth) => auth,
        Err(e) => return e.into_response(),
    };
    let Ok(bytes) = axum::body::to_bytes(body, LIMIT).await else {
        return ApiError::TooLarge.into_response();
    };
    let route = format!("{} {}", parts.method, parts.uri.path());
    let hash = pulse_shared::db::key_hash_bytes(&bytes);
    match claim(&state, &auth, &route, &key, &hash).await {
        Err(e) => e.into_response(),
        Ok(Some(earlier)) => earlier,
        Ok(None) => {
            let resp = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            match keep(&state, &auth, &route, &key, resp).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            }
        }
    }
}

/// Claims the key for this request (`None`: run it), or answers from the first one.
async fn claim(
    state: &ApiState,
    auth: &Auth,
    route: &str,
    key: &str,
    hash: &[u8],
) -> Result<Option<Response>, ApiError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
        .execute(&state.db)
        .await?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (workspace_id, route, key, request_sha256)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(auth.workspace)
    .bind(route)
    .bind(key)
    .bind(hash)
    .execute(&state.db)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT request_sha256, status, location, response FROM idempotency_keys
         WHERE workspace_id = $1 AND route = $2 AND key = $3",
    )
    .bind(auth.workspace)
    .bind(route)
    .bind(key)
    .fetch_optional(&state.db)
    .await?;
    // Gone between the two statements (the first request failed and let the key go): run.
    let Some(row) = row else {
        return Ok(None);
    };
    if row.try_get::<Vec<u8>, _>("request_sha256")? != hash {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "this key was used with a different request body",
        ));
    }
    let Some(status) = row.try_get::<Option<i32>, _>("status")? else {
        let taken = sqlx::query(&format!(
            "UPDATE idempotency_keys SET created_at = now()
             WHERE workspace_id = $1 AND route = $2 AND key = $3 AND status IS NULL
               AND created_at < now() - interval '{ABANDONED}'"
        ))
        .bind(auth.workspace)
        .bind(route)
        .bind(key)
        .execute(&state.db)
        .await?
        .rows_affected();
        if taken == 1 {
            return Ok(None);
        }
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still running; retry when it has answered"
                .into(),
        ));
    };
    let body: Vec<u8> = row
        .try_get::<Option<Vec<u8>>, _>("response")?
        .unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Some(location) = row.try_get::<Option<String>, _>("location")?
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        headers.insert(header::LOCATION, value);
    }
    Ok(Some(resp))
}

/// Keeps a 2xx answer for the key, or lets the key go after a failure.
async fn keep(
    state: &ApiState,
    auth: &Auth,
    route: &str,
    key: &str,
    resp: Response,
) -> Result<Response, ApiError> {
    if !resp.status().is_success() {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE workspace_id = $1 AND route = $2 AND key = $3",
        )
        .bind(auth.workspace)
        .bind(route)
        .bind(key)
        .execute(&state.db)
        .await?;
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, LIMIT)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let location = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    sqlx::query(
        "UPDATE idempotency_keys SET status = $4, location = $5, response = $6
         WHERE workspace_id = $1 AND route = $2 AND key = $3",
    )
    .bind(auth.workspace)
    .bind(route)
    .bind(key)
    .bind(i32::from(parts.status.as_u16()))
    .bind(location)
    .bind(bytes.as_ref())
    .execute(&state.db)
    .await?;
    Ok(Response::from_parts(parts, Body::from(bytes)))
}
