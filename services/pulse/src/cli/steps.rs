//! `pulse steps edit|add|delete|move`: one step of a sequence at a time, through the step-level
//! routes (`/v1/sequences/{id}/steps…`), so an edit never touches the other steps. A step is
//! given by its position (`2`) or its id; the sequence by its id or exact name. Each prints the
//! sequence as it now is and every warning the API gave (steps already queued with the old
//! content, the deleted step named). A change of the steps' order (add, move, delete) first
//! shows the order it would make and is made only with `--yes`; a content edit goes at once.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{
    Client, Failure, Request, Sequences, call, encode, fail, names, render::render, times,
};

#[derive(Subcommand, Debug)]
pub enum Steps {
    /// Change one step: its subject, body, HTML, timing or end date. What is not given stays.
    Edit {
        /// The sequence: its id or its exact name.
        sequence: String,
        /// The step: its position (1 is the first) or its id.
        step: String,
        #[command(flatten)]
        content: Content,
    },
    /// Add a step (at the end, or at --position). Shows the new order; needs --yes.
    Add {
        /// The sequence: its id or its exact name.
        sequence: String,
        #[command(flatten)]
        content: Content,
        /// Where: 1 is first; left out, after the last.
        #[arg(long)]
        position: Option<i32>,
        /// Make the change shown.
        #[arg(long)]
        yes: bool,
    },
    /// Delete one step: its runs not yet claimed are skipped and each lead moves on to the step
    /// that now follows. Needs --yes.
    Delete {
        /// The sequence: its id or its exact name.
        sequence: String,
        /// The step: its position (1 is the first) or its id.
        step: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Move one step to another position; the others keep their order. Shows the new order;
    /// needs --yes.
    Move {
        /// The sequence: its id or its exact name.
        sequence: String,
        /// The step: its position (1 is the first) or its id.
        step: String,
        /// Its new position (1 is first).
        #[arg(long)]
        to: usize,
        /// Make the change shown.
        #[arg(long)]
        yes: bool,
    },
}

/// What a step says and when it goes.
#[derive(Args, Debug)]
pub struct Content {
    /// The subject template, e.g. "Hello {{ lead.first_name }}".
    #[arg(long)]
    subject: Option<String>,
    /// The text body template.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// A file holding the text body template.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// A file holding an HTML part template.
    #[arg(long)]
    html_file: Option<PathBuf>,
    /// Send right after the previous step (or the enrollment, for the first).
    #[arg(long, conflicts_with_all = ["delay", "on"])]
    immediately: bool,
    /// Send this long after the previous step: ISO-8601 (PT30M, PT2H, P2D, P1W).
    #[arg(long, conflicts_with = "on")]
    delay: Option<String>,
    /// Send at this RFC 3339 time (2026-12-01T09:00:00+01:00).
    #[arg(long)]
    on: Option<String>,
    /// Do not send this step after this RFC 3339 time.
    #[arg(long)]
    end_date: Option<String>,
}

fn read(path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| fail(2, format!("cannot read {}: {e}", path.display())))
}

impl Content {
    /// The fields given, as the API names them.
    fn fields(&self) -> Result<Map<String, Value>, Failure> {
        let mut m = Map::new();
        if let Some(subject) = &self.subject {
            m.insert("subject".into(), json!(subject));
        }
        let body = match (&self.body, &self.body_file) {
            (Some(body), _) => Some(body.clone()),
            (None, Some(file)) => Some(read(file)?),
            (None, None) => None,
        };
        if let Some(body) = body {
            m.insert("body".into(), json!(body));
        }
        if let Some(file) = &self.html_file {
            m.insert("html".into(), json!(read(file)?));
        }
        let timing = if self.immediately {
            Some(json!({"type": "immediately"}))
        } else if let Some(delay) = &self.delay {
            Some(json!({"type": "delay", "delay": delay}))
        } else {
            self.on
                .as_ref()
                .map(|at| json!({"type": "on_date", "at": at}))
        };
        if let Some(timing) = timing {
            m.insert("timing".into(), timing);
        }
        if let Some(end) = &self.end_date {
            m.insert("end_date".into(), json!(end));
        }
        Ok(m)
    }
}

/// The steps of the sequence `id`, as the API lists them.
async fn steps_of(client: &Client, id: &str) -> Result<Vec<Value>, Failure> {
    let seq = call(
        client,
        Method::GET,
        &format!("/v1/sequences/{}", encode(id)),
        None,
    )
    .await?;
    Ok(seq["steps"].as_array().cloned().unwrap_or_default())
}

/// The steps' subjects in an order, as the question before a change shows it.
fn order_line(subjects: &[String]) -> String {
    subjects
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}. {s}", i + 1))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Refuses (exit 2) a change of the steps' order not confirmed: what it would make, and how to
/// make it.
fn ask(yes: bool, what: String, subjects: &[String]) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    Err(fail(
        2,
        format!(
            "{what}; the steps would be: {}\nenrollments in flight follow the new order (pause \
             first if that matters); pass --yes to make the change",
            order_line(subjects)
        ),
    ))
}

