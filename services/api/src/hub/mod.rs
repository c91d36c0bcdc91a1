//! The Hub: the web pages where an operator sees and controls sequences, served by the api role
//! under `/hub`.
//!
//! Pages are rendered on the server (maud) and work without JavaScript; `hub.js` only keeps
//! counts and toggles live and asks before irreversible actions. Every read and every action goes
//! through the same handlers as the `/v1` API (and so the CLI), called in process with the
//! signed-in operator's workspace: the Hub adds no rule of its own. It owns its routes, its
//! layout and its sign-in (`session`); it never touches the database except for sessions.

mod admin;
mod charts;
mod inbound;
mod mailboxes;
mod pages;
pub mod session;
mod suppressions;

use axum::{
    Router,
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::{DOCTYPE, Markup, html};
use pulse_shared::{db::StoreError, http::ApiError};

use crate::ApiState;
use session::HubUser;

#[derive(Clone)]
pub struct HubState {
    pub api: ApiState,
}

/// Why a Hub request failed. Rendered as a page with the right status, never as JSON.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No valid session: a page redirects to the sign-in form, an action answers 401.
    #[error("sign in to continue")]
    SignIn { next: Option<String> },
    #[error("this form has expired or did not come from the Hub; reload the page and try again")]
    Csrf,
    #[error("{0}")]
    BadForm(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        HubError::Api(e.into())
    }
}

impl From<sqlx::Error> for HubError {
    fn from(e: sqlx::Error) -> Self {
        HubError::Api(e.into())
    }
}

impl HubError {
    fn status(&self) -> StatusCode {
        match self {
            HubError::SignIn { .. } => StatusCode::UNAUTHORIZED,
            HubError::Csrf => StatusCode::FORBIDDEN,
            HubError::BadForm(_) => StatusCode::BAD_REQUEST,
            HubError::Api(e) => e.status(),
        }
    }

    /// Whether the operator can fix this by changing what they entered.
    fn is_input(&self) -> bool {
        matches!(
            self,
            HubError::BadForm(_)
                | HubError::Api(
                    ApiError::Malformed { .. } | ApiError::Invalid(_) | ApiError::Conflict(_)
                )
        )
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        if let HubError::SignIn { next: Some(next) } = &self {
            let to = format!("/hub/login?next={}", encode(next));
            return Redirect::to(&to).into_response();
        }
        if let HubError::Api(ApiError::Internal(e)) = &self {
            tracing::error!(error = %e, "hub request failed");
        }
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let body = html! {
            h1 { (title) }
            p.error { (self.to_string()) }
            @if matches!(self, HubError::SignIn { .. }) {
                p { a href="/hub/login" { "Sign in" } }
            } @else {
                p { a href="/hub/sequences" { "Back to the sequences" } }
            }
        };
        (status, Html(layout(title, None, None, body).into_string())).into_response()
    }
}

pub type HubResult<T> = Result<T, HubError>;

/// Percent-encodes a query or cookie value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A one-time message shown on the next page (a cookie that the page clears).
pub const FLASH_COOKIE: &str = "pulse_hub_flash";

/// Redirects after an action (303, so the browser GETs the page), with a message for it.
/// `ok` says whether the message reports success or a problem.
pub fn done(to: &str, ok: bool, message: &str) -> Response {
    let value = format!("{}{}", if ok { "n:" } else { "e:" }, message);
    let mut resp = Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(FLASH_COOKIE, &encode(&value), 60)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Turns an action's failure into a message on the page it came from when the operator can fix
/// it; anything else is an error page.
pub fn refused(to: &str, e: HubError) -> Response {
    if e.is_input() {
        done(to, false, &e.to_string())
    } else {
        e.into_response()
    }
}

/// Where to go back to after an action: a Hub path from the form, else `fallback`.
pub fn back(form: &session::FormData, fallback: &str) -> String {
    match form.get("return_to") {
        Some(p) if p.starts_with("/hub/") && !p.contains("//") && !p.contains('\\') => p.to_owned(),
        _ => fallback.to_owned(),
    }
}

/// A message waiting in the flash cookie: (is it good news, text).
pub struct Flash(pub Option<(bool, String)>);

impl Flash {
    fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        let raw = session::cookie(headers, FLASH_COOKIE).map(|v| {
            form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        });
        Flash(raw.and_then(|v| {
            v.strip_prefix("n:")
                .map(|m| (true, m.to_owned()))
                .or_else(|| v.strip_prefix("e:").map(|m| (false, m.to_owned())))
        }))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Flash {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Flash::from_headers(&parts.headers))
    }
}

