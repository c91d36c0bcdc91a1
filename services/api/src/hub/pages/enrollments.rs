//! A sequence's enrollments in the Hub: the filtered list, and cancelling one or many.

use super::*;
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
            @if st.state == StepRunState::Scheduled {
                " due " (when(&st.due_at))
                @if let Some(n) = &st.note { " — waiting: " span.muted { (n) } }
            } @else if let Some(n) = &st.note { " — " span.muted { (n) } }
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
    let list = api_enrollments::list(&state.api, &user.auth, id, filter).await?;
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
    Ok(control::cancel(&state.api, &user.auth, id, Some(body)).await?)
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
        let api = &state.api;
        Ok(control::cancel_many(api, &posted.user.auth, sequence, req).await?)
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
