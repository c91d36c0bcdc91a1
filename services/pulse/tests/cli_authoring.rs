//! The operator CLI against a running Pulse, building and reading: create and apply from files,
//! steps one at a time, enrolling and events, the records, suppressions and mailboxes, and the
//! help page walked through with `pulse` alone.

mod common;

use std::time::Duration;

use common::{Out, pulse};
use pulse::Role;
use pulse_tests::{TestEnv, eventually, sequence_body};
use serde_json::{Value, json};

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
