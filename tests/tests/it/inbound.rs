//! The inbound role end to end: real mail, sent with Python's smtplib into the listener, after
//! real sends through a real SMTP server. A reply ends its enrollment before the next step; an
//! out-of-office does not; postfix and Exchange bounces, an ARF complaint and repeated soft
//! bounces suppress the address and mark the send; strangers and oversize mail are refused; a
//! message recorded before a crash is processed after it.

use std::{net::SocketAddr, time::Duration};

use pulse::Role;
use pulse_shared::feedback::{self, Kind};
use pulse_tests::{SmtpServer, TestEnv, count, eventually, smtp::Received};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const BOUNCES: &str = "bounces.pulse.test";

fn fixture(name: &str, message_id: &str) -> Vec<u8> {
    let raw = match name {
        "postfix-dsn" => include_str!("../../../services/inbound/fixtures/postfix-dsn.eml"),
        "exchange-dsn" => include_str!("../../../services/inbound/fixtures/exchange-dsn.eml"),
        "delayed-dsn" => include_str!("../../../services/inbound/fixtures/delayed-dsn.eml"),
        "arf-complaint" => include_str!("../../../services/inbound/fixtures/arf-complaint.eml"),
        "out-of-office" => include_str!("../../../services/inbound/fixtures/out-of-office.eml"),
        "reply" => include_str!("../../../services/inbound/fixtures/reply.eml"),
        other => panic!("no fixture {other}"),
    };
    raw.replace("MESSAGE_ID", message_id).into_bytes()
}

/// Sends `raw` with Python's smtplib; the listener's answer (code 0: the connection closed).
async fn smtp_send(
    addr: SocketAddr,
    mail_from: &str,
    rcpts: &[&str],
    raw: &[u8],
) -> anyhow::Result<(u16, String)> {
    smtp_send_with(addr, mail_from, rcpts, raw, None)
        .await
        .map(|(code, text, _)| (code, text))
}

/// [`smtp_send`], upgraded with STARTTLS and verified against `ca` when given; also says
/// whether the message went over TLS.
async fn smtp_send_with(
    addr: SocketAddr,
    mail_from: &str,
    rcpts: &[&str],
    raw: &[u8],
    ca: Option<&std::path::Path>,
) -> anyhow::Result<(u16, String, bool)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/smtp_send.py");
    let mut command = tokio::process::Command::new("python3");
    if let Some(ca) = ca {
        command.env("SMTP_CAFILE", ca);
    }
    let mut child = command
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(mail_from)
        .arg(rcpts.join(","))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    stdin.write_all(raw).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let answer: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "smtp_send.py said {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((
        answer["code"].as_u64().unwrap_or_default() as u16,
        answer["text"].as_str().unwrap_or_default().to_owned(),
        answer["tls"].as_bool().unwrap_or(false),
    ))
}

fn two_steps(tag: &str, second: &str) -> Value {
    json!({"name": tag, "sender": {"from": "Rep <rep@sales.test>"},
           "triggers": [{"type": "tag_applied", "tag": tag}],
           "steps": [{"subject": "Quick question", "body": "Hi {{ lead.first_name }}",
                      "timing": {"type": "immediately"}},
                     {"subject": "", "thread": true, "body": "Bumping this up",
                      "timing": {"type": "delay", "delay": second}}]})
}

fn event(id: &str, email: &str, tag: &str) -> Value {
    json!({"id": id, "type": "tag_applied", "tag": tag, "lead": {"email": email, "first_name": "X"}})
}

async fn start(tag: &str, smtp: &SmtpServer) -> anyhow::Result<TestEnv> {
    let url = smtp.url();
    TestEnv::start(tag, &[Role::All], |s| {
        s.smtp_url = Some(url);
        s.inbound.bounce_domain = Some(BOUNCES.into());
        s.inbound.soft_bounce_limit = 2;
    })
    .await
}

fn sent_to<'a>(received: &'a [Received], to: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == to))
        .collect()
}

async fn status_of(env: &TestEnv, email: &str) -> anyhow::Result<(String, Option<String>)> {
    Ok(sqlx::query_as(
        "SELECT e.status, e.end_reason FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE l.email = $1",
    )
    .bind(email)
    .fetch_one(&env.db)
    .await?)
}

