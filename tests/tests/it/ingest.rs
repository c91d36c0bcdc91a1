//! Trigger ingest: dedupe of enrollments and event ids, batch validation, paused and ended rules.

use pulse::Role;
use pulse_tests::{TestEnv, sequence_body};
use serde_json::{Value, json};

fn event(id: &str, email: &str, kind: &str, extra: Value) -> Value {
    let mut e = json!({"id": id, "type": kind, "lead": {"email": email, "first_name": "Ada"}});
    if let (Some(obj), Some(more)) = (e.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    e
}

async fn active_enrollments(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE status = 'ACTIVE'")
            .fetch_one(&env.db)
            .await?,
    )
}

#[tokio::test]
async fn overlapping_triggers_and_repeats_make_one_enrollment() -> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body(
        "Trial",
        &[("Hi", "Hello", json!({"type": "immediately"}))],
        "trial",
    );
    body["triggers"] = json!([
        {"type": "tag_applied", "tag": "trial"},
        {"type": "tag_applied", "tag": "trial"},
        {"type": "list_added", "list": "webinar"},
        {"type": "lead_score", "min_score": 50}
    ]);
    let seq = env.create_sequence(body).await?;
    let seq_id = seq["id"].clone();

    let (status, res) = env
        .post(
            "/v1/events",
            json!({"events": [
                event("e1", "ada@example.com", "tag_applied", json!({"tag": "trial"})),
                event("e2", "ADA@example.com", "list_added", json!({"list": "webinar"})),
                event("e3", "ada@example.com", "lead_score_changed", json!({"score": 80})),
                event("e4", "ada@example.com", "tag_applied", json!({"tag": "trial"})),
                event("e1", "ada@example.com", "tag_applied", json!({"tag": "trial"})),
                event("e5", "ada@example.com", "lead_score_changed", json!({"score": 10})),
                event("e6", "ada@example.com", "tag_applied", json!({"tag": "other"})),
            ]}),
        )
        .await?;
    assert_eq!(status, 200, "{res}");
    let r = &res["results"];
    assert_eq!(r[0]["status"], "processed");
    assert_eq!(
        r[0]["enrollments"],
        json!([{"sequence_id": seq_id, "enrollment_id": r[0]["enrollments"][0]["enrollment_id"], "outcome": "created"}])
    );
    let enrollment = r[0]["enrollments"][0]["enrollment_id"].clone();
    for i in [1, 2, 3] {
        assert_eq!(r[i]["status"], "processed");
        assert_eq!(
            r[i]["enrollments"][0]["outcome"], "already_active",
            "event {i}: {}",
            r[i]
        );
        assert_eq!(r[i]["enrollments"][0]["enrollment_id"], enrollment);
        assert_eq!(
            r[i]["enrollments"].as_array().map(Vec::len),
            Some(1),
            "one entry per sequence"
        );
    }
    assert_eq!(r[4]["status"], "duplicate_event");
    assert_eq!(
        r[4]["enrollments"][0]["outcome"], "created",
        "the original outcome is repeated"
    );
    assert_eq!(
        r[5]["enrollments"],
        json!([]),
        "score below the threshold matches nothing"
    );
    assert_eq!(
        r[6]["enrollments"],
        json!([]),
        "another tag matches nothing"
    );
    assert_eq!(active_enrollments(&env).await?, 1);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM step_runs")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(runs, 1, "exactly one first step scheduled");

    // The lead carries what the events said.
    let (tags, lists, score): (Vec<String>, Vec<String>, Option<i32>) =
        sqlx::query_as("SELECT tags, lists, score FROM leads WHERE email = 'ada@example.com'")
            .fetch_one(&env.db)
            .await?;
    assert_eq!(tags, vec!["trial", "other"]);
    assert_eq!(lists, vec!["webinar"]);
    assert_eq!(score, Some(10));
    env.stop().await
}

