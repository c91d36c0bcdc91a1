//! One RabbitMQ delivery, from arrival to ack: it runs the send ([`crate::process`]) in a
//! consumer span that continues the scheduler's trace, then acks it, delivers it again (a
//! dependency failed, a bounded number of times) or moves it to the dead-letter queue (unusable,
//! or out of deliveries). It never holds a message unacked as a delay.

use std::time::Duration;

use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions},
    types::AMQPValue,
};
use pulse_shared::{messaging, telemetry};
use tracing::Instrument;

use crate::{Context, HandleError, process};

/// Header counting the deliveries of a message that failed on a dependency.
pub(crate) const DELIVERY_HEADER: &str = "x-pulse-delivery";
/// Header saying why a message was dead-lettered.
pub(crate) const DEAD_REASON_HEADER: &str = "x-pulse-dead-reason";

pub(crate) fn delivery_number(delivery: &Delivery) -> u32 {
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

pub(crate) async fn handle(ctx: &Context, channel: &Channel, queue: &str, delivery: Delivery) {
    ctx.metrics.consumed();
    // The send continues the trace the scheduler's publish put in the message.
    // An OpenTelemetry consumer span; failed and UNKNOWN sends set its status to ERROR.
    let span = tracing::info_span!(
        "send",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation = "process",
        messaging.destination.name = queue,
        key = tracing::field::Empty,
    );
    telemetry::continue_trace(
        &span,
        telemetry::amqp_traceparent(delivery.properties.headers().as_ref()).as_deref(),
    );
    let processed = process(ctx, &delivery.data).instrument(span.clone()).await;
    if let Err(e) = &processed {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", e.to_string());
    }
    // Bounded: an ack on a connection that just dropped may never be answered (`messaging::rpc`).
    let settled = messaging::rpc("basic.ack", async { match processed {
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
    }})
    .await;
    if let Err(e) = settled {
        tracing::warn!(error = %e, "ack failed; the broker will redeliver and the ledger absorbs it");
    }
}

/// Publishes a copy with the next delivery number, then acks the original; if the copy cannot be
/// published the original goes back to the queue. (Should both be lost with the broker, the
/// sweeper publishes the step again after the queued lease.)
pub(crate) async fn redeliver(
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
pub(crate) async fn dead_letter(
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
pub(crate) async fn forward(
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
