//! The Hub's "New sequence" and "Edit" pages: the editor ([`super::editor`]) in a form, and what
//! its buttons do. "Save" is the API's create or edit; "Preview changes" is the API's edit
//! preview, shown above the same form, still editable; the editor's own buttons rearrange the
//! draft and show it again. Nothing here decides what a sequence may be: a refusal is the API's,
//! shown next to the field it names.

use axum::http::StatusCode;
use pulse_shared::model::{EditPreview, Mailbox, PreviewRuns, SenderIdentity, StepInput};

use super::{
    editor::{Draft, Errors, fields},
    *,
};
use crate::{
    edit_preview,
    render_preview::{RenderPreview, render_draft},
};

// ---------------------------------------------------------------- new

pub async fn new_form(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
) -> HubResult<Response> {
    let mailboxes = mailboxes(&state, &user).await?;
    let blank = Draft::blank();
    let shown = new_page(
        &user,
        Some(&flash),
        &mailboxes,
        &blank,
        &Errors::default(),
        None,
    );
    Ok(page(&flash, shown))
}

/// The workspace's mailboxes, offered as senders.
async fn mailboxes(state: &HubState, user: &HubUser) -> HubResult<Vec<Mailbox>> {
    Ok(crate::mailboxes::list(&state.api, &user.auth)
        .await?
        .mailboxes)
}

fn new_page(
    user: &HubUser,
    flash: Option<&Flash>,
    mailboxes: &[Mailbox],
    draft: &Draft,
    errors: &Errors,
    messages: Option<&RenderPreview>,
) -> Markup {
    let body = html! {
        p.crumbs { a href="/hub/sequences" { "Sequences" } " / new" }
        h1 { "New sequence" }
        p.muted { "It starts active: leads enroll as soon as a trigger matches. Enroll a lead over the API or "
            code { "pulse" } " to try it." }
        @if let Some(m) = messages { (messages_section(m)) }
        form.edit method="post" action="/hub/sequences/new" novalidate {
            (form_fields(user, "/hub/sequences/new"))
            (fields(draft, errors, mailboxes))
            div.form-actions {
                button.primary type="submit" name="do" value="save" { "Create sequence" }
                " " a href="/hub/sequences" { "Cancel" }
            }
        }
    };
    layout("New sequence", Some(user), flash, body)
}

pub async fn create(State(state): State<HubState>, posted: Posted) -> Response {
    let mut draft = Draft::from_form(&posted.form);
    let user = &posted.user;
    let mailboxes = match mailboxes(&state, user).await {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let action = posted.form.raw("do");
    if draft.rearrange(action) {
        let shown = new_page(user, None, &mailboxes, &draft, &Errors::default(), None);
        return page(&Flash(None), shown);
    }
    let draft = draft;
    let show = |errors: &Errors, messages: Option<&RenderPreview>| {
        new_page(user, None, &mailboxes, &draft, errors, messages)
    };
    let built = match draft.to_create() {
        Ok(b) => b,
        Err(errors) => return unprocessable(show(&errors, None)),
    };
    if action == "render" {
        let (sender, steps) = (&built.body.sender, &built.body.steps);
        return match render(&state, user, None, sender, steps, &draft.preview_lead).await {
            Ok(m) => page(&Flash(None), show(&Errors::default(), Some(&m))),
            Err(e) => match render_errors(&e, &built.errors(&e)) {
                Some(errors) => unprocessable(show(&errors, None)),
                None => HubError::Api(e).into_response(),
            },
        };
    }
    match api_sequences::create(&state.api, &user.auth, built.body.clone()).await {
        Ok(created) => {
            let s = created.1;
            done(
                &format!("/hub/sequences/{}", s.id),
                true,
                &format!("Created “{}” with {} steps.", s.name, s.steps.len()),
            )
        }
        Err(e) if is_input(&e) => unprocessable(show(&built.errors(&e), None)),
        Err(e) => HubError::Api(e).into_response(),
    }
}

/// A form shown again with what to fix: 422.
fn unprocessable(markup: Markup) -> Response {
    let mut resp = page(&Flash(None), markup);
    *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    resp
}

// ---------------------------------------------------------------- edit

pub async fn edit_form(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
    Path(id): Path<String>,
) -> HubResult<Response> {
    let (_, s) = load(&state, &user, &id).await?;
    let mailboxes = mailboxes(&state, &user).await?;
    let draft = Draft::from_sequence(&s);
    let frame = Frame {
        user: &user,
        mailboxes: &mailboxes,
        sequence: &s,
    };
    let shown = edit_page(
        &frame,
        Some(&flash),
        &draft,
        &Errors::default(),
        Shown::Nothing,
    );
    Ok(page(&flash, shown))
}

/// What every rendering of one sequence's edit page shares.
struct Frame<'a> {
    user: &'a HubUser,
    mailboxes: &'a [Mailbox],
    sequence: &'a Sequence,
}

