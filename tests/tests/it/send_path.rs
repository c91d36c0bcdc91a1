//! End to end: trigger → enrollment → due step → RabbitMQ → sender → a real SMTP server.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lapin::{BasicProperties, options::BasicPublishOptions};
use pulse::Role;
use pulse_shared::{Settings, messaging::SendMessage, pause::PauseFlags};
use pulse_tests::{SmtpServer, TestEnv, eventually, sequence_body, spawn_scheduler, spawn_sender};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ALL: &[Role] = &[Role::All];

async fn start_with_smtp(tag: &str, roles: &[Role]) -> anyhow::Result<(TestEnv, SmtpServer)> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start(tag, roles, |s| s.smtp_url = Some(url)).await?;
    Ok((env, smtp))
}

fn tag_event(id: &str, email: &str, first: &str, tag: &str) -> Value {
    json!({"id": id, "type": "tag_applied", "lead": {"email": email, "first_name": first}, "tag": tag})
}

/// Sends per (recipient, subject).
fn tally(received: &[pulse_tests::smtp::Received]) -> HashMap<(String, String), usize> {
    let mut t = HashMap::new();
    for m in received {
        let key = (m.rcpt_to.join(","), m.subject.clone().unwrap_or_default());
        *t.entry(key).or_insert(0) += 1;
    }
    t
}

