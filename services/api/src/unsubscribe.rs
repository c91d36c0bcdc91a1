//! The public one-click unsubscribe endpoint, `/u/{token}` (RFC 8058): no key, no cookie, no
//! CSRF token, as mail providers call it. `POST` suppresses the token's address (`unsubscribed`)
//! with everything a suppression does, and is idempotent; `GET` only shows a page with a confirm
//! button (mail scanners follow links, so a GET never unsubscribes). A token that does not verify
//! changes nothing. Each client address gets a few requests a minute, so the endpoint cannot be
//! used to probe tokens. Tokens are `pulse_shared::unsubscribe`'s.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Extension, State},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, html};
use pulse_shared::{
    http::ApiPath,
    model::SuppressionReason,
    suppression::Entry,
    unsubscribe::{Subject, Unsubscribe},
};
use uuid::Uuid;

use crate::ApiState;

/// Requests one client address may make per [`WINDOW`].
const PER_WINDOW: u32 = 30;
const WINDOW: Duration = Duration::from_secs(60);
/// Client addresses remembered before old windows are dropped.
const REMEMBERED: usize = 10_000;

/// The token keys and the per-client limit.
pub struct OneClick {
    keys: Unsubscribe,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl OneClick {
    pub fn new(keys: Unsubscribe) -> Self {
        Self {
            keys,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Who `token` names, if `client` may make one more request now and the token verifies;
    /// else why not.
    fn admit(
        &self,
        client: Option<Extension<ConnectInfo<SocketAddr>>>,
        token: &str,
    ) -> Result<Subject, Refused> {
        if !self.allow(client.map(|c| c.0.0.ip())) {
            return Err(Refused::TooMany);
        }
        self.keys.verify(token).ok_or(Refused::Invalid)
    }

    /// Whether `client` may make one more request now.
    fn allow(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client else { return true };
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let now = Instant::now();
        if seen.len() >= REMEMBERED {
            seen.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let slot = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(slot.0) >= WINDOW {
            *slot = (now, 0);
        }
        slot.1 += 1;
        slot.1 <= PER_WINDOW
    }
}

fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) }
                style { "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}button{font-size:1rem;padding:.5rem 1rem}" }
            }
            body { h1 { (title) } (body) }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// Why a request to `/u/{token}` is turned away.
enum Refused {
    /// 429: this client asked too often.
    TooMany,
    /// 400: the token does not verify; nothing changed.
    Invalid,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::TooMany => too_many(),
            Refused::Invalid => invalid(),
        }
    }
}

fn invalid() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This link is not valid",
        html! { p { "The unsubscribe link is incomplete or was changed. Use the link from the email itself." } },
    )
}

fn too_many() -> Response {
    page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        html! { p { "Please try again in a minute." } },
    )
}

/// The confirm page: unsubscribing takes the button (a POST).
#[utoipa::path(
    get, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "The token of the message's unsubscribe link")),
    responses((status = 200, description = "A page with a confirm button; nothing changes"),
              (status = 400, description = "The token does not verify"),
              (status = 429, description = "Too many requests from this client")),
)]
pub async fn confirm_page(
    State(state): State<ApiState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiPath(token): ApiPath<String>,
) -> Response {
    if let Err(refused) = state.unsubscribe.admit(client, &token) {
        return refused.into_response();
    }
    page(
        StatusCode::OK,
        "Unsubscribe?",
        html! {
            p { "You will get no more emails from this sender." }
            form method="post" {
                input type="hidden" name="List-Unsubscribe" value="One-Click";
                button type="submit" { "Unsubscribe" }
            }
        },
    )
}

/// One-click unsubscribe (RFC 8058): suppresses the address, ends its enrollments everywhere in
/// the workspace, and answers once nothing more can go out to it. Idempotent.
#[utoipa::path(
    post, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "The token of the message's unsubscribe link")),
    request_body(content = String, description = "List-Unsubscribe=One-Click", content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Unsubscribed (or already)"),
              (status = 400, description = "The token does not verify; nothing changed"),
              (status = 429, description = "Too many requests from this client")),
)]
pub async fn one_click(
    State(state): State<ApiState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiPath(token): ApiPath<String>,
) -> Response {
    let subject = match state.unsubscribe.admit(client, &token) {
        Ok(subject) => subject,
        Err(refused) => return refused.into_response(),
    };
    match unsubscribe(&state, subject).await {
        Ok(true) => page(
            StatusCode::OK,
            "You are unsubscribed",
            html! { p { "You will get no more emails from this sender." } },
        ),
        Ok(false) => invalid(),
        Err(e) => {
            tracing::error!(error = %e, "one-click unsubscribe failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                html! { p { "We could not record this just now. Please use the link again in a few minutes." } },
            )
        }
    }
}

/// Suppresses the lead's address. `false`: the token names no lead of that workspace.
async fn unsubscribe(state: &ApiState, s: Subject) -> Result<bool, pulse_shared::http::ApiError> {
    let email: Option<String> =
        sqlx::query_scalar("SELECT email FROM leads WHERE id = $1 AND workspace_id = $2")
            .bind(s.lead)
            .bind(s.workspace)
            .fetch_optional(&state.db)
            .await?;
    let Some(email) = email else {
        return Ok(false);
    };
    let source = format!("one-click:{}", short(s.sequence));
    crate::suppressions::suppress(
        state,
        s.workspace,
        "one-click unsubscribe",
        &source,
        vec![(Entry::Email(email), SuppressionReason::Unsubscribed)],
    )
    .await?;
    Ok(true)
}

fn short(id: Uuid) -> String {
    id.simple().to_string()
}
