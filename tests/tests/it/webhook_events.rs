//! The send, enrollment and lead events, from outside and under traffic: 300 leads go through a
//! two-step sequence while an endpoint listens. Every send, enrollment and end reaches it once
//! (by `webhook-id`), with the ids and the lead's address, the events of one enrollment in the
//! order they happened; a refused send is `send.failed` and its enrollment ends FAILED; a reply
//! and a bounce reported through `/v1/events` are `lead.replied` and `lead.bounced`. Delivered and
//! failed messages are pruned after the retention; pending ones stay.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, eventually};
use serde_json::{Value, json};

use super::webhooks::{Got, delivered, receiver, verify};

const LEADS: usize = 300;

/// The distinct events of `kind` (one per `webhook-id`), parsed, in the order they first arrived.
fn events(got: &std::sync::Mutex<Vec<Got>>, kind: &str) -> Vec<(String, Value)> {
    let mut seen = HashSet::new();
    delivered(got, kind)
        .into_iter()
        .filter(|g| seen.insert(g.headers["webhook-id"].clone()))
        .filter_map(|g| {
            let v: Value = serde_json::from_str(&g.body).ok()?;
            Some((g.headers["webhook-id"].clone(), v))
        })
        .collect()
}

#[tokio::test]
async fn sends_enrollments_replies_and_bounces_reach_an_endpoint_once_each_under_traffic()
-> anyhow::Result<()> {
    let (url, got) = receiver(0).await?;
    let smtp = SmtpServer::start().await?;
    let relay = smtp.url();
    let env = TestEnv::start("webhook_events", &[Role::All], |s| {
        s.smtp_url = Some(relay);
        s.webhooks.allow_private = true;
        s.webhooks.retry_base = Duration::from_millis(200);
    })
    .await?;
    let (status, made) = env
        .post(
            "/v1/webhooks",
            json!({"url": url, "events": ["send.sent", "send.failed", "enrollment.created",
                                          "enrollment.ended", "lead.replied", "lead.bounced"]}),
        )
        .await?;
    assert_eq!(status, 201, "{made}");
    let secret = made["secret"].as_str().unwrap_or_default().to_owned();
    env.create_sequence(json!({
        "name": "Hooked", "sender": {"from": "Rep <rep@sales.test>"},
        "triggers": [{"type": "tag_applied", "tag": "go"}],
        "steps": [{"subject": "Hi", "body": "One", "timing": {"type": "immediately"}},
                  {"subject": "Again", "body": "Two", "timing": {"type": "delay", "delay": "PT1S"}}]
    }))
    .await?;
    smtp.refuse("refused@example.org", 550, None);
    let mut emails: Vec<String> = (0..LEADS).map(|i| format!("lead{i}@example.org")).collect();
    emails.push("refused@example.org".into());
    for (n, chunk) in emails.chunks(100).enumerate() {
        let batch: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| {
                json!({"id": format!("{n}-{i}"), "type": "tag_applied", "tag": "go",
                                 "lead": {"email": e}})
            })
            .collect();
        let (status, r) = env.post("/v1/events", json!({"events": batch})).await?;
        assert_eq!(status, 200, "{r}");
    }

    // Every enrollment ends: 300 after both steps, one refused.
    eventually(
        Duration::from_secs(90),
        "every enrollment ended",
        || async {
            let ended = pulse_tests::count(
                &env.db,
                "SELECT count(*) FROM enrollments WHERE status <> 'ACTIVE'",
            )
            .await?;
            Ok((ended == LEADS as i64 + 1).then_some(()))
        },
    )
    .await?;
    // A reply and a bounce, reported as events.
    let replier = pulse_tests::sent_message_id(&env.db, "lead0@example.org").await?;
    let (status, r) = env
        .post(
            "/v1/events",
            json!({"events": [
                {"id": "r1", "type": "replied", "lead": {"email": "lead0@example.org"},
                 "message_id": replier},
                {"id": "b1", "type": "bounced", "lead": {"email": "lead1@example.org"},
                 "reason": "550 5.1.1 user unknown"}]}),
        )
        .await?;
    assert_eq!(status, 200, "{r}");

    let want = [
        ("send.sent", 2 * LEADS),
        ("send.failed", 1),
        ("enrollment.created", LEADS + 1),
        ("enrollment.ended", LEADS + 1),
        ("lead.replied", 1),
        ("lead.bounced", 1),
    ];
    eventually(Duration::from_secs(60), "every event delivered", || async {
        Ok(want
            .iter()
            .all(|(kind, n)| events(&got, kind).len() >= *n)
            .then_some(()))
    })
    .await?;
    // Nothing more arrives: each event once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (kind, n) in want {
        assert_eq!(events(&got, kind).len(), n, "{kind}");
    }

    // Each send once, with the ledger's key and the lead's address.
    let ledger: HashMap<String, (String, i32)> = sqlx::query_as::<_, (String, String, i32)>(
        "SELECT sl.idempotency_key, l.email, sl.position FROM send_ledger sl
         JOIN leads l ON l.id = sl.lead_id WHERE sl.state = 'SENT'",
    )
    .fetch_all(&env.db)
    .await?
    .into_iter()
    .map(|(k, e, p)| (k, (e, p)))
    .collect();
    let sent = events(&got, "send.sent");
    let keys: HashSet<&str> = sent
        .iter()
        .filter_map(|(_, v)| v["data"]["send_key"].as_str())
        .collect();
    assert_eq!(keys.len(), 2 * LEADS, "one event per send");
    for (_, v) in &sent {
        let d = &v["data"];
        let key = d["send_key"].as_str().unwrap_or_default();
        let (email, position) = &ledger[key];
        assert_eq!(d["email"], email.as_str(), "{v}");
        assert_eq!(d["position"], *position, "{v}");
        assert_eq!(d["outcome"], "SENT");
        assert!(d["message_id"].is_string() && d["enrollment_id"].is_string());
    }
    let failed = &events(&got, "send.failed")[0].1["data"];
    assert_eq!(failed["email"], "refused@example.org");
    assert_eq!(failed["smtp_code"], 550);

    // Per enrollment: created, step 1 sent, step 2 sent, ended, in that order.
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let all = got.lock().map(|g| g.clone()).unwrap_or_default();
    let mut seen = HashSet::new();
    for g in all {
        if !seen.insert(g.headers["webhook-id"].clone()) {
            continue;
        }
        let v: Value = serde_json::from_str(&g.body)?;
        if let Some(e) = v["data"]["enrollment_id"].as_str() {
            let what = match v["type"].as_str() {
                Some("send.sent") => format!("sent {}", v["data"]["position"]),
                Some(t) => t.to_owned(),
                None => continue,
            };
            order.entry(e.to_owned()).or_default().push(what);
        }
    }
    let completed = order
        .values()
        .filter(|o| o[..] == ["enrollment.created", "sent 1", "sent 2", "enrollment.ended"])
        .count();
    // The reply and the bounce may name their leads' enrollments after they ended.
    assert!(completed >= LEADS - 2, "{completed} in order");
    let ended = events(&got, "enrollment.ended");
    let reasons: HashMap<&str, usize> = ended.iter().fold(HashMap::new(), |mut m, (_, v)| {
        *m.entry(v["data"]["status"].as_str().unwrap_or_default())
            .or_default() += 1;
        m
    });
    assert_eq!(reasons.get("COMPLETED"), Some(&LEADS), "{reasons:?}");
    assert_eq!(reasons.get("FAILED"), Some(&1), "{reasons:?}");

    let replied = &events(&got, "lead.replied")[0].1["data"];
    assert_eq!(replied["email"], "lead0@example.org");
    let bounced = &events(&got, "lead.bounced")[0].1["data"];
    assert_eq!(bounced["email"], "lead1@example.org");
    assert_eq!(bounced["kind"], "bounce");

    // Signed like every other event.
    let one = delivered(&got, "send.sent").remove(0);
    assert_eq!(verify(&secret, &one).await?["type"], "send.sent");
    env.stop().await
}

