//! The api role: the control plane over HTTP. Owns the `/v1` routes for sequences (create,
//! edit, versions), control actions (pause, resume and its preview, delete, cancel, re-enroll,
//! audit), manual enrollment, the enrollments view, the send history (the ledger), the
//! workspace's settings, API keys and the workspace's own audit log, the platform's workspaces,
//! sender mailboxes, limits per recipient domain, the suppression list and the public one-click
//! unsubscribe page, the dev
//! outbox and the OpenAPI document, and the Hub's pages (`hub`), which act through those same
//! handlers. It schedules only through the shared rules and never sends mail.

mod activity;
mod audit;
mod control;
mod domain_limits;
mod drain;
mod edit;
mod edit_preview;
mod enrollments;
pub mod hub;
mod idempotency;
mod inbound;
mod keys;
mod mailboxes;
mod openapi;
mod outbox;
mod providers;
mod render_preview;
mod sends;
mod sequences;
mod steps;
mod suppressions;
mod unsubscribe;
mod webhooks;
mod workspace;

pub use openapi::openapi;
pub use providers::Providers;
pub use unsubscribe::OneClick;

use std::time::Duration;

use axum::{
    Router,
    extract::FromRef,
    routing::{delete, get, patch, post, put},
};
use pulse_shared::pause::PauseFlags;
use sqlx::PgPool;

#[derive(Clone)]
pub struct ApiState {
    pub db: PgPool,
    pub flags: PauseFlags,
    /// How long pause, cancel and delete wait for sends already in flight to settle.
    pub drain_timeout: Duration,
    /// The one-click unsubscribe keys and the per-client limit of its public endpoint.
    pub unsubscribe: std::sync::Arc<OneClick>,
    /// The keys that verify provider webhooks (`/v1/inbound/ses`, `/v1/inbound/sendgrid`).
    pub providers: std::sync::Arc<Providers>,
    /// Counts what the webhooks record (`pulse_inbound_messages_total`).
    pub metrics: pulse_shared::metrics::Metrics,
    /// `PULSE_ADMIN_KEY`: opens `/v1/admin/workspaces`.
    pub admin_key: Option<pulse_shared::smtp_url::Secret>,
    /// `PULSE_WEBHOOKS_ALLOW_PRIVATE`: webhook endpoints may be on private networks.
    pub webhooks_allow_private: bool,
}

impl FromRef<ApiState> for PgPool {
    fn from_ref(s: &ApiState) -> PgPool {
        s.db.clone()
    }
}

