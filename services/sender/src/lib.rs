//! The sender role: consumes due sends from RabbitMQ and turns each into exactly one email.
//!
//! For each message, in this order (`docs/send-path.md`):
//! 1. the Redis pause flag — paused: the step run goes back to SCHEDULED (held, not lost); and
//!    the sequence's sending rate — over it: the step run is due again in a later minute with
//!    room, moved into the send window;
//! 2. the ledger claim — only the worker that claims the key may send it, and every write that
//!    settles the send names the claim (a claim taken over meanwhile is not overwritten);
//! 3. the re-check of enrollment, sequence, lead and send window, read after the claim
//!    committed;
//! 4. a relay connection from the pool within [`CONNECTION_WAIT`] — else the claim is given
//!    back and the step is due again shortly, so a send never goes out long after its
//!    re-check and a pause or cancel never waits on sends queued behind a slow relay;
//! 5. the SMTP send, with the key's deterministic Message-ID; once the body is out, the claim
//!    is marked on the wire (batched, fenced), and only then does the final dot follow;
//! 6. one transaction recording the outcome and scheduling the next step; then the ack.
//!
//! Each sender registers itself as a worker and heartbeats (`pulse_shared::workers`); its claims
//! name it. If it dies, the sweep gives its unmarked claims back at once (sent again by another
//! sender) and turns only its marked ones, which may have reached the relay, into UNKNOWN.
//!
//! Workers are stateless. The sender never delays a message by holding it unacked: a retry is a
//! new due time in PostgreSQL. It never sends without a claim, and never releases a claim it
//! cannot prove unsent.

mod context;
#[cfg(feature = "failpoints")]
mod failpoints;
pub mod transport;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};

