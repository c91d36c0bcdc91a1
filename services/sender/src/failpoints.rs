//! Test-only crash points, compiled in only with the `failpoints` feature (the chaos suite and
//! the fault tests build with it; `make run` and releases do not).
//!
//! `PULSE_FAILPOINT_CRASH_AFTER_SMTP=<probability 0..1>`: after the relay accepted a message and
//! before the ledger records it — the one window no protocol closes — abort the process, like a
//! `kill -9` at the worst moment.

/// Aborts the process with the configured probability.
pub fn crash_after_smtp() {
    let p: f64 = std::env::var("PULSE_FAILPOINT_CRASH_AFTER_SMTP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if p > 0.0 {
        let roll = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        if roll < p {
            eprintln!("failpoint: crashing after SMTP acceptance, before the ledger commit");
            std::process::abort();
        }
    }
}
