//! The editor as HTML: every control labelled, a field's error right under it and tied to it
//! for screen readers, the card buttons as submit buttons.

use maud::{Markup, html};

use pulse_shared::model::Mailbox;

use super::{DAYS, Draft, DraftStep, Errors, UNITS};

/// A field's error, when it has one, right under it (and tied to it for screen readers).
fn error_for(errors: &Errors, key: &str) -> Markup {
    html! {
        @if let Some(m) = errors.at(key) {
            p.field-error id=(format!("err-{}", key.replace(':', "-"))) role="alert" { (m) }
        }
    }
}

fn described(errors: &Errors, key: &str) -> Option<String> {
    errors
        .at(key)
        .map(|_| format!("err-{}", key.replace(':', "-")))
}

/// Periods a limit row offers: (ISO-8601, in words).
const PERIODS: [(&str, &str); 4] = [
    ("PT1M", "a minute"),
    ("PT1H", "an hour"),
    ("P1D", "a day (midnight to midnight, in the time zone)"),
    ("P7D", "7 days (sliding)"),
];

/// The editor's fields (the caller wraps them in its form, with its own buttons). `mailboxes`
/// are the workspace's, offered as senders.
pub fn fields(d: &Draft, errors: &Errors, mailboxes: &[Mailbox]) -> Markup {
    html! {
        @if !errors.general.is_empty() {
            div.flash.error role="alert" { @for g in &errors.general { p { (g) } } }
        }
        @if let Some(v) = d.version { input type="hidden" name="version" value=(v); }
        label for="name" { "Name" }
        input #name name="name" value=(d.name) required maxlength="200" aria-describedby=[described(errors, "name")];
        (error_for(errors, "name"))
        label for="sender" { "Sender (Name <address>)" }
        input #sender name="sender" value=(d.sender) aria-describedby=[described(errors, "sender")];
        @if !mailboxes.is_empty() {
            fieldset.window {
                legend { "Or send from these mailboxes, one per lead (ticked mailboxes win over the address above)" }
                @for m in mailboxes {
                    @let id = m.id.to_string();
                    label.check { input type="checkbox" name="mailbox_id" value=(id) checked[d.mailbox_ids.contains(&id)];
                        " " (m.display_name.clone().map(|n| format!("{n} <{}>", m.address)).unwrap_or_else(|| m.address.clone())) }
                }
            }
        }
        (error_for(errors, "sender"))
        label for="reply_to" { "Reply-To (empty: replies go to the sender)" }
        input #reply_to name="reply_to" value=(d.reply_to);
        label for="timezone" { "Time zone" }
        input #timezone name="timezone" value=(d.timezone) list="zones" autocomplete="off" aria-describedby=[described(errors, "timezone")];
        datalist #zones { @for z in chrono_tz::TZ_VARIANTS.iter() { option value=(z.name()) {} } }
        (error_for(errors, "timezone"))
        fieldset.window {
            legend { "Send window (no day ticked: any time)" }
            @for (value, label) in DAYS {
                label.check { input type="checkbox" name="window_day" value=(value) checked[d.window_days.iter().any(|x| x == value)]; " " (label) }
            }
            label { "from " input type="time" name="window_start" value=(d.window_start); }
            label { " to " input type="time" name="window_end" value=(d.window_end); }
            (error_for(errors, "send_window"))
        }
        label for="max_sends_per_minute" { "Most sends per minute (empty: no limit)" }
        input #max_sends_per_minute name="max_sends_per_minute" inputmode="numeric" value=(d.rate) aria-describedby=[described(errors, "max_sends_per_minute")];
        (error_for(errors, "max_sends_per_minute"))
        fieldset.limits {
            legend { "Sending limits (besides the rate; mailbox, domain and workspace limits still apply)" }
            @for l in &d.limits {
                div.trigger-row {
                    label { "At most " input name="limit_max" inputmode="numeric" size="7" value=(l.max); }
                    label { " sends per "
                        select name="limit_per" {
                            @if !PERIODS.iter().any(|(p, _)| *p == l.per) { option value=(l.per) selected { (l.per) } }
                            @for (p, words) in PERIODS { option value=(p) selected[l.per == p] { (words) } }
                        }
                    }
                }
            }
            (error_for(errors, "limits"))
            button type="submit" name="do" value="add_limit" formnovalidate { "Add a limit" }
        }
        label for="exit_on_reply" { "A lead's reply ends" }
        select #exit_on_reply name="exit_on_reply" {
            @for (value, label) in [("enrollment", "this enrollment"), ("all_sequences", "every enrollment of the lead"), ("none", "nothing (keep sending)")] {
                option value=(value) selected[d.exit_on_reply == value] { (label) }
            }
        }
        label for="end_date" { "End date (RFC 3339, e.g. 2030-01-31T18:00:00Z; empty: none)" }
        input #end_date name="end_date" value=(d.end_date) aria-describedby=[described(errors, "end_date")];
        (error_for(errors, "end_date"))
        fieldset.steps {
            legend { "Steps, in order" }
            (error_for(errors, "steps"))
            ol.step-cards {
                @for (i, step) in d.steps.iter().enumerate() {
                    (card(d, i, step, errors))
                }
            }
            button type="submit" name="do" value="add" formnovalidate { "Add a step" }
        }
        fieldset.triggers {
            legend { "Triggers: a lead enrolls when…" }
            @for t in &d.triggers {
                div.trigger-row {
                    label { "Kind "
                        select name="trigger_kind" {
                            @for (value, label) in [("tag_applied", "a tag is applied"), ("list_added", "it is added to a list"), ("lead_score", "its lead score reaches"), ("lead_score_level", "any score event at or above")] {
                                option value=(value) selected[t.kind == value] { (label) }
                            }
                        }
                    }
                    label { " Tag, list or score " input name="trigger_value" value=(t.value); }
                }
            }
            (error_for(errors, "triggers"))
            button type="submit" name="do" value="add_trigger" formnovalidate { "Add a trigger" }
        }
        fieldset.render {
            legend { "See the messages" }
            label for="preview_lead" { "Render for (an enrolled lead's address; empty: a sample lead)" }
            input #preview_lead name="preview_lead" type="email" value=(d.preview_lead) aria-describedby=[described(errors, "preview_lead")];
            (error_for(errors, "preview_lead"))
            button type="submit" name="do" value="render" { "Preview the messages" }
        }
    }
}

