//! What the machine itself allows, measured in the same run as Pulse: a bare lapin
//! publish-with-confirms and consume-with-ack loop on the broker, and a bare SMTP client
//! (Pulse's TCP_NODELAY transport, 32 connections) against the bench's sink.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use lapin::{BasicProperties, options::*, types::FieldTable};
use pulse_sender::transport::{Outgoing, SmtpPool, Transport};
use pulse_shared::{Settings, messaging, smtp_url::SmtpUrl};
use pulse_tests::SmtpServer;
use uuid::Uuid;

pub(crate) async fn amqp_reference(s: &Settings, n: usize) -> anyhow::Result<(f64, f64)> {
    let conn = messaging::connect(&s.amqp_url).await?;
    let ch = conn.create_channel().await?;
    let queue = format!("{}.reference", s.queue);
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let payload = vec![b'x'; 300];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?,
        );
        if pending.len() == 1000 || i + 1 == n {
            for c in futures::future::try_join_all(pending.drain(..)).await? {
                anyhow::ensure!(c.is_ack(), "reference publish nacked");
            }
        }
    }
    let publish = n as f64 / started.elapsed().as_secs_f64();
    ch.basic_qos(500, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut got = 0;
    while got < n {
        let d = consumer.next().await.context("consumer ended")??;
        d.ack(BasicAckOptions::default()).await?;
        got += 1;
    }
    let consume = n as f64 / started.elapsed().as_secs_f64();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "reference done".into()).await?;
    Ok((publish, consume))
}

pub(crate) async fn smtp_reference(smtp: &SmtpServer, n: usize) -> anyhow::Result<f64> {
    let before = smtp.count();
    let relay = SmtpUrl::plain(smtp.addr.ip().to_string(), smtp.addr.port());
    let pool = Transport::Smtp(Arc::new(SmtpPool::new(
        relay,
        32,
        Duration::from_secs(30),
        None,
    )?));
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..n)
        .map(|i| {
            let pool = pool.clone();
            async move {
                let mail = Outgoing {
                    workspace: Uuid::nil(),
                    from: "ref@example.com".into(),
                    to: format!("ref{i}@example.com"),
                    subject: "reference".into(),
                    body: "reference".into(),
                    message_id: format!("<ref.{i}@example.com>"),
                    ..Default::default()
                };
                pool.send(&mail)
                    .await
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(smtp.count() == before + n, "the reference lost messages");
    smtp.clear();
    Ok(per_s)
}