#[tokio::test]
async fn ended_and_paused_sequences_do_not_enroll() -> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    let a = env
        .create_sequence(sequence_body(
            "A",
            &[("Hi", "x", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let b = env
        .create_sequence(sequence_body(
            "B",
            &[("Hi", "x", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let (status, res) = env
        .post(
            "/v1/events",
            json!({"events": [event("e1", "ada@example.com", "tag_applied", json!({"tag": "t"}))]}),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        res["results"][0]["enrollments"].as_array().map(Vec::len),
        Some(2)
    );

    sqlx::query("UPDATE enrollments SET status = 'COMPLETED' WHERE sequence_id = $1::uuid")
        .bind(a["id"].as_str())
        .execute(&env.db)
        .await?;
    sqlx::query("UPDATE sequences SET status = 'PAUSED' WHERE id = $1::uuid")
        .bind(b["id"].as_str())
        .execute(&env.db)
        .await?;
    let (_, res) = env
        .post(
            "/v1/events",
            json!({"events": [
                event("e2", "ada@example.com", "tag_applied", json!({"tag": "t"})),
                event("e3", "bob@example.com", "tag_applied", json!({"tag": "t"})),
            ]}),
        )
        .await?;
    let outcomes = |i: usize| outcomes_of(&res, i);
    let (a_id, b_id) = (
        a["id"].as_str().unwrap_or_default().to_owned(),
        b["id"].as_str().unwrap_or_default().to_owned(),
    );
    let mut want_ada = vec![
        (a_id.clone(), "ended_not_reenrolled".to_owned()),
        (b_id.clone(), "sequence_paused".to_owned()),
    ];
    want_ada.sort();
    assert_eq!(outcomes(0), want_ada);
    let mut want_bob = vec![
        (a_id.clone(), "created".to_owned()),
        (b_id.clone(), "sequence_paused".to_owned()),
    ];
    want_bob.sort();
    assert_eq!(outcomes(1), want_bob);
    let bob_in_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE l.email = 'bob@example.com' AND e.sequence_id = $1::uuid",
    )
    .bind(b["id"].as_str())
    .fetch_one(&env.db)
    .await?;
    assert_eq!(bob_in_b, 0, "a paused sequence enrolls nobody");

    // The id was not used up for B: resent while B is still paused, it is still paused there;
    // resent after the resume, it enrolls Bob in B and keeps what it did in A.
    let resend =
        json!({"events": [event("e3", "bob@example.com", "tag_applied", json!({"tag": "t"}))]});
    let (_, again) = env.post("/v1/events", resend.clone()).await?;
    assert_eq!(again["results"][0]["status"], "processed", "{again}");
    let (status, _) = env
        .post(&format!("/v1/sequences/{b_id}/resume"), json!({}))
        .await?;
    assert_eq!(status, 200);
    let (_, res) = env.post("/v1/events", resend.clone()).await?;
    assert_eq!(res["results"][0]["status"], "processed", "{res}");
    let mut want = vec![
        (a_id, "created".to_owned()),
        (b_id.clone(), "created".to_owned()),
    ];
    want.sort();
    assert_eq!(outcomes_of(&res, 0), want);
    let bob_in_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE l.email = 'bob@example.com' AND e.sequence_id = $1::uuid AND e.status = 'ACTIVE'",
    )
    .bind(&b_id)
    .fetch_one(&env.db)
    .await?;
    assert_eq!(bob_in_b, 1, "enrolled by the resent event");
    // Once applied everywhere, the id is a duplicate like any other.
    let (_, res) = env.post("/v1/events", resend).await?;
    assert_eq!(res["results"][0]["status"], "duplicate_event", "{res}");
    assert_eq!(outcomes_of(&res, 0), want);
    env.stop().await
}

/// (sequence, outcome) of result `i`, sorted.
fn outcomes_of(res: &Value, i: usize) -> Vec<(String, String)> {
    let mut v: Vec<_> = res["results"][i]["enrollments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["sequence_id"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_bad_event_is_rejected_alone_and_writes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    env.create_sequence(sequence_body(
        "A",
        &[("Hi", "x", json!({"type": "immediately"}))],
        "t",
    ))
    .await?;
    let bad = |mutate: &dyn Fn(&mut Value)| {
        let mut e = event("bad", "b@example.com", "tag_applied", json!({"tag": "t"}));
        mutate(&mut e);
        e
    };
    let long = "x".repeat(1025);
    let cases: Vec<(Value, &str)> = vec![
        (
            bad(&|e| e["lead"]["email"] = json!("not-an-email")),
            "events[1].lead.email",
        ),
        (
            bad(&|e| e["lead"]["email"] = json!("\"a b\"@example.com")),
            "events[1].lead.email",
        ),
        (
            bad(&|e| e["lead"]["email"] = json!("ada@[127.0.0.1]")),
            "events[1].lead.email",
        ),
        (
            bad(&|e| e["lead"]["email"] = json!("ada@intranet")),
            "events[1].lead.email",
        ),
        (
            bad(&|e| e["lead"]["email"] = json!("a\u{0}@example.com")),
            "events[1].lead.email",
        ),
        (
            bad(&|e| {
                e.as_object_mut().map(|o| o.remove("tag"));
            }),
            "events[1].tag",
        ),
        (bad(&|e| e["list"] = json!("l")), "events[1].list"),
        (bad(&|e| e["tag"] = json!("t\u{0}")), "events[1].tag"),
        (bad(&|e| e["id"] = json!("")), "events[1].id"),
        (bad(&|e| e["id"] = json!("id\u{0}")), "events[1].id"),
        (
            bad(&|e| e["lead"]["timezone"] = json!("Nope/Nope")),
            "events[1].lead.timezone",
        ),
        (
            bad(&|e| e["lead"]["first_name"] = json!("A\u{0}da")),
            "events[1].lead.first_name",
        ),
        (
            bad(&|e| e["lead"]["last_name"] = json!(long.clone())),
            "events[1].lead.last_name",
        ),
        (
            bad(&|e| e["lead"]["attributes"] = json!({"plan": "p\u{0}"})),
            "events[1].lead.attributes.plan",
        ),
        (
            bad(&|e| e["lead"]["attributes"] = json!({"big": "y".repeat(4097)})),
            "events[1].lead.attributes.big",
        ),
        (
            bad(&|e| {
                let many: serde_json::Map<String, Value> =
                    (0..101).map(|i| (format!("k{i}"), json!(i))).collect();
                e["lead"]["attributes"] = Value::Object(many);
            }),
            "events[1].lead.attributes",
        ),
    ];
    for (i, (bad, want_field)) in cases.into_iter().enumerate() {
        let good = event(
            &format!("good{i}"),
            &format!("g{i}@example.com"),
            "tag_applied",
            json!({"tag": "t"}),
        );
        let (status, res) = env
            .post("/v1/events", json!({"events": [good, bad.clone()]}))
            .await?;
        assert_eq!(status, 200, "{bad} -> {res}");
        let r = &res["results"];
        assert_eq!(r[0]["status"], "processed", "{res}");
        assert_eq!(r[1]["status"], "rejected", "{bad} -> {res}");
        assert_eq!(r[1]["error"]["status"], 422);
        assert_eq!(r[1]["error"]["field"], want_field, "{bad} -> {res}");
        assert_eq!(r[1]["lead_id"], Value::Null);
    }
    // Only the good events were written; the rejected id was not used up.
    let (leads, processed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM leads), (SELECT count(*) FROM processed_events)",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!((leads, processed), (16, 16));
    let fixed = event("bad", "b@example.com", "tag_applied", json!({"tag": "t"}));
    let (status, res) = env.post("/v1/events", json!({"events": [fixed]})).await?;
    assert_eq!(
        (status, res["results"][0]["status"].as_str()),
        (200, Some("processed"))
    );
    // Malformed JSON (a type that does not exist, a score that is not a number) still refuses
    // the whole batch: it cannot be read event by event.
    for (bad, field) in [
        (
            event("e2", "b@example.com", "page_viewed", json!({})),
            "events[0].type",
        ),
        (
            event(
                "e2",
                "b@example.com",
                "lead_score_changed",
                json!({"score": "high"}),
            ),
            "events[0].score",
        ),
    ] {
        let (status, err) = env.post("/v1/events", json!({"events": [bad]})).await?;
        assert_eq!((status, err["error"]["field"].as_str()), (400, Some(field)));
    }

    let (status, err) = env.post("/v1/events", json!({"events": []})).await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("events"))
    );
    let many: Vec<Value> = (0..1001)
        .map(|i| {
            event(
                &format!("m{i}"),
                "a@example.com",
                "tag_applied",
                json!({"tag": "t"}),
            )
        })
        .collect();
    let (status, err) = env.post("/v1/events", json!({"events": many})).await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("events"))
    );
    let huge = "x".repeat(9 * 1024 * 1024);
    let resp = env
        .http
        .post(format!("{}/v1/events", env.base))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 413);
    env.stop().await
}

