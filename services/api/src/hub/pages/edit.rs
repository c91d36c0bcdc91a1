//! Editing a sequence in the Hub: the form (steps as rows, timing and settings in words) and
//! the `PATCH` it becomes, through the API's one edit path.

use super::*;
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
            // Saving an edit made from an older version is refused: someone changed it meanwhile.
            input type="hidden" name="version" value=(s.version);
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
                        label { "Skip when later than (ISO-8601 duration after it came due, e.g. P2D; empty: never)" input name="step_lateness" value=(step.max_lateness.clone().unwrap_or_default()); }
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
                    label { "Skip when later than (ISO-8601 duration after it came due, e.g. P2D; empty: never)" input name="step_lateness" value=""; }
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
    let lateness = form.all("step_lateness");
    let deleted = form.all("step_delete");
    if [
        orders.len(),
        subjects.len(),
        bodies.len(),
        htmls.len(),
        threads.len(),
        timings.len(),
        ends.len(),
        lateness.len(),
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
                max_lateness: Some(lateness[i].trim())
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
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
        // Limits are edited over the API; the form keeps them.
        limits: None,
        guardrails: None,
        priority: None,
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
        version: opt("version").and_then(|v| v.parse().ok()),
        ..Default::default()
    })
}

pub async fn edit(
    State(state): State<HubState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let result = async {
        let id = uuid(&id, "sequence")?;
        let req = edit_request(&posted.form)?;
        let api = &state.api;
        Ok(api_edit::edit(api, &posted.user.auth, id, req).await?)
    }
    .await;
    let to = match &result {
        Ok(change) => format!("/hub/sequences/{}", change.sequence.id),
        Err(_) => format!("/hub/sequences/{id}/edit"),
    };
    reported(&to, result, |s| format!("Saved as version {}.", s.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edit_form_becomes_the_api_request_in_position_order() {
        let id = Uuid::new_v4();
        let body = format!(
            "name=N&sender=a%40b.co&step_id={id}&step_order=2&step_subject=S1&step_body=B1&step_html=%3Cp%3EHi%3C%2Fp%3E&step_thread=no&step_timing=%7B%22type%22%3A%22immediately%22%7D&step_end=2030-01-01T00%3A00%3A00Z&step_lateness=P2D\
             &step_id=&step_order=1&step_subject=&step_body=B&step_html=&step_thread=yes&step_timing=%7B%22type%22%3A%22delay%22%2C%22delay%22%3A%22P1D%22%7D&step_end=&step_lateness=\
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
        assert_eq!(steps[1].max_lateness.as_deref(), Some("P2D"));
        assert_eq!(steps[0].max_lateness, None);
        assert_eq!(req.max_sends_per_minute, Some(None));
        assert_eq!(req.triggers, Some(vec![]));
    }

    #[test]
    fn a_bad_timing_names_its_step() {
        let body = "step_id=&step_order=1&step_subject=S&step_body=B&step_html=&step_thread=no&step_timing=nope&step_end=&step_lateness=";
        let err = edit_request(&FormData::parse(body.as_bytes())).unwrap_err();
        assert!(err.to_string().contains("step 1 timing"), "{err}");
    }
}