use chrono::Utc;
use futures::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions,
    },
    types::{AMQPValue, FieldTable},
};
use pulse_shared::{
    Settings,
    config::SenderSettings,
    db::{self, StoreError},
    health::{Health, supervise},
    ledger::{self, Claim, ClaimRequest, Fence, Release, Reply, SentRecord, Settled},
    messaging::{self, MessagingError, SendMessage},
    metrics::{Metrics, SendOutcome},
    pause::{Gate, PauseError},
    state::{EnrollmentStatus, SequenceStatus},
    telemetry,
    verp::{self, Purpose},
    workers,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use transport::{Outgoing, SendError, Session, Transport};

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
    #[error("{var} ({path}): {reason}")]
    File {
        var: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS setup for the SMTP relay: {0}")]
    Tls(String),
    /// The relay refused the connection's setup (certificate, STARTTLS, AUTH).
    #[error("SMTP relay: {0}")]
    Relay(#[from] transport::ConnectError),
}

pub use context::Context;
pub use pulse_shared::config::CONNECTION_WAIT;

/// Runs the sender until `shutdown` is cancelled, reconnecting to RabbitMQ with backoff and
/// reporting its session in `health`. On shutdown it stops taking new deliveries, finishes the
/// sends in progress, and closes the channel (unstarted prefetched deliveries go back to the
/// queue).
pub async fn run(
    settings: Settings,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), SenderError> {
    let db = db::pool_for(&settings, 2)?;
    let Some(worker) =
        workers::Registration::start_when_ready(&db, "sender", settings.owner_timeout, &shutdown)
            .await
    else {
        return Ok(());
    };
    let ctx = Context::build(&settings, metrics, worker.id).await?;
    supervise("sender", &health, &ctx.metrics, &shutdown, || {
        session(&settings, &ctx, &health, &shutdown)
    })
    .await;
    // Every send in progress has finished: nothing of this worker's is left to settle.
    worker.stop().await;
    tracing::info!("sender stopped");
    Ok(())
}

async fn session(
    settings: &Settings,
    ctx: &Context,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), SenderError> {
    // A relay that refuses TLS or AUTH keeps this sender unready (and says why), before it
    // consumes: no delivery is taken only to fail.
    if let Transport::Smtp(pool) = &ctx.transport {
        match pool.probe().await {
            Ok(()) => health.ready("smtp_relay"),
            Err(e) => {
                health.not_ready("smtp_relay", e.to_string());
                return Err(e.into());
            }
        }
    }
    let conn = messaging::connect_for(settings).await?;
    let channel = conn.create_channel().await.map_err(MessagingError::from)?;
    messaging::declare(&channel, &settings.queue, settings.queue_type).await?;
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
    health.ready("sender");
    tracing::info!(queue = %settings.queue, prefetch = ctx.settings.prefetch, "sender consuming");
    let result = consume(ctx, &channel, &settings.queue, consumer, shutdown).await;
    let _ = conn.close(200, "sender shutting down".into()).await;
    result
}

/// Hands each delivery to its own task, at most `concurrency` at once, until the consumer fails
/// or `shutdown` comes; then waits for every task. A send in progress is never dropped halfway
/// (that would leave its claim SENDING, an UNKNOWN for an operator): it finishes and records its
/// outcome even when the channel it came on is gone (the ack then fails and the broker's
/// redelivery is absorbed by the ledger).
async fn consume(
    ctx: &Context,
    channel: &Channel,
    queue: &str,
    mut consumer: lapin::Consumer,
    shutdown: &CancellationToken,
) -> Result<(), SenderError> {
    let permits = Arc::new(Semaphore::new(ctx.settings.concurrency));
    let mut tasks = JoinSet::new();
    let result = loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
            _ = shutdown.cancelled() => break Ok(()),
        };
        let next = tokio::select! {
            n = consumer.next() => n,
            _ = shutdown.cancelled() => break Ok(()),
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => break Err(MessagingError::from(e).into()),
            None => break Ok(()),
        };
        let (ctx, channel, queue) = (ctx.clone(), channel.clone(), queue.to_owned());
        tasks.spawn(async move {
            handle(&ctx, &channel, &queue, delivery).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    };
    while tasks.join_next().await.is_some() {}
    result
}

/// Why a message could not be handled.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    /// The message itself is unusable: dead-letter it.
    #[error("unusable message: {0}")]
    Poison(String),
    /// A dependency failed; the message is delivered again, a bounded number of times.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pause(#[from] PauseError),
}

/// Header counting the deliveries of a message that failed on a dependency.
const DELIVERY_HEADER: &str = "x-pulse-delivery";
/// Header saying why a message was dead-lettered.
const DEAD_REASON_HEADER: &str = "x-pulse-dead-reason";

fn delivery_number(delivery: &Delivery) -> u32 {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| match h.inner().get(DELIVERY_HEADER) {
            Some(AMQPValue::LongUInt(n)) => Some(*n),
            _ => None,
        })
        .unwrap_or(1)
}

async fn handle(ctx: &Context, channel: &Channel, queue: &str, delivery: Delivery) {
    ctx.metrics.consumed();
    // The send continues the trace the scheduler's publish put in the message.
    let span = tracing::info_span!("send", key = tracing::field::Empty);
    telemetry::continue_trace(
        &span,
        telemetry::amqp_traceparent(delivery.properties.headers().as_ref()).as_deref(),
    );
    let processed = process(ctx, &delivery.data).instrument(span).await;
    let settled = match processed {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
        Err(HandleError::Poison(reason)) => {
            ctx.metrics.dead_lettered();
            dead_letter(channel, queue, &delivery, &reason).await
        }
        Err(e) => {
            let n = delivery_number(&delivery);
            // Do not spin on a dependency that is down.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if n >= ctx.settings.max_deliveries {
                ctx.metrics.dead_lettered();
                dead_letter(
                    channel,
                    queue,
                    &delivery,
                    &format!("failed {n} deliveries: {e}"),
                )
                .await
            } else {
                tracing::warn!(error = %e, delivery = n, "send not handled; delivering the message again");
                redeliver(channel, queue, &delivery, n + 1).await
            }
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "ack failed; the broker will redeliver and the ledger absorbs it");
    }
}