#[tokio::test]
async fn concurrent_duplicate_events_enroll_once() -> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body("A", &[("Hi", "x", json!({"type": "immediately"}))], "t");
    body["triggers"] =
        json!([{"type": "tag_applied", "tag": "t"}, {"type": "list_added", "list": "l"}]);
    env.create_sequence(body).await?;
    // 40 requests at once for 10 leads: same event ids, and different events for the same lead.
    let mut calls = Vec::new();
    for round in 0..4 {
        for lead in 0..10 {
            let events = json!({"events": [
                event(&format!("tag-{lead}"), &format!("l{lead}@example.com"), "tag_applied", json!({"tag": "t"})),
                event(&format!("list-{lead}-{round}"), &format!("l{lead}@example.com"), "list_added", json!({"list": "l"})),
            ]});
            calls.push(env.post("/v1/events", events));
        }
    }
    for result in futures::future::join_all(calls).await {
        let (status, res) = result?;
        assert_eq!(status, 200, "{res}");
    }
    assert_eq!(active_enrollments(&env).await?, 10);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM step_runs")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(runs, 10);
    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events, jsonb_array_elements(result->'enrollments') o
         WHERE o->>'outcome' = 'created'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(
        created, 10,
        "exactly one event per lead reports the creation"
    );
    env.stop().await
}

