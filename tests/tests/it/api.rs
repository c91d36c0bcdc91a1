//! The control-plane contract: validation, auth, workspace isolation, read side, OpenAPI.

use pulse::Role;
use pulse_tests::{TestEnv, sequence_body};
use reqwest::Method;
use serde_json::json;

fn one_step() -> serde_json::Value {
    sequence_body(
        "Welcome",
        &[(
            "Hi {{ lead.first_name }}",
            "Hello",
            json!({"type": "immediately"}),
        )],
        "trial",
    )
}

#[tokio::test]
async fn create_and_read_sequences() -> anyhow::Result<()> {
    let env = TestEnv::start("api", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body(
        "Onboarding",
        &[
            (
                "Welcome {{ lead.first_name }}",
                "Hi",
                json!({"type": "immediately"}),
            ),
            (
                "Day two",
                "Still there?",
                json!({"type": "delay", "delay": "P2D"}),
            ),
            (
                "Webinar",
                "See you",
                json!({"type": "on_date", "at": "2030-01-01T09:00:00Z"}),
            ),
        ],
        "trial",
    );
    body["timezone"] = json!("Europe/Paris");
    body["triggers"] = json!([
        {"type": "tag_applied", "tag": "trial"},
        {"type": "list_added", "list": "webinar"},
        {"type": "lead_score", "min_score": 50}
    ]);
    let seq = env.create_sequence(body).await?;
    assert_eq!(seq["status"], "ACTIVE");
    assert_eq!(seq["timezone"], "Europe/Paris");
    assert_eq!(seq["steps"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        seq["steps"][1]["timing"],
        json!({"type": "delay", "delay": "P2D"})
    );
    assert_eq!(
        seq["triggers"][2],
        json!({"type": "lead_score", "min_score": 50})
    );
    let id = seq["id"].as_str().unwrap_or_default();

    let (status, got) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(got, seq);
    let (status, list) = env.get("/v1/sequences").await?;
    assert_eq!(status, 200);
    assert_eq!(list["sequences"][0]["id"], seq["id"]);
    env.stop().await
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_field() -> anyhow::Result<()> {
    let env = TestEnv::start("api", &[Role::Api, Role::Ingest], |_| {}).await?;
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            {
                let mut b = one_step();
                b["steps"][0]["timing"] = json!({"type": "delay", "delay": "2 days"});
                b
            },
            422,
            "steps[0].timing",
        ),
        (
            {
                let mut b = one_step();
                b["steps"][0]["timing"] = json!({"type": "delay", "delay": "P1M"});
                b
            },
            422,
            "steps[0].timing",
        ),
        (
            {
                let mut b = one_step();
                b["timezone"] = json!("Mars/Base");
                b
            },
            422,
            "timezone",
        ),
        (
            {
                let mut b = one_step();
                b["sender"]["from"] = json!("nobody");
                b
            },
            422,
            "sender.from",
        ),
        (
            {
                let mut b = one_step();
                b["steps"][0]["body"] = json!("{{ lead.password }}");
                b
            },
            422,
            "steps[0].body",
        ),
        (
            {
                let mut b = one_step();
                b["steps"] = json!([]);
                b
            },
            422,
            "steps",
        ),
        (
            {
                let mut b = one_step();
                b["steps"][0]["subject"] = json!("s".repeat(999));
                b
            },
            422,
            "steps[0].subject",
        ),
        (
            {
                let mut b = one_step();
                b["steps"][0]["subject"] = json!("Hi\u{0}");
                b
            },
            422,
            "steps[0].subject",
        ),
        (
            {
                let mut b = one_step();
                b["steps"][0]["body"] = json!("b".repeat(1024 * 1024 + 1));
                b
            },
            422,
            "steps[0].body",
        ),
        (
            {
                let mut b = one_step();
                b["steps"][0]["body"] = json!("line one\u{0}");
                b
            },
            422,
            "steps[0].body",
        ),
        (
            {
                let mut b = one_step();
                b["name"] = json!("  ");
                b
            },
            422,
            "name",
        ),
        (
            {
                let mut b = one_step();
                b["triggers"] = json!([{"type": "page_viewed"}]);
                b
            },
            400,
            "triggers[0].type",
        ),
        (
            {
                let mut b = one_step();
                b["triggers"] = json!([{"type": "tag_applied", "tag": ""}]);
                b
            },
            422,
            "triggers[0].tag",
        ),
        (
            {
                let mut b = one_step();
                b["steps"][0]["timing"] = json!({"type": "on_date", "at": "tomorrow"});
                b
            },
            400,
            "steps[0].timing",
        ),
        (
            {
                let mut b = one_step();
                b["surprise"] = json!(1);
                b
            },
            400,
            ".",
        ),
    ];
    for (body, want_status, want_field) in cases {
        let (status, err) = env.post("/v1/sequences", body.clone()).await?;
        assert_eq!(status, want_status, "{body} -> {err}");
        if want_field != "." {
            assert_eq!(err["error"]["field"], want_field, "{body} -> {err}");
        }
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sequences")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(count, 0, "a rejected sequence must not be written");

    // Malformed JSON, bad path ids, unknown routes: JSON errors, never a 500.
    let resp = env
        .http
        .post(format!("{}/v1/sequences", env.base))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    let err: serde_json::Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "malformed");
    let (status, err) = env.get("/v1/sequences/not-a-uuid").await?;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("malformed"))
    );
    let (status, err) = env.get("/v1/nothing-here").await?;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = env
        .get(&format!("/v1/sequences/{}", uuid::Uuid::new_v4()))
        .await?;
    assert_eq!(status, 404);
    env.stop().await
}

