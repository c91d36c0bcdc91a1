//! `pulse suppressions add|list|remove|import|export`: the suppression list from the command
//! line. Import streams a CSV file to `POST /v1/suppressions` in batches of 10,000 with a
//! progress line on stderr; export pages through `GET /v1/suppressions` and writes CSV to stdout
//! as it goes, so neither holds a big list in memory.

use std::{io::Write, path::PathBuf, time::Instant};

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Client, Failure, call, encode, fail, query, render::table};

/// Rows per `POST /v1/suppressions` (the API's limit).
const BATCH: usize = 10_000;

#[derive(Subcommand, Debug)]
pub enum Suppressions {
    /// Suppress addresses or domains (a value with an @ is an address): nothing more is sent
    /// to them, and their active enrollments end.
    Add {
        #[arg(required = true)]
        values: Vec<String>,
        /// unsubscribed, bounced, complained, manual (default) or imported.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// The suppression list.
    List {
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Start after this value (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Lift a suppression (recorded with your name and --reason).
    Remove {
        value: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Import a CSV file: one address or domain per row in the first column, an optional
    /// reason in the second (default: imported); a header row is skipped.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "imported")]
        reason: String,
    },
    /// Export the whole list as CSV (value,kind,reason,source,created_at) to stdout.
    Export,
}

pub(super) async fn run(client: &Client, action: &Suppressions) -> Result<String, Failure> {
    match action {
        Suppressions::Add { values, reason } => {
            let entries: Vec<Value> = values.iter().map(|v| entry(v, reason)).collect();
            let v = call(
                client,
                Method::POST,
                "/v1/suppressions",
                Some(json!({"entries": entries})),
            )
            .await?;
            Ok(added(client, &v))
        }
        Suppressions::List {
            email,
            domain,
            reason,
            after,
            limit,
        } => {
            let path = format!(
                "/v1/suppressions{}",
                query(&[
                    ("email", email.clone()),
                    ("domain", domain.clone()),
                    ("reason", reason.clone()),
                    ("after", after.clone()),
                    ("limit", limit.map(|l| l.to_string())),
                ])
            );
            let v = call(client, Method::GET, &path, None).await?;
            if client.json {
                return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            let rows = v["suppressions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    ["value", "kind", "reason", "source", "created_at"]
                        .iter()
                        .map(|k| s[*k].as_str().unwrap_or("-").to_owned())
                        .collect()
                })
                .collect();
            let mut out = table(&["VALUE", "KIND", "REASON", "SOURCE", "SINCE"], rows);
            if let Some(next) = v["next"].as_str() {
                out.push_str(&format!("\nmore: --after {next}"));
            }
            Ok(out)
        }
        Suppressions::Remove { value, reason } => {
            let path = format!(
                "/v1/suppressions/{}{}",
                encode(value),
                query(&[("reason", reason.clone())])
            );
            call(client, Method::DELETE, &path, None).await?;
            Ok(format!("{value}: suppression lifted"))
        }
        Suppressions::Import { file, reason } => import(client, file, reason).await,
        Suppressions::Export => export(client).await,
    }
}

fn entry(value: &str, reason: &str) -> Value {
    let value = value.trim();
    if value.contains('@') {
        json!({"email": value, "reason": reason})
    } else {
        json!({"domain": value, "reason": reason})
    }
}

fn added(client: &Client, v: &Value) -> String {
    if client.json {
        return serde_json::to_string_pretty(v).unwrap_or_default();
    }
    let mut out = format!(
        "added {}, already there {}, enrollments cancelled {}",
        v["added"], v["already"], v["enrollments_cancelled"]
    );
    for w in v["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("\nwarning: {}", w.as_str().unwrap_or_default()));
    }
    out
}

async fn import(client: &Client, file: &PathBuf, default_reason: &str) -> Result<String, Failure> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(file)
        .map_err(|e| fail(2, format!("cannot read {}: {e}", file.display())))?;
    let started = Instant::now();
    let (mut lines, mut rows, mut added, mut already, mut cancelled) =
        (0usize, 0usize, 0u64, 0u64, 0u64);
    let mut batch = Vec::with_capacity(BATCH);
    let mut records = reader.records();
    loop {
        let record = records.next();
        if let Some(record) = &record {
            let record = record
                .as_ref()
                .map_err(|e| fail(2, format!("{}: line {}: {e}", file.display(), lines + 1)))?;
            lines += 1;
            let value = record.get(0).unwrap_or_default();
            let header = lines == 1
                && matches!(
                    value.to_ascii_lowercase().as_str(),
                    "email" | "domain" | "value"
                );
            if !value.is_empty() && !header {
                rows += 1;
                let reason = record
                    .get(1)
                    .filter(|r| !r.is_empty())
                    .unwrap_or(default_reason);
                batch.push(entry(value, reason));
            }
        }
        if batch.len() == BATCH || (record.is_none() && !batch.is_empty()) {
            let v = call(
                client,
                Method::POST,
                "/v1/suppressions",
                Some(json!({"entries": std::mem::take(&mut batch)})),
            )
            .await
            .map_err(|f| fail(f.code, format!("after {rows} rows: {}", f.message)))?;
            added += v["added"].as_u64().unwrap_or_default();
            already += v["already"].as_u64().unwrap_or_default();
            cancelled += v["enrollments_cancelled"].as_u64().unwrap_or_default();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            eprint!("\rimported {rows} rows ({:.0} rows/s)", rows as f64 / secs);
        }
        if record.is_none() {
            break;
        }
    }
    eprintln!();
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    Ok(format!(
        "{rows} rows in {secs:.1} s ({:.0} rows/s): added {added}, already there {already}, enrollments cancelled {cancelled}",
        rows as f64 / secs
    ))
}

async fn export(client: &Client) -> Result<String, Failure> {
    let stdout = std::io::stdout();
    let mut out = csv::Writer::from_writer(stdout.lock());
    let io = |e: csv::Error| fail(3, format!("writing the export: {e}"));
    out.write_record(["value", "kind", "reason", "source", "created_at"])
        .map_err(io)?;
    let (mut after, mut n) = (None::<String>, 0usize);
    loop {
        let path = format!(
            "/v1/suppressions{}",
            query(&[("limit", Some("1000".into())), ("after", after.clone())])
        );
        let v = call(client, Method::GET, &path, None).await?;
        for s in v["suppressions"].as_array().into_iter().flatten() {
            let field = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            out.write_record([
                field("value"),
                field("kind"),
                field("reason"),
                field("source"),
                field("created_at"),
            ])
            .map_err(io)?;
            n += 1;
        }
        match v["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    out.flush()
        .map_err(|e| fail(3, format!("writing the export: {e}")))?;
    drop(out);
    let _ = std::io::stderr().write_all(format!("exported {n} suppressions\n").as_bytes());
    Ok(String::new())
}
