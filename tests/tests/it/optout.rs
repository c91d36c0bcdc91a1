//! Opt-outs: one-click unsubscribe (RFC 8058) on every message, the suppression list, and a
//! suppression ending the lead's enrollments everywhere, even a step already in RabbitMQ.

use std::time::{Duration, Instant};

use pulse::Role;
use pulse_shared::unsubscribe::{Subject, Unsubscribe};
use pulse_tests::{SmtpServer, TestEnv, count, eventually, spawn_sender};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn sequence(name: &str, tag: &str, body: &str) -> Value {
    json!({"name": name, "sender": {"from": "Rep <rep@example.com>"},
           "triggers": [{"type": "tag_applied", "tag": tag}],
           "steps": [{"subject": "Hi from {{ lead.first_name }}", "body": body,
                      "timing": {"type": "immediately"}}]})
}

fn event(id: &str, email: &str, tag: &str) -> Value {
    json!({"id": id, "type": "tag_applied", "tag": tag, "lead": {"email": email, "first_name": "X"}})
}

async fn post_form(env: &TestEnv, path: &str) -> anyhow::Result<(u16, String)> {
    let resp = env
        .http
        .post(format!("{}{path}", env.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

async fn suppressions(env: &TestEnv) -> anyhow::Result<Vec<Value>> {
    let (_, v) = env.get("/v1/suppressions").await?;
    Ok(v["suppressions"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn one_click_ends_the_leads_enrollments_everywhere_and_a_queued_step_is_never_sent()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    // No sender yet: the first steps wait in RabbitMQ.
    let env = TestEnv::start("optout", &[Role::Api, Role::Ingest, Role::Scheduler], |s| {
        s.smtp_url = Some(url)
    })
    .await?;
    let a = env.create_sequence(sequence("A", "go", "One")).await?;
    env.create_sequence(sequence("B", "go", "Two")).await?;
    let (status, _) = env
        .post(
            "/v1/events",
            json!({"events": [event("1", "ada@example.com", "go"), event("2", "bob@example.com", "go")]}),
        )
        .await?;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(15), "four queued steps", || async {
        let n = count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'QUEUED'",
        )
        .await?;
        Ok((n == 4).then_some(()))
    })
    .await?;

    // Ada's link for sequence A, signed with the key the roles use.
    let keys = Unsubscribe::load(&env.db, &env.settings).await?;
    let (workspace, ada): (Uuid, Uuid) =
        sqlx::query_as("SELECT workspace_id, id FROM leads WHERE email = 'ada@example.com'")
            .fetch_one(&env.db)
            .await?;
    let sequence_a = Uuid::parse_str(a["id"].as_str().unwrap_or_default())?;
    let token = keys.token(Subject {
        workspace,
        lead: ada,
        sequence: sequence_a,
    });
    let (status, page) = post_form(&env, &format!("/u/{token}")).await?;
    assert_eq!(status, 200, "{page}");
    let ended: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.status, e.end_reason FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE l.email = 'ada@example.com'",
    )
    .fetch_all(&env.db)
    .await?;
    assert_eq!(
        ended,
        vec![("CANCELLED".into(), "unsubscribed".into()); 2],
        "both of Ada's enrollments end"
    );
    let bob_active = count(
        &env.db,
        "SELECT count(*) FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE l.email = 'bob@example.com' AND e.status = 'ACTIVE'",
    )
    .await?;
    assert_eq!(bob_active, 2);
    // Idempotent.
    assert_eq!(post_form(&env, &format!("/u/{token}")).await?.0, 200);

    // Now a sender drains the queue: Bob gets both, Ada nothing.
    let stop = CancellationToken::new();
    let sender = spawn_sender(&env.settings, &stop);
    let got = smtp.wait_for(2, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let to: Vec<String> = smtp
        .received()
        .iter()
        .map(|m| m.rcpt_to.join(","))
        .collect();
    assert_eq!(to, vec!["bob@example.com"; 2], "{got:?}");
    let skipped = count(
        &env.db,
        "SELECT count(*) FROM step_runs r JOIN enrollments e ON e.id = r.enrollment_id
         JOIN leads l ON l.id = e.lead_id
         WHERE l.email = 'ada@example.com' AND r.state IN ('CANCELLED', 'SKIPPED')",
    )
    .await?;
    assert_eq!(skipped, 2);

    // A later trigger reports `suppressed`; the list says where it came from.
    let (_, later) = env
        .post(
            "/v1/events",
            json!({"events": [event("3", "ADA@example.com", "go")]}),
        )
        .await?;
    let outcomes: Vec<&str> = later["results"][0]["enrollments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["suppressed", "suppressed"], "{later}");
    let listed = suppressions(&env).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["value"], "ada@example.com");
    assert_eq!(listed[0]["reason"], "unsubscribed");
    assert!(
        listed[0]["source"]
            .as_str()
            .unwrap_or_default()
            .starts_with("one-click")
    );

    // Re-enroll is refused while suppressed, and works once lifted (recorded).
    let seq = a["id"].as_str().unwrap_or_default();
    let reenroll = json!({"lead_emails": ["ada@example.com"]});
    let (_, r) = env
        .post(&format!("/v1/sequences/{seq}/re-enroll"), reenroll.clone())
        .await?;
    assert_eq!(
        (r["suppressed"].as_u64(), r["reenrolled"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            "/v1/suppressions/ada@example.com?reason=asked%20to%20hear%20again",
            None,
        )
        .await?;
    assert_eq!(status, 204);
    let lifts = count(
        &env.db,
        "SELECT count(*) FROM suppression_lifts WHERE value = 'ada@example.com'
           AND reason = 'asked to hear again' AND was_reason = 'unsubscribed'",
    )
    .await?;
    assert_eq!(lifts, 1);
    let (_, r) = env
        .post(&format!("/v1/sequences/{seq}/re-enroll"), reenroll)
        .await?;
    assert_eq!(r["reenrolled"].as_u64(), Some(1), "{r}");
    stop.cancel();
    let _ = sender.await;
    env.stop().await
}

#[tokio::test]
async fn every_message_carries_one_click_headers_and_only_a_post_with_a_valid_token_unsubscribes()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("optout", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    env.create_sequence(sequence("C", "go", "Bye: {{ unsubscribe_url }}"))
        .await?;
    env.post(
        "/v1/events",
        json!({"events": [event("1", "cy@example.com", "go"), event("2", "di@example.com", "go")]}),
    )
    .await?;
    let received = smtp.wait_for(2, Duration::from_secs(20)).await?;
    let mut links = Vec::new();
    for m in &received {
        let header = |name: &str| {
            m.data
                .split("\r\n\r\n")
                .next()
                .unwrap_or_default()
                .replace("\r\n ", " ")
                .lines()
                .find(|l| {
                    l.to_ascii_lowercase()
                        .starts_with(&format!("{}:", name.to_ascii_lowercase()))
                })
                .map(|l| l[name.len() + 1..].trim().to_owned())
        };
        assert_eq!(
            header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        let list = header("List-Unsubscribe").unwrap_or_default();
        let link = list
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(link.contains("/u/"), "{list}");
        // The body's {{ unsubscribe_url }} is the same link (undoing quoted-printable's soft
        // line breaks; a token has no `=`).
        let body = m.body().replace("=\r\n", "");
        assert!(body.contains(&link), "{body}");
        links.push((m.rcpt_to.join(","), link));
    }
    let path = |link: &str| link[link.find("/u/").unwrap_or_default()..].to_owned();
    let (cy, cy_link) = links
        .iter()
        .find(|(to, _)| to == "cy@example.com")
        .cloned()
        .unwrap_or_default();
    assert_eq!(cy, "cy@example.com");

    // A GET (what a link scanner does) shows a page and changes nothing.
    let page = env
        .http
        .get(format!("{}{}", env.base, path(&cy_link)))
        .send()
        .await?;
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await?.contains("method=\"post\""));
    assert!(suppressions(&env).await?.is_empty());
    // A tampered token: 400, nothing changes.
    let mut tampered = path(&cy_link);
    let last = tampered.pop().unwrap_or('A');
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(post_form(&env, &tampered).await?.0, 400);
    assert_eq!(post_form(&env, "/u/not-a-token").await?.0, 400);
    assert!(suppressions(&env).await?.is_empty());
    // The real one: Cy is suppressed, Di is not.
    assert_eq!(post_form(&env, &path(&cy_link)).await?.0, 200);
    let listed = suppressions(&env).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["value"], "cy@example.com");
    env.stop().await
}

#[tokio::test]
async fn a_domain_suppression_ends_every_lead_of_the_domain_and_blocks_new_ones()
-> anyhow::Result<()> {
    let env = TestEnv::start("optout", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence("D", "go", "Later");
    body["steps"][0]["timing"] = json!({"type": "delay", "delay": "P1D"});
    let seq = env.create_sequence(body).await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let events: Vec<Value> = (0..300)
        .map(|i| event(&format!("a{i}"), &format!("lead{i}@acme.example"), "go"))
        .chain((0..5).map(|i| event(&format!("o{i}"), &format!("lead{i}@other.example"), "go")))
        .collect();
    let (status, _) = env.post("/v1/events", json!({"events": events})).await?;
    assert_eq!(status, 200);

    // Input errors name the entry.
    for (entries, field) in [
        (json!([{"email": "nope"}]), "entries[0].email"),
        (
            json!([{"email": "a@b.example"}, {"domain": "not a domain"}]),
            "entries[1].domain",
        ),
        (
            json!([{"email": "a@b.example", "domain": "b.example"}]),
            "entries[0].email",
        ),
        (json!([]), "entries"),
    ] {
        let (status, err) = env
            .post("/v1/suppressions", json!({"entries": entries}))
            .await?;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (422, Some(field)),
            "{err}"
        );
    }
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"email": format!("x{i}@e.example")}))
        .collect();
    let (status, _) = env
        .post("/v1/suppressions", json!({"entries": too_many}))
        .await?;
    assert_eq!(status, 422);

    let started = Instant::now();
    let (status, added) = env
        .post(
            "/v1/suppressions",
            json!({"entries": [{"domain": "ACME.example", "reason": "complained"}]}),
        )
        .await?;
    println!(
        "domain suppression over 300 enrollments: {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{added}");
    assert_eq!(
        (
            added["added"].as_u64(),
            added["enrollments_cancelled"].as_u64()
        ),
        (Some(1), Some(300))
    );
    let left = count(
        &env.db,
        "SELECT count(*) FROM enrollments WHERE status = 'ACTIVE'",
    )
    .await?;
    assert_eq!(left, 5, "only the other domain's leads are still enrolled");
    let reasons = count(
        &env.db,
        "SELECT count(*) FROM enrollments WHERE end_reason = 'complained'",
    )
    .await?;
    assert_eq!(reasons, 300);
    // Again: nothing new.
    let (_, again) = env
        .post(
            "/v1/suppressions",
            json!({"entries": [{"domain": "acme.example"}]}),
        )
        .await?;
    assert_eq!(
        (again["added"].as_u64(), again["already"].as_u64()),
        (Some(0), Some(1))
    );

    // New leads of the domain are not enrolled, by trigger or by hand.
    let (_, later) = env
        .post(
            "/v1/events",
            json!({"events": [event("n1", "new@acme.example", "go")]}),
        )
        .await?;
    assert_eq!(
        later["results"][0]["enrollments"][0]["outcome"], "suppressed",
        "{later}"
    );
    let (status, err) = env
        .post(
            &format!("/v1/sequences/{sid}/enrollments"),
            json!({"lead": {"email": "hand@acme.example"}}),
        )
        .await?;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("suppression")
    );
    // Filters.
    let (_, by_domain) = env.get("/v1/suppressions?domain=acme.example").await?;
    assert_eq!(by_domain["suppressions"].as_array().map(Vec::len), Some(1));
    let (_, by_email) = env
        .get("/v1/suppressions?email=someone@acme.example")
        .await?;
    assert_eq!(by_email["suppressions"][0]["kind"], "domain", "{by_email}");
    env.stop().await
}