#[tokio::test]
async fn delivered_and_failed_messages_are_pruned_after_the_retention_and_pending_ones_stay()
-> anyhow::Result<()> {
    let settings = pulse_tests::isolated_settings("webhook_prune");
    let db = pulse_tests::create_database(&settings).await?;
    let ws = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO workspaces (id, name) VALUES ($1, 'prune')")
        .bind(ws)
        .execute(&db)
        .await?;
    let hook = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret)
         VALUES ($1, $2, 'https://example.com/h', ARRAY['send.sent'], 'whsec_eA==')",
    )
    .bind(hook)
    .bind(ws)
    .execute(&db)
    .await?;
    for (state, age_hours) in [
        ("DELIVERED", 3),
        ("FAILED", 3),
        ("PENDING", 3),
        ("DELIVERED", 0),
    ] {
        sqlx::query(
            "INSERT INTO webhook_messages (webhook_id, workspace_id, type, payload, state, created_at)
             VALUES ($1, $2, 'send.sent', '{}', $3, now() - make_interval(hours => $4))",
        )
        .bind(hook)
        .bind(ws)
        .bind(state)
        .bind(age_hours)
        .execute(&db)
        .await?;
    }
    let pruned = pulse::prune_webhook_messages(&db, Duration::from_secs(3600)).await?;
    assert_eq!(pruned, 2);
    let left: Vec<(String, bool)> = sqlx::query_as(
        "SELECT state, created_at > now() - interval '1 hour' FROM webhook_messages ORDER BY id",
    )
    .fetch_all(&db)
    .await?;
    assert_eq!(
        left,
        vec![
            ("PENDING".to_owned(), false),
            ("DELIVERED".to_owned(), true)
        ]
    );
    pulse_tests::cleanup(&settings).await
}