#[tokio::test]
async fn a_reply_ends_the_enrollment_before_step_two_and_an_out_of_office_does_not()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let env = start("inbound_reply", &smtp).await?;
    let inbound = env
        .inbound
        .ok_or_else(|| anyhow::anyhow!("no inbound listener"))?;
    env.create_sequence(two_steps("go", "PT8S")).await?;
    env.post(
        "/v1/events",
        json!({"events": [event("1", "ada@example.org", "go"), event("2", "bob@example.org", "go"),
                          event("3", "cy@example.org", "go")]}),
    )
    .await?;
    let first = smtp.wait_for(3, Duration::from_secs(20)).await?;
    for m in &first {
        // Every send's envelope sender is its VERP bounce address.
        assert!(
            m.mail_from.starts_with("bounce+") && m.mail_from.ends_with(BOUNCES),
            "{}",
            m.mail_from
        );
    }
    let id_of = |to: &str| {
        sent_to(&first, to)
            .first()
            .and_then(|m| m.message_id.clone())
            .unwrap_or_default()
    };
    // Ada answers, to the rep's address; Bob's mailbox answers that he is away.
    let (code, text) = smtp_send(
        inbound,
        "ada@example.org",
        &["rep@sales.test"],
        &fixture("reply", &id_of("ada@example.org")),
    )
    .await?;
    assert_eq!(code, 250, "{text}");
    let (code, _) = smtp_send(
        inbound,
        "",
        &["rep@sales.test"],
        &fixture("out-of-office", &id_of("bob@example.org")),
    )
    .await?;
    assert_eq!(code, 250);
    // Cy writes anew to the rep (no In-Reply-To): her address and the rep's match her
    // enrollment. A stranger writing to the rep ends nothing.
    let anew = b"From: Cy <Cy@Example.org>\r\nTo: rep@sales.test\r\nSubject: Question\r\n\r\nCan you call me?\r\n";
    let (code, _) = smtp_send(inbound, "cy@example.org", &["rep@sales.test"], anew).await?;
    assert_eq!(code, 250);
    let stranger = b"From: Someone <someone@elsewhere.test>\r\nSubject: Hello\r\n\r\nHi.\r\n";
    let (code, _) = smtp_send(
        inbound,
        "someone@elsewhere.test",
        &["rep@sales.test"],
        stranger,
    )
    .await?;
    assert_eq!(code, 250);

    eventually(Duration::from_secs(10), "Cy's enrollment ends", || async {
        let s = status_of(&env, "cy@example.org").await?;
        Ok((s.0 == "COMPLETED").then_some(s))
    })
    .await
    .map(|s| assert_eq!(s.1.as_deref(), Some("replied")))?;
    eventually(Duration::from_secs(10), "Ada's enrollment ends", || async {
        let s = status_of(&env, "ada@example.org").await?;
        Ok((s.0 == "COMPLETED").then_some(s))
    })
    .await
    .map(|s| assert_eq!(s.1.as_deref(), Some("replied")))?;
    // Bob's step 2 goes out; Ada's and Cy's never do.
    let all = smtp.wait_for(4, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = if smtp.count() > all.len() {
        smtp.received()
    } else {
        all
    };
    assert_eq!(sent_to(&all, "ada@example.org").len(), 1);
    assert_eq!(sent_to(&all, "cy@example.org").len(), 1);
    let others = count(
        &env.db,
        "SELECT count(*) FROM inbound_messages WHERE kind = 'other' AND address = 'someone@elsewhere.test'",
    )
    .await?;
    assert_eq!(others, 1);
    assert_eq!(sent_to(&all, "bob@example.org").len(), 2);
    assert_eq!(
        status_of(&env, "bob@example.org").await?.1.as_deref(),
        Some("all steps sent")
    );
    // The reply is kept with the enrollment: what it said, and that it ended it.
    let (kind, outcome, excerpt): (String, String, String) = sqlx::query_as(
        "SELECT m.kind, m.outcome, m.detail->>'excerpt' FROM inbound_messages m
         JOIN leads l ON l.id = m.lead_id WHERE l.email = 'ada@example.org'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(kind, "reply");
    assert!(outcome.contains("ended 1"), "{outcome}");
    assert!(excerpt.starts_with("Thanks Sam"), "{excerpt}");
    // The operator reads it through the API, with the message as received.
    let (status, listed) = env
        .get("/v1/inbound?kind=reply&address=Ada@Example.org")
        .await?;
    assert_eq!(status, 200, "{listed}");
    let reply = &listed["messages"][0];
    assert_eq!(
        reply["outcome"], "replied; ended 1 enrollment(s)",
        "{listed}"
    );
    assert!(reply["enrollment_id"].is_string());
    let raw = env
        .http
        .get(format!("{}/v1/inbound/{}?raw=true", env.base, reply["id"]))
        .bearer_auth(&env.key)
        .send()
        .await?;
    assert_eq!(raw.status().as_u16(), 200);
    assert!(raw.text().await?.contains("Can we talk on Tuesday?"));
    let (status, err) = env.get("/v1/inbound?kind=spam").await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("kind"))
    );
    assert_eq!(env.get("/v1/inbound/999999").await?.0, 404);
    // The sequence's reply rate: two of three enrollments.
    let (_, stats) = env.get("/v1/sequences/stats").await?;
    let st = &stats["sequences"][0];
    assert_eq!(
        (st["replied"].as_i64(), st["enrolled"].as_i64()),
        (Some(2), Some(3)),
        "{stats}"
    );
    let ooo = count(
        &env.db,
        "SELECT count(*) FROM inbound_messages WHERE kind = 'auto_reply' AND processed_at IS NOT NULL",
    )
    .await?;
    assert_eq!(ooo, 1);
    let audited = count(
        &env.db,
        "SELECT count(*) FROM audit_events WHERE action = 'enrollment_replied' AND actor = 'inbound'",
    )
    .await?;
    assert_eq!(audited, 2);
    env.stop().await
}