#[tokio::test]
async fn the_cli_imports_100000_addresses_from_csv_and_exports_them_back() -> anyhow::Result<()> {
    use pulse::cli::{self, Client, Request, Suppressions};
    let env = TestEnv::start("optout", &[Role::Api], |_| {}).await?;
    let dir = std::env::temp_dir().join(format!("pulse-import-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("suppressed.csv");
    let mut csv = String::from("email,reason\n");
    for i in 0..100_000 {
        csv.push_str(&format!("Lead{i}@Import.example,\n"));
    }
    csv.push_str("bounced.example,bounced\n");
    std::fs::write(&file, csv)?;
    let client = Client {
        url: env.base.clone(),
        key: Some(env.key.clone()),
        json: false,
        tz: None,
    };
    let started = Instant::now();
    let out = cli::run(
        &client,
        Request::Suppressions(Suppressions::Import {
            file: file.clone(),
            reason: "imported".into(),
        }),
    )
    .await
    .map_err(|f| anyhow::anyhow!(f.message))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "import: {out} ({:.0} rows/s measured here)",
        100_001.0 / secs
    );
    assert!(out.contains("added 100001"), "{out}");
    let stored = count(&env.db, "SELECT count(*) FROM suppressions").await?;
    assert_eq!(stored, 100_001);
    let imported = count(
        &env.db,
        "SELECT count(*) FROM suppressions WHERE reason = 'imported' AND kind = 'email'
           AND value LIKE 'lead%@import.example' AND source LIKE 'api:%'",
    )
    .await?;
    assert_eq!(imported, 100_000, "addresses are stored canonical");
    // Imported again: nothing new.
    let again = cli::run(
        &client,
        Request::Suppressions(Suppressions::Import {
            file,
            reason: "imported".into(),
        }),
    )
    .await
    .map_err(|f| anyhow::anyhow!(f.message))?;
    assert!(again.contains("added 0, already there 100001"), "{again}");
    // The list pages through all of it.
    let (mut after, mut seen) = (None::<String>, 0usize);
    loop {
        let q = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let (_, page) = env.get(&format!("/v1/suppressions?limit=1000{q}")).await?;
        seen += page["suppressions"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 100_001);
    let _ = std::fs::remove_dir_all(&dir);
    env.stop().await
}