#[tokio::test]
async fn every_lead_gets_every_step_exactly_once_in_order() -> anyhow::Result<()> {
    let (env, smtp) = start_with_smtp("e2e", ALL).await?;
    let mut body = sequence_body(
        "Trial",
        &[
            (
                "Step 1 for {{ lead.first_name }}",
                "Hello {{ lead.first_name }} at {{ lead.email }}",
                json!({"type": "immediately"}),
            ),
            (
                "Step 2 for {{ lead.first_name }}",
                "Day two, {{ lead.attributes.company | default: \"friend\" }}",
                json!({"type": "delay", "delay": "PT1S"}),
            ),
            (
                "Step 3 for {{ lead.first_name }}",
                "Last one",
                json!({"type": "delay", "delay": "PT1S"}),
            ),
        ],
        "trial",
    );
    body["triggers"] =
        json!([{"type": "tag_applied", "tag": "trial"}, {"type": "list_added", "list": "webinar"}]);
    env.create_sequence(body).await?;

    let leads = ["ada", "bob", "cy", "di", "ed"];
    let started = Instant::now();
    // Overlapping triggers, a re-applied tag and a repeated event id for every lead.
    let mut events = Vec::new();
    for l in leads {
        let email = format!("{l}@example.com");
        events.push(tag_event(&format!("{l}-1"), &email, l, "trial"));
        events.push(json!({"id": format!("{l}-2"), "type": "list_added", "lead": {"email": email}, "list": "webinar"}));
        events.push(tag_event(&format!("{l}-3"), &email, l, "trial"));
        events.push(tag_event(&format!("{l}-1"), &email, l, "trial"));
    }
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);
    let first = smtp.wait_for(1, Duration::from_secs(10)).await?;
    let trigger_to_smtp = first[0].at.duration_since(started);
    println!(
        "trigger -> first SMTP acceptance: {:.0} ms",
        trigger_to_smtp.as_secs_f64() * 1000.0
    );

    let all = smtp.wait_for(15, Duration::from_secs(30)).await?;
    // Anything extra would arrive within a few polls; wait before judging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all_after = smtp.received();
    assert_eq!(
        all_after.len(),
        15,
        "exactly 3 steps x 5 leads, got {}",
        all_after.len()
    );
    let t = tally(&all);
    for l in leads {
        for step in 1..=3 {
            let key = (format!("{l}@example.com"), format!("Step {step} for {l}"));
            assert_eq!(t.get(&key), Some(&1), "{key:?}");
        }
        let mine: Vec<_> = all
            .iter()
            .filter(|m| m.rcpt_to == vec![format!("{l}@example.com")])
            .collect();
        let subjects: Vec<_> = mine
            .iter()
            .map(|m| m.subject.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            subjects,
            (1..=3)
                .map(|s| format!("Step {s} for {l}"))
                .collect::<Vec<_>>(),
            "in order"
        );
        for pair in mine.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at);
            assert!(
                gap >= Duration::from_millis(950),
                "steps of {l} only {gap:?} apart (delay PT1S)"
            );
        }
        assert!(
            mine[0]
                .body()
                .contains(&format!("Hello {l} at {l}@example.com")),
            "{}",
            mine[0].data
        );
        assert!(mine[1].body().contains("Day two, friend"));
        assert_eq!(mine[0].mail_from, "tests@example.com");
    }

    // The ledger matches what the server received, key for key.
    let ledger: Vec<(String, String, String)> =
        sqlx::query_as("SELECT state, message_id, idempotency_key FROM send_ledger")
            .fetch_all(&env.db)
            .await?;
    assert_eq!(ledger.len(), 15);
    for (state, message_id, _) in &ledger {
        assert_eq!(state, "SENT");
        assert_eq!(
            all.iter()
                .filter(|m| m.message_id.as_deref() == Some(message_id))
                .count(),
            1,
            "{message_id}"
        );
    }
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE status = 'COMPLETED'")
            .fetch_one(&env.db)
            .await?;
    assert_eq!(completed, 5);

    // The read side shows it.
    let seq_id: String = sqlx::query_scalar("SELECT id::text FROM sequences")
        .fetch_one(&env.db)
        .await?;
    let (status, sends) = env.get(&format!("/v1/sequences/{seq_id}/sends")).await?;
    assert_eq!(status, 200);
    assert_eq!(sends["sends"].as_array().map(Vec::len), Some(15));
    assert_eq!(sends["sends"][0]["smtp_code"], 250);
    let enrollment = sends["sends"][0]["enrollment_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, mine) = env
        .get(&format!("/v1/enrollments/{enrollment}/sends"))
        .await?;
    assert_eq!(status, 200);
    let positions: Vec<i64> = mine["sends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["step_position"].as_i64())
        .collect();
    assert_eq!(positions, vec![1, 2, 3]);
    env.stop().await
}

#[tokio::test]
async fn capture_outbox_is_the_default_transport() -> anyhow::Result<()> {
    let env = TestEnv::start("e2e", ALL, |s| s.smtp_url = None).await?;
    env.create_sequence(sequence_body(
        "C",
        &[(
            "Hi {{ lead.first_name }}",
            "Body",
            json!({"type": "immediately"}),
        )],
        "t",
    ))
    .await?;
    env.post(
        "/v1/events",
        json!({"events": [tag_event("e1", "ada@example.com", "Ada", "t")]}),
    )
    .await?;
    let messages = eventually(Duration::from_secs(10), "a captured message", || async {
        let (_, out) = env.get("/v1/dev/outbox").await?;
        let m = out["messages"].as_array().cloned().unwrap_or_default();
        Ok((!m.is_empty()).then_some(m))
    })
    .await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["subject"], "Hi Ada");
    assert_eq!(messages[0]["rcpt_to"], "ada@example.com");
    // The envelope sender, as MAIL FROM carries it: the bare address, not the display name.
    assert_eq!(messages[0]["mail_from"], "tests@example.com");
    assert!(
        messages[0]["raw"]
            .as_str()
            .unwrap_or_default()
            .contains("Message-ID: <pulse.")
    );
    env.stop().await
}

async fn publish_raw(settings: &Settings, payload: &[u8]) -> anyhow::Result<()> {
    let conn = pulse_shared::messaging::connect(&settings.amqp_url).await?;
    let ch = conn.create_channel().await?;
    ch.basic_publish(
        "".into(),
        settings.queue.as_str().into(),
        BasicPublishOptions::default(),
        payload,
        BasicProperties::default(),
    )
    .await?
    .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}

async fn message_for(env: &TestEnv, position: i32) -> anyhow::Result<SendMessage> {
    let (run, enrollment, step, generation, sequence, workspace): (Uuid, Uuid, Uuid, i32, Uuid, Uuid) =
        sqlx::query_as("SELECT id, enrollment_id, step_id, generation, sequence_id, workspace_id FROM step_runs WHERE position = $1")
            .bind(position)
            .fetch_one(&env.db)
            .await?;
    Ok(SendMessage {
        key: pulse_shared::ledger::idempotency_key(enrollment, step, generation),
        step_run_id: run,
        enrollment_id: enrollment,
        sequence_id: sequence,
        workspace_id: workspace,
    })
}

