//! Sender mailboxes: each lead is given one mailbox in turn and keeps it; each mailbox sends
//! through its own relay with its own credentials (or the global relay), with its own From and
//! Reply-To; secrets never come back; and a mailbox's relay changed while hundreds of sends are
//! in flight loses and duplicates nothing.

use std::{collections::HashMap, time::Duration};

use pulse::Role;
use pulse_tests::{
    SmtpServer, TestEnv, eventually,
    smtp::{Received, Secured},
    tls::TestCa,
};
use serde_json::{Value, json};

const LEADS: usize = 150;

#[tokio::test]
async fn mailboxes_take_turns_send_through_their_own_relays_and_survive_a_relay_change_in_flight()
-> anyhow::Result<()> {
    let ca = TestCa::generate()?;
    let global = SmtpServer::start().await?;
    let plain = SmtpServer::start().await?;
    let secured = SmtpServer::start_secured(Secured {
        acceptor: ca.acceptor()?,
        user: "rep-b@example.com".into(),
        password: "b-secret".into(),
    })
    .await?;
    let moved_to = SmtpServer::start().await?;
    let global_url = global.url();
    let ca_file = ca.ca_path();
    let env = TestEnv::start("mailboxes", &[Role::All], |s| {
        s.smtp_url = Some(global_url);
        s.tls_ca_file = Some(ca_file);
    })
    .await?;

    let create = |body: Value| {
        let env = &env;
        async move {
            let (status, m) = env.post("/v1/mailboxes", body).await?;
            anyhow::ensure!(status == 201, "{status} {m}");
            anyhow::Ok(m)
        }
    };
    let a = create(
        json!({"address": "rep-a@example.com", "display_name": "Ada Rep",
                          "smtp_url": plain.url()}),
    )
    .await?;
    // The password inside the URL is split off, stored apart and never shown.
    let b = create(
        json!({"address": "rep-b@example.com", "display_name": "Bo Rep",
        "reply_to": "Bo Replies <replies-b@example.com>",
        "smtp_url": format!("smtp://rep-b%40example.com:b-secret@127.0.0.1:{}?tls=required",
                            secured.addr.port())}),
    )
    .await?;
    let c = create(json!({"address": "rep-c@example.com"})).await?;
    assert_eq!(b["has_smtp_password"], true);
    assert!(!b.to_string().contains("b-secret"), "{b}");
    let (_, listed) = env.get("/v1/mailboxes").await?;
    assert!(!listed.to_string().contains("b-secret"), "{listed}");
    assert_eq!(listed["mailboxes"].as_array().map(Vec::len), Some(3));
    let (status, dup) = env
        .post("/v1/mailboxes", json!({"address": "REP-A@example.com"}))
        .await?;
    assert_eq!(status, 409, "{dup}");

    let id = |m: &Value| m["id"].as_str().unwrap_or_default().to_owned();
    let (a_id, b_id, c_id) = (id(&a), id(&b), id(&c));
    let seq = env
        .create_sequence(json!({
            "name": "Reps",
            "sender": {"mailbox_ids": [a_id, b_id, c_id]},
            "triggers": [{"type": "tag_applied", "tag": "go"}],
            "steps": [
                {"subject": "Hello {{ lead.first_name }}", "body": "One", "timing": {"type": "immediately"}},
                {"subject": "", "body": "Two", "thread": true, "timing": {"type": "delay", "delay": "PT2S"}},
            ],
        }))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        seq["sender"]["mailbox_ids"].as_array().map(Vec::len),
        Some(3)
    );
    let (status, busy) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/mailboxes/{a_id}"),
            None,
        )
        .await?;
    assert_eq!(
        status, 409,
        "a mailbox a sequence sends from is not deleted: {busy}"
    );

    let events: Vec<Value> = (0..LEADS)
        .map(|i| json!({"id": format!("e{i}"), "type": "tag_applied", "tag": "go",
                        "lead": {"email": format!("lead{i}@example.com"), "first_name": format!("L{i}")}}))
        .collect();
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);

    // While the first steps go out, mailbox C moves from the global relay to its own.
    eventually(Duration::from_secs(20), "the first sends", || async {
        Ok((global.count() + plain.count() + secured.count() > 10).then_some(()))
    })
    .await?;
    let (status, moved) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/mailboxes/{c_id}"),
            Some(json!({"smtp_url": moved_to.url()})),
        )
        .await?;
    assert_eq!(status, 200, "{moved}");

    let total = 2 * LEADS;
    let all = eventually(
        Duration::from_secs(90),
        "every step of every lead",
        || async {
            let n = global.count() + plain.count() + secured.count() + moved_to.count();
            Ok((n >= total).then_some(()))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received: Vec<(&str, Received)> = Vec::new();
    for (name, server) in [
        ("global", &global),
        ("plain", &plain),
        ("secured", &secured),
        ("moved", &moved_to),
    ] {
        received.extend(server.received().into_iter().map(|m| (name, m)));
    }
    all?;
    assert_eq!(received.len(), total, "nothing lost, nothing sent twice");

    // Each lead: two messages, one mailbox for both, through that mailbox's relay.
    let mut by_lead: HashMap<String, Vec<(&str, Received)>> = HashMap::new();
    for (server, m) in received {
        by_lead
            .entry(m.rcpt_to.join(","))
            .or_default()
            .push((server, m));
    }
    assert_eq!(by_lead.len(), LEADS);
    let mut per_mailbox: HashMap<String, usize> = HashMap::new();
    for (lead, msgs) in &by_lead {
        assert_eq!(msgs.len(), 2, "{lead}");
        let from = &msgs[0].1.mail_from;
        assert_eq!(&msgs[1].1.mail_from, from, "{lead} keeps its mailbox");
        *per_mailbox.entry(from.clone()).or_default() += 1;
        for (server, m) in msgs {
            let header = |name: &str| {
                m.data
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                    .map(|l| l[name.len() + 1..].trim().to_owned())
            };
            match from.as_str() {
                "rep-a@example.com" => {
                    assert_eq!(*server, "plain");
                    assert_eq!(
                        header("from").as_deref(),
                        Some("\"Ada Rep\" <rep-a@example.com>")
                    );
                    assert_eq!(header("reply-to"), None);
                }
                "rep-b@example.com" => {
                    assert_eq!(
                        *server, "secured",
                        "through its relay, with its credentials"
                    );
                    assert_eq!(
                        header("reply-to").as_deref(),
                        Some("\"Bo Replies\" <replies-b@example.com>")
                    );
                }
                "rep-c@example.com" => assert!(["global", "moved"].contains(server), "{server}"),
                other => panic!("unexpected sender {other}"),
            }
            assert!(
                m.message_id
                    .as_deref()
                    .is_some_and(|id| id.ends_with("@example.com>")),
                "{:?}",
                m.message_id
            );
        }
    }
    // In turn: 150 leads over 3 mailboxes, 50 each.
    for mailbox in [
        "rep-a@example.com",
        "rep-b@example.com",
        "rep-c@example.com",
    ] {
        assert_eq!(
            per_mailbox.get(mailbox),
            Some(&(LEADS / 3)),
            "{per_mailbox:?}"
        );
    }
    assert!(
        moved_to.count() > 0,
        "the moved mailbox sent through its new relay"
    );

    // The enrollments view and the send history name the mailbox.
    let (_, enrollments) = env
        .get(&format!("/v1/sequences/{sid}/enrollments?limit=500"))
        .await?;
    let named = enrollments["enrollments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            [&a_id, &b_id, &c_id]
                .iter()
                .any(|id| e["mailbox_id"] == id.as_str())
        })
        .count();
    assert_eq!(named, LEADS);
    let (_, sends) = env
        .get(&format!("/v1/sends?sequence_id={sid}&limit=5"))
        .await?;
    let first = &sends["sends"][0];
    assert!(
        first["mailbox_id"].is_string() && first["from_addr"].is_string(),
        "{first}"
    );
    env.stop().await
}

