//! Measures SMTP sending rate against a local SMTP server, in one run: stock lettre (its pooled
//! `AsyncSmtpTransport`, sockets without TCP_NODELAY) versus Pulse's transport (lettre over
//! sockets with TCP_NODELAY). Prints messages per second and the ratio.
//!
//! `cargo run --release -p pulse-tests --bin smtp_bench -- [messages] [connections]`

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use pulse_sender::transport::{Outgoing, SmtpPool, Transport};
use pulse_shared::smtp_url::SmtpUrl;
use pulse_tests::SmtpServer;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let connections: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);
    println!("{messages} messages, {connections} connections, loopback SMTP server");

    let server = SmtpServer::start().await?;
    let stock =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.addr.ip().to_string())
            .port(server.addr.port())
            .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(connections as u32))
            .build();
    let stock_rate = measure(messages, connections, |i| {
        let stock = stock.clone();
        async move {
            let m = Message::builder()
                .from("bench@example.com".parse()?)
                .to(format!("lead{i}@example.com").parse()?)
                .subject("bench")
                .body(String::from("hello"))?;
            stock.send(m).await?;
            Ok(())
        }
    })
    .await?;
    println!("stock lettre (no TCP_NODELAY): {stock_rate:>8.0} msg/s");

    let relay = SmtpUrl::plain(server.addr.ip().to_string(), server.addr.port());
    let pulse = Transport::Smtp(std::sync::Arc::new(SmtpPool::new(
        relay,
        connections,
        Duration::from_secs(30),
        None,
    )?));
    let pulse_rate = measure(messages, connections, |i| {
        let pulse = pulse.clone();
        async move {
            let mail = Outgoing {
                workspace: Uuid::nil(),
                from: "bench@example.com".into(),
                to: format!("lead{i}@example.com"),
                subject: "bench".into(),
                body: "hello".into(),
                message_id: format!("<bench.{i}@example.com>"),
                ..Default::default()
            };
            pulse
                .send(&mail)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await?;
    println!("pulse transport (TCP_NODELAY): {pulse_rate:>8.0} msg/s");
    println!("ratio: {:.1}x", pulse_rate / stock_rate);
    anyhow::ensure!(
        server.count() == 2 * messages,
        "server received {} of {}",
        server.count(),
        2 * messages
    );
    Ok(())
}

async fn measure<F, Fut>(messages: usize, concurrency: usize, send: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..messages)
        .map(send)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    for r in results {
        r?;
    }
    Ok(messages as f64 / elapsed.as_secs_f64())
}
