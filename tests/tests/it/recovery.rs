//! Recovery without an operator: a sender that dies leaves claims; those that never reached the
//! relay go back and are sent by another sender, those that may have reached it become UNKNOWN,
//! and a live sender's claims are never taken from it.

use std::time::Duration;

use pulse::Role;
use pulse_shared::ledger::{self, Claim, Fence};
use pulse_tests::{SmtpServer, TestEnv, count, eventually, sequence_body};
use serde_json::json;
use uuid::Uuid;

/// Api and ingest only: the test plays the scheduler and the dead sender, then starts the
/// real ones.
async fn start() -> anyhow::Result<(TestEnv, SmtpServer)> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("recovery", &[Role::Api, Role::Ingest], |s| {
        s.smtp_url = Some(url);
        s.scheduler.sweep_interval = Duration::from_millis(200);
        s.owner_timeout = Duration::from_secs(1);
    })
    .await?;
    Ok((env, smtp))
}

/// Enrolls `leads` in a one-step sequence and queues their runs as a scheduler would (content
/// frozen, QUEUED, no message published). Returns (lead email, step run, key) per lead.
async fn queued(env: &TestEnv, leads: &[&str]) -> anyhow::Result<Vec<(String, Uuid, String)>> {
    env.create_sequence(sequence_body(
        "R",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    let events: Vec<_> = leads
        .iter()
        .map(|l| json!({"id": l, "type": "tag_applied", "tag": "t", "lead": {"email": l}}))
        .collect();
    let (status, body) = env.post("/v1/events", json!({ "events": events })).await?;
    anyhow::ensure!(status == 200, "{body}");
    sqlx::query(
        "UPDATE step_runs sr SET state = 'QUEUED', queued_at = now(),
             message_id = '<r-' || sr.id || '@example.com>', subject = 'One', body = '1',
             from_addr = 'tests@example.com', to_addr = l.email
         FROM enrollments e JOIN leads l ON l.id = e.lead_id WHERE e.id = sr.enrollment_id",
    )
    .execute(&env.db)
    .await?;
    Ok(sqlx::query_as(
        "SELECT l.email, sr.id, sr.enrollment_id || ':' || sr.step_id || ':' || sr.generation
         FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN leads l ON l.id = e.lead_id ORDER BY l.email",
    )
    .fetch_all(&env.db)
    .await?)
}

async fn claim_as(env: &TestEnv, worker: Uuid, run: Uuid, key: &str) -> anyhow::Result<Fence> {
    let leases = ledger::Leases::new(&env.settings);
    match ledger::claim(&env.db, run, key, &leases, worker).await? {
        Claim::Claimed { claim, .. } => Ok(Fence {
            key: key.to_owned(),
            claim,
        }),
        other => anyhow::bail!("not claimed: {other:?}"),
    }
}

async fn ledger_state(env: &TestEnv, key: &str) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT state FROM send_ledger WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&env.db)
            .await?,
    )
}

