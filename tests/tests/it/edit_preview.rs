//! `POST /v1/sequences/{id}/edit-preview` while leads are in flight: it tells what the edit
//! then does (the same runs re-timed by the same amount, the same enrollments ended), and
//! changes nothing, not even while the scheduler and senders work on the same sequence.

use std::{collections::BTreeMap, time::Duration};

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, count, eventually, sequence_body};
use reqwest::Method;
use serde_json::{Value, json};

const LEADS: usize = 300;

fn events(prefix: &str, from: usize, to: usize) -> Value {
    let events: Vec<Value> = (from..to)
        .map(|i| {
            json!({"id": format!("{prefix}-{i}"), "type": "tag_applied",
                   "lead": {"email": format!("{prefix}{i}@example.com")}, "tag": "t"})
        })
        .collect();
    json!({ "events": events })
}

/// Every pending run of the sequence, with its state and due time: what a preview must leave
/// as it found it.
async fn pending(env: &TestEnv) -> anyhow::Result<BTreeMap<uuid::Uuid, (String, String)>> {
    let rows: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT id, state, due_at::text FROM step_runs WHERE step_id IN
             (SELECT id FROM sequence_steps WHERE subject LIKE 'Two%')",
    )
    .fetch_all(&env.db)
    .await?;
    Ok(rows.into_iter().map(|(id, s, d)| (id, (s, d))).collect())
}

