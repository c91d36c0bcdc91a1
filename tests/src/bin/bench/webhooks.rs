//! The webhooks phase: the end-to-end run again, with an endpoint (an HTTP receiver in this
//! process) subscribed to every event, next to the same run without one measured just before.
//! It reports the sends/s with the endpoint, the CPU-ms per send, and the events delivered per
//! second until the receiver holds all of them: each enrollment's `enrollment.created`,
//! `send.sent` and `enrollment.ended`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use pulse_shared::{Settings, db::DEFAULT_WORKSPACE};
use pulse_tests::{SmtpServer, free_port};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    Role, bulk_enroll,
    cpu::{cpu_ms_per_send, cpu_split, cpu_ticks},
    env_for, sequence, smtp_wait, wait_count,
};

/// What the phase measured.
pub(crate) struct Measured {
    pub sends_per_s: f64,
    pub events: usize,
    pub events_per_s: f64,
    pub cpu_ms_per_send: BTreeMap<String, f64>,
}

impl Measured {
    /// Prints the figures next to `plain_per_s`, the rate without an endpoint, and returns them
    /// for the JSON report.
    pub fn report(&self, plain_per_s: f64) -> serde_json::Value {
        println!(
            "end to end 1 sender, webhook endpoint       {:>8.0} sends/s  ({:.2} of without)",
            self.sends_per_s,
            self.sends_per_s / plain_per_s
        );
        let shown: Vec<String> = self
            .cpu_ms_per_send
            .iter()
            .map(|(class, ms)| format!("{class} {ms:.3}"))
            .collect();
        println!("           CPU-ms per send: {}", shown.join(" · "));
        println!(
            "webhooks   {} events delivered             {:>8.0} /s  (from the first send to the last event)",
            self.events, self.events_per_s
        );
        serde_json::json!({"sends_per_s": self.sends_per_s, "of_without": self.sends_per_s / plain_per_s,
                           "events": self.events, "events_per_s": self.events_per_s,
                           "cpu_ms_per_send": self.cpu_ms_per_send})
    }
}

/// Runs `n` sends with one sender and the webhooks role, an endpoint subscribed to everything.
pub(crate) async fn phase(
    bin: &str,
    s: &Settings,
    db: &PgPool,
    smtp: &SmtpServer,
    n: usize,
) -> anyhow::Result<Measured> {
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = Router::new().route(
        "/hooks",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let webhook = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret)
         VALUES ($1, $2, $3, ARRAY['enrollment.created', 'send.sent', 'enrollment.ended'],
                 'whsec_YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2g=')",
    )
    .bind(webhook)
    .bind(DEFAULT_WORKSPACE)
    .bind(&url)
    .execute(db)
    .await?;

    let before = smtp.count();
    let seq = sequence(db).await?;
    bulk_enroll(
        db,
        seq,
        "hooked",
        n,
        chrono::Utc::now() + chrono::Duration::seconds(2),
        None,
    )
    .await?;
    let env = env_for(s, free_port()?, &[("PULSE_WEBHOOKS_ALLOW_PRIVATE", "true")]);
    let sender = Role::start(bin, &["sender"], &env_for(s, free_port()?, &[]))?;
    let role = Role::start(bin, &["webhooks"], &env)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    smtp_wait(smtp, before, n, started).await?;
    let secs = started.elapsed().as_secs_f64();
    let split = cpu_split(&cpu_before, &cpu_ticks(), secs);
    let sends_per_s = n as f64 / secs;
    let events = 3 * n;
    wait_count(
        "webhook events delivered",
        events,
        started,
        Duration::from_millis(50),
        async || Ok(received.load(Ordering::Relaxed)),
    )
    .await?;
    let events_per_s = events as f64 / started.elapsed().as_secs_f64();
    sqlx::query("UPDATE webhooks SET enabled = false WHERE id = $1")
        .bind(webhook)
        .execute(db)
        .await?;
    let _ = sender.stop();
    let _ = role.stop();
    Ok(Measured {
        sends_per_s,
        events,
        events_per_s,
        cpu_ms_per_send: cpu_ms_per_send(&split, secs, n)
            .into_iter()
            .map(|(class, ms)| (class.to_owned(), ms))
            .collect(),
    })
}