#[tokio::test]
async fn every_route_needs_a_key_and_sees_only_its_workspace() -> anyhow::Result<()> {
    let env = TestEnv::start("api", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env.create_sequence(one_step()).await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();

    let routes = [
        (Method::GET, "/v1/sequences".to_owned()),
        (Method::POST, "/v1/sequences".to_owned()),
        (Method::GET, format!("/v1/sequences/{id}")),
        (Method::POST, format!("/v1/sequences/{id}/enrollments")),
        (Method::GET, format!("/v1/sequences/{id}/enrollments")),
        (Method::GET, format!("/v1/sequences/{id}/sends")),
        (Method::GET, format!("/v1/enrollments/{id}/sends")),
        (Method::POST, "/v1/events".to_owned()),
        (Method::GET, "/v1/dev/outbox".to_owned()),
        (Method::PATCH, format!("/v1/sequences/{id}")),
        (Method::DELETE, format!("/v1/sequences/{id}")),
        (Method::GET, format!("/v1/sequences/{id}/versions")),
        (Method::POST, format!("/v1/sequences/{id}/pause")),
        (Method::POST, format!("/v1/sequences/{id}/resume")),
        (Method::GET, format!("/v1/sequences/{id}/resume-preview")),
        (Method::POST, format!("/v1/sequences/{id}/re-enroll")),
        (Method::GET, format!("/v1/sequences/{id}/audit")),
        (Method::GET, format!("/v1/enrollments/{id}")),
        (Method::POST, format!("/v1/enrollments/{id}/cancel")),
        (Method::GET, "/v1/sends".to_owned()),
    ];
    for (method, path) in &routes {
        let (status, err) = env
            .call_as("wrong-key", method.clone(), path, Some(json!({})))
            .await?;
        assert_eq!(status, 401, "{method} {path}");
        assert_eq!(err["error"]["code"], "unauthorized");
        let resp = env
            .http
            .request(method.clone(), format!("{}{path}", env.base))
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 401, "{method} {path} without a key");
    }

    // A second workspace sees none of the first one's data.
    let other_ws = uuid::Uuid::new_v4();
    pulse_shared::db::provision_key(&env.db, other_ws, "other", "other-key").await?;
    let (status, list) = env
        .call_as("other-key", Method::GET, "/v1/sequences", None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(list["sequences"], json!([]));
    let (status, _) = env
        .call_as(
            "other-key",
            Method::GET,
            &format!("/v1/sequences/{id}"),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    let (status, _) = env
        .call_as(
            "other-key",
            Method::POST,
            &format!("/v1/sequences/{id}/enrollments"),
            Some(json!({"lead": {"email": "x@example.com"}})),
        )
        .await?;
    assert_eq!(status, 404);
    // Its trigger events do not enroll into the first workspace's sequences.
    let (status, res) = env
        .call_as("other-key", Method::POST, "/v1/events", Some(json!({"events": [
            {"id": "e1", "type": "tag_applied", "lead": {"email": "x@example.com"}, "tag": "trial"}
        ]})))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(res["results"][0]["enrollments"], json!([]));
    env.stop().await
}

#[tokio::test]
async fn manual_enrollment_creates_dedupes_and_refuses_ended() -> anyhow::Result<()> {
    let env = TestEnv::start("api", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env.create_sequence(one_step()).await?;
    let id = seq["id"].as_str().unwrap_or_default();
    let path = format!("/v1/sequences/{id}/enrollments");
    let lead = json!({"lead": {"email": "Ada@Example.com", "first_name": "Ada", "timezone": "Europe/London"}});

    let (status, first) = env.post(&path, lead.clone()).await?;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "ACTIVE");
    assert_eq!(first["lead_email"], "ada@example.com");
    assert_eq!(first["current_step"], 1);
    assert!(first["next_due_at"].is_string());
    let (status, again) = env.post(&path, lead.clone()).await?;
    assert_eq!(status, 200, "deduplicated: {again}");
    assert_eq!(again["id"], first["id"]);

    sqlx::query("UPDATE enrollments SET status = 'COMPLETED' WHERE id = $1::uuid")
        .bind(first["id"].as_str())
        .execute(&env.db)
        .await?;
    let (status, err) = env.post(&path, lead.clone()).await?;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("re-enroll")
    );

    let (status, err) = env
        .post(&path, json!({"lead": {"email": "not-an-email"}}))
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("lead.email"))
    );
    let (status, err) = env
        .post(
            &path,
            json!({"lead": {"email": "b@example.com", "timezone": "Nowhere/Land"}}),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("lead.timezone"))
    );

    sqlx::query("UPDATE sequences SET status = 'PAUSED' WHERE id = $1::uuid")
        .bind(id)
        .execute(&env.db)
        .await?;
    let (status, err) = env
        .post(&path, json!({"lead": {"email": "c@example.com"}}))
        .await?;
    assert_eq!(status, 409, "{err}");

    // The enrollments view filters by status and rejects unknown ones.
    let (status, view) = env.get(&format!("{path}?status=completed")).await?;
    assert_eq!(status, 200);
    assert_eq!(view["enrollments"].as_array().map(Vec::len), Some(1));
    let (status, view) = env.get(&format!("{path}?status=ACTIVE")).await?;
    assert_eq!(
        (status, view["enrollments"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, err) = env.get(&format!("{path}?status=DONE")).await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("status"))
    );
    let (status, err) = env.get(&format!("{path}?limit=0")).await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("limit"))
    );
    env.stop().await
}

