//! The Hub's pages and actions. Each reads and acts through the `/v1` handlers with the
//! signed-in operator's [`Auth`](pulse_shared::http::Auth), so the Hub and the API cannot
//! disagree; this module only turns their answers into HTML and forms into their requests.

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
        SequenceChange, SequenceStats, SequenceStatus, StepInput, TriggerSpec,
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

fn timing_text(t: &Timing) -> String {
    match t {
        Timing::Immediately => "immediately".to_owned(),
        Timing::Delay { delay } => format!("{delay} after the previous step"),
        Timing::OnDate { at } => format!("on {}", when(at)),
    }
}

fn timing_json(t: &Timing) -> String {
    serde_json::to_string(t).unwrap_or_default()
}

fn trigger_text(t: &TriggerSpec) -> String {
    match t {
        TriggerSpec::TagApplied { tag } => format!("tag “{tag}” applied"),
        TriggerSpec::ListAdded { list } => format!("added to list “{list}”"),
        TriggerSpec::LeadScore { min_score, mode } => match mode {
            pulse_shared::model::ScoreMode::Crossing => format!("lead score reaches {min_score}"),
            pulse_shared::model::ScoreMode::Level => {
                format!("any score event at {min_score} or above")
            }
        },
    }
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

fn login_page(next: &str, error: Option<&str>, token: &str) -> Response {
    let body = html! {
        section.signin {
            h1 { "Sign in to the Pulse Hub" }
            p { "Use an API key of your workspace. You will see and control that workspace's sequences only." }
            @if let Some(e) = error { p.flash.error role="alert" { (e) } }
            form method="post" action="/hub/login" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                label for="api_key" { "API key" }
                input #api_key type="password" name="api_key" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.muted { "Running locally with " code { "make run" } "? The key is " code { "pulse-dev-key" } "." }
        }
    };
    let mut resp =
        axum::response::Html(layout("Sign in", None, None, body).into_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::LOGIN_COOKIE, token, 1800)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn login_form(Query(q): Query<Next>) -> Response {
    login_page(
        &safe_next(q.next.as_deref()),
        None,
        &session::random_token(),
    )
}

/// Signs in: the form's token must match the sign-in cookie (double submit), the key a workspace.
pub async fn login(
    State(state): State<HubState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let next = safe_next(form.get("next"));
    let cookie = session::cookie(&headers, session::LOGIN_COOKIE);
    let matches = matches!((form.get("csrf"), cookie.as_deref()), (Some(a), Some(b)) if session::same_secret(a, b));
    if !matches {
        let mut resp = login_page(
            &next,
            Some("The sign-in form expired; please try again."),
            &session::random_token(),
        );
        *resp.status_mut() = axum::http::StatusCode::FORBIDDEN;
        return resp;
    }
    let Some(key) = form.get("api_key") else {
        let mut resp = login_page(&next, Some("Enter an API key."), &session::random_token());
        *resp.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
        return resp;
    };
    match session::sign_in(&state.api.db, key).await {
        Ok(Some(token)) => {
            tracing::info!("hub sign-in");
            let mut resp = Redirect::to(&next).into_response();
            let cookies = [
                session::set_cookie(session::COOKIE, &token, session::SESSION_HOURS * 3600),
                session::set_cookie(session::LOGIN_COOKIE, "", 0),
            ];
            for c in cookies {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Ok(None) => {
            let mut resp = login_page(
                &next,
                Some("That API key is not valid."),
                &session::random_token(),
            );
            *resp.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            resp
        }
        Err(e) => e.into_response(),
    }
}

pub async fn logout(State(state): State<HubState>, posted: Posted) -> Response {
    if let Err(e) = session::sign_out(&state.api.db, &posted.user.token).await {
        return e.into_response();
    }
    let mut resp = Redirect::to("/hub/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::COOKIE, "", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
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
    let list = api_sequences::list(State(state.api.clone()), user.auth.clone())
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
    let audit = control::audit_list(
        api(),
        user.auth.clone(),
        ApiPath(id),
        ApiQuery(Page { limit: Some(200) }),
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
                dt { "Rate limit" } dd { @match s.max_sends_per_minute { Some(r) => { (r) " sends per minute" }, None => { "none" } } }
                dt { "A reply ends" } dd { (reply_scope(s.exit_on_reply)) }
                dt { "Version" } dd { (s.version) " (updated " (when(&s.updated_at)) ")" }
            }
        }
        @if let Some(note) = api_sequences::unsubscribe_link_note(&s.steps) {
            p.muted { (note) }
        }
        section {
            h2 { "Steps" }
            table.list { thead { tr { th { "#" } th { "Timing" } th { "Subject" } th { "Body" } th { "End date" } } }
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

// ---------------------------------------------------------------- edit

pub async fn edit_form(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(id): Path<String>,
) -> HubResult<Response> {
    let (id, s) = load(&state, &user, &id).await?;
    let here = format!("/hub/sequences/{id}");
    let action = format!("/hub/sequences/{id}/edit");
    let triggers = serde_json::to_string_pretty(&s.triggers).unwrap_or_default();
    let window = s
        .send_window
        .as_ref()
        .map(|w| serde_json::to_string(w).unwrap_or_default())
        .unwrap_or_default();
    let body = html! {
        (crumbs(&s, "edit"))
        h1 { "Edit “" (s.name) "”" }
        aside.guidance {
            h2 { "Before you edit" }
            @if s.status == SequenceStatus::Active {
                p.warn { "This sequence is active. Pause it first if the change is more than a rename or a copy fix." }
                form.inline method="post" action=(format!("/hub/sequences/{id}/pause")) {
                    (form_fields(&user, &action))
                    button type="submit" { "Pause it now" }
                }
            }
            p { strong { "Safe while active: " } "renaming the sequence; editing the copy of a step no lead has reached yet." }
            p { strong { "Pause first for: " } "changing a step's timing, reordering or deleting steps, adding steps, changing the triggers." }
            p { "Only sends not yet queued pick up new content. Anything already sent stays sent, and a step due within the next minutes may already be queued with the old content. After editing, resume the sequence." }
        }
        form.edit method="post" action=(action) {
            (form_fields(&user, &here))
            label for="name" { "Name" }
            input #name name="name" value=(s.name) required maxlength="200";
            label for="sender" { "Sender (Name <address>)" }
            @if let Some(ids) = &s.sender.mailbox_ids {
                p.muted { "Sends from " (ids.len()) " mailboxes, one per lead (change them through the API: "
                    code { "sender.mailbox_ids" } "). Or give one sender address here instead." }
                input type="hidden" name="mailbox_ids" value=(ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(","));
            }
            input #sender name="sender" value=(s.sender.from.clone().unwrap_or_default()) required[s.sender.mailbox_ids.is_none()];
            label for="reply_to" { "Reply-To (empty: replies go to the sender)" }
            input #reply_to name="reply_to" value=(s.sender.reply_to.clone().unwrap_or_default());
            label for="timezone" { "Time zone (IANA)" }
            input #timezone name="timezone" value=(s.timezone);
            label for="max_sends_per_minute" { "Most sends per minute (empty: no limit)" }
            input #max_sends_per_minute name="max_sends_per_minute" inputmode="numeric"
                value=(s.max_sends_per_minute.map(|r| r.to_string()).unwrap_or_default());
            label for="exit_on_reply" { "A lead's reply ends" }
            select #exit_on_reply name="exit_on_reply" {
                @for scope in [ExitOnReply::Enrollment, ExitOnReply::AllSequences, ExitOnReply::None] {
                    option value=(scope.as_str()) selected[scope == s.exit_on_reply] { (reply_scope(scope)) }
                }
            }
            label for="end_date" { "End date (RFC 3339, empty: none)" }
            input #end_date name="end_date" value=(s.end_date.map(|d| d.to_rfc3339()).unwrap_or_default());
            label for="send_window" { "Send window (JSON, empty: any time)" }
            input #send_window name="send_window" value=(window) placeholder=r#"{"days":["mon","tue","wed","thu","fri"],"start":"09:00","end":"17:00"}"#;
            fieldset {
                legend { "Steps, in order" }
                @for step in &s.steps {
                    div.step {
                        input type="hidden" name="step_id" value=(step.id);
                        h3 { "Step " (step.position) }
                        label { "Position" input name="step_order" inputmode="numeric" value=(step.position); }
                        label { "Subject" input name="step_subject" value=(step.subject); }
                        label { "Body (text)" textarea name="step_body" rows="4" { (step.body) } }
                        label { "HTML (empty: text only)" textarea name="step_html" rows="3" { (step.html.clone().unwrap_or_default()) } }
                        (thread_select(step.thread))
                        label { "Timing (JSON)" input name="step_timing" value=(timing_json(&step.timing)); }
                        label { "End date (RFC 3339, empty: none)" input name="step_end" value=(step.end_date.map(|d| d.to_rfc3339()).unwrap_or_default()); }
                        label.check { input type="checkbox" name="step_delete" value=(step.id); " Delete this step" }
                    }
                }
                div.step.new {
                    input type="hidden" name="step_id" value="";
                    h3 { "Add a step (leave subject, body and HTML empty to add none)" }
                    label { "Position" input name="step_order" inputmode="numeric" value=(s.steps.len() + 1); }
                    label { "Subject" input name="step_subject" value=""; }
                    label { "Body (text)" textarea name="step_body" rows="4" {} }
                    label { "HTML (empty: text only)" textarea name="step_html" rows="3" {} }
                    (thread_select(false))
                    label { "Timing (JSON)" input name="step_timing" value=r#"{"type":"delay","delay":"P2D"}"#; }
                    label { "End date (RFC 3339, empty: none)" input name="step_end" value=""; }
                }
            }
            label for="triggers" { "Triggers (JSON)" }
            textarea #triggers name="triggers" rows="4" { (triggers) }
            button.primary type="submit" { "Save changes" }
            " " a href=(here) { "Cancel" }
        }
    };
    Ok(page(
        &flash,
        layout("Edit sequence", Some(&user), Some(&flash), body),
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

/// Whether a step is sent as a reply in the lead's thread (a select, so every step row sends a
/// value and the rows stay aligned).
fn thread_select(threaded: bool) -> Markup {
    html! {
        label { "Send as"
            select name="step_thread" {
                option value="no" selected[!threaded] { "a new message" }
                option value="yes" selected[threaded] { "a reply in the lead's thread (Re:)" }
            }
        }
    }
}

/// The edit form as the API's `PATCH /v1/sequences/{id}` body.
fn edit_request(form: &FormData) -> Result<EditSequence, HubError> {
    let bad = |field: &str, e: String| HubError::BadForm(format!("{field}: {e}"));
    let ids = form.all("step_id");
    let orders = form.all("step_order");
    let subjects = form.all("step_subject");
    let bodies = form.all("step_body");
    let htmls = form.all("step_html");
    let threads = form.all("step_thread");
    let timings = form.all("step_timing");
    let ends = form.all("step_end");
    let deleted = form.all("step_delete");
    if [
        orders.len(),
        subjects.len(),
        bodies.len(),
        htmls.len(),
        threads.len(),
        timings.len(),
        ends.len(),
    ]
    .iter()
    .any(|n| *n != ids.len())
    {
        return Err(HubError::BadForm(
            "the steps of the form are incomplete; reload the page".into(),
        ));
    }
    let mut steps = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let subject = subjects[i].trim();
        let html = htmls[i].trim();
        let blank = subject.is_empty() && bodies[i].trim().is_empty() && html.is_empty();
        if (id.is_empty() && blank) || deleted.contains(id) {
            continue;
        }
        let order: f64 = orders[i]
            .trim()
            .parse()
            .map_err(|_| bad("position", format!("{:?} is not a number", orders[i])))?;
        let timing: Timing = serde_json::from_str(timings[i])
            .map_err(|e| bad(&format!("step {} timing", i + 1), e.to_string()))?;
        let end_date = match ends[i].trim() {
            "" => None,
            d => Some(
                DateTime::parse_from_rfc3339(d)
                    .map_err(|e| bad(&format!("step {} end date", i + 1), e.to_string()))?
                    .with_timezone(&Utc),
            ),
        };
        let id = if id.is_empty() {
            None
        } else {
            Some(uuid(id, "step")?)
        };
        steps.push((
            order,
            i,
            StepInput {
                id,
                position: None,
                subject: subject.to_owned(),
                body: bodies[i].to_owned(),
                html: (!html.is_empty()).then(|| htmls[i].to_owned()),
                thread: threads[i] == "yes",
                timing,
                end_date,
            },
        ));
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let opt = |name: &str| form.get(name);
    let triggers: Vec<TriggerSpec> = match opt("triggers") {
        Some(t) => serde_json::from_str(t).map_err(|e| bad("triggers", e.to_string()))?,
        None => Vec::new(),
    };
    Ok(EditSequence {
        name: opt("name").map(str::to_owned),
        timezone: opt("timezone").map(str::to_owned),
        sender: match (opt("sender"), opt("mailbox_ids")) {
            (Some(f), _) => Some(SenderIdentity {
                from: Some(f.to_owned()),
                mailbox_ids: None,
                reply_to: opt("reply_to").map(str::to_owned),
            }),
            (None, Some(ids)) => Some(SenderIdentity {
                from: None,
                mailbox_ids: Some(
                    ids.split(',')
                        .map(|id| uuid(id.trim(), "mailbox"))
                        .collect::<Result<_, _>>()?,
                ),
                reply_to: opt("reply_to").map(str::to_owned),
            }),
            (None, None) => None,
        },
        // The form lists every live step; one is deleted only by its checkbox.
        delete_missing_steps: !deleted.is_empty(),
        steps: Some(steps.into_iter().map(|(_, _, s)| s).collect()),
        triggers: Some(triggers),
        send_window: Some(match opt("send_window") {
            Some(w) => {
                Some(serde_json::from_str(w).map_err(|e| bad("send window", e.to_string()))?)
            }
            None => None,
        }),
        end_date: Some(match opt("end_date") {
            Some(d) => Some(
                DateTime::parse_from_rfc3339(d)
                    .map_err(|e| bad("end date", e.to_string()))?
                    .with_timezone(&Utc),
            ),
            None => None,
        }),
        max_sends_per_minute: Some(match opt("max_sends_per_minute") {
            Some(r) => Some(r.parse().map_err(|_| {
                bad(
                    "most sends per minute",
                    format!("{r:?} is not a whole number"),
                )
            })?),
            None => None,
        }),
        exit_on_reply: match opt("exit_on_reply") {
            Some(raw) => Some(
                serde_json::from_value(serde_json::Value::String(raw.to_owned()))
                    .map_err(|_| bad("a reply ends", format!("{raw:?} is not a choice")))?,
            ),
            None => None,
        },
    })
}

/// What a reply ends, in words.
fn reply_scope(scope: ExitOnReply) -> &'static str {
    match scope {
        ExitOnReply::Enrollment => "the lead's enrollment in this sequence",
        ExitOnReply::AllSequences => "the lead's enrollments in every sequence",
        ExitOnReply::None => "nothing (the reply is only recorded)",
    }
}

pub async fn edit(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let result = async {
        let id = uuid(&id, "sequence")?;
        let req = edit_request(&posted.form)?;
        let api = State(state.api.clone());
        Ok(
            api_edit::edit(api, posted.user.auth.clone(), ApiPath(id), ApiJson(req))
                .await?
                .0,
        )
    }
    .await;
    let to = match &result {
        Ok(change) => format!("/hub/sequences/{}", change.sequence.id),
        Err(_) => format!("/hub/sequences/{id}/edit"),
    };
    reported(&to, result, |s| format!("Saved as version {}.", s.version))
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

// ---------------------------------------------------------------- enrollments

#[derive(Deserialize)]
pub struct EnrollmentQuery {
    status: Option<String>,
    after: Option<Uuid>,
}

fn sent_summary(e: &Enrollment) -> Markup {
    html! {
        ul.steps { @for st in &e.steps { li {
            "step " (st.position) ": " span class=(format!("badge {}", st.state.as_str().to_lowercase())) { (st.state) }
            @if let Some(t) = st.sent_at { " " (when(&t)) }
            @if let Some(n) = &st.note { " — " span.muted { (n) } }
        } } }
    }
}

pub async fn enrollments(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(id): Path<String>,
    Query(q): Query<EnrollmentQuery>,
) -> HubResult<Response> {
    let (id, s) = load(&state, &user, &id).await?;
    let status = q.status.clone().filter(|s| !s.is_empty());
    let filter = api_enrollments::EnrollmentFilter {
        status: status.clone(),
        step: None,
        lead: None,
        limit: Some(200),
        after: q.after,
    };
    let list = api_enrollments::list(
        State(state.api.clone()),
        user.auth.clone(),
        ApiPath(id),
        ApiQuery(filter),
    )
    .await?
    .0;
    let here = match &status {
        Some(st) => format!("/hub/sequences/{id}/enrollments?status={}", encode(st)),
        None => format!("/hub/sequences/{id}/enrollments"),
    };
    let body = html! {
        (crumbs(&s, "enrollments"))
        h1 { "Enrollments of “" (s.name) "” " (status_badge(s.status.as_str())) }
        div.bar { (toggle(&user, &s, &here)) span.muted { "Emergency? Pause first, then cancel the worst-affected enrollments." } }
        nav.filters {
            @for (label, value) in [("All", None), ("Active", Some("ACTIVE")), ("Completed", Some("COMPLETED")), ("Cancelled", Some("CANCELLED")), ("Ineligible", Some("INELIGIBLE")), ("Failed", Some("FAILED"))] {
                @let href = match value { Some(v) => format!("/hub/sequences/{id}/enrollments?status={v}"), None => format!("/hub/sequences/{id}/enrollments") };
                a class=(if status.as_deref().map(str::to_uppercase).as_deref() == value { "current" } else { "" }) href=(href) { (label) }
            }
        }
        form #bulk method="post" action=(format!("/hub/sequences/{id}/enrollments/cancel"))
            data-confirm="Cancel every selected enrollment? No more steps go to those leads." {
            (form_fields(&user, &here))
            @if list.enrollments.is_empty() {
                p.empty { "No enrollments" @if let Some(st) = &status { " with status " (st) } "." }
            } @else {
                table.list.enrollments {
                    thead { tr { th { input type="checkbox" data-select-all="ids" aria-label="Select all"; } th { "Lead" } th { "Status" } th.num { "Step" } th { "Next due" } th { "What was sent when" } th {} } }
                    tbody { @for e in &list.enrollments { tr data-enrollment=(e.id) {
                        td { @if e.status == EnrollmentStatus::Active { input type="checkbox" name="ids" value=(e.id) aria-label=(format!("Select {}", e.lead_email)); } }
                        td { (e.lead_email) }
                        td { span class=(format!("badge {}", e.status.as_str().to_lowercase())) { (e.status) }
                             @if let Some(r) = &e.end_reason { br; span.muted { (r) }
                                 @if r == "replied" || r == "bounced" || r == "complained" {
                                     " · " a href=(format!("/hub/inbound?enrollment={}", e.id)) { "what came back" } } } }
                        td.num { (e.current_step) }
                        td { (when_opt(&e.next_due_at)) }
                        td { (sent_summary(e)) }
                        td.actions { @if e.status == EnrollmentStatus::Active {
                            button.danger.small type="submit" form=(format!("cancel-{}", e.id)) { "Cancel" }
                        } }
                    } } }
                }
                div.bar {
                    button.danger type="submit" { "Cancel selected" }
                    label.check { input type="checkbox" name="all_active" value="true"; " Emergency: cancel every active enrollment of this sequence" }
                }
                @if let Some(next) = list.next {
                    p { a href=(format!("{here}{}after={next}", if here.contains('?') { "&" } else { "?" })) { "Next page →" } }
                }
            }
        }
        // One small form per row action (forms cannot nest inside the bulk form).
        @for e in list.enrollments.iter().filter(|e| e.status == EnrollmentStatus::Active) {
            form.hidden id=(format!("cancel-{}", e.id)) method="post" action=(format!("/hub/enrollments/{}/cancel", e.id))
                data-confirm=(format!("Cancel {}'s enrollment? No more steps go to this lead from this sequence.", e.lead_email)) {
                (form_fields(&user, &here))
            }
        }
    };
    Ok(page(
        &flash,
        layout("Enrollments", Some(&user), Some(&flash), body),
    ))
}

async fn cancel_one(
    state: &HubState,
    user: &HubUser,
    id: Uuid,
    reason: &str,
) -> HubResult<Enrollment> {
    let body = CancelRequest {
        reason: Some(reason.to_owned()),
    };
    Ok(control::cancel(
        State(state.api.clone()),
        user.auth.clone(),
        ApiPath(id),
        MaybeJson(Some(body)),
    )
    .await?
    .0)
}

pub async fn cancel(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let to = back(&posted.form, "/hub/sequences");
    let result = async {
        let id = uuid(&id, "enrollment")?;
        cancel_one(&state, &posted.user, id, "cancelled from the Hub").await
    }
    .await;
    match result {
        Ok(e) => done(
            &to,
            true,
            &format!("{}'s enrollment is cancelled.", e.lead_email),
        ),
        Err(e) => refused(&to, e),
    }
}

/// Bulk cancel: the selected enrollments, or every active one when the emergency box is ticked.
pub async fn cancel_many(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let to = back(&posted.form, "/hub/sequences");
    let result = async {
        let sequence = uuid(&id, "sequence")?;
        let everyone = posted.form.get("all_active") == Some("true");
        let ids: Vec<Uuid> = posted
            .form
            .all("ids")
            .iter()
            .map(|i| uuid(i, "enrollment"))
            .collect::<Result<_, _>>()?;
        if !everyone && ids.is_empty() {
            return Err(HubError::BadForm(
                "select at least one enrollment, or tick the emergency box".into(),
            ));
        }
        let req = CancelManyRequest {
            enrollment_ids: (!everyone).then_some(ids),
            all_active: everyone.then_some(true),
            reason: Some("cancelled from the Hub".into()),
        };
        let api = State(state.api.clone());
        Ok(control::cancel_many(
            api,
            posted.user.auth.clone(),
            ApiPath(sequence),
            ApiJson(req),
        )
        .await?
        .0)
    }
    .await;
    match result {
        Ok(r) => {
            let mut msg = format!("{} enrollments cancelled", r.cancelled);
            if r.already_ended > 0 {
                msg.push_str(&format!("; {} had already ended", r.already_ended));
            }
            msg.push('.');
            for w in &r.warnings {
                msg.push_str(&format!(" ({w})"));
            }
            done(&to, true, &msg)
        }
        Err(e) => refused(&to, e),
    }
}

// ---------------------------------------------------------------- sends

#[derive(Deserialize)]
pub struct SendQuery {
    lead: Option<String>,
    step: Option<String>,
    state: Option<String>,
    sequence: Option<String>,
    after: Option<String>,
}

pub async fn sends(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Query(q): Query<SendQuery>,
) -> HubResult<Response> {
    let blank = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (lead, step, st, seq) = (
        blank(&q.lead),
        blank(&q.step),
        blank(&q.state),
        blank(&q.sequence),
    );
    let step_n = step
        .as_deref()
        .map(|s| {
            s.parse::<i32>()
                .map_err(|_| HubError::BadForm(format!("step {s:?} is not a step number")))
        })
        .transpose()?;
    let sequence_id = seq.as_deref().map(|s| uuid(s, "sequence")).transpose()?;
    let filter = api_sends::SendFilter {
        sequence_id,
        lead: lead.clone(),
        state: st.clone(),
        step: step_n,
        limit: Some(200),
        after: blank(&q.after),
        ..Default::default()
    };
    let list = api_sends::search(
        State(state.api.clone()),
        user.auth.clone(),
        ApiQuery(filter),
    )
    .await?
    .0;
    let names: std::collections::HashMap<Uuid, String> =
        api_sequences::list(State(state.api.clone()), user.auth.clone())
            .await?
            .0
            .sequences
            .into_iter()
            .map(|s| (s.id, s.name))
            .collect();
    let mut query = Vec::new();
    for (k, v) in [
        ("lead", &lead),
        ("step", &step),
        ("state", &st),
        ("sequence", &seq),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(v)));
        }
    }
    let here = if query.is_empty() {
        "/hub/sends".to_owned()
    } else {
        format!("/hub/sends?{}", query.join("&"))
    };
    let body = html! {
        h1 { "Send history" }
        p.muted { "What actually went out, from the send ledger, oldest first. UNKNOWN: the relay may have accepted it but Pulse could not record the answer — check the relay's log for the Message-ID, then settle it here." }
        form.filters method="get" action="/hub/sends" {
            @if let Some(s) = &seq { input type="hidden" name="sequence" value=(s); }
            label { "Lead " input type="email" name="lead" value=(lead.clone().unwrap_or_default()) placeholder="ada@example.com"; }
            label { "Step " input name="step" inputmode="numeric" size="3" value=(step.clone().unwrap_or_default()); }
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in LedgerState::ALL.iter().map(|s| s.as_str()) {
                        option value=(s) selected[st.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
            @if seq.is_some() { " " a href="/hub/sends" { "All sequences" } }
        }
        @if list.sends.is_empty() {
            p.empty { "Nothing matches." }
        } @else {
            table.list.sends {
                thead { tr { th { "Sent / updated" } th { "Lead" } th { "Sequence" } th.num { "Step" } th { "State" } th.num { "Attempts" } th { "Relay's reply" } th { "Message-ID" } th {} } }
                tbody { @for s in &list.sends { tr data-key=(s.idempotency_key) {
                    td { (when(&s.sent_at.unwrap_or(s.updated_at))) }
                    td { (s.lead_email) }
                    td { a href=(format!("/hub/sequences/{}", s.sequence_id)) { (names.get(&s.sequence_id).cloned().unwrap_or_else(|| s.sequence_id.to_string())) } }
                    td.num { (s.step_position) @if let Some(v) = s.sequence_version { span.muted { " v" (v) } } }
                    td { span class=(format!("badge {}", s.state.as_str().to_lowercase())) { (s.state) } }
                    td.num { (s.attempts) }
                    td { @if let Some(c) = s.smtp_code { (c) " " } (s.smtp_reply.clone().unwrap_or_default()) }
                    td { code { (s.message_id) } }
                    td.actions { @if s.state == LedgerState::Unknown {
                        form.inline method="post" action=(format!("/hub/sends/{}/resolve", encode(&s.idempotency_key)))
                            data-confirm="Record this send as it went out (the relay's log shows it)?" {
                            (form_fields(&user, &here)) input type="hidden" name="outcome" value="sent";
                            button.small type="submit" { "It was sent" }
                        }
                        form.inline method="post" action=(format!("/hub/sends/{}/resolve", encode(&s.idempotency_key)))
                            data-confirm="Send this step again (the relay's log shows it did not go out)?" {
                            (form_fields(&user, &here)) input type="hidden" name="outcome" value="resend";
                            button.small type="submit" { "Send again" }
                        }
                    } }
                } } }
            }
            @if let Some(next) = &list.next {
                p { a href=(format!("{here}{}after={}", if here.contains('?') { "&" } else { "?" }, encode(next))) { "Next page →" } }
            }
        }
    };
    Ok(page(
        &flash,
        layout("Send history", Some(&user), Some(&flash), body),
    ))
}

pub async fn resolve(
    State(state): State<HubState>,
    Path(key): Path<String>,
    posted: Posted,
) -> Response {
    let to = back(&posted.form, "/hub/sends");
    let outcome = posted.form.get("outcome").unwrap_or_default().to_owned();
    let req = ResolveSend {
        outcome: outcome.clone(),
        note: Some("settled from the Hub".into()),
    };
    match api_sends::resolve(
        State(state.api.clone()),
        posted.user.auth.clone(),
        ApiPath(key.clone()),
        ApiJson(req),
    )
    .await
    {
        Ok(_) => done(&to, true, &format!("{key} settled: {outcome}.")),
        Err(e) => refused(&to, e.into()),
    }
}

// ---------------------------------------------------------------- outbox

pub async fn outbox(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
) -> HubResult<Response> {
    let list = api_outbox::list(
        State(state.api.clone()),
        user.auth.clone(),
        ApiQuery(Page { limit: Some(200) }),
    )
    .await?
    .0;
    let body = html! {
        h1 { "Dev outbox" }
        p.muted { "With no SMTP relay configured (" code { "PULSE_SMTP_URL" } " unset), Pulse captures mail here instead of sending it. Newest first." }
        @if list.messages.is_empty() {
            p.empty { "No captured mail. Either nothing was sent yet, or Pulse sends through a relay." }
        }
        @for m in &list.messages {
            article.mail {
                header {
                    h2 { (m.subject) }
                    p { "To " strong { (m.rcpt_to) } " from " (m.mail_from) " · " (when(&m.accepted_at)) }
                    p.muted { "Message-ID " code { (m.message_id) } }
                }
                pre.body { (m.body) }
            }
        }
    };
    Ok(page(
        &flash,
        layout("Dev outbox", Some(&user), Some(&flash), body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edit_form_becomes_the_api_request_in_position_order() {
        let id = Uuid::new_v4();
        let body = format!(
            "name=N&sender=a%40b.co&step_id={id}&step_order=2&step_subject=S1&step_body=B1&step_html=%3Cp%3EHi%3C%2Fp%3E&step_thread=no&step_timing=%7B%22type%22%3A%22immediately%22%7D&step_end=2030-01-01T00%3A00%3A00Z\
             &step_id=&step_order=1&step_subject=&step_body=B&step_html=&step_thread=yes&step_timing=%7B%22type%22%3A%22delay%22%2C%22delay%22%3A%22P1D%22%7D&step_end=\
             &triggers=&max_sends_per_minute=&end_date=&send_window="
        );
        let req = edit_request(&FormData::parse(body.as_bytes())).unwrap();
        let steps = req.steps.unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[0].subject, "",
            "a threaded step may leave its subject empty"
        );
        assert!(steps[0].thread && steps[0].html.is_none());
        assert_eq!(steps[0].id, None);
        assert!(!steps[1].thread);
        assert_eq!(steps[1].html.as_deref(), Some("<p>Hi</p>"));
        assert_eq!(steps[1].id, Some(id));
        assert!(
            steps[1].end_date.is_some(),
            "a step's end date survives the edit"
        );
        assert_eq!(steps[0].end_date, None);
        assert_eq!(req.max_sends_per_minute, Some(None));
        assert_eq!(req.triggers, Some(vec![]));
    }

    #[test]
    fn a_bad_timing_names_its_step() {
        let body = "step_id=&step_order=1&step_subject=S&step_body=B&step_html=&step_thread=no&step_timing=nope&step_end=";
        let err = edit_request(&FormData::parse(body.as_bytes())).unwrap_err();
        assert!(err.to_string().contains("step 1 timing"), "{err}");
    }

    #[test]
    fn next_and_return_paths_stay_in_the_hub() {
        assert_eq!(safe_next(Some("/hub/sends?x=1")), "/hub/sends?x=1");
        assert_eq!(safe_next(Some("https://evil.example/")), "/hub/sequences");
        assert_eq!(safe_next(Some("/hub//evil.example")), "/hub/sequences");
        assert_eq!(safe_next(None), "/hub/sequences");
    }
}