#[tokio::test]
async fn overlapping_batches_in_any_order_enroll_each_lead_once_and_merge_its_fields()
-> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body("A", &[("Hi", "x", json!({"type": "immediately"}))], "t");
    body["triggers"] =
        json!([{"type": "tag_applied", "tag": "t"}, {"type": "list_added", "list": "l"}]);
    env.create_sequence(body).await?;
    // Six batches of the same 60 leads, each in another order, sent at once: the rows they
    // lock overlap in every order, and every batch must still succeed (no deadlock) and enroll
    // each lead once between them.
    let mut calls = Vec::new();
    for round in 0..6usize {
        let mut leads: Vec<usize> = (0..60).collect();
        leads.rotate_left(round * 11);
        if round % 2 == 1 {
            leads.reverse();
        }
        let events: Vec<Value> = leads
            .iter()
            .map(|l| {
                let mut e = event(
                    &format!("r{round}-{l}"),
                    &format!("l{l}@example.com"),
                    if round % 2 == 0 {
                        "tag_applied"
                    } else {
                        "list_added"
                    },
                    if round % 2 == 0 {
                        json!({"tag": "t"})
                    } else {
                        json!({"list": "l"})
                    },
                );
                e["lead"]["attributes"] = json!({ format!("seen_{round}"): true });
                e
            })
            .collect();
        calls.push(env.post("/v1/events", json!({ "events": events })));
    }
    for result in futures::future::join_all(calls).await {
        let (status, res) = result?;
        assert_eq!(status, 200, "{res}");
    }
    assert_eq!(active_enrollments(&env).await?, 60);
    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events, jsonb_array_elements(result->'enrollments') o
         WHERE o->>'outcome' = 'created'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(created, 60);
    let attrs: serde_json::Value =
        sqlx::query_scalar("SELECT attributes FROM leads WHERE email = 'l7@example.com'")
            .fetch_one(&env.db)
            .await?;
    for round in 0..6 {
        assert_eq!(attrs[format!("seen_{round}")], true, "{attrs}");
    }

    // Within one batch, the same lead's events merge in order: a later name wins, an absent one
    // keeps the earlier, and the response repeats the lead for each event.
    let (status, res) = env
        .post(
            "/v1/events",
            json!({"events": [
                {"id": "m1", "type": "tag_applied", "tag": "x", "lead": {"email": "m@example.com", "first_name": "Mia", "last_name": "Old"}},
                {"id": "m2", "type": "tag_applied", "tag": "t", "lead": {"email": "M@example.com", "last_name": "New"}},
                {"id": "m3", "type": "list_added", "list": "l", "lead": {"email": "m@example.com"}},
            ]}),
        )
        .await?;
    assert_eq!(status, 200, "{res}");
    let r = &res["results"];
    assert_eq!(r[0]["enrollments"], json!([]));
    assert_eq!(r[1]["enrollments"][0]["outcome"], "created");
    assert_eq!(r[2]["enrollments"][0]["outcome"], "already_active");
    assert_eq!(r[0]["lead_id"], r[2]["lead_id"]);
    let (first, last, tags): (Option<String>, Option<String>, Vec<String>) = sqlx::query_as(
        "SELECT first_name, last_name, tags FROM leads WHERE email = 'm@example.com'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(
        (first.as_deref(), last.as_deref()),
        (Some("Mia"), Some("New"))
    );
    assert_eq!(tags, ["x", "t"]);
    env.stop().await
}

