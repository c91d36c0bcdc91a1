//! The sender role: consumes due sends from RabbitMQ and turns each into exactly one email.
//!
//! For each message, in this order (`docs/send-path.md`):
//! 1. the Redis pause flag — paused: the step run goes back to SCHEDULED (held, not lost);
//!    Redis unreachable: held too, due again in a few seconds (fail closed);
//! 2. the snapshot: the run's content, the state of its enrollment, sequence and lead, the send
//!    window and the sending limits that apply. A refusal settles the run alone: nothing is
//!    claimed before the gate. A step past its `max_lateness` (or that a window or a limit would
//!    hold past it) is skipped and its enrollment moves on. A step that would repeat a recent
//!    send of the same step to the same lead pauses the sequence instead (the `repeats`
//!    guardrail) and is held;
//! 3. a relay connection from the pool within [`CONNECTION_WAIT`] — else the step is due again
//!    shortly;
//! 4. a slot under every sending limit (`pulse_shared::limits`) — else the connection goes back
//!    unused and the step is due again when its slot frees (after the waiting sends of its
//!    priority or higher), with the reason as its note;
//! 5. the SMTP transaction, with the key's deterministic Message-ID, up to the body; then **the
//!    gate**: with the body out and the final dot held, the ledger claim (batched, marked on the
//!    wire), and after it committed, the re-check of the run's state. Before the claim, the
//!    sliding limits' spacing is applied again to the final dots (the exchange before the dot
//!    takes longer for some sends than for others, so slots spaced when taken can reach the
//!    relay bunched). Only a claim that passes lets the dot follow; any other verdict sends no
//!    dot, so the relay accepts nothing;
//! 6. one transaction recording the outcome and scheduling the next step; then the ack. A
//!    failure before the gate (no connection, MAIL/RCPT/DATA refused) records the run as
//!    deferred or failed with no claim: nothing reached the relay. A send that failed for good
//!    checks the sequence's guardrails, which may pause it.
//!
//! So a claim exists only for a message the relay may have: if its sender dies, the sweep turns
//! it into UNKNOWN, and nothing else needs an operator. A sender that dies before its gate
//! leaves only an unacked message, which the broker delivers again.
//!
//! Each sender registers itself as a worker and heartbeats (`pulse_shared::workers`); its claims
//! name it. Workers are stateless. The sender never delays a message by holding it unacked: a
//! retry is a new due time in PostgreSQL. It never sends without a claim, and never releases a
//! claim it cannot prove unsent.

mod context;
mod delivery;
mod outcome;

