//! Lead identity: one mailbox is one lead whatever its spelling, the address policy a workspace
//! chooses, the bound on what a lead keeps, and the migration that canonicalizes stored
//! addresses and merges leads that turn out to be one mailbox.

use pulse::Role;
use pulse_tests::{TestEnv, count, sequence_body};
use serde_json::{Value, json};

fn event(id: &str, email: &str, kind: &str, extra: Value) -> Value {
    let mut e = json!({"id": id, "type": kind, "lead": {"email": email, "first_name": "Ada"}});
    if let (Some(obj), Some(more)) = (e.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    e
}

#[tokio::test]
async fn one_mailbox_is_one_lead_whatever_its_spelling() -> anyhow::Result<()> {
    let env = TestEnv::start("identity", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "A",
            &[("Hi", "x", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let spellings = [
        ("nfc", "jos\u{e9}@example.com"),
        ("nfd", "jose\u{301}@example.com"),
        ("unicode", "ada@ex\u{e4}mple.com"),
        ("punycode", "ada@xn--exmple-cua.com"),
        ("upper", "Ada@EX\u{c4}MPLE.com"),
        ("turkish", "\u{130}STANBUL@example.com"),
    ];
    let events: Vec<Value> = spellings
        .iter()
        .map(|(id, email)| event(id, email, "tag_applied", json!({"tag": "t"})))
        .collect();
    let (status, res) = env.post("/v1/events", json!({ "events": events })).await?;
    assert_eq!(status, 200, "{res}");
    let r = &res["results"];
    assert_eq!(r[0]["lead_id"], r[1]["lead_id"], "NFC and NFD: one lead");
    assert_eq!(
        r[2]["lead_id"], r[3]["lead_id"],
        "Unicode and punycode: one lead"
    );
    assert_eq!(r[2]["lead_id"], r[4]["lead_id"], "ASCII case: one lead");
    let outcomes: Vec<&str> = (0..6)
        .map(|i| {
            r[i]["enrollments"][0]["outcome"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "created",
            "already_active",
            "created",
            "already_active",
            "already_active",
            "created"
        ]
    );
    let leads: Vec<(String, String)> =
        sqlx::query_as("SELECT email, email_given FROM leads ORDER BY created_at, email")
            .fetch_all(&env.db)
            .await?;
    assert_eq!(leads.len(), 3);
    assert!(leads.contains(&(
        "jos\u{e9}@example.com".to_owned(),
        "jos\u{e9}@example.com".to_owned()
    )));
    assert!(leads.contains(&(
        "ada@xn--exmple-cua.com".to_owned(),
        "ada@ex\u{e4}mple.com".to_owned()
    )));
    // The Turkish İ is kept: only ASCII letters are lower-cased.
    assert!(leads.contains(&(
        "\u{130}stanbul@example.com".to_owned(),
        "\u{130}STANBUL@example.com".to_owned()
    )));
    // Look-ups by any spelling find the lead.
    let sid = seq["id"].as_str().unwrap_or_default();
    let (status, res) = env
        .post(
            &format!("/v1/sequences/{sid}/re-enroll"),
            json!({"lead_emails": ["jose\u{301}@example.com", "ADA@ex\u{e4}mple.com"]}),
        )
        .await?;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["already_active"], 2, "{res}");
    // Manual enrollment refuses a control character with 422, not 500.
    let (status, res) = env
        .post(
            &format!("/v1/sequences/{sid}/enrollments"),
            json!({"lead": {"email": "x@example.com", "first_name": "A\u{0}"}}),
        )
        .await?;
    assert_eq!(
        (status, res["error"]["field"].as_str()),
        (422, Some("lead.first_name")),
        "{res}"
    );
    env.stop().await
}

/// Arbitrary strings in every field an event carries: the answer is always 2xx or 4xx, and an
/// event that is accepted is stored as sent (PostgreSQL refuses NUL: it must be caught first).
#[tokio::test]
async fn migrate_brings_stored_addresses_to_their_canonical_form() -> anyhow::Result<()> {
    let env = TestEnv::start("identity", &[Role::Api], |_| {}).await?;
    let ws = pulse_shared::db::DEFAULT_WORKSPACE;
    // As an older Pulse stored it: lower-cased, not normalized.
    let nfd = uuid::Uuid::from_u128(1);
    sqlx::query("INSERT INTO leads (id, workspace_id, email, email_given) VALUES ($1, $2, $3, $3)")
        .bind(nfd)
        .bind(ws)
        .bind("jose\u{301}@example.com")
        .execute(&env.db)
        .await?;
    let found = pulse_shared::identity::canonicalize_leads(&env.db).await?;
    assert_eq!(found.rewritten, 1, "{found:?}");
    assert!(found.merged.is_empty());
    let email: String = sqlx::query_scalar("SELECT email FROM leads WHERE id = $1")
        .bind(nfd)
        .fetch_one(&env.db)
        .await?;
    assert_eq!(email, "jos\u{e9}@example.com");
    // Running it again changes nothing more.
    let again = pulse_shared::identity::canonicalize_leads(&env.db).await?;
    assert_eq!(again.rewritten, 0);
    env.stop().await
}

#[tokio::test]
async fn migrate_merges_two_leads_that_are_one_mailbox() -> anyhow::Result<()> {
    let env = TestEnv::start("identity", &[Role::Api], |_| {}).await?;
    let later = json!({"type": "delay", "delay": "P1D"});
    let a = env
        .create_sequence(sequence_body("A", &[("One", "x", later.clone())], "a"))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let b = env
        .create_sequence(sequence_body("B", &[("One", "x", later)], "b"))
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let enroll = |seq: String, email: &'static str| {
        let env = &env;
        async move {
            let (status, body) = env
                .post(
                    &format!("/v1/sequences/{seq}/enrollments"),
                    json!({"lead": {"email": email}}),
                )
                .await?;
            anyhow::ensure!(status == 201 || status == 200, "{status} {body}");
            anyhow::Ok((body["id"].as_str().unwrap_or_default().to_owned(), body))
        }
    };
    // The kept lead (stored canonical): ACTIVE in A; enrolled in B and then cancelled.
    let (kept_in_a, body) = enroll(a.clone(), "ada@xn--exmple-cua.com").await?;
    let kept: uuid::Uuid = body["lead_id"].as_str().unwrap_or_default().parse()?;
    let (kept_in_b, _) = enroll(b.clone(), "ada@xn--exmple-cua.com").await?;
    let (status, body) = env
        .post(&format!("/v1/enrollments/{kept_in_b}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    // The other lead, ACTIVE in both, then given the Unicode spelling an older Pulse kept.
    let (other_in_a, body) = enroll(a.clone(), "tmp@example.com").await?;
    let other: uuid::Uuid = body["lead_id"].as_str().unwrap_or_default().parse()?;
    let (other_in_b, _) = enroll(b.clone(), "tmp@example.com").await?;
    sqlx::query(
        "UPDATE leads SET email = 'ada@ex\u{e4}mple.com', tags = '{vip}',
                          unsubscribed_at = now(), first_name = 'Ada' WHERE id = $1",
    )
    .bind(other)
    .execute(&env.db)
    .await?;

    let found = pulse_shared::identity::canonicalize_leads(&env.db).await?;
    assert_eq!(found.merged, [(kept, other)], "{found:?}");
    assert_eq!(
        count(
            &env.db,
            &format!("SELECT count(*) FROM leads WHERE id = '{other}'")
        )
        .await?,
        0
    );
    let (first, tags, opted_out): (Option<String>, Vec<String>, bool) = sqlx::query_as(
        "SELECT first_name, tags, unsubscribed_at IS NOT NULL FROM leads WHERE id = $1",
    )
    .bind(kept)
    .fetch_one(&env.db)
    .await?;
    assert_eq!(
        first.as_deref(),
        Some("Ada"),
        "a field only the other had is kept"
    );
    assert_eq!(tags, ["vip"]);
    assert!(opted_out, "an opt-out of either lead survives the merge");

    // A: both were ACTIVE; the other's is cancelled, audited, and the pair's latest is the kept.
    let status_of = |id: String| {
        let db = env.db.clone();
        async move {
            let row: (String, uuid::Uuid, i32) = sqlx::query_as(
                "SELECT status, lead_id, generation FROM enrollments WHERE id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&db)
            .await?;
            anyhow::Ok(row)
        }
    };
    let (s, lead, g_kept) = status_of(kept_in_a.clone()).await?;
    assert_eq!((s.as_str(), lead), ("ACTIVE", kept));
    let (s, lead, g_other) = status_of(other_in_a.clone()).await?;
    assert_eq!((s.as_str(), lead), ("CANCELLED", kept));
    assert_ne!(g_kept, g_other, "one pair, distinct generations");
    assert_eq!(
        count(
            &env.db,
            &format!(
                "SELECT count(*) FROM step_runs WHERE enrollment_id = '{other_in_a}' AND state = 'SCHEDULED'"
            ),
        )
        .await?,
        0,
        "the cancelled enrollment's pending step is cancelled"
    );
    let (_, audit) = env.get(&format!("/v1/sequences/{a}/audit")).await?;
    assert!(
        audit["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| {
                e["action"] == "enrollment_cancelled"
                    && e["enrollment_id"] == json!(other_in_a)
                    && e["actor"] == "pulse migrate"
            })),
        "{audit}"
    );
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{a}/enrollments"),
            json!({"lead": {"email": "ada@ex\u{e4}mple.com"}}),
        )
        .await?;
    assert_eq!(
        (status, body["id"].as_str()),
        (200, Some(kept_in_a.as_str()))
    );

    // B: the other's ACTIVE enrollment moves over as the pair's; the kept lead's ended one,
    // which had the same generation, is renumbered after it.
    let (s, lead, g_active) = status_of(other_in_b.clone()).await?;
    assert_eq!((s.as_str(), lead), ("ACTIVE", kept));
    let (s, _, g_ended) = status_of(kept_in_b).await?;
    assert_eq!(s, "CANCELLED");
    assert_ne!(g_active, g_ended);
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{b}/enrollments"),
            json!({"lead": {"email": "ADA@exämple.com"}}),
        )
        .await?;
    assert_eq!(
        (status, body["id"].as_str()),
        (200, Some(other_in_b.as_str()))
    );
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{b}/re-enroll"),
            json!({"lead_emails": ["ada@xn--exmple-cua.com"]}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("already_active"), "{body}");
    env.stop().await
}

#[tokio::test]
async fn dotless_domains_only_in_a_workspace_that_allows_them() -> anyhow::Result<()> {
    let env = TestEnv::start("identity", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "A",
            &[("Hi", "x", json!({"type": "delay", "delay": "P1D"}))],
            "t",
        ))
        .await?;
    let send = |id: &'static str| {
        let env = &env;
        async move {
            let events = [event(id, "Ops@MailHub", "tag_applied", json!({"tag": "t"}))];
            env.post("/v1/events", json!({ "events": events })).await
        }
    };
    let (status, res) = send("e1").await?;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["results"][0]["status"], "rejected", "{res}");
    assert!(
        res["results"][0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("allow_dotless_domains")),
        "the error says how to allow it: {res}"
    );

    let (status, ws) = env.get("/v1/workspace").await?;
    assert_eq!(
        (status, &ws["allow_dotless_domains"]),
        (200, &json!(false)),
        "{ws}"
    );
    let (status, body) = env
        .call(
            reqwest::Method::PATCH,
            "/v1/workspace",
            Some(json!({"allow_dotles_domains": true})),
        )
        .await?;
    assert_eq!(status, 400, "a misspelled setting is refused: {body}");
    let (status, ws) = env
        .call(
            reqwest::Method::PATCH,
            "/v1/workspace",
            Some(json!({"allow_dotless_domains": true})),
        )
        .await?;
    assert_eq!(
        (status, &ws["allow_dotless_domains"]),
        (200, &json!(true)),
        "{ws}"
    );

    let (status, res) = send("e2").await?;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["results"][0]["status"], "processed", "{res}");
    let seq_id = seq["id"].as_str().unwrap_or_default();
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{seq_id}/enrollments"),
            json!({"lead": {"email": "OPS@mailhub"}}),
        )
        .await?;
    assert_eq!(status, 200, "the same lead, already enrolled: {body}");
    assert_eq!(body["lead_email"], "ops@mailhub");
    // IP literals stay refused whatever the setting.
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{seq_id}/enrollments"),
            json!({"lead": {"email": "ops@[10.0.0.1]"}}),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    env.stop().await
}

