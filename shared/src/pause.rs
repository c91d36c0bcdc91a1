//! Pause flags and rate state in Redis: a cache of each sequence's status that senders read on
//! the hot path, and per-sequence send counters for `max_sends_per_minute`.
//!
//! PostgreSQL is the truth; Redis may lose every key at any moment (it runs without
//! persistence). The rules that make that safe:
//! * a writer (pause, resume, delete) commits PostgreSQL first, then `SET`s the flag;
//! * a reader that finds no flag reads PostgreSQL and refills with `SET NX`, so a refill that
//!   raced a writer can never overwrite the newer value;
//! * a missing flag therefore never means "active": it means "ask PostgreSQL" (fail closed).
//!
//! This module never decides what to do with a paused message; the sender does.

use chrono::{DateTime, TimeZone, Utc};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

use crate::model::sequence_status;

/// How long a cached flag lives; expiry only costs one PostgreSQL read.
const FLAG_TTL_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
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
    fn from_status(status: Option<&str>) -> Gate {
        match status {
            Some(sequence_status::ACTIVE) => Gate::Open,
            Some(sequence_status::PAUSED) => Gate::Paused,
            _ => Gate::Closed,
        }
    }
}

#[derive(Clone)]
pub struct PauseFlags {
    conn: ConnectionManager,
    prefix: String,
}

impl PauseFlags {
    /// Connects to Redis, retrying for up to `patience`.
    pub async fn connect(url: &str, prefix: &str, patience: Duration) -> Result<Self, PauseError> {
        let client = redis::Client::open(url)?;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match ConnectionManager::new(client.clone()).await {
                Ok(conn) => {
                    return Ok(Self {
                        conn,
                        prefix: prefix.to_owned(),
                    });
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "redis not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn key(&self, sequence: Uuid) -> String {
        format!("{}:sequence:{sequence}:status", self.prefix)
    }

    /// Records a sequence's new status. Call after the PostgreSQL change has committed.
    pub async fn set(&self, sequence: Uuid, status: &str) -> Result<(), PauseError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(sequence))
            .arg(status)
            .arg("EX")
            .arg(FLAG_TTL_SECS)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether `sequence` may send, from the flag or, when the flag is missing, from PostgreSQL.
    pub async fn gate(&self, db: &PgPool, sequence: Uuid) -> Result<Gate, PauseError> {
        let mut conn = self.conn.clone();
        let key = self.key(sequence);
        let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        if let Some(status) = cached {
            return Ok(Gate::from_status(Some(&status)));
        }
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM sequences WHERE id = $1")
                .bind(sequence)
                .fetch_optional(db)
                .await?;
        let Some(status) = status else {
            return Ok(Gate::Closed);
        };
        redis::cmd("SET")
            .arg(&key)
            .arg(&status)
            .arg("NX")
            .arg("EX")
            .arg(FLAG_TTL_SECS)
            .query_async::<()>(&mut conn)
            .await?;
        // Read back: if a writer got there first, its value wins.
        let now: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        Ok(Gate::from_status(Some(now.as_deref().unwrap_or(&status))))
    }

    /// Takes a send slot of `sequence` in the current minute. `None`: go ahead. `Some(t)`: the
    /// minute's budget is spent; `t` is the start of the minute this send should move to (the
    /// overflow is spread over the following minutes, `per_minute` each).
    pub async fn take_send_slot(
        &self,
        sequence: Uuid,
        per_minute: i32,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, PauseError> {
        let mut conn = self.conn.clone();
        let minute = now.timestamp().div_euclid(60);
        let key = format!("{}:rate:{sequence}:{minute}", self.prefix);
        let (count,): (i64,) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, 120)
            .ignore()
            .query_async(&mut conn)
            .await?;
        let per_minute = i64::from(per_minute.max(1));
        if count <= per_minute {
            return Ok(None);
        }
        let minutes_ahead = (count - 1) / per_minute;
        Ok(Utc.timestamp_opt((minute + minutes_ahead) * 60, 0).single())
    }

    /// Redis round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), PauseError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}