#[tokio::test]
async fn a_dead_senders_claim_becomes_unknown_and_an_earlier_versions_unmarked_one_goes_back()
-> anyhow::Result<()> {
    let (env, smtp) = start().await?;
    let runs = queued(&env, &["a@example.com", "b@example.com"]).await?;
    let [(a, run_a, key_a), (_, run_b, key_b)] = &runs[..] else {
        anyhow::bail!("two runs expected: {runs:?}");
    };
    // A sender registered, claimed both, and died (no heartbeat since). b's claim was made at
    // the gate, as every claim now is: its body was on the wire. a's was made by a sender of the
    // earlier version, which claimed before connecting: no wire mark, nothing sent (a rolling
    // upgrade leaves such claims behind).
    let dead = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO workers (id, role, host, pid, heartbeat_at)
         VALUES ($1, 'sender', 'gone', 1, now() - interval '1 minute')",
    )
    .bind(dead)
    .execute(&env.db)
    .await?;
    claim_as(&env, dead, *run_a, key_a).await?;
    claim_as(&env, dead, *run_b, key_b).await?;
    sqlx::query("UPDATE send_ledger SET wire_at = NULL WHERE idempotency_key = $1")
        .bind(key_a)
        .execute(&env.db)
        .await?;
    // Its mark is older than one SMTP answer: a live sender would have recorded by now.
    sqlx::query(
        "UPDATE send_ledger SET wire_at = now() - interval '1 hour' WHERE wire_at IS NOT NULL",
    )
    .execute(&env.db)
    .await?;

    // The real scheduler and sender take over; nobody resolves anything.
    let token = tokio_util::sync::CancellationToken::new();
    let scheduler = pulse_tests::spawn_scheduler(&env.settings, &token);
    let sender = pulse_tests::spawn_sender(&env.settings, &token);
    let got = smtp.wait_for(1, Duration::from_secs(15)).await?;
    assert_eq!(
        got[0].rcpt_to,
        std::slice::from_ref(a),
        "the claim that never reached the relay is sent"
    );
    eventually(Duration::from_secs(10), "a's send recorded", || async {
        Ok((ledger_state(&env, key_a).await?.as_deref() == Some("SENT")).then_some(()))
    })
    .await?;
    assert_eq!(ledger_state(&env, key_b).await?.as_deref(), Some("UNKNOWN"));
    let (state_b, error_b): (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM step_runs WHERE id = $1")
            .bind(run_b)
            .fetch_one(&env.db)
            .await?;
    assert_eq!(state_b, "UNKNOWN", "{error_b:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        smtp.count(),
        1,
        "the one that may have reached the relay is never resent"
    );
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM send_ledger WHERE idempotency_key = $1")
            .bind(key_a)
            .fetch_one(&env.db)
            .await?;
    assert_eq!(attempts, 1, "a give-back is not an attempt");
    // The dead worker holds nothing any more and is forgotten.
    eventually(
        Duration::from_secs(5),
        "the dead worker forgotten",
        || async {
            let n = count(
                &env.db,
                &format!("SELECT count(*) FROM workers WHERE id = '{dead}'"),
            )
            .await?;
            Ok((n == 0).then_some(()))
        },
    )
    .await?;
    token.cancel();
    scheduler.await?;
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn a_live_senders_claim_is_left_alone_and_a_dead_ones_waits_one_smtp_answer_then_is_unknown()
-> anyhow::Result<()> {
    let (env, smtp) = start().await?;
    let runs = queued(&env, &["a@example.com"]).await?;
    let [(_, run, key)] = &runs[..] else {
        anyhow::bail!("one run expected: {runs:?}");
    };
    let alive =
        pulse_shared::workers::Registration::start(&env.db, "sender", env.settings.owner_timeout)
            .await?;
    claim_as(&env, alive.id, *run, key).await?;
    let leases = ledger::Leases::new(&env.settings);
    // Sweeps over three owner timeouts: the heartbeat keeps the claim its owner's.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let swept = ledger::sweep(&env.db, &leases).await?;
        assert_eq!(swept, ledger::Swept::default());
    }
    assert_eq!(ledger_state(&env, key).await?.as_deref(), Some("SENDING"));

    // The owner stops (as a crash would, without settling). Its claim was made at the gate, so
    // the relay may have the message: it waits one SMTP answer (a sender only cut off from
    // PostgreSQL records by then), then becomes UNKNOWN, never sent again.
    alive.stop().await;
    let swept = ledger::sweep(&env.db, &leases).await?;
    assert_eq!(swept, ledger::Swept::default(), "its answer may still come");
    assert_eq!(ledger_state(&env, key).await?.as_deref(), Some("SENDING"));
    let answered = ledger::Leases {
        answer: Duration::ZERO,
        ..leases
    };
    let swept = ledger::sweep(&env.db, &answered).await?;
    assert_eq!((swept.unknown, swept.given_back), (1, 0));
    assert_eq!(ledger_state(&env, key).await?.as_deref(), Some("UNKNOWN"));
    let state: String = sqlx::query_scalar("SELECT state FROM step_runs WHERE id = $1")
        .bind(run)
        .fetch_one(&env.db)
        .await?;
    assert_eq!(state, "UNKNOWN");
    assert_eq!(smtp.count(), 0);
    env.stop().await
}