use delivery::handle;
use outcome::{
    check_guardrails, failed_span, gave_up, hold_repeat, hold_without_redis, record_before_gate,
    record_with_retries, settle_closed_gate, skip_late, unsent_outcome,
};
#[cfg(feature = "failpoints")]
mod failpoints;
pub mod transport;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::{
    Channel,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use pulse_shared::{
    Settings,
    config::SenderSettings,
    db::{self, StoreError},
    guardrails,
    health::{Health, supervise},
    ledger::{self, Claim, ClaimRequest, Fence, Gated, Release, SentRecord, Settled},
    limits::{self, Period, SendLimits, Taken},
    messaging::{self, MessagingError, SendMessage},
    metrics::{Metrics, SendOutcome},
    pause::{Gate, PauseError},
    schedule,
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
    let channel = messaging::rpc("channel.open", conn.create_channel()).await?;
    messaging::declare(&channel, &settings.queue, settings.queue_type).await?;
    messaging::rpc(
        "basic.qos",
        channel.basic_qos(ctx.settings.prefetch, BasicQosOptions::default()),
    )
    .await?;
    let consumer = messaging::rpc(
        "basic.consume",
        channel.basic_consume(
            settings.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    health.ready("sender");
    tracing::info!(queue = %settings.queue, prefetch = ctx.settings.prefetch, "sender consuming");
    let result = consume(ctx, &channel, &settings.queue, consumer, shutdown).await;
    let _ = messaging::rpc(
        "connection.close",
        conn.close(200, "sender shutting down".into()),
    )
    .await;
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
            // Not a shutdown (that is checked above): the connection went away without an error
            // on the stream. Start a new session, as for any broker failure.
            None => break Err(MessagingError::ConsumerEnded.into()),
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

/// What the gate decided for one send ([`open_gate`]).
enum Verdict {
    /// Claimed and re-checked: the final dot follows, and every outcome names this claim.
    Open(Fence),
    /// Claimed, but the re-check refused: the claim is released, no dot.
    Refused {
        fence: Fence,
        how: Release,
        reason: String,
    },
    /// Claimed, but the re-check could not be read: the claim is given back, no dot, and the
    /// message is delivered again.
    Unchecked { fence: Fence, error: String },
    /// Not claimed: another delivery owns the key, or it is settled. No dot.
    NotClaimed(Claim),
    /// The claim statement failed: nothing was claimed, no dot; delivered again.
    Failed(StoreError),
    /// Not claimed: the sending limits' spacing at the gate says the dot would come too soon
    /// after the last ones (the time since the slot was taken varied). No dot; due again when
    /// the gate's slot frees.
    Spaced(Duration),
    /// Not claimed: Redis could not be reached for the gate's spacing. No dot; held (fail
    /// closed).
    NoRedis(PauseError),
}

/// The gate: the body is out and the final dot held. Passes the sending limits' spacing at the
/// gate ([`SendLimits::pass_gate`]), claims the key (on the wire) and re-reads the run's state
/// after the claim committed ([`ledger::gate_many`]); only an open verdict lets the dot follow.
async fn open_gate(ctx: &Context, msg: &SendMessage, limits: &SendLimits) -> Verdict {
    match limits.pass_gate(&ctx.flags).await {
        Ok(None) => {}
        Ok(Some(after)) => return Verdict::Spaced(after),
        Err(e) => return Verdict::NoRedis(e),
    }
    let request = ClaimRequest {
        step_run: msg.step_run_id,
        key: msg.key.clone(),
    };
    match ctx.batches.gates.call(request).await {
        Ok(Gated::Claimed { fence, status }) => match status.refusal() {
            None => Verdict::Open(fence),
            Some((how, reason)) => Verdict::Refused { fence, how, reason },
        },
        Ok(Gated::Unchecked { fence, error }) => Verdict::Unchecked { fence, error },
        Ok(Gated::NotClaimed(claim)) => Verdict::NotClaimed(claim),
        Err(e) => Verdict::Failed(e),
    }
}

/// Handles one due-send message. `Ok` means the message is done with and can be acked.
async fn process(ctx: &Context, data: &[u8]) -> Result<(), HandleError> {
    let msg: SendMessage =
        serde_json::from_slice(data).map_err(|e| HandleError::Poison(e.to_string()))?;
    let run = msg.step_run_id;
    tracing::Span::current().record("key", msg.key.as_str());
    let m = &ctx.metrics;

    // Redis unreachable: hold the step (fail closed) and come back when it may be up again.
    let gate = match ctx.flags.gate(&ctx.db, msg.sequence_id).await {
        Err(e @ PauseError::Redis(_)) => return hold_without_redis(ctx, run, &e).await,
        gate => gate?,
    };
    if gate == Gate::Paused {
        ledger::hold(&ctx.db, run, None).await?;
        m.send(SendOutcome::HeldByPause);
        tracing::debug!(step_run = %run, "sequence paused; step held");
        return Ok(());
    }

    // Nothing is claimed yet: a refusal here settles the run alone.
    let snap = ctx.batches.snapshots.call(run).await?;
    let now = Utc::now();
    // The staleness guard: a step that cannot go out by its step's `max_lateness` is skipped,
    // and its enrollment moves on.
    let late = |at: DateTime<Utc>| {
        snap.late_after
            .as_ref()
            .filter(|(_, by)| at > *by)
            .map(|(lateness, by)| schedule::late_reason(lateness, *by))
    };
    let refusal = snap.status.refusal().or_else(|| {
        snap.followup
            .window_opens_after(now)
            .map(|opens| (Release::Hold(Some(opens)), "send window closed".to_owned()))
    });
    if let Some((how, reason)) = refusal {
        if let Release::Hold(Some(until)) = how
            && let Some(late) = late(until)
        {
            return skip_late(ctx, run, &late).await;
        }
        record_with_retries(|| ledger::settle_unsent(&ctx.db, run, how, Some(&reason))).await?;
        m.send(unsent_outcome(how));
        tracing::debug!(key = %msg.key, %reason, "not sending");
        return Ok(());
    }

    // The `repeats` guardrail: this step went to this lead recently under another enrollment.
    // The sequence pauses, and the repeat is held with the other paused steps, never sent.
    if let Some(earlier) = &snap.repeat_of {
        let attempt = guardrails::repeats::Attempt {
            sequence: msg.sequence_id,
            key: &msg.key,
            lead: &snap.to_addr,
            earlier,
        };
        return hold_repeat(ctx, run, &attempt).await;
    }

    if let Some(late) = late(now) {
        return skip_late(ctx, run, &late).await;
    }

    // A mailbox with a relay of its own sends through it; mail is signed with the mailbox's or
    // the workspace's DKIM key.
    let route = ctx.mailboxes.for_send(
        snap.mailbox.as_ref(),
        snap.workspace_dkim.as_ref(),
        &snap.from_addr,
        &ctx.transport,
    );
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
        record_with_retries(|| {
            ledger::settle_unsent(&ctx.db, run, Release::Hold(Some(retry_at)), Some(reason))
        })
        .await?;
        m.send(SendOutcome::PoolBusy);
        tracing::debug!(key = %msg.key, "{reason}");
        return Ok(());
    };
    // A slot under every sending limit that applies, or the step waits for its slot (and the
    // connection goes back to the pool unused). Taken once the connection is held, so that the
    // time from slot to final dot is the SMTP exchange and the gate, not a wait for the pool.
    let priority = limits::aged_priority(snap.priority, now - snap.first_due, ctx.priority_aging);
    match snap.limits.take(&ctx.flags, now, priority).await {
        Ok(Taken::Go) => {}
        Ok(Taken::Wait { after, binding }) => {
            let limit = &snap.limits.list[binding];
            let mut until = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            if limit.rule.period == Period::Day {
                // Spread the day's waiting sends over the first minute after midnight.
                until += chrono::Duration::milliseconds((run.as_u128() % 60_000) as i64);
            }
            if let Some(late) = late(until) {
                return skip_late(ctx, run, &late).await;
            }
            let reason = limit.reason(until);
            record_with_retries(|| {
                ledger::settle_unsent(&ctx.db, run, Release::Hold(Some(until)), Some(&reason))
            })
            .await?;
            m.send(SendOutcome::RateLimited);
            tracing::debug!(step_run = %run, %until, %reason, "sending limit reached; step waits for its slot");
            return Ok(());
        }
        Err(e @ PauseError::Redis(_)) => return hold_without_redis(ctx, run, &e).await,
        Err(e) => return Err(e.into()),
    }

    let attempts = snap.attempts + 1;
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
    // The gate: once the body is out, the key is claimed and the run re-checked; only an open
    // verdict lets the final dot follow.
    let verdict = std::sync::OnceLock::new();
    let on_wire = async {
        let v = open_gate(ctx, &msg, &snap.limits).await;
        let open = matches!(v, Verdict::Open(_));
        let _ = verdict.set(v);
        open
    };
    let started = Instant::now();
    let smtp_span = tracing::info_span!(
        "smtp",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
    );
    let answer = session
        .send(&mail, on_wire)
        .instrument(smtp_span.clone())
        .await;
    // A shut gate is a decision, not a failure; the reply text is redacted
    // (`Reply::from_relay`): no address leaves in a span.
    if let Err(e) = &answer
        && !matches!(e, SendError::Withheld)
    {
        smtp_span.record("otel.status_code", "ERROR");
        smtp_span.record("otel.status_message", e.to_string());
    }
    m.smtp_answered(started.elapsed().as_secs_f64());
    let fence = match verdict.into_inner() {
        Some(Verdict::Open(fence)) => fence,
        Some(closed) => return settle_closed_gate(ctx, &msg, closed).await,
        // The gate was never reached: nothing went to the relay and nothing was claimed.
        None => return record_before_gate(ctx, &msg, answer, attempts).await,
    };
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
            let reply = gave_up(reply, attempts);
            let settled =
                record_with_retries(|| ledger::record_failed(&ctx.db, &fence, run, &reply)).await?;
            tracing::warn!(key = %msg.key, attempts, reply = %reply.text, "send failed");
            (settled, SendOutcome::Failed)
        }
        Err(SendError::Withheld) => {
            // The transport shut the gate after all: no dot went out. The run is due again.
            let retry_at = Utc::now() + chrono::Duration::seconds(1);
            let reason = "not sent: the gate was shut before the final dot; due again shortly";
            let settled = record_with_retries(|| {
                ledger::release(&ctx.db, &fence, run, Release::Hold(Some(retry_at)), reason)
            })
            .await?;
            tracing::info!(key = %msg.key, ?settled, "{reason}");
            (settled, SendOutcome::Released)
        }
        Err(SendError::Unknown(reply)) => {
            let settled =
                record_with_retries(|| ledger::record_unknown(&ctx.db, &fence, run, &reply))
                    .await?;
            tracing::warn!(key = %msg.key, reply = %reply.text, "send outcome unknown; left for an operator");
            (settled, SendOutcome::Unknown)
        }
        Err(SendError::Permanent(reply)) => {
            let settled =
                record_with_retries(|| ledger::record_failed(&ctx.db, &fence, run, &reply)).await?;
            tracing::warn!(key = %msg.key, reply = %reply.text, "send failed permanently");
            (settled, SendOutcome::Failed)
        }
    };
    m.send(outcome);
    failed_span(outcome);
    if outcome == SendOutcome::Failed {
        check_guardrails(ctx, msg.sequence_id).await;
    }
    if settled == Settled::ClaimLost {
        m.claim_conflict();
        tracing::warn!(key = %msg.key, ?outcome, "the claim expired and was taken over before this outcome was recorded; it changed nothing");
    }
    Ok(())
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

    use std::time::Duration;

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
