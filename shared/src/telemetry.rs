//! Logs and traces. Owns the global `tracing` subscriber and the W3C trace context that carries a
//! trace across PostgreSQL and RabbitMQ.
//!
//! * Logs: `RUST_LOG` filters (default `info`); `PULSE_LOG_FORMAT=json` prints one JSON object
//!   per line.
//! * Traces: exported over OTLP/HTTP when `PULSE_OTLP_ENDPOINT` (a collector's base URL, e.g.
//!   `http://otel-collector:4318`) or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SERVICE_NAME` names the service. Without
//!   an endpoint no span leaves the process and the context helpers below carry nothing.
//! * Propagation: a trigger's trace context is stored with the step runs it creates
//!   (`step_runs.trace_parent`); the scheduler's publish span continues it and rides in the AMQP
//!   `traceparent` header; the sender's send span continues that. One trace then shows trigger →
//!   enrollment → publish → send.
//!
//! This module never decides what is traced; the roles open their spans.

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// The default log filter of the roles.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,amq_protocol=warn";

/// The `PULSE_*` variables read here (besides `RUST_LOG` and the standard `OTEL_*` ones).
pub const ENV_VARS: &[&str] = &["PULSE_OTLP_ENDPOINT", "PULSE_LOG_FORMAT"];

/// The W3C header and AMQP header carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP trace exporter cannot be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The installed telemetry. [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "call shutdown() so buffered spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

/// Installs logging, and trace export when an OTLP endpoint is configured (see the module
/// docs). `service` is the service name unless `OTEL_SERVICE_NAME` says otherwise.
pub fn init(service: &str) -> Result<Telemetry, TelemetryError> {
    init_from(service, |k| std::env::var(k).ok())
}

/// [`init`] reading the environment through `lookup`.
pub fn init_from(
    service: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Telemetry, TelemetryError> {
    let set = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
    let provider = match set("PULSE_OTLP_ENDPOINT") {
        Some(base) => Some(otlp_provider(service, Some(traces_url(&base)), &lookup)?),
        None if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() =>
        {
            Some(otlp_provider(service, None, &lookup)?)
        }
        None => None,
    };
    install(DEFAULT_FILTER, provider.clone());
    if provider.is_some() {
        tracing::info!(service, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// Logging only, with `default` as the filter when `RUST_LOG` is not set (tests). Later calls
/// are no-ops.
pub fn init_with_default(default: &str) {
    install(default, None);
}

/// Logging, and spans exported through `provider` (tests use an in-memory exporter).
pub fn init_with_provider(default: &str, provider: SdkTracerProvider) -> Telemetry {
    install(default, Some(provider.clone()));
    Telemetry {
        provider: Some(provider),
    }
}

/// `{base}/v1/traces`, unless `base` already names that path.
fn traces_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

fn otlp_provider(
    service: &str,
    endpoint: Option<String>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    let mut builder = SpanExporter::builder().with_http();
    if let Some(url) = endpoint {
        builder = builder.with_endpoint(url);
    }
    let exporter = builder.build()?;
    let name = lookup("OTEL_SERVICE_NAME")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build())
}

fn install(default: &str, provider: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("PULSE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let logs = if json {
        fmt::layer().json().boxed()
    } else {
        fmt::layer().with_test_writer().boxed()
    };
    let traces = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("pulse"))
            .boxed()
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .with(filter)
        .try_init();
}

/// The W3C `traceparent` of `span`, when spans are exported and `span` is recorded.
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the trace context in `traceparent` (a malformed or absent value
/// leaves `span` a root).
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
    let cx: Context = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` carried in AMQP message headers.
pub fn amqp_traceparent(headers: Option<&FieldTable>) -> Option<String> {
    match headers?.inner().get(TRACEPARENT)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Adds `span`'s `traceparent` to AMQP message headers (nothing when spans are not exported).
pub fn inject_amqp(span: &Span, headers: &mut FieldTable) {
    if let Some(tp) = traceparent(span) {
        headers.insert(TRACEPARENT.into(), AMQPValue::LongString(tp.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collector_base_url_gets_the_traces_path_once() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn without_an_exporter_nothing_is_propagated() {
        let span = tracing::info_span!("untraced");
        assert_eq!(traceparent(&span), None);
        let mut headers = FieldTable::default();
        inject_amqp(&span, &mut headers);
        assert!(headers.inner().is_empty());
    }

    #[test]
    fn amqp_headers_carry_a_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = FieldTable::default();
        headers.insert(TRACEPARENT.into(), AMQPValue::LongString(tp.into()));
        assert_eq!(amqp_traceparent(Some(&headers)).as_deref(), Some(tp));
        assert_eq!(amqp_traceparent(None), None);
    }
}
