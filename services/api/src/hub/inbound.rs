//! The Hub's "What came back" page: replies, auto-replies, bounces, complaints and reported
//! opt-outs, newest first, filtered by kind or address, each with what it did; and one message
//! with the text as received. It reads through `crate::inbound`, as `/v1/inbound` does.

use axum::{
    extract::{Path, Query, State},
    response::Response,
};
use maud::html;
use pulse_shared::feedback::Kind;
use serde::Deserialize;
use uuid::Uuid;

use super::{Flash, HubError, HubResult, HubState, encode, layout, page, session::HubUser};
use crate::inbound as api;

/// The most of a raw message the page shows.
const RAW_SHOWN: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
pub struct Search {
    kind: Option<String>,
    q: Option<String>,
    enrollment: Option<Uuid>,
    before: Option<i64>,
}

pub async fn list(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Query(s): Query<Search>,
) -> HubResult<Response> {
    let kind = s.kind.clone().filter(|k| !k.is_empty());
    let q =
        s.q.as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_owned);
    let found = api::list(
        &state.api,
        &user.auth,
        api::InboundFilter {
            enrollment_id: s.enrollment,
            address: q.clone(),
            kind: kind.clone(),
            before: s.before,
            limit: Some(100),
            ..Default::default()
        },
    )
    .await?;
    let mut here = format!(
        "/hub/inbound?kind={}&q={}",
        encode(kind.as_deref().unwrap_or_default()),
        encode(q.as_deref().unwrap_or_default())
    );
    if let Some(e) = s.enrollment {
        here.push_str(&format!("&enrollment={e}"));
    }
    let body = html! {
        h1 { "What came back" }
        p.muted { "Replies end the lead's enrollment (as the sequence's \"a reply ends\" setting says); bounces and spam complaints suppress the address. Out-of-office answers are recorded and end nothing." }
        form.filters method="get" action="/hub/inbound" {
            label { "Kind "
                select name="kind" {
                    option value="" selected[kind.is_none()] { "any" }
                    @for k in Kind::ALL { option value=(k.as_str()) selected[kind.as_deref() == Some(k.as_str())] { (k.as_str()) } }
                }
            }
            label { "Address " input name="q" value=(q.clone().unwrap_or_default()) placeholder="ada@example.com"; }
            @if let Some(e) = s.enrollment { input type="hidden" name="enrollment" value=(e); }
            button type="submit" { "Show" }
            @if kind.is_some() || q.is_some() || s.enrollment.is_some() { " " a href="/hub/inbound" { "All" } }
        }
        @if found.messages.is_empty() {
            p.empty { "Nothing came back" @if kind.is_some() || q.is_some() { " that matches" } "." }
        } @else {
            table.list {
                thead { tr { th { "Received" } th { "Kind" } th { "About" } th { "Subject" } th { "What it did" } } }
                tbody { @for m in &found.messages { tr {
                    td { a href=(format!("/hub/inbound/{}", m.id)) { (m.received_at.format("%Y-%m-%d %H:%M:%S UTC")) } }
                    td { span class=(format!("badge {}", m.kind)) { (m.kind) } br; span.muted { (m.source) } }
                    td { (m.address.clone().unwrap_or_default()) }
                    td { (m.detail["subject"].as_str().unwrap_or_default()) }
                    td { (m.outcome.clone().unwrap_or_else(|| "waiting".into())) }
                } } }
            }
            @if let Some(next) = found.next {
                p { a href=(format!("{here}&before={next}")) { "Older →" } }
            }
        }
    };
    Ok(page(
        &flash,
        layout("What came back", Some(&user), Some(&flash), body),
    ))
}

pub async fn one(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(id): Path<String>,
) -> HubResult<Response> {
    let id: i64 = id
        .parse()
        .map_err(|_| HubError::BadForm(format!("{id:?} is not a message number")))?;
    let m = api::load(&state.api.db, user.auth.workspace, id).await?;
    let raw = api::load_raw(&state.api.db, user.auth.workspace, id).await?;
    let text = raw.map(|r| {
        let shown = &r[..r.len().min(RAW_SHOWN)];
        let mut t = String::from_utf8_lossy(shown).into_owned();
        if r.len() > RAW_SHOWN {
            t.push_str(&format!("\n… ({} more bytes)", r.len() - RAW_SHOWN));
        }
        t
    });
    let body = html! {
        p { a href="/hub/inbound" { "← What came back" } }
        h1 { (m.kind) " " span.muted { "#" (m.id) } }
        dl.settings {
            dt { "Received" } dd { (m.received_at.format("%Y-%m-%d %H:%M:%S UTC")) " through " (m.source) }
            dt { "About" } dd { (m.address.clone().unwrap_or_default()) }
            @if let Some(from) = &m.mail_from { dt { "Envelope sender" } dd { (from) } }
            dt { "What it did" } dd { (m.outcome.clone().unwrap_or_else(|| "waiting to be processed".into())) }
            @if let (Some(seq), Some(_)) = (m.sequence_id, m.enrollment_id) {
                dt { "Send" } dd { a href=(format!("/hub/sequences/{seq}/enrollments")) { (m.idempotency_key.clone().unwrap_or_default()) } }
            }
            @for key in ["subject", "from", "status", "diagnostic", "feedback_type", "automatic", "reason"] {
                @if let Some(v) = m.detail.get(key).and_then(|v| v.as_str()).filter(|v| !v.is_empty()) {
                    dt { (key) } dd { (v) }
                }
            }
        }
        @if let Some(excerpt) = m.detail["excerpt"].as_str() {
            h2 { "What they wrote" }
            blockquote { (excerpt) }
        }
        @if let Some(text) = &text {
            details { summary { "The message as received" } pre.raw { (text) } }
        }
    };
    Ok(page(
        &flash,
        layout(
            &format!("{} #{}", m.kind, m.id),
            Some(&user),
            Some(&flash),
            body,
        ),
    ))
}