#[tokio::test]
async fn bounces_and_complaints_suppress_the_address_and_mark_the_send() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let env = start("inbound_bounce", &smtp).await?;
    let inbound = env
        .inbound
        .ok_or_else(|| anyhow::anyhow!("no inbound listener"))?;
    env.create_sequence(two_steps("go", "P1D")).await?;
    let leads = [
        "nobody@example.org",
        "ghost@contoso.example",
        "angry@hotmail.example",
        "slow@example.org",
        "quit@example.org",
    ];
    let events: Vec<Value> = leads
        .iter()
        .enumerate()
        .map(|(i, e)| event(&i.to_string(), e, "go"))
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;
    let sent = smtp.wait_for(5, Duration::from_secs(20)).await?;
    let to = |lead: &str| sent_to(&sent, lead)[0].clone();

    // Postfix, to the VERP address it was sent from.
    let m = to("nobody@example.org");
    let (code, text) = smtp_send(
        inbound,
        "",
        &[&m.mail_from],
        &fixture("postfix-dsn", &m.message_id.clone().unwrap_or_default()),
    )
    .await?;
    assert_eq!(code, 250, "{text}");
    // Exchange, to the rep: matched by the original message it returns.
    let m = to("ghost@contoso.example");
    let (code, _) = smtp_send(
        inbound,
        "",
        &["rep@sales.test"],
        &fixture("exchange-dsn", &m.message_id.clone().unwrap_or_default()),
    )
    .await?;
    assert_eq!(code, 250);
    // An ARF complaint.
    let m = to("angry@hotmail.example");
    let (code, _) = smtp_send(
        inbound,
        "staff@hotmail.example",
        &[&m.mail_from],
        &fixture("arf-complaint", &m.message_id.clone().unwrap_or_default()),
    )
    .await?;
    assert_eq!(code, 250);
    // Soft bounces: the limit is 2 in this test.
    let m = to("slow@example.org");
    for _ in 0..2 {
        let (code, _) = smtp_send(
            inbound,
            "",
            &[&m.mail_from],
            &fixture("delayed-dsn", &m.message_id.clone().unwrap_or_default()),
        )
        .await?;
        assert_eq!(code, 250);
    }
    // Mail to the List-Unsubscribe mailto, a tagged address at the bounce domain.
    let m = to("quit@example.org");
    let headers = m
        .data
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .replace("\r\n ", " ");
    let list = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("list-unsubscribe:"))
        .unwrap_or_default()
        .to_owned();
    let mailto = list
        .split("<mailto:")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        mailto.starts_with("unsubscribe+") && mailto.ends_with(BOUNCES),
        "{list}"
    );
    let (code, _) = smtp_send(
        inbound,
        "quit@example.org",
        &[&mailto],
        b"Subject: unsubscribe\r\n\r\n\r\n",
    )
    .await?;
    assert_eq!(code, 250);
    // The same token under the bounce prefix names nothing.
    let forged = mailto.replacen("unsubscribe+", "bounce+", 1);
    let (code, _) = smtp_send(
        inbound,
        "x@example.org",
        &[&forged],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await?;
    assert_eq!(code, 250, "any address at the bounce domain is taken");

    let expected = [
        ("nobody@example.org", "bounced", "BOUNCED"),
        ("ghost@contoso.example", "bounced", "BOUNCED"),
        ("angry@hotmail.example", "complained", "COMPLAINED"),
        ("slow@example.org", "bounced", "SENT"),
        ("quit@example.org", "unsubscribed", "SENT"),
    ];
    for (lead, reason, ledger) in expected {
        let found: (String, String) = eventually(Duration::from_secs(10), lead, || async {
            Ok(sqlx::query_as(
                "SELECT s.reason, l.state FROM suppressions s, send_ledger l
                 JOIN leads ld ON ld.id = l.lead_id
                 WHERE s.value = $1 AND ld.email = $1",
            )
            .bind(lead)
            .fetch_optional(&env.db)
            .await?)
        })
        .await?;
        assert_eq!(found, (reason.to_owned(), ledger.to_owned()), "{lead}");
        let (status, end_reason) = status_of(&env, lead).await?;
        assert_eq!(
            (status.as_str(), end_reason.as_deref()),
            ("CANCELLED", Some(reason)),
            "{lead}"
        );
    }
    let (_, stats) = env.get("/v1/sequences/stats").await?;
    let st = &stats["sequences"][0];
    assert_eq!(
        (
            st["bounced"].as_i64(),
            st["complained"].as_i64(),
            st["replied"].as_i64()
        ),
        (Some(3), Some(1), Some(0)),
        "{stats}"
    );
    let forged_named: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbound_messages WHERE $1 = ANY(rcpt_to) AND workspace_id IS NULL
           AND kind = 'other'",
    )
    .bind(&forged)
    .fetch_one(&env.db)
    .await?;
    assert_eq!(forged_named, 1, "a moved token names no send");
    // The send history shows the bounce.
    let (status, sends) = env.get("/v1/sends?state=BOUNCED").await?;
    assert_eq!(status, 200, "{sends}");
    assert_eq!(sends["sends"].as_array().map(Vec::len), Some(2), "{sends}");
    env.stop().await
}

