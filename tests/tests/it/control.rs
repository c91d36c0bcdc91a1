//! Taking control of a live sequence: every rule of the help page, against the real services.

use std::time::Duration;

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, count, eventually, sequence_body, spawn_sender};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn start(roles: &[Role]) -> anyhow::Result<(TestEnv, SmtpServer)> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("ctl", roles, |s| s.smtp_url = Some(url)).await?;
    Ok((env, smtp))
}

fn tag_event(id: &str, email: &str) -> Value {
    json!({"id": id, "type": "tag_applied", "lead": {"email": email, "first_name": "L"}, "tag": "t"})
}

async fn enroll(env: &TestEnv, emails: &[&str]) -> anyhow::Result<()> {
    let events: Vec<Value> = emails
        .iter()
        .map(|e| tag_event(&format!("ev-{e}"), e))
        .collect();
    let (status, body) = env.post("/v1/events", json!({"events": events})).await?;
    anyhow::ensure!(status == 200, "{body}");
    Ok(())
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn pause_holds_everything_including_queued_and_prefetched_then_resume_sends_once()
-> anyhow::Result<()> {
    // The sender is slowed by the relay so that, at pause time, messages sit in RabbitMQ and in
    // the sender's prefetch while one send is in flight.
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start(
        "ctl",
        &[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender],
        |s| {
            s.smtp_url = Some(url);
            s.sender.concurrency = 2;
            s.sender.smtp_pool_size = 2;
        },
    )
    .await?;
    smtp.delay_data_reply(Duration::from_millis(200));
    let seq = env
        .create_sequence(sequence_body(
            "P",
            &[("One", "1", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let emails: Vec<String> = (0..30).map(|i| format!("p{i}@example.com")).collect();
    enroll(&env, &emails.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    smtp.wait_for(1, Duration::from_secs(10)).await?;

    let (status, paused) = env
        .post(&format!("/v1/sequences/{}/pause", id(&seq)), json!({}))
        .await?;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["sequence"]["status"], "PAUSED");
    let at_pause = smtp.count();
    let in_flight = smtp.data_started();
    assert_eq!(
        at_pause, in_flight,
        "the pause call returned only after in-flight sends settled"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        smtp.count(),
        at_pause,
        "nothing is sent after the pause call returns"
    );
    assert!(
        at_pause < 30,
        "the test must pause with work pending (sent {at_pause})"
    );
    let held = count(
        &env.db,
        "SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED'",
    )
    .await?;
    let queued = count(
        &env.db,
        "SELECT count(*) FROM step_runs WHERE state = 'QUEUED'",
    )
    .await?;
    assert_eq!(
        held + queued + at_pause as i64,
        30,
        "held, not skipped or lost"
    );

    // While paused, no new enrollments, and the event response says so.
    let (_, res) = env
        .post(
            "/v1/events",
            json!({"events": [tag_event("late", "late@example.com")]}),
        )
        .await?;
    assert_eq!(
        res["results"][0]["enrollments"][0]["outcome"],
        "sequence_paused"
    );

    smtp.delay_data_reply(Duration::ZERO);
    let (status, resumed) = env
        .post(&format!("/v1/sequences/{}/resume", id(&seq)), json!({}))
        .await?;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["sequence"]["status"], "ACTIVE");
    smtp.wait_for(30, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = smtp.received();
    assert_eq!(
        got.len(),
        30,
        "every held step sent after resume, exactly once"
    );
    let mut to: Vec<String> = got.iter().map(|m| m.rcpt_to.join(",")).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 30);

    let (_, audit) = env
        .get(&format!("/v1/sequences/{}/audit", id(&seq)))
        .await?;
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec!["resumed", "paused", "created"],
        "newest first"
    );
    assert!(
        audit["events"][1]["actor"]
            .as_str()
            .is_some_and(|a| a.contains("key"))
    );
    env.stop().await
}

#[tokio::test]
async fn resume_skips_forward_into_the_window_and_honours_end_dates() -> anyhow::Result<()> {
    let (env, _smtp) = start(&[Role::Api, Role::Ingest]).await?;
    let mut body = sequence_body(
        "W",
        &[
            ("One", "1", json!({"type": "immediately"})),
            ("Two", "2", json!({"type": "delay", "delay": "PT1H"})),
        ],
        "t",
    );
    body["steps"][1]["end_date"] = json!("2099-01-01T00:00:00Z");
    let seq = env.create_sequence(body).await?;
    let sid = id(&seq);
    enroll(&env, &["a@example.com", "b@example.com", "c@example.com"]).await?;
    env.post(&format!("/v1/sequences/{sid}/pause"), json!({}))
        .await?;

    // A window that is closed today and opens tomorrow, in UTC.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%a")
        .to_string()
        .to_lowercase();
    let (status, edited) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"send_window": {"days": [tomorrow], "start": "00:00", "end": "23:59"}})),
        )
        .await?;
    assert_eq!(status, 200, "{edited}");

    // During the pause: a's step 1 came due long ago; b is at step 2, whose end date has passed;
    // c's step 1 is not due until next year.
    sqlx::query("UPDATE step_runs SET due_at = now() - interval '3 days'")
        .execute(&env.db)
        .await?;
    sqlx::query(
        "UPDATE step_runs SET position = 2, step_id = (SELECT id FROM sequence_steps WHERE position = 2)
         WHERE enrollment_id = (SELECT e.id FROM enrollments e JOIN leads l ON l.id = e.lead_id WHERE l.email = 'b@example.com')",
    )
    .execute(&env.db)
    .await?;
    sqlx::query("UPDATE sequence_steps SET end_date = now() - interval '1 day' WHERE position = 2")
        .execute(&env.db)
        .await?;
    sqlx::query(
        "UPDATE step_runs SET due_at = now() + interval '300 days'
         WHERE enrollment_id = (SELECT e.id FROM enrollments e JOIN leads l ON l.id = e.lead_id WHERE l.email = 'c@example.com')",
    )
    .execute(&env.db)
    .await?;
    let (status, preview) = env
        .get(&format!("/v1/sequences/{sid}/resume-preview"))
        .await?;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        (preview["sends"].as_i64(), preview["skips"].as_i64()),
        (Some(2), Some(1))
    );
    let item = |email: &str| {
        preview["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["lead_email"] == email)
            .cloned()
            .unwrap_or_default()
    };
    let a_at: chrono::DateTime<chrono::Utc> = item("a@example.com")["send_at"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let tomorrow_start = (chrono::Utc::now() + chrono::Duration::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc());
    assert_eq!(
        Some(a_at),
        tomorrow_start,
        "an overdue step moves to the window's next opening, not now"
    );
    assert_eq!(item("b@example.com")["outcome"], "skip");
    assert!(
        item("b@example.com")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("step 2 ends")
    );
    assert_eq!(
        item("c@example.com")["outcome"],
        "send",
        "a step not yet due keeps its time"
    );
    let before_resume = count(
        &env.db,
        "SELECT count(*) FROM step_runs WHERE state = 'SKIPPED'",
    )
    .await?;
    assert_eq!(before_resume, 0, "the preview changes nothing");

    let (status, _) = env
        .post(&format!("/v1/sequences/{sid}/resume"), json!({}))
        .await?;
    assert_eq!(status, 200);
    let a_due: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT sr.due_at FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN leads l ON l.id = e.lead_id WHERE l.email = 'a@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(Some(a_due), tomorrow_start);
    let (status, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT e.status, e.end_reason FROM enrollments e JOIN leads l ON l.id = e.lead_id WHERE l.email = 'b@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(status, "COMPLETED");
    assert!(reason.unwrap_or_default().contains("step 2 ends"));
    env.stop().await
}

#[tokio::test]
async fn resume_releases_a_backlog_no_faster_than_the_rate() -> anyhow::Result<()> {
    let (env, _smtp) = start(&[Role::Api, Role::Ingest]).await?;
    let mut body = sequence_body("R", &[("One", "1", json!({"type": "immediately"}))], "t");
    body["max_sends_per_minute"] = json!(10);
    let seq = env.create_sequence(body).await?;
    let sid = id(&seq);
    let emails: Vec<String> = (0..35).map(|i| format!("r{i}@example.com")).collect();
    enroll(&env, &emails.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    env.post(&format!("/v1/sequences/{sid}/pause"), json!({}))
        .await?;
    sqlx::query("UPDATE step_runs SET due_at = now() - interval '1 day'")
        .execute(&env.db)
        .await?;
    let (_, preview) = env
        .get(&format!("/v1/sequences/{sid}/resume-preview"))
        .await?;
    // Spaced as the senders space them: (60 s + a 3 s guard) / 10 apart, so no minute holds
    // more than 10, starting at the resume.
    let as_of: chrono::DateTime<chrono::Utc> =
        preview["as_of"].as_str().unwrap_or_default().parse()?;
    let mut times = Vec::new();
    for item in preview["items"].as_array().into_iter().flatten() {
        let at: chrono::DateTime<chrono::Utc> =
            item["send_at"].as_str().unwrap_or_default().parse()?;
        times.push(at);
    }
    times.sort();
    assert_eq!(times.len(), 35);
    assert_eq!(times[0], as_of);
    for pair in times.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::milliseconds(6_300));
    }
    for eleven in times.windows(11) {
        assert!(eleven[10] - eleven[0] > chrono::Duration::minutes(1));
    }
    env.stop().await
}

#[tokio::test]
async fn the_sender_enforces_the_rate_at_send_time() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender]).await?;
    let mut body = sequence_body("Rate", &[("One", "1", json!({"type": "immediately"}))], "t");
    body["max_sends_per_minute"] = json!(5);
    env.create_sequence(body).await?;
    let emails: Vec<String> = (0..12).map(|i| format!("s{i}@example.com")).collect();
    enroll(&env, &emails.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    // Settled: nothing in flight, nothing due now; every step either sent or due later.
    eventually(Duration::from_secs(15), "the sender to settle", || async {
        let busy = count(&env.db, "SELECT count(*) FROM step_runs WHERE state = 'QUEUED' OR (state = 'SCHEDULED' AND due_at <= now())").await?;
        let sent = count(&env.db, "SELECT count(*) FROM step_runs WHERE state = 'SENT'").await?;
        Ok((busy == 0 && sent >= 1).then_some(()))
    })
    .await?;
    let sent: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT sent_at FROM step_runs WHERE state = 'SENT'")
            .fetch_all(&env.db)
            .await?;
    let held: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT due_at FROM step_runs WHERE state = 'SCHEDULED'")
            .fetch_all(&env.db)
            .await?;
    assert_eq!(held.len() + sent.len(), 12, "held, not lost");
    assert!(!held.is_empty(), "the budget was reached");
    // What went and what waits, together: never more than 5 in any minute.
    let mut all: Vec<_> = sent.iter().chain(&held).copied().collect();
    all.sort();
    for (i, start) in all.iter().enumerate() {
        let in_minute = all[i..]
            .iter()
            .take_while(|t| **t - *start < chrono::Duration::minutes(1))
            .count();
        assert!(
            in_minute <= 5,
            "{in_minute} in the minute from {start}: {all:?}"
        );
    }
    let waits: Vec<String> =
        sqlx::query_scalar("SELECT last_error FROM step_runs WHERE state = 'SCHEDULED'")
            .fetch_all(&env.db)
            .await?;
    assert!(
        waits
            .iter()
            .all(|w| w.starts_with("sequence limit (5 per PT1M) until ")),
        "{waits:?}"
    );
    assert_eq!(smtp.count(), sent.len());
    env.stop().await
}

