//! HTTP plumbing shared by the ingest and api routers: the JSON error type, bearer-key
//! authentication, and extractors whose rejections are JSON errors naming the bad field.
//! Owns the error vocabulary of the API; it never holds a route.

use axum::{
    Json,
    extract::{
        FromRef, FromRequest, FromRequestParts, Request,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{db::StoreError, enroll::FieldError, strict_json::Strict};

/// An API failure. Client mistakes are 4xx with a message that says what to change; only a
/// failure of Pulse itself is a 500, and its details go to the log, not the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Malformed {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("missing or invalid API key")]
    Unauthorized,
    /// A provider's webhook whose signature does not verify (401, with why).
    #[error("{0}")]
    Unverified(String),
    /// Authenticated, but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// A service Pulse called on the caller's behalf failed (502).
    #[error("{0}")]
    Upstream(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit")]
    TooLarge,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The JSON body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `malformed`, `invalid`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `too_large`, `upstream`, `internal`.
    pub code: &'static str,
    pub message: String,
    /// JSON path of the offending field, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(FieldError::new(field, message))
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            ApiError::Malformed { field, .. } => {
                (StatusCode::BAD_REQUEST, "malformed", field.clone())
            }
            ApiError::Invalid(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                Some(e.field.clone()),
            ),
            ApiError::Unauthorized | ApiError::Unverified(_) => {
                (StatusCode::UNAUTHORIZED, "unauthorized", None)
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed inside Pulse");
        }
        let (status, code, field) = self.parts();
        let message = match &self {
            ApiError::Invalid(e) => e.message.clone(),
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code,
                    message,
                    field,
                },
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(Box::new(e))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // A value PostgreSQL cannot store in text (a NUL character) that no check caught: the
        // caller's mistake, not the server's.
        let code = e.as_database_error().and_then(|d| d.code());
        if matches!(code.as_deref(), Some("22021" | "22P05")) {
            return ApiError::Malformed {
                field: None,
                message: "a value contains a character that cannot be stored (NUL)".into(),
            };
        }
        ApiError::Internal(Box::new(e))
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::Malformed {
            field: None,
            message: format!("bad path: {}", e.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::Malformed {
            field: None,
            message: e.body_text(),
        }
    }
}

/// A route's answer: a JSON body or an [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose errors name the offending field (`events[2].lead.email`).
pub struct ApiJson<T>(pub T);

/// An optional JSON body: an empty body is `None`; anything else must parse like [`ApiJson`].
pub struct MaybeJson<T>(pub Option<T>);

async fn body_bytes<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_)
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::TooLarge
            }
            other => ApiError::Malformed {
                field: None,
                message: other.body_text(),
            },
        })
}

/// Parses a body into `T`. A number written with a zero fraction (`45.0`, as JavaScript and
/// JSON Schema tools write integers) is an integer: serde refuses it for an integer field, so
/// such a body is parsed again with those numbers made integers. The first parse is the only
/// one for every other body. Every request body is a JSON object, and so is every struct in it
/// (`strict_json`).
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::Malformed {
            field: None,
            message: "the body must be a JSON object".into(),
        });
    }
    // JSON syntax first (its errors name the line and column), then the type, read strictly:
    // a struct only from an object (`strict_json`).
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::Malformed {
            field: None,
            message: e.to_string(),
        })?;
    let error = match serde_path_to_error::deserialize(Strict(value)) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if error
        .inner()
        .to_string()
        .starts_with("invalid type: floating point")
        && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes)
    {
        integral_floats_to_integers(&mut value);
        return serde_path_to_error::deserialize(Strict(value)).map_err(malformed);
    }
    Err(malformed(error))
}

fn malformed<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ApiError {
    let path = e.path().to_string();
    let field = (path != ".").then_some(path);
    ApiError::Malformed {
        field,
        message: e.into_inner().to_string(),
    }
}

