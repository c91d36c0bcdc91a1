//! The Hub's pages for an admin key: Keys (make, list, revoke) and Webhooks (make, enable,
//! disable, test, delete, and each endpoint's delivery log with replay). They act through
//! `crate::keys` and `crate::webhooks`, as `/v1/keys` and `/v1/webhooks` do; a key or a
//! signing secret just made is shown on the page that answers the form, once, and never put in
//! a cookie or a redirect. A session whose key is not `admin` gets 403, as the API answers it.

use axum::{
    extract::{Path, Query, State},
    response::Response,
};
use maud::{Markup, html};
use pulse_shared::{
    http::ApiError,
    keys::{NewKey, Scope},
    webhooks::EVENTS,
};
use serde::Deserialize;

use super::{
    Flash, HubError, HubResult, HubState, back, done, form_fields, layout, page,
    pages::uuid as id,
    refused,
    session::{HubUser, Posted},
};
use crate::{
    keys as api_keys,
    webhooks::{self as api_hooks, DeliveryPage, NewWebhook, WebhookPatch, WebhookRequest},
};

fn admin(user: &HubUser) -> HubResult<()> {
    if user.auth.scope < Scope::Admin {
        return Err(HubError::Api(ApiError::Forbidden(format!(
            "this key's scope is {}: keys and webhooks need an admin key",
            user.auth.scope.as_str()
        ))));
    }
    Ok(())
}

// ---------------------------------------------------------------- keys

pub async fn keys(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
) -> HubResult<Response> {
    admin(&user)?;
    Ok(page(
        &flash,
        keys_page(&state, &user, Some(&flash), None).await?,
    ))
}

async fn keys_page(
    state: &HubState,
    user: &HubUser,
    flash: Option<&Flash>,
    made: Option<&NewKey>,
) -> HubResult<Markup> {
    let list = api_keys::list(&state.api, &user.auth).await?;
    let body = html! {
        h1 { "API keys" }
        p.muted { "Keys of this workspace. " strong { "read" } " sees everything and changes nothing; "
            strong { "write" } " does everything but keys and webhooks; " strong { "admin" } " does everything. A revoked key opens nothing from its next request, and its Hub sessions end." }
        @if let Some(k) = made {
            section.preview #new-key role="status" {
                h2 { "Key “" (k.info.label) "” (" (k.info.scope.as_str()) ")" }
                p.warn { "Copy it now: it is not shown again (only its hash is kept)." }
                pre.secret { (k.key) }
            }
        }
        form.filters method="post" action="/hub/keys" {
            (form_fields(user, "/hub/keys"))
            label { "Label " input name="label" required maxlength="100" placeholder="CRM sync"; }
            label { "Scope "
                select name="scope" {
                    @for s in [Scope::Read, Scope::Write, Scope::Admin] {
                        option value=(s.as_str()) selected[s == Scope::Read] { (s.as_str()) }
                    }
                }
            }
            button.primary type="submit" { "Make a key" }
        }
        table.list {
            thead { tr { th { "Label" } th { "Scope" } th { "Made" } th { "Last used" } th { "State" } th {} } }
            tbody { @for k in &list.keys { tr data-key=(k.id) {
                td { (k.label) } td { (k.scope.as_str()) }
                td { (k.created_at.format("%Y-%m-%d %H:%M UTC")) }
                td { (k.last_used_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "never".into())) }
                td { @if k.revoked_at.is_some() { span.badge.cancelled { "revoked" } } @else { span.badge.active { "active" } } }
                td.actions { @if k.revoked_at.is_none() {
                    form.inline method="post" action=(format!("/hub/keys/{}/revoke", k.id))
                        data-confirm=(format!("Revoke “{}”? Everything using it stops working at once.", k.label)) {
                        (form_fields(user, "/hub/keys"))
                        button.small.danger type="submit" { "Revoke" }
                    }
                } }
            } } }
        }
    };
    Ok(layout("API keys", Some(user), flash, body))
}

pub async fn make_key(State(state): State<HubState>, posted: Posted) -> Response {
    let user = &posted.user;
    let result = async {
        admin(user)?;
        let raw = posted.form.raw("scope");
        let scope = Scope::parse(raw)
            .ok_or_else(|| HubError::BadForm(format!("{raw:?} is not a scope")))?;
        let req = api_keys::KeyRequest {
            label: posted.form.raw("label").to_owned(),
            scope,
        };
        let made = api_keys::create(&state.api, &user.auth, req).await?.1;
        keys_page(&state, user, None, Some(&made)).await
    }
    .await;
    match result {
        Ok(markup) => page(&Flash(None), markup),
        Err(e) => refused("/hub/keys", e),
    }
}

