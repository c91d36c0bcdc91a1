//! The operator CLI: `pulse sequences …`, `pulse mailboxes …`, `pulse suppressions …`, `pulse enrollments …`, `pulse re-enroll`, `pulse sends`,
//! `pulse resolve`, `pulse audit`, `pulse resume-preview`. A thin client of the HTTP API (the same routes a script
//! would use): base URL from `--url`/`PULSE_URL`, key from `--key`/`PULSE_API_KEY`, the acting
//! user from `$USER` for the audit trail. Human-readable tables by default, `--json` for scripts.
//! A sequence is given by id or exact name, an enrollment by id or by sequence and `--lead`
//! (`names`).
//!
//! Exit codes: 0 done; 1 the API refused the request (4xx, message printed); 2 bad usage;
//! 3 Pulse could not be reached or failed (5xx).

use serde_json::{Value, json};

mod apply;
mod args;
mod inbound;
mod keys;
mod names;
mod render;
mod steps;
mod suppressions;
mod times;
pub use args::*;
pub use inbound::Inbound;
pub use keys::{Admin, Keys, Workspaces};
use render::render;
pub use steps::Steps;
pub use suppressions::Suppressions;

/// A failed command: the message for the operator and the exit code.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// A file of events (JSON or YAML) as `POST /v1/events` takes it: `{"events": [...]}`, or a
/// bare array.
fn events_file(path: &std::path::Path) -> Result<Value, Failure> {
    Ok(match apply::read(path)? {
        Value::Array(events) => json!({ "events": events }),
        other => other,
    })
}

/// A secret from a file, without its final newline.
fn read_secret(path: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| fail(2, format!("cannot read {}: {e}", path.display())))
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `request` with every sequence and enrollment it names replaced by its id (`names`).
async fn with_ids(client: &Client, mut request: Request) -> Result<Request, Failure> {
    match &mut request {
        Request::Sequences(
            Sequences::Show { id }
            | Sequences::Pause { id }
            | Sequences::Resume { id }
            | Sequences::Delete { id, .. },
        ) => *id = names::sequence(client, id).await?,
        Request::Enrollments(
            Enrollments::List { sequence, .. } | Enrollments::CancelMany { sequence, .. },
        )
        | Request::Reenroll(ReenrollArgs { sequence, .. })
        | Request::Enroll(EnrollArgs { sequence, .. })
        | Request::Sequences(Sequences::Versions { id: sequence })
        | Request::Audit { sequence, .. }
        | Request::ResumePreview { sequence } => {
            *sequence = names::sequence(client, sequence).await?
        }
        Request::Enrollments(Enrollments::Cancel {
            enrollment, lead, ..
        }) => {
            *enrollment =
                names::enrollment(client, enrollment, lead.as_deref(), names::Which::Active).await?
        }
        Request::Enrollments(Enrollments::Show { enrollment, lead }) => {
            *enrollment =
                names::enrollment(client, enrollment, lead.as_deref(), names::Which::Latest).await?
        }
        Request::Sends(SendsFilter {
            sequence: Some(sequence),
            ..
        })
        | Request::Resolve(ResolveArgs {
            sequence: Some(sequence),
            ..
        }) => *sequence = names::sequence(client, sequence).await?,
        _ => {}
    }
    Ok(request)
}

/// The sequence whose zone a command's times are shown in, when `--tz` is not given.
fn sequence_of(request: &Request) -> Option<&str> {
    match request {
        Request::Enrollments(Enrollments::List { sequence, .. })
        | Request::Audit { sequence, .. }
        | Request::ResumePreview { sequence }
        | Request::Sequences(
            Sequences::Versions { id: sequence } | Sequences::Show { id: sequence },
        )
        | Request::Sends(SendsFilter {
            sequence: Some(sequence),
            ..
        }) => Some(sequence),
        _ => None,
    }
}

