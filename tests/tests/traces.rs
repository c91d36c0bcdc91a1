//! One trace from trigger to SMTP: the caller's `traceparent` on `POST /v1/events` is continued
//! by the enrollment, stored with the step run, continued by the scheduler's publish, carried in
//! the AMQP message and continued by the sender's send and its SMTP exchange.
//!
//! Its own test binary: the process-wide subscriber here exports spans to memory.

use std::{collections::HashMap, time::Duration};

use opentelemetry::{
    Value,
    trace::{SpanId, SpanKind, Status, TraceId},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, eventually, sequence_body};
use serde_json::json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn one_trace_spans_a_send_from_trigger_to_smtp() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let telemetry = pulse_shared::telemetry::init_with_provider(
        "warn,pulse=info,pulse_ingest=info,pulse_scheduler=info,pulse_sender=info",
        provider,
    );
    assert!(telemetry.exporting());

    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("traces", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    env.create_sequence(sequence_body(
        "Traced",
        &[("Hello", "Hi", json!({"type": "immediately"}))],
        "traced",
    ))
    .await?;
    let resp = env
        .http
        .post(format!("{}/v1/events", env.base))
        .bearer_auth(&env.key)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"events": [{"id": "t-1", "type": "tag_applied",
                                  "lead": {"email": "traced@example.com"}, "tag": "traced"}]}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    smtp.wait_for(1, Duration::from_secs(15)).await?;

    let trace = TraceId::from_hex(TRACE)?;
    let names = ["POST /v1/events", "enroll", "publish", "send", "smtp"];
    let spans: HashMap<String, SpanData> =
        eventually(Duration::from_secs(10), "the send span to end", || async {
            let finished = exporter.get_finished_spans()?;
            let mine: HashMap<String, SpanData> = finished
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .map(|s| (s.name.to_string(), s))
                .collect();
            Ok(names.iter().all(|n| mine.contains_key(*n)).then_some(mine))
        })
        .await?;
    // Each span is the child of the one before it, whatever process or queue lay between.
    let id = |name: &str| spans[name].span_context.span_id();
    let request = &spans["POST /v1/events"];
    assert_eq!(request.parent_span_id, SpanId::from_hex(CALLER_SPAN)?);
    assert_eq!(spans["enroll"].parent_span_id, id("POST /v1/events"));
    assert_eq!(spans["publish"].parent_span_id, id("enroll"));
    assert_eq!(spans["send"].parent_span_id, id("publish"));
    assert_eq!(spans["smtp"].parent_span_id, id("send"));
    // Kinds and attributes as OpenTelemetry's conventions name them.
    let attr = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(attr(request, "http.route"), Some(Value::from("/v1/events")));
    assert_eq!(
        attr(request, "http.response.status_code"),
        Some(Value::I64(200))
    );
    assert_eq!(spans["publish"].span_kind, SpanKind::Producer);
    assert_eq!(spans["send"].span_kind, SpanKind::Consumer);
    assert_eq!(
        attr(&spans["send"], "messaging.system"),
        Some(Value::from("rabbitmq"))
    );
    assert_eq!(spans["smtp"].span_kind, SpanKind::Client);
    assert_eq!(spans["send"].status, Status::Unset);

    // A send the relay refuses for good is an error in its trace: the send and its SMTP
    // exchange carry `Error` status.
    smtp.refuse("refused@example.com", 550, None);
    const FAILED_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    let resp = env
        .http
        .post(format!("{}/v1/events", env.base))
        .bearer_auth(&env.key)
        .header("traceparent", format!("00-{FAILED_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"events": [{"id": "t-2", "type": "tag_applied",
                                  "lead": {"email": "refused@example.com"}, "tag": "traced"}]}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let failed_trace = TraceId::from_hex(FAILED_TRACE)?;
    let failed: HashMap<String, SpanData> = eventually(
        Duration::from_secs(10),
        "the failed send's spans",
        || async {
            let finished = exporter.get_finished_spans()?;
            let mine: HashMap<String, SpanData> = finished
                .into_iter()
                .filter(|s| s.span_context.trace_id() == failed_trace)
                .map(|s| (s.name.to_string(), s))
                .collect();
            Ok(["send", "smtp"]
                .iter()
                .all(|n| mine.contains_key(*n))
                .then_some(mine))
        },
    )
    .await?;
    for name in ["send", "smtp"] {
        assert!(
            matches!(failed[name].status, Status::Error { .. }),
            "{name}: {:?}",
            failed[name].status
        );
    }
    env.stop().await?;
    telemetry.shutdown();
    Ok(())
}
