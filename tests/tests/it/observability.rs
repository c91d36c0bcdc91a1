//! `/metrics` read the way Prometheus reads it, after real work: what it counts, what it reads
//! from the database, and what it must never contain (a lead as a label).

use std::{collections::HashMap, time::Duration};

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, eventually, sequence_body};
use serde_json::{Value, json};

/// The samples of a scrape, keyed by `name{labels}` as printed.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(env: &TestEnv) -> anyhow::Result<(String, HashMap<String, f64>)> {
    let resp = env.http.get(format!("{}/metrics", env.base)).send().await?;
    anyhow::ensure!(resp.status() == 200, "/metrics answered {}", resp.status());
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await?;
    let s = samples(&text);
    Ok((text, s))
}

fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(f64::NAN)
}

fn event(id: &str, email: &str) -> Value {
    json!({"id": id, "type": "tag_applied", "lead": {"email": email}, "tag": "metrics"})
}

fn two_steps() -> Value {
    sequence_body(
        "Metrics",
        &[
            ("First", "Hello", json!({"type": "immediately"})),
            ("Second", "Later", json!({"type": "delay", "delay": "PT1H"})),
        ],
        "metrics",
    )
}

#[tokio::test]
async fn metrics_count_ingest_schedule_and_sends_and_never_name_a_lead() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("metrics", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let seq = env.create_sequence(two_steps()).await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let leads = ["m-ada@example.com", "m-bob@example.com", "m-cy@example.com"];
    let mut events: Vec<Value> = leads
        .iter()
        .enumerate()
        .map(|(i, e)| event(&format!("ev-{i}"), e))
        .collect();
    events.push(event("ev-0", leads[0])); // a repeated event id
    events.push(event("ev-9", leads[1])); // a lead already enrolled
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);
    smtp.wait_for(3, Duration::from_secs(15)).await?;

    // The gauges are read from the database when the scrape starts, the counters when it ends:
    // a send recorded in between shows as sent and still queued. Wait for both to agree.
    let (text, s) = eventually(Duration::from_secs(10), "three sends counted", || async {
        let (text, s) = scrape(&env).await?;
        let settled = get(&s, "pulse_sender_sends_total{outcome=\"sent\"}") == 3.0
            && get(&s, "pulse_backlog_steps{state=\"queued\"}") == 0.0;
        Ok(settled.then_some((text, s)))
    })
    .await?;
    let expect = [
        ("pulse_ingest_events_total{status=\"processed\"}", 4.0),
        ("pulse_ingest_events_total{status=\"duplicate_event\"}", 1.0),
        ("pulse_ingest_enrollments_total{outcome=\"created\"}", 3.0),
        (
            "pulse_ingest_enrollments_total{outcome=\"already_active\"}",
            1.0,
        ),
        ("pulse_scheduler_steps_claimed_total", 3.0),
        ("pulse_scheduler_steps_published_total", 3.0),
        ("pulse_sender_messages_consumed_total", 3.0),
        (
            "pulse_sender_sends_total{outcome=\"duplicate_suppressed\"}",
            0.0,
        ),
        ("pulse_smtp_send_duration_seconds_count", 3.0),
        ("pulse_enrollments{status=\"ACTIVE\"}", 3.0),
        ("pulse_enrollments{status=\"COMPLETED\"}", 0.0),
        ("pulse_backlog_steps{state=\"scheduled\"}", 0.0),
        ("pulse_backlog_steps{state=\"queued\"}", 0.0),
        ("pulse_held_steps", 0.0),
        ("pulse_unknown_sends_outstanding", 0.0),
        ("pulse_paused_sequence_sends_total", 0.0),
        ("pulse_ready{part=\"postgres\"}", 1.0),
        ("pulse_ready{part=\"redis\"}", 1.0),
        ("pulse_ready{part=\"rabbitmq_scheduler\"}", 1.0),
        ("pulse_ready{part=\"rabbitmq_sender\"}", 1.0),
        (
            "pulse_http_requests_total{method=\"POST\",route=\"/v1/events\",status=\"200\"}",
            1.0,
        ),
        (
            "pulse_http_requests_total{method=\"POST\",route=\"/v1/sequences\",status=\"201\"}",
            1.0,
        ),
    ];
    for (key, want) in expect {
        assert_eq!(get(&s, key), want, "{key}\n{text}");
    }
    assert!(get(&s, "pulse_process_resident_memory_bytes") > 1e6);
    // Labels come from closed sets: no lead, address or id ever shows up.
    for lead in leads {
        assert!(!text.contains(lead), "{lead} leaked into /metrics");
    }
    assert!(!text.contains(&sid), "a sequence id leaked into /metrics");
    assert!(!text.contains('@'), "an address leaked into /metrics");

    // Paused with the second steps due: they are held, not backlog.
    let (status, _) = env
        .post(&format!("/v1/sequences/{sid}/pause"), json!({}))
        .await?;
    assert_eq!(status, 200);
    sqlx::query(
        "UPDATE step_runs SET due_at = now() - interval '1 minute' WHERE state = 'SCHEDULED'",
    )
    .execute(&env.db)
    .await?;
    let (_, s) = scrape(&env).await?;
    assert_eq!(get(&s, "pulse_held_steps"), 3.0);
    assert_eq!(get(&s, "pulse_backlog_steps{state=\"scheduled\"}"), 0.0);
    assert_eq!(get(&s, "pulse_paused_sequence_sends_total"), 0.0);

    // A send recorded long after the pause settled is what the alert exists for: the counter
    // must see it (simulated by moving one recorded send past the pause's drain time).
    sqlx::query(
        "UPDATE send_ledger SET sent_at = now() + interval '1 hour'
         WHERE idempotency_key = (SELECT min(idempotency_key) FROM send_ledger)",
    )
    .execute(&env.db)
    .await?;
    let (_, s) = scrape(&env).await?;
    assert_eq!(get(&s, "pulse_paused_sequence_sends_total"), 1.0);

    // Resuming does not forget it, and a later scrape does not count it twice.
    let (status, _) = env
        .post(&format!("/v1/sequences/{sid}/resume"), json!({}))
        .await?;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let (_, s) = scrape(&env).await?;
        assert_eq!(get(&s, "pulse_paused_sequence_sends_total"), 1.0);
    }
    env.stop().await
}