#[tokio::test]
async fn mailbox_input_is_checked_and_secrets_are_write_only() -> anyhow::Result<()> {
    let env = TestEnv::start("mailboxes", &[Role::Api], |_| {}).await?;
    let cases = [
        (json!({"address": "Ada <ada@example.com>"}), "address"),
        (json!({"address": "nope"}), "address"),
        (
            json!({"address": "a@example.com", "smtp_url": "http://x"}),
            "smtp_url",
        ),
        (
            json!({"address": "a@example.com", "smtp_password": "p"}),
            "smtp_password",
        ),
        (
            json!({"address": "a@example.com", "reply_to": "not an address"}),
            "reply_to",
        ),
        (
            json!({"address": "a@example.com", "dkim": {"selector": "s1", "private_key": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----"}}),
            "dkim.private_key",
        ),
        (
            json!({"address": "a@example.com", "dkim": {"selector": "a b", "private_key": "x"}}),
            "dkim.selector",
        ),
    ];
    for (body, field) in cases {
        let (status, err) = env.post("/v1/mailboxes", body.clone()).await?;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (422, Some(field)),
            "{body} -> {err}"
        );
    }
    let (status, m) = env
        .post(
            "/v1/mailboxes",
            json!({"address": "a@example.com", "smtp_url": "smtp://a%40example.com@relay.example.com:587?tls=required",
                   "smtp_password": "hunter2"}),
        )
        .await?;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["has_smtp_password"], true);
    assert!(!m.to_string().contains("hunter2"));
    let id = m["id"].as_str().unwrap_or_default().to_owned();
    // A new relay drops the old relay's password.
    let (status, m) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/mailboxes/{id}"),
            Some(json!({"smtp_url": "smtp://relay2.example.com:25"})),
        )
        .await?;
    assert_eq!(
        (status, &m["has_smtp_password"]),
        (200, &json!(false)),
        "{m}"
    );
    // A sequence naming a mailbox of nobody, or one twice, is refused.
    let seq = |ids: Value| {
        json!({"name": "S", "sender": {"mailbox_ids": ids},
               "steps": [{"subject": "s", "body": "b", "timing": {"type": "immediately"}}]})
    };
    let nobody = uuid::Uuid::new_v4().to_string();
    // A mailbox that is not there is 404, like an id in a path.
    let (status, err) = env.post("/v1/sequences", seq(json!([nobody]))).await?;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{err}"
    );
    for (ids, field) in [
        (json!([id, id]), "sender.mailbox_ids[1]"),
        (json!([]), "sender.mailbox_ids"),
    ] {
        let (status, err) = env.post("/v1/sequences", seq(ids)).await?;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (422, Some(field)),
            "{err}"
        );
    }
    let (status, err) = env
        .post(
            "/v1/sequences",
            json!({"name": "S", "sender": {"from": "a@example.com", "mailbox_ids": [id]},
                   "steps": [{"subject": "s", "body": "b", "timing": {"type": "immediately"}}]}),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("sender")),
        "{err}"
    );
    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/mailboxes/{id}"),
            None,
        )
        .await?;
    assert_eq!(status, 204);
    let (status, _) = env.get(&format!("/v1/mailboxes/{id}")).await?;
    assert_eq!(status, 404);
    env.stop().await
}
