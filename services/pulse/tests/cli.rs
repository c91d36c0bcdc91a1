//! The operator CLI against a running Pulse: tables, `--json`, the audit actor, exit codes.

use std::process::Command;

use pulse::Role;
use pulse_tests::{TestEnv, eventually, sequence_body};
use serde_json::{Value, json};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pulse");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn pulse(env: &TestEnv, args: &[&str]) -> anyhow::Result<Out> {
    let (url, key) = (env.base.clone(), env.key.clone());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("PULSE_URL", url)
            .env("PULSE_API_KEY", key)
            .env("USER", "alice")
            .output()
    })
    .await??;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

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

/// The rest of the help page's reading and enrolling, without curl: a manual enrollment, events
/// from a file, the outbox, one enrollment with what was sent for it, the stats and the
/// versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_sending_events_and_reading_the_records_from_the_command_line()
-> anyhow::Result<()> {
    // No relay: mail goes to the dev outbox.
    let env = TestEnv::start("cli", &[Role::All], |_| {}).await?;
    env.create_sequence(sequence_body(
        "Records",
        &[(
            "Hi {{ lead.first_name }}",
            "x",
            json!({"type": "immediately"}),
        )],
        "t",
    ))
    .await?;
    let out = pulse(
        &env,
        &[
            "enroll",
            "Records",
            "--lead",
            "ada@example.com",
            "--first-name",
            "Ada",
        ],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("ada@example.com") && out.stdout.contains("ACTIVE"),
        "{}",
        out.stdout
    );

    let file = std::env::temp_dir().join(format!("pulse-events-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        json!([
            {"id": "f1", "type": "tag_applied", "tag": "t", "lead": {"email": "bob@example.com"}},
            {"id": "f2", "type": "tag_applied", "tag": "t", "lead": {"email": "not an address"}}
        ])
        .to_string(),
    )?;
    let path = file.display().to_string();
    let out = pulse(&env, &["events", "send", "-f", &path]).await?;
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = |id: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("f1").contains("processed") && line("f1").contains("created"),
        "{}",
        out.stdout
    );
    assert!(line("f2").contains("rejected"), "{}", out.stdout);
    let out = pulse(&env, &["events", "send", "-f", "/nonexistent/events.json"]).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);

    let outbox = eventually(Duration::from_secs(15), "both in the outbox", || async {
        let out = pulse(&env, &["outbox"]).await?;
        Ok((out.code == 0 && out.stdout.lines().count() == 3).then_some(out.stdout))
    })
    .await?;
    assert!(
        outbox.contains("Hi Ada") && outbox.contains("bob@example.com"),
        "{outbox}"
    );

    // Ada's one step went out, so her enrollment is COMPLETED: show reads the latest one.
    let out = eventually(Duration::from_secs(10), "Ada's send recorded", || async {
        let out = pulse(
            &env,
            &[
                "enrollments",
                "show",
                "Records",
                "--lead",
                "ada@example.com",
            ],
        )
        .await?;
        Ok((out.code == 0 && out.stdout.contains("COMPLETED")).then_some(out))
    })
    .await?;
    assert!(out.stdout.contains("SENT"), "{}", out.stdout);

    let out = pulse(&env, &["sequences", "stats"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("SEQUENCE"), "{}", out.stdout);
    let out = pulse(&env, &["sequences", "versions", "Records"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("VERSION"), "{}", out.stdout);
    assert_eq!(out.stdout.lines().count(), 2, "one version: {}", out.stdout);
    env.stop().await
}

/// The help page end to end with `pulse` alone: create, enroll, pause, preview, cancel by email,
/// edit one step, resume, re-enroll, delete, and read the records. No HTTP call but the CLI's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_help_page_walked_through_with_pulse_commands_only() -> anyhow::Result<()> {
    // No relay: what goes out lands in the dev outbox, which `pulse outbox` reads.
    let env = TestEnv::start("walk", &[Role::All], |_| {}).await?;
    let ok = |out: &Out| {
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    };
    let file = std::env::temp_dir().join(format!("pulse-walk-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        sequence_body(
            "Walk",
            &[
                ("First", "1", json!({"type": "immediately"})),
                ("Second", "2", json!({"type": "delay", "delay": "PT1H"})),
            ],
            "t",
        )
        .to_string(),
    )?;
    let out = pulse(
        &env,
        &["sequences", "create", "-f", &file.display().to_string()],
    )
    .await?;
    let _ = std::fs::remove_file(&file);
    ok(&out);
    assert!(out.stdout.contains("Walk is ACTIVE"), "{}", out.stdout);
    for lead in ["ada@example.com", "bob@example.com"] {
        ok(&pulse(&env, &["enroll", "Walk", "--lead", lead]).await?);
    }
    let outbox = |subject: &'static str, to: &'static str| {
        let env = &env;
        async move {
            let out = pulse(env, &["outbox"]).await?;
            anyhow::Ok(
                out.stdout
                    .lines()
                    .filter(|l| l.contains(to) && l.contains(subject))
                    .count(),
            )
        }
    };
    eventually(Duration::from_secs(15), "step 1 to both", || async {
        Ok(
            (outbox("First", "ada@").await? == 1 && outbox("First", "bob@").await? == 1)
                .then_some(()),
        )
    })
    .await?;

    let out = pulse(&env, &["sequences", "pause", "Walk"]).await?;
    ok(&out);
    assert!(out.stdout.contains("is PAUSED"), "{}", out.stdout);
    let out = pulse(&env, &["resume-preview", "Walk"]).await?;
    ok(&out);
    assert!(
        out.stdout.contains("ada@example.com") && out.stdout.contains("bob@example.com"),
        "{}",
        out.stdout
    );
    let out = pulse(
        &env,
        &[
            "enrollments",
            "cancel",
            "Walk",
            "--lead",
            "bob@example.com",
            "--reason",
            "asked",
        ],
    )
    .await?;
    ok(&out);
    assert!(out.stdout.contains("CANCELLED"), "{}", out.stdout);
    let out = pulse(
        &env,
        &[
            "steps",
            "edit",
            "Walk",
            "2",
            "--subject",
            "Second, edited",
            "--immediately",
        ],
    )
    .await?;
    ok(&out);
    assert!(out.stdout.contains("Second, edited"), "{}", out.stdout);
    ok(&pulse(&env, &["sequences", "resume", "Walk"]).await?);
    eventually(
        Duration::from_secs(15),
        "the edited step 2 to Ada",
        || async { Ok((outbox("Second, edited", "ada@").await? == 1).then_some(())) },
    )
    .await?;
    assert_eq!(outbox("Second", "bob@").await?, 0, "Bob was cancelled");

    let out = pulse(&env, &["re-enroll", "Walk", "--lead", "bob@example.com"]).await?;
    ok(&out);
    assert!(out.stdout.contains("re-enrolled 1"), "{}", out.stdout);
    eventually(
        Duration::from_secs(15),
        "Bob's second generation",
        || async {
            Ok((outbox("First", "bob@").await? == 2
                && outbox("Second, edited", "bob@").await? == 1)
                .then_some(()))
        },
    )
    .await?;
    let out = pulse(
        &env,
        &["enrollments", "show", "Walk", "--lead", "bob@example.com"],
    )
    .await?;
    ok(&out);
    assert!(out.stdout.contains("generation 2"), "{}", out.stdout);

    // Times in a chosen zone, with how long ago; a zone that does not exist is a usage error.
    let out = pulse(
        &env,
        &["sends", "--sequence", "Walk", "--tz", "Europe/Paris"],
    )
    .await?;
    ok(&out);
    assert!(
        out.stdout.contains(" CET (") || out.stdout.contains(" CEST ("),
        "{}",
        out.stdout
    );
    let out = pulse(&env, &["sends", "--tz", "Mars/Olympus"]).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("IANA"), "{}", out.stderr);

    let id = pulse(&env, &["sequences", "list"])
        .await?
        .stdout
        .lines()
        .find(|l| l.contains("Walk"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let out = pulse(&env, &["sequences", "delete", "Walk", "--yes"]).await?;
    ok(&out);
    assert!(out.stdout.contains("is DELETED"), "{}", out.stdout);
    // The records stay, by id once the name is gone.
    let out = pulse(&env, &["sends", "--sequence", &id]).await?;
    ok(&out);
    assert_eq!(
        out.stdout.lines().filter(|l| l.contains(" SENT ")).count(),
        5,
        "{}",
        out.stdout
    );
    let out = pulse(&env, &["audit", &id]).await?;
    ok(&out);
    for action in [
        "paused",
        "enrollment_cancelled",
        "edited",
        "resumed",
        "re_enrolled",
        "deleted",
    ] {
        assert!(out.stdout.contains(action), "{action}: {}", out.stdout);
    }
    env.stop().await
}

/// `pulse steps add|move|delete|edit` and `pulse mailboxes add|list|rm`, run as a user runs
/// them, with their refusals and exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_and_mailboxes_from_the_command_line() -> anyhow::Result<()> {
    let env = TestEnv::start("cli", &[Role::Api], |_| {}).await?;
    env.create_sequence(sequence_body(
        "Stepwise",
        &[
            ("A", "a", json!({"type": "immediately"})),
            ("B", "b", json!({"type": "delay", "delay": "P1D"})),
        ],
        "t",
    ))
    .await?;
    let order = |out: &Out| -> Vec<String> {
        // The steps table: "#  TIMING  SUBJECT" rows.
        out.stdout
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let n = w.next()?.parse::<u32>().ok()?;
                Some(format!("{n}:{}", w.last()?))
            })
            .collect()
    };
    let add = [
        "steps",
        "add",
        "Stepwise",
        "--subject",
        "Z",
        "--body",
        "z",
        "--immediately",
        "--position",
        "1",
    ];
    // A change of order shows the order it would make, and waits for --yes.
    let out = pulse(&env, &add).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("1. Z  2. A  3. B"), "{}", out.stderr);
    let out = pulse(&env, &[&add[..], &["--yes"]].concat()).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(order(&out), ["1:Z", "2:A", "3:B"], "{}", out.stdout);
    let out = pulse(&env, &["steps", "move", "Stepwise", "1", "--to", "3"]).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("1. A  2. B  3. Z"), "{}", out.stderr);
    let out = pulse(
        &env,
        &["steps", "move", "Stepwise", "1", "--to", "3", "--yes"],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(order(&out), ["1:A", "2:B", "3:Z"], "{}", out.stdout);
    let out = pulse(&env, &["steps", "edit", "Stepwise", "2", "--delay", "PT6H"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("PT6H"), "{}", out.stdout);

    let out = pulse(&env, &["steps", "delete", "Stepwise", "3"]).await?;
    assert_eq!(out.code, 2, "deleting needs --yes: {}", out.stderr);
    assert!(out.stderr.contains("1. A  2. B"), "{}", out.stderr);
    let out = pulse(&env, &["steps", "delete", "Stepwise", "3", "--yes"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(order(&out), ["1:A", "2:B"], "{}", out.stdout);
    assert!(
        out.stdout.contains("warning: deleted step 3"),
        "{}",
        out.stdout
    );

    for (args, code, says) in [
        (
            &["steps", "edit", "Stepwise", "9", "--subject", "x"][..],
            1,
            "no step 9",
        ),
        (
            &["steps", "edit", "Stepwise", "1"][..],
            2,
            "nothing to change",
        ),
        (
            &["steps", "add", "Stepwise", "--body", "x"][..],
            2,
            "--subject",
        ),
        (
            &["steps", "move", "Stepwise", "1", "--to", "7", "--yes"][..],
            2,
            "--to",
        ),
        (
            &[
                "steps",
                "edit",
                "Stepwise",
                "1",
                "--subject",
                "{{ lead.nope }}",
            ][..],
            1,
            "422",
        ),
    ] {
        let out = pulse(&env, args).await?;
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }

    let out = pulse(
        &env,
        &["mailboxes", "add", "ada@example.com", "--name", "Ada"],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pulse(&env, &["mailboxes", "list"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out
        .stdout
        .lines()
        .find(|l| l.contains("ada@example.com"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "{}", out.stdout);
    let out = pulse(&env, &["mailboxes", "rm", &id]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pulse(&env, &["mailboxes", "rm", &id]).await?;
    assert_eq!(out.code, 1, "already gone: {}", out.stderr);
    env.stop().await
}

/// A sequence kept in a YAML file: `apply` creates it, then edits it to match the file,
/// printing what changes; content changes go at once, structural ones need --yes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_kept_in_a_yaml_file_is_applied_with_its_diff() -> anyhow::Result<()> {
    let env = TestEnv::start("cli", &[Role::Api], |_| {}).await?;
    let path = std::env::temp_dir().join(format!("pulse-apply-{}.yaml", uuid::Uuid::new_v4()));
    let file = path.display().to_string();
    let write = |steps: &[(&str, &str, Value)]| -> anyhow::Result<()> {
        let body = sequence_body("Kept", steps, "t");
        std::fs::write(&path, serde_norway::to_string(&body)?)?;
        Ok(())
    };
    let a = ("A", "a", json!({"type": "immediately"}));
    let b = ("B", "b", json!({"type": "delay", "delay": "P1D"}));
    let c = ("C", "c", json!({"type": "delay", "delay": "P2D"}));
    let steps_now = || async {
        let (_, list) = env.get("/v1/sequences").await?;
        let subjects: Vec<String> = list["sequences"][0]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["subject"].as_str().map(str::to_owned))
            .collect();
        anyhow::Ok(subjects)
    };

    write(&[a.clone(), b.clone()])?;
    let out = pulse(&env, &["sequences", "apply", "-f", &file]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("created") && out.stdout.contains("(2 steps)"),
        "{}",
        out.stdout
    );
    let out = pulse(&env, &["sequences", "apply", "-f", &file]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.trim_end().ends_with("no changes"),
        "{}",
        out.stdout
    );

    // Content: applied at once, the change printed.
    write(&[
        ("A, better", "a", json!({"type": "immediately"})),
        b.clone(),
    ])?;
    let out = pulse(&env, &["sequences", "apply", "-f", &file]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("step 1: subject: A → A, better"),
        "{}",
        out.stdout
    );
    assert_eq!(steps_now().await?, ["A, better", "B"]);

    // A step added: shown, and made only with --yes.
    write(&[
        ("A, better", "a", json!({"type": "immediately"})),
        b.clone(),
        c.clone(),
    ])?;
    let out = pulse(&env, &["sequences", "apply", "-f", &file]).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("step 3: added: C") && out.stderr.contains("--yes"),
        "{}",
        out.stderr
    );
    assert_eq!(
        steps_now().await?,
        ["A, better", "B"],
        "nothing changed without --yes"
    );
    let out = pulse(&env, &["sequences", "apply", "-f", &file, "--yes"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(steps_now().await?, ["A, better", "B", "C"]);

    // The file drops the last step: deleted, named.
    write(&[("A, better", "a", json!({"type": "immediately"})), b])?;
    let out = pulse(&env, &["sequences", "apply", "-f", &file, "--yes"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("step 3: deleted: C") && out.stdout.contains("warning: deleted step 3"),
        "{}",
        out.stdout
    );
    assert_eq!(steps_now().await?, ["A, better", "B"]);
    let _ = std::fs::remove_file(&path);
    env.stop().await
}

/// `pulse suppressions …` and `pulse inbound …` through the binary, with their exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_and_what_came_back_from_the_command_line() -> anyhow::Result<()> {
    let env = TestEnv::start("cli", &[Role::Api], |_| {}).await?;
    let out = pulse(
        &env,
        &[
            "suppressions",
            "add",
            "eve@example.com",
            "spam.example",
            "--reason",
            "unsubscribed",
        ],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pulse(&env, &["suppressions", "list"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("eve@example.com") && out.stdout.contains("spam.example"),
        "{}",
        out.stdout
    );
    let csv = std::env::temp_dir().join(format!("pulse-supp-{}.csv", uuid::Uuid::new_v4()));
    let path = csv.display().to_string();
    let args = ["suppressions", "import", path.as_str()];
    let import = || pulse(&env, &args);
    std::fs::write(&csv, "value,reason\nbob@example.com,bounced\n")?;
    let out = import().await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A bad row is refused with what is wrong and where.
    std::fs::write(&csv, "value\nnot an address\n")?;
    let out = import().await?;
    let _ = std::fs::remove_file(&csv);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not an address"), "{}", out.stderr);
    let out = pulse(&env, &["suppressions", "export"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("value,kind,reason,source,created_at"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("bob@example.com,email,bounced"),
        "{}",
        out.stdout
    );
    let out = pulse(
        &env,
        &[
            "suppressions",
            "remove",
            "eve@example.com",
            "--reason",
            "asked back",
        ],
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pulse(&env, &["suppressions", "remove", "eve@example.com"]).await?;
    assert_eq!(out.code, 1, "not suppressed any more: {}", out.stderr);
    let out = pulse(&env, &["suppressions", "add", "--reason", "manual"]).await?;
    assert_eq!(out.code, 2, "a value is required: {}", out.stderr);

    let out = pulse(&env, &["inbound", "list"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pulse(&env, &["inbound", "show", "999999"]).await?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    env.stop().await
}