#[tokio::test]
async fn what_a_lead_keeps_stays_bounded_across_events() -> anyhow::Result<()> {
    let env = TestEnv::start("identity", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "A",
            &[("Hi", "x", json!({"type": "delay", "delay": "P1D"}))],
            "t",
        ))
        .await?;
    let attrs = |from: usize, n: usize| -> Value {
        Value::Object(
            (from..from + n)
                .map(|i| (format!("k{i}"), json!(i)))
                .collect(),
        )
    };
    let with = |id: &str, email: &str, a: Value| {
        let mut e = event(id, email, "tag_applied", json!({"tag": "t"}));
        e["lead"]["attributes"] = a;
        e
    };
    // 60 attributes stored.
    let (status, res) = env
        .post(
            "/v1/events",
            json!({"events": [with("e1", "big@example.com", attrs(0, 60))]}),
        )
        .await?;
    assert_eq!(
        (status, &res["results"][0]["status"]),
        (200, &json!("processed")),
        "{res}"
    );
    // 60 more in one event: each event is within its limit, the lead would not be. The other
    // lead's event in the same batch is applied.
    let (status, res) = env
        .post(
            "/v1/events",
            json!({"events": [
                with("e2", "big@example.com", attrs(100, 60)),
                with("e3", "small@example.com", attrs(0, 3)),
            ]}),
        )
        .await?;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["results"][0]["status"], "rejected", "{res}");
    assert_eq!(res["results"][0]["error"]["status"], 422, "{res}");
    assert_eq!(
        res["results"][0]["error"]["field"], "events[0].lead.attributes",
        "{res}"
    );
    assert_eq!(res["results"][1]["status"], "processed", "{res}");
    // Its id is not used up: with fewer attributes it is applied.
    let (status, res) = env
        .post(
            "/v1/events",
            json!({"events": [with("e2", "big@example.com", attrs(100, 40))]}),
        )
        .await?;
    assert_eq!(
        (status, &res["results"][0]["status"]),
        (200, &json!("processed")),
        "{res}"
    );
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM leads, jsonb_object_keys(attributes) WHERE email = 'big@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(kept, 100);
    // Replacing stored values is always room enough; one more is not.
    let (_, res) = env
        .post(
            "/v1/events",
            json!({"events": [with("e4", "big@example.com", attrs(0, 60))]}),
        )
        .await?;
    assert_eq!(res["results"][0]["status"], "processed", "{res}");
    let seq_id = seq["id"].as_str().unwrap_or_default();
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{seq_id}/enrollments"),
            json!({"lead": {"email": "big@example.com", "attributes": {"one_more": 1}}}),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "lead.attributes", "{body}");
    env.stop().await
}
