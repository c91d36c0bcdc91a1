//! Readiness of the parts of a process that hold long-lived connections (the scheduler's and
//! the sender's RabbitMQ sessions). Each part reports itself; `/readyz` reads the sum. Owns only
//! the flags, never a connection.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

#[derive(Clone, Default)]
pub struct Health {
    parts: Arc<Mutex<BTreeMap<&'static str, Option<String>>>>,
}

impl Health {
    /// `part` is working.
    pub fn ready(&self, part: &'static str) {
        self.lock().insert(part, None);
    }

    /// `part` is not working, and why.
    pub fn not_ready(&self, part: &'static str, why: impl Into<String>) {
        self.lock().insert(part, Some(why.into()));
    }

    /// Every part that reported, with `None` when ready.
    pub fn parts(&self) -> BTreeMap<&'static str, Option<String>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Option<String>>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs `session` until `shutdown`, starting it again with exponential backoff (200 ms to 5 s)
/// whenever it fails, reporting `part` not ready meanwhile and counting the restart in
/// `metrics`. A session reports itself ready once connected and returns `Ok` only when
/// `shutdown` is cancelled.
pub async fn supervise<F, Fut, E>(
    part: &'static str,
    health: &Health,
    metrics: &crate::metrics::Metrics,
    shutdown: &tokio_util::sync::CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut delay = std::time::Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match session().await {
            Ok(()) => break,
            Err(e) => {
                health.not_ready(part, e.to_string());
                metrics.reconnect(part);
                tracing::warn!(part, error = %e, retry_in_ms = delay.as_millis() as u64, "session failed; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    health.not_ready(part, "stopped");
}