#[tokio::test]
async fn cancel_stops_one_lead_even_with_a_step_queued() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "C",
            &[
                ("One", "1", json!({"type": "immediately"})),
                ("Two", "2", json!({"type": "immediately"})),
            ],
            "t",
        ))
        .await?;
    enroll(&env, &["keep@example.com", "stop@example.com"]).await?;
    eventually(Duration::from_secs(10), "steps queued", || async {
        Ok((count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'QUEUED'",
        )
        .await?
            == 2)
            .then_some(()))
    })
    .await?;
    let (_, view) = env
        .get(&format!(
            "/v1/sequences/{}/enrollments?lead=stop@example.com",
            id(&seq)
        ))
        .await?;
    let enrollment = view["enrollments"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, cancelled) = env
        .post(
            &format!("/v1/enrollments/{enrollment}/cancel"),
            json!({"reason": "asked to be removed"}),
        )
        .await?;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["end_reason"], "asked to be removed");
    // Cancelling again is harmless; with no body at all too.
    let resp = env
        .http
        .post(format!("{}/v1/enrollments/{enrollment}/cancel", env.base))
        .bearer_auth(&env.key)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);

    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    smtp.wait_for(2, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = smtp.received();
    assert_eq!(got.len(), 2, "keep@ gets both steps");
    assert!(
        got.iter()
            .all(|m| m.rcpt_to == vec!["keep@example.com".to_owned()]),
        "nothing for stop@"
    );
    let (_, one) = env.get(&format!("/v1/enrollments/{enrollment}")).await?;
    assert_eq!(one["steps"][0]["state"], "CANCELLED");

    // The lead can be re-enrolled later.
    let (status, re) = env
        .post(
            &format!("/v1/sequences/{}/re-enroll", id(&seq)),
            json!({"lead_emails": ["stop@example.com"]}),
        )
        .await?;
    assert_eq!((status, re["reenrolled"].as_i64()), (200, Some(1)), "{re}");
    smtp.wait_for(4, Duration::from_secs(10)).await?;
    let (status, err) = env
        .post(
            &format!("/v1/enrollments/{}/cancel", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn bulk_cancel_stops_the_named_or_every_active_enrollment_even_with_steps_queued()
-> anyhow::Result<()> {
    // No sender yet: every first step sits QUEUED in RabbitMQ while the cancels happen.
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Bulk",
            &[("One", "1", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let sid = id(&seq);
    let leads = [
        "b1@example.com",
        "b2@example.com",
        "b3@example.com",
        "b4@example.com",
        "keep@example.com",
    ];
    enroll(&env, &leads).await?;
    eventually(Duration::from_secs(10), "steps queued", || async {
        Ok((count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'QUEUED'",
        )
        .await?
            == 5)
            .then_some(()))
    })
    .await?;
    let (_, view) = env.get(&format!("/v1/sequences/{sid}/enrollments")).await?;
    let by_lead = |email: &str| {
        view["enrollments"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["lead_email"] == email))
            .map(id)
            .unwrap_or_default()
    };
    let path = format!("/v1/sequences/{sid}/enrollments/cancel");

    // Named: two of them, one twice, and an id that is not an enrollment of this sequence.
    let stranger = uuid::Uuid::new_v4().to_string();
    let (status, r) = env
        .post(&path, json!({"enrollment_ids": [by_lead(leads[0]), by_lead(leads[1]), by_lead(leads[0]), stranger], "reason": "wrong list"}))
        .await?;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["cancelled"].as_i64(),
            r["already_ended"].as_i64(),
            r["not_found"].as_i64()
        ),
        (Some(2), Some(0), Some(1)),
        "{r}"
    );
    let (_, r) = env
        .post(&path, json!({"enrollment_ids": [by_lead(leads[0])]}))
        .await?;
    assert_eq!(r["already_ended"].as_i64(), Some(1), "{r}");
    let (_, one) = env
        .get(&format!("/v1/enrollments/{}", by_lead(leads[0])))
        .await?;
    assert_eq!(
        (one["status"].as_str(), one["end_reason"].as_str()),
        (Some("CANCELLED"), Some("wrong list"))
    );

    // Bad requests name the field; another workspace's call finds nothing.
    for body in [
        json!({}),
        json!({"enrollment_ids": []}),
        json!({"enrollment_ids": [by_lead(leads[2])], "all_active": true}),
    ] {
        let (status, err) = env.post(&path, body.clone()).await?;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (422, Some("enrollment_ids")),
            "{body}"
        );
    }
    let other = format!("other-{}", uuid::Uuid::new_v4().simple());
    pulse_shared::db::provision_key(&env.db, uuid::Uuid::new_v4(), "other", &other).await?;
    let (status, _) = env
        .call_as(
            &other,
            reqwest::Method::POST,
            &path,
            Some(json!({"all_active": true})),
        )
        .await?;
    assert_eq!(status, 404);

    // All active: b3, b4 and keep@. Re-enrolling keep@ then shows the sequence still works, and
    // the cancelled enrollments' queued first steps never go out.
    let (status, r) = env.post(&path, json!({"all_active": true})).await?;
    assert_eq!((status, r["cancelled"].as_i64()), (200, Some(3)), "{r}");
    let audited = count(
        &env.db,
        "SELECT count(*) FROM audit_events WHERE action = 'enrollment_cancelled'",
    )
    .await?;
    assert_eq!(audited, 5, "each cancelled enrollment is audited");
    env.post(
        &format!("/v1/sequences/{sid}/re-enroll"),
        json!({"lead_emails": ["keep@example.com"]}),
    )
    .await?;
    // The audit names who was re-enrolled; a re-enroll that re-enrolled nobody writes nothing.
    env.post(
        &format!("/v1/sequences/{sid}/re-enroll"),
        json!({"lead_emails": ["keep@example.com"]}),
    )
    .await?;
    let named: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT after -> 'leads' FROM audit_events WHERE action = 're_enrolled' ORDER BY at",
    )
    .fetch_all(&env.db)
    .await?;
    assert_eq!(named, vec![json!(["keep@example.com"])]);
    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    smtp.wait_for(1, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = smtp.received();
    assert_eq!(got.len(), 1, "only the re-enrolled lead gets mail");
    assert_eq!(got[0].rcpt_to, vec!["keep@example.com".to_owned()]);
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn content_is_frozen_when_queued_and_edits_reach_the_rest() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "E",
            &[
                ("Old one", "old body 1", json!({"type": "immediately"})),
                ("Old two", "old body 2", json!({"type": "immediately"})),
            ],
            "t",
        ))
        .await?;
    let sid = id(&seq);
    enroll(&env, &["ada@example.com"]).await?;
    eventually(Duration::from_secs(10), "step 1 queued", || async {
        Ok((count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'QUEUED'",
        )
        .await?
            == 1)
            .then_some(()))
    })
    .await?;
    let steps = seq["steps"].as_array().cloned().unwrap_or_default();
    let edit = json!({"steps": [
        {"id": steps[0]["id"], "subject": "New one", "body": "new body 1", "timing": {"type": "immediately"}},
        {"id": steps[1]["id"], "subject": "New two", "body": "new body 2", "timing": {"type": "immediately"}}
    ]});
    let (status, changed) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(edit),
        )
        .await?;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["sequence"]["version"], 2);
    assert!(
        changed["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("already queued"),
        "{changed}"
    );

    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    let got = smtp.wait_for(2, Duration::from_secs(10)).await?;
    assert_eq!(
        got[0].subject.as_deref(),
        Some("Old one"),
        "queued before the edit: old content"
    );
    assert_eq!(
        got[1].subject.as_deref(),
        Some("New two"),
        "queued after the edit: new content"
    );
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT sequence_version FROM step_runs ORDER BY position")
            .fetch_all(&env.db)
            .await?;
    assert_eq!(
        versions,
        vec![1, 2],
        "every send traces to the version that rendered it"
    );
    let (_, sends) = env.get(&format!("/v1/sequences/{sid}/sends")).await?;
    assert_eq!(sends["sends"][1]["sequence_version"], 2);
    let (_, history) = env.get(&format!("/v1/sequences/{sid}/versions")).await?;
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        history["versions"][0]["snapshot"]["steps"][0]["subject"],
        "Old one"
    );
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn edits_to_timing_order_and_steps_apply_to_enrollments_in_flight() -> anyhow::Result<()> {
    let (env, _smtp) = start(&[Role::Api, Role::Ingest]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "S",
            &[
                ("A", "a", json!({"type": "immediately"})),
                ("B", "b", json!({"type": "delay", "delay": "P1D"})),
                ("C", "c", json!({"type": "delay", "delay": "P1D"})),
            ],
            "t",
        ))
        .await?;
    let sid = id(&seq);
    let steps = seq["steps"].as_array().cloned().unwrap_or_default();
    enroll(&env, &["ada@example.com"]).await?;
    // Pretend step A went out an hour ago and B is pending (due A + 1 day).
    sqlx::query("UPDATE step_runs SET state = 'SENT', sent_at = now() - interval '1 hour'")
        .execute(&env.db)
        .await?;
    let enrollment: uuid::Uuid = sqlx::query_scalar("SELECT id FROM enrollments")
        .fetch_one(&env.db)
        .await?;
    let step_b: uuid::Uuid = steps[1]["id"].as_str().unwrap_or_default().parse()?;
    sqlx::query(
        "INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position, generation, due_at)
         SELECT gen_random_uuid(), workspace_id, sequence_id, id, $2, 2, 1, now() + interval '23 hours' FROM enrollments WHERE id = $1",
    )
    .bind(enrollment)
    .bind(step_b)
    .execute(&env.db)
    .await?;
    let step = |s: &Value, delay: &str| json!({"id": s["id"], "subject": s["subject"], "body": s["body"], "timing": {"type": "delay", "delay": delay}});
    let first = json!({"id": steps[0]["id"], "subject": "A", "body": "a", "timing": {"type": "immediately"}});

    // Timing change: B is now due 2 hours after A's send.
    let (status, changed) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"steps": [first, step(&steps[1], "PT2H"), step(&steps[2], "P1D")]})),
        )
        .await?;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["warnings"].as_array().is_some_and(|w| {
        w.iter()
            .any(|x| x.as_str().unwrap_or_default().contains("paused"))
    }));
    let hours: f64 = sqlx::query_scalar("SELECT extract(epoch FROM due_at - now())::float8 / 3600 FROM step_runs WHERE step_id = $1")
        .bind(step_b)
        .fetch_one(&env.db)
        .await?;
    assert!(
        (0.9..1.1).contains(&hours),
        "B due ~1h from now (2h after A), got {hours}"
    );

    // Delete B while the enrollment waits on it: it moves on to C, due a day after A's send.
    let (status, changed) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"steps": [first, step(&steps[2], "P1D")], "delete_missing_steps": true})),
        )
        .await?;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        changed["sequence"]["steps"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(changed["sequence"]["steps"][1]["position"], 2);
    let (_, one) = env.get(&format!("/v1/enrollments/{enrollment}")).await?;
    let states: Vec<(i64, String)> = one["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["position"].as_i64().unwrap_or_default(),
                s["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (1, "SENT".into()),
            (2, "SKIPPED".into()),
            (2, "SCHEDULED".into())
        ],
        "{one}"
    );
    assert_eq!(one["current_step"], 2);

    // Bad edits: unknown step id, a deleted sequence.
    let (status, err) = env
        .call(reqwest::Method::PATCH, &format!("/v1/sequences/{sid}"),
            Some(json!({"steps": [{"id": uuid::Uuid::new_v4(), "subject": "x", "body": "y", "timing": {"type": "immediately"}}]})))
        .await?;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{err}"
    );
    let (status, err) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"max_sends_per_minute": 0})),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("max_sends_per_minute"))
    );
    let (status, renamed) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"name": "Renamed"})),
        )
        .await?;
    assert_eq!(
        (status, renamed["sequence"]["name"].as_str()),
        (200, Some("Renamed"))
    );
    env.call(
        reqwest::Method::DELETE,
        &format!("/v1/sequences/{sid}"),
        None,
    )
    .await?;
    let (status, _) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"name": "x"})),
        )
        .await?;
    assert_eq!(status, 409);
    env.stop().await
}