/// How times are shown: `--tz`, else the zone of sequence `sequence` (when given), else local.
async fn times_for(client: &Client, sequence: Option<&str>) -> Result<times::Times, Failure> {
    if let Some(name) = &client.tz {
        return Ok(times::Times::new(Some(times::zone(name)?)));
    }
    let zone = match sequence {
        Some(id) if !client.json => {
            let seq = call(
                client,
                reqwest::Method::GET,
                &format!("/v1/sequences/{}", encode(id)),
                None,
            )
            .await?;
            seq["timezone"].as_str().and_then(|z| times::zone(z).ok())
        }
        _ => None,
    };
    Ok(times::Times::new(zone))
}

/// Runs one operator command; returns what to print.
pub async fn run(client: &Client, request: Request) -> Result<String, Failure> {
    use reqwest::Method;
    let request = with_ids(client, request).await?;
    let times = times_for(client, sequence_of(&request)).await?;
    let (method, path, body) = match &request {
        Request::Enrollments(Enrollments::Show { enrollment, .. }) => {
            let id = encode(enrollment);
            let one = call(client, Method::GET, &format!("/v1/enrollments/{id}"), None).await?;
            let sends = call(
                client,
                Method::GET,
                &format!("/v1/enrollments/{id}/sends"),
                None,
            )
            .await?;
            let value = json!({"enrollment": one, "sends": sends["sends"]});
            if client.json {
                return Ok(serde_json::to_string_pretty(&value).unwrap_or_default());
            }
            let times = times_for(client, value["enrollment"]["sequence_id"].as_str()).await?;
            return Ok(render(&request, &value, &times));
        }
        Request::Sequences(Sequences::Create { file }) => (
            Method::POST,
            "/v1/sequences".to_owned(),
            Some(apply::read(file)?),
        ),
        Request::Sequences(Sequences::Stats) => {
            (Method::GET, "/v1/sequences/stats".to_owned(), None)
        }
        Request::Sequences(Sequences::Versions { id }) => (
            Method::GET,
            format!("/v1/sequences/{}/versions", encode(id)),
            None,
        ),
        Request::Enroll(EnrollArgs {
            sequence,
            lead,
            first_name,
        }) => (
            Method::POST,
            format!("/v1/sequences/{}/enrollments", encode(sequence)),
            Some(json!({"lead": {"email": lead, "first_name": first_name}})),
        ),
        Request::Outbox { limit } => (
            Method::GET,
            format!(
                "/v1/dev/outbox{}",
                query(&[("limit", limit.map(|l| l.to_string()))])
            ),
            None,
        ),
        Request::Events(Events::Send { file }) => (
            Method::POST,
            "/v1/events".to_owned(),
            Some(events_file(file)?),
        ),
        Request::Suppressions(action) => return suppressions::run(client, action).await,
        Request::Steps(action) => return steps::run(client, action).await,
        Request::Sequences(Sequences::Apply { file, yes }) => {
            return apply::run(client, file, *yes).await;
        }
        Request::Inbound(action) => return inbound::run(client, action).await,
        Request::Keys(action) => return keys::run(client, action).await,
        Request::Admin(action) => return keys::run_admin(client, action).await,
        Request::Sequences(Sequences::List { paging }) => (
            Method::GET,
            format!("/v1/sequences{}", query(&paging.pairs())),
            None,
        ),
        Request::Sequences(Sequences::Show { id }) => {
            (Method::GET, format!("/v1/sequences/{}", encode(id)), None)
        }
        Request::Sequences(Sequences::Pause { id }) => (
            Method::POST,
            format!("/v1/sequences/{}/pause", encode(id)),
            None,
        ),
        Request::Sequences(Sequences::Resume { id }) => (
            Method::POST,
            format!("/v1/sequences/{}/resume", encode(id)),
            None,
        ),
        Request::Sequences(Sequences::Delete { id, yes }) => {
            if !yes {
                return Err(fail(
                    2,
                    "deleting a sequence is irreversible (pausing keeps it resumable); pass --yes to delete",
                ));
            }
            (
                Method::DELETE,
                format!("/v1/sequences/{}", encode(id)),
                None,
            )
        }
        Request::Enrollments(Enrollments::List {
            sequence,
            status,
            step,
            lead,
            paging,
        }) => (
            Method::GET,
            format!(
                "/v1/sequences/{}/enrollments{}",
                encode(sequence),
                query(&[
                    ("status", status.clone()),
                    ("step", step.map(|s| s.to_string())),
                    ("lead", lead.clone()),
                    ("limit", paging.limit.map(|l| l.to_string())),
                    ("after", paging.after.clone())
                ])
            ),
            None,
        ),
        Request::Enrollments(Enrollments::Cancel {
            enrollment, reason, ..
        }) => (
            Method::POST,
            format!("/v1/enrollments/{}/cancel", encode(enrollment)),
            Some(json!({"reason": reason})),
        ),
        Request::Enrollments(Enrollments::CancelMany {
            sequence,
            ids,
            all_active,
            yes,
            reason,
        }) => {
            let body = match (ids.is_empty(), all_active, yes) {
                (false, false, _) => json!({"enrollment_ids": ids, "reason": reason}),
                (true, true, true) => json!({"all_active": true, "reason": reason}),
                (true, true, false) => {
                    return Err(fail(
                        2,
                        "this cancels every active enrollment of the sequence; pass --yes to do it",
                    ));
                }
                _ => {
                    return Err(fail(
                        2,
                        "give either --id ENROLLMENT (repeatable) or --all-active",
                    ));
                }
            };
            (
                Method::POST,
                format!("/v1/sequences/{}/enrollments/cancel", encode(sequence)),
                Some(body),
            )
        }
        Request::Reenroll(ReenrollArgs {
            sequence,
            leads,
            all_not_active,
        }) => {
            let body = match (leads.is_empty(), all_not_active) {
                (false, false) => json!({"lead_emails": leads}),
                (true, true) => json!({"all_not_active": true}),
                _ => {
                    return Err(fail(
                        2,
                        "give either --lead EMAIL (repeatable) or --all-not-active",
                    ));
                }
            };
            (
                Method::POST,
                format!("/v1/sequences/{}/re-enroll", encode(sequence)),
                Some(body),
            )
        }
        Request::Sends(SendsFilter {
            sequence,
            lead,
            state,
            since,
            until,
            paging,
            message_ids: _,
        }) => (
            Method::GET,
            format!(
                "/v1/sends{}",
                query(&[
                    ("sequence_id", sequence.clone()),
                    ("lead", lead.clone()),
                    ("state", state.clone()),
                    ("since", since.clone()),
                    ("until", until.clone()),
                    ("limit", paging.limit.map(|l| l.to_string())),
                    ("after", paging.after.clone())
                ])
            ),
            None,
        ),
        Request::Audit { sequence, before } => (
            Method::GET,
            format!(
                "/v1/sequences/{}/audit{}",
                encode(sequence),
                query(&[("before", before.map(|b| b.to_string()))])
            ),
            None,
        ),
        Request::Resolve(ResolveArgs {
            key,
            sequence,
            since,
            until,
            yes,
            sent,
            resend,
            note,
        }) => {
            let outcome = match (sent, resend) {
                (true, false) => "sent",
                (false, true) => "resend",
                _ => return Err(fail(2, "give exactly one of --sent or --resend")),
            };
            let bulk = sequence.is_some() || since.is_some() || until.is_some();
            match key {
                Some(_) if bulk => {
                    return Err(fail(
                        2,
                        "give a key, or --sequence/--since/--until to settle in bulk, not both",
                    ));
                }
                Some(key) => (
                    Method::POST,
                    format!("/v1/sends/{}/resolve", encode(key)),
                    Some(json!({"outcome": outcome, "note": note})),
                ),
                None if !bulk => {
                    return Err(fail(2, "give a key, or --sequence/--since/--until"));
                }
                None if !yes => {
                    return Err(fail(
                        2,
                        format!(
                            "this settles every matching UNKNOWN send as {outcome}: check the relay's log (pulse sends --state UNKNOWN --message-ids), then add --yes"
                        ),
                    ));
                }
                None => (
                    Method::POST,
                    "/v1/sends/resolve".to_owned(),
                    Some(
                        json!({"outcome": outcome, "note": note, "sequence_id": sequence,
                                "since": since, "until": until, "confirm": true}),
                    ),
                ),
            }
        }
        Request::ResumePreview { sequence } => (
            Method::GET,
            format!("/v1/sequences/{}/resume-preview", encode(sequence)),
            None,
        ),
        Request::Mailboxes(Mailboxes::List) => (Method::GET, "/v1/mailboxes".to_owned(), None),
        Request::Mailboxes(Mailboxes::Rm { id }) => (
            Method::DELETE,
            format!("/v1/mailboxes/{}", encode(id)),
            None,
        ),
        Request::Mailboxes(Mailboxes::Add {
            address,
            name,
            reply_to,
            smtp_url,
            smtp_password_file,
            dkim_selector,
            dkim_key_file,
        }) => {
            let password = smtp_password_file.as_deref().map(read_secret).transpose()?;
            let dkim = match (dkim_selector, dkim_key_file) {
                (Some(selector), Some(file)) => {
                    Some(json!({"selector": selector, "private_key": read_secret(file)?}))
                }
                _ => None,
            };
            (
                Method::POST,
                "/v1/mailboxes".to_owned(),
                Some(
                    json!({"address": address, "display_name": name, "reply_to": reply_to,
                            "smtp_url": smtp_url, "smtp_password": password, "dkim": dkim}),
                ),
            )
        }
    };
    let all = match &request {
        Request::Enrollments(Enrollments::List { paging, .. }) if paging.all => Some("enrollments"),
        Request::Sends(SendsFilter { paging, .. }) if paging.all => Some("sends"),
        Request::Sequences(Sequences::List { paging }) if paging.all => Some("sequences"),
        _ => None,
    };
    let value = match all {
        Some(key) => every_page(client, &path, key).await?,
        None => call(client, method, &path, body).await?,
    };
    if client.json {
        return Ok(serde_json::to_string_pretty(&value).unwrap_or_default());
    }
    Ok(render(&request, &value, &times))
}