/// The control-plane routes.
pub fn router(state: ApiState) -> Router {
    use axum::handler::Handler;
    let idempotent = || axum::middleware::from_fn_with_state(state.clone(), idempotency::layer);
    Router::new()
        .route(
            "/v1/sequences",
            get(sequences::v1::list).post(sequences::v1::create.layer(idempotent())),
        )
        .route("/v1/sequences/stats", get(sequences::v1::stats))
        .route(
            "/v1/sequences/{id}",
            get(sequences::v1::get_one)
                .patch(edit::v1::edit)
                .delete(control::v1::delete),
        )
        .route("/v1/sequences/{id}/versions", get(edit::v1::versions))
        .route("/v1/sequences/{id}/activity", get(activity::v1::activity))
        .route(
            "/v1/sequences/{id}/render-preview",
            post(render_preview::v1::render_preview),
        )
        .route(
            "/v1/sequences/{id}/edit-preview",
            post(edit_preview::v1::preview),
        )
        .route("/v1/sequences/{id}/steps", post(steps::v1::add))
        .route("/v1/sequences/{id}/steps/order", post(steps::v1::order))
        .route(
            "/v1/sequences/{id}/steps/{step_id}",
            patch(steps::v1::patch).delete(steps::v1::delete),
        )
        .route("/v1/sequences/{id}/pause", post(control::v1::pause))
        .route("/v1/sequences/{id}/resume", post(control::v1::resume))
        .route(
            "/v1/sequences/{id}/resume-preview",
            get(control::v1::resume_preview),
        )
        .route("/v1/sequences/{id}/re-enroll", post(control::v1::reenroll))
        .route("/v1/sequences/{id}/audit", get(audit::v1::audit_list))
        .route(
            "/v1/sequences/{id}/enrollments",
            get(enrollments::v1::list).post(enrollments::v1::create.layer(idempotent())),
        )
        .route(
            "/v1/sequences/{id}/enrollments/cancel",
            post(control::v1::cancel_many),
        )
        .route("/v1/sequences/{id}/sends", get(sends::v1::for_sequence))
        .route("/v1/enrollments/{id}", get(enrollments::v1::get_one))
        .route("/v1/enrollments/{id}/cancel", post(control::v1::cancel))
        .route("/v1/enrollments/{id}/sends", get(sends::v1::for_enrollment))
        .route("/v1/sends", get(sends::v1::search))
        .route("/v1/sends/resolve", post(sends::v1::resolve_many))
        .route("/v1/sends/{key}/resolve", post(sends::v1::resolve))
        .route(
            "/v1/workspace",
            get(workspace::v1::get_one).patch(workspace::v1::patch),
        )
        .route(
            "/v1/mailboxes",
            get(mailboxes::v1::list).post(mailboxes::v1::create),
        )
        .route(
            "/v1/mailboxes/{id}",
            get(mailboxes::v1::get_one)
                .patch(mailboxes::v1::edit)
                .delete(mailboxes::v1::delete),
        )
        .route("/v1/domain-limits", get(domain_limits::v1::list))
        .route(
            "/v1/domain-limits/{domain}",
            put(domain_limits::v1::set).delete(domain_limits::v1::remove),
        )
        .route(
            "/v1/suppressions",
            get(suppressions::v1::list).post(suppressions::v1::add),
        )
        .route("/v1/suppressions/{value}", delete(suppressions::v1::lift))
        .route("/v1/inbound", get(inbound::v1::list))
        .route("/v1/inbound/{id}", get(inbound::v1::get_one))
        .route("/v1/inbound/ses", post(providers::ses))
        .route("/v1/inbound/sendgrid", post(providers::sendgrid))
        .route(
            "/u/{token}",
            get(unsubscribe::confirm_page).post(unsubscribe::one_click),
        )
        .route(
            "/v1/webhooks",
            get(webhooks::v1::list).post(webhooks::v1::create.layer(idempotent())),
        )
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::v1::get_one)
                .patch(webhooks::v1::patch)
                .delete(webhooks::v1::delete),
        )
        .route("/v1/webhooks/{id}/test", post(webhooks::v1::test))
        .route(
            "/v1/webhooks/{id}/deliveries",
            get(webhooks::v1::deliveries),
        )
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery}/replay",
            post(webhooks::v1::replay),
        )
        .route("/v1/keys", get(keys::v1::list).post(keys::v1::create))
        .route("/v1/keys/{id}", delete(keys::v1::revoke))
        .route("/v1/audit", get(audit::v1::audit_log))
        .route(
            "/v1/admin/workspaces",
            get(keys::v1::list_workspaces).post(keys::v1::create_workspace),
        )
        .route("/v1/dev/outbox", get(outbox::v1::list))
        .route("/openapi.json", get(openapi::openapi_json))
        .with_state(state)
}

/// Cuts a page fetched with one row more than `limit`: the rows to show, and the cursor to the
/// next page (`cursor` of the last row shown) when there are more.
pub(crate) fn page_of<T, C>(
    mut rows: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> C,
) -> (Vec<T>, Option<C>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = if more { rows.last().map(cursor) } else { None };
    (rows, next)
}

/// Pagination parameters shared by the list routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Most items returned (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

impl Page {
    pub(crate) fn limit(&self) -> Result<i64, pulse_shared::http::ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n),
            Some(_) => Err(pulse_shared::http::ApiError::invalid(
                "limit",
                "must be 1 to 1000",
            )),
        }
    }
}
