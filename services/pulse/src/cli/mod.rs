//! The operator CLI: `pulse sequences …`, `pulse mailboxes …`, `pulse suppressions …`, `pulse enrollments …`, `pulse re-enroll`, `pulse sends`,
//! `pulse resolve`, `pulse audit`, `pulse resume-preview`. A thin client of the HTTP API (the same routes a script
//! would use): base URL from `--url`/`PULSE_URL`, key from `--key`/`PULSE_API_KEY`, the acting
//! user from `$USER` for the audit trail. Human-readable tables by default, `--json` for scripts.
//! A sequence is given by id or exact name, an enrollment by id or by sequence and `--lead`
//! (`names`).
//!
//! Exit codes: 0 done; 1 the API refused the request (4xx, message printed); 2 bad usage;
//! 3 Pulse could not be reached or failed (5xx).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

mod apply;
mod inbound;
mod names;
mod render;
mod steps;
mod suppressions;
mod times;
pub use inbound::Inbound;
use render::render;
pub use steps::Steps;
pub use suppressions::Suppressions;

#[derive(Args, Debug)]
pub struct Client {
    /// Base URL of the Pulse API.
    #[arg(
        long,
        env = "PULSE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key.
    #[arg(long, env = "PULSE_API_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show times in this IANA zone (Europe/Paris). Default: the sequence's zone in a sequence's
    /// views, else this machine's local time.
    #[arg(long, env = "PULSE_TZ", global = true)]
    pub tz: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Sequences {
    /// List sequences.
    List,
    /// Create a sequence from a file, JSON or YAML (`.yaml`), as `POST /v1/sequences` takes it
    /// (name, sender, steps, triggers, settings); `-` reads standard input.
    Create {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Make the sequence named in a file (JSON or YAML) match it: created if no live sequence
    /// has that name, else edited. Prints what changes; structural changes need --yes.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Apply structural changes too (steps added, deleted or moved, timing, triggers,
        /// window, time zone, end date).
        #[arg(long)]
        yes: bool,
    },
    /// Each sequence's enrollments (enrolled, active, completed, cancelled, replied, bounced,
    /// complained) and today's sends.
    Stats,
    /// A sequence's saved versions: who changed it, when, and how many steps it had.
    Versions {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Show one sequence: steps, triggers, settings.
    Show {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Pause: nothing is sent from the moment this returns.
    Pause {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Resume a paused sequence (see resume-preview first).
    Resume {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Delete permanently (irreversible; prefer pause). Needs --yes.
    Delete {
        /// The sequence: its id or its exact name.
        id: String,
        /// Confirm that deleting is irreversible.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum Mailboxes {
    /// The workspace's sender mailboxes (secrets are never shown).
    List,
    /// Add a mailbox to send from.
    Add {
        /// The bare address, e.g. ada@example.com.
        address: String,
        /// The name shown with it.
        #[arg(long)]
        name: Option<String>,
        /// Where replies go, when not to the address.
        #[arg(long)]
        reply_to: Option<String>,
        /// Its own relay, e.g. smtp://ada%40example.com@smtp.example.com:587?tls=required
        /// (default: the global relay). Put the password in --smtp-password-file, not here:
        /// a command line is visible to other users of the machine.
        #[arg(long)]
        smtp_url: Option<String>,
        /// A file holding the relay's AUTH password.
        #[arg(long)]
        smtp_password_file: Option<std::path::PathBuf>,
        /// DKIM selector; needs --dkim-key-file.
        #[arg(long, requires = "dkim_key_file")]
        dkim_selector: Option<String>,
        /// A file holding the DKIM private key (RSA PKCS#1 PEM, or an Ed25519 seed in base64).
        #[arg(long, requires = "dkim_selector")]
        dkim_key_file: Option<std::path::PathBuf>,
    },
    /// Delete a mailbox (refused while a sequence sends from it).
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum Enrollments {
    /// One enrollment and everything sent for it.
    Show {
        /// The enrollment's id; with --lead, the sequence (id or exact name).
        enrollment: String,
        /// The lead whose latest enrollment in that sequence to show (its email).
        #[arg(long)]
        lead: Option<String>,
    },
    /// The enrollments of a sequence: who got what, and when.
    List {
        /// The sequence: its id or its exact name.
        sequence: String,
        /// Only enrollments in this status.
        #[arg(long, value_parser = ["ACTIVE", "COMPLETED", "CANCELLED", "FAILED", "INELIGIBLE"])]
        status: Option<String>,
        /// Only enrollments on the step at this position.
        #[arg(long)]
        step: Option<i32>,
        /// Only this lead's enrollments (its email).
        #[arg(long)]
        lead: Option<String>,
        /// Rows per page (1 to 1000, default 100).
        #[arg(long)]
        limit: Option<i64>,
        /// The next page: the id printed after "more:" on the previous one.
        #[arg(long)]
        after: Option<String>,
        /// Every page, one after another (however many enrollments there are).
        #[arg(long, conflicts_with = "after")]
        all: bool,
    },
    /// Cancel one enrollment: nothing more is sent to that lead from this sequence.
    ///
    /// By id (`pulse enrollments cancel ENROLLMENT_ID`) or by the lead's email
    /// (`pulse enrollments cancel "Welcome" --lead eve@example.com`).
    Cancel {
        /// The enrollment's id; with --lead, the sequence (id or exact name).
        enrollment: String,
        /// The lead whose ACTIVE enrollment in that sequence to cancel (its email).
        #[arg(long)]
        lead: Option<String>,
        /// Why, for the audit trail and the enrollment's end reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel many enrollments of a sequence: `--id` (repeatable), or `--all-active --yes`.
    CancelMany {
        /// The sequence: its id or its exact name.
        sequence: String,
        /// An enrollment id (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Every ACTIVE enrollment of the sequence (needs --yes).
        #[arg(long)]
        all_active: bool,
        /// Confirm --all-active.
        #[arg(long)]
        yes: bool,
        /// Why, for the audit trail and the enrollments' end reason.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Filters of `pulse sends`.
#[derive(Args, Debug)]
pub struct SendsFilter {
    /// Only this sequence's sends: its id or its exact name.
    #[arg(long)]
    pub sequence: Option<String>,
    /// Only this lead's sends (its email).
    #[arg(long)]
    pub lead: Option<String>,
    /// Only sends in this state.
    #[arg(long, value_parser = ["SENDING", "SENT", "DEFERRED", "FAILED", "UNKNOWN", "BOUNCED", "COMPLAINED"])]
    pub state: Option<String>,
    /// Only sends first attempted at or after this RFC 3339 time (2026-11-30T08:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only sends first attempted before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Rows per page (1 to 1000, default 100).
    #[arg(long)]
    pub limit: Option<i64>,
    /// The next page: the key printed after "more:" on the previous one.
    #[arg(long)]
    pub after: Option<String>,
    /// Every page, one after another.
    #[arg(long, conflicts_with = "after")]
    pub all: bool,
    /// Print only the Message-IDs, one a line (to grep a relay's log with).
    #[arg(long)]
    pub message_ids: bool,
}

/// Arguments of `pulse re-enroll`.
#[derive(Args, Debug)]
pub struct ReenrollArgs {
    /// The sequence: its id or its exact name.
    pub sequence: String,
    /// A lead's email (repeatable).
    #[arg(long = "lead")]
    pub leads: Vec<String>,
    /// Everyone who is not currently active in the sequence.
    #[arg(long)]
    pub all_not_active: bool,
}

/// Arguments of `pulse resolve`: one UNKNOWN send by its key, or all of a sequence's and/or a
/// time range's (`--sequence`, `--since`, `--until`, with `--yes`).
#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// Idempotency key of the send (see `pulse sends --state UNKNOWN --json`); leave it out to
    /// settle in bulk. (Its own id: `key` is the API key's.)
    #[arg(id = "send_key", value_name = "KEY")]
    pub key: Option<String>,
    /// Bulk: the UNKNOWN sends of this sequence (its id or its exact name).
    #[arg(long)]
    pub sequence: Option<String>,
    /// Bulk: those first attempted at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Bulk: those first attempted before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Bulk: confirm settling them all the same way.
    #[arg(long)]
    pub yes: bool,
    /// It went out: record it SENT and move the enrollment on.
    #[arg(long)]
    pub sent: bool,
    /// It did not go out: send it again.
    #[arg(long)]
    pub resend: bool,
    /// What the relay's log showed, for the audit trail.
    #[arg(long)]
    pub note: Option<String>,
}

/// Arguments of `pulse enroll`.
#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The sequence: its id or its exact name.
    pub sequence: String,
    /// The lead's email (created if new).
    #[arg(long)]
    pub lead: String,
    /// The lead's first name, for templates.
    #[arg(long)]
    pub first_name: Option<String>,
}

/// `pulse events …`.
#[derive(Subcommand, Debug)]
pub enum Events {
    /// Send trigger events from a JSON file: `{"events": [...]}` or a bare array, as
    /// `POST /v1/events` takes them (up to 1,000). Each event's outcome is printed.
    Send {
        /// The JSON file; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
}

/// What an operator command asks the API.
#[derive(Debug)]
pub enum Request {
    Steps(Steps),
    Enroll(EnrollArgs),
    Events(Events),
    /// The dev outbox: mail captured when no relay is configured.
    Outbox {
        limit: Option<i64>,
    },
    Sequences(Sequences),
    Mailboxes(Mailboxes),
    Suppressions(Suppressions),
    Inbound(Inbound),
    Enrollments(Enrollments),
    Reenroll(ReenrollArgs),
    Sends(SendsFilter),
    Audit {
        sequence: String,
    },
    Resolve(ResolveArgs),
    ResumePreview {
        sequence: String,
    },
}

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

/// A JSON file (`-`: standard input); a usage error (exit 2) when it cannot be read or parsed.
fn json_file(path: &std::path::Path) -> Result<Value, Failure> {
    let text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| fail(2, format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| fail(2, format!("{} is not JSON: {e}", path.display())))
}

/// A JSON file of events as `POST /v1/events` takes it: `{"events": [...]}`, or a bare array.
fn events_file(path: &std::path::Path) -> Result<Value, Failure> {
    Ok(match json_file(path)? {
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
        | Request::Audit { sequence }
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
        | Request::Audit { sequence }
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
        Request::Sequences(Sequences::List) => (Method::GET, "/v1/sequences".to_owned(), None),
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
            limit,
            after,
            all: _,
        }) => (
            Method::GET,
            format!(
                "/v1/sequences/{}/enrollments{}",
                encode(sequence),
                query(&[
                    ("status", status.clone()),
                    ("step", step.map(|s| s.to_string())),
                    ("lead", lead.clone()),
                    ("limit", limit.map(|l| l.to_string())),
                    ("after", after.clone())
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
            limit,
            after,
            message_ids: _,
            all: _,
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
                    ("limit", limit.map(|l| l.to_string())),
                    ("after", after.clone())
                ])
            ),
            None,
        ),
        Request::Audit { sequence } => (
            Method::GET,
            format!("/v1/sequences/{}/audit", encode(sequence)),
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
        Request::Enrollments(Enrollments::List { all: true, .. }) => Some("enrollments"),
        Request::Sends(SendsFilter { all: true, .. }) => Some("sends"),
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
async fn every_page(client: &Client, path: &str, key: &str) -> Result<Value, Failure> {
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