/// Publishes a copy with the next delivery number, then acks the original; if the copy cannot be
/// published the original goes back to the queue. (Should both be lost with the broker, the
/// sweeper publishes the step again after the queued lease.)
async fn redeliver(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    n: u32,
) -> lapin::Result<()> {
    forward(
        channel,
        queue,
        delivery,
        (DELIVERY_HEADER, AMQPValue::LongUInt(n)),
        true,
    )
    .await
}

/// Moves a message to the dead-letter queue with the reason in a header, then acks it. If that
/// publish fails, the message is rejected and the queue's dead-letter exchange takes it.
async fn dead_letter(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    reason: &str,
) -> lapin::Result<()> {
    tracing::error!(%reason, "dead-lettering a message");
    let dead = messaging::dead_letter_queue(queue);
    forward(
        channel,
        &dead,
        delivery,
        (DEAD_REASON_HEADER, AMQPValue::LongString(reason.into())),
        false,
    )
    .await
}

/// Publishes a copy of `delivery` to `to` with one more header and acks the original; if the
/// copy cannot be published, nacks the original (`requeue` says where the broker puts it).
async fn forward(
    channel: &Channel,
    to: &str,
    delivery: &Delivery,
    (name, value): (&str, AMQPValue),
    requeue: bool,
) -> lapin::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    let props = delivery.properties.clone().with_headers(headers);
    let copied = channel
        .basic_publish(
            "".into(),
            to.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            props,
        )
        .await;
    match copied {
        Ok(_) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
        Err(_) => delivery
            .nack(BasicNackOptions {
                requeue,
                ..Default::default()
            })
            .await
            .map(|_| ()),
    }
}