fn subjects(steps: &[Value]) -> Vec<String> {
    steps
        .iter()
        .map(|s| s["subject"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The id of the step `given` names among `steps`: a position (1-based) or an id.
fn step_id(steps: &[Value], given: &str) -> Result<String, Failure> {
    let found = match given.parse::<usize>() {
        Ok(position) => steps.get(position.wrapping_sub(1)),
        Err(_) => steps.iter().find(|s| s["id"] == given),
    };
    found
        .and_then(|s| s["id"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            fail(
                1,
                format!(
                    "no step {given} in this sequence (it has {}; `pulse sequences show` lists them)",
                    steps.len()
                ),
            )
        })
}

pub(super) async fn run(client: &Client, action: &Steps) -> Result<String, Failure> {
    let (sequence, method, path, body) = match action {
        Steps::Edit {
            sequence,
            step,
            content,
        } => {
            let fields = content.fields()?;
            if fields.is_empty() {
                return Err(fail(
                    2,
                    "nothing to change: give --subject, --body, --body-file, --html-file, a timing or --end-date",
                ));
            }
            let id = names::sequence(client, sequence).await?;
            let step = step_id(&steps_of(client, &id).await?, step)?;
            let path = format!("/v1/sequences/{}/steps/{}", encode(&id), encode(&step));
            (id, Method::PATCH, path, Some(Value::Object(fields)))
        }
        Steps::Add {
            sequence,
            content,
            position,
            yes,
        } => {
            let mut fields = content.fields()?;
            if !fields.contains_key("subject") || !fields.contains_key("timing") {
                return Err(fail(
                    2,
                    "a new step needs --subject and a timing (--immediately, --delay or --on)",
                ));
            }
            if let Some(position) = position {
                fields.insert("position".into(), json!(position));
            }
            let id = names::sequence(client, sequence).await?;
            let mut order = subjects(&steps_of(client, &id).await?);
            let new = fields["subject"].as_str().unwrap_or_default().to_owned();
            let at = position.map_or(order.len(), |p| (p.max(1) as usize - 1).min(order.len()));
            order.insert(at, new.clone());
            ask(
                *yes,
                format!("this adds {new:?} as step {}", at + 1),
                &order,
            )?;
            let path = format!("/v1/sequences/{}/steps", encode(&id));
            (id, Method::POST, path, Some(Value::Object(fields)))
        }
        Steps::Delete {
            sequence,
            step,
            yes,
        } => {
            let id = names::sequence(client, sequence).await?;
            let steps = steps_of(client, &id).await?;
            let step = step_id(&steps, step)?;
            let at = steps
                .iter()
                .position(|s| s["id"] == step.as_str())
                .unwrap_or(0);
            let mut order = subjects(&steps);
            let gone = order.remove(at);
            ask(
                *yes,
                format!(
                    "this deletes step {} {gone:?}: its pending sends are skipped and each lead \
                     moves on to the step that follows",
                    at + 1
                ),
                &order,
            )?;
            let path = format!("/v1/sequences/{}/steps/{}", encode(&id), encode(&step));
            (id, Method::DELETE, path, None)
        }
        Steps::Move {
            sequence,
            step,
            to,
            yes,
        } => {
            let id = names::sequence(client, sequence).await?;
            let steps = steps_of(client, &id).await?;
            let moved = step_id(&steps, step)?;
            if *to == 0 || *to > steps.len() {
                return Err(fail(2, format!("--to must be from 1 to {}", steps.len())));
            }
            let from = steps
                .iter()
                .position(|s| s["id"] == moved.as_str())
                .unwrap_or(0);
            let mut shown = subjects(&steps);
            let subject = shown.remove(from);
            shown.insert(to - 1, subject.clone());
            ask(
                *yes,
                format!("this moves step {} {subject:?} to {to}", from + 1),
                &shown,
            )?;
            let mut order: Vec<String> = steps
                .iter()
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .filter(|s| *s != moved)
                .collect();
            order.insert(to - 1, moved);
            let path = format!("/v1/sequences/{}/steps/order", encode(&id));
            (id, Method::POST, path, Some(json!({ "step_ids": order })))
        }
    };
    let change = call(client, method, &path, body).await?;
    if client.json {
        return Ok(serde_json::to_string_pretty(&change).unwrap_or_default());
    }
    let zone = change["sequence"]["timezone"]
        .as_str()
        .and_then(|z| times::zone(z).ok());
    let zone = match &client.tz {
        Some(name) => Some(times::zone(name)?),
        None => zone,
    };
    let mut out = render(
        &Request::Sequences(Sequences::Show { id: sequence }),
        &change["sequence"],
        &times::Times::new(zone),
    );
    for w in change["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("\nwarning: {}", w.as_str().unwrap_or_default()));
    }
    Ok(out)
}
