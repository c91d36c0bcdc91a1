//! Who goes first when many steps are due at once: round-robin across workspaces (a big
//! backlog never starves a small one), then priority within a workspace, with aging so a low
//! priority is never starved; and under one shared limit, a higher priority takes the next free
//! slot rather than queueing behind the lower-priority steps already waiting on it. Checked on
//! the order the relay receives the mail.

use std::time::Duration;

use pulse::Role;
use pulse_tests::{
    SmtpServer, TestEnv, count, eventually, sequence_body, spawn_scheduler, spawn_sender,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn start(tag: &str, aging_ms: u64) -> anyhow::Result<(TestEnv, SmtpServer)> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start(tag, &[Role::Api, Role::Ingest], |s| {
        s.smtp_url = Some(url);
        s.scheduler.batch_size = 20;
        s.scheduler.priority_aging = Duration::from_millis(aging_ms);
        s.sender.concurrency = 4;
        s.sender.prefetch = 4;
    })
    .await?;
    Ok((env, smtp))
}

fn events(tag: &str, prefix: &str, n: usize) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("{prefix}{i}"), "type": "tag_applied", "tag": tag,
                        "lead": {"email": format!("{prefix}{i}@example.com")}})
        })
        .collect();
    json!({"events": events})
}

/// Waits until `n` steps are SCHEDULED (every lead enrolled).
async fn scheduled(env: &TestEnv, n: i64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), "the due steps", || async {
        let have = count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED'",
        )
        .await?;
        Ok((have == n).then_some(()))
    })
    .await
}

/// Runs a scheduler and a sender until `n` messages arrived; returns the recipients in order.
async fn drain(env: &TestEnv, smtp: &SmtpServer, n: usize) -> anyhow::Result<Vec<String>> {
    let token = CancellationToken::new();
    let scheduler = spawn_scheduler(&env.settings, &token);
    let sender = spawn_sender(&env.settings, &token);
    let got = smtp.wait_for(n, Duration::from_secs(90)).await;
    token.cancel();
    let _ = tokio::join!(scheduler, sender);
    let mut got = got?;
    got.sort_by_key(|m| m.at);
    Ok(got.into_iter().map(|m| m.rcpt_to.join(",")).collect())
}

fn first_of(order: &[String], prefix: &str) -> Vec<usize> {
    order
        .iter()
        .enumerate()
        .filter(|(_, r)| r.starts_with(prefix))
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test]
async fn a_small_workspace_is_not_starved_by_a_big_backlog() -> anyhow::Result<()> {
    let (env, smtp) = start("fair-workspaces", 600_000).await?;
    env.create_sequence(sequence_body(
        "Big",
        &[("Big", "b", json!({"type": "immediately"}))],
        "big",
    ))
    .await?;
    env.post("/v1/events", events("big", "big", 300)).await?;
    // The other workspace's steps come due after every one of the big backlog's.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = uuid::Uuid::new_v4();
    pulse_shared::db::provision_key(&env.db, other, "small", "small-key").await?;
    let (status, _) = env
        .call_as(
            "small-key",
            Method::POST,
            "/v1/sequences",
            Some(sequence_body(
                "Small",
                &[("Small", "s", json!({"type": "immediately"}))],
                "small",
            )),
        )
        .await?;
    assert_eq!(status, 201);
    let (status, _) = env
        .call_as(
            "small-key",
            Method::POST,
            "/v1/events",
            Some(events("small", "small", 5)),
        )
        .await?;
    assert_eq!(status, 200);
    scheduled(&env, 305).await?;

    let order = drain(&env, &smtp, 305).await?;
    let small = first_of(&order, "small");
    assert_eq!(small.len(), 5);
    // The first claims take one step of each workspace in turn.
    assert!(
        small.iter().all(|i| *i < 40),
        "the small workspace's sends at {small:?} of 305"
    );
    env.stop().await
}