/// Makes every float with no fraction that fits an `i64` an integer, in place.
fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f >= i64::MIN as f64
                && f < i64::MAX as f64
            {
                *n = serde_json::Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(MaybeJson(None));
        }
        parse_json(&bytes).map(|v| MaybeJson(Some(v)))
    }
}

/// Path parameters, with JSON rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters, with JSON rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The workspace of the caller's API key (`Authorization: Bearer <key>`), and who is acting:
/// the `X-Pulse-Actor` header when a tool names its user (at most 100 characters), else the
/// key's label. The actor is what the audit trail records. Extracting it checks the key's scope
/// against the request ([`crate::keys::Scope::needed`]): a request outside it is refused with
/// 403 naming the scope it needs, before any handler runs.
#[derive(Clone, Debug)]
pub struct Auth {
    pub workspace: Uuid,
    pub actor: String,
    /// The key's id and scope.
    pub key: Uuid,
    pub scope: crate::keys::Scope,
    /// The workspace's address policy, for the routes that create leads.
    pub addresses: crate::domain::validate::AddressPolicy,
}

impl<S> FromRequestParts<S> for Auth
where
    PgPool: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let pool = PgPool::from_ref(state);
        let owner = crate::keys::owner(&pool, key)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let needed = crate::keys::Scope::needed(&parts.method, parts.uri.path());
        if owner.scope < needed {
            let article = if needed == crate::keys::Scope::Admin {
                "an"
            } else {
                "a"
            };
            return Err(ApiError::Forbidden(format!(
                "this key's scope is {}; {} {} needs {article} {} key",
                owner.scope.as_str(),
                parts.method,
                parts.uri.path(),
                needed.as_str()
            )));
        }
        let named = parts
            .headers
            .get("x-pulse-actor")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|a| !a.is_empty() && a.chars().count() <= 100);
        let actor = match named {
            Some(name) => format!("{name} (key {})", owner.label),
            None => format!("key {}", owner.label),
        };
        Ok(Auth {
            workspace: owner.workspace,
            actor,
            key: owner.id,
            scope: owner.scope,
            addresses: owner.addresses,
        })
    }
}

/// The key of an `Authorization: Bearer <key>` header, trimmed; `None` when absent or blank.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// `201 Created`: the JSON of what was made, and `Location`, the path that reads it.
pub struct Created<T>(pub String, pub T);

impl<T: Serialize> axum::response::IntoResponse for Created<T> {
    fn into_response(self) -> axum::response::Response {
        let mut resp = (StatusCode::CREATED, axum::Json(self.1)).into_response();
        if let Ok(value) = header::HeaderValue::from_str(&self.0) {
            resp.headers_mut().insert(header::LOCATION, value);
        }
        resp
    }
}

/// JSON 404 for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Limits {
        max: i32,
        share: f64,
        steps: Vec<u8>,
    }

    #[test]
    fn integers_written_with_a_zero_fraction_are_integers() {
        let parsed: Limits = parse_json(br#"{"max": 45.0, "share": 1.5, "steps": [1, 2.0]}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            parsed,
            Limits {
                max: 45,
                share: 1.5,
                steps: vec![1, 2]
            }
        );
    }

    #[test]
    fn a_body_is_an_object() {
        for body in [&br#"[45, 1.5, []]"#[..], b"null", b" 7"] {
            match parse_json::<Limits>(body) {
                Err(ApiError::Malformed { message, .. }) => {
                    assert!(message.contains("JSON object"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_fraction_is_still_refused_with_its_field() {
        match parse_json::<Limits>(br#"{"max": 45.5, "share": 1, "steps": []}"#) {
            Err(ApiError::Malformed { field, message }) => {
                assert_eq!(field.as_deref(), Some("max"));
                assert!(message.contains("floating point"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match parse_json::<Limits>(br#"{"max": 1, "share": 1, "steps": [300.0]}"#) {
            Err(ApiError::Malformed { field, .. }) => {
                assert_eq!(field.as_deref(), Some("steps[0]"))
            }
            other => panic!("{other:?}"),
        }
    }
}