#[tokio::test]
async fn strangers_and_oversize_mail_are_refused() -> anyhow::Result<()> {
    let env = TestEnv::start("inbound_limits", &[Role::Api, Role::Inbound], |s| {
        s.inbound.bounce_domain = Some(BOUNCES.into());
    })
    .await?;
    let inbound = env
        .inbound
        .ok_or_else(|| anyhow::anyhow!("no inbound listener"))?;
    let small = b"Subject: hi\r\n\r\nHello.\r\n";
    let (code, _) = smtp_send(inbound, "a@example.org", &["someone@elsewhere.test"], small).await?;
    assert_eq!(code, 550);
    // Any address at the bounce domain is taken (recorded as about nothing Pulse sent).
    let (code, _) = smtp_send(
        inbound,
        "a@example.org",
        &[&format!("postmaster@{BOUNCES}")],
        small,
    )
    .await?;
    assert_eq!(code, 250);
    // 10 MiB + 1 byte: 552, and nothing recorded.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let limit = env.settings.inbound.max_bytes;
    assert_eq!(limit, 10 * 1024 * 1024);
    let line = [b'x'; 998];
    while big.len() + 1000 <= limit {
        big.extend_from_slice(&line);
        big.extend_from_slice(b"\r\n");
    }
    big.resize(limit + 1, b'y');
    let (code, text) =
        smtp_send(inbound, "a@example.org", &[&format!("x@{BOUNCES}")], &big).await?;
    assert_eq!(code, 552, "{text}");
    let recorded = count(&env.db, "SELECT count(*) FROM inbound_messages").await?;
    assert_eq!(recorded, 1);
    env.stop().await
}

