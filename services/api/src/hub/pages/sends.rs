//! What went out, in the Hub: the send history, settling an UNKNOWN send, and the dev outbox.

use super::*;
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
    let list = api_sends::search(&state.api, &user.auth, filter).await?;
    let names: std::collections::HashMap<Uuid, String> =
        api_sequences::list(&state.api, &user.auth, Default::default())
            .await?
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
    match api_sends::resolve(&state.api, &posted.user.auth, key.clone(), req).await {
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
    let list = api_outbox::list(&state.api, &user.auth, Page { limit: Some(200) }).await?;
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