#[tokio::test]
async fn delete_stops_everything_and_keeps_the_records() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "D",
            &[
                ("One", "1", json!({"type": "immediately"})),
                ("Two", "2", json!({"type": "delay", "delay": "PT1S"})),
            ],
            "t",
        ))
        .await?;
    let sid = id(&seq);
    enroll(&env, &["a@example.com", "b@example.com"]).await?;
    let token = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &token);
    smtp.wait_for(2, Duration::from_secs(10)).await?;
    let (status, deleted) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/sequences/{sid}"),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["sequence"]["status"], "DELETED");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(smtp.count(), 2, "step 2 never goes out");

    // Records stay readable; nothing can restart it.
    let (status, got) = env.get(&format!("/v1/sequences/{sid}")).await?;
    assert_eq!((status, got["status"].as_str()), (200, Some("DELETED")));
    let (_, enrollments) = env.get(&format!("/v1/sequences/{sid}/enrollments")).await?;
    assert!(
        enrollments["enrollments"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| e["status"] == "CANCELLED" && e["end_reason"] == "sequence deleted")
    );
    let (_, sends) = env.get(&format!("/v1/sequences/{sid}/sends")).await?;
    assert_eq!(sends["sends"].as_array().map(Vec::len), Some(2));
    let (_, by_lead) = env.get("/v1/sends?lead=a@example.com&state=SENT").await?;
    assert_eq!(by_lead["sends"].as_array().map(Vec::len), Some(1));
    for action in ["pause", "resume", "re-enroll"] {
        let (status, _) = env
            .post(
                &format!("/v1/sequences/{sid}/{action}"),
                json!({"all_not_active": true}),
            )
            .await?;
        assert_eq!(status, 409, "{action} on a deleted sequence");
    }
    let (status, _) = env
        .post(
            &format!("/v1/sequences/{sid}/enrollments"),
            json!({"lead": {"email": "c@example.com"}}),
        )
        .await?;
    assert_eq!(status, 409);
    let (_, res) = env
        .post(
            "/v1/events",
            json!({"events": [tag_event("after", "d@example.com")]}),
        )
        .await?;
    assert_eq!(
        res["results"][0]["enrollments"],
        json!([]),
        "a deleted sequence's triggers are gone"
    );
    token.cancel();
    sender.await?;
    env.stop().await
}