fn edit_page(
    frame: &Frame<'_>,
    flash: Option<&Flash>,
    draft: &Draft,
    errors: &Errors,
    shown: Shown<'_>,
) -> Markup {
    let Frame {
        user,
        mailboxes,
        sequence: s,
    } = *frame;
    let id = s.id;
    let here = format!("/hub/sequences/{id}");
    let action = format!("/hub/sequences/{id}/edit");
    let body = html! {
        (crumbs(s, "edit"))
        h1 { "Edit “" (s.name) "”" }
        aside.guidance {
            h2 { "Before you edit" }
            @if s.status == SequenceStatus::Active {
                p.warn { "This sequence is active. Pause it first if the change is more than a rename or a copy fix." }
                form.inline method="post" action=(format!("/hub/sequences/{id}/pause")) {
                    (form_fields(user, &action))
                    button type="submit" { "Pause it now" }
                }
            }
            p { strong { "Safe while active: " } "renaming the sequence; editing the copy of a step no lead has reached yet." }
            p { strong { "Pause first for: " } "changing a step's timing, reordering or deleting steps, adding steps, changing the triggers." }
            p { "Only sends not yet queued pick up new content. Anything already sent stays sent, and a step due within the next minutes may already be queued with the old content. "
                strong { "Preview changes" } " shows exactly which, before you save." }
        }
        @match shown {
            Shown::Effects(p) => { (preview_section(p)) }
            Shown::Messages(m) => { (messages_section(m)) }
            Shown::Nothing => {}
        }
        form.edit method="post" action=(action) novalidate {
            (form_fields(user, &here))
            (fields(draft, errors, mailboxes))
            div.form-actions {
                button type="submit" name="do" value="preview" { "Preview changes" }
                " "
                button.primary type="submit" name="do" value="save" { "Save changes" }
                " " a href=(here) { "Cancel" }
            }
        }
    };
    layout("Edit sequence", Some(user), flash, body)
}

/// What the edit would do to the enrollments in flight, from the API's edit preview.
fn preview_section(p: &EditPreview) -> Markup {
    let untouched = p.new_content == 0
        && p.queued_with_old_content.count == 0
        && p.retimed.count == 0
        && p.skipped.count == 0
        && p.ended.count == 0;
    html! {
        section.preview #preview aria-labelledby="preview-title" {
            h2 #preview-title { "What saving this would do (as of " (when(&p.as_of)) ")" }
            p.muted { "Nothing has been saved yet." }
            @if untouched {
                p data-preview="none" { "No enrollment in flight is affected." }
            }
            @if p.new_content > 0 {
                p data-preview="new-content" { strong { (p.new_content) } " active enrollments will get the new content of step"
                    @if p.changed_steps.len() > 1 { "s" } " "
                    (p.changed_steps.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")) "." }
            }
            @if p.queued_with_old_content.count > 0 {
                p.warn data-preview="queued" { strong { (p.queued_with_old_content.count) }
                    " sends are already queued and go out with the old content." }
                (runs_table(&p.queued_with_old_content, false))
            }
            @if p.retimed.count > 0 {
                p data-preview="retimed" { strong { (p.retimed.count) } " waiting steps move to a new time:" }
                (runs_table(&p.retimed, true))
            }
            @if p.skipped.count > 0 {
                p.warn data-preview="skipped" { strong { (p.skipped.count) } " waiting steps would not be sent:" }
                (runs_table(&p.skipped, false))
            }
            @if p.ended.count > 0 {
                p.warn data-preview="ended" { strong { (p.ended.count) } " enrollments would end:" }
                table.list { thead { tr { th { "Lead" } th { "Status" } th { "Why" } } }
                    tbody { @for e in p.ended.items.iter().take(PREVIEW_ROWS) { tr {
                        td { (e.lead_email) } td { (status_badge(&e.status)) } td { (e.reason.clone().unwrap_or_default()) }
                    } } }
                }
                (more(p.ended.count, p.ended.items.len().min(PREVIEW_ROWS)))
            }
            @if !p.warnings.is_empty() {
                ul.warnings { @for w in &p.warnings { li { (w) } } }
            }
        }
    }
}

/// How many rows of each list the preview shows.
const PREVIEW_ROWS: usize = 20;

fn runs_table(runs: &PreviewRuns, retimed: bool) -> Markup {
    html! {
        table.list {
            thead { tr { th { "Lead" } th { "Step" } th { "Due" } @if retimed { th { "Would be due" } } @else { th { "Why" } } } }
            tbody { @for r in runs.items.iter().take(PREVIEW_ROWS) { tr {
                td { (r.lead_email) } td.num { (r.step_position) } td { (when(&r.due_at)) }
                @if retimed { td { (when_opt(&r.new_due_at)) } } @else { td { (r.reason.clone().unwrap_or_default()) } }
            } } }
        }
        (more(runs.count, runs.items.len().min(PREVIEW_ROWS)))
    }
}

fn more(count: i64, shown: usize) -> Markup {
    html! { @if count > shown as i64 { p.muted { "… and " (count - shown as i64) " more." } } }
}

pub async fn edit(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let result = async {
        let (_, s) = load(&state, &posted.user, &id).await?;
        Ok::<_, HubError>((s, mailboxes(&state, &posted.user).await?))
    }
    .await;
    let (s, mailboxes) = match result {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let user = &posted.user;
    let mut draft = Draft::from_form(&posted.form);
    let action = posted.form.raw("do");
    let frame = Frame {
        user,
        mailboxes: &mailboxes,
        sequence: &s,
    };
    let show = |draft: &Draft, errors: &Errors, shown: Shown<'_>| {
        edit_page(&frame, None, draft, errors, shown)
    };
    let nothing = || Shown::Nothing;
    if draft.rearrange(action) {
        return page(&Flash(None), show(&draft, &Errors::default(), nothing()));
    }
    let built = match draft.to_edit() {
        Ok(b) => b,
        Err(errors) => return unprocessable(show(&draft, &errors, nothing())),
    };
    if action == "preview" {
        return match edit_preview::preview(&state.api, &user.auth, s.id, built.body.clone()).await {
            Ok(p) => page(
                &Flash(None),
                show(&draft, &Errors::default(), Shown::Effects(&p)),
            ),
            Err(e) if is_input(&e) => unprocessable(show(&draft, &built.errors(&e), nothing())),
            Err(e) => HubError::Api(e).into_response(),
        };
    }
    if action == "render" {
        let sender = built
            .body
            .sender
            .clone()
            .unwrap_or_else(|| s.sender.clone());
        let steps = built.body.steps.clone().unwrap_or_default();
        let lead = &draft.preview_lead;
        return match render(&state, user, Some(s.id), &sender, &steps, lead).await {
            Ok(m) => page(
                &Flash(None),
                show(&draft, &Errors::default(), Shown::Messages(&m)),
            ),
            Err(e) => match render_errors(&e, &built.errors(&e)) {
                Some(errors) => unprocessable(show(&draft, &errors, nothing())),
                None => HubError::Api(e).into_response(),
            },
        };
    }
    match api_edit::edit(&state.api, &user.auth, s.id, built.body.clone()).await {
        Ok(change) => reported(&format!("/hub/sequences/{}", s.id), Ok(change), |s| {
            format!("Saved as version {}.", s.version)
        }),
        Err(e) if is_input(&e) => unprocessable(show(&draft, &built.errors(&e), nothing())),
        Err(e) => HubError::Api(e).into_response(),
    }
}

/// A refusal the operator can fix in the form (as opposed to a missing sequence or a failure).
fn is_input(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Malformed { .. } | ApiError::Invalid(_) | ApiError::Conflict(_)
    )
}