#[tokio::test]
async fn enrollments_view_pages_through_everything() -> anyhow::Result<()> {
    let env = TestEnv::start("api", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env.create_sequence(one_step()).await?;
    let id = seq["id"].as_str().unwrap_or_default();
    for i in 0..7 {
        let (status, _) = env
            .post(
                &format!("/v1/sequences/{id}/enrollments"),
                json!({"lead": {"email": format!("l{i}@example.com")}}),
            )
            .await?;
        assert_eq!(status, 201);
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = env
            .get(&format!("/v1/sequences/{id}/enrollments?limit=3{after}"))
            .await?;
        assert_eq!(status, 200);
        for e in page["enrollments"].as_array().into_iter().flatten() {
            seen.push(e["lead_email"].as_str().unwrap_or_default().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7);
    env.stop().await
}

#[tokio::test]
async fn openapi_describes_every_route() -> anyhow::Result<()> {
    let env = TestEnv::start("api", &[Role::Api, Role::Ingest], |_| {}).await?;
    let resp = env
        .http
        .get(format!("{}/openapi.json", env.base))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let doc: serde_json::Value = resp.json().await?;
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for (path, method) in [
        ("/v1/sequences", "post"),
        ("/v1/sequences", "get"),
        ("/v1/sequences/{id}", "get"),
        ("/v1/sequences/{id}/enrollments", "post"),
        ("/v1/sequences/{id}/enrollments", "get"),
        ("/v1/sequences/{id}/sends", "get"),
        ("/v1/enrollments/{id}/sends", "get"),
        ("/v1/events", "post"),
        ("/v1/dev/outbox", "get"),
        ("/v1/sequences/{id}", "patch"),
        ("/v1/sequences/{id}", "delete"),
        ("/v1/sequences/{id}/versions", "get"),
        ("/v1/sequences/{id}/pause", "post"),
        ("/v1/sequences/{id}/resume", "post"),
        ("/v1/sequences/{id}/resume-preview", "get"),
        ("/v1/sequences/{id}/re-enroll", "post"),
        ("/v1/sequences/{id}/audit", "get"),
        ("/v1/enrollments/{id}", "get"),
        ("/v1/enrollments/{id}/cancel", "post"),
        ("/v1/sends", "get"),
        ("/v1/mailboxes", "post"),
        ("/v1/mailboxes", "get"),
        ("/v1/mailboxes/{id}", "get"),
        ("/v1/mailboxes/{id}", "patch"),
        ("/v1/mailboxes/{id}", "delete"),
        ("/v1/suppressions", "post"),
        ("/v1/suppressions", "get"),
        ("/v1/suppressions/{value}", "delete"),
        ("/u/{token}", "get"),
        ("/u/{token}", "post"),
        ("/v1/workspace", "patch"),
        ("/v1/sequences/{id}/steps", "post"),
        ("/v1/sequences/{id}/steps/order", "post"),
        ("/v1/sequences/{id}/steps/{step_id}", "patch"),
        ("/v1/sequences/{id}/steps/{step_id}", "delete"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert!(doc["components"]["schemas"]["CreateSequence"].is_object());
    // A parameter is in the path only when the path names it; every other one is a query
    // parameter (generated clients drop operations whose path parameters do not match).
    for (path, item) in &paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap_or_default();
                let in_path = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    param["in"].as_str(),
                    Some(if in_path { "path" } else { "query" }),
                    "{method} {path}: parameter {name}"
                );
            }
        }
    }
    // Every schema a document refers to is defined in it.
    let text = doc.to_string();
    for name in text.split("#/components/schemas/").skip(1) {
        let name: String = name.chars().take_while(|c| *c != '"').collect();
        assert!(
            doc["components"]["schemas"][&name].is_object(),
            "{name} is referred to but not defined"
        );
    }
    let (status, health) = env.get("/healthz").await?;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = env.get("/readyz").await?;
    assert_eq!(
        (status, ready["postgres"].as_str(), ready["redis"].as_str()),
        (200, Some("ok"), Some("ok"))
    );
    env.stop().await
}

#[tokio::test]
async fn steps_read_with_get_can_be_sent_back_with_patch() -> anyhow::Result<()> {
    let env = TestEnv::start("api", &[Role::Api, Role::Ingest], |_| {}).await?;
    let created = env
        .create_sequence(sequence_body(
            "Round trip",
            &[
                ("One", "First", json!({"type": "immediately"})),
                ("Two", "Second", json!({"type": "delay", "delay": "P1D"})),
            ],
            "rt",
        ))
        .await?;
    let sid = created["id"].as_str().unwrap_or_default().to_owned();
    let (_, read) = env.get(&format!("/v1/sequences/{sid}")).await?;
    let mut steps = read["steps"].clone();
    steps[1]["body"] = json!("Second, edited");
    let (status, changed) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"steps": steps})),
        )
        .await?;
    assert_eq!(status, 200, "{changed}");
    let after = &changed["sequence"]["steps"];
    assert_eq!(
        after.as_array().map(Vec::len),
        Some(2),
        "no step was deleted"
    );
    assert_eq!(after[0]["id"], read["steps"][0]["id"]);
    assert_eq!(after[1]["id"], read["steps"][1]["id"]);
    assert_eq!(after[1]["body"], "Second, edited");

    // Sending back only the step being edited does not delete the others: it is refused, and
    // the answer names what would go.
    let (status, err) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"steps": [after[1].clone()]})),
        )
        .await?;
    // 409: the list is fine on its own, it no longer matches the sequence's steps.
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{err}"
    );
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("step 1") && message.contains("delete_missing_steps"),
        "{message}"
    );
    let (_, unchanged) = env.get(&format!("/v1/sequences/{sid}")).await?;
    assert_eq!(unchanged["steps"].as_array().map(Vec::len), Some(2));
    // Said explicitly, it deletes, and the answer names the deleted step.
    let (status, changed) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"steps": [after[1].clone()], "delete_missing_steps": true})),
        )
        .await?;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        changed["sequence"]["steps"].as_array().map(Vec::len),
        Some(1)
    );
    let named = changed["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| {
            w.as_str()
                .is_some_and(|w| w.contains("deleted step 1") && w.contains("One"))
        });
    assert!(named, "{changed}");
    env.stop().await
}