pub async fn revoke_key(
    State(state): State<HubState>,
    Path(raw): Path<String>,
    posted: Posted,
) -> Response {
    let result = async {
        admin(&posted.user)?;
        let key = id(&raw, "key")?;
        Ok(api_keys::revoke(&state.api, &posted.user.auth, key).await?)
    }
    .await;
    match result {
        Ok(k) => done("/hub/keys", true, &format!("Revoked “{}”.", k.label)),
        Err(e) => refused("/hub/keys", e),
    }
}

// ---------------------------------------------------------------- webhooks

pub async fn webhooks(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
) -> HubResult<Response> {
    admin(&user)?;
    Ok(page(
        &flash,
        webhooks_page(&state, &user, Some(&flash), None).await?,
    ))
}

async fn webhooks_page(
    state: &HubState,
    user: &HubUser,
    flash: Option<&Flash>,
    made: Option<&NewWebhook>,
) -> HubResult<Markup> {
    let list = api_hooks::list(&state.api, &user.auth).await?;
    let body = html! {
        h1 { "Webhooks" }
        p.muted { "Endpoints that receive what happens here (sends, enrollments, pauses, replies, opt-outs), signed per Standard Webhooks, retried for a day." }
        @if let Some(w) = made {
            section.preview #new-webhook role="status" {
                h2 { "Endpoint " (w.webhook.url) }
                p.warn { "Its signing secret, shown once: verify each delivery's " code { "webhook-signature" } " with it." }
                pre.secret { (w.secret) }
            }
        }
        form.edit method="post" action="/hub/webhooks" {
            (form_fields(user, "/hub/webhooks"))
            label for="url" { "URL" }
            input #url name="url" required placeholder="https://crm.example.com/hooks/pulse";
            fieldset.window {
                legend { "Events" }
                @for e in EVENTS { label.check { input type="checkbox" name="events" value=(e); " " (e) } }
            }
            button.primary type="submit" { "Add the endpoint" }
        }
        @if list.webhooks.is_empty() {
            p.empty { "No endpoints yet." }
        } @else {
            table.list {
                thead { tr { th { "URL" } th { "Events" } th { "State" } th { "Since" } } }
                tbody { @for w in &list.webhooks { tr data-webhook=(w.id) {
                    td { a href=(format!("/hub/webhooks/{}", w.id)) { (w.url) } }
                    td { (w.events.join(", ")) }
                    td { (state_text(w)) }
                    td { (w.created_at.format("%Y-%m-%d %H:%M UTC")) }
                } } }
            }
        }
    };
    Ok(layout("Webhooks", Some(user), flash, body))
}

fn state_text(w: &api_hooks::Webhook) -> Markup {
    html! {
        @if !w.enabled {
            span.badge.paused { "disabled" }
            @if let Some(r) = &w.disabled_reason { " " span.muted { (r) } }
        } @else if let Some(since) = w.failing_since {
            span.badge.failed { "failing" } " " span.muted { "since " (since.format("%Y-%m-%d %H:%M UTC")) }
        } @else {
            span.badge.active { "enabled" }
        }
    }
}

