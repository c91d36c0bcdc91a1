//! The sender role: consumes due sends from RabbitMQ and turns each into exactly one email.
//!
//! For each message, in this order (DESIGN.md, "The send path"):
//! 1. the Redis pause flag — paused: the step run goes back to SCHEDULED (held, not lost); and
//!    the sequence's sending rate — over it: the step run is due again in a later minute;
//! 2. the ledger claim — only the worker that claims the key may send it;
//! 3. the re-check of enrollment, sequence and lead, read after the claim committed;
//! 4. the SMTP send, with the key's deterministic Message-ID;
//! 5. one transaction recording the outcome and scheduling the next step; then the ack.
//!
//! Workers are stateless. The sender never delays a message by holding it unacked: a retry is a
//! new due time in PostgreSQL. It never sends without a claim, and never releases a claim it
//! cannot prove unsent.

pub mod transport;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use pulse_shared::{
    Settings,
    config::SenderSettings,
    db::{self, StoreError},
    ledger::{self, Claim, Release, Reply},
    messaging::{self, MessagingError, SendMessage},
    model::{enrollment_status, sequence_status},
    pause::{Gate, PauseError, PauseFlags},
    smtp_url::SmtpUrl,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use transport::{Outgoing, SendError, SmtpPool, Transport};

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error(transparent)]
    Pause(#[from] PauseError),
    #[error("invalid SMTP URL: {0}")]
    SmtpUrl(String),
}

/// What handling one message needs.
#[derive(Clone)]
pub struct Context {
    pub db: PgPool,
    pub flags: PauseFlags,
    pub transport: Transport,
    pub settings: SenderSettings,
}

impl Context {
    /// Connects to PostgreSQL and Redis and picks the transport from `PULSE_SMTP_URL`.
    pub async fn build(settings: &Settings) -> Result<Self, SenderError> {
        let s = &settings.sender;
        let db = db::pool(&settings.database_url, s.concurrency as u32 + 2)?;
        let flags = PauseFlags::connect(
            &settings.redis_url,
            &settings.redis_prefix,
            Duration::from_secs(30),
        )
        .await?;
        let transport = match &settings.smtp_url {
            Some(url) => {
                let relay = SmtpUrl::parse(url).map_err(SenderError::SmtpUrl)?;
                Transport::Smtp(Arc::new(SmtpPool::new(
                    relay,
                    s.smtp_pool_size,
                    s.smtp_timeout,
                )))
            }
            None => Transport::Capture(db.clone()),
        };
        Ok(Self {
            db,
            flags,
            transport,
            settings: s.clone(),
        })
    }
}

/// Runs the sender until `shutdown` is cancelled. On shutdown it stops taking new deliveries,
/// finishes the sends in progress, and closes the channel (unstarted prefetched deliveries go
/// back to the queue).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), SenderError> {
    let ctx = Context::build(&settings).await?;
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match session(&settings, &ctx, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "sender session failed; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::info!("sender stopped");
    Ok(())
}

async fn session(
    settings: &Settings,
    ctx: &Context,
    shutdown: &CancellationToken,
) -> Result<(), SenderError> {
    let conn = messaging::connect(&settings.amqp_url).await?;
    let channel = conn.create_channel().await.map_err(MessagingError::from)?;
    messaging::declare(&channel, &settings.queue).await?;
    channel
        .basic_qos(ctx.settings.prefetch, BasicQosOptions::default())
        .await
        .map_err(MessagingError::from)?;
    let consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(MessagingError::from)?;
    tracing::info!(queue = %settings.queue, prefetch = ctx.settings.prefetch, "sender consuming");
    let result = consumer
        .take_until(shutdown.cancelled())
        .map_err(MessagingError::from)
        .try_for_each_concurrent(ctx.settings.concurrency, |delivery| async move {
            handle(ctx, delivery).await;
            Ok(())
        })
        .await;
    let _ = conn.close(200, "sender shutting down".into()).await;
    result.map_err(SenderError::from)
}

/// Why a message could not be handled.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    /// The message itself is unusable: dead-letter it.
    #[error("unusable message: {0}")]
    Poison(String),
    /// A dependency failed; the message goes back to the queue.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pause(#[from] PauseError),
}

