//! How a send that did not go out cleanly is settled: refused before sending (held for Redis,
//! skipped as too late), its gate shut, failed before the gate (nothing reached the relay), and
//! the retried write every outcome is recorded with. After a send failed for good, the
//! sequence's guardrails are checked. It never sends.

use std::time::Duration;

use chrono::Utc;
use pulse_shared::{
    db::StoreError,
    guardrails,
    ledger::{self, Claim, Failure, Release, Reply},
    messaging::SendMessage,
    metrics::SendOutcome,
    pause::PauseError,
};

use crate::{Context, HandleError, Verdict, backoff, transport::SendError};

/// The metric outcome of a run that is not sent, by what becomes of it.
pub(crate) fn unsent_outcome(how: Release) -> SendOutcome {
    match how {
        Release::Leave => SendOutcome::DuplicateSuppressed,
        Release::Hold(None) => SendOutcome::HeldByPause,
        Release::Hold(Some(_)) => SendOutcome::HeldByWindow,
        Release::Cancel | Release::Skip => SendOutcome::Released,
    }
}

/// How long a step waits when Redis cannot be reached, before it is tried again.
pub(crate) const REDIS_DOWN_RETRY: chrono::Duration = chrono::Duration::seconds(5);

/// Redis is down: the pause flag or the sending limits cannot be checked, so nothing is sent
/// (fail closed). The step goes back to SCHEDULED, due again shortly; the message is done with.
pub(crate) async fn hold_without_redis(
    ctx: &Context,
    run: uuid::Uuid,
    error: &PauseError,
) -> Result<(), HandleError> {
    let reason = "Redis unreachable: pause flags and sending limits cannot be checked; held";
    let until = Utc::now() + REDIS_DOWN_RETRY;
    record_with_retries(|| {
        ledger::settle_unsent(&ctx.db, run, Release::Hold(Some(until)), Some(reason))
    })
    .await?;
    ctx.metrics.send(SendOutcome::HeldWithoutRedis);
    tracing::warn!(step_run = %run, %error, "redis unreachable; step held");
    Ok(())
}

/// Skips a step its staleness guard says is too late, moving its enrollment on.
pub(crate) async fn skip_late(
    ctx: &Context,
    run: uuid::Uuid,
    reason: &str,
) -> Result<(), HandleError> {
    record_with_retries(|| ledger::skip_late(&ctx.db, run, reason)).await?;
    ctx.metrics.send(SendOutcome::SkippedLate);
    tracing::info!(step_run = %run, %reason, "step skipped: too late");
    Ok(())
}

/// Marks the current `send` span as failed when the send ended FAILED or UNKNOWN.
pub(crate) fn failed_span(outcome: SendOutcome) {
    if matches!(outcome, SendOutcome::Failed | SendOutcome::Unknown) {
        let span = tracing::Span::current();
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", outcome.as_str());
    }
}

/// A transient failure that used up the attempts, as the reply that fails the run.
pub(crate) fn gave_up(reply: Reply, attempts: i32) -> Reply {
    Reply {
        code: reply.code,
        text: format!("gave up after {attempts} attempts: {}", reply.text),
    }
}

/// Settles a send whose gate stayed shut (no dot was sent): a refused claim is released and its
/// run settled as the re-check said; an unreadable re-check gives the claim back and the message
/// is delivered again; a key another delivery owns is left to it.
pub(crate) async fn settle_closed_gate(
    ctx: &Context,
    msg: &SendMessage,
    verdict: Verdict,
) -> Result<(), HandleError> {
    let (m, run) = (&ctx.metrics, msg.step_run_id);
    match verdict {
        Verdict::Open(_) => Ok(()),
        Verdict::Refused { fence, how, reason } => {
            let settled =
                record_with_retries(|| ledger::release(&ctx.db, &fence, run, how, &reason)).await?;
            m.send(unsent_outcome(how));
            tracing::info!(key = %msg.key, %reason, ?settled, "refused at the gate; nothing sent");
            Ok(())
        }
        Verdict::Unchecked { fence, error } => {
            if let Err(undo) = record_with_retries(|| ledger::unclaim(&ctx.db, &fence)).await {
                tracing::warn!(key = %msg.key, error = %undo, "claim not given back; it becomes UNKNOWN after the lease");
            }
            Err(StoreError::Corrupt(format!("the gate's re-check failed: {error}")).into())
        }
        Verdict::NotClaimed(Claim::BecameUnknown) => {
            m.send(SendOutcome::Unknown);
            failed_span(SendOutcome::Unknown);
            tracing::warn!(key = %msg.key, "a stale claim was found; its send is UNKNOWN");
            Ok(())
        }
        Verdict::NotClaimed(claim) => {
            if matches!(claim, Claim::InFlight | Claim::StaleMessage) {
                m.claim_conflict();
            }
            m.send(SendOutcome::DuplicateSuppressed);
            tracing::debug!(key = %msg.key, ?claim, "not sending: key not claimable");
            Ok(())
        }
        Verdict::Failed(e) => Err(e.into()),
        Verdict::Spaced(after) => {
            let until = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            let reason = "not sent: too soon after the last sends under a sending limit when the final dot would follow; due again when that frees";
            record_with_retries(|| {
                ledger::settle_unsent(&ctx.db, run, Release::Hold(Some(until)), Some(reason))
            })
            .await?;
            m.send(SendOutcome::RateLimited);
            tracing::debug!(key = %msg.key, %until, "{reason}");
            Ok(())
        }
        Verdict::NoRedis(e) => hold_without_redis(ctx, run, &e).await,
    }
}