pub async fn make_webhook(State(state): State<HubState>, posted: Posted) -> Response {
    let user = &posted.user;
    let result = async {
        admin(user)?;
        let req = WebhookRequest {
            url: posted.form.raw("url").to_owned(),
            events: posted
                .form
                .all("events")
                .into_iter()
                .map(str::to_owned)
                .collect(),
        };
        let made = api_hooks::create(&state.api, &user.auth, req).await?.1;
        webhooks_page(&state, user, None, Some(&made)).await
    }
    .await;
    match result {
        Ok(markup) => page(&Flash(None), markup),
        Err(e) => refused("/hub/webhooks", e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Before {
    before: Option<i64>,
}

pub async fn webhook(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(raw): Path<String>,
    Query(q): Query<Before>,
) -> HubResult<Response> {
    admin(&user)?;
    let wid = id(&raw, "webhook")?;
    let w = api_hooks::get_one(&state.api, &user.auth, wid).await?;
    let page_of = DeliveryPage {
        limit: Some(100),
        before: q.before,
    };
    let log = api_hooks::deliveries(&state.api, &user.auth, wid, page_of).await?;
    let here = format!("/hub/webhooks/{wid}");
    let act = |verb: &str, label: &str, class: &str, confirm: Option<&str>| {
        html! {
            form.inline method="post" action=(format!("{here}/{verb}")) data-confirm=[confirm] {
                (form_fields(&user, &here))
                button type="submit" class=(class) { (label) }
            }
        }
    };
    let body = html! {
        p.crumbs { a href="/hub/webhooks" { "Webhooks" } " / " (w.url) }
        h1 { (w.url) }
        p { (state_text(&w)) " · " (w.events.join(", ")) }
        div.bar.actions {
            @if w.enabled { (act("disable", "Disable", "", None)) } @else { (act("enable", "Enable", "primary", None)) }
            (act("test", "Send a test event", "", None))
            (act("delete", "Delete…", "danger", Some("Delete this endpoint and its undelivered messages?")))
        }
        h2 { "Deliveries" }
        @if log.deliveries.is_empty() {
            p.empty { "Nothing sent to it yet." }
        } @else {
            table.list {
                thead { tr { th { "Event" } th { "webhook-id" } th { "State" } th.num { "Tries" } th { "Last answer" } th { "Made" } th {} } }
                tbody { @for d in &log.deliveries { tr data-delivery=(d.id) {
                    td { (d.kind) } td { code { (d.webhook_id) } }
                    td { (d.state) } td.num { (d.attempts) }
                    td { @if let Some(s) = d.last_status { (s) " " } (d.last_error.clone().unwrap_or_default()) }
                    td { (d.created_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                    td.actions {
                        form.inline method="post" action=(format!("{here}/deliveries/{}/replay", d.id)) {
                            (form_fields(&user, &here))
                            button.small type="submit" { "Replay" }
                        }
                    }
                } } }
            }
            @if let Some(next) = log.next { p { a href=(format!("{here}?before={next}")) { "Older deliveries →" } } }
        }
    };
    Ok(page(
        &flash,
        layout("Webhook", Some(&user), Some(&flash), body),
    ))
}

/// Enable, disable, test or delete an endpoint, or replay one of its deliveries.
pub async fn webhook_action(
    State(state): State<HubState>,
    Path((raw, verb)): Path<(String, String)>,
    posted: Posted,
) -> Response {
    let here = format!("/hub/webhooks/{raw}");
    let to = back(&posted.form, &here);
    let result = async {
        admin(&posted.user)?;
        let wid = id(&raw, "webhook")?;
        let (api, auth) = (&state.api, &posted.user.auth);
        let enable = |on: bool| WebhookPatch {
            enabled: Some(on),
            ..Default::default()
        };
        Ok::<_, HubError>(match verb.as_str() {
            "enable" => {
                api_hooks::patch(api, auth, wid, enable(true)).await?;
                ("Enabled: deliveries start again.".to_owned(), to.clone())
            }
            "disable" => {
                api_hooks::patch(api, auth, wid, enable(false)).await?;
                (
                    "Disabled: messages wait until it is enabled.".to_owned(),
                    to.clone(),
                )
            }
            "test" => {
                let d = api_hooks::test(api, auth, wid).await?;
                (
                    format!("A test event is on its way ({}).", d.webhook_id),
                    to.clone(),
                )
            }
            "delete" => {
                let w = api_hooks::delete(api, auth, wid).await?;
                (format!("Deleted {}.", w.url), "/hub/webhooks".to_owned())
            }
            _ => return Err(HubError::Api(ApiError::NotFound("action"))),
        })
    }
    .await;
    match result {
        Ok((said, to)) => done(&to, true, &said),
        Err(e) => refused(&here, e),
    }
}

pub async fn replay(
    State(state): State<HubState>,
    Path((raw, delivery)): Path<(String, i64)>,
    posted: Posted,
) -> Response {
    let here = format!("/hub/webhooks/{raw}");
    let result = async {
        admin(&posted.user)?;
        let wid = id(&raw, "webhook")?;
        Ok::<_, HubError>(api_hooks::replay(&state.api, &posted.user.auth, (wid, delivery)).await?)
    }
    .await;
    match result {
        Ok(d) => done(
            &here,
            true,
            &format!("Delivering {} again now.", d.webhook_id),
        ),
        Err(e) => refused(&here, e),
    }
}
