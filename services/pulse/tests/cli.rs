//! The operator CLI against a running Pulse, taking control: tables, `--json`, the audit actor,
//! exit codes, names for sequences and enrollments, settling UNKNOWN sends.

mod common;

use std::process::Command;

use common::{BIN, pulse};
use pulse::Role;
use pulse_tests::{TestEnv, sequence_body};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_take_control_from_the_command_line() -> anyhow::Result<()> {
    let env = TestEnv::start("cli", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Cli welcome",
            &[("Hi", "x", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    env.post(
        "/v1/events",
        json!({"events": [
            {"id": "a", "type": "tag_applied", "tag": "t", "lead": {"email": "ada@example.com"}}
        ]}),
    )
    .await?;

    let out = pulse(&env, &["sequences", "list"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("Cli welcome") && out.stdout.contains("ACTIVE"),
        "{}",
        out.stdout
    );
    // A page at a time: a second sequence, one per page, and the hint leads to the first.
    env.create_sequence(sequence_body(
        "Cli second",
        &[("Hi", "x", json!({"type": "immediately"}))],
        "t2",
    ))
    .await?;
    let out = pulse(&env, &["sequences", "list", "--limit", "1"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let after = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("more: --after "))
        .map(str::to_owned);
    assert!(
        out.stdout.contains("Cli second") && after.is_some(),
        "{}",
        out.stdout
    );
    let next = after.unwrap_or_default();
    let out = pulse(
        &env,
        &["sequences", "list", "--limit", "1", "--after", &next],
    )
    .await?;
    assert!(
        out.stdout.contains("Cli welcome") && !out.stdout.contains("more:"),
        "{}",
        out.stdout
    );
    let out = pulse(&env, &["sequences", "list", "--limit", "1", "--all"]).await?;
    assert!(
        out.stdout.contains("Cli welcome") && out.stdout.contains("Cli second"),
        "{}",
        out.stdout
    );

    let out = pulse(&env, &["sequences", "pause", &id]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("is PAUSED"), "{}", out.stdout);

    let out = pulse(&env, &["resume-preview", &id, "--json"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let preview: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(preview["sends"], 1);

    let out = pulse(&env, &["sequences", "resume", &id]).await?;
    assert!(out.stdout.contains("is ACTIVE"), "{}", out.stdout);

    let out = pulse(&env, &["enrollments", "list", &id, "--json"]).await?;
    let list: Value = serde_json::from_str(&out.stdout)?;
    let enrollment = list["enrollments"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = pulse(
        &env,
        &[
            "enrollments",
            "cancel",
            &enrollment,
            "--reason",
            "wrong person",
        ],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("CANCELLED") && out.stdout.contains("wrong person"),
        "{}",
        out.stdout
    );

    let out = pulse(&env, &["re-enroll", &id, "--lead", "ada@example.com"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("re-enrolled 1"), "{}", out.stdout);

    // The emergency stop for a sequence's leads asks for --yes, then cancels every active one.
    let out = pulse(&env, &["enrollments", "cancel-many", &id, "--all-active"]).await?;
    assert_eq!(out.code, 2, "cancelling everyone needs --yes");
    let out = pulse(
        &env,
        &["enrollments", "cancel-many", &id, "--all-active", "--yes"],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("cancelled 1"), "{}", out.stdout);

    let out = pulse(&env, &["audit", &id]).await?;
    assert!(
        out.stdout.contains("alice"),
        "the acting user is recorded: {}",
        out.stdout
    );
    for action in ["paused", "resumed", "enrollment_cancelled", "re_enrolled"] {
        assert!(out.stdout.contains(action), "{action}: {}", out.stdout);
    }
    let out = pulse(&env, &["sends", "--sequence", &id]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("SENT AT"), "{}", out.stdout);

    // Exit codes scripts rely on.
    let out = pulse(&env, &["sequences", "delete", &id]).await?;
    assert_eq!(out.code, 2, "delete needs --yes");
    assert!(out.stderr.contains("irreversible"));
    let out = pulse(&env, &["sequences", "show", "not-a-uuid"]).await?;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no sequence is named \"not-a-uuid\""),
        "{}",
        out.stderr
    );
    // A value outside an option's list is a usage error, before any request, naming the list.
    let out = pulse(&env, &["enrollments", "list", &id, "--status", "DONE"]).await?;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("possible values") && out.stderr.contains("ACTIVE"),
        "the allowed values are listed: {}",
        out.stderr
    );
    let out = pulse(&env, &["sequences", "delete", &id, "--yes"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("is DELETED"));
    let out = pulse(&env, &["sequences", "pause", &id]).await?;
    assert_eq!(out.code, 1, "pausing a deleted sequence is refused");
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args([
                "sequences",
                "list",
                "--url",
                "http://127.0.0.1:9",
                "--key",
                "k",
            ])
            .output()
    })
    .await??;
    assert_eq!(out.status.code(), Some(3), "unreachable");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sends_are_listed_by_message_id_and_settled_in_bulk() -> anyhow::Result<()> {
    use pulse_shared::ledger;
    let env = TestEnv::start("cli", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Cli unknown",
            &[("Hi", "x", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    env.post(
        "/v1/events",
        json!({"events": [
            {"id": "a", "type": "tag_applied", "tag": "t", "lead": {"email": "ada@example.com"}},
            {"id": "b", "type": "tag_applied", "tag": "t", "lead": {"email": "bob@example.com"}}
        ]}),
    )
    .await?;
    // Both were on the wire when their sender died: UNKNOWN.
    sqlx::query(
        "UPDATE step_runs SET state = 'QUEUED', message_id = '<cli.' || id || '@example.com>',
             subject = 'Hi', body = 'x', from_addr = 'tests@example.com', to_addr = 'x@example.com'",
    )
    .execute(&env.db)
    .await?;
    let runs: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, enrollment_id || ':' || step_id || ':' || generation FROM step_runs",
    )
    .fetch_all(&env.db)
    .await?;
    let leases = ledger::Leases {
        answer: std::time::Duration::ZERO,
        ..ledger::Leases::new(&env.settings)
    };
    let dead = uuid::Uuid::new_v4();
    // Claims are made at the gate, on the wire: their dead owner leaves them UNKNOWN.
    for (run, key) in &runs {
        let claim = ledger::claim(&env.db, *run, key, &leases, dead).await?;
        anyhow::ensure!(
            matches!(claim, ledger::Claim::Claimed { .. }),
            "not claimed"
        );
    }
    assert_eq!(ledger::sweep(&env.db, &leases).await?.unknown, 2);

    let out = pulse(&env, &["sends", "--state", "UNKNOWN", "--message-ids"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut ids: Vec<&str> = out.stdout.lines().collect();
    ids.sort_unstable();
    let mut expected: Vec<String> = runs
        .iter()
        .map(|(run, _)| format!("<cli.{run}@example.com>"))
        .collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "just the Message-IDs, one a line");

    let out = pulse(&env, &["resolve", "--sequence", &id, "--sent"]).await?;
    assert_eq!(out.code, 2, "a bulk resolution needs --yes: {}", out.stdout);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    let out = pulse(&env, &["resolve", "--sent"]).await?;
    assert_eq!(out.code, 2, "a key or a filter: {}", out.stdout);
    let out = pulse(&env, &["resolve", "--sequence", &id, "--sent", "--yes"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("resolved 2 as sent; 0 still UNKNOWN"),
        "{}",
        out.stdout
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM send_ledger WHERE state = 'SENT'")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(sent, 2);
    env.stop().await
}

/// Operators name a sequence by its name and an enrollment by the lead's email; a name that
/// matches nothing or several sequences, and an email where an id must be, say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_named_by_name_and_enrollments_by_the_leads_email() -> anyhow::Result<()> {
    let env = TestEnv::start("cli", &[Role::Api, Role::Ingest], |_| {}).await?;
    let body =
        |name: &str| sequence_body(name, &[("Hi", "x", json!({"type": "immediately"}))], "t");
    let seq = env.create_sequence(body("Welcome")).await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    env.create_sequence(body("Twin")).await?;
    env.create_sequence(body("Twin")).await?;
    let (status, _) = env
        .post(
            "/v1/events",
            json!({"events": [{"id": "n1", "type": "tag_applied", "tag": "t",
                               "lead": {"email": "eve@example.com"}}]}),
        )
        .await?;
    assert_eq!(status, 200);

    let out = pulse(&env, &["sequences", "pause", "Welcome"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, shown) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(shown["status"], "PAUSED");

    // An email where an enrollment id must be: a usage error with the way to say it.
    let out = pulse(&env, &["enrollments", "cancel", "eve@example.com"]).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--lead EMAIL"), "{}", out.stderr);

    let out = pulse(
        &env,
        &[
            "enrollments",
            "cancel",
            "Welcome",
            "--lead",
            "eve@example.com",
            "--reason",
            "asked",
        ],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, list) = env
        .get(&format!(
            "/v1/sequences/{id}/enrollments?lead=eve@example.com"
        ))
        .await?;
    assert_eq!(list["enrollments"][0]["status"], "CANCELLED", "{list}");
    let out = pulse(
        &env,
        &[
            "enrollments",
            "cancel",
            "Welcome",
            "--lead",
            "eve@example.com",
        ],
    )
    .await?;
    assert_eq!(out.code, 1, "nothing ACTIVE is left: {}", out.stderr);
    assert!(
        out.stderr.contains("no ACTIVE enrollment"),
        "{}",
        out.stderr
    );

    // Names that match nothing, or more than one sequence.
    let out = pulse(&env, &["sequences", "show", "Welcom"]).await?;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("Welcome") && out.stderr.contains("Twin"),
        "{}",
        out.stderr
    );
    let out = pulse(&env, &["enrollments", "list", "Twin"]).await?;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("2 sequences are named"),
        "{}",
        out.stderr
    );
    let out = pulse(&env, &["sends", "--sequence", "Welcome"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pulse(&env, &["audit", "Welcome"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("paused"), "{}", out.stdout);
    env.stop().await
}
