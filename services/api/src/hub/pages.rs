//! The Hub's pages and actions. Each reads and acts through the api's plain functions (the
//! ones the `/v1` handlers call: `control::pause(&state, &auth, id)`, …) with the signed-in
//! operator's [`Auth`](pulse_shared::http::Auth), so the Hub and the API cannot disagree; this
//! module only turns their answers into HTML and forms into their requests.
//!
//! This file holds the sequences list, one sequence's page and the helpers every page shares;
//! `actions` holds that page's actions (pause, resume with its preview, delete, re-enroll), and
//! `login`, `edit`, `enrollments` and `sends` the other pages.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use pulse_shared::{
    http::ApiError,
    model::{
        AuditEvent, CancelManyRequest, CancelRequest, Enrollment, EnrollmentStatus, ExitOnReply,
        LedgerState, ReenrollRequest, ResolveSend, SenderIdentity, Sequence, SequenceChange,
        SequenceStats, SequenceStatus, StepRunState,
    },
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    Flash, HubError, HubResult, HubState, back, done, encode, form_fields, layout, page, refused,
    session::{self, FormData, HubUser, Posted},
};
use crate::{
    Page, control, edit as api_edit, enrollments as api_enrollments, outbox as api_outbox,
    sends as api_sends, sequences as api_sequences,
};

mod actions;
mod activity;
mod edit;
mod editor;
mod enrollments;
mod login;
mod sends;
mod words;

pub use actions::{delete, delete_form, pause, reenroll, resume, resume_preview};
pub use edit::{create, edit, edit_form, new_form};
pub use enrollments::{cancel, cancel_many, enrollments};
pub use login::{login, login_form, logout};
pub use sends::{outbox, resolve, sends};
use words::{guardrails_text, limits_text, timing_text, trigger_text, window_text};

/// An id from a path or a form; one that does not parse names nothing (404).
pub(super) fn uuid(s: &str, what: &'static str) -> HubResult<Uuid> {
    s.parse()
        .map_err(|_| HubError::Api(ApiError::NotFound(what)))
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn when_opt(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map_or_else(|| "—".to_owned(), when)
}

fn status_badge(status: &str) -> Markup {
    html! { span class=(format!("badge {}", status.to_lowercase())) data-field="status" { (status) } }
}

/// The signed-in workspace's sequence `id` (from the path), or not found.
async fn load(state: &HubState, user: &HubUser, id: &str) -> HubResult<(Uuid, Sequence)> {
    let id = uuid(id, "sequence")?;
    let s = api_sequences::get_one(&state.api, &user.auth, id).await?;
    Ok((id, s))
}

/// "Sequences / name / leaf", each linking back up.
fn crumbs(s: &Sequence, leaf: &str) -> Markup {
    html! {
        p.crumbs {
            a href="/hub/sequences" { "Sequences" } " / "
            a href=(format!("/hub/sequences/{}", s.id)) { (s.name) } " / " (leaf)
        }
    }
}

/// Reports a control action on a sequence back on the page it came from, with the API's
/// warnings appended to `said`.
fn reported(
    to: &str,
    result: HubResult<SequenceChange>,
    said: impl FnOnce(&Sequence) -> String,
) -> Response {
    match result {
        Ok(change) => {
            let mut msg = said(&change.sequence);
            for w in &change.warnings {
                msg.push_str(&format!(" ({w})"));
            }
            done(to, true, &msg)
        }
        Err(e) => refused(to, e),
    }
}

/// The Active/Paused toggle: pausing is immediate; resuming goes through its preview first.
fn toggle(user: &HubUser, s: &Sequence, return_to: &str) -> Markup {
    html! {
        span.toggle-cell data-toggle=(s.id) {
            @match s.status {
                SequenceStatus::Active => {
                    form.inline method="post" action=(format!("/hub/sequences/{}/pause", s.id)) {
                        (form_fields(user, return_to))
                        button.toggle.on type="submit" role="switch" aria-checked="true"
                            title="Active: click to pause every send of this sequence" { span.knob {} "Active" }
                    }
                }
                SequenceStatus::Paused => {
                    a.toggle.off role="switch" aria-checked="false"
                        href=(format!("/hub/sequences/{}/resume", s.id))
                        title="Paused: click to see what resuming would send, then resume" { span.knob {} "Paused" }
                }
                SequenceStatus::Deleted => { span.muted { "deleted" } }
            }
        }
    }
}

// ---------------------------------------------------------------- sign-in

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/hub/") && !n.contains("//") && !n.contains('\\') => n.to_owned(),
        _ => "/hub/sequences".to_owned(),
    }
}
// ---------------------------------------------------------------- sequences

