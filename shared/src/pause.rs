//! Pause flags in Redis: a cache of each sequence's status that senders read on the hot path;
//! and the connection the sending limits' state shares (`crate::limits`).
//!
//! PostgreSQL is the truth; Redis may lose every key at any moment (it runs without
//! persistence). The rules that make that safe:
//! * a writer (pause, resume, delete) commits PostgreSQL first, then `SET`s the flag;
//! * only `ACTIVE` is taken on Redis's word (and even then senders re-check PostgreSQL after
//!   claiming, so a stale `ACTIVE` cannot send for a paused sequence);
//! * anything else, or no flag at all, is confirmed in PostgreSQL (fail closed). A missing flag
//!   is refilled with `SET NX`, so a refill that raced a writer never overwrites the newer value;
//!   a flag PostgreSQL contradicts is deleted, so a resume whose flag write failed (Redis was
//!   restarting) cannot leave a sequence held for the flag's lifetime.
//!
//! The connection heals itself: any connection-level error drops it and the next call opens a
//! new one, so a Redis restart costs the calls made while Redis is down and nothing more.
//!
//! This module never decides what to do with a paused message; the sender does.

use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::state::SequenceStatus;

/// How long a cached flag lives; expiry only costs one PostgreSQL read.
const FLAG_TTL_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Whether a sequence may send right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    Paused,
    /// Deleted, or unknown to PostgreSQL.
    Closed,
}

impl Gate {
    fn from_status(status: Option<SequenceStatus>) -> Gate {
        match status {
            Some(SequenceStatus::Active) => Gate::Open,
            Some(SequenceStatus::Paused) => Gate::Paused,
            Some(SequenceStatus::Deleted) | None => Gate::Closed,
        }
    }
}

#[derive(Clone)]
pub struct PauseFlags {
    client: redis::Client,
    conn: Arc<RwLock<Option<MultiplexedConnection>>>,
    prefix: String,
}

/// How long one Redis connection attempt or command may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

impl PauseFlags {
    /// Connects to Redis, retrying for up to `patience`.
    pub async fn connect(url: &str, prefix: &str, patience: Duration) -> Result<Self, PauseError> {
        Self::connect_with_ca(url, prefix, patience, None).await
    }

    /// Connects as a role does: `PULSE_REDIS_URL` and `PULSE_REDIS_PREFIX`, trusting
    /// `PULSE_TLS_CA_FILE` too for `rediss://`.
    pub async fn connect_for(
        settings: &crate::Settings,
        patience: Duration,
    ) -> Result<Self, PauseError> {
        let ca = settings.tls_ca()?;
        Self::connect_with_ca(&settings.redis_url, &settings.redis_prefix, patience, ca).await
    }

    /// Connects to Redis (`redis://`, or `rediss://` over rustls), trusting the PEM
    /// certificates of `ca` instead of the webpki roots when given; retries for up to
    /// `patience`.
    pub async fn connect_with_ca(
        url: &str,
        prefix: &str,
        patience: Duration,
        ca: Option<Vec<u8>>,
    ) -> Result<Self, PauseError> {
        let client = match ca {
            Some(root_cert) if url.starts_with("rediss://") => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
            _ => redis::Client::open(url)?,
        };
        let flags = Self {
            client,
            conn: Arc::new(RwLock::new(None)),
            prefix: prefix.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match flags.connection().await {
                Ok(_) => return Ok(flags),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "redis not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The shared connection, opened on first use and after any connection-level failure.
    async fn connection(&self) -> Result<MultiplexedConnection, PauseError> {
        if let Some(conn) = self.conn.read().await.clone() {
            return Ok(conn);
        }
        let mut slot = self.conn.write().await;
        if let Some(conn) = slot.clone() {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one command; a connection-level failure drops the connection for the next call.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, PauseError> {
        let mut conn = self.connection().await?;
        let result = cmd.query_async(&mut conn).await;
        self.settle(result).await
    }

    /// Passes a result through, dropping the connection first if the error says it is broken.
    async fn settle<T>(&self, result: redis::RedisResult<T>) -> Result<T, PauseError> {
        if let Err(e) = &result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error())
        {
            *self.conn.write().await = None;
        }
        Ok(result?)
    }

    fn key(&self, sequence: Uuid) -> String {
        format!("{}:sequence:{sequence}:status", self.prefix)
    }

    /// Records a sequence's new status. Call after the PostgreSQL change has committed.
    pub async fn set(&self, sequence: Uuid, status: SequenceStatus) -> Result<(), PauseError> {
        self.query::<()>(
            redis::cmd("SET")
                .arg(self.key(sequence))
                .arg(status.as_str())
                .arg("EX")
                .arg(FLAG_TTL_SECS),
        )
        .await
    }

    /// Whether `sequence` may send: `ACTIVE` from the flag, anything else from PostgreSQL.
    pub async fn gate(&self, db: &PgPool, sequence: Uuid) -> Result<Gate, PauseError> {
        let key = self.key(sequence);
        let cached: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        if cached.as_deref() == Some(SequenceStatus::Active.as_str()) {
            return Ok(Gate::Open);
        }
        let status: Option<SequenceStatus> =
            sqlx::query_scalar("SELECT status FROM sequences WHERE id = $1")
                .bind(sequence)
                .fetch_optional(db)
                .await?;
        let Some(status) = status else {
            return Ok(Gate::Closed);
        };
        match cached {
            None => {
                self.query::<()>(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(status.as_str())
                        .arg("NX")
                        .arg("EX")
                        .arg(FLAG_TTL_SECS),
                )
                .await?;
            }
            Some(flag) if flag != status.as_str() => {
                tracing::warn!(%sequence, %flag, %status, "stale pause flag; PostgreSQL wins");
                self.query::<()>(redis::cmd("DEL").arg(&key)).await?;
            }
            Some(_) => {}
        }
        Ok(Gate::from_status(Some(status)))
    }

    /// The prefix of every key this role writes.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs a Lua script (the sending limits' check); a connection-level failure drops the
    /// connection for the next call.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, PauseError> {
        let mut conn = self.connection().await?;
        let result = call.invoke_async(&mut conn).await;
        self.settle(result).await
    }

    /// Redis round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), PauseError> {
        self.query::<()>(&redis::cmd("PING")).await
    }
}