/// A page response; clears the flash cookie once its message has been shown.
pub fn page(flash: &Flash, markup: Markup) -> Response {
    let mut resp = Html(markup.into_string()).into_response();
    if flash.0.is_some()
        && let Ok(v) = HeaderValue::from_str(&session::set_cookie(FLASH_COOKIE, "", 0))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The frame of every page: navigation, the signed-in workspace, the flash message.
pub fn layout(title: &str, user: Option<&HubUser>, flash: Option<&Flash>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(u) = user { meta name="csrf-token" content=(u.csrf); }
                title { (title) " · Pulse Hub" }
                link rel="stylesheet" href="/hub/assets/hub.css";
                script src="/hub/assets/hub.js" defer {}
            }
            body class=[user.filter(|u| u.auth.scope < pulse_shared::keys::Scope::Write).map(|_| "read-only")] {
                header.top {
                    a.brand href="/hub/sequences" { "Pulse" }
                    @if let Some(u) = user {
                        nav {
                            a href="/hub/sequences" { "Sequences" }
                            a href="/hub/sends" { "Send history" }
                            a href="/hub/inbound" { "What came back" }
                            a href="/hub/suppressions" { "Suppressions" }
                            a href="/hub/mailboxes" { "Mailboxes" }
                            @if u.auth.scope >= pulse_shared::keys::Scope::Admin {
                                a href="/hub/keys" { "Keys" }
                                a href="/hub/webhooks" { "Webhooks" }
                            }
                            a href="/hub/outbox" { "Dev outbox" }
                        }
                        form.signout method="post" action="/hub/logout" {
                            input type="hidden" name="csrf" value=(u.csrf);
                            span.who { (u.auth.actor) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if user.is_some_and(|u| u.auth.scope < pulse_shared::keys::Scope::Write) {
                        p.flash role="note" { "Signed in with a read key: the Hub shows everything and changes nothing." }
                    }
                    @if let Some(Flash(Some((ok, message)))) = flash {
                        p class=(if *ok { "flash ok" } else { "flash error" }) role="status" { (message) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The hidden fields every Hub form carries: the CSRF token and where to come back to.
pub fn form_fields(user: &HubUser, return_to: &str) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(user.csrf);
        input type="hidden" name="return_to" value=(return_to);
    }
}

const CSS: &str = include_str!("hub.css");
const JS: &str = include_str!("hub.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every Hub response: no framing, no sniffing, scripts only from the Hub.
async fn secure_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// The Hub's routes, ready to merge into the api role's server.
pub fn router(api: ApiState) -> Router {
    Router::new()
        .route("/hub", get(|| async { Redirect::to("/hub/sequences") }))
        .route("/hub/", get(|| async { Redirect::to("/hub/sequences") }))
        .route("/hub/login", get(pages::login_form).post(pages::login))
        .route("/hub/logout", post(pages::logout))
        .route(
            "/hub/assets/hub.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/hub/assets/hub.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route("/hub/sequences", get(pages::sequences))
        .route("/hub/sequences/live", get(pages::live))
        .route(
            "/hub/sequences/new",
            get(pages::new_form).post(pages::create),
        )
        .route("/hub/sequences/{id}", get(pages::sequence))
        .route("/hub/sequences/{id}/pause", post(pages::pause))
        .route(
            "/hub/sequences/{id}/resume",
            get(pages::resume_preview).post(pages::resume),
        )
        .route(
            "/hub/sequences/{id}/edit",
            get(pages::edit_form).post(pages::edit),
        )
        .route(
            "/hub/sequences/{id}/delete",
            get(pages::delete_form).post(pages::delete),
        )
        .route("/hub/sequences/{id}/re-enroll", post(pages::reenroll))
        .route("/hub/sequences/{id}/enrollments", get(pages::enrollments))
        .route(
            "/hub/sequences/{id}/enrollments/cancel",
            post(pages::cancel_many),
        )
        .route("/hub/enrollments/{id}/cancel", post(pages::cancel))
        .route("/hub/sends", get(pages::sends))
        .route("/hub/sends/{key}/resolve", post(pages::resolve))
        .route("/hub/outbox", get(pages::outbox))
        .route("/hub/inbound", get(inbound::list))
        .route("/hub/inbound/{id}", get(inbound::one))
        .route("/hub/mailboxes", get(mailboxes::list))
        .route("/hub/keys", get(admin::keys).post(admin::make_key))
        .route("/hub/keys/{id}/revoke", post(admin::revoke_key))
        .route(
            "/hub/webhooks",
            get(admin::webhooks).post(admin::make_webhook),
        )
        .route("/hub/webhooks/{id}", get(admin::webhook))
        .route("/hub/webhooks/{id}/{action}", post(admin::webhook_action))
        .route(
            "/hub/webhooks/{id}/deliveries/{delivery}/replay",
            post(admin::replay),
        )
        .route("/hub/suppressions", get(suppressions::list))
        .route("/hub/suppressions/add", post(suppressions::add))
        .route("/hub/suppressions/lift", post(suppressions::lift))
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(HubState { api })
}