#[tokio::test]
async fn redelivered_and_early_messages_never_send_twice() -> anyhow::Result<()> {
    let (env, smtp) = start_with_smtp("e2e", ALL).await?;
    let seq = env
        .create_sequence(sequence_body(
            "R",
            &[
                ("One", "1", json!({"type": "immediately"})),
                (
                    "Two",
                    "2",
                    json!({"type": "on_date", "at": "2099-01-01T00:00:00Z"}),
                ),
            ],
            "t",
        ))
        .await?;
    let seq_id = seq["id"].as_str().unwrap_or_default();
    env.post(
        &format!("/v1/sequences/{seq_id}/enrollments"),
        json!({"lead": {"email": "ada@example.com"}}),
    )
    .await?;
    smtp.wait_for(1, Duration::from_secs(10)).await?;

    // Redelivery of an already-sent step (broker redelivery, a scheduler republish).
    let sent = message_for(&env, 1).await?;
    for _ in 0..3 {
        publish_raw(&env.settings, &serde_json::to_vec(&sent)?).await?;
    }
    // A message for a step that is not queued yet (a scheduler that crashed before committing).
    let early = message_for(&env, 2).await?;
    publish_raw(&env.settings, &serde_json::to_vec(&early)?).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(smtp.count(), 1, "no duplicate, and nothing sent early");

    // When step 2 really comes due it is sent once.
    sqlx::query("UPDATE step_runs SET due_at = now() WHERE position = 2")
        .execute(&env.db)
        .await?;
    smtp.wait_for(2, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 2);

    // An unparseable message is dead-lettered and the sender keeps going.
    publish_raw(&env.settings, b"{not json").await?;
    let dead = pulse_shared::messaging::dead_letter_queue(&env.settings.queue);
    eventually(
        Duration::from_secs(10),
        "the poison message in the dead-letter queue",
        || async {
            let conn = pulse_shared::messaging::connect(&env.settings.amqp_url).await?;
            let ch = conn.create_channel().await?;
            let q = ch
                .queue_declare(
                    dead.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await?;
            conn.close(200, "done".into()).await?;
            Ok((q.message_count() == 1).then_some(()))
        },
    )
    .await?;
    env.stop().await
}

#[tokio::test]
async fn transient_failures_retry_and_permanent_ones_fail_alone() -> anyhow::Result<()> {
    let (env, smtp) = start_with_smtp("e2e", ALL).await?;
    smtp.refuse("slow@example.com", 451, Some(2));
    smtp.refuse("gone@example.com", 550, None);
    env.create_sequence(sequence_body(
        "F",
        &[
            ("One", "1", json!({"type": "immediately"})),
            ("Two", "2", json!({"type": "immediately"})),
        ],
        "t",
    ))
    .await?;
    env.post(
        "/v1/events",
        json!({"events": [
            tag_event("e1", "slow@example.com", "S", "t"),
            tag_event("e2", "gone@example.com", "G", "t"),
            tag_event("e3", "fine@example.com", "F", "t"),
        ]}),
    )
    .await?;
    smtp.wait_for(4, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = tally(&smtp.received());
    for who in ["slow", "fine"] {
        for s in ["One", "Two"] {
            assert_eq!(
                t.get(&(format!("{who}@example.com"), s.to_owned())),
                Some(&1),
                "{who} {s}"
            );
        }
    }
    assert_eq!(smtp.count(), 4, "nothing for gone@");
    assert_eq!(
        smtp.rcpt_attempts("slow@example.com"),
        4,
        "two 451s, then steps 1 and 2"
    );
    assert_eq!(
        smtp.rcpt_attempts("gone@example.com"),
        1,
        "a 5xx is never retried"
    );

    let (state, code, reply, attempts): (String, Option<i32>, Option<String>, i32) =
        sqlx::query_as(
            "SELECT sl.state, sl.smtp_code, sl.smtp_reply, sl.attempts FROM send_ledger sl
         JOIN leads l ON l.id = sl.lead_id WHERE l.email = 'slow@example.com' AND sl.position = 1",
        )
        .fetch_one(&env.db)
        .await?;
    assert_eq!(
        (state.as_str(), code, attempts),
        ("SENT", Some(250), 3),
        "{reply:?}"
    );
    let (state, code, reply): (String, Option<i32>, Option<String>) = sqlx::query_as(
        "SELECT sl.state, sl.smtp_code, sl.smtp_reply FROM send_ledger sl
         JOIN leads l ON l.id = sl.lead_id WHERE l.email = 'gone@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!((state.as_str(), code), ("FAILED", Some(550)));
    // The relay echoed the recipient; what Pulse keeps (and logs) names a hash of it instead.
    let reply = reply.unwrap_or_default();
    assert!(reply.contains("refused by test rule"), "{reply}");
    assert!(
        !reply.contains("gone@") && reply.contains("addr:"),
        "{reply}"
    );
    let (status, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT e.status, e.end_reason FROM enrollments e JOIN leads l ON l.id = e.lead_id WHERE l.email = 'gone@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(status, "FAILED");
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("550") && !reason.contains("gone@"),
        "{reason}"
    );
    env.stop().await
}

async fn wait_queued(env: &TestEnv, n: i64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), "steps queued", || async {
        let q: i64 = sqlx::query_scalar("SELECT count(*) FROM step_runs WHERE state = 'QUEUED'")
            .fetch_one(&env.db)
            .await?;
        Ok((q == n).then_some(()))
    })
    .await
}

#[tokio::test]
async fn queued_messages_of_a_paused_sequence_are_held_even_without_redis_flags()
-> anyhow::Result<()> {
    // No sender yet: steps get queued in RabbitMQ first, then the sequence is paused.
    let (env, smtp) = start_with_smtp("e2e", &[Role::Api, Role::Ingest, Role::Scheduler]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "P",
            &[("One", "1", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let seq_id: Uuid = seq["id"].as_str().unwrap_or_default().parse()?;
    env.post("/v1/events", json!({"events": [
        tag_event("e1", "a@example.com", "A", "t"), tag_event("e2", "b@example.com", "B", "t"), tag_event("e3", "c@example.com", "C", "t"),
    ]}))
    .await?;
    wait_queued(&env, 3).await?;

    // Pause as the control plane does (PostgreSQL, then the flag), then Redis loses every key.
    let flags = PauseFlags::connect(
        &env.settings.redis_url,
        &env.settings.redis_prefix,
        Duration::from_secs(5),
    )
    .await?;
    sqlx::query("UPDATE sequences SET status = 'PAUSED' WHERE id = $1")
        .bind(seq_id)
        .execute(&env.db)
        .await?;
    flags
        .set(seq_id, pulse_shared::state::SequenceStatus::Paused)
        .await?;
    pulse_tests::cleanup_redis(&env.settings).await?;

    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    eventually(Duration::from_secs(10), "held steps", || async {
        let held: i64 =
            sqlx::query_scalar("SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED'")
                .fetch_one(&env.db)
                .await?;
        Ok((held == 3).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 0, "a paused sequence sends nothing");
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM send_ledger")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(claims, 0);

    // Resume: the held steps go out, once each.
    sqlx::query("UPDATE sequences SET status = 'ACTIVE' WHERE id = $1")
        .bind(seq_id)
        .execute(&env.db)
        .await?;
    flags
        .set(seq_id, pulse_shared::state::SequenceStatus::Active)
        .await?;
    smtp.wait_for(3, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 3);
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn a_cancelled_enrollment_gets_nothing_even_when_already_queued() -> anyhow::Result<()> {
    let (env, smtp) = start_with_smtp("e2e", &[Role::Api, Role::Ingest, Role::Scheduler]).await?;
    env.create_sequence(sequence_body(
        "X",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    env.post("/v1/events", json!({"events": [tag_event("e1", "a@example.com", "A", "t"), tag_event("e2", "b@example.com", "B", "t")]}))
        .await?;
    wait_queued(&env, 2).await?;
    sqlx::query(
        "UPDATE enrollments SET status = 'CANCELLED' WHERE lead_id = (SELECT id FROM leads WHERE email = 'a@example.com')",
    )
    .execute(&env.db)
    .await?;
    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    smtp.wait_for(1, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got = smtp.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, vec!["b@example.com".to_owned()]);
    let state: String = sqlx::query_scalar(
        "SELECT sr.state FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN leads l ON l.id = e.lead_id WHERE l.email = 'a@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(state, "CANCELLED");
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn two_schedulers_and_two_senders_send_1000_enrollments_exactly_once() -> anyhow::Result<()> {
    const LEADS: usize = 1000;
    let (env, smtp) = start_with_smtp("scale", &[Role::Api, Role::Ingest]).await?;
    env.create_sequence(sequence_body(
        "Scale",
        &[
            ("One {{ lead.email }}", "1", json!({"type": "immediately"})),
            ("Two {{ lead.email }}", "2", json!({"type": "immediately"})),
        ],
        "t",
    ))
    .await?;
    let token = CancellationToken::new();
    let mut settings = env.settings.clone();
    settings.scheduler.batch_size = 100;
    let workers = vec![
        spawn_scheduler(&settings, &token),
        spawn_scheduler(&settings, &token),
        spawn_sender(&settings, &token),
        spawn_sender(&settings, &token),
    ];
    let started = Instant::now();
    for chunk in (0..LEADS).collect::<Vec<_>>().chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| tag_event(&format!("e{i}"), &format!("lead{i}@example.com"), "L", "t"))
            .collect();
        let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
        assert_eq!(status, 200);
    }
    let all = smtp.wait_for(2 * LEADS, Duration::from_secs(240)).await?;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all_after = smtp.received();
    println!(
        "{} sends in {:.1} s ({:.0}/s, debug build, 2 schedulers + 2 senders)",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(all_after.len(), 2 * LEADS, "no duplicates and no losses");
    let t = tally(&all_after);
    for i in 0..LEADS {
        for s in ["One", "Two"] {
            let key = (
                format!("lead{i}@example.com"),
                format!("{s} lead{i}@example.com"),
            );
            assert_eq!(t.get(&key), Some(&1), "{key:?}");
        }
    }
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM send_ledger WHERE state = 'SENT'")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(sent, 2 * LEADS as i64);
    token.cancel();
    for w in workers {
        w.await?;
    }
    env.stop().await
}

#[tokio::test]
async fn a_quorum_queue_carries_sends_exactly_once() -> anyhow::Result<()> {
    use pulse_shared::messaging::{self, QueueType};
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("quorum", ALL, |s| {
        s.smtp_url = Some(url);
        s.queue_type = QueueType::Quorum;
    })
    .await?;
    env.create_sequence(sequence_body(
        "Quorum",
        &[(
            "Q {{ lead.first_name }}",
            "Hi",
            json!({"type": "immediately"}),
        )],
        "quorum",
    ))
    .await?;
    let events: Vec<Value> = ["qa", "qb", "qc"]
        .iter()
        .map(|l| tag_event(l, &format!("{l}@example.com"), l, "quorum"))
        .collect();
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);
    smtp.wait_for(3, Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tally(&smtp.received()).values().all(|n| *n == 1));
    assert_eq!(smtp.received().len(), 3);
    // The queue really is a quorum queue: declaring it classic is refused.
    let conn = messaging::connect(&env.settings.amqp_url).await?;
    let ch = conn.create_channel().await?;
    let classic = messaging::declare(&ch, &env.settings.queue, QueueType::Classic).await;
    assert!(classic.is_err(), "the queue was declared classic");
    let _ = conn.close(200, "done".into()).await;
    env.stop().await
}

/// A cancel or a pause that commits while a send is mid-transaction (its snapshot read, its body
/// not yet out) is seen by the gate's re-check: the claim is released, no final dot is sent, and
/// the relay accepts nothing. A held send goes out once, after the resume.
#[tokio::test]
async fn a_cancel_or_pause_committed_mid_transaction_is_honoured_at_the_gate() -> anyhow::Result<()>
{
    let (env, smtp) = start_with_smtp("gate", &[Role::Api, Role::Ingest, Role::Scheduler]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "G",
            &[("One", "1", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let seq = seq["id"].as_str().context("sequence id")?.to_owned();
    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    // Each send now waits at DATA, its snapshot read and nothing claimed.
    smtp.delay_go_ahead(Duration::from_millis(1500));
    let mid_transaction = |lead: &'static str| {
        let smtp = &smtp;
        eventually(
            Duration::from_secs(10),
            "the send mid-transaction",
            move || async move { Ok((smtp.rcpt_attempts(lead) == 1).then_some(())) },
        )
    };
    let run_of = |lead: &'static str| {
        let db = env.db.clone();
        async move {
            let row: (String, i64) = sqlx::query_as(
                "SELECT sr.state, (SELECT count(*) FROM send_ledger sl WHERE sl.step_run_id = sr.id)
                 FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
                 JOIN leads l ON l.id = e.lead_id WHERE l.email = $1",
            )
            .bind(lead)
            .fetch_one(&db)
            .await?;
            anyhow::Ok(row)
        }
    };

    // Cancel.
    env.post(
        "/v1/events",
        json!({"events": [tag_event("a", "a@example.com", "A", "t")]}),
    )
    .await?;
    mid_transaction("a@example.com").await?;
    let enrollment: Uuid = sqlx::query_scalar("SELECT id FROM enrollments")
        .fetch_one(&env.db)
        .await?;
    let (status, body) = env
        .post(&format!("/v1/enrollments/{enrollment}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(10),
        "the cancelled send settled",
        || async { Ok((run_of("a@example.com").await?.0 == "CANCELLED").then_some(())) },
    )
    .await?;
    assert_eq!(
        run_of("a@example.com").await?,
        ("CANCELLED".into(), 0),
        "the claim was released"
    );
    assert_eq!(smtp.body_seen().len(), 1, "its body reached the relay");
    assert_eq!(
        (smtp.data_started(), smtp.count()),
        (0, 0),
        "without its dot"
    );

    // Pause, then resume.
    env.post(
        "/v1/events",
        json!({"events": [tag_event("b", "b@example.com", "B", "t")]}),
    )
    .await?;
    mid_transaction("b@example.com").await?;
    let (status, body) = env
        .post(&format!("/v1/sequences/{seq}/pause"), json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(10), "the paused send held", || async {
        Ok((run_of("b@example.com").await?.0 == "SCHEDULED").then_some(()))
    })
    .await?;
    assert_eq!(run_of("b@example.com").await?, ("SCHEDULED".into(), 0));
    assert_eq!((smtp.body_seen().len(), smtp.count()), (2, 0));
    smtp.delay_go_ahead(Duration::ZERO);
    let (status, body) = env
        .post(&format!("/v1/sequences/{seq}/resume"), json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    let got = smtp.wait_for(1, Duration::from_secs(10)).await?;
    assert_eq!(got[0].rcpt_to, vec!["b@example.com".to_owned()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 1, "sent once, after the resume");
    assert_eq!(run_of("b@example.com").await?, ("SENT".into(), 1));
    token.cancel();
    sender.await?;
    env.stop().await
}

/// A pool opened with `db::Plans::Generic` (the sender's) plans its statements once per
/// connection, and `pool_for` (every other role's) keeps PostgreSQL's default: the setting the
/// bench's planning figures depend on reaches the server.
#[tokio::test]
async fn the_senders_pool_asks_for_generic_plans_and_the_others_do_not() -> anyhow::Result<()> {
    use pulse_shared::db::{self, Plans};
    let settings = pulse_tests::isolated_settings("plans");
    let _db = pulse_tests::create_database(&settings).await?;
    let mode = async |plans| -> anyhow::Result<String> {
        let pool = db::pool_with(&settings, 1, plans)?;
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok(mode)
    };
    assert_eq!(mode(Plans::Generic).await?, "force_generic_plan");
    assert_eq!(mode(Plans::Custom).await?, "auto");
    let default = db::pool_for(&settings, 1)?;
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&default)
        .await?;
    assert_eq!(mode, "auto", "pool_for keeps PostgreSQL's default");
    default.close().await;
    pulse_tests::cleanup(&settings).await
}
