//! The Hub as the operator's console: a sequence built in the editor (cards moved with its
//! buttons, a refusal shown on its field), an edit previewed before it is saved, and the
//! activity charts drawn from the API's numbers.

use std::time::Duration;

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, eventually, sequence_body};
use reqwest::StatusCode;
use serde_json::json;

use super::{Hub, id_of};

/// The editor's fields for one step card.
fn card<'a>(subject: &'a str, when: &'a str, n: &'a str, unit: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("step_id", ""),
        ("step_subject", subject),
        ("step_body", "Hello {{ lead.email }}"),
        ("step_html", ""),
        ("step_thread", "no"),
        ("step_when", when),
        ("step_after_n", n),
        ("step_after_unit", unit),
        ("step_on", ""),
        ("step_end", ""),
        ("step_lateness", ""),
    ]
}

fn settings(timezone: &str) -> Vec<(&str, &str)> {
    let mut f = vec![
        ("name", "Built in the Hub"),
        ("sender", "Pulse <tests@example.com>"),
        ("reply_to", ""),
        ("timezone", timezone),
        ("max_sends_per_minute", ""),
        ("exit_on_reply", "enrollment"),
        ("end_date", ""),
        ("window_start", "00:00"),
        ("window_end", "00:00"),
        ("trigger_kind", "tag_applied"),
        ("trigger_value", "hubnew"),
    ];
    for day in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
        f.push(("window_day", day));
    }
    f
}

