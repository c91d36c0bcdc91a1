//! Hub sign-in: API key → session cookie, and the CSRF token every Hub form carries.
//!
//! Owns the `hub_sessions` table and the two cookies. The session cookie holds a random token
//! (only its SHA-256 is stored), `HttpOnly; Secure; SameSite=Strict; Path=/hub`, and expires
//! after [`SESSION_HOURS`]. Each session has its own CSRF token; [`Posted`] refuses any form
//! whose `csrf` field does not match, so no Hub action can skip the check, and refuses every
//! action but signing out to a read key's session. A session lasts while its key is not revoked.
//! The sign-in form,
//! which has no session yet, uses a double-submit cookie instead. This module never renders a
//! page beyond errors.

use std::collections::HashMap;

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, Method, header, request::Parts},
};
use pulse_shared::{
    db::{self, StoreError},
    http::Auth,
    keys,
};
use sqlx::PgPool;
use uuid::Uuid;

use super::{HubError, HubState};

/// The session cookie.
pub const COOKIE: &str = "pulse_hub";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "pulse_hub_login";
/// How long a sign-in lasts.
pub const SESSION_HOURS: i64 = 12;

/// 244 random bits (two v4 UUIDs, from the OS's CSPRNG), hex.
pub fn random_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in a request's headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value for `name` under `/hub`; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Path=/hub; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict")
}

/// Signs in with an API key: a new session for its workspace. `None` when the key is unknown.
/// Returns the cookie token.
pub async fn sign_in(db: &PgPool, key: &str) -> Result<Option<String>, HubError> {
    let Some(owner) = keys::owner(db, key.trim()).await? else {
        return Ok(None);
    };
    let token = random_token();
    sqlx::query(
        "INSERT INTO hub_sessions (token_sha256, workspace_id, actor, csrf_token, expires_at,
                                   key_id)
         VALUES ($1, $2, $3, $4, now() + make_interval(hours => $5), $6)",
    )
    .bind(db::key_hash(&token))
    .bind(owner.workspace)
    .bind(format!("hub (key {})", owner.label))
    .bind(random_token())
    .bind(SESSION_HOURS as i32)
    .bind(owner.id)
    .execute(db)
    .await?;
    // Expired sessions go whenever someone signs in.
    sqlx::query("DELETE FROM hub_sessions WHERE expires_at < now()")
        .execute(db)
        .await?;
    Ok(Some(token))
}

/// Ends the session of `token`.
pub async fn sign_out(db: &PgPool, token: &str) -> Result<(), HubError> {
    sqlx::query("DELETE FROM hub_sessions WHERE token_sha256 = $1")
        .bind(db::key_hash(token))
        .execute(db)
        .await?;
    Ok(())
}

/// A signed-in operator: the workspace they see and act on, and their session's CSRF token.
#[derive(Clone, Debug)]
pub struct HubUser {
    pub auth: Auth,
    pub csrf: String,
    pub token: String,
}

impl FromRequestParts<HubState> for HubUser {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, state: &HubState) -> Result<Self, HubError> {
        let next = (parts.method == Method::GET).then(|| {
            parts
                .uri
                .path_and_query()
                .map_or("/hub", |p| p.as_str())
                .to_owned()
        });
        let signed_out = || HubError::SignIn { next: next.clone() };
        let token = cookie(&parts.headers, COOKIE).ok_or_else(signed_out)?;
        // A session lasts while its key does: a revoked key signs its sessions out.
        let row: Option<(Uuid, String, String, bool, Uuid, String)> = sqlx::query_as(
            "SELECT s.workspace_id, s.actor, s.csrf_token, w.allow_dotless_domains, k.id, k.scope
             FROM hub_sessions s JOIN workspaces w ON w.id = s.workspace_id
             JOIN api_keys k ON k.id = s.key_id AND k.revoked_at IS NULL
             WHERE s.token_sha256 = $1 AND s.expires_at > now()",
        )
        .bind(db::key_hash(&token))
        .fetch_optional(&state.api.db)
        .await?;
        let (workspace, actor, csrf, dotless, key, scope) = row.ok_or_else(signed_out)?;
        let scope = keys::Scope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("key scope {scope:?}")))?;
        let addresses = pulse_shared::domain::validate::AddressPolicy {
            dotless_domains: dotless,
        };
        Ok(HubUser {
            auth: Auth {
                workspace,
                actor,
                key,
                scope,
                addresses,
            },
            csrf,
            token,
        })
    }
}

/// A submitted form's fields (`application/x-www-form-urlencoded`), repeated names kept.
#[derive(Clone, Debug, Default)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> Self {
        FormData(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The first value of `name` as written (not trimmed), or "".
    pub fn raw(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    pub fn to_map(&self) -> HashMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// Largest Hub form accepted.
const FORM_LIMIT: usize = 256 * 1024;

/// A form posted by a signed-in operator whose CSRF token matched their session's.
pub struct Posted {
    pub user: HubUser,
    pub form: FormData,
}

impl FromRequest<HubState> for Posted {
    type Rejection = HubError;

    async fn from_request(req: Request, state: &HubState) -> Result<Self, HubError> {
        let (mut parts, body) = req.into_parts();
        let user = HubUser::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, FORM_LIMIT)
            .await
            .map_err(|_| HubError::BadForm("the form is larger than 256 KiB".into()))?;
        let form = FormData::parse(&bytes);
        match form.get("csrf") {
            Some(sent) if same_secret(sent, &user.csrf) => {}
            _ => return Err(HubError::Csrf),
        }
        // Every Hub action but signing out changes something: a read key may not.
        if user.auth.scope < keys::Scope::Write && parts.uri.path() != "/hub/logout" {
            return Err(HubError::Api(pulse_shared::http::ApiError::Forbidden(
                "this key's scope is read: the Hub shows, but does not act".into(),
            )));
        }
        Ok(Posted { user, form })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; pulse_hub=tok; pulse_hub_login=x".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, LOGIN_COOKIE).as_deref(), Some("x"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn forms_keep_repeated_fields() {
        let f = FormData::parse(b"ids=a&ids=b&name=+x+&empty=");
        assert_eq!(f.all("ids"), vec!["a", "b"]);
        assert_eq!(f.get("name"), Some("x"));
        assert_eq!(f.get("empty"), None);
        assert!(f.has("empty"));
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