#[tokio::test]
async fn higher_priority_goes_first_and_aging_lifts_a_waiting_low_priority() -> anyhow::Result<()> {
    // Priority: 5 high-priority steps due after 200 low-priority ones still go first.
    let (env, smtp) = start("fair-priority", 600_000).await?;
    let mut low = sequence_body(
        "Low",
        &[("Low", "l", json!({"type": "immediately"}))],
        "low",
    );
    low["priority"] = json!(1);
    env.create_sequence(low).await?;
    env.post("/v1/events", events("low", "low", 200)).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut high = sequence_body(
        "High",
        &[("High", "h", json!({"type": "immediately"}))],
        "high",
    );
    high["priority"] = json!(9);
    let created = env.create_sequence(high).await?;
    assert_eq!(created["priority"], 9);
    env.post("/v1/events", events("high", "high", 5)).await?;
    scheduled(&env, 205).await?;
    let order = drain(&env, &smtp, 205).await?;
    let high = first_of(&order, "high");
    assert!(high.iter().all(|i| *i < 25), "high priority at {high:?}");
    env.stop().await?;

    // Aging: low-priority steps that have waited a minute, with a level per second of waiting,
    // are not left behind 200 fresh high-priority ones.
    let (env, smtp) = start("fair-aging", 1_000).await?;
    let mut high = sequence_body(
        "High",
        &[("High", "h", json!({"type": "immediately"}))],
        "high",
    );
    high["priority"] = json!(9);
    env.create_sequence(high).await?;
    let mut low = sequence_body(
        "Low",
        &[("Low", "l", json!({"type": "immediately"}))],
        "low",
    );
    low["priority"] = json!(0);
    let low = env.create_sequence(low).await?;
    env.post("/v1/events", events("high", "high", 200)).await?;
    env.post("/v1/events", events("low", "low", 5)).await?;
    scheduled(&env, 205).await?;
    sqlx::query("UPDATE step_runs SET due_at = now() - interval '1 minute' WHERE sequence_id = $1")
        .bind(uuid::Uuid::parse_str(
            low["id"].as_str().unwrap_or_default(),
        )?)
        .execute(&env.db)
        .await?;
    let order = drain(&env, &smtp, 205).await?;
    let aged = first_of(&order, "low");
    assert!(
        aged.iter().all(|i| *i < 25),
        "aged low priority at {aged:?}"
    );
    env.stop().await
}

#[tokio::test]
async fn under_one_shared_limit_a_higher_priority_takes_the_next_free_slots() -> anyhow::Result<()>
{
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("fair-limit", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    // One limit both sequences share: the workspace's, 10 a second.
    let (status, body) = env
        .call(
            Method::PATCH,
            "/v1/workspace",
            Some(json!({"limits": [{"max": 10, "per": "PT1S"}]})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let mut low = sequence_body(
        "Low",
        &[("Low", "l", json!({"type": "immediately"}))],
        "low",
    );
    low["priority"] = json!(1);
    env.create_sequence(low).await?;
    let mut high = sequence_body(
        "High",
        &[("High", "h", json!({"type": "immediately"}))],
        "high",
    );
    high["priority"] = json!(9);
    env.create_sequence(high).await?;

    // 60 low-priority steps: most of them wait on the limit, each with a slot of its own.
    env.post("/v1/events", events("low", "low", 60)).await?;
    eventually(
        Duration::from_secs(20),
        "low steps waiting on the limit",
        || async {
            let waiting = count(
                &env.db,
                "SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED'
               AND last_error LIKE 'workspace limit%'",
            )
            .await?;
            Ok((waiting >= 30).then_some(()))
        },
    )
    .await?;
    // 5 high-priority steps come due now: they take the next free slots, not the 61st.
    env.post("/v1/events", events("high", "high", 5)).await?;
    let mut got = smtp.wait_for(65, Duration::from_secs(60)).await?;
    got.sort_by_key(|m| m.at);
    let order: Vec<String> = got.into_iter().map(|m| m.rcpt_to.join(",")).collect();
    // Queued behind the waiting ones (the old order), they arrived 58th to 61st. The relay's
    // arrival order is the slots' order give or take what a loaded machine reorders between the
    // check and the relay (a slot is 115 ms here), so the bound leaves room for that.
    let high = first_of(&order, "high");
    assert!(high.iter().all(|i| *i < 40), "high priority at {high:?}");
    env.stop().await
}
