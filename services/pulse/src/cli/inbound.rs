//! `pulse inbound [list|show]`: what came back (replies, auto-replies, bounces, complaints,
//! reported opt-outs) from the command line, through `GET /v1/inbound`.

use clap::Subcommand;
use reqwest::Method;

use super::{Client, Failure, call, encode, query, render::table};

#[derive(Subcommand, Debug)]
pub enum Inbound {
    /// What came back, newest first, with what each did.
    List {
        /// reply, auto_reply, bounce, soft_bounce, complaint, unsubscribe or other.
        #[arg(long)]
        kind: Option<String>,
        /// The address it is about (a lead's).
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        enrollment: Option<String>,
        #[arg(long)]
        sequence: Option<String>,
        /// Only older than this id (the `more:` of the previous page).
        #[arg(long)]
        before: Option<i64>,
        #[arg(long)]
        limit: Option<i64>,
    },
    /// One message: its details, or with --raw the message as received.
    Show {
        id: i64,
        #[arg(long)]
        raw: bool,
    },
}

pub(super) async fn run(client: &Client, action: &Inbound) -> Result<String, Failure> {
    match action {
        Inbound::List {
            kind,
            address,
            enrollment,
            sequence,
            before,
            limit,
        } => {
            let path = format!(
                "/v1/inbound{}",
                query(&[
                    ("kind", kind.clone()),
                    ("address", address.clone()),
                    ("enrollment_id", enrollment.clone()),
                    ("sequence_id", sequence.clone()),
                    ("before", before.map(|b| b.to_string())),
                    ("limit", limit.map(|l| l.to_string())),
                ])
            );
            let v = call(client, Method::GET, &path, None).await?;
            if client.json {
                return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            let rows = v["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let text = |k: &str| m[k].as_str().unwrap_or("-").to_owned();
                    vec![
                        m["id"].to_string(),
                        text("received_at"),
                        text("kind"),
                        text("address"),
                        m["detail"]["subject"].as_str().unwrap_or("-").to_owned(),
                        m["outcome"].as_str().unwrap_or("waiting").to_owned(),
                    ]
                })
                .collect();
            let mut out = table(
                &["ID", "RECEIVED", "KIND", "ABOUT", "SUBJECT", "WHAT IT DID"],
                rows,
            );
            if let Some(next) = v["next"].as_i64() {
                out.push_str(&format!("\nmore: --before {next}"));
            }
            Ok(out)
        }
        Inbound::Show { id, raw } => {
            let path = format!(
                "/v1/inbound/{}{}",
                encode(&id.to_string()),
                if *raw { "?raw=true" } else { "" }
            );
            let v = call(client, Method::GET, &path, None).await?;
            Ok(match v {
                serde_json::Value::String(text) => text,
                other => serde_json::to_string_pretty(&other).unwrap_or_default(),
            })
        }
    }
}