async fn all_stats(state: &HubState, user: &HubUser) -> HubResult<Vec<SequenceStats>> {
    Ok(api_sequences::stats(&state.api, &user.auth)
        .await?
        .sequences)
}

fn count_cells(s: Option<&SequenceStats>) -> Markup {
    let n = |f: fn(&SequenceStats) -> i64| s.map_or(0, f);
    html! {
        td.num data-field="enrolled" { (n(|s| s.enrolled)) }
        td.num data-field="active" { (n(|s| s.active)) }
        td.num data-field="completed" { (n(|s| s.completed)) }
        td.num data-field="sends_today" { (n(|s| s.sends_today)) }
        td.num data-field="replied" { (n(|s| s.replied)) }
        td.num data-field="bounced" { (n(|s| s.bounced + s.complained)) }
    }
}

pub async fn sequences(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
) -> HubResult<Response> {
    let list = api_sequences::list(&state.api, &user.auth, Default::default()).await?;
    let stats = all_stats(&state, &user).await?;
    let here = "/hub/sequences";
    let body = html! {
        h1 { "Sequences" }
        p.actions { a.button.primary href="/hub/sequences/new" { "New sequence" } }
        p.muted { "Pause a sequence to stop every send at once; its pending steps are held, not lost. Counts update live." }
        @if list.sequences.is_empty() {
            p.empty { "No sequences yet. Start one with “New sequence”, or over the API: " code { "POST /v1/sequences" } " (see the README)." }
        } @else {
            table.list data-live="/hub/sequences/live" {
                thead { tr {
                    th { "Name" } th { "Status" } th.num { "Enrolled" } th.num { "Active" }
                    th.num { "Completed" } th.num { "Sends today" } th.num { "Replied" }
                    th.num title="Bounced or complained" { "Bounced" } th { "Active/Paused" } th {}
                } }
                tbody {
                    @for s in &list.sequences {
                        tr data-sequence=(s.id) {
                            td { a href=(format!("/hub/sequences/{}", s.id)) { (s.name) } }
                            td { (status_badge(s.status.as_str())) }
                            (count_cells(stats.iter().find(|x| x.sequence_id == s.id)))
                            td { (toggle(&user, s, here)) }
                            td.actions {
                                @if s.status != SequenceStatus::Deleted {
                                    a.danger href=(format!("/hub/sequences/{}/delete", s.id)) { "Delete…" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &flash,
        layout("Sequences", Some(&user), Some(&flash), body),
    ))
}

/// Status and counts of every sequence, for `hub.js` to refresh the page without a reload.
pub async fn live(
    State(state): State<HubState>,
    user: HubUser,
) -> HubResult<Json<Vec<SequenceStats>>> {
    Ok(Json(all_stats(&state, &user).await?))
}

fn audit_change(e: &AuditEvent) -> String {
    let show = |v: &Option<serde_json::Value>| match v {
        None => String::new(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 160 {
                format!("{}…", s.chars().take(160).collect::<String>())
            } else {
                s
            }
        }
    };
    match (&e.before, &e.after) {
        (None, None) => String::new(),
        (b, a) => format!("{} → {}", show(b), show(a)),
    }
}

pub async fn sequence(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> HubResult<Response> {
    let (id, s) = load(&state, &user, &id).await?;
    let range = activity::range(query.get("range").map(String::as_str));
    let (api, auth) = (&state.api, &user.auth);
    let audit_page = crate::audit::AuditPage {
        limit: Some(200),
        before: None,
    };
    // Independent reads, side by side: the page takes the slowest, not their sum.
    let (versions, audit, stats, shown) = tokio::try_join!(
        api_edit::versions(api, auth, id),
        crate::audit::audit_list(api, auth, id, audit_page),
        api_sequences::stats_of(api, auth, Some(id)),
        crate::activity::activity(
            api,
            auth,
            id,
            crate::activity::ActivityQuery { range: Some(range) },
        ),
    )?;
    let (versions, audit, stats) = (versions.versions, audit.events, stats.sequences);
    let st = stats.iter().find(|x| x.sequence_id == id);
    let here = format!("/hub/sequences/{id}");
    let live = s.status != SequenceStatus::Deleted;
    let body = html! {
        p.crumbs { a href="/hub/sequences" { "Sequences" } " / " (s.name) }
        h1 { (s.name) " " (status_badge(s.status.as_str())) }
        div.bar {
            (toggle(&user, &s, &here))
            a.button href=(format!("/hub/sequences/{id}/enrollments")) { "Enrollments" }
            a.button href=(format!("/hub/sends?sequence={id}")) { "Send history" }
            @if live {
                a.button href=(format!("/hub/sequences/{id}/edit")) { "Edit" }
                a.button.danger href=(format!("/hub/sequences/{id}/delete")) { "Delete…" }
            }
        }
        table.counts data-live="/hub/sequences/live" {
            thead { tr { th.num { "Enrolled" } th.num { "Active" } th.num { "Completed" } th.num { "Sends today" } th.num { "Replied" } th.num title="Bounced or complained" { "Bounced" } } }
            tbody { tr data-sequence=(s.id) { (count_cells(st)) } }
        }
        (activity::section(&shown, &here))
        section {
            h2 { "Settings" }
            dl.settings {
                dt { "Sender" } dd { (sender_text(&s.sender)) }
                dt { "Time zone" } dd { (s.timezone) }
                dt { "Send window" } dd { (window_text(s.send_window.as_ref(), &s.timezone)) }
                dt { "End date" } dd { (when_opt(&s.end_date)) }
                dt { "Sending limits" } dd { (limits_text(&s)) }
                dt { "Priority" } dd { (s.priority) " (0–9, higher first)" }
                dt { "Guardrails" } dd { (guardrails_text(&s.guardrails)) }
                dt { "A reply ends" } dd { (reply_scope(s.exit_on_reply)) }
                dt { "Version" } dd { (s.version) " (updated " (when(&s.updated_at)) ")" }
            }
        }
        @if let Some(note) = api_sequences::unsubscribe_link_note(&s.steps) {
            p.muted { (note) }
        }
        section {
            h2 { "Steps" }
            table.list { thead { tr { th { "#" } th { "Timing" } th { "Subject" } th { "Body" } th { "End date" } th { "Skipped when later than" } } }
                tbody { @for step in &s.steps { tr {
                    td.num { (step.position) }
                    td { (timing_text(&step.timing)) }
                    td {
                        @if step.thread { span.muted { "reply in thread: " } }
                        @if step.subject.is_empty() { "Re: (the first subject)" } @else { (step.subject) }
                    }
                    td {
                        pre.body { (step.body) }
                        @if let Some(h) = &step.html { details { summary { "HTML part" } pre.body { (h) } } }
                    }
                    td { (when_opt(&step.end_date)) }
                    td { @match &step.max_lateness { Some(l) => { (l) " after it came due" }, None => { "never" } } }
                } } }
            }
        }
        section {
            h2 { "Triggers" }
            @if s.triggers.is_empty() { p.muted { "None: leads are enrolled through the API only." } }
            ul { @for t in &s.triggers { li { (trigger_text(t)) } } }
        }
        @if live {
            section {
                h2 { "Re-enroll" }
                p.muted { "Start leads again from step 1: leads who completed, were cancelled or were ineligible. Their earlier sends stay in the history." }
                form method="post" action=(format!("/hub/sequences/{id}/re-enroll")) data-confirm="Re-enroll these leads from step 1?" {
                    (form_fields(&user, &here))
                    label for="lead_emails" { "Leads (one email per line)" }
                    textarea #lead_emails name="lead_emails" rows="3" placeholder="ada@example.com" {}
                    label.check { input type="checkbox" name="all_not_active" value="true"; " Everyone who is not currently active" }
                    button type="submit" { "Re-enroll" }
                }
            }
        }
        section {
            h2 { "Edit history" }
            table.list { thead { tr { th { "Version" } th { "By" } th { "When" } th { "Steps" } } }
                tbody { @for v in &versions { tr {
                    td.num { (v.version) } td { (v.actor) } td { (when(&v.created_at)) }
                    td { (v.snapshot["steps"].as_array().map_or(0, Vec::len)) }
                } } }
            }
        }
        section {
            h2 { "Audit trail" }
            table.list.audit { thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Change" } } }
                tbody { @for e in &audit { tr {
                    td { (when(&e.at)) } td { (e.actor) } td { (e.action) } td.change { (audit_change(e)) }
                } } }
            }
        }
    };
    Ok(page(
        &flash,
        layout(&s.name, Some(&user), Some(&flash), body),
    ))
}

/// A sequence's sender in words.
fn sender_text(sender: &SenderIdentity) -> String {
    let from = match (&sender.from, &sender.mailbox_ids) {
        (Some(from), _) => from.clone(),
        (None, Some(ids)) => format!("{} mailboxes, one per lead", ids.len()),
        (None, None) => "none".into(),
    };
    match &sender.reply_to {
        Some(r) => format!("{from} (replies to {r})"),
        None => from,
    }
}

/// What a reply ends, in words.
fn reply_scope(scope: ExitOnReply) -> &'static str {
    match scope {
        ExitOnReply::Enrollment => "the lead's enrollment in this sequence",
        ExitOnReply::AllSequences => "the lead's enrollments in every sequence",
        ExitOnReply::None => "nothing (the reply is only recorded)",
    }
}