/// Handles one due-send message. `Ok` means the message is done with and can be acked.
async fn process(ctx: &Context, data: &[u8]) -> Result<(), HandleError> {
    let msg: SendMessage =
        serde_json::from_slice(data).map_err(|e| HandleError::Poison(e.to_string()))?;
    let run = msg.step_run_id;
    tracing::Span::current().record("key", msg.key.as_str());
    let m = &ctx.metrics;

    if ctx.flags.gate(&ctx.db, msg.sequence_id).await? == Gate::Paused {
        ledger::hold(&ctx.db, run, None).await?;
        m.send(SendOutcome::HeldByPause);
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
        m.send(SendOutcome::RateLimited);
        tracing::debug!(step_run = %run, %slot, "sequence rate reached; step moved to a later minute");
        return Ok(());
    }

    let request = ClaimRequest {
        step_run: run,
        key: msg.key.clone(),
    };
    let (attempts, fence) = match ctx.batches.claims.call(request).await? {
        Claim::Claimed { attempts, claim } => (
            attempts,
            Fence {
                key: msg.key.clone(),
                claim,
            },
        ),
        Claim::BecameUnknown => {
            m.send(SendOutcome::Unknown);
            tracing::warn!(key = %msg.key, "a stale claim was found; its send is UNKNOWN");
            return Ok(());
        }
        other => {
            if matches!(other, Claim::InFlight | Claim::StaleMessage) {
                m.claim_conflict();
            }
            m.send(SendOutcome::DuplicateSuppressed);
            tracing::debug!(key = %msg.key, claim = ?other, "not sending: key not claimable");
            return Ok(());
        }
    };

    let snap = match ctx.batches.snapshots.call(run).await {
        Ok(snap) => snap,
        Err(e) => {
            // Nothing was sent: give the claim back so the next delivery can take it (retried
            // like an outcome, so a database restart does not turn it into an UNKNOWN).
            if let Err(undo) = record_with_retries(|| ledger::unclaim(&ctx.db, &fence)).await {
                tracing::warn!(key = %msg.key, error = %undo, "claim not given back; it becomes UNKNOWN after the lease");
            }
            return Err(e.into());
        }
    };
    let now = Utc::now();
    let refusal = if snap.sequence_status == SequenceStatus::Paused {
        Some((Release::Hold(None), "sequence paused".to_owned()))
    } else if snap.sequence_status != SequenceStatus::Active {
        Some((
            Release::Cancel,
            format!("sequence {}", snap.sequence_status.as_str().to_lowercase()),
        ))
    } else if snap.enrollment_status != EnrollmentStatus::Active {
        Some((
            Release::Cancel,
            format!(
                "enrollment {}",
                snap.enrollment_status.as_str().to_lowercase()
            ),
        ))
    } else if snap.lead_suppressed {
        Some((Release::Skip, "lead suppressed".to_owned()))
    } else {
        snap.followup
            .window_opens_after(now)
            .map(|opens| (Release::Hold(Some(opens)), "send window closed".to_owned()))
    };
    if let Some((how, reason)) = refusal {
        let settled =
            record_with_retries(|| ledger::release(&ctx.db, &fence, run, how, &reason)).await?;
        m.send(match how {
            Release::Hold(None) => SendOutcome::HeldByPause,
            Release::Hold(Some(_)) => SendOutcome::HeldByWindow,
            _ => SendOutcome::Released,
        });
        tracing::info!(key = %msg.key, %reason, ?settled, "send released unsent");
        return Ok(());
    }

    // A mailbox with a relay of its own sends through it; mail is signed with the mailbox's or
    // the workspace's DKIM key.
    let route = ctx.mailboxes.for_send(
        snap.mailbox.as_ref(),
        snap.workspace_dkim.as_ref(),
        &snap.from_addr,
        &ctx.transport,
    );
    // A bounded wait for a connection keeps the re-check valid for the send (see `transport`).
    let (session, dkim) = match route {
        Ok(route) => (
            route.transport.connect_within(CONNECTION_WAIT).await,
            route.dkim,
        ),
        // Nothing was sent: retried like a relay that cannot be reached.
        Err(reason) => (Some(Session::Smtp(Err(SendError::transient(reason)))), None),
    };
    let Some(session) = session else {
        let retry_at = Utc::now() + chrono::Duration::seconds(1);
        let reason = "no relay connection free in time; due again shortly";
        let settled = record_with_retries(|| {
            ledger::release(&ctx.db, &fence, run, Release::Hold(Some(retry_at)), reason)
        })
        .await?;
        m.send(SendOutcome::PoolBusy);
        tracing::debug!(key = %msg.key, ?settled, "{reason}");
        return Ok(());
    };
    let followup = snap.followup;
    // With a bounce domain, the envelope sender and the unsubscribe mailto name this send.
    let tagged = |purpose| {
        let domain = ctx.bounce_domain.as_deref()?;
        verp::tagged(&ctx.unsubscribe, purpose, &snap.message_id, domain)
    };
    let return_path = tagged(Purpose::Bounce);
    let unsubscribe_mailto = tagged(Purpose::Unsubscribe);
    let mail = Outgoing {
        workspace: msg.workspace_id,
        from: snap.from_addr,
        to: snap.to_addr,
        subject: snap.subject,
        body: snap.body,
        html: snap.html,
        reply_to: snap.reply_to,
        in_reply_to: snap.in_reply_to,
        references: snap.references,
        message_id: snap.message_id,
        idempotency: ctx
            .settings
            .idempotency_header
            .clone()
            .map(|name| (name, msg.key.clone())),
        dkim,
        list_unsubscribe: Some(
            ctx.unsubscribe
                .list_unsubscribe(snap.unsubscribe, unsubscribe_mailto.as_deref()),
        ),
        return_path,
    };
    // The wire mark: only a claim that still holds its key once the body is out may send the
    // final dot.
    let on_wire = async {
        match ctx.batches.wires.call(fence.clone()).await {
            Ok(Settled::Recorded) => true,
            Ok(Settled::ClaimLost) => false,
            Err(e) => {
                tracing::warn!(key = %msg.key, error = %e, "the claim could not be marked on the wire; not sending");
                false
            }
        }
    };
    let started = Instant::now();
    let answer = session
        .send(&mail, on_wire)
        .instrument(tracing::info_span!("smtp"))
        .await;
    m.smtp_answered(started.elapsed().as_secs_f64());
    let (settled, outcome) = match answer {
        Ok(reply) => {
            #[cfg(feature = "failpoints")]
            failpoints::crash_after_smtp();
            let sent = SentRecord {
                fence: fence.clone(),
                step_run: run,
                reply: reply.clone(),
                at: Utc::now(),
                followup,
            };
            let settled = record_with_retries(|| ctx.batches.sent.call(sent.clone())).await?;
            tracing::info!(key = %msg.key, code = ?reply.code, "sent");
            (settled, SendOutcome::Sent)
        }
        Err(SendError::Transient(reply)) if attempts < ctx.settings.max_attempts => {
            let wait = backoff(&ctx.settings, attempts);
            let retry_at = Utc::now() + wait;
            let settled = record_with_retries(|| {
                ledger::record_deferred(&ctx.db, &fence, run, &reply, retry_at)
            })
            .await?;
            tracing::warn!(key = %msg.key, attempts, retry_in_s = wait.num_seconds(), reply = %reply.text, "send deferred");
            (settled, SendOutcome::Retried)
        }
        Err(SendError::Transient(reply)) => {
            let reply = Reply {
                code: reply.code,
                text: format!("gave up after {attempts} attempts: {}", reply.text),
            };
            let settled =
                record_with_retries(|| ledger::record_failed(&ctx.db, &fence, run, &reply)).await?;
            tracing::warn!(key = %msg.key, attempts, reply = %reply.text, "send failed");
            (settled, SendOutcome::Failed)
        }
        Err(SendError::Unknown(reply)) => {
            let settled =
                record_with_retries(|| ledger::record_unknown(&ctx.db, &fence, run, &reply))
                    .await?;
            tracing::warn!(key = %msg.key, reply = %reply.text, "send outcome unknown; left for an operator");
            (settled, SendOutcome::Unknown)
        }
        Err(SendError::Withheld) => {
            // Nothing went out. A claim that was taken meanwhile is someone else's (the release
            // changes nothing); one that is still ours goes back, due again shortly.
            let retry_at = Utc::now() + chrono::Duration::seconds(1);
            let reason = "not sent: the claim could not be marked on the wire; due again shortly";
            let settled = record_with_retries(|| {
                ledger::release(&ctx.db, &fence, run, Release::Hold(Some(retry_at)), reason)
            })
            .await?;
            tracing::info!(key = %msg.key, ?settled, "{reason}");
            (Settled::Recorded, SendOutcome::Released)
        }
        Err(SendError::Permanent(reply)) => {
            let settled =
                record_with_retries(|| ledger::record_failed(&ctx.db, &fence, run, &reply)).await?;
            tracing::warn!(key = %msg.key, reply = %reply.text, "send failed permanently");
            (settled, SendOutcome::Failed)
        }
    };
    m.send(outcome);
    if settled == Settled::ClaimLost {
        m.claim_conflict();
        tracing::warn!(key = %msg.key, ?outcome, "the claim expired and was taken over before this outcome was recorded; it changed nothing");
    }
    Ok(())
}

/// Recording an outcome after the relay answered is the one write that must not be lost to a
/// passing database error, so it is retried for a while before giving up (the claim then stays
/// SENDING and becomes UNKNOWN after the lease).
async fn record_with_retries<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match write().await {
            Ok(done) => return Ok(done),
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