#[test]
fn arbitrary_input_never_causes_a_server_error() -> anyhow::Result<()> {
    use proptest::{
        prelude::*,
        test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let env = rt.block_on(TestEnv::start("fuzz", &[Role::Api, Role::Ingest], |_| {}))?;
    rt.block_on(env.create_sequence(sequence_body(
        "F",
        &[(
            "Hi {{lead.first_name}}",
            "x",
            json!({"type": "immediately"}),
        )],
        "t",
    )))?;
    // Arbitrary Unicode, addresses that parse, and short strings rich in control characters
    // (NUL above all), so that invalid text reaches every field of otherwise valid events.
    let text = || {
        prop_oneof![
            any::<String>(),
            "[a-z]{1,8}@[a-z]{1,8}\\.com",
            "[a-z\\x00\\x01\\x7f\\t\\n\u{e9}\u{301}]{0,10}@[a-z]{1,6}\\.com",
            "[a-zA-Z \\x00\\x01\\x1b\\t\u{e9}]{1,10}",
            Just("t".to_owned()),
        ]
    };
    let event = (
        text(),
        text(),
        prop::option::of(text()),
        prop::option::of(text()),
        text(),
        prop::collection::btree_map(text(), text(), 0..4),
    )
        .prop_map(|(id, email, first, zone, tag, attrs)| {
            json!({"id": id, "type": "tag_applied", "tag": tag,
                   "lead": {"email": email, "first_name": first, "timezone": zone,
                            "attributes": attrs}})
        });
    let config = Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[22; 32]));
    let result = runner.run(&prop::collection::vec(event, 1..6), |events| {
        let (status, body) = rt
            .block_on(env.post("/v1/events", json!({ "events": events })))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            (200..500).contains(&status),
            "{status} for {events:?}: {body}"
        );
        Ok(())
    });
    rt.block_on(env.stop())?;
    result.map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test]
async fn null_clears_a_field_omission_keeps_it_and_a_new_zone_replans() -> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body(
        "Z",
        &[("Later", "x", json!({"type": "delay", "delay": "P1D"}))],
        "t",
    );
    body["send_window"] = json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                 "start": "09:00", "end": "13:00"});
    env.create_sequence(body).await?;
    let lead = |id: &str, fields: Value| {
        let mut e = json!({"id": id, "type": "tag_applied", "tag": "t",
                           "lead": {"email": "kiri@example.com"}});
        if let (Some(l), Some(f)) = (e["lead"].as_object_mut(), fields.as_object()) {
            l.extend(f.clone());
        }
        e
    };
    let read = || async {
        let row: (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT first_name, last_name, timezone FROM leads WHERE email = 'kiri@example.com'",
        )
        .fetch_one(&env.db)
        .await?;
        anyhow::Ok(row)
    };
    env.post(
        "/v1/events",
        json!({"events": [lead("1", json!({"first_name": "Ada", "last_name": "L"}))]}),
    )
    .await?;
    // Left out: kept. null: cleared. Empty: cleared.
    env.post("/v1/events", json!({"events": [lead("2", json!({}))]}))
        .await?;
    assert_eq!(read().await?, (Some("Ada".into()), Some("L".into()), None));
    env.post(
        "/v1/events",
        json!({"events": [lead("3", json!({"first_name": null, "last_name": ""}))]}),
    )
    .await?;
    assert_eq!(read().await?, (None, None, None));

    // Enrolled with no zone: due in the window in UTC. The zone learned now re-plans it into
    // the window in the lead's zone (UTC+14: the two windows never overlap).
    let due_local = || async {
        let due: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT due_at FROM step_runs WHERE state = 'SCHEDULED'")
                .fetch_one(&env.db)
                .await?;
        anyhow::Ok(
            due.with_timezone(&chrono_tz::Pacific::Kiritimati)
                .format("%H:%M")
                .to_string(),
        )
    };
    let before = due_local().await?;
    assert!(!("09:00".."13:00").contains(&before.as_str()), "{before}");
    env.post(
        "/v1/events",
        json!({"events": [lead("4", json!({"timezone": "Pacific/Kiritimati"}))]}),
    )
    .await?;
    let after = due_local().await?;
    assert!(
        ("09:00".."13:00").contains(&after.as_str()),
        "due at {after} in the lead's zone"
    );
    // The zone is stored as given.
    assert_eq!(read().await?.2.as_deref(), Some("Pacific/Kiritimati"));
    env.stop().await
}

