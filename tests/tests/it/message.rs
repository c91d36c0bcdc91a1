//! The message as a sales team sends it, read by a parser nobody here wrote (Python's stdlib
//! `email`): an HTML part with the lead's values escaped, a text part derived from it, a
//! Reply-To, and threaded follow-ups that answer the enrollment's earlier messages.

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Parses raw messages with Python's `email` package; one JSON object per message.
const PARSE: &str = r#"
import email, email.policy, json, sys
out = []
for raw in json.load(sys.stdin):
    m = email.message_from_string(raw, policy=email.policy.default)
    parts = {}
    for p in (m.walk() if m.is_multipart() else [m]):
        if p.get_content_maintype() == "text":
            parts[p.get_content_type()] = p.get_content()
    out.append({
        "message_id": m["Message-ID"], "subject": m["Subject"], "reply_to": m["Reply-To"],
        "in_reply_to": m["In-Reply-To"], "references": m["References"],
        "list_unsubscribe": m["List-Unsubscribe"],
        "list_unsubscribe_post": m["List-Unsubscribe-Post"],
        "content_type": m.get_content_type(), "parts": parts,
    })
json.dump(out, sys.stdout)
"#;

async fn parse(raw: Vec<String>) -> anyhow::Result<Vec<Value>> {
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3 (the stdlib email parser)")?;
    let mut stdin = child.stdin.take().context("python stdin")?;
    stdin.write_all(&serde_json::to_vec(&raw)?).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(out.status.success(), "the email parser failed");
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn field<'a>(m: &'a Value, name: &str) -> &'a str {
    m[name].as_str().unwrap_or_default()
}

#[tokio::test]
async fn html_parts_reply_to_and_threaded_follow_ups_read_right_in_a_stdlib_parser()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("message", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let step = |subject: &str, body: &str, html: Option<&str>, thread: bool, first: bool| {
        let timing = if first {
            json!({"type": "immediately"})
        } else {
            json!({"type": "delay", "delay": "PT1S"})
        };
        json!({"subject": subject, "body": body, "html": html, "thread": thread, "timing": timing})
    };
    env.create_sequence(json!({
        "name": "Outbound",
        "sender": {"from": "Ada Rep <rep@example.com>", "reply_to": "Replies <replies@example.com>"},
        "triggers": [{"type": "tag_applied", "tag": "go"}],
        "steps": [
            step("Quick question, {{ lead.first_name }}", "Hi {{ lead.first_name }}",
                 Some("<p>Hi <b>{{ lead.first_name }}</b></p>"), false, true),
            step("", "", Some("<p>Just bumping this, {{ lead.first_name }}.</p>"), true, false),
            step("A different topic", "Plain text only", None, false, false),
            step("", "Last note from me", None, true, false),
        ],
    }))
    .await?;
    let leads = [("bo@example.com", "Bo <b>&"), ("cy@example.com", "Cy")];
    let events: Vec<Value> = leads
        .iter()
        .map(|(email, first)| {
            json!({"id": email, "type": "tag_applied", "tag": "go",
                                      "lead": {"email": email, "first_name": first}})
        })
        .collect();
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);
    let received = smtp.wait_for(8, Duration::from_secs(40)).await?;

    for (email, first) in leads {
        let mut raw: Vec<(std::time::Instant, String)> = received
            .iter()
            .filter(|m| m.rcpt_to == [email])
            .map(|m| (m.at, m.data.clone()))
            .collect();
        raw.sort_by_key(|(at, _)| *at);
        let msgs = parse(raw.into_iter().map(|(_, d)| d).collect()).await?;
        assert_eq!(msgs.len(), 4, "{email}: {msgs:#?}");
        let ids: Vec<&str> = msgs.iter().map(|m| field(m, "message_id")).collect();
        for m in &msgs {
            assert_eq!(field(m, "reply_to"), "Replies <replies@example.com>");
            // One-click unsubscribe (RFC 8058) on every message.
            assert_eq!(
                field(m, "list_unsubscribe_post"),
                "List-Unsubscribe=One-Click"
            );
            let link = field(m, "list_unsubscribe");
            assert!(
                link.starts_with("<http") && link.contains("/u/") && link.ends_with('>'),
                "{link}"
            );
        }
        // Step 1: text and HTML, the lead's value escaped in the HTML only.
        let first_subject = format!("Quick question, {first}");
        assert_eq!(field(&msgs[0], "subject"), first_subject);
        assert_eq!(field(&msgs[0], "content_type"), "multipart/alternative");
        let escaped = first
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert_eq!(
            msgs[0]["parts"]["text/html"].as_str().map(str::trim_end),
            Some(format!("<p>Hi <b>{escaped}</b></p>").as_str())
        );
        assert_eq!(
            msgs[0]["parts"]["text/plain"].as_str().map(str::trim_end),
            Some(format!("Hi {first}").as_str())
        );
        assert_eq!(msgs[0]["in_reply_to"], Value::Null);
        // Step 2: a reply to step 1, its text part derived from its HTML.
        assert_eq!(field(&msgs[1], "subject"), format!("Re: {first_subject}"));
        assert_eq!(field(&msgs[1], "in_reply_to"), ids[0]);
        assert_eq!(field(&msgs[1], "references"), ids[0]);
        let derived = field(&msgs[1]["parts"], "text/plain");
        assert!(
            derived.contains("Just bumping this") && !derived.contains("<p>"),
            "{derived:?}"
        );
        // Step 3: a new message, text only.
        assert_eq!(field(&msgs[2], "subject"), "A different topic");
        assert_eq!(field(&msgs[2], "content_type"), "text/plain");
        assert_eq!(msgs[2]["in_reply_to"], Value::Null);
        // Step 4: answers the last message, references the whole thread, keeps the first subject.
        assert_eq!(field(&msgs[3], "subject"), format!("Re: {first_subject}"));
        assert_eq!(field(&msgs[3], "in_reply_to"), ids[2]);
        assert_eq!(field(&msgs[3], "references"), ids[..3].join(" "));
    }
    env.stop().await
}

