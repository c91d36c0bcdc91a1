//! The Hub's Suppressions page: search the list, add addresses or domains (one per line, or a
//! pasted CSV whose first column is the value), and lift one with a reason. It acts through
//! `crate::suppressions`, as `/v1/suppressions` does.

use axum::{
    extract::{Query, State},
    response::Response,
};
use maud::html;
use pulse_shared::{
    model::SuppressionReason,
    suppression::{self, Entry},
};
use serde::Deserialize;

use super::{
    Flash, HubError, HubResult, HubState, back, done, encode, form_fields, layout, page, refused,
    session::{HubUser, Posted},
};
use crate::suppressions as api;

#[derive(Debug, Default, Deserialize)]
pub struct Search {
    q: Option<String>,
    after: Option<String>,
}

pub async fn list(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Query(s): Query<Search>,
) -> HubResult<Response> {
    let q =
        s.q.as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_owned);
    let mut filter = api::SuppressionFilter {
        limit: Some(200),
        after: s.after.clone(),
        ..Default::default()
    };
    match q.as_deref() {
        Some(v) if v.contains('@') => filter.email = Some(v.to_owned()),
        Some(v) => filter.domain = Some(v.to_owned()),
        None => {}
    }
    let found = api::list(&state.api, &user.auth, filter).await?;
    let here = match &q {
        Some(q) => format!("/hub/suppressions?q={}", encode(q)),
        None => "/hub/suppressions".to_owned(),
    };
    let reasons = SuppressionReason::ALL.map(SuppressionReason::as_str);
    let body = html! {
        h1 { "Suppressions" }
        p.muted { "Addresses and domains this workspace never mails again. Adding one ends every active enrollment of the leads it reaches, in every sequence, and returns once nothing more can go out to them. Recipients who click a message's unsubscribe link are added here." }
        form.filters method="get" action="/hub/suppressions" {
            label { "Address or domain " input name="q" value=(q.clone().unwrap_or_default()) placeholder="ada@example.com or example.com"; }
            button type="submit" { "Search" }
            @if q.is_some() { " " a href="/hub/suppressions" { "All" } }
        }
        @if found.suppressions.is_empty() {
            p.empty { "Nothing matches." }
        } @else {
            table.list {
                thead { tr { th { "Address or domain" } th { "Reason" } th { "Source" } th { "Since" } th { "Lift" } } }
                tbody { @for s in &found.suppressions { tr {
                    td { (s.value) @if s.kind == "domain" { span.muted { " (domain)" } } }
                    td { (s.reason.as_str()) }
                    td { (s.source) }
                    td { (s.created_at.format("%Y-%m-%d %H:%M UTC")) }
                    td.actions {
                        form.inline method="post" action="/hub/suppressions/lift"
                            data-confirm="Lift this suppression? The address can be mailed again." {
                            (form_fields(&user, &here))
                            input type="hidden" name="value" value=(s.value);
                            input name="reason" placeholder="why" required size="14";
                            button.small type="submit" { "Lift" }
                        }
                    }
                } } }
            }
            @if let Some(next) = &found.next {
                p { a href=(format!("{here}{}after={}", if here.contains('?') { "&" } else { "?" }, encode(next))) { "Next page →" } }
            }
        }
        section {
            h2 { "Add" }
            form method="post" action="/hub/suppressions/add" {
                (form_fields(&user, &here))
                label for="values" { "Addresses or domains, one per line (a pasted CSV works: the first column is used, a header row is skipped)" }
                textarea #values name="values" rows="6" required {}
                label for="reason" { "Reason" }
                select #reason name="reason" {
                    @for r in reasons { option value=(r) selected[r == "manual"] { (r) } }
                }
                button.primary type="submit" { "Suppress" }
            }
        }
    };
    Ok(page(
        &flash,
        layout("Suppressions", Some(&user), Some(&flash), body),
    ))
}

pub async fn add(State(state): State<HubState>, posted: Posted) -> Response {
    let to = back(&posted.form, "/hub/suppressions");
    let reason = posted
        .form
        .get("reason")
        .and_then(SuppressionReason::parse)
        .unwrap_or(SuppressionReason::Manual);
    let mut entries = Vec::new();
    for (i, line) in posted.form.raw("values").lines().enumerate() {
        let value = line
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_matches('"');
        let header = i == 0
            && matches!(
                value.to_ascii_lowercase().as_str(),
                "email" | "domain" | "value"
            );
        if value.is_empty() || header {
            continue;
        }
        match Entry::parse_value(value) {
            Ok(e) => entries.push((e, reason)),
            Err(m) => return refused(&to, HubError::BadForm(format!("line {}: {m}", i + 1))),
        }
    }
    if entries.is_empty() || entries.len() > suppression::MAX_PER_CALL {
        return refused(
            &to,
            HubError::BadForm(format!(
                "give 1 to {} addresses or domains",
                suppression::MAX_PER_CALL
            )),
        );
    }
    let user = &posted.user;
    let source = format!("hub:{}", user.auth.actor);
    match api::suppress(
        &state.api,
        user.auth.workspace,
        &user.auth.actor,
        &source,
        entries,
    )
    .await
    {
        Ok(r) => {
            let mut msg = format!(
                "{} added ({} already there); {} enrollments cancelled.",
                r.added, r.already, r.enrollments_cancelled
            );
            for w in r.warnings {
                msg.push(' ');
                msg.push_str(&w);
            }
            done(&to, true, &msg)
        }
        Err(e) => refused(&to, e.into()),
    }
}

pub async fn lift(State(state): State<HubState>, posted: Posted) -> Response {
    let to = back(&posted.form, "/hub/suppressions");
    let value = posted.form.get("value").unwrap_or_default().to_owned();
    let reason = posted.form.get("reason").map(str::to_owned);
    match api::lift(
        &state.api,
        &posted.user.auth,
        value.clone(),
        api::LiftQuery { reason },
    )
    .await
    {
        Ok(_) => done(&to, true, &format!("{value}: suppression lifted.")),
        Err(e) => refused(&to, e.into()),
    }
}
