//! One sequence's actions from its page: pause, resume (after its preview), delete (after its
//! confirmation) and re-enroll. Each calls the api's plain function with the signed-in
//! operator's `Auth` and reports the answer back on the page it came from.

use super::*;

pub async fn pause(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let to = back(&posted.form, "/hub/sequences");
    let result = async {
        let id = uuid(&id, "sequence")?;
        let api = &state.api;
        Ok(control::pause(api, &posted.user.auth, id).await?)
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
    let preview = control::resume_preview(&state.api, &user.auth, id).await?;
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
        (timeline(&preview))
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
        let api = &state.api;
        Ok(control::resume(api, &posted.user.auth, id).await?)
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
        let api = &state.api;
        Ok(control::delete(api, &posted.user.auth, id).await?)
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
        Ok::<_, HubError>(control::reenroll(&state.api, &posted.user.auth, id, req).await?)
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

/// When the held steps would go out after a resume now: sends (and skips) in 24 equal slices
/// from now to the last one.
fn timeline(preview: &pulse_shared::model::ResumePreview) -> Markup {
    let at = |i: &pulse_shared::model::ResumeItem| i.send_at.unwrap_or(preview.as_of);
    let Some(last) = preview.items.iter().map(at).max() else {
        return html! {};
    };
    const SLICES: i64 = 24;
    let span = (last - preview.as_of).num_seconds().max(SLICES);
    let width = (span + SLICES - 1) / SLICES;
    let mut values = vec![vec![0i64; 2]; SLICES as usize];
    for item in &preview.items {
        let slice = ((at(item) - preview.as_of).num_seconds().max(0) / width).min(SLICES - 1);
        let kind = usize::from(item.outcome != "send");
        values[slice as usize][kind] += 1;
    }
    let labels: Vec<String> = (0..SLICES)
        .map(|i| {
            (preview.as_of + chrono::Duration::seconds(i * width))
                .format("%m-%d %H:%M")
                .to_string()
        })
        .collect();
    let series = [
        super::super::charts::Series {
            name: "sent",
            class: "s-sent",
        },
        super::super::charts::Series {
            name: "skipped",
            class: "s-held",
        },
    ];
    super::super::charts::stacked_bars(
        "resume",
        "When the held steps would go out (UTC)",
        &labels,
        &series,
        &values,
    )
}