#[tokio::test]
async fn a_backlog_no_sender_takes_shows_its_size_age_and_queue_depth() -> anyhow::Result<()> {
    let env = TestEnv::start(
        "backlog",
        &[Role::Api, Role::Ingest, Role::Scheduler],
        |_| {},
    )
    .await?;
    env.create_sequence(two_steps()).await?;
    let events = vec![
        event("b-1", "b-1@example.com"),
        event("b-2", "b-2@example.com"),
    ];
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);
    let queue = format!("pulse_queue_messages{{queue=\"{}\"}}", env.settings.queue);
    let (text, s) = eventually(Duration::from_secs(15), "the queue depth read", || async {
        let (text, s) = scrape(&env).await?;
        Ok((get(&s, &queue) == 2.0).then_some((text, s)))
    })
    .await?;
    assert_eq!(
        get(&s, "pulse_backlog_steps{state=\"queued\"}"),
        2.0,
        "{text}"
    );
    assert!(get(&s, "pulse_backlog_oldest_age_seconds") > 0.0, "{text}");
    let dead = format!(
        "pulse_queue_messages{{queue=\"{}.dead\"}}",
        env.settings.queue
    );
    assert_eq!(get(&s, &dead), 0.0, "{text}");
    // No sender in this process: nothing consumed, no RabbitMQ sender session to be ready.
    assert_eq!(get(&s, "pulse_sender_messages_consumed_total"), 0.0);
    assert!(!s.contains_key("pulse_ready{part=\"rabbitmq_sender\"}"));
    env.stop().await
}

#[tokio::test]
async fn every_role_alone_serves_metrics_and_probes() -> anyhow::Result<()> {
    for role in [Role::Api, Role::Ingest, Role::Scheduler, Role::Sender] {
        let env = TestEnv::start("role", &[role], |_| {}).await?;
        let (text, s) = scrape(&env).await?;
        assert_eq!(
            get(&s, "pulse_ready{part=\"postgres\"}"),
            1.0,
            "{role:?}\n{text}"
        );
        let (status, _) = env.get("/healthz").await?;
        assert_eq!(status, 200, "{role:?}");
        // Only a process running the scheduler reads the database gauges.
        assert_eq!(
            s.contains_key("pulse_enrollments{status=\"ACTIVE\"}"),
            role == Role::Scheduler,
            "{role:?}\n{text}"
        );
        env.stop().await?;
    }
    Ok(())
}