#[tokio::test]
async fn every_message_carries_its_idempotency_key_in_the_configured_header() -> anyhow::Result<()>
{
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("recovery", &[Role::All], |s| {
        s.smtp_url = Some(url);
        s.sender.idempotency_header = Some("X-Pulse-Idempotency-Key".into());
    })
    .await?;
    env.create_sequence(sequence_body(
        "H",
        &[("One", "1", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    let (status, body) = env
        .post(
            "/v1/events",
            json!({"events": [{"id": "h", "type": "tag_applied", "tag": "t",
                               "lead": {"email": "a@example.com"}}]}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let got = smtp.wait_for(1, Duration::from_secs(15)).await?;
    let key: String = sqlx::query_scalar("SELECT idempotency_key FROM send_ledger")
        .fetch_one(&env.db)
        .await?;
    let header = format!("X-Pulse-Idempotency-Key: {key}\r\n");
    assert!(got[0].data.contains(&header), "{}", got[0].data);
    env.stop().await
}

#[tokio::test]
async fn unknown_sends_are_settled_in_bulk_with_a_confirmation_and_an_audit() -> anyhow::Result<()>
{
    let (env, smtp) = start().await?;
    let runs = queued(&env, &["a@example.com", "b@example.com"]).await?;
    // A dead sender had both on the wire.
    let dead = Uuid::new_v4();
    let mut fences = Vec::new();
    for (_, run, key) in &runs {
        fences.push(claim_as(&env, dead, *run, key).await?);
    }
    let leases = ledger::Leases {
        answer: Duration::ZERO,
        ..ledger::Leases::new(&env.settings)
    };
    assert_eq!(ledger::sweep(&env.db, &leases).await?.unknown, 2);
    let seq: Uuid = sqlx::query_scalar("SELECT id FROM sequences")
        .fetch_one(&env.db)
        .await?;

    for (body, field) in [
        (json!({"outcome": "resend", "confirm": true}), "sequence_id"),
        (json!({"outcome": "resend", "sequence_id": seq}), "confirm"),
        (
            json!({"outcome": "maybe", "sequence_id": seq, "confirm": true}),
            "outcome",
        ),
    ] {
        let (status, answer) = env.post("/v1/sends/resolve", body).await?;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (422, Some(field)),
            "{answer}"
        );
    }
    // A range that ends before it starts matches nothing, and settles nothing.
    let (status, answer) = env
        .post(
            "/v1/sends/resolve",
            json!({"outcome": "resend", "since": "2030-01-01T00:00:00Z",
                   "until": "2020-01-01T00:00:00Z", "confirm": true}),
        )
        .await?;
    assert_eq!((status, &answer["resolved"]), (200, &json!(0)), "{answer}");
    let (status, answer) = env
        .post(
            "/v1/sends/resolve",
            json!({"outcome": "resend", "sequence_id": Uuid::new_v4(), "confirm": true}),
        )
        .await?;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(smtp.count(), 0);

    let (status, answer) = env
        .post(
            "/v1/sends/resolve",
            json!({"outcome": "resend", "sequence_id": seq, "confirm": true,
                   "note": "not in the relay log"}),
        )
        .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["resolved"].as_u64(), answer["remaining"].as_i64()),
        (Some(2), Some(0))
    );
    let (_, audit) = env.get(&format!("/v1/sequences/{seq}/audit")).await?;
    let resolved = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "send_resolved")
        .count();
    assert_eq!(resolved, 2, "each is audited: {audit}");
    // Resent by the real scheduler and sender, once each.
    let token = tokio_util::sync::CancellationToken::new();
    let scheduler = pulse_tests::spawn_scheduler(&env.settings, &token);
    let sender = pulse_tests::spawn_sender(&env.settings, &token);
    smtp.wait_for(2, Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 2);
    // Nothing left to settle: a second call settles nothing.
    let (status, answer) = env
        .post(
            "/v1/sends/resolve",
            json!({"outcome": "sent", "sequence_id": seq, "confirm": true}),
        )
        .await?;
    assert_eq!(
        (status, answer["resolved"].as_u64()),
        (200, Some(0)),
        "{answer}"
    );
    token.cancel();
    scheduler.await?;
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn a_dead_schedulers_last_runs_are_published_again_without_waiting_for_the_lease()
-> anyhow::Result<()> {
    let (env, smtp) = start().await?;
    let runs = queued(&env, &["a@example.com", "b@example.com", "c@example.com"]).await?;
    let [(a, run_a, _), (_, run_b, _), (_, run_c, _)] = &runs[..] else {
        anyhow::bail!("three runs expected: {runs:?}");
    };
    // A scheduler queued a and b, then died (its last heartbeat 10 s ago): a was queued just
    // before it died and may never have been published; b was queued a minute before its last
    // heartbeat, so its publish was confirmed long before the crash (its message is in the
    // queue). A live scheduler queued c a moment ago.
    let dead = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO workers (id, role, host, pid, heartbeat_at)
         VALUES ($1, 'scheduler', 'gone', 1, now() - interval '10 seconds')",
    )
    .bind(dead)
    .execute(&env.db)
    .await?;
    let alive = pulse_shared::workers::Registration::start(
        &env.db,
        "scheduler",
        env.settings.owner_timeout,
    )
    .await?;
    for (run, owner, queued_at) in [
        (run_a, dead, "now() - interval '12 seconds'"),
        (run_b, dead, "now() - interval '70 seconds'"),
        (run_c, alive.id, "now()"),
    ] {
        sqlx::query(&format!(
            "UPDATE step_runs SET queued_by = $2, queued_at = {queued_at} WHERE id = $1"
        ))
        .bind(run)
        .bind(owner)
        .execute(&env.db)
        .await?;
    }
    let state = |run: Uuid| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM step_runs WHERE id = $1")
                .bind(run)
                .fetch_one(&db)
                .await
        }
    };

    // A sweeper whose own heartbeats are not steady yet (just registered, or PostgreSQL just
    // back) judges nobody dead.
    assert!(!alive.steady());
    let leases = ledger::Leases {
        owner: None,
        ..ledger::Leases::new(&env.settings)
    };
    assert_eq!(
        ledger::sweep(&env.db, &leases).await?,
        ledger::Swept::default()
    );
    eventually(Duration::from_secs(5), "steady heartbeats", || async {
        Ok(alive.steady().then_some(()))
    })
    .await?;

    let swept = ledger::sweep(&env.db, &ledger::Leases::new(&env.settings)).await?;
    assert_eq!(swept.requeued, 1, "{swept:?}");
    assert_eq!(state(*run_a).await?, "SCHEDULED");
    assert_eq!(
        state(*run_b).await?,
        "QUEUED",
        "a confirmed publish is left to its message"
    );
    assert_eq!(
        state(*run_c).await?,
        "QUEUED",
        "a live scheduler's run is its own"
    );
    // The dead scheduler still names b, within no window: it is forgotten.
    let left = count(
        &env.db,
        &format!("SELECT count(*) FROM workers WHERE id = '{dead}'"),
    )
    .await?;
    assert_eq!(left, 0);

    // The real scheduler and sender publish and send a; nobody resolves anything.
    let token = tokio_util::sync::CancellationToken::new();
    let scheduler = pulse_tests::spawn_scheduler(&env.settings, &token);
    let sender = pulse_tests::spawn_sender(&env.settings, &token);
    let got = smtp.wait_for(1, Duration::from_secs(15)).await?;
    assert_eq!(got[0].rcpt_to, std::slice::from_ref(a));
    token.cancel();
    scheduler.await?;
    sender.await?;
    alive.stop().await;
    env.stop().await
}
