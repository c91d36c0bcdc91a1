//! Deterministic fault tests that need no server restart: lost messages, poison messages,
//! dead workers' claims, and the operator's resolution of UNKNOWN sends.

use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use pulse::Role;
use pulse_shared::messaging::{self, SendMessage};
use pulse_tests::{SmtpServer, TestEnv, count, eventually, sequence_body, spawn_sender};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn start(
    roles: &[Role],
    tweak: impl FnOnce(&mut pulse_shared::Settings),
) -> anyhow::Result<(TestEnv, SmtpServer)> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("fault", roles, |s| {
        s.smtp_url = Some(url);
        s.scheduler.sweep_interval = Duration::from_millis(200);
        tweak(s);
    })
    .await?;
    Ok((env, smtp))
}

#[tokio::test]
async fn a_message_the_broker_lost_is_published_again_and_sent_once() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler], |s| {
        s.scheduler.queued_lease = Duration::from_secs(1);
    })
    .await?;
    env.create_sequence(sequence_body(
        "L",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    env.post("/v1/events", json!({"events": [{"id": "e", "type": "tag_applied", "tag": "t", "lead": {"email": "a@example.com"}}]})).await?;
    eventually(Duration::from_secs(10), "the step queued", || async {
        Ok((count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'QUEUED'",
        )
        .await?
            == 1)
            .then_some(()))
    })
    .await?;
    // The broker loses the message (a crash without persistence, an operator's purge).
    let conn = messaging::connect(&env.settings.amqp_url).await?;
    let ch = conn.create_channel().await?;
    let purged = ch
        .queue_purge(
            env.settings.queue.as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    assert_eq!(purged, 1);
    conn.close(200, "done".into()).await?;

    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    smtp.wait_for(1, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        smtp.count(),
        1,
        "found by the sweeper, published again, sent once"
    );
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_a_reason_and_the_sender_goes_on()
-> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler], |s| {
        s.sender.max_deliveries = 3;
        s.scheduler.queued_lease = Duration::from_secs(3600);
    })
    .await?;
    let seq = env
        .create_sequence(sequence_body(
            "P",
            &[(
                "One",
                "1",
                json!({"type": "on_date", "at": "2099-01-01T00:00:00Z"}),
            )],
            "t",
        ))
        .await?;
    env.post(
        &format!(
            "/v1/sequences/{}/enrollments",
            seq["id"].as_str().unwrap_or_default()
        ),
        json!({"lead": {"email": "a@example.com"}}),
    )
    .await?;
    // A queued step run whose snapshot cannot be read: every delivery fails on the database.
    sqlx::query(
        "UPDATE step_runs SET state = 'QUEUED', message_id = '<m@example.com>', subject = NULL",
    )
    .execute(&env.db)
    .await?;
    let (run, enrollment, step, sequence, workspace): (
        uuid::Uuid,
        uuid::Uuid,
        uuid::Uuid,
        uuid::Uuid,
        uuid::Uuid,
    ) = sqlx::query_as(
        "SELECT id, enrollment_id, step_id, sequence_id, workspace_id FROM step_runs",
    )
    .fetch_one(&env.db)
    .await?;
    let bad = SendMessage {
        key: pulse_shared::ledger::idempotency_key(enrollment, step, 1),
        step_run_id: run,
        enrollment_id: enrollment,
        sequence_id: sequence,
        workspace_id: workspace,
    };
    let conn = messaging::connect(&env.settings.amqp_url).await?;
    let ch = conn.create_channel().await?;
    messaging::declare(&ch, &env.settings.queue, env.settings.queue_type).await?;
    for payload in [serde_json::to_vec(&bad)?, b"{not json".to_vec()] {
        ch.basic_publish(
            "".into(),
            env.settings.queue.as_str().into(),
            Default::default(),
            &payload,
            Default::default(),
        )
        .await?
        .await?;
    }

    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    let dead = messaging::dead_letter_queue(&env.settings.queue);
    eventually(
        Duration::from_secs(20),
        "both messages dead-lettered",
        || async {
            let q = ch
                .queue_declare(
                    dead.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await?;
            Ok((q.message_count() == 2).then_some(()))
        },
    )
    .await?;
    let mut reasons = Vec::new();
    while let Some(msg) = ch
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        let reason = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get("x-pulse-dead-reason") {
                Some(lapin::types::AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_default();
        reasons.push(reason);
    }
    reasons.sort();
    assert!(
        reasons.iter().any(|r| r.contains("failed 3 deliveries")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unusable message") || r.contains("at line 1")),
        "the parse error: {reasons:?}"
    );
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM send_ledger").await?,
        0,
        "each failed claim was given back"
    );

    // The sender keeps going.
    env.create_sequence(sequence_body(
        "Ok",
        &[("Fine", "1", json!({"type": "immediately"}))],
        "ok",
    ))
    .await?;
    env.post("/v1/events", json!({"events": [{"id": "ok", "type": "tag_applied", "tag": "ok", "lead": {"email": "b@example.com"}}]})).await?;
    smtp.wait_for(1, Duration::from_secs(10)).await?;
    conn.close(200, "done".into()).await?;
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn a_dead_workers_claim_becomes_unknown_is_never_resent_and_an_operator_settles_it()
-> anyhow::Result<()> {
    let (env, smtp) = start(
        &[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender],
        |s| {
            s.sender.sending_lease = Duration::from_secs(1);
        },
    )
    .await?;
    let seq = env
        .create_sequence(sequence_body(
            "U",
            &[
                (
                    "One",
                    "1",
                    json!({"type": "on_date", "at": "2099-01-01T00:00:00Z"}),
                ),
                ("Two", "2", json!({"type": "immediately"})),
            ],
            "t",
        ))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    for lead in ["a@example.com", "b@example.com"] {
        env.post(
            &format!("/v1/sequences/{sid}/enrollments"),
            json!({"lead": {"email": lead}}),
        )
        .await?;
    }
    // Two workers died after claiming step 1 and sending its body (queued, claimed SENDING,
    // marked on the wire, never recorded).
    sqlx::query("UPDATE step_runs SET state = 'QUEUED', message_id = '<m-' || id || '@example.com>', subject = 'One', body = '1', from_addr = 'tests@example.com', to_addr = 'x@example.com'")
        .execute(&env.db)
        .await?;
    let runs: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM step_runs")
        .fetch_all(&env.db)
        .await?;
    for run in &runs {
        let key: String = sqlx::query_scalar("SELECT enrollment_id || ':' || step_id || ':' || generation FROM step_runs WHERE id = $1")
            .bind(run)
            .fetch_one(&env.db)
            .await?;
        let leases = pulse_shared::ledger::Leases {
            sending: Duration::from_secs(600),
            unmarked: Duration::from_secs(600),
            owner: Some(Duration::from_secs(600)),
            answer: Duration::from_secs(600),
            queued: Duration::from_secs(600),
        };
        let dead_worker = uuid::Uuid::new_v4();
        let claim = pulse_shared::ledger::claim(&env.db, *run, &key, &leases, dead_worker).await?;
        // Claimed at the gate, so on the wire.
        anyhow::ensure!(
            matches!(
                claim,
                pulse_shared::ledger::Claim::Claimed { attempts: 1, .. }
            ),
            "not claimed: {claim:?}"
        );
    }
    let listed = eventually(
        Duration::from_secs(10),
        "the sweeper to mark them UNKNOWN",
        || async {
            let (_, sends) = env.get("/v1/sends?state=UNKNOWN").await?;
            let n = sends["sends"].as_array().map_or(0, Vec::len);
            Ok((n == 2).then_some(sends))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        smtp.count(),
        0,
        "an UNKNOWN send is never resent automatically"
    );
    let keys: Vec<String> = listed["sends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["idempotency_key"].as_str().map(str::to_owned))
        .collect();

    // The relay's log shows the first went out: mark it sent; the enrollment moves on to step 2.
    let (status, resolved) = env
        .post(
            &format!("/v1/sends/{}/resolve", keys[0]),
            json!({"outcome": "sent", "note": "in relay log"}),
        )
        .await?;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["sends"][0]["state"], "SENT");
    // The second never went out: resend it.
    let (status, resolved) = env
        .post(
            &format!("/v1/sends/{}/resolve", keys[1]),
            json!({"outcome": "resend"}),
        )
        .await?;
    assert_eq!(status, 200, "{resolved}");
    let got = smtp.wait_for(3, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(smtp.count(), 3, "one resent step 1, and step 2 for both");
    assert_eq!(
        got.iter()
            .filter(|m| m.subject.as_deref() == Some("One"))
            .count(),
        1
    );
    assert_eq!(
        got.iter()
            .filter(|m| m.subject.as_deref() == Some("Two"))
            .count(),
        2
    );

    let (status, _) = env
        .post(
            &format!("/v1/sends/{}/resolve", keys[0]),
            json!({"outcome": "resend"}),
        )
        .await?;
    assert_eq!(status, 409, "only UNKNOWN sends are resolved");
    let (status, err) = env
        .post(
            &format!("/v1/sends/{}/resolve", keys[0]),
            json!({"outcome": "maybe"}),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("outcome"))
    );
    let (status, _) = env
        .post("/v1/sends/nope/resolve", json!({"outcome": "sent"}))
        .await?;
    assert_eq!(status, 404);
    let (_, audit) = env.get(&format!("/v1/sequences/{sid}/audit")).await?;
    assert_eq!(
        audit["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["action"] == "send_resolved")
            .count(),
        2
    );
    env.stop().await
}

#[tokio::test]
async fn every_smtp_failure_is_retried_failed_or_reported_and_never_doubled() -> anyhow::Result<()>
{
    use pulse_tests::smtp::AfterData;
    let (env, smtp) = start(&[Role::All], |s| {
        s.sender.smtp_timeout = Duration::from_millis(800);
        s.sender.retry_base = Duration::from_millis(100);
    })
    .await?;
    // Before the message is sent: a 421 at RCPT is transient (retried).
    smtp.refuse("busy@example.com", 421, Some(1));
    // The relay refuses the message after DATA: transient (451) or permanent (554).
    smtp.after_data("later@example.com", AfterData::Reply(451), Some(1));
    smtp.after_data("rejected@example.com", AfterData::Reply(554), None);
    // After the message is sent, the answer is lost: unknown, never resent automatically.
    smtp.after_data("dropped@example.com", AfterData::Drop, None);
    smtp.after_data("accepted@example.com", AfterData::AcceptThenDrop, None);
    smtp.after_data(
        "stalled@example.com",
        AfterData::Stall(Duration::from_millis(2000)),
        None,
    );
    env.create_sequence(sequence_body(
        "F",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    let leads = [
        "busy", "later", "rejected", "dropped", "accepted", "stalled", "fine",
    ];
    let events: Vec<serde_json::Value> = leads
        .iter()
        .map(|l| json!({"id": l, "type": "tag_applied", "tag": "t", "lead": {"email": format!("{l}@example.com")}}))
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;

    let settled = eventually(Duration::from_secs(20), "every send settled", || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT split_part(l.email, '@', 1), sl.state FROM send_ledger sl JOIN leads l ON l.id = sl.lead_id ORDER BY 1",
        )
        .fetch_all(&env.db)
        .await?;
        let done = rows.len() == leads.len() && rows.iter().all(|(_, s)| s != "SENDING" && s != "DEFERRED");
        Ok(done.then_some(rows))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let state = |who: &str| {
        settled
            .iter()
            .find(|(l, _)| l == who)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    };
    assert_eq!(state("busy"), "SENT");
    assert_eq!(state("later"), "SENT");
    assert_eq!(state("fine"), "SENT");
    assert_eq!(state("rejected"), "FAILED");
    for who in ["dropped", "accepted", "stalled"] {
        assert_eq!(
            state(who),
            "UNKNOWN",
            "{who}: the relay may have it; never retried blindly"
        );
    }
    let received = |who: &str| {
        smtp.received()
            .iter()
            .filter(|m| m.rcpt_to == vec![format!("{who}@example.com")])
            .count()
    };
    for (who, n) in [
        ("busy", 1),
        ("later", 1),
        ("fine", 1),
        ("rejected", 0),
        ("dropped", 0),
        ("accepted", 1),
        ("stalled", 1),
    ] {
        assert_eq!(received(who), n, "{who}");
    }
    assert_eq!(
        smtp.rcpt_attempts("dropped@example.com"),
        1,
        "an unknown outcome is not retried"
    );
    assert_eq!(smtp.rcpt_attempts("accepted@example.com"), 1);
    let (_, unknown) = env.get("/v1/sends?state=UNKNOWN").await?;
    assert_eq!(
        unknown["sends"].as_array().map(Vec::len),
        Some(3),
        "visible to the operator"
    );
    // Counted as outstanding on every scrape, until an operator settles them.
    let metrics = env.metrics().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l == "pulse_unknown_sends_outstanding 3"),
        "{metrics}"
    );
    env.stop().await
}

#[tokio::test]
async fn a_batch_the_broker_does_not_confirm_is_due_again_and_sent_once() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest], |_| {}).await?;
    env.create_sequence(sequence_body(
        "N",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    let events: Vec<_> = (0..3)
        .map(|i| json!({"id": format!("e{i}"), "type": "tag_applied", "tag": "t", "lead": {"email": format!("l{i}@example.com")}}))
        .collect();
    env.post("/v1/events", json!({ "events": events })).await?;

    // QUEUED is committed before publishing; the broker then routes the batch nowhere (no such
    // queue), so nothing is confirmed and the runs must be due again, not stranded QUEUED.
    let conn = messaging::connect(&env.settings.amqp_url).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(Default::default()).await?;
    let missing = format!("{}.missing", env.settings.queue);
    let metrics = pulse_shared::metrics::Metrics::new();
    let failed = pulse_scheduler::claim_and_publish(
        &env.db,
        &ch,
        &missing,
        pulse_scheduler::Claiming {
            batch: 10,
            aging: std::time::Duration::from_secs(600),
        },
        uuid::Uuid::new_v4(),
        &pulse_shared::unsubscribe::Unsubscribe::with_key("test", None, "http://127.0.0.1"),
        &metrics,
    )
    .await;
    assert!(failed.is_err(), "an unroutable batch must fail: {failed:?}");
    let text = metrics.render();
    assert!(
        text.contains("pulse_scheduler_steps_requeued_total 3\n")
            && text.contains("pulse_scheduler_steps_published_total 0\n"),
        "the requeue is counted, not the publish:\n{text}"
    );
    let scheduled = count(
        &env.db,
        "SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED' AND due_at <= now()",
    )
    .await?;
    assert_eq!(scheduled, 3, "the batch is due again");

    // The next claim publishes to the real queue and each lead gets its email once.
    messaging::declare(&ch, &env.settings.queue, env.settings.queue_type).await?;
    let published = pulse_scheduler::claim_and_publish(
        &env.db,
        &ch,
        &env.settings.queue,
        pulse_scheduler::Claiming {
            batch: 10,
            aging: std::time::Duration::from_secs(600),
        },
        uuid::Uuid::new_v4(),
        &pulse_shared::unsubscribe::Unsubscribe::with_key("test", None, "http://127.0.0.1"),
        &metrics,
    )
    .await?;
    assert_eq!(published, 3);
    assert!(
        metrics
            .render()
            .contains("pulse_scheduler_steps_published_total 3\n")
    );
    conn.close(200, "done".into()).await?;
    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    smtp.wait_for(3, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 3);
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn a_stray_run_of_an_ended_enrollment_is_cancelled_and_blocks_nothing() -> anyhow::Result<()>
{
    // One run per claim, so a stray that stayed a candidate would block the sequence for ever.
    let (env, smtp) = start(&[Role::Api, Role::Ingest], |s| {
        s.scheduler.batch_size = 1;
    })
    .await?;
    env.create_sequence(sequence_body(
        "S",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    env.post(
        "/v1/events",
        json!({"events": [
            {"id": "a", "type": "tag_applied", "tag": "t", "lead": {"email": "stray@example.com"}},
            {"id": "b", "type": "tag_applied", "tag": "t", "lead": {"email": "live@example.com"}},
        ]}),
    )
    .await?;
    // The stray: its enrollment ended without its scheduled run being cancelled, and it is due
    // first.
    sqlx::query(
        "WITH e AS (UPDATE enrollments SET status = 'CANCELLED'
                    WHERE lead_id = (SELECT id FROM leads WHERE email = 'stray@example.com')
                    RETURNING id)
         UPDATE step_runs SET due_at = now() - interval '1 hour' FROM e WHERE enrollment_id = e.id",
    )
    .execute(&env.db)
    .await?;
    let token = CancellationToken::new();
    let scheduler = pulse_tests::spawn_scheduler(&env.settings, &token);
    let sender = spawn_sender(&env.settings, &token);
    smtp.wait_for(1, Duration::from_secs(10)).await?;
    let stray: String = sqlx::query_scalar(
        "SELECT sr.state FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN leads l ON l.id = e.lead_id WHERE l.email = 'stray@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(stray, "CANCELLED");
    assert_eq!(smtp.count(), 1, "only the live lead is mailed");
    token.cancel();
    scheduler.await?;
    sender.await?;
    env.stop().await
}

/// The broker ends a sender's consumer without an error (here: its queue is deleted, and the
/// broker cancels the consumer): the sender starts a new session, which declares the queue
/// again, and goes on sending. It once took the stream's end for a shutdown and stopped for
/// good, silently, after a RabbitMQ restart.
#[tokio::test]
async fn a_sender_whose_consumer_the_broker_ends_starts_again() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::All], |_| {}).await?;
    env.create_sequence(sequence_body(
        "C",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    let enroll = |lead: &str| {
        let event = json!({"events": [{"id": lead, "type": "tag_applied", "tag": "t",
                                       "lead": {"email": format!("{lead}@example.com")}}]});
        env.post("/v1/events", event)
    };
    enroll("a").await?;
    smtp.wait_for(1, Duration::from_secs(10)).await?;

    let conn = messaging::connect(&env.settings.amqp_url).await?;
    let ch = conn.create_channel().await?;
    ch.queue_delete(
        env.settings.queue.as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await?;
    conn.close(200, "done".into()).await?;

    enroll("b").await?;
    let got = smtp.wait_for(2, Duration::from_secs(20)).await?;
    assert_eq!(got[1].rcpt_to, vec!["b@example.com".to_owned()]);
    env.stop().await
}
