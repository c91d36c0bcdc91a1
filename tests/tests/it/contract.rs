//! The API contract a client relies on: 201 answers say where the new thing is (`Location`),
//! `Idempotency-Key` makes a retried create safe (also when the retries race), long lists page
//! with cursors, the audit log newest first, and a client generated from the OpenAPI document
//! by a generator nobody here wrote (openapi-python-client, PyPI) has every endpoint and works.

use std::collections::HashSet;

use pulse::Role;
use pulse_tests::{TestEnv, sequence_body};
use reqwest::Method;
use serde_json::{Value, json};

fn body(name: &str) -> Value {
    sequence_body(
        name,
        &[("Hi", "hello", json!({"type": "delay", "delay": "P1D"}))],
        "t",
    )
}

async fn post_with_key(
    env: &TestEnv,
    path: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<(u16, Option<String>, bool, Value)> {
    let resp = env
        .http
        .post(format!("{}{path}", env.base))
        .bearer_auth(&env.key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    Ok((
        status,
        location,
        replayed,
        resp.json().await.unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn creates_answer_with_location_and_a_retried_create_makes_one_thing() -> anyhow::Result<()> {
    let env = TestEnv::start("contract-idem", &[Role::Api], |_| {}).await?;

    // Location names what was made, and reads it.
    let (status, location, replayed, made) =
        post_with_key(&env, "/v1/sequences", "create-1", &body("Once")).await?;
    assert_eq!(status, 201, "{made}");
    assert!(!replayed);
    let id = made["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/sequences/{id}").as_str())
    );
    let (status, read) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!((status, &read["name"]), (200, &json!("Once")));

    // The same key and body: the first answer again, nothing new.
    let (status, location, replayed, again) =
        post_with_key(&env, "/v1/sequences", "create-1", &body("Once")).await?;
    assert_eq!((status, replayed), (201, true));
    assert_eq!(again["id"], made["id"]);
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/sequences/{id}").as_str())
    );
    // The same key with another body: refused, naming the header.
    let (status, _, _, refused) =
        post_with_key(&env, "/v1/sequences", "create-1", &body("Twice")).await?;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "Idempotency-Key");
    // A failed first request keeps nothing: the corrected retry runs.
    let mut bad = body("Fixed");
    bad["timezone"] = json!("Mars/Olympus");
    let (status, _, _, _) = post_with_key(&env, "/v1/sequences", "create-2", &bad).await?;
    assert_eq!(status, 422);
    let (status, _, replayed, fixed) =
        post_with_key(&env, "/v1/sequences", "create-2", &body("Fixed")).await?;
    assert_eq!((status, replayed), (201, false), "{fixed}");

    // Twenty retries racing with one key make one sequence.
    let racing = body("Raced");
    let answers = futures::future::join_all(
        (0..20).map(|_| post_with_key(&env, "/v1/sequences", "race", &racing)),
    )
    .await;
    let mut ids = HashSet::new();
    for answer in answers {
        let (status, _, _, v) = answer?;
        match status {
            201 => {
                ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
            }
            409 => assert_eq!(v["error"]["code"], "conflict", "{v}"),
            other => anyhow::bail!("a racing retry answered {other}: {v}"),
        }
    }
    assert_eq!(ids.len(), 1, "one sequence, however many retries: {ids:?}");
    let (_, list) = env.get("/v1/sequences").await?;
    let raced = list["sequences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "Raced")
        .count();
    assert_eq!(raced, 1);

    // Enrollment by hand: 201 with Location, and a retry with the key enrolls once.
    let lead = json!({"lead": {"email": "ada@example.com"}});
    let path = format!("/v1/sequences/{id}/enrollments");
    let (status, location, _, enrolled) = post_with_key(&env, &path, "enroll-1", &lead).await?;
    assert_eq!(status, 201, "{enrolled}");
    let eid = enrolled["id"].as_str().unwrap_or_default();
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/enrollments/{eid}").as_str())
    );
    let (status, _, replayed, again) = post_with_key(&env, &path, "enroll-1", &lead).await?;
    assert_eq!(
        (status, replayed, &again["id"]),
        (201, true, &enrolled["id"])
    );
    env.stop().await
}

#[tokio::test]
async fn sequences_and_the_audit_log_page_with_cursors_newest_first() -> anyhow::Result<()> {
    let env = TestEnv::start("contract-pages", &[Role::Api], |_| {}).await?;
    let mut made = Vec::new();
    for i in 0..5 {
        let s = env.create_sequence(body(&format!("S{i}"))).await?;
        made.push(s["id"].as_str().unwrap_or_default().to_owned());
    }
    let mut seen = Vec::new();
    let mut path = "/v1/sequences?limit=2".to_owned();
    loop {
        let (status, page) = env.get(&path).await?;
        assert_eq!(status, 200, "{page}");
        let items = page["sequences"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|s| s["id"].as_str().unwrap_or_default().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/sequences?limit=2&after={next}"),
            None => break,
        }
    }
    made.reverse();
    assert_eq!(seen, made, "every sequence once, newest first");
    let (status, bad) = env.get("/v1/sequences?limit=0").await?;
    assert_eq!(status, 422, "{bad}");

    // The audit log: newest first, paged with `before`.
    let id = &made[0];
    for action in ["pause", "resume", "pause", "resume"] {
        let (status, _) = env
            .call(Method::POST, &format!("/v1/sequences/{id}/{action}"), None)
            .await?;
        assert_eq!(status, 200);
    }
    let mut actions = Vec::new();
    let mut path = format!("/v1/sequences/{id}/audit?limit=2");
    loop {
        let (_, page) = env.get(&path).await?;
        actions.extend(
            page["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["action"].as_str().map(str::to_owned)),
        );
        match page["next"].as_i64() {
            Some(next) => path = format!("/v1/sequences/{id}/audit?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(
        actions,
        ["resumed", "paused", "resumed", "paused", "created"]
    );
    env.stop().await
}

#[tokio::test]
async fn what_get_answers_can_be_sent_back_and_a_stale_version_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::start("contract-roundtrip", &[Role::Api], |_| {}).await?;
    let made = env.create_sequence(body("Round")).await?;
    let id = made["id"].as_str().unwrap_or_default().to_owned();
    let (_, mut read) = env.get(&format!("/v1/sequences/{id}")).await?;
    read["steps"][0]["body"] = json!("hello again");
    read["name"] = json!("Round trip");
    let (status, edited) = env
        .call(
            Method::PATCH,
            &format!("/v1/sequences/{id}"),
            Some(read.clone()),
        )
        .await?;
    assert_eq!(status, 200, "the whole read sent back: {edited}");
    assert_eq!(edited["sequence"]["name"], "Round trip");
    assert_eq!(edited["sequence"]["steps"][0]["body"], "hello again");
    // The same read again: its version is no longer the current one.
    let (status, stale) = env
        .call(
            Method::PATCH,
            &format!("/v1/sequences/{id}"),
            Some(read.clone()),
        )
        .await?;
    assert_eq!(status, 409, "{stale}");
    assert!(
        stale["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("read it again")),
        "{stale}"
    );
    let mut other = read;
    other["id"] = json!(uuid::Uuid::new_v4());
    other.as_object_mut().map(|o| o.remove("version"));
    let (status, wrong) = env
        .call(Method::PATCH, &format!("/v1/sequences/{id}"), Some(other))
        .await?;
    assert_eq!(
        (status, &wrong["error"]["code"]),
        (409, &json!("conflict")),
        "{wrong}"
    );
    env.stop().await
}

#[tokio::test]
async fn a_client_generated_from_the_document_has_every_endpoint_and_drives_the_main_path()
-> anyhow::Result<()> {
    use std::path::Path;
    use tokio::process::Command;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    let root = root.ok_or_else(|| anyhow::anyhow!("repository root"))?;
    let tools = root.join("target/tools/openapi-client/bin");
    anyhow::ensure!(
        tools.join("openapi-python-client").exists(),
        "{} is missing: run deploy/local/pyclient.sh (make test does)",
        tools.display()
    );
    let env = TestEnv::start("contract-client", &[Role::All], |_| {}).await?;
    let spec: Value = env
        .http
        .get(format!("{}/openapi.json", env.base))
        .send()
        .await?
        .json()
        .await?;
    let operations: usize = spec["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .map(|item| {
            ["get", "put", "post", "delete", "patch"]
                .iter()
                .filter(|m| item.contains_key(**m))
                .count()
        })
        .sum();
    let dir = std::env::temp_dir().join(format!("pulse-client-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("openapi.json"), serde_json::to_vec(&spec)?)?;
    // No post hooks: they format the code with a tool this machine need not have.
    std::fs::write(dir.join("config.yaml"), "post_hooks: []\n")?;
    let generated = Command::new(tools.join("openapi-python-client"))
        .current_dir(&dir)
        .args([
            "generate",
            "--path",
            "openapi.json",
            "--output-path",
            "client",
        ])
        .args(["--config", "config.yaml"])
        .output()
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    assert!(generated.status.success(), "{said}");
    assert!(!said.to_lowercase().contains("warning"), "{said}");
    let mut endpoints = 0;
    for tag in std::fs::read_dir(dir.join("client/pulse_client/api"))? {
        let tag = tag?.path();
        if tag.is_dir() {
            endpoints += std::fs::read_dir(&tag)?
                .filter_map(Result::ok)
                .filter(|f| f.file_name() != "__init__.py")
                .filter(|f| f.path().extension().is_some_and(|e| e == "py"))
                .count();
        }
    }
    assert_eq!(endpoints, operations, "every operation became an endpoint");

    let flow = Command::new(tools.join("python"))
        .env("PYTHONPATH", dir.join("client"))
        .arg(root.join("tests/contract/client_flow.py"))
        .args([env.base.as_str(), env.key.as_str()])
        .output()
        .await?;
    assert!(
        flow.status.success(),
        "{}{}",
        String::from_utf8_lossy(&flow.stdout),
        String::from_utf8_lossy(&flow.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.stop().await
}