async fn handle(ctx: &Context, delivery: Delivery) {
    let result = process(ctx, &delivery.data).await;
    let acked = match result {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(HandleError::Poison(reason)) => {
            tracing::error!(%reason, "dead-lettering an unusable message");
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await
        }
        Err(e) => {
            tracing::warn!(error = %e, "send not handled; returning the message to the queue");
            // Do not spin on a dependency that is down.
            tokio::time::sleep(Duration::from_secs(1)).await;
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = acked {
        tracing::warn!(error = %e, "ack failed; the broker will redeliver and the ledger absorbs it");
    }
}

/// Handles one due-send message. `Ok` means the message is done with and can be acked.
async fn process(ctx: &Context, data: &[u8]) -> Result<(), HandleError> {
    let msg: SendMessage =
        serde_json::from_slice(data).map_err(|e| HandleError::Poison(e.to_string()))?;
    let run = msg.step_run_id;

    if ctx.flags.gate(&ctx.db, msg.sequence_id).await? == Gate::Paused {
        ledger::hold(&ctx.db, run, None).await?;
        tracing::debug!(step_run = %run, "sequence paused; step held");
        return Ok(());
    }
    if let Some(limit) = msg.max_per_minute
        && let Some(slot) = ctx
            .flags
            .take_send_slot(msg.sequence_id, limit, Utc::now())
            .await?
    {
        ledger::hold(&ctx.db, run, Some(slot)).await?;
        tracing::debug!(step_run = %run, %slot, "sequence rate reached; step moved to a later minute");
        return Ok(());
    }

    let lease = ctx.settings.sending_lease;
    let attempts = match ledger::claim(&ctx.db, run, &msg.key, lease).await? {
        Claim::Claimed { attempts } => attempts,
        other => {
            tracing::debug!(key = %msg.key, claim = ?other, "not sending: key not claimable");
            return Ok(());
        }
    };

    let snap = ledger::snapshot(&ctx.db, run).await?;
    let refusal = if snap.sequence_status == sequence_status::PAUSED {
        Some((Release::Hold, "sequence paused".to_owned()))
    } else if snap.sequence_status != sequence_status::ACTIVE {
        Some((
            Release::Cancel,
            format!("sequence {}", snap.sequence_status.to_lowercase()),
        ))
    } else if snap.enrollment_status != enrollment_status::ACTIVE {
        Some((
            Release::Cancel,
            format!("enrollment {}", snap.enrollment_status.to_lowercase()),
        ))
    } else if snap.lead_suppressed {
        Some((Release::Skip, "lead unsubscribed or bounced".to_owned()))
    } else {
        None
    };
    if let Some((how, reason)) = refusal {
        ledger::release(&ctx.db, &msg.key, run, how, &reason).await?;
        tracing::info!(key = %msg.key, %reason, "send released unsent");
        return Ok(());
    }

    let mail = Outgoing {
        workspace: msg.workspace_id,
        from: snap.from_addr,
        to: snap.to_addr,
        subject: snap.subject,
        body: snap.body,
        message_id: snap.message_id,
    };
    match ctx.transport.send(&mail).await {
        Ok(reply) => {
            record_with_retries(|| ledger::record_sent(&ctx.db, &msg.key, run, &reply, Utc::now()))
                .await?;
            tracing::info!(key = %msg.key, code = ?reply.code, "sent");
        }
        Err(SendError::Transient(reply)) if attempts < ctx.settings.max_attempts => {
            let wait = backoff(&ctx.settings, attempts);
            let retry_at = Utc::now() + wait;
            record_with_retries(|| {
                ledger::record_deferred(&ctx.db, &msg.key, run, &reply, retry_at)
            })
            .await?;
            tracing::warn!(key = %msg.key, attempts, retry_in_s = wait.num_seconds(), reply = %reply.text, "send deferred");
        }
        Err(SendError::Transient(reply)) => {
            let reply = Reply {
                code: reply.code,
                text: format!("gave up after {attempts} attempts: {}", reply.text),
            };
            record_with_retries(|| ledger::record_failed(&ctx.db, &msg.key, run, &reply)).await?;
            tracing::warn!(key = %msg.key, attempts, reply = %reply.text, "send failed");
        }
        Err(SendError::Permanent(reply)) => {
            record_with_retries(|| ledger::record_failed(&ctx.db, &msg.key, run, &reply)).await?;
            tracing::warn!(key = %msg.key, reply = %reply.text, "send failed permanently");
        }
    }
    Ok(())
}

/// Recording an outcome after the relay answered is the one write that must not be lost to a
/// passing database error, so it is retried for a while before giving up (the claim then stays
/// SENDING and becomes UNKNOWN after the lease).
async fn record_with_retries<F, Fut>(mut write: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 8 => {
                tries += 1;
                tracing::warn!(error = %e, tries, "recording a send outcome failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Exponential backoff with ±20 % jitter: `base * 2^(attempts-1)`, capped at `retry_max`.
pub fn backoff(s: &SenderSettings, attempts: i32) -> chrono::Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let raw = s.retry_base.saturating_mul(1 << exp).min(s.retry_max);
    // Jitter from a random UUID's bits: 0..=40 % of the delay, shifted to -20 %..+20 %.
    let r = (uuid::Uuid::new_v4().as_u128() % 41) as u32;
    let jittered = raw.mul_f64(0.8 + f64::from(r) / 100.0);
    chrono::Duration::from_std(jittered).unwrap_or(chrono::Duration::seconds(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut s = Settings::from_lookup(|_| None).unwrap().sender;
        s.retry_base = Duration::from_secs(10);
        s.retry_max = Duration::from_secs(100);
        let secs = |a| backoff(&s, a).num_milliseconds() as f64 / 1000.0;
        for _ in 0..50 {
            assert!((8.0..=12.0).contains(&secs(1)));
            assert!((16.0..=24.0).contains(&secs(2)));
            assert!((80.0..=120.0).contains(&secs(10)));
            assert!((80.0..=120.0).contains(&secs(1000)));
        }
    }
}