#[tokio::test]
async fn starttls_is_offered_with_a_certificate_and_plain_mail_still_arrives() -> anyhow::Result<()>
{
    let ca = pulse_tests::tls::TestCa::generate()?;
    let (cert, key) = (ca.cert_path(), ca.key_path());
    let env = TestEnv::start("inbound_tls", &[Role::Api, Role::Inbound], |s| {
        s.inbound.bounce_domain = Some(BOUNCES.into());
        s.inbound.tls_cert_file = Some(cert);
        s.inbound.tls_key_file = Some(key);
    })
    .await?;
    let inbound = env
        .inbound
        .ok_or_else(|| anyhow::anyhow!("no inbound listener"))?;
    let mail = b"Subject: over TLS\r\n\r\nHello.\r\n";
    let rcpt = format!("postmaster@{BOUNCES}");
    let (code, text, tls) = smtp_send_with(
        inbound,
        "a@example.org",
        &[&rcpt],
        mail,
        Some(&ca.ca_path()),
    )
    .await?;
    assert_eq!((code, tls), (250, true), "{text}");
    // A client that does not ask for TLS is still served (STARTTLS is offered, not required).
    let (code, _, tls) = smtp_send_with(inbound, "a@example.org", &[&rcpt], mail, None).await?;
    assert_eq!((code, tls), (250, false));
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM inbound_messages").await?,
        2
    );
    env.stop().await
}

#[tokio::test]
async fn a_message_recorded_before_a_crash_is_processed_after_it() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    // Everything but the inbound role.
    let env = TestEnv::start(
        "inbound_crash",
        &[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender],
        |s| s.smtp_url = Some(url),
    )
    .await?;
    env.create_sequence(two_steps("go", "P1D")).await?;
    env.post(
        "/v1/events",
        json!({"events": [event("1", "ada@example.org", "go")]}),
    )
    .await?;
    let sent = smtp.wait_for(1, Duration::from_secs(20)).await?;
    let id = sent[0].message_id.clone().unwrap_or_default();
    // What a listener does before its 250; then it died.
    let raw = fixture("reply", &id);
    let c = pulse_inbound::classify::classify(&raw, Some("ada@example.org"), None);
    assert_eq!(c.kind, Kind::Reply);
    let envelope = pulse_inbound::Envelope {
        mail_from: Some("ada@example.org".into()),
        rcpt_to: vec!["rep@sales.test".into()],
        verp: None,
    };
    let report = pulse_inbound::report(c, envelope, raw, None);
    let (recorded, matched) = feedback::record(&env.db, &report).await?;
    assert!(matched.enrollment.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&env, "ada@example.org").await?.0, "ACTIVE");

    // The inbound role starts again: the message is processed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stop = CancellationToken::new();
    let role = tokio::spawn(pulse_inbound::run(
        env.settings.clone(),
        listener,
        env.db.clone(),
        Default::default(),
        stop.clone(),
    ));
    eventually(
        Duration::from_secs(15),
        "the reply is processed",
        || async {
            let s = status_of(&env, "ada@example.org").await?;
            Ok((s.1.as_deref() == Some("replied")).then_some(()))
        },
    )
    .await?;
    let processed = count(
        &env.db,
        &format!("SELECT count(*) FROM inbound_messages WHERE id = {recorded} AND processed_at IS NOT NULL"),
    )
    .await?;
    assert_eq!(processed, 1);
    // Processing it again changes nothing.
    assert_eq!(feedback::process(&env.db, recorded, 3).await?, None);
    stop.cancel();
    role.await??;
    env.stop().await
}

