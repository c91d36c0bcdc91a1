//! The scheduler's guardrail task: every `PULSE_GUARDRAIL_INTERVAL_MS`, the `overspeed` rule
//! counts the sends against every sending limit (`pulse_shared::guardrails::overspeed`) and
//! pauses the sequences that outran one. It runs beside the claim loop, never on its path, and
//! never claims or publishes anything. Every scheduler runs it; a second trip of the same
//! sequence finds it paused already and records nothing.

use std::time::Duration;

use pulse_shared::{guardrails::overspeed, metrics::Metrics};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Runs the overspeed sweep on its interval until `shutdown`. A failed sweep is logged and
/// tried again at the next tick.
pub(crate) async fn run(
    db: PgPool,
    every: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match overspeed::sweep(&db, None).await {
            Ok(swept) => {
                for _ in 0..swept.tripped {
                    metrics.guardrail_tripped("overspeed");
                }
                if swept.tripped > 0 || swept.skipped > 0 {
                    tracing::warn!(
                        checked = swept.checked,
                        tripped = swept.tripped,
                        skipped = swept.skipped,
                        "overspeed guardrail swept"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "overspeed guardrail sweep failed"),
        }
    }
}