#[tokio::test]
async fn a_sequence_is_built_rearranged_and_its_edit_previewed_in_the_hub() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("hub_console", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let hub = Hub::sign_in(&env, &env.key).await?;
    let (status, page) = hub.get("/hub/sequences/new").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page.matches(r#"name="step_when""#).count(),
        1,
        "one card to start"
    );

    // "Add a step" brings the draft back with one more card, nothing saved.
    let mut fields = settings("UTC");
    fields.extend(card("First", "immediately", "", "days"));
    let mut adding = fields.clone();
    adding.push(("do", "add"));
    let (status, page) = hub.post_page("/hub/sequences/new", &adding).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches(r#"name="step_when""#).count(), 2);
    assert!(page.contains(r#"value="First""#), "the draft is kept");

    // Three cards; "Move up" on the third puts it second.
    fields.extend(card("Third", "after", "1", "hours"));
    fields.extend(card("Second", "after", "2", "days"));
    let mut moving = fields.clone();
    moving.push(("do", "up:2"));
    let (status, page) = hub.post_page("/hub/sequences/new", &moving).await?;
    assert_eq!(status, StatusCode::OK);
    let at = |s: &str| page.find(&format!(r#"value="{s}""#)).unwrap_or(usize::MAX);
    assert!(
        at("First") < at("Second") && at("Second") < at("Third"),
        "moved up"
    );

    // A refusal comes back on its field, and nothing is created.
    let mut zoned = settings("Mars/Olympus");
    zoned.extend(card("First", "immediately", "", "days"));
    zoned.push(("do", "save"));
    let (status, page) = hub.post_page("/hub/sequences/new", &zoned).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains(r#"id="err-timezone""#), "{page}");
    let (_, list) = env.get("/v1/sequences").await?;
    assert_eq!(list["sequences"].as_array().map(Vec::len), Some(0));

    // Saved in the order shown: first, second (two days after), third (an hour after).
    let mut fields = settings("Europe/Paris");
    fields.extend(card("First", "immediately", "", "days"));
    fields.extend(card("Second", "after", "2", "days"));
    fields.extend(card("Third", "after", "1", "hours"));
    fields.extend([("limit_max", "500"), ("limit_per", "P1D")]);
    let mut saving = fields.clone();
    saving.push(("do", "save"));
    let (status, to) = hub.post("/hub/sequences/new", &saving).await?;
    assert_eq!(status, StatusCode::SEE_OTHER, "{to}");
    let id = to.trim_start_matches("/hub/sequences/").to_owned();
    let (_, seq) = env.get(&format!("/v1/sequences/{id}")).await?;
    let subjects: Vec<&str> = seq["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["subject"].as_str())
        .collect();
    assert_eq!(subjects, ["First", "Second", "Third"]);
    assert_eq!(
        seq["steps"][1]["timing"],
        json!({"type": "delay", "delay": "P2D"})
    );
    assert_eq!(
        seq["steps"][2]["timing"],
        json!({"type": "delay", "delay": "PT1H"})
    );
    assert_eq!(seq["send_window"]["days"].as_array().map(Vec::len), Some(7));
    assert_eq!(seq["timezone"], "Europe/Paris");
    assert_eq!(
        seq["triggers"],
        json!([{"type": "tag_applied", "tag": "hubnew"}])
    );
    assert_eq!(seq["limits"], json!([{"max": 500, "per": "P1D"}]));
    let (_, page) = hub.get(&to).await?;
    assert!(
        page.contains("2 days after the previous step"),
        "timing in words"
    );
    assert!(
        page.contains("every day, all day (Europe/Paris)"),
        "the window in words"
    );

    // A lead enrolled over the API gets the first step.
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{id}/enrollments"),
            json!({"lead": {"email": "ada@example.com"}}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let got = smtp.wait_for(1, Duration::from_secs(20)).await?;
    assert_eq!(got[0].subject.as_deref(), Some("First"));
    eventually(Duration::from_secs(10), "step 2 waiting", || async {
        let n = pulse_tests::count(
            &env.db,
            "SELECT count(*) FROM step_runs r JOIN sequence_steps s ON s.id = r.step_id
             WHERE s.position = 2 AND r.state = 'SCHEDULED'",
        )
        .await?;
        Ok((n == 1).then_some(()))
    })
    .await?;

    // Preview making the second step three days after: the waiting lead moves a day later.
    let (_, form) = hub.get(&format!("/hub/sequences/{id}/edit")).await?;
    let step_ids: Vec<String> = form
        .match_indices(r#"name="step_id" value=""#)
        .map(|(i, m)| {
            form[i + m.len()..]
                .split('"')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(step_ids.len(), 3);
    let version = seq["version"].to_string();
    let mut edit = settings("Europe/Paris");
    edit.push(("version", version.as_str()));
    for (i, (subject, when, n, unit)) in [
        ("First", "immediately", "", "days"),
        ("Second", "after", "3", "days"),
        ("Third", "after", "1", "hours"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = card(subject, when, n, unit);
        c[0].1 = step_ids[i].as_str();
        edit.extend(c);
    }
    let mut previewing = edit.clone();
    previewing.push(("do", "preview"));
    let (status, page) = hub
        .post_page(&format!("/hub/sequences/{id}/edit"), &previewing)
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    let retimed = page
        .split(r#"data-preview="retimed""#)
        .nth(1)
        .unwrap_or_default();
    assert!(
        retimed.contains("<strong>1</strong> waiting steps move"),
        "{page}"
    );
    assert!(retimed.contains("ada@example.com"), "{page}");
    assert!(page.contains(r#"value="3""#), "the form keeps the edit");
    let (_, now) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(now["version"], seq["version"], "a preview saves nothing");

    let mut saving = edit.clone();
    saving.push(("do", "save"));
    let (status, to) = hub
        .post(&format!("/hub/sequences/{id}/edit"), &saving)
        .await?;
    assert_eq!(
        (status, to.as_str()),
        (
            StatusCode::SEE_OTHER,
            format!("/hub/sequences/{id}").as_str()
        )
    );
    let (_, now) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(
        now["steps"][1]["timing"],
        json!({"type": "delay", "delay": "P3D"})
    );
    env.stop().await
}

#[tokio::test]
async fn the_sequence_page_draws_its_activity_from_the_api() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    smtp.refuse("refused@example.org", 550, None);
    let url = smtp.url();
    let env = TestEnv::start("hub_charts", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Charted",
            &[
                ("One", "1", json!({"type": "immediately"})),
                ("Two", "2", json!({"type": "immediately"})),
                ("Three", "3", json!({"type": "delay", "delay": "P1D"})),
            ],
            "t",
        ))
        .await?;
    let id = id_of(&seq);
    let mut events: Vec<_> = (0..5)
        .map(|i| {
            json!({"id": format!("c{i}"), "type": "tag_applied", "tag": "t",
                         "lead": {"email": format!("c{i}@example.com")}})
        })
        .collect();
    events.push(json!({"id": "r", "type": "tag_applied", "tag": "t",
                       "lead": {"email": "refused@example.org"}}));
    let (status, _) = env.post("/v1/events", json!({ "events": events })).await?;
    assert_eq!(status, 200);
    smtp.wait_for(10, Duration::from_secs(30)).await?;
    let activity = eventually(Duration::from_secs(15), "the sends recorded", || async {
        let (_, a) = env
            .get(&format!("/v1/sequences/{id}/activity?range=1h"))
            .await?;
        let sum = |k: &str| {
            a["buckets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| b[k].as_i64().unwrap_or(0))
                .sum::<i64>()
        };
        Ok((sum("sent") == 10 && sum("failed") == 1).then_some(a))
    })
    .await?;
    assert_eq!(activity["range"], "1h");
    assert_eq!(activity["bucket_seconds"], 60);
    assert_eq!(activity["buckets"].as_array().map(Vec::len), Some(60));
    let status_of = |s: &str| {
        activity["enrollments"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["status"] == s)
            .map(|e| e["count"].clone())
    };
    assert_eq!(status_of("ACTIVE"), Some(json!(5)));
    assert_eq!(status_of("FAILED"), Some(json!(1)));
    assert_eq!(status_of("COMPLETED"), Some(json!(0)));
    let funnel: Vec<i64> = activity["funnel"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["leads"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(funnel, [5, 5, 0]);

    // Paused, with step 3 fallen due: the five held steps show in their bucket.
    let (status, _) = env
        .post(&format!("/v1/sequences/{id}/pause"), json!({}))
        .await?;
    assert_eq!(status, 200);
    sqlx::query(
        "UPDATE step_runs SET due_at = now() - interval '1 minute'
         WHERE state = 'SCHEDULED' AND sequence_id = $1::uuid",
    )
    .bind(&id)
    .execute(&env.db)
    .await?;
    let (_, a) = env
        .get(&format!("/v1/sequences/{id}/activity?range=1h"))
        .await?;
    let held: i64 = a["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["held"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(held, 5);

    // The page draws the same numbers.
    let hub = Hub::sign_in(&env, &env.key).await?;
    let (status, page) = hub.get(&format!("/hub/sequences/{id}?range=1h")).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"data-chart="sends" data-total="16""#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-item="ACTIVE" data-value="5""#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-item="Step 2: Two" data-value="5""#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-item="Step 3: Three" data-value="0""#),
        "{page}"
    );
    assert!(page.contains("held by the pause"));
    // The resume preview draws when the five held steps would go out.
    let (status, page) = hub.get(&format!("/hub/sequences/{id}/resume")).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"data-chart="resume" data-total="5""#),
        "{page}"
    );

    // A range the API does not know is a client mistake.
    let (status, body) = env
        .get(&format!("/v1/sequences/{id}/activity?range=2h"))
        .await?;
    assert_eq!(status, 400, "{body}");
    let (status, _) = env
        .get(&format!("/v1/sequences/{}/activity", uuid::Uuid::new_v4()))
        .await?;
    assert_eq!(status, 404);
    env.stop().await
}

#[tokio::test]
async fn the_editor_shows_the_messages_for_a_sample_or_an_enrolled_lead() -> anyhow::Result<()> {
    let env = TestEnv::start("hub_render", &[Role::Api, Role::Ingest], |_| {}).await?;
    let hub = Hub::sign_in(&env, &env.key).await?;
    // A draft not saved yet: the sample lead.
    let mut fields = settings("UTC");
    fields.extend(card("Hi {{ lead.first_name }}", "immediately", "", "days"));
    fields.extend([("preview_lead", ""), ("do", "render")]);
    let (status, page) = hub.post_page("/hub/sequences/new", &fields).await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("The messages for ada@example.com (sample values)"),
        "{page}"
    );
    assert!(page.contains("<td>Hi Ada</td>"), "{page}");
    let (_, list) = env.get("/v1/sequences").await?;
    assert_eq!(
        list["sequences"].as_array().map(Vec::len),
        Some(0),
        "nothing saved"
    );

    // An unknown variable: the save's error, on its card.
    let mut bad = settings("UTC");
    bad.extend(card("Hi {{ lead.nickname }}", "immediately", "", "days"));
    bad.extend([("preview_lead", ""), ("do", "render")]);
    let (status, page) = hub.post_page("/hub/sequences/new", &bad).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let err = page.split(r#"id="err-step-0""#).nth(1).unwrap_or_default();
    assert!(err.contains("unknown variable"), "{page}");

    // A saved sequence, for a lead of the workspace; an address nobody has is refused on its field.
    let seq = env
        .create_sequence(sequence_body(
            "Rendered",
            &[(
                "Hi {{ lead.first_name }}",
                "B",
                json!({"type": "immediately"}),
            )],
            "x",
        ))
        .await?;
    let id = id_of(&seq);
    env.post(
        "/v1/events",
        json!({"events": [{"id": "1", "type": "tag_applied", "tag": "y",
                           "lead": {"email": "bea@example.com", "first_name": "Bea"}}]}),
    )
    .await?;
    let step = seq["steps"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let version = seq["version"].to_string();
    let mut edit = settings("UTC");
    edit.push(("version", version.as_str()));
    let mut c = card("Hi {{ lead.first_name }}", "immediately", "", "days");
    c[0].1 = step.as_str();
    edit.extend(c);
    let mut asking = edit.clone();
    asking.extend([("preview_lead", "bea@example.com"), ("do", "render")]);
    let (status, page) = hub
        .post_page(&format!("/hub/sequences/{id}/edit"), &asking)
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("<td>Hi Bea</td>"), "{page}");
    let mut nobody = edit.clone();
    nobody.extend([("preview_lead", "nobody@example.com"), ("do", "render")]);
    let (status, page) = hub
        .post_page(&format!("/hub/sequences/{id}/edit"), &nobody)
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains(r#"id="err-preview_lead""#), "{page}");
    env.stop().await
}