#[tokio::test]
async fn replies_bounces_and_opt_outs_reported_through_events_act_like_mail() -> anyhow::Result<()>
{
    // The capture outbox: no relay needed.
    let env = TestEnv::start("inbound_events", &[Role::All], |_| {}).await?;
    env.create_sequence(two_steps("go", "P1D")).await?;
    env.post(
        "/v1/events",
        json!({"events": [event("1", "ada@example.org", "go"), event("2", "bob@example.org", "go")]}),
    )
    .await?;
    let ada_id = pulse_tests::sent_message_id(&env.db, "ada@example.org").await?;
    let feedback = json!({"events": [
        {"id": "r1", "type": "replied", "lead": {"email": "ADA@example.org"}, "message_id": ada_id},
        {"id": "b1", "type": "bounced", "lead": {"email": "bob@example.org"},
         "reason": "550 5.1.1 user unknown"},
        {"id": "u1", "type": "unsubscribed", "lead": {"email": "never@example.org"}},
        {"id": "x1", "type": "replied", "lead": {"email": "ada@example.org"},
         "message_id": "<someone.else@example.org>"},
        {"id": "x2", "type": "bounced", "lead": {"email": "ada@example.org"}, "tag": "go"},
    ]});
    let (status, r) = env.post("/v1/events", feedback.clone()).await?;
    assert_eq!(status, 200, "{r}");
    let results = r["results"].as_array().cloned().unwrap_or_default();
    let status_of_event = |i: usize| results[i]["status"].as_str().unwrap_or_default().to_owned();
    assert_eq!(status_of_event(0), "processed", "{r}");
    assert!(
        results[0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("ended 1"),
        "{r}"
    );
    assert_eq!(status_of_event(1), "processed");
    assert_eq!(status_of_event(2), "processed");
    assert_eq!(status_of_event(3), "rejected");
    assert_eq!(results[3]["error"]["field"], "events[3].message_id");
    assert_eq!(results[4]["error"]["field"], "events[4].tag");
    assert_eq!(
        status_of(&env, "ada@example.org").await?,
        ("COMPLETED".to_owned(), Some("replied".to_owned()))
    );
    assert_eq!(
        status_of(&env, "bob@example.org").await?,
        ("CANCELLED".to_owned(), Some("bounced".to_owned()))
    );
    let suppressed: Vec<(String, String)> =
        sqlx::query_as("SELECT value, reason FROM suppressions ORDER BY value")
            .fetch_all(&env.db)
            .await?;
    assert_eq!(
        suppressed,
        vec![
            ("bob@example.org".to_owned(), "bounced".to_owned()),
            ("never@example.org".to_owned(), "unsubscribed".to_owned()),
        ]
    );
    // Sent again: answered from the first time, nothing recorded twice.
    let (_, again) = env.post("/v1/events", feedback).await?;
    assert_eq!(again["results"][0]["status"], "duplicate_event", "{again}");
    assert_eq!(again["results"][0]["outcome"], results[0]["outcome"]);
    let recorded = count(
        &env.db,
        "SELECT count(*) FROM inbound_messages WHERE source = 'api'",
    )
    .await?;
    assert_eq!(recorded, 3);
    // The operator's command line reads the same.
    let client = pulse::cli::Client {
        url: env.base.clone(),
        key: Some(env.key.clone()),
        json: false,
        tz: None,
    };
    let list = |kind: &str| {
        pulse::cli::run(
            &client,
            pulse::cli::Request::Inbound(pulse::cli::Inbound::List {
                kind: Some(kind.to_owned()),
                address: None,
                enrollment: None,
                sequence: None,
                before: None,
                limit: None,
            }),
        )
    };
    let listed = list("bounce")
        .await
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    assert!(listed.contains("WHAT IT DID"), "{listed}");
    assert!(
        listed.contains("bob@example.org") && listed.contains("address suppressed"),
        "{listed}"
    );
    assert!(!listed.contains("ada@example.org"), "{listed}");
    let id = results[1]["inbound_message"].as_i64().unwrap_or_default();
    let shown = pulse::cli::run(
        &client,
        pulse::cli::Request::Inbound(pulse::cli::Inbound::Show { id, raw: false }),
    )
    .await
    .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    assert!(shown.contains("550 5.1.1 user unknown"), "{shown}");
    let bad = list("spam").await.err().map(|f| (f.code, f.message));
    assert!(
        matches!(&bad, Some((1, m)) if m.contains("kind")),
        "{bad:?}"
    );
    env.stop().await
}