#[tokio::test]
async fn a_subject_may_be_left_empty_only_by_a_threaded_follow_up() -> anyhow::Result<()> {
    let env = TestEnv::start("message", &[Role::Api], |_| {}).await?;
    let body =
        |steps: Value| json!({"name": "S", "sender": {"from": "a@example.com"}, "steps": steps});
    let now = json!({"type": "immediately"});
    let cases = [
        (
            json!([{"subject": "", "body": "b", "timing": now, "thread": true}]),
            "steps[0].subject",
        ),
        (
            json!([{"subject": "s", "body": "b", "timing": now},
                   {"subject": "", "body": "b", "timing": now}]),
            "steps[1].subject",
        ),
        (
            json!([{"subject": "s", "body": "", "html": " ", "timing": now}]),
            "steps[0].html",
        ),
        (
            json!([{"subject": "s", "body": "", "html": "<p>{{ lead.nope }}", "timing": now}]),
            "steps[0].html",
        ),
    ];
    for (steps, field) in cases {
        let (status, err) = env.post("/v1/sequences", body(steps)).await?;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (422, Some(field)),
            "{err}"
        );
    }
    let (status, err) = env
        .post(
            "/v1/sequences",
            json!({"name": "S", "sender": {"from": "a@example.com", "reply_to": "not an address"},
                   "steps": [{"subject": "s", "body": "b", "timing": now}]}),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("sender.reply_to")),
        "{err}"
    );
    let (status, created) = env
        .post(
            "/v1/sequences",
            body(json!([{"subject": "s", "body": "b", "timing": now},
                        {"subject": "", "body": "", "html": "<p>x</p>", "thread": true, "timing": now}])),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["steps"][1]["thread"], true);
    assert_eq!(created["steps"][1]["html"], "<p>x</p>");
    assert_eq!(created["steps"][0]["thread"], false);
    env.stop().await
}