#[tokio::test]
async fn re_enroll_starts_a_new_generation_from_step_one() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender]).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Again",
            &[
                ("One", "1", json!({"type": "immediately"})),
                ("Two", "2", json!({"type": "immediately"})),
            ],
            "t",
        ))
        .await?;
    let sid = id(&seq);
    enroll(&env, &["a@example.com", "b@example.com"]).await?;
    smtp.wait_for(4, Duration::from_secs(10)).await?;
    eventually(Duration::from_secs(10), "both completed", || async {
        Ok((count(
            &env.db,
            "SELECT count(*) FROM enrollments WHERE status = 'COMPLETED'",
        )
        .await?
            == 2)
            .then_some(()))
    })
    .await?;
    enroll(&env, &["active@example.com"]).await?;
    // A lead currently active, one never enrolled, an unknown one: reported, not duplicated.
    let (status, re) = env
        .post(
            &format!("/v1/sequences/{sid}/re-enroll"),
            json!({"lead_emails": ["a@example.com", "active@example.com", "nobody@example.com"]}),
        )
        .await?;
    assert_eq!(status, 200, "{re}");
    assert_eq!(
        (
            re["reenrolled"].as_i64(),
            re["already_active"].as_i64(),
            re["unknown_lead"].as_i64()
        ),
        (Some(1), Some(1), Some(1)),
        "{re}"
    );
    let (status, re) = env
        .post(
            &format!("/v1/sequences/{sid}/re-enroll"),
            json!({"all_not_active": true}),
        )
        .await?;
    assert_eq!(
        (status, re["reenrolled"].as_i64()),
        (200, Some(1)),
        "only b is left: {re}"
    );

    smtp.wait_for(10, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a_subjects: Vec<String> = smtp
        .received()
        .iter()
        .filter(|m| m.rcpt_to == vec!["a@example.com".to_owned()])
        .map(|m| m.subject.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        a_subjects,
        vec!["One", "Two", "One", "Two"],
        "from step 1 again"
    );
    let ledger: Vec<(i32, String)> = sqlx::query_as(
        "SELECT sl.generation, sl.state FROM send_ledger sl JOIN leads l ON l.id = sl.lead_id
         WHERE l.email = 'a@example.com' ORDER BY sl.generation, sl.position",
    )
    .fetch_all(&env.db)
    .await?;
    assert_eq!(
        ledger,
        vec![
            (1, "SENT".into()),
            (1, "SENT".into()),
            (2, "SENT".into()),
            (2, "SENT".into())
        ],
        "old generation's ledger intact"
    );
    let message_ids: std::collections::HashSet<String> = smtp
        .received()
        .iter()
        .filter_map(|m| m.message_id.clone())
        .collect();
    assert_eq!(
        message_ids.len(),
        smtp.count(),
        "a new generation never reuses a Message-ID"
    );

    let (status, err) = env
        .post(&format!("/v1/sequences/{sid}/re-enroll"), json!({}))
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("lead_emails"))
    );
    let (status, err) = env
        .post(
            &format!("/v1/sequences/{sid}/re-enroll"),
            json!({"lead_emails": ["nope"]}),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("lead_emails[0]"))
    );
    env.post(&format!("/v1/sequences/{sid}/pause"), json!({}))
        .await?;
    let (status, _) = env
        .post(
            &format!("/v1/sequences/{sid}/re-enroll"),
            json!({"all_not_active": true}),
        )
        .await?;
    assert_eq!(status, 409, "no re-enrollment into a paused sequence");
    env.stop().await
}