#[tokio::test]
async fn a_score_trigger_fires_on_a_crossing_or_with_level_on_every_score() -> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body("Cross", &[("Hi", "x", json!({"type": "immediately"}))], "t");
    body["triggers"] = json!([{"type": "lead_score", "min_score": 50}]);
    let crossing = env.create_sequence(body).await?;
    assert_eq!(
        crossing["triggers"],
        json!([{"type": "lead_score", "min_score": 50}]),
        "crossing is the default and is not spelled out"
    );
    let mut body = sequence_body("Level", &[("Hi", "x", json!({"type": "immediately"}))], "t");
    body["triggers"] = json!([{"type": "lead_score", "min_score": 50, "mode": "level"}]);
    let level = env.create_sequence(body).await?;
    assert_eq!(level["triggers"][0]["mode"], "level");
    let (c, l) = (crossing["id"].clone(), level["id"].clone());
    let mut n = 0;
    let mut scores = |values: &[i32]| {
        let events: Vec<Value> = values
            .iter()
            .map(|s| {
                n += 1;
                event(
                    &format!("s{n}"),
                    "ada@example.com",
                    "lead_score_changed",
                    json!({"score": s}),
                )
            })
            .collect();
        json!({ "events": events })
    };
    // The sequences an event of the last batch fired, by id.
    let fired = |res: &Value| -> Vec<Value> {
        let last = res["results"].as_array().and_then(|r| r.last()).cloned();
        last.map(|r| {
            r["enrollments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["sequence_id"].clone())
                .collect()
        })
        .unwrap_or_default()
    };
    let (_, res) = env.post("/v1/events", scores(&[40])).await?;
    assert!(fired(&res).is_empty(), "below the minimum: {res}");
    let (_, res) = env.post("/v1/events", scores(&[60])).await?;
    assert_eq!(fired(&res).len(), 2, "40 → 60 crosses: {res}");
    // Still above: only the level trigger fires (and finds the lead already enrolled).
    let (_, res) = env.post("/v1/events", scores(&[70])).await?;
    assert_eq!(fired(&res), std::slice::from_ref(&l), "{res}");
    // Down and up again within one batch: a new crossing.
    let (_, res) = env.post("/v1/events", scores(&[30, 55])).await?;
    let mut got = fired(&res);
    got.sort_by_key(|v| v.to_string());
    let mut want = vec![c.clone(), l.clone()];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want, "{res}");
    // A first score at or above the minimum counts as a crossing.
    let (_, res) = env
        .post(
            "/v1/events",
            json!({"events": [event("new", "bob@example.com", "lead_score_changed", json!({"score": 90}))]}),
        )
        .await?;
    assert_eq!(fired(&res).len(), 2, "{res}");
    env.stop().await
}

#[tokio::test]
async fn tags_and_lists_match_whatever_their_case_and_a_score_trigger_takes_the_events_name()
-> anyhow::Result<()> {
    let env = TestEnv::start("ingest", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body(
        "Case",
        &[("Hi", "B", json!({"type": "delay", "delay": "P1D"}))],
        "zz",
    );
    body["triggers"] = json!([
        {"type": "tag_applied", "tag": "zz"},
        {"type": "list_added", "list": "Webinar"},
        {"type": "lead_score_changed", "min_score": 50},
    ]);
    let seq = env.create_sequence(body).await?;
    assert_eq!(seq["triggers"][2]["type"], "lead_score", "{seq}");
    let events = json!({"events": [
        {"id": "1", "type": "tag_applied", "tag": "ZZ", "lead": {"email": "a@example.com"}},
        {"id": "2", "type": "list_added", "list": "WEBINAR", "lead": {"email": "b@example.com"}},
        {"id": "3", "type": "lead_score_changed", "score": 60, "lead": {"email": "c@example.com"}},
    ]});
    let (status, out) = env.post("/v1/events", events).await?;
    assert_eq!(status, 200, "{out}");
    for i in 0..3 {
        assert_eq!(
            out["results"][i]["enrollments"][0]["outcome"], "created",
            "{out}"
        );
    }
    env.stop().await
}
