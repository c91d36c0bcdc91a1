//! The send history (`GET /v1/sends`) across a workspace.

use std::time::Duration;

use pulse::Role;
use pulse_tests::TestEnv;
use serde_json::json;

/// The workspace-wide send history (no sequence, no lead) is read a page per sequence and
/// merged: pages of three, across two sequences whose sends interleave, give every send once,
/// in (time, key) order, and a state filter holds across the merge.
#[tokio::test]
async fn the_send_history_pages_across_sequences_in_order() -> anyhow::Result<()> {
    let smtp = pulse_tests::SmtpServer::start().await?;
    smtp.refuse("no@example.com", 550, None);
    let url = smtp.url();
    let env = TestEnv::start("ledger_pages", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    for (name, tag) in [("A", "a"), ("B", "b")] {
        env.create_sequence(pulse_tests::sequence_body(
            name,
            &[("Hi", "B", json!({"type": "immediately"}))],
            tag,
        ))
        .await?;
    }
    let mut events = Vec::new();
    for i in 0..5 {
        for tag in ["a", "b"] {
            events.push(
                json!({"id": format!("{tag}{i}"), "type": "tag_applied", "tag": tag,
                               "lead": {"email": format!("{tag}{i}@example.com")}}),
            );
        }
    }
    events.push(json!({"id": "no", "type": "tag_applied", "tag": "b",
                       "lead": {"email": "no@example.com"}}));
    let (status, _) = env.post("/v1/events", json!({ "events": events })).await?;
    assert_eq!(status, 200);
    pulse_tests::eventually(Duration::from_secs(30), "eleven sends settled", || async {
        let n = pulse_tests::count(
            &env.db,
            "SELECT count(*) FROM send_ledger WHERE state IN ('SENT', 'FAILED')",
        )
        .await?;
        Ok((n == 11).then_some(()))
    })
    .await?;
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(a) => format!("/v1/sends?limit=3&after={a}"),
            None => "/v1/sends?limit=3".to_owned(),
        };
        let (status, page) = env.get(&path).await?;
        assert_eq!(status, 200, "{page}");
        keys.extend(
            page["sends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["idempotency_key"].as_str().map(str::to_owned)),
        );
        after = page["next"].as_str().map(str::to_owned);
        if after.is_none() {
            break;
        }
    }
    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM send_ledger ORDER BY created_at, idempotency_key",
    )
    .fetch_all(&env.db)
    .await?;
    assert_eq!(keys, expected, "every send once, in order");
    let (_, failed) = env.get("/v1/sends?state=FAILED").await?;
    assert_eq!(failed["sends"].as_array().map(Vec::len), Some(1));
    assert_eq!(failed["sends"][0]["lead_email"], "no@example.com");
    env.stop().await
}
