//! The Hub's pages and actions. Each reads and acts through the `/v1` handlers with the
//! signed-in operator's [`Auth`](pulse_shared::http::Auth), so the Hub and the API cannot
//! disagree; this module only turns their answers into HTML and forms into their requests.
//!
//! This file holds the sequences list and one sequence's page with its actions (pause, resume,
//! delete, re-enroll) and the helpers every page shares; `login`, `edit`, `enrollments` and
//! `sends` hold the others.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use pulse_shared::{
    domain::timing::Timing,
    http::{ApiError, ApiJson, ApiPath, ApiQuery, MaybeJson},
    model::{
        AuditEvent, CancelManyRequest, CancelRequest, EditSequence, Enrollment, EnrollmentStatus,
        ExitOnReply, LedgerState, ReenrollRequest, ResolveSend, SenderIdentity, Sequence,
        SequenceChange, SequenceStats, SequenceStatus, StepInput, StepRunState, TriggerSpec,
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

mod edit;
mod enrollments;
mod login;
mod sends;
mod words;

pub use edit::{edit, edit_form};
pub use enrollments::{cancel, cancel_many, enrollments};
pub use login::{login, login_form, logout};
pub use sends::{outbox, resolve, sends};
use words::{guardrails_text, limits_text, timing_text, trigger_text};

fn uuid(s: &str, what: &'static str) -> HubResult<Uuid> {
    s.parse()
        .map_err(|_| HubError::Api(ApiError::NotFound(what)))
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn when_opt(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map_or_else(|| "—".to_owned(), when)
}

fn timing_json(t: &Timing) -> String {
    serde_json::to_string(t).unwrap_or_default()
}

fn status_badge(status: &str) -> Markup {
    html! { span class=(format!("badge {}", status.to_lowercase())) data-field="status" { (status) } }
}

/// The signed-in workspace's sequence `id` (from the path), or not found.
async fn load(state: &HubState, user: &HubUser, id: &str) -> HubResult<(Uuid, Sequence)> {
    let id = uuid(id, "sequence")?;
    let s = api_sequences::get_one(State(state.api.clone()), user.auth.clone(), ApiPath(id))
        .await?
        .0;
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
    Ok(
        api_sequences::stats(State(state.api.clone()), user.auth.clone())
            .await?
            .0
            .sequences,
    )
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
    let list = api_sequences::list(
        State(state.api.clone()),
        user.auth.clone(),
        ApiQuery(Default::default()),
    )
    .await?
    .0;
    let stats = all_stats(&state, &user).await?;
    let here = "/hub/sequences";
    let body = html! {
        h1 { "Sequences" }
        p.muted { "Pause a sequence to stop every send at once; its pending steps are held, not lost. Counts update live." }
        @if list.sequences.is_empty() {
            p.empty { "No sequences yet. Create one with " code { "POST /v1/sequences" } " (see the README)." }
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
) -> HubResult<Response> {
    let (id, s) = load(&state, &user, &id).await?;
    let api = || State(state.api.clone());
    let versions = api_edit::versions(api(), user.auth.clone(), ApiPath(id))
        .await?
        .0
        .versions;
    let audit = crate::audit::audit_list(
        api(),
        user.auth.clone(),
        ApiPath(id),
        ApiQuery(crate::audit::AuditPage {
            limit: Some(200),
            before: None,
        }),
    )
    .await?
    .0
    .events;
    let stats = all_stats(&state, &user).await?;
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
        section {
            h2 { "Settings" }
            dl.settings {
                dt { "Sender" } dd { (sender_text(&s.sender)) }
                dt { "Time zone" } dd { (s.timezone) }
                dt { "Send window" } dd { @match &s.send_window { Some(w) => { (serde_json::to_string(w).unwrap_or_default()) }, None => { "any time" } } }
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

pub async fn pause(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let to = back(&posted.form, "/hub/sequences");
    let result = async {
        let id = uuid(&id, "sequence")?;
        let api = State(state.api.clone());
        Ok(control::pause(api, posted.user.auth.clone(), ApiPath(id))
            .await?
            .0)
    }
    .await;
    reported(&to, result, |s| {
        format!(
            "“{}” is paused: nothing more is sent until you resume it.",
            s.name
        )
    })
}

pub async fn resume_preview(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(id): Path<String>,
) -> HubResult<Response> {
    let (id, s) = load(&state, &user, &id).await?;
    if s.status != SequenceStatus::Paused {
        return Ok(done(
            &format!("/hub/sequences/{id}"),
            false,
            &format!("“{}” is not paused.", s.name),
        ));
    }
    let preview = control::resume_preview(State(state.api.clone()), user.auth.clone(), ApiPath(id))
        .await?
        .0;
    let here = format!("/hub/sequences/{id}");
    let body = html! {
        (crumbs(&s, "resume"))
        h1 { "Resume “" (s.name) "”?" }
        p { "Resuming now would send " strong { (preview.sends) } " pending steps and skip " strong { (preview.skips) }
            ". Steps whose time passed during the pause move to the next valid time"
            @if let Some(r) = s.max_sends_per_minute { ", " (r) " per minute" } "." }
        @if preview.queued > 0 {
            p.warn { (preview.queued) " steps were already in the queue when the sequence was paused; they are sent right after the resume." }
        }
        form method="post" action=(format!("/hub/sequences/{id}/resume")) {
            (form_fields(&user, &here))
            button.primary type="submit" { "Resume now" }
            " " a href=(here) { "Keep it paused" }
        }
        table.list { thead { tr { th { "Lead" } th { "Step" } th { "Was due" } th { "Outcome" } th { "Sends at" } th { "Why" } } }
            tbody { @for i in preview.items.iter().take(500) { tr {
                td { (i.lead_email) } td.num { (i.step_position) } td { (when(&i.due_at)) }
                td { (i.outcome) } td { (when_opt(&i.send_at)) } td { (i.reason.clone().unwrap_or_default()) }
            } } }
        }
        @if preview.items.len() > 500 { p.muted { "… and " (preview.items.len() - 500) " more." } }
    };
    Ok(page(
        &flash,
        layout("Resume preview", Some(&user), Some(&flash), body),
    ))
}

pub async fn resume(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let to = back(&posted.form, "/hub/sequences");
    let result = async {
        let id = uuid(&id, "sequence")?;
        let api = State(state.api.clone());
        Ok(control::resume(api, posted.user.auth.clone(), ApiPath(id))
            .await?
            .0)
    }
    .await;
    reported(&to, result, |s| format!("“{}” is active again.", s.name))
}

// ---------------------------------------------------------------- delete

pub async fn delete_form(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(id): Path<String>,
) -> HubResult<Response> {
    let (id, s) = load(&state, &user, &id).await?;
    let here = format!("/hub/sequences/{id}");
    let body = html! {
        (crumbs(&s, "delete"))
        h1 { "Delete “" (s.name) "”?" }
        div.danger-box {
            p { strong { "Deletion is irreversible." } " Anything not sent yet will never be sent, and the sequence cannot be resumed. Enrollment records and the send history are kept for audit." }
            p { strong { "Prefer pausing" } " unless you are certain you will not want to resume: pausing keeps the edit history and lets you reactivate this same sequence later." }
            @if s.status == SequenceStatus::Active {
                form.inline method="post" action=(format!("/hub/sequences/{id}/pause")) {
                    (form_fields(&user, &here))
                    button type="submit" { "Pause instead" }
                }
            }
        }
        form method="post" action=(format!("/hub/sequences/{id}/delete")) {
            (form_fields(&user, "/hub/sequences"))
            label for="confirm_name" { "Type the sequence's name to confirm" }
            input #confirm_name name="confirm_name" autocomplete="off" required;
            button.danger type="submit" { "Delete permanently" }
            " " a href=(here) { "Keep it" }
        }
    };
    Ok(page(
        &flash,
        layout("Delete sequence", Some(&user), Some(&flash), body),
    ))
}

pub async fn delete(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let result = async {
        let (id, s) = load(&state, &posted.user, &id).await?;
        if posted.form.get("confirm_name") != Some(s.name.trim()) {
            return Err(HubError::BadForm(
                "the name typed does not match; nothing was deleted".into(),
            ));
        }
        let api = State(state.api.clone());
        Ok(control::delete(api, posted.user.auth.clone(), ApiPath(id))
            .await?
            .0)
    }
    .await;
    match result {
        Ok(change) => done(
            "/hub/sequences",
            true,
            &format!(
                "“{}” is deleted. Its records stay for audit.",
                change.sequence.name
            ),
        ),
        Err(e) => refused(&format!("/hub/sequences/{id}/delete"), e),
    }
}

// ---------------------------------------------------------------- re-enroll

pub async fn reenroll(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let to = back(&posted.form, "/hub/sequences");
    let result = async {
        let id = uuid(&id, "sequence")?;
        let emails: Vec<String> = posted
            .form
            .raw("lead_emails")
            .split(|c: char| c == '\n' || c == ',' || c.is_whitespace())
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        let everyone = posted.form.get("all_not_active") == Some("true");
        let req = ReenrollRequest {
            lead_emails: (!emails.is_empty()).then_some(emails),
            all_not_active: everyone.then_some(true),
        };
        Ok::<_, HubError>(
            control::reenroll(
                State(state.api.clone()),
                posted.user.auth.clone(),
                ApiPath(id),
                ApiJson(req),
            )
            .await?
            .0,
        )
    }
    .await;
    match result {
        Ok(r) => done(
            &to,
            true,
            &format!(
                "Re-enrolled {}; already active {}; never enrolled {}; unknown {}.",
                r.reenrolled, r.already_active, r.never_enrolled, r.unknown_lead
            ),
        ),
        Err(e) => refused(&to, e),
    }
}

// ---------------------------------------------------------------- shared by pages

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