/// What the edit page shows above its form.
enum Shown<'a> {
    Nothing,
    /// What saving would do to the enrollments in flight.
    Effects(&'a EditPreview),
    /// The draft's steps rendered for a lead.
    Messages(&'a RenderPreview),
}

/// Renders the draft's steps for `lead` (an enrolled lead's address; empty: a sample lead).
async fn render(
    state: &HubState,
    user: &HubUser,
    sequence: Option<Uuid>,
    sender: &SenderIdentity,
    steps: &[StepInput],
    lead: &str,
) -> Result<RenderPreview, ApiError> {
    let lead = Some(lead.trim()).filter(|l| !l.is_empty());
    render_draft(
        &state.api,
        &user.auth,
        sequence,
        sender,
        steps,
        (lead, None),
    )
    .await
}

/// Where a render refusal shows: an unknown lead under the lead's field, the rest where the
/// editor places them; `None` for a failure that is not the operator's to fix.
fn render_errors(e: &ApiError, placed: &Errors) -> Option<Errors> {
    match e {
        ApiError::NotFound("lead") => Some(Errors::field(
            "preview_lead",
            "no lead of this workspace has that address",
        )),
        e if is_input(e) => Some(Errors {
            fields: placed.fields.clone(),
            general: placed.general.clone(),
        }),
        _ => None,
    }
}

/// The draft's messages as a lead would get them: subject, headers, text, and the HTML source.
fn messages_section(m: &RenderPreview) -> Markup {
    html! {
        section.preview #messages aria-labelledby="messages-title" {
            h2 #messages-title { "The messages for " (m.lead.email)
                @if m.lead_id.is_none() { " (sample values)" } }
            p.muted { "Rendered as the scheduler renders them when a step is queued. Nothing is saved or sent." }
            @for step in &m.steps {
                article.mail data-step=(step.position) {
                    h3 { "Step " (step.position) }
                    @if let Some(e) = &step.error {
                        p.field-error role="alert" { "This step cannot be sent to this lead: " (e) }
                    } @else {
                        table.headers { tbody { @for h in &step.headers { tr { th { (h.name) } td { (h.value) } } } } }
                        pre.body { (step.text.clone().unwrap_or_default()) }
                        @if let Some(html) = &step.html {
                            details { summary { "HTML part (source)" } pre.body { (html) } }
                        }
                    }
                }
            }
        }
    }
}
