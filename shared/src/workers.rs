//! Who is alive: each sender and scheduler registers itself in `workers` when it starts,
//! heartbeats every third of `PULSE_OWNER_TIMEOUT_MS`, and deletes its row when it stops
//! gracefully. A ledger claim names its owner (`send_ledger.owner_id`), and so does a QUEUED
//! step run (`step_runs.queued_by`), so the sweep can tell a dead worker's work from a slow
//! one's (`ledger::sweep`) and act on it within the owner timeout instead of the leases.
//!
//! This module only records liveness. It never touches claims, and a missed heartbeat is never
//! a reason to send: a claim taken from an owner that was only slow is fenced (its sender's
//! wire mark fails, and it sends nothing).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::StoreError;

/// A registered worker; [`Registration::stop`] deregisters it.
pub struct Registration {
    pub id: Uuid,
    db: PgPool,
    beat: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    /// Since when every heartbeat has succeeded; `None` right after one failed.
    steady_since: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
}

impl Registration {
    /// Registers a worker of `role` and heartbeats it every `timeout / 3` until
    /// [`Registration::stop`]. Registering fails only if PostgreSQL cannot be reached; a
    /// heartbeat that fails is logged and tried again on the next beat (the worker may then be
    /// taken for dead, which costs a redone claim, never a second send).
    pub async fn start(db: &PgPool, role: &str, timeout: Duration) -> Result<Self, StoreError> {
        let id = Uuid::new_v4();
        let host = hostname();
        sqlx::query("INSERT INTO workers (id, role, host, pid) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(role)
            .bind(&host)
            .bind(std::process::id() as i32)
            .execute(db)
            .await?;
        tracing::info!(worker = %id, role, %host, "worker registered");
        let stop = CancellationToken::new();
        let every = (timeout / 3).max(Duration::from_millis(100));
        let steady_since = Arc::new(Mutex::new(Some(Instant::now())));
        let beat = {
            let (db, stop, role) = (db.clone(), stop.clone(), role.to_owned());
            let steady_since = steady_since.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.cancelled() => return,
                    }
                    let beat = heartbeat(&db, id, &role).await;
                    if let Ok(mut since) = steady_since.lock() {
                        match (&beat, *since) {
                            (Ok(()), None) => *since = Some(Instant::now()),
                            (Err(_), _) => *since = None,
                            (Ok(()), Some(_)) => {}
                        }
                    }
                    if let Err(e) = beat {
                        tracing::warn!(worker = %id, error = %e, "heartbeat failed; trying again on the next beat");
                    }
                }
            })
        };
        Ok(Self {
            id,
            db: db.clone(),
            beat,
            stop,
            steady_since,
            timeout,
        })
    }

    /// [`Registration::start`], tried again every second while PostgreSQL is unreachable;
    /// `None` if `shutdown` comes first.
    pub async fn start_when_ready(
        db: &PgPool,
        role: &str,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        loop {
            match Self::start(db, role, timeout).await {
                Ok(r) => return Some(r),
                Err(e) => {
                    tracing::warn!(role, error = %e, "cannot register the worker yet; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Whether this worker's own heartbeats have all succeeded for at least the owner timeout.
    /// Only then may it take another worker's silence for death: right after PostgreSQL comes
    /// back, every worker looks silent, and the live ones need one beat to say otherwise.
    pub fn steady(&self) -> bool {
        self.steady_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .is_some_and(|since| since.elapsed() >= self.timeout)
    }

    /// Stops the heartbeat and deletes the worker's row: its remaining claims (none after a
    /// graceful drain) are then treated as a dead worker's at the next sweep.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.beat.await;
        if let Err(e) = sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(self.id)
            .execute(&self.db)
            .await
        {
            tracing::warn!(worker = %self.id, error = %e, "worker not deregistered; it is taken for dead after the owner timeout");
        }
    }
}

/// Records that worker `id` is alive. A worker whose row is gone (taken for dead and cleaned
/// up) registers again under the same id: its later claims are fenced like anyone's.
async fn heartbeat(db: &PgPool, id: Uuid, role: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workers (id, role, host, pid) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(id)
    .bind(role)
    .bind(hostname())
    .bind(std::process::id() as i32)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes workers that missed their heartbeats for `timeout` and hold nothing: no claim, and
/// no QUEUED run the sweep may still give back. Returns how many. Run by the sweep, after it
/// acted on their work.
pub async fn forget_dead(db: &PgPool, timeout: Duration) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM workers w WHERE w.heartbeat_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM send_ledger sl
                           WHERE sl.owner_id = w.id AND sl.state = 'SENDING')
           AND NOT EXISTS (SELECT 1 FROM step_runs sr
                           WHERE sr.state = 'QUEUED' AND sr.queued_by = w.id
                             AND sr.queued_at >= w.heartbeat_at - make_interval(secs => $2))",
    )
    .bind(timeout.as_secs_f64())
    .bind(UNCONFIRMED_AFTER_BEAT.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected())
}

/// How long before its last heartbeat a dead scheduler may have queued a run it never
/// published: a publish waits at most the confirm timeout (10 s) for its confirms, so a run
/// queued earlier than that before the crash was confirmed or given back by the scheduler
/// itself. Runs queued before this window are in RabbitMQ and are left there.
pub const UNCONFIRMED_AFTER_BEAT: Duration = Duration::from_secs(15);

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
