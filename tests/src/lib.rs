//! Test kit for Pulse: an isolated environment per test (its own PostgreSQL database, RabbitMQ
//! queue, Redis key prefix and API key) running the real roles in-process through
//! `pulse::serve`, plus a real SMTP server. Tests using it can run in parallel.

pub mod browser;
pub mod proxy;
pub mod smtp;
pub mod tls;

use std::time::Duration;

use anyhow::Context;
use pulse::Role;
use pulse_shared::Settings;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use smtp::SmtpServer;

/// The server all test databases are created on.
pub fn admin_url() -> String {
    std::env::var("PULSE_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Base settings for an isolated test: unique database, queue, Redis prefix and API key.
pub fn isolated_settings(tag: &str) -> Settings {
    let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let base = Settings::from_lookup(|_| None).unwrap_or_else(|e| panic!("default settings: {e}"));
    let admin = admin_url();
    let server = admin.rsplit_once('/').map(|(s, _)| s).unwrap_or(&admin);
    let mut s = base;
    // Loopback: no TLS, as in the shipped default (TLS would cost CPU and protect nothing).
    s.database_url = format!("{server}/pulse_t_{tag}_{id}?sslmode=disable");
    s.queue = format!("pulse.t.{tag}.{id}");
    s.redis_prefix = format!("pulse:t:{tag}:{id}");
    s.api_key = Some(format!("key-{id}"));
    s.http_addr = "127.0.0.1:0"
        .parse()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    s.inbound.smtp_addr = s.http_addr;
    s.scheduler.poll_interval = Duration::from_millis(50);
    s.sender.retry_base = Duration::from_millis(200);
    s.sender.retry_max = Duration::from_secs(2);
    s
}

/// Creates the database named in `settings` and applies the migrations.
pub async fn create_database(settings: &Settings) -> anyhow::Result<PgPool> {
    let name = db_name(settings);
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .context("connecting as admin")?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await?;
    let pool = pulse_shared::db::pool(&settings.database_url, 8)?;
    pulse_shared::db::migrate(&pool).await?;
    Ok(pool)
}

fn db_name(settings: &Settings) -> String {
    let url = settings.database_url.as_str();
    url.split('?')
        .next()
        .unwrap_or(url)
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A running Pulse with its own database, queue and Redis prefix.
pub struct TestEnv {
    pub settings: Settings,
    pub db: PgPool,
    pub base: String,
    /// The inbound role's SMTP address, when it runs.
    pub inbound: Option<std::net::SocketAddr>,
    pub key: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), pulse::ServeError>>>,
}

impl TestEnv {
    /// Starts `roles` with settings adjusted by `tweak`.
    pub async fn start(
        tag: &str,
        roles: &[Role],
        tweak: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        pulse_shared::telemetry::init_with_default("warn,lapin=error,amq_protocol=error");
        let mut settings = isolated_settings(tag);
        tweak(&mut settings);
        let db = create_database(&settings).await?;
        let listeners = pulse::bind(&settings, roles).await?;
        let base = format!("http://{}", listeners.http.local_addr()?);
        let inbound = listeners
            .inbound
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(pulse::serve(
            settings.clone(),
            roles.to_vec(),
            listeners,
            shutdown.clone(),
        ));
        let key = settings.api_key.clone().unwrap_or_default();
        let env = TestEnv {
            settings,
            db,
            base,
            inbound,
            key,
            http: reqwest::Client::new(),
            shutdown,
            server: Some(server),
        };
        env.wait_ready().await?;
        Ok(env)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("pulse did not become ready")
    }

    /// `METHOD path` with the environment's API key and an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.call_as(&self.key.clone(), method, path, body).await
    }

    pub async fn call_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok((status, json))
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// The `/metrics` page as text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "/metrics answered {}", resp.status());
        Ok(resp.text().await?)
    }

    /// Creates a sequence and returns its JSON.
    pub async fn create_sequence(&self, body: Value) -> anyhow::Result<Value> {
        let (status, seq) = self.post("/v1/sequences", body).await?;
        anyhow::ensure!(status == 201, "create sequence: {status} {seq}");
        Ok(seq)
    }

    /// Stops Pulse, then drops the database and the queues.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server
                .await?
                .map_err(|e| anyhow::anyhow!("pulse stopped with an error: {e}"))?;
        }
        self.db.close().await;
        cleanup(&self.settings).await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Drops a test's database and queues and its Redis keys.
pub async fn cleanup(settings: &Settings) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&admin_url()).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        db_name(settings)
    ))
    .execute(&mut admin)
    .await?;
    let conn = pulse_shared::messaging::connect(&settings.amqp_url).await?;
    let ch = conn.create_channel().await?;
    for q in [
        settings.queue.clone(),
        pulse_shared::messaging::dead_letter_queue(&settings.queue),
    ] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "test cleanup".into()).await;
    cleanup_redis(settings).await
}

/// Deletes every Redis key of a test, as a Redis restart without persistence would.
pub async fn cleanup_redis(settings: &Settings) -> anyhow::Result<()> {
    let client = redis::Client::open(settings.redis_url.as_str())?;
    let mut r = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", settings.redis_prefix))
        .query_async(&mut r)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut r)
            .await?;
    }
    Ok(())
}

/// The Message-ID of the first send to `email` once it is SENT (waiting up to 20 s).
pub async fn sent_message_id(db: &PgPool, email: &str) -> anyhow::Result<String> {
    eventually(
        Duration::from_secs(20),
        &format!("a send to {email}"),
        || async {
            Ok(sqlx::query_scalar(
                "SELECT sl.message_id FROM send_ledger sl JOIN leads l ON l.id = sl.lead_id
             WHERE l.email = $1 AND sl.state = 'SENT' ORDER BY sl.position LIMIT 1",
            )
            .bind(email)
            .fetch_optional(db)
            .await?)
        },
    )
    .await
}

/// Waits until `check` returns `Some`, polling every 20 ms, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A one-step-per-entry sequence body with a tag trigger.
pub fn sequence_body(name: &str, steps: &[(&str, &str, Value)], tag: &str) -> Value {
    serde_json::json!({
        "name": name,
        "steps": steps.iter().map(|(subject, body, timing)| serde_json::json!({
            "subject": subject, "body": body, "timing": timing
        })).collect::<Vec<_>>(),
        "triggers": [{"type": "tag_applied", "tag": tag}],
        "sender": {"from": "Pulse Tests <tests@example.com>"}
    })
}

/// Runs a sender in this process against `settings` until `token` is cancelled.
pub fn spawn_sender(settings: &Settings, token: &CancellationToken) -> JoinHandle<()> {
    let (s, t) = (settings.clone(), token.clone());
    tokio::spawn(async move {
        if let Err(e) = pulse_sender::run(s, Default::default(), Default::default(), t).await {
            panic!("sender failed: {e}");
        }
    })
}

/// Runs a scheduler in this process against `settings` until `token` is cancelled.
pub fn spawn_scheduler(settings: &Settings, token: &CancellationToken) -> JoinHandle<()> {
    let (s, t) = (settings.clone(), token.clone());
    tokio::spawn(async move {
        if let Err(e) = pulse_scheduler::run(s, Default::default(), Default::default(), t).await {
            panic!("scheduler failed: {e}");
        }
    })
}

/// A `SELECT count(*) …`.
pub async fn count(db: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(db).await?)
}

/// A loopback port free at the time of asking (for roles started as processes).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