/// Records a send that failed before its gate: nothing reached the relay and nothing was
/// claimed, so the run settles alone ([`ledger::record_unclaimed`]).
pub(crate) async fn record_before_gate(
    ctx: &Context,
    msg: &SendMessage,
    answer: Result<Reply, SendError>,
    attempts: i32,
) -> Result<(), HandleError> {
    let transient = match answer {
        Err(SendError::Transient(reply)) => reply,
        // Neither can happen before the gate (both need it); nothing went out either way.
        Err(SendError::Unknown(reply)) => reply,
        Err(SendError::Withheld) => Reply::from_relay(None, "not sent: the gate was never reached"),
        Err(SendError::Permanent(reply)) => {
            return record_unclaimed(ctx, msg, reply, Failure::Failed, SendOutcome::Failed).await;
        }
        Ok(reply) => {
            // A relay cannot accept a message whose dot was never sent; the transport's promise.
            tracing::error!(key = %msg.key, code = ?reply.code, "a send was answered without passing its gate; left for the queued lease");
            return Ok(());
        }
    };
    if attempts < ctx.settings.max_attempts {
        let retry_at = Utc::now() + backoff(&ctx.settings, attempts);
        record_unclaimed(
            ctx,
            msg,
            transient,
            Failure::Deferred(retry_at),
            SendOutcome::Retried,
        )
        .await
    } else {
        let reply = gave_up(transient, attempts);
        record_unclaimed(ctx, msg, reply, Failure::Failed, SendOutcome::Failed).await
    }
}

pub(crate) async fn record_unclaimed(
    ctx: &Context,
    msg: &SendMessage,
    reply: Reply,
    failure: Failure,
    outcome: SendOutcome,
) -> Result<(), HandleError> {
    let applied = record_with_retries(|| {
        ledger::record_unclaimed(&ctx.db, msg.step_run_id, &msg.key, &reply, failure)
    })
    .await?;
    ctx.metrics.send(outcome);
    failed_span(outcome);
    tracing::warn!(key = %msg.key, applied, reply = %reply.text, ?failure, "not sent: the relay or the connection failed before the message");
    if applied && outcome == SendOutcome::Failed {
        check_guardrails(ctx, msg.sequence_id).await;
    }
    Ok(())
}

/// After a send failed for good: the sequence pauses itself if its guardrail says so. A check
/// that cannot run is logged; the next failure checks again.
pub(crate) async fn check_guardrails(ctx: &Context, sequence: uuid::Uuid) {
    match guardrails::after_failure(&ctx.db, &ctx.flags, sequence).await {
        Ok(Some(rule)) => ctx.metrics.guardrail_tripped(rule),
        Ok(None) => {}
        Err(e) => tracing::warn!(%sequence, error = %e, "guardrail check failed"),
    }
}

/// A send that would repeat a recent send of its step to its lead (the `repeats` guardrail):
/// the sequence pauses and the step is held like every paused step. Nothing was claimed; a
/// trip that cannot be written sends nothing either (the message is delivered again).
pub(crate) async fn hold_repeat(
    ctx: &Context,
    run: uuid::Uuid,
    attempt: &guardrails::repeats::Attempt<'_>,
) -> Result<(), HandleError> {
    if guardrails::repeats::tripped(&ctx.db, &ctx.flags, attempt).await? {
        ctx.metrics.guardrail_tripped("repeats");
    }
    ledger::hold(&ctx.db, run, None).await?;
    ctx.metrics.send(SendOutcome::HeldByPause);
    tracing::warn!(key = %attempt.key, earlier = %attempt.earlier.key, "the same step went to this lead recently; sequence paused, step held");
    Ok(())
}

/// Recording an outcome after the relay answered is the one write that must not be lost to a
/// passing database error, so it is retried for a while before giving up (the claim then stays
/// SENDING and becomes UNKNOWN after the lease).
pub(crate) async fn record_with_retries<T, F, Fut>(mut write: F) -> Result<T, StoreError>
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
