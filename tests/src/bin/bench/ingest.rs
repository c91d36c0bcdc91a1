//! The ingest phase: trigger events through `POST /v1/events` over several connections, in
//! batches with repeated ids and overlapping triggers.

use std::{sync::Arc, time::Instant};

use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::progress;

/// Requests to `POST /v1/events` in flight at once (each on its own connection).
pub(crate) const INGEST_CONNECTIONS: usize = 8;

pub(crate) async fn ingest(base: &str, key: &str, n: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let seq = json!({"name": "ingest bench", "steps": [{"subject": "x", "body": "y", "timing": {"type": "immediately"}}],
        "triggers": [{"type": "tag_applied", "tag": "t"}, {"type": "list_added", "list": "l"}],
        "sender": {"from": "bench@example.com"}});
    http.post(format!("{base}/v1/sequences"))
        .bearer_auth(key)
        .json(&seq)
        .send()
        .await?
        .error_for_status()?;
    // Batches of 500; every tenth event repeats an earlier id; half the leads get both triggers.
    let batches: Vec<Value> = (0..n)
        .collect::<Vec<_>>()
        .chunks(500)
        .map(|chunk| {
            let events: Vec<Value> = chunk.iter().map(|i| {
                let id = if i % 10 == 9 { i - 9 } else { *i };
                let lead = json!({"email": format!("i{}@example.com", i / 2)});
                if i % 2 == 0 {
                    json!({"id": format!("e{id}"), "type": "tag_applied", "tag": "t", "lead": lead})
                } else {
                    json!({"id": format!("e{id}"), "type": "list_added", "list": "l", "lead": lead})
                }
            }).collect();
            json!({"events": events})
        })
        .collect();
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Vec<anyhow::Result<()>> = stream::iter(batches)
        .map(|b| {
            let (http, done) = (http.clone(), done.clone());
            async move {
                let len = b["events"].as_array().map_or(0, Vec::len);
                http.post(format!("{base}/v1/events"))
                    .bearer_auth(key)
                    .json(&b)
                    .send()
                    .await?
                    .error_for_status()?;
                let d = done.fetch_add(len, std::sync::atomic::Ordering::Relaxed) + len;
                progress("events", d, n, started);
                Ok(())
            }
        })
        .buffer_unordered(INGEST_CONNECTIONS)
        .collect()
        .await;
    eprintln!();
    for r in results {
        r?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
