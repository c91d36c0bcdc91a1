//! How `pulse …` prints the API's answers: a table or a line per operator command (`--json`
//! prints the API's JSON instead). Formatting only; it never calls the API.

use serde_json::Value;

use super::{Enrollments, Events, Mailboxes, Request, Sequences, times::Times};

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    let empty = rows.is_empty();
    out.extend(rows.into_iter().map(line));
    if empty {
        out.push("(none)".into());
    }
    out.join("\n")
}

fn warnings(v: &Value) -> String {
    v["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| format!("\nwarning: {}", s(w)))
        .collect()
}

fn sequence_line(seq: &Value) -> String {
    format!(
        "{} {} is {} (version {})",
        s(&seq["id"]),
        s(&seq["name"]),
        s(&seq["status"]),
        s(&seq["version"])
    )
}

/// The hint for the next page, when there is one.
fn more(v: &Value) -> String {
    match v["next"].as_str() {
        Some(next) => format!("\nmore: --after {next}"),
        None => String::new(),
    }
}

pub(super) fn render(request: &Request, v: &Value, times: &Times) -> String {
    let items = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let t = |v: &Value| times.show(v);
    match request {
        Request::Sequences(Sequences::List { .. }) => {
            let rows = table(
                &["ID", "NAME", "STATUS", "STEPS", "VERSION"],
                items("sequences")
                    .iter()
                    .map(|q| {
                        vec![
                            s(&q["id"]),
                            s(&q["name"]),
                            s(&q["status"]),
                            q["steps"].as_array().map_or(0, Vec::len).to_string(),
                            s(&q["version"]),
                        ]
                    })
                    .collect(),
            );
            format!("{rows}{}", more(v))
        }
        Request::Sequences(Sequences::Show { .. }) => {
            let steps = table(
                &["#", "TIMING", "SUBJECT"],
                v["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|st| {
                        let t = &st["timing"];
                        let timing = match t["type"].as_str() {
                            Some("delay") => format!("delay {}", s(&t["delay"])),
                            Some("on_date") => format!("on {}", times.show(&t["at"])),
                            other => other.unwrap_or("-").to_owned(),
                        };
                        vec![s(&st["position"]), timing, s(&st["subject"])]
                    })
                    .collect(),
            );
            let shows_link = v["steps"].as_array().into_iter().flatten().any(|st| {
                [&st["body"], &st["html"]]
                    .iter()
                    .any(|t| t.as_str().is_some_and(|t| t.contains("unsubscribe_url")))
            });
            let note = if shows_link {
                ""
            } else {
                "\nnote: no step shows {{ unsubscribe_url }} (the List-Unsubscribe header still does)"
            };
            format!(
                "{}\nsender {}  timezone {}{note}\n\n{steps}",
                sequence_line(v),
                match v["sender"]["mailbox_ids"].as_array() {
                    Some(ids) => format!("{} mailboxes, one per lead", ids.len()),
                    None => s(&v["sender"]["from"]),
                },
                s(&v["timezone"])
            )
        }
        Request::Sequences(
            Sequences::Pause { .. } | Sequences::Resume { .. } | Sequences::Delete { .. },
        ) => format!("{}{}", sequence_line(&v["sequence"]), warnings(v)),
        Request::Sequences(Sequences::Create { .. }) => {
            format!("{}{}", sequence_line(v), warnings(v))
        }
        Request::Mailboxes(Mailboxes::List) => table(
            &["ID", "ADDRESS", "NAME", "RELAY", "DKIM"],
            items("mailboxes")
                .iter()
                .map(|m| {
                    let relay = match m["smtp_url"].as_str() {
                        Some(url) if m["has_smtp_password"] == true => {
                            format!("{url} (password set)")
                        }
                        Some(url) => url.to_owned(),
                        None => "global".into(),
                    };
                    vec![
                        s(&m["id"]),
                        s(&m["address"]),
                        s(&m["display_name"]),
                        relay,
                        s(&m["dkim_selector"]),
                    ]
                })
                .collect(),
        ),
        Request::Mailboxes(Mailboxes::Add { .. }) => {
            format!("mailbox {} added: {}", s(&v["id"]), s(&v["address"]))
        }
        Request::Mailboxes(Mailboxes::Rm { id }) => format!("mailbox {id} deleted"),
        // Printed by `suppressions::run`, `inbound::run` and `steps::run` themselves.
        Request::Suppressions(_)
        | Request::Inbound(_)
        | Request::Keys(_)
        | Request::Admin(_)
        | Request::Steps(_)
        | Request::Sequences(Sequences::Apply { .. }) => String::new(),
        Request::Enrollments(Enrollments::List { .. }) => {
            let mut out = table(
                &[
                    "ID",
                    "LEAD",
                    "GEN",
                    "STATUS",
                    "STEP",
                    "NEXT DUE",
                    "STEPS",
                    "ENDED BECAUSE",
                ],
                items("enrollments")
                    .iter()
                    .map(|e| {
                        let steps: Vec<String> = e["steps"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|st| format!("{}:{}", s(&st["position"]), s(&st["state"])))
                            .collect();
                        vec![
                            s(&e["id"]),
                            s(&e["lead_email"]),
                            s(&e["generation"]),
                            s(&e["status"]),
                            s(&e["current_step"]),
                            t(&e["next_due_at"]),
                            steps.join(" "),
                            s(&e["end_reason"]),
                        ]
                    })
                    .collect(),
            );
            out.push_str(&more(v));
            out
        }
        Request::Enrollments(Enrollments::Cancel { .. }) => {
            format!(
                "{} ({}) is {}: {}",
                s(&v["id"]),
                s(&v["lead_email"]),
                s(&v["status"]),
                s(&v["end_reason"])
            )
        }
        Request::Enrollments(Enrollments::CancelMany { .. }) => {
            let mut out = format!(
                "cancelled {}, already ended {}, not found {}",
                s(&v["cancelled"]),
                s(&v["already_ended"]),
                s(&v["not_found"])
            );
            for w in items("warnings") {
                out.push_str(&format!("\nwarning: {}", s(&w)));
            }
            out
        }
        Request::Reenroll(_) => format!(
            "re-enrolled {}, already active {}, never enrolled {}, unknown {}\n\n{}",
            s(&v["reenrolled"]),
            s(&v["already_active"]),
            s(&v["never_enrolled"]),
            s(&v["unknown_lead"]),
            table(
                &["LEAD", "OUTCOME", "ENROLLMENT"],
                items("results")
                    .iter()
                    .map(|r| vec![
                        s(&r["lead_email"]),
                        s(&r["outcome"]),
                        s(&r["enrollment_id"])
                    ])
                    .collect()
            )
        ),
        Request::Sends(f) if f.message_ids => items("sends")
            .iter()
            .map(|x| s(&x["message_id"]))
            .collect::<Vec<_>>()
            .join("\n"),
        Request::Resolve(r) if r.key.is_none() => {
            let mut out = format!(
                "resolved {} as {}; {} still UNKNOWN",
                s(&v["resolved"]),
                s(&v["outcome"]),
                s(&v["remaining"])
            );
            for key in items("keys") {
                out.push_str(&format!("\n{}", s(&key)));
            }
            out
        }
        Request::Sends(_) | Request::Resolve(_) => {
            let mut out = sends_table(&items("sends"), times);
            out.push_str(&more(v));
            out
        }
        Request::Enrollments(Enrollments::Show { .. }) => {
            let e = &v["enrollment"];
            format!(
                "{} {} in sequence {} (generation {}): {}{}, on step {}, next due {}\n\n{}",
                s(&e["id"]),
                s(&e["lead_email"]),
                s(&e["sequence_id"]),
                s(&e["generation"]),
                s(&e["status"]),
                e["end_reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                s(&e["current_step"]),
                t(&e["next_due_at"]),
                sends_table(&items("sends"), times)
            )
        }
        Request::Sequences(Sequences::Stats) => table(
            &[
                "SEQUENCE",
                "STATUS",
                "ENROLLED",
                "ACTIVE",
                "COMPLETED",
                "CANCELLED",
                "REPLIED",
                "BOUNCED",
                "COMPLAINED",
                "SENT TODAY",
            ],
            items("sequences")
                .iter()
                .map(|q| {
                    [
                        "sequence_id",
                        "status",
                        "enrolled",
                        "active",
                        "completed",
                        "cancelled",
                        "replied",
                        "bounced",
                        "complained",
                        "sends_today",
                    ]
                    .iter()
                    .map(|k| s(&q[*k]))
                    .collect()
                })
                .collect(),
        ),
        Request::Sequences(Sequences::Versions { .. }) => table(
            &["VERSION", "BY", "AT", "STEPS"],
            items("versions")
                .iter()
                .map(|x| {
                    vec![
                        s(&x["version"]),
                        s(&x["actor"]),
                        t(&x["created_at"]),
                        x["snapshot"]["steps"]
                            .as_array()
                            .map_or(0, Vec::len)
                            .to_string(),
                    ]
                })
                .collect(),
        ),
        Request::Enroll(_) => format!(
            "{} ({}) is {} in sequence {} (generation {})",
            s(&v["id"]),
            s(&v["lead_email"]),
            s(&v["status"]),
            s(&v["sequence_id"]),
            s(&v["generation"])
        ),
        Request::Outbox { .. } => table(
            &["ACCEPTED AT", "TO", "SUBJECT", "MESSAGE-ID"],
            items("messages")
                .iter()
                .map(|m| {
                    vec![
                        t(&m["accepted_at"]),
                        s(&m["rcpt_to"]),
                        s(&m["subject"]),
                        s(&m["message_id"]),
                    ]
                })
                .collect(),
        ),
        Request::Events(Events::Send { .. }) => table(
            &["EVENT", "STATUS", "ENROLLMENTS", "ERROR"],
            items("results")
                .iter()
                .map(|r| {
                    let enrollments: Vec<String> = r["enrollments"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| format!("{}:{}", s(&e["sequence_id"]), s(&e["outcome"])))
                        .collect();
                    vec![
                        s(&r["event_id"]),
                        s(&r["status"]),
                        enrollments.join(" "),
                        r["error"]["message"]
                            .as_str()
                            .map(|m| format!("{} ({})", m, s(&r["error"]["field"])))
                            .unwrap_or_default(),
                    ]
                })
                .collect(),
        ),
        Request::Audit { .. } => {
            let rows = table(
                &["AT", "ACTOR", "ACTION", "ENROLLMENT"],
                items("events")
                    .iter()
                    .map(|e| {
                        vec![
                            t(&e["at"]),
                            s(&e["actor"]),
                            s(&e["action"]),
                            s(&e["enrollment_id"]),
                        ]
                    })
                    .collect(),
            );
            // Newest first: the next page is older.
            match v["next"].as_i64() {
                Some(next) => format!("{rows}\nmore: --before {next}"),
                None => rows,
            }
        }
        Request::ResumePreview { .. } => format!(
            "resuming now would send {} and skip {} ({} already queued)\n\n{}",
            s(&v["sends"]),
            s(&v["skips"]),
            s(&v["queued"]),
            table(
                &["LEAD", "STEP", "DUE", "OUTCOME", "SENDS AT / REASON"],
                items("items")
                    .iter()
                    .map(|i| vec![
                        s(&i["lead_email"]),
                        s(&i["step_position"]),
                        t(&i["due_at"]),
                        s(&i["outcome"]),
                        if i["send_at"].is_null() {
                            s(&i["reason"])
                        } else {
                            t(&i["send_at"])
                        }
                    ])
                    .collect(),
            )
        ),
    }
}

/// The send-ledger table of `pulse sends` and `pulse enrollments show`.
fn sends_table(sends: &[Value], times: &Times) -> String {
    let t = |v: &Value| times.show(v);
    table(
        &[
            "SENT AT",
            "LEAD",
            "STEP",
            "GEN",
            "STATE",
            "SMTP",
            "MESSAGE-ID",
        ],
        sends
            .iter()
            .map(|x| {
                vec![
                    t(&x["sent_at"]),
                    s(&x["lead_email"]),
                    s(&x["step_position"]),
                    s(&x["generation"]),
                    s(&x["state"]),
                    format!("{} {}", s(&x["smtp_code"]), s(&x["smtp_reply"])),
                    s(&x["message_id"]),
                ]
            })
            .collect(),
    )
}