#[tokio::test]
async fn send_windows_follow_each_leads_zone_across_a_dst_change() -> anyhow::Result<()> {
    let (env, _smtp) = start(&[Role::Api, Role::Ingest]).await?;
    // Step 1 is due Friday 2027-03-26 at 18:30 UTC: after hours in Paris (19:30 CET) and Tokyo
    // (Saturday 03:30), but 14:30 in New York, inside its window. Europe moves its clocks on
    // Sunday 28 March, so Monday 09:00 in Paris is 07:00 UTC (it was 08:00 the week before).
    let mut body = sequence_body(
        "Window",
        &[(
            "One",
            "1",
            json!({"type": "on_date", "at": "2027-03-26T18:30:00Z"}),
        )],
        "t",
    );
    body["timezone"] = json!("Asia/Tokyo");
    body["send_window"] =
        json!({"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"});
    let seq = env.create_sequence(body).await?;
    let events = json!({"events": [
        {"id": "p", "type": "tag_applied", "tag": "t", "lead": {"email": "paris@example.com", "timezone": "Europe/Paris"}},
        {"id": "n", "type": "tag_applied", "tag": "t", "lead": {"email": "ny@example.com", "timezone": "America/New_York"}},
        {"id": "z", "type": "tag_applied", "tag": "t", "lead": {"email": "nozone@example.com"}}
    ]});
    env.post("/v1/events", events).await?;
    let (_, view) = env
        .get(&format!("/v1/sequences/{}/enrollments", id(&seq)))
        .await?;
    let due = |email: &str| -> String {
        view["enrollments"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["lead_email"] == email)
            .and_then(|e| e["next_due_at"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().ok();
    assert_eq!(
        at(&due("paris@example.com")),
        at("2027-03-29T07:00:00Z"),
        "Paris, after its DST change"
    );
    assert_eq!(
        at(&due("ny@example.com")),
        at("2027-03-26T18:30:00Z"),
        "New York: inside its window"
    );
    // No lead zone: the sequence's (Tokyo, no DST): Monday 09:00 JST = Monday 00:00 UTC.
    assert_eq!(
        at(&due("nozone@example.com")),
        at("2027-03-29T00:00:00Z"),
        "the sequence's zone"
    );
    env.stop().await
}

#[tokio::test]
async fn end_dates_stop_steps_that_cannot_go_out_in_time() -> anyhow::Result<()> {
    let (env, smtp) = start(&[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender]).await?;
    // A sequence that already ended enrolls, but its first step is skipped with the reason.
    let mut ended = sequence_body(
        "Ended",
        &[("One", "1", json!({"type": "immediately"}))],
        "old",
    );
    ended["end_date"] = json!("2020-01-01T00:00:00Z");
    env.create_sequence(ended).await?;
    // A live sequence whose step 2 gets an end date in the past while leads wait on it.
    let seq = env
        .create_sequence(sequence_body(
            "Live",
            &[
                ("One", "1", json!({"type": "immediately"})),
                ("Two", "2", json!({"type": "delay", "delay": "PT2S"})),
            ],
            "t",
        ))
        .await?;
    env.post(
        "/v1/events",
        json!({"events": [
            {"id": "a", "type": "tag_applied", "tag": "old", "lead": {"email": "a@example.com"}},
            tag_event("b", "b@example.com")
        ]}),
    )
    .await?;
    smtp.wait_for(1, Duration::from_secs(10)).await?;
    sqlx::query("UPDATE sequence_steps SET end_date = now() - interval '1 second' WHERE position = 2 AND sequence_id = $1::uuid")
        .bind(id(&seq))
        .execute(&env.db)
        .await?;
    eventually(
        Duration::from_secs(10),
        "both enrollments ended",
        || async {
            Ok((count(
                &env.db,
                "SELECT count(*) FROM enrollments WHERE status = 'COMPLETED'",
            )
            .await?
                == 2)
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = smtp.received();
    assert_eq!(got.len(), 1, "only b's step 1");
    assert_eq!(got[0].subject.as_deref(), Some("One"));
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT end_reason FROM enrollments ORDER BY end_reason")
            .fetch_all(&env.db)
            .await?;
    assert!(reasons[0].contains("step 2 ends"), "{reasons:?}");
    assert!(reasons[1].contains("the sequence ends"), "{reasons:?}");
    env.stop().await
}