fn card(d: &Draft, i: usize, step: &DraftStep, errors: &Errors) -> Markup {
    let key = format!("step:{i}");
    let first = i == 0;
    html! {
        li.step-card draggable="true" aria-describedby=[described(errors, &key)] {
            h3 { span.step-number { "Step " (i + 1) } @if step.id.is_empty() { " (new)" } }
            input type="hidden" name="step_id" value=(step.id);
            (error_for(errors, &key))
            label { "Subject" input name="step_subject" value=(step.subject); }
            label { "Body (text)" textarea name="step_body" rows="4" { (step.body) } }
            label { "HTML (empty: text only)" textarea name="step_html" rows="3" { (step.html) } }
            label { "Send as"
                select name="step_thread" {
                    option value="no" selected[!step.thread] { "a new message" }
                    option value="yes" selected[step.thread] { "a reply in the lead's thread (Re:)" }
                }
            }
            div.timing {
                label { "Send "
                    select name="step_when" {
                        option value="immediately" selected[step.when == "immediately"] {
                            @if first { "at enrollment" } @else { "right after the previous step" }
                        }
                        option value="after" selected[step.when == "after"] { "after a wait" }
                        option value="on" selected[step.when == "on"] { "on a date" }
                    }
                }
                label { " wait " input name="step_after_n" inputmode="numeric" size="4" value=(step.after_n); }
                label { " unit "
                    select name="step_after_unit" {
                        @for (unit, _, _) in UNITS {
                            option value=(unit) selected[step.after_unit == unit] { (unit) }
                        }
                    }
                }
                span.muted { @if first { " after enrollment" } @else { " after the previous step" } }
                label { " date and time (" (d.timezone) ") " input type="datetime-local" name="step_on" value=(step.on); }
            }
            label { "End date (RFC 3339, empty: none)" input name="step_end" value=(step.end); }
            label { "Skip when later than (ISO-8601 duration after it came due, e.g. P2D; empty: never)" input name="step_lateness" value=(step.lateness); }
            div.card-actions {
                button type="submit" name="do" value=(format!("up:{i}")) disabled[first] formnovalidate aria-label=(format!("Move step {} up", i + 1)) { "↑ Move up" }
                " "
                button type="submit" name="do" value=(format!("down:{i}")) disabled[i + 1 == d.steps.len()] formnovalidate aria-label=(format!("Move step {} down", i + 1)) { "↓ Move down" }
                " "
                @if step.id.is_empty() {
                    button type="submit" name="do" value=(format!("remove:{i}")) formnovalidate { "Remove" }
                } @else {
                    label.check { input type="checkbox" name="step_delete" value=(step.id) checked[step.delete]; " Delete this step" }
                }
            }
        }
    }
}