fn steps_with(seq: &Value, change: impl Fn(usize, &mut Value)) -> Value {
    let mut steps = seq["steps"].as_array().cloned().unwrap_or_default();
    for (i, s) in steps.iter_mut().enumerate() {
        change(i, s);
    }
    Value::Array(steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_under_traffic_tells_what_the_edit_does_and_changes_nothing() -> anyhow::Result<()>
{
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start(
        "epv",
        &[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender],
        |s| s.smtp_url = Some(url),
    )
    .await?;
    let seq = env
        .create_sequence(sequence_body(
            "Preview",
            &[
                ("One {{ lead.email }}", "1", json!({"type": "immediately"})),
                (
                    "Two {{ lead.email }}",
                    "2",
                    json!({"type": "delay", "delay": "PT1H"}),
                ),
                ("Three", "3", json!({"type": "delay", "delay": "P1D"})),
            ],
            "t",
        ))
        .await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = env.post("/v1/events", events("p", 0, LEADS)).await?;
    assert_eq!(status, 200);
    // Every lead got step 1 and waits an hour for step 2.
    eventually(
        Duration::from_secs(60),
        "step 2 scheduled for all",
        || async {
            let n = count(
                &env.db,
                "SELECT count(*) FROM step_runs r JOIN sequence_steps s ON s.id = r.step_id
             WHERE s.position = 2 AND r.state = 'SCHEDULED'",
            )
            .await?;
            Ok((n as usize == LEADS).then_some(()))
        },
    )
    .await?;
    let waiting = pending(&env).await?;

    // More leads arrive while the previews run: step 1 goes out to them meanwhile.
    let streaming = {
        let (base, key, http) = (env.base.clone(), env.key.clone(), env.http.clone());
        tokio::spawn(async move {
            for batch in 0..10 {
                let from = LEADS + batch * 20;
                http.post(format!("{base}/v1/events"))
                    .bearer_auth(&key)
                    .json(&events("p", from, from + 20))
                    .send()
                    .await?
                    .error_for_status()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };

    // 1. Step 2 an hour later, step 3's copy changed.
    let edit = json!({
        "version": seq["version"],
        "steps": steps_with(&seq, |i, s| {
            if i == 1 { s["timing"] = json!({"type": "delay", "delay": "PT2H"}); }
            if i == 2 { s["subject"] = json!("Three, again"); }
        }),
    });
    let preview_path = format!("/v1/sequences/{id}/edit-preview");
    let (status, preview) = env.post(&preview_path, edit.clone()).await?;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["version"], seq["version"]);
    assert_eq!(preview["changed_steps"], json!([3]));
    assert_eq!(preview["sequence"]["steps"][2]["subject"], "Three, again");
    let retimed = preview["retimed"]["count"].as_u64().unwrap_or_default() as usize;
    assert!(
        (LEADS..=LEADS + 200).contains(&retimed),
        "every lead waiting on step 2 is re-timed: {retimed}"
    );
    let items = preview["retimed"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), 100, "the first 100 are listed");
    for item in &items {
        let from: chrono::DateTime<chrono::Utc> = serde_json::from_value(item["due_at"].clone())?;
        let to: chrono::DateTime<chrono::Utc> = serde_json::from_value(item["new_due_at"].clone())?;
        assert_eq!(to - from, chrono::Duration::hours(1), "{item}");
        assert_eq!(item["step_position"], 2);
    }
    let new_content = preview["new_content"].as_u64().unwrap_or_default() as usize;
    assert!(
        new_content >= LEADS,
        "every lead still before step 3 gets its new copy: {new_content}"
    );
    assert_eq!(preview["skipped"]["count"], 0);
    assert_eq!(preview["ended"]["count"], 0);
    assert!(
        preview["warnings"]
            .to_string()
            .contains("safer made while the sequence is paused"),
        "{preview}"
    );

    // 2. An end date before step 2's time: every waiting lead would end.
    let end = (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339();
    let (status, ending) = env.post(&preview_path, json!({"end_date": end})).await?;
    assert_eq!(status, 200, "{ending}");
    let ended = ending["ended"]["count"].as_u64().unwrap_or_default() as usize;
    assert!(ended >= LEADS, "{ended}");
    assert_eq!(ending["skipped"]["count"], ending["ended"]["count"]);
    assert_eq!(ending["new_content"], 0);

    // 3. Step 2 deleted: its runs are skipped and the leads move on to step 3 (none ends).
    let (status, deleting) = env
        .post(
            &preview_path,
            json!({"steps": [seq["steps"][0], seq["steps"][2]], "delete_missing_steps": true}),
        )
        .await?;
    assert_eq!(status, 200, "{deleting}");
    assert!(deleting["skipped"]["count"].as_u64().unwrap_or_default() as usize >= LEADS);
    assert_eq!(deleting["skipped"]["items"][0]["reason"], "step deleted");
    assert_eq!(deleting["ended"]["count"], 0);

    streaming.await??;
    // Nothing changed: the version, the history, the audit trail and every waiting run.
    let (_, now) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(now["version"], seq["version"]);
    assert_eq!(now["steps"], seq["steps"]);
    assert_eq!(now["end_date"], Value::Null);
    let (_, versions) = env.get(&format!("/v1/sequences/{id}/versions")).await?;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        count(
            &env.db,
            "SELECT count(*) FROM audit_events WHERE action = 'edited'"
        )
        .await?,
        0
    );
    let after = pending(&env).await?;
    for (run, was) in &waiting {
        assert_eq!(after.get(run), Some(was), "run {run} is as it was");
    }
    // The leads that arrived meanwhile got step 1: the previews held nothing up for long.
    smtp.wait_for(LEADS + 200, Duration::from_secs(60)).await?;

    // The edit itself does what the first preview said, to the runs it listed.
    let (status, change) = env
        .call(
            Method::PATCH,
            &format!("/v1/sequences/{id}"),
            Some(edit.clone()),
        )
        .await?;
    assert_eq!(status, 200, "{change}");
    for item in &items {
        let due: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT due_at FROM step_runs WHERE id = $1::uuid")
                .bind(item["step_run_id"].as_str().unwrap_or_default())
                .fetch_one(&env.db)
                .await?;
        let said: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(item["new_due_at"].clone())?;
        assert_eq!(due, said, "{item}");
    }
    // The version it previewed is gone: the same preview is now refused, as the edit would be.
    let (status, body) = env.post(&preview_path, edit).await?;
    assert_eq!(status, 409, "{body}");
    env.stop().await
}

#[tokio::test]
async fn a_preview_refuses_what_the_edit_refuses_and_a_read_key_may_ask_for_one()
-> anyhow::Result<()> {
    let env = TestEnv::start("epr", &[Role::Api], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Refused",
            &[("One", "1", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/sequences/{id}/edit-preview");
    let (status, body) = env.post(&path, json!({"timezone": "Mars/Olympus"})).await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "timezone");
    let (status, body) = env.post(&path, json!({"steps": []})).await?;
    assert_eq!(status, 422, "{body}");
    let (status, _) = env
        .post(
            &format!("/v1/sequences/{}/edit-preview", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await?;
    assert_eq!(status, 404);
    let (status, body) = env.post(&path, json!({"name": 7})).await?;
    assert_eq!(status, 400, "{body}");

    let (status, key) = env
        .post("/v1/keys", json!({"label": "dashboard", "scope": "read"}))
        .await?;
    assert_eq!(status, 201, "{key}");
    let read = key["key"].as_str().unwrap_or_default().to_owned();
    let (status, preview) = env
        .call_as(&read, Method::POST, &path, Some(json!({"name": "Renamed"})))
        .await?;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["sequence"]["name"], "Renamed");
    assert_eq!(preview["new_content"], 0);
    let (status, body) = env
        .call_as(
            &read,
            Method::PATCH,
            &format!("/v1/sequences/{id}"),
            Some(json!({"name": "Renamed"})),
        )
        .await?;
    assert_eq!(status, 403, "a read key still cannot edit: {body}");
    let (_, now) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(now["name"], "Refused");

    // What GET answered, sent back with a new name, is a rename: no "safer while paused"
    // warning about the triggers, window and time zone it carries unchanged, and no re-timing.
    let mut back = now.clone();
    back["name"] = json!("Renamed");
    let (status, change) = env
        .call(Method::PATCH, &format!("/v1/sequences/{id}"), Some(back))
        .await?;
    assert_eq!(status, 200, "{change}");
    assert!(
        !change["warnings"].to_string().contains("safer made while"),
        "{change}"
    );
    let retimed: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT after->'steps_retimed' FROM audit_events WHERE action = 'edited'
         ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(retimed, Some(json!(0)));
    // A trigger that does change is still structural.
    let (_, change) = env
        .call(
            Method::PATCH,
            &format!("/v1/sequences/{id}"),
            Some(json!({"triggers": [{"type": "tag_applied", "tag": "other"}]})),
        )
        .await?;
    assert!(
        change["warnings"].to_string().contains("safer made while"),
        "{change}"
    );
    env.stop().await
}

#[tokio::test]
async fn a_render_preview_shows_each_step_as_a_lead_would_get_it() -> anyhow::Result<()> {
    let env = TestEnv::start("rpv", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body(
        "Rendered",
        &[
            (
                "Hi {{ lead.first_name | default: \"there\" }}",
                "Hello from {{ lead.attributes.company }}",
                json!({"type": "immediately"}),
            ),
            (
                "",
                "Just checking in",
                json!({"type": "delay", "delay": "P2D"}),
            ),
        ],
        "never",
    );
    body["steps"][0]["html"] = json!("<p>At <b>{{ lead.attributes.company }}</b></p>");
    body["steps"][1]["thread"] = json!(true);
    body["sender"]["reply_to"] = json!("replies@example.com");
    let seq = env.create_sequence(body).await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/sequences/{id}/render-preview");

    // A sample lead, with no body at all.
    let (status, r) = env.post(&path, json!({})).await?;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["lead_id"], Value::Null);
    assert_eq!(r["steps"][0]["subject"], "Hi Ada");
    assert_eq!(
        r["steps"][0]["text"]
            .as_str()
            .map(|t| t.contains("Analytical Engines")),
        Some(true)
    );
    assert_eq!(
        r["steps"][1]["subject"], "Re: Hi Ada",
        "a threaded step answers the first"
    );
    let headers = |i: usize| -> BTreeMap<String, String> {
        r["steps"][i]["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["name"].as_str().unwrap_or_default().to_owned(),
                    h["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(headers(0)["From"], "Pulse Tests <tests@example.com>");
    assert_eq!(headers(0)["Reply-To"], "replies@example.com");
    assert!(headers(1).contains_key("In-Reply-To") && !headers(0).contains_key("In-Reply-To"));
    assert!(headers(0)["List-Unsubscribe"].contains("each-lead-gets-its-own-link"));

    // Typed values: a lead's markup is escaped in the HTML part, kept as text in the text part.
    let (status, r) = env
        .post(
            &path,
            json!({"lead": {"email": "x@example.com", "first_name": "Xe",
                            "attributes": {"company": "<script>Evil</script>"}}}),
        )
        .await?;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["steps"][0]["subject"], "Hi Xe");
    let html = r["steps"][0]["html"].as_str().unwrap_or_default();
    assert!(html.contains("&lt;script&gt;Evil&lt;/script&gt;"), "{html}");

    // A real lead of the workspace, by address.
    let (status, _) = env
        .post(
            "/v1/events",
            json!({"events": [{"id": "b", "type": "tag_applied", "tag": "other",
                               "lead": {"email": "bea@example.com", "first_name": "Bea",
                                        "attributes": {"company": "Acme"}}}]}),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, r) = env
        .post(&path, json!({"lead_email": "BEA@example.com"}))
        .await?;
    assert_eq!(status, 200, "{r}");
    assert!(r["lead_id"].is_string());
    assert_eq!(r["steps"][0]["subject"], "Hi Bea");

    // A draft's steps are checked as the edit checks them: an unknown variable, same error.
    let mut steps = seq["steps"].clone();
    steps[0]["subject"] = json!("Hi {{ lead.nickname }}");
    let (status, r) = env.post(&path, json!({"steps": steps.clone()})).await?;
    assert_eq!(status, 422, "{r}");
    let (status, edit) = env
        .call(
            Method::PATCH,
            &format!("/v1/sequences/{id}"),
            Some(json!({"steps": steps})),
        )
        .await?;
    assert_eq!(status, 422);
    assert_eq!(r["error"], edit["error"], "the same error as saving");
    let (status, _) = env
        .post(&path, json!({"lead_email": "nobody@example.com"}))
        .await?;
    assert_eq!(status, 404);
    env.stop().await
}
