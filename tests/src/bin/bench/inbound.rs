//! The inbound phase: replies to real sends, sent over SMTP into `pulse serve inbound` by 32
//! concurrent clients (the same client as the bare-SMTP reference), measured until each one is
//! accepted (recorded before its 250) and until each one is processed (its enrollment looked up
//! and, were it still active, ended).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use pulse_sender::transport::{Outgoing, SmtpPool, Transport};
use pulse_shared::{Settings, smtp_url::SmtpUrl};
use pulse_tests::free_port;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Role, env_for, wait_count, wait_ready};

/// What the phase measured.
pub(crate) struct Measured {
    /// Replies accepted (recorded) per second.
    pub accepted_per_s: f64,
    /// Replies processed per second, from the first send to the last processed.
    pub processed_per_s: f64,
    pub peak_rss_mib: f64,
}

/// Sends `n` replies, each threaded on a send in the ledger, to the bench sequences' sender.
pub(crate) async fn phase(
    bin: &str,
    s: &Settings,
    db: &PgPool,
    n: usize,
) -> anyhow::Result<Measured> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM send_ledger WHERE state = 'SENT' ORDER BY created_at LIMIT $1",
    )
    .bind(n as i64)
    .fetch_all(db)
    .await?;
    anyhow::ensure!(ids.len() == n, "only {} sends to reply to", ids.len());
    let (http, smtp_port) = (free_port()?, free_port()?);
    let addr = format!("127.0.0.1:{smtp_port}");
    let role = Role::start(
        bin,
        &["inbound"],
        &env_for(
            s,
            http,
            &[
                ("PULSE_INBOUND_SMTP_ADDR", addr.as_str()),
                ("PULSE_BOUNCE_DOMAIN", "bounces.bench.test"),
            ],
        ),
    )?;
    wait_ready(&format!("http://127.0.0.1:{http}")).await?;
    let pool = Transport::Smtp(Arc::new(SmtpPool::new(
        SmtpUrl::plain("127.0.0.1", smtp_port),
        32,
        Duration::from_secs(30),
        None,
    )?));
    let started = Instant::now();
    let sent: Vec<anyhow::Result<()>> = stream::iter(ids.into_iter().enumerate())
        .map(|(i, parent)| {
            let pool = pool.clone();
            async move {
                let reply = Outgoing {
                    workspace: Uuid::nil(),
                    from: format!("lead{i}@example.org"),
                    to: "bench@example.com".into(),
                    subject: "Re: b".into(),
                    body: "Thanks, this is interesting. Can we talk on Tuesday?\r\n".into(),
                    in_reply_to: Some(parent.clone()),
                    references: Some(parent),
                    message_id: format!("<reply.{i}@example.org>"),
                    ..Default::default()
                };
                pool.send(&reply)
                    .await
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("reply {i}: {e}"))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in sent {
        r?;
    }
    let accepted_per_s = n as f64 / started.elapsed().as_secs_f64();
    wait_count("processed", n, started, Duration::from_millis(50), async || {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbound_messages WHERE kind = 'reply' AND processed_at IS NOT NULL",
        )
        .fetch_one(db)
        .await?;
        Ok(usize::try_from(done)?)
    })
    .await?;
    let processed_per_s = n as f64 / started.elapsed().as_secs_f64();
    let unmatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbound_messages WHERE kind = 'reply' AND enrollment_id IS NULL",
    )
    .fetch_one(db)
    .await?;
    anyhow::ensure!(unmatched == 0, "{unmatched} replies matched no send");
    Ok(Measured {
        accepted_per_s,
        processed_per_s,
        peak_rss_mib: role.stop().unwrap_or_default(),
    })
}
