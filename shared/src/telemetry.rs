//! Logging setup. Owns the subscriber: `RUST_LOG` filters (default `info`), and
//! `PULSE_LOG_FORMAT=json` switches to one JSON object per line.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init() {
    init_with_default("info,sqlx=warn,lapin=warn,amq_protocol=warn");
}

/// Like [`init`], with `default` as the filter when `RUST_LOG` is not set.
pub fn init_with_default(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("PULSE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry.with(fmt::layer().json()).try_init()
    } else {
        registry.with(fmt::layer().with_test_writer()).try_init()
    };
}