/// Every page of the list `key` at `path` (a GET that pages with `after` and answers `next`),
/// as one answer.
pub(super) async fn every_page(client: &Client, path: &str, key: &str) -> Result<Value, Failure> {
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page_path = match &next {
            None => path.to_owned(),
            Some(after) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}after={}", encode(after))
            }
        };
        let page = call(client, reqwest::Method::GET, &page_path, None).await?;
        items.extend(page[key].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(after) if Some(after) != next.as_deref() => next = Some(after.to_owned()),
            _ => break,
        }
    }
    Ok(json!({ key: items }))
}

/// One API request; the JSON answer, or the failure to print.
async fn call(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let key = client
        .key
        .as_deref()
        .ok_or_else(|| fail(2, "no API key: pass --key or set PULSE_API_KEY"))?;
    let http = reqwest::Client::new();
    let mut req = http
        .request(
            method,
            format!("{}{path}", client.url.trim_end_matches('/')),
        )
        .bearer_auth(key);
    if let Ok(user) = std::env::var("USER") {
        req = req.header("X-Pulse-Actor", user);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| fail(3, format!("cannot reach Pulse at {}: {e}", client.url)))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| fail(3, format!("reading the response: {e}")))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_owned();
        let field = value["error"]["field"]
            .as_str()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        let code = if status.is_client_error() { 1 } else { 3 };
        return Err(fail(code, format!("{}: {message}{field}", status.as_u16())));
    }
    Ok(value)
}
