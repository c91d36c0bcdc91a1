//! Guardrails, from outside:
//! * `failures`: a relay that refuses every recipient with 554 makes a sequence pause itself
//!   once more than 10 of its last 20 sends failed; the audit log says why and the rest of its
//!   leads are held, not lost. A sequence with the guardrail off keeps going.
//! * `repeats`: an operator's re-enroll sends step 1 again; a generation a trigger made would
//!   repeat it, so the sequence pauses and that send is held, never sent.
//! * `overspeed`: Redis loses a day's counts (a restart without persistence), the limit lets a
//!   second day's worth through, and the sweep pauses the sequence from the ledger's count; a
//!   limit tightened below what already went out does not trip.

use std::time::Duration;

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, cleanup_redis, count, eventually, sequence_body};
use serde_json::Value;
use serde_json::json;

const LEADS: usize = 60;

#[tokio::test]
async fn a_relay_refusing_everything_makes_the_sequence_pause_itself_and_the_audit_says_why()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("guardrails", &[Role::All], |s| {
        s.smtp_url = Some(url);
        s.sender.concurrency = 4;
    })
    .await?;
    let (status, bad) = env
        .post(
            "/v1/sequences",
            json!({"name": "Bad", "sender": {"from": "a@example.com"},
                   "guardrails": {"failures": {"max_failed": 5, "of_last": 5}},
                   "steps": [{"subject": "A", "body": "a", "timing": {"type": "immediately"}}]}),
        )
        .await?;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"]["field"], "guardrails.failures.max_failed");

    let guarded = env
        .create_sequence(sequence_body(
            "Guarded",
            &[("A", "a", json!({"type": "immediately"}))],
            "guarded",
        ))
        .await?;
    assert_eq!(
        guarded["guardrails"],
        json!({"failures": {"max_failed": 10, "of_last": 20}, "repeats": {"within": "PT24H"},
               "overspeed": {"max_percent": 120}}),
        "the defaults"
    );
    let gid = guarded["id"].as_str().unwrap_or_default().to_owned();
    let mut body = sequence_body(
        "Unguarded",
        &[("B", "b", json!({"type": "immediately"}))],
        "unguarded",
    );
    body["guardrails"] = json!({"failures": null});
    let unguarded = env.create_sequence(body).await?;
    let uid = unguarded["id"].as_str().unwrap_or_default().to_owned();

    let mut events = Vec::new();
    for (tag, prefix) in [("guarded", "g"), ("unguarded", "u")] {
        for i in 0..LEADS {
            let email = format!("{prefix}{i}@example.com");
            smtp.refuse(&email, 554, None);
            events.push(
                json!({"id": format!("{tag}-{i}"), "type": "tag_applied", "tag": tag,
                               "lead": {"email": email}}),
            );
        }
    }
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);

    let event = tripped(&env, &gid).await?;
    assert_eq!(event["after"]["guardrail"], "failures", "{event}");
    let evidence = &event["after"]["evidence"];
    assert!(evidence["failed"].as_u64().unwrap_or(0) > 10, "{evidence}");
    assert_eq!(evidence["of_last"], 20, "{evidence}");
    assert!(
        evidence["examples"][0]["reply"]
            .as_str()
            .is_some_and(|r| r.contains("554")),
        "{evidence}"
    );

    // The unguarded one keeps going to the end; the guarded one's other leads wait, held.
    eventually(Duration::from_secs(60), "every unguarded send tried", || async {
        let failed = count(
            &env.db,
            &format!("SELECT count(*) FROM step_runs WHERE sequence_id = '{uid}' AND state = 'FAILED'"),
        )
        .await?;
        Ok((failed == LEADS as i64).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = count(
        &env.db,
        &format!(
            "SELECT count(*) FROM step_runs WHERE sequence_id = '{gid}'
               AND state IN ('SCHEDULED', 'QUEUED')"
        ),
    )
    .await?;
    let failed = count(
        &env.db,
        &format!("SELECT count(*) FROM step_runs WHERE sequence_id = '{gid}' AND state = 'FAILED'"),
    )
    .await?;
    assert!(held > 0, "the guarded sequence stopped before its end");
    assert_eq!(held + failed, LEADS as i64, "held, not lost");

    let metrics = env.metrics().await?;
    assert!(
        metrics.contains("pulse_guardrail_trips_total{rule=\"failures\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("guardrail"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    env.stop().await
}

/// The guardrail's audit event of a sequence, once it paused.
async fn tripped(env: &TestEnv, sequence: &str) -> anyhow::Result<Value> {
    eventually(
        Duration::from_secs(60),
        "the sequence paused itself",
        || async {
            let (_, s) = env.get(&format!("/v1/sequences/{sequence}")).await?;
            Ok((s["status"] == "PAUSED").then_some(()))
        },
    )
    .await?;
    let (_, audit) = env.get(&format!("/v1/sequences/{sequence}/audit")).await?;
    let event = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["action"] == "paused")
        .cloned()
        .unwrap_or_default();
    assert_eq!(event["actor"], "guardrail", "{audit}");
    Ok(event)
}

fn tag_events(tag: &str, emails: &[String]) -> Value {
    json!({"events": emails.iter().map(|e| json!({
        "id": format!("{tag}-{e}"), "type": "tag_applied", "tag": tag, "lead": {"email": e}
    })).collect::<Vec<_>>()})
}

#[tokio::test]
async fn a_repeat_outside_an_operator_re_enroll_pauses_the_sequence_and_is_never_sent()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("guard-repeats", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let step = [("Hello", "hi", json!({"type": "immediately"}))];
    let asked = env
        .create_sequence(sequence_body("Asked", &step, "asked"))
        .await?;
    let asked = asked["id"].as_str().unwrap_or_default().to_owned();
    let made = env
        .create_sequence(sequence_body("Made", &step, "made"))
        .await?;
    let made = made["id"].as_str().unwrap_or_default().to_owned();
    let asked_leads: Vec<String> = (0..20).map(|i| format!("asked{i}@example.com")).collect();
    let (status, _) = env
        .post("/v1/events", tag_events("asked", &asked_leads))
        .await?;
    assert_eq!(status, 200);
    let (status, _) = env
        .post(
            "/v1/events",
            tag_events("made", &["made@example.com".to_owned()]),
        )
        .await?;
    assert_eq!(status, 200);
    smtp.wait_for(21, Duration::from_secs(30)).await?;
    // The relay has the mail before the sender records it: the enrollments end just after.
    eventually(Duration::from_secs(30), "the first 20 enrollments ended", || async {
        let active = count(
            &env.db,
            &format!("SELECT count(*) FROM enrollments WHERE sequence_id = '{asked}' AND status = 'ACTIVE'"),
        )
        .await?;
        Ok((active == 0).then_some(()))
    })
    .await?;

    // An operator's re-enroll is exempt: step 1 goes to the 20 leads again, nothing pauses.
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{asked}/re-enroll"),
            json!({"lead_emails": asked_leads}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reenrolled"], 20, "{body}");
    smtp.wait_for(41, Duration::from_secs(30)).await?;
    let (_, s) = env.get(&format!("/v1/sequences/{asked}")).await?;
    assert_eq!(s["status"], "ACTIVE");

    // A generation a trigger made is not: close the window so the re-enrolled step waits, make
    // its generation look trigger-made, then open the window again.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%a")
        .to_string()
        .to_lowercase();
    let (status, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{made}"),
            Some(json!({"send_window": {"days": [tomorrow], "start": "00:00", "end": "23:59"}})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{made}/re-enroll"),
            json!({"lead_emails": ["made@example.com"]}),
        )
        .await?;
    assert_eq!(body["reenrolled"], 1, "{status} {body}");
    sqlx::query("UPDATE enrollments SET source = 'tag_applied' WHERE sequence_id = $1::uuid AND generation = 2")
        .bind(&made)
        .execute(&env.db)
        .await?;
    let (status, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{made}"),
            Some(json!({"send_window": null})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");

    let event = tripped(&env, &made).await?;
    assert_eq!(event["after"]["guardrail"], "repeats", "{event}");
    let evidence = &event["after"]["evidence"];
    assert_eq!(evidence["lead"], "made@example.com", "{evidence}");
    assert!(evidence["earlier_key"].is_string(), "{evidence}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to_made = smtp
        .received()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == "made@example.com"))
        .count();
    assert_eq!(to_made, 1, "the repeat was never sent");
    let held = count(
        &env.db,
        &format!("SELECT count(*) FROM step_runs WHERE sequence_id = '{made}' AND generation = 2 AND state = 'SCHEDULED'"),
    )
    .await?;
    assert_eq!(held, 1, "the repeat is held, not lost");
    let metrics = env.metrics().await?;
    assert!(metrics.contains("pulse_guardrail_trips_total{rule=\"repeats\"} 1"));
    env.stop().await
}

#[tokio::test]
async fn sends_past_a_limit_redis_forgot_pause_the_sequence_and_a_tightened_limit_does_not()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("guard-overspeed", &[Role::All], |s| {
        s.smtp_url = Some(url);
        s.scheduler.guardrail_interval = Duration::from_millis(200);
    })
    .await?;
    let step = [("Hello", "hi", json!({"type": "immediately"}))];
    let leads = |prefix: &str, from: usize, to: usize| -> Vec<String> {
        (from..to)
            .map(|i| format!("{prefix}{i}@example.com"))
            .collect()
    };
    // Ten sent with no limit, then a limit of 2 a day: what the looser limit allowed is not
    // counted against the tighter one.
    let tight = env
        .create_sequence(sequence_body("Tight", &step, "tight"))
        .await?;
    let tight = tight["id"].as_str().unwrap_or_default().to_owned();
    env.post("/v1/events", tag_events("tight", &leads("t", 0, 10)))
        .await?;
    smtp.wait_for(10, Duration::from_secs(30)).await?;
    let (status, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{tight}"),
            Some(json!({"limits": [{"max": 2, "per": "P1D"}]})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");

    // Fifty a day, fifty sent: at the limit, not over it.
    let mut body = sequence_body("Fast", &step, "fast");
    body["limits"] = json!([{"max": 50, "per": "P1D"}]);
    let fast = env.create_sequence(body).await?;
    let fast = fast["id"].as_str().unwrap_or_default().to_owned();
    env.post("/v1/events", tag_events("fast", &leads("f", 0, 50)))
        .await?;
    smtp.wait_for(60, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [&tight, &fast] {
        let (_, s) = env.get(&format!("/v1/sequences/{id}")).await?;
        assert_eq!(s["status"], "ACTIVE", "{s}");
    }

    // Redis restarts without persistence: the day's count is gone, and 300 more leads come in
    // while the limit lets a second day's worth through.
    cleanup_redis(&env.settings).await?;
    env.post("/v1/events", tag_events("fast", &leads("f", 50, 350)))
        .await?;
    let event = tripped(&env, &fast).await?;
    assert_eq!(event["after"]["guardrail"], "overspeed", "{event}");
    let evidence = &event["after"]["evidence"];
    assert_eq!(evidence["limit"]["max"], 50, "{evidence}");
    assert_eq!(evidence["limit"]["per"], "P1D", "{evidence}");
    assert!(evidence["sent"].as_i64().unwrap_or(0) > 60, "{evidence}");
    let (_, s) = env.get(&format!("/v1/sequences/{tight}")).await?;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    // Nothing lost, nothing doubled: each of the 350 is sent once or held.
    eventually(
        Duration::from_secs(20),
        "every run sent or held",
        || async {
            let settled = count(
                &env.db,
                &format!(
                    "SELECT count(*) FROM step_runs WHERE sequence_id = '{fast}'
                        AND state IN ('SENT', 'SCHEDULED')"
                ),
            )
            .await?;
            Ok((settled == 350).then_some(()))
        },
    )
    .await?;
    let sent = count(
        &env.db,
        &format!("SELECT count(*) FROM step_runs WHERE sequence_id = '{fast}' AND state = 'SENT'"),
    )
    .await?;
    assert!(sent < 350, "the pause held some: {sent} sent");
    let mut to: Vec<String> = smtp
        .received()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    let all = to.len();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), all, "an address got two mails");
    assert_eq!(
        all as i64,
        sent + 10,
        "the relay has what the ledger says went out"
    );
    env.stop().await
}