/// The send events say what state a send came from: a send whose answer was lost is
/// `send.unknown` (from SENDING), and settling it as sent is `send.sent` from UNKNOWN, after
/// which its enrollment ends. Each is written once, by the statement that made the change.
#[tokio::test]
async fn a_lost_answer_and_its_resolution_are_events_that_name_the_state_before()
-> anyhow::Result<()> {
    use pulse_tests::smtp::AfterData;
    let (url, got) = receiver(0).await?;
    let smtp = SmtpServer::start().await?;
    smtp.after_data("lost@example.org", AfterData::AcceptThenDrop, Some(1));
    let relay = smtp.url();
    let env = TestEnv::start("webhook_previous", &[Role::All], |s| {
        s.smtp_url = Some(relay);
        s.webhooks.allow_private = true;
        s.sender.smtp_timeout = Duration::from_millis(800);
    })
    .await?;
    let (status, made) = env
        .post(
            "/v1/webhooks",
            json!({"url": url, "events": ["send.sent", "send.unknown", "enrollment.ended"]}),
        )
        .await?;
    assert_eq!(status, 201, "{made}");
    env.create_sequence(json!({
        "name": "Lost", "sender": {"from": "Rep <rep@sales.test>"},
        "triggers": [{"type": "tag_applied", "tag": "go"}],
        "steps": [{"subject": "Hi", "body": "One", "timing": {"type": "immediately"}}]
    }))
    .await?;
    let (status, r) = env
        .post(
            "/v1/events",
            json!({"events": [{"id": "1", "type": "tag_applied", "tag": "go",
                               "lead": {"email": "lost@example.org"}}]}),
        )
        .await?;
    assert_eq!(status, 200, "{r}");
    let key: String = eventually(Duration::from_secs(30), "the send is UNKNOWN", || async {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT idempotency_key FROM send_ledger WHERE state = 'UNKNOWN'",
        )
        .fetch_optional(&env.db)
        .await?)
    })
    .await?;
    let (status, r) = env
        .post(
            &format!("/v1/sends/{key}/resolve"),
            json!({"outcome": "sent", "note": "in the relay's log"}),
        )
        .await?;
    assert_eq!(status, 200, "{r}");
    eventually(
        Duration::from_secs(30),
        "three events delivered",
        || async {
            Ok(["send.unknown", "send.sent", "enrollment.ended"]
                .iter()
                .all(|kind| !events(&got, kind).is_empty())
                .then_some(()))
        },
    )
    .await?;
    // Nothing more arrives for this one send.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (kind, previous, outcome) in [
        ("send.unknown", "SENDING", "UNKNOWN"),
        ("send.sent", "UNKNOWN", "SENT"),
    ] {
        let seen = events(&got, kind);
        assert_eq!(seen.len(), 1, "{kind}: {seen:?}");
        let d = &seen[0].1["data"];
        assert_eq!(
            (d["previous"].as_str(), d["outcome"].as_str()),
            (Some(previous), Some(outcome)),
            "{d}"
        );
        assert_eq!(d["send_key"], key.as_str());
        assert_eq!(d["email"], "lost@example.org");
    }
    let ended = events(&got, "enrollment.ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].1["data"]["status"], "COMPLETED");
    env.stop().await
}
