//! Guardrails, from outside: a relay that refuses every recipient with 554 makes a sequence
//! pause itself once more than 10 of its last 20 sends failed; the audit log says why and the
//! rest of its leads are held, not lost. A sequence with the guardrail off keeps going.

use std::time::Duration;

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, count, eventually, sequence_body};
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
        json!({"failures": {"max_failed": 10, "of_last": 20}}),
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

    eventually(
        Duration::from_secs(60),
        "the guarded sequence paused",
        || async {
            let (_, s) = env.get(&format!("/v1/sequences/{gid}")).await?;
            Ok((s["status"] == "PAUSED").then_some(()))
        },
    )
    .await?;
    let (_, audit) = env.get(&format!("/v1/sequences/{gid}/audit")).await?;
    let event = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["action"] == "paused")
        .cloned()
        .unwrap_or_default();
    assert_eq!(event["actor"], "guardrail", "{audit}");
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
