//! The Hub over plain HTTP: sign-in, the session cookie, CSRF on every form, workspace
//! isolation, and each page and action against a running Pulse. (The browser tests in
//! `tests/hub_browser.rs` drive the same pages in Chromium.)

use std::time::Duration;

use anyhow::Context;

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, count, sequence_body};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use uuid::Uuid;

mod admin;
mod client;
mod console;
use client::{Hub, between, no_redirects, set_cookie};

async fn sequence_status(env: &TestEnv, id: &str) -> anyhow::Result<String> {
    let (_, s) = env.get(&format!("/v1/sequences/{id}")).await?;
    Ok(s["status"].as_str().unwrap_or_default().to_owned())
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn hub_pages_need_a_session_and_every_form_its_csrf_token() -> anyhow::Result<()> {
    let env = TestEnv::start("hub_auth", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Guarded",
            &[("Hi", "Hello", json!({"type": "immediately"}))],
            "guarded",
        ))
        .await?;
    let sid = id_of(&seq);
    let (status, enrollment) = env
        .post(
            &format!("/v1/sequences/{sid}/enrollments"),
            json!({"lead": {"email": "guarded@example.com"}}),
        )
        .await?;
    assert_eq!(status, 201, "{enrollment}");
    let eid = id_of(&enrollment);
    let hub = Hub::sign_in(&env, &env.key).await?;

    // A page without a session sends the browser to sign in, then back.
    let anon = no_redirects();
    let r = anon
        .get(format!("{}/hub/sequences/{sid}", env.base))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()[header::LOCATION].to_str()?.to_owned();
    assert_eq!(to, format!("/hub/login?next=%2Fhub%2Fsequences%2F{sid}"));

    // Every form: refused without a session (401), without the token or with a wrong one (403).
    let forms = [
        "/hub/logout".to_owned(),
        format!("/hub/sequences/{sid}/pause"),
        format!("/hub/sequences/{sid}/resume"),
        format!("/hub/sequences/{sid}/edit"),
        format!("/hub/sequences/{sid}/delete"),
        format!("/hub/sequences/{sid}/re-enroll"),
        format!("/hub/sequences/{sid}/enrollments/cancel"),
        format!("/hub/enrollments/{eid}/cancel"),
        "/hub/sends/some-key/resolve".to_owned(),
    ];
    for path in &forms {
        let fields = [
            ("name", "Renamed"),
            ("confirm_name", "Guarded"),
            ("ids", eid.as_str()),
            ("all_active", "true"),
            ("all_not_active", "true"),
            ("outcome", "sent"),
        ];
        let (s, _) = hub.post_raw(path, None, &fields).await?;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} without a session");
        let (s, _) = hub.post_raw(path, Some(&hub.cookie), &fields).await?;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path} without a CSRF token");
        let mut forged = vec![("csrf", "0".repeat(64))];
        forged.extend(fields.iter().map(|(k, v)| (*k, v.to_string())));
        let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, _) = hub.post_raw(path, Some(&hub.cookie), &forged).await?;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path} with a forged CSRF token");
    }
    // None of them did anything.
    assert_eq!(sequence_status(&env, &sid).await?, "ACTIVE");
    let (_, s) = env.get(&format!("/v1/sequences/{sid}")).await?;
    assert_eq!(s["name"], "Guarded");
    let (_, e) = env.get(&format!("/v1/enrollments/{eid}")).await?;
    assert_eq!(e["status"], "ACTIVE");
    let (_, page) = hub.get("/hub/sequences").await?;
    assert!(page.contains("Guarded"), "still signed in");

    // Sign-in: an unknown key, and a form without its sign-in cookie, are refused.
    let (s, _) = hub
        .post_raw("/hub/login", None, &[("csrf", "x"), ("api_key", &env.key)])
        .await?;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "sign-in without the double-submit cookie"
    );
    let r = anon
        .post(format!("{}/hub/login", env.base))
        .header(header::COOKIE, "pulse_hub_login=abc")
        .form(&[("csrf", "abc"), ("api_key", "not-a-key")])
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&r, "pulse_hub").is_none());

    // Signing out ends the session for good.
    let (s, to) = hub.post("/hub/logout", &[]).await?;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/hub/login"));
    let (s, _) = hub.get("/hub/sequences").await?;
    assert_eq!(
        s,
        StatusCode::SEE_OTHER,
        "the old cookie no longer signs in"
    );
    env.stop().await
}

#[tokio::test]
async fn a_workspace_sees_and_controls_only_its_own_sequences() -> anyhow::Result<()> {
    let env = TestEnv::start("hub_ws", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Workspace A only",
            &[("Hi", "Hello", json!({"type": "immediately"}))],
            "a",
        ))
        .await?;
    let sid = id_of(&seq);
    let other_key = format!("other-{}", Uuid::new_v4().simple());
    pulse_shared::db::provision_key(&env.db, Uuid::new_v4(), "other", &other_key).await?;
    let b = Hub::sign_in(&env, &other_key).await?;

    let (s, page) = b.get("/hub/sequences").await?;
    assert_eq!(s, StatusCode::OK);
    assert!(!page.contains("Workspace A only"), "B sees A's sequence");
    let (s, live) = b.get("/hub/sequences/live").await?;
    assert_eq!(s, StatusCode::OK);
    assert!(!live.contains(&sid), "B's live counts include A's sequence");
    for path in [
        format!("/hub/sequences/{sid}"),
        format!("/hub/sequences/{sid}/enrollments"),
        format!("/hub/sequences/{sid}/edit"),
        format!("/hub/sequences/{sid}/delete"),
    ] {
        let (s, _) = b.get(&path).await?;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = b.post(&format!("/hub/sequences/{sid}/pause"), &[]).await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "B paused A's sequence");
    assert_eq!(sequence_status(&env, &sid).await?, "ACTIVE");
    env.stop().await
}

#[tokio::test]
async fn every_page_renders_and_every_action_works_from_its_form() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("hub_pages", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Onboarding <script>alert(1)</script>",
            &[
                (
                    "Welcome {{ lead.first_name }}",
                    "Hello",
                    json!({"type": "immediately"}),
                ),
                ("Day two", "Again", json!({"type": "delay", "delay": "P1D"})),
            ],
            "hub",
        ))
        .await?;
    let sid = id_of(&seq);
    let events: Vec<Value> = ["ada", "bob"]
        .iter()
        .map(|l| json!({"id": l, "type": "tag_applied", "lead": {"email": format!("{l}@example.com"), "first_name": l}, "tag": "hub"}))
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;
    smtp.wait_for(2, Duration::from_secs(15)).await?;
    let hub = Hub::sign_in(&env, &env.key).await?;

    // Every page renders, escaped.
    let (_, e) = env
        .get(&format!("/v1/sequences/{sid}/enrollments?status=ACTIVE"))
        .await?;
    let ada = e["enrollments"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["lead_email"] == "ada@example.com"))
        .map(id_of)
        .unwrap_or_default();
    for (path, expect) in [
        ("/hub/sequences".to_owned(), "Sends today"),
        (format!("/hub/sequences/{sid}"), "Audit trail"),
        (format!("/hub/sequences/{sid}/edit"), "Pause first for"),
        (
            format!("/hub/sequences/{sid}/delete"),
            "Deletion is irreversible",
        ),
        (
            format!("/hub/sequences/{sid}/enrollments"),
            "ada@example.com",
        ),
        (
            format!("/hub/sequences/{sid}/enrollments?status=ACTIVE"),
            "bob@example.com",
        ),
        ("/hub/sends".to_owned(), "ada@example.com"),
        ("/hub/sends?state=SENT&step=1".to_owned(), "bob@example.com"),
        ("/hub/outbox".to_owned(), "Dev outbox"),
    ] {
        let (s, page) = hub.get(&path).await?;
        assert_eq!(s, StatusCode::OK, "{path}: {page}");
        assert!(page.contains(expect), "{path} lacks {expect:?}");
        assert!(!page.contains("<script>alert(1)"), "{path} does not escape");
    }
    // Only step 1 has gone out: filtering on step 2 finds nothing.
    let (s, page) = hub.get("/hub/sends?step=2").await?;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("Nothing matches.") && !page.contains("table class=\"list sends\""),
        "{page}"
    );
    let (s, page) = hub.get("/hub/sends?step=two").await?;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{page}");
    let (s, _) = hub.get("/hub/sequences/not-a-uuid").await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Pause, see it on the next page, preview and resume.
    let (s, to) = hub
        .post(
            &format!("/hub/sequences/{sid}/pause"),
            &[("return_to", "/hub/sequences")],
        )
        .await?;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/hub/sequences"));
    assert_eq!(sequence_status(&env, &sid).await?, "PAUSED");
    let (_, preview) = hub.get(&format!("/hub/sequences/{sid}/resume")).await?;
    assert!(preview.contains("Resume now"), "{preview}");
    hub.post(&format!("/hub/sequences/{sid}/resume"), &[])
        .await?;
    assert_eq!(sequence_status(&env, &sid).await?, "ACTIVE");

    // Cancel one lead, then re-enroll it.
    hub.post(&format!("/hub/enrollments/{ada}/cancel"), &[])
        .await?;
    let (_, e) = env.get(&format!("/v1/enrollments/{ada}")).await?;
    assert_eq!(e["status"], "CANCELLED");
    hub.post(
        &format!("/hub/sequences/{sid}/re-enroll"),
        &[("lead_emails", "ada@example.com")],
    )
    .await?;
    smtp.wait_for(3, Duration::from_secs(15)).await?;

    // Bulk cancel with the emergency box: every active enrollment ends.
    hub.post(
        &format!("/hub/sequences/{sid}/enrollments/cancel"),
        &[("all_active", "true")],
    )
    .await?;
    let (_, e) = env
        .get(&format!("/v1/sequences/{sid}/enrollments?status=ACTIVE"))
        .await?;
    assert_eq!(e["enrollments"].as_array().map(Vec::len), Some(0));

    // Edit: rename keeps the steps; a bad wait is refused next to its step, nothing saved.
    let (_, form) = hub.get(&format!("/hub/sequences/{sid}/edit")).await?;
    let step_ids: Vec<String> = form
        .match_indices(r#"name="step_id" value=""#)
        .map(|(i, m)| {
            form[i + m.len()..]
                .split('"')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|v| !v.is_empty())
        .collect();
    assert_eq!(step_ids.len(), 2);
    let mut fields = vec![
        ("name", "Onboarding v2"),
        ("sender", "Pulse <tests@example.com>"),
        ("timezone", "UTC"),
    ];
    let whens = [("immediately", ""), ("after", "1")];
    let htmls = ["", "<p>Hello <b>there</b></p>"];
    let threads = ["no", "yes"];
    for (i, id) in step_ids.iter().enumerate() {
        fields.extend([
            ("step_id", id.as_str()),
            ("step_subject", "Subject"),
            ("step_body", "Body"),
            ("step_html", htmls[i]),
            ("step_thread", threads[i]),
            ("step_when", whens[i].0),
            ("step_after_n", whens[i].1),
            ("step_after_unit", "days"),
            ("step_on", ""),
            ("step_end", ""),
            ("step_lateness", ""),
        ]);
    }
    fields.extend([
        ("trigger_kind", "tag_applied"),
        ("trigger_value", "hub"),
        ("do", "save"),
    ]);
    let (s, to) = hub
        .post(&format!("/hub/sequences/{sid}/edit"), &fields)
        .await?;
    assert_eq!(
        (s, to),
        (StatusCode::SEE_OTHER, format!("/hub/sequences/{sid}"))
    );
    let (_, after) = env.get(&format!("/v1/sequences/{sid}")).await?;
    assert_eq!(after["name"], "Onboarding v2");
    assert_eq!(after["steps"].as_array().map(Vec::len), Some(2));
    assert_eq!(after["steps"][1]["html"], "<p>Hello <b>there</b></p>");
    assert_eq!(after["steps"][1]["thread"], true);
    assert_eq!(
        after["steps"][1]["timing"],
        json!({"type": "delay", "delay": "P1D"})
    );
    assert_eq!(after["steps"][0]["html"], Value::Null);
    assert_eq!(
        after["triggers"],
        json!([{"type": "tag_applied", "tag": "hub"}])
    );
    let (_, page) = hub.get(&format!("/hub/sequences/{sid}")).await?;
    assert!(
        page.contains("1 day after the previous step"),
        "timing in words"
    );
    let mut broken = fields.clone();
    for f in broken.iter_mut() {
        if f.0 == "step_after_n" && f.1 == "1" {
            f.1 = "soon";
        }
        if f.0 == "name" {
            f.1 = "Never saved";
        }
    }
    let mut with_token = vec![("csrf", hub.csrf.as_str())];
    with_token.extend_from_slice(&broken);
    let r = hub
        .http
        .post(format!("{}/hub/sequences/{sid}/edit", env.base))
        .header(header::COOKIE, &hub.cookie)
        .form(&with_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The form comes back as typed, with the reason under the step it concerns.
    let page = r.text().await?;
    let err = page
        .split(r#"id="err-step-1""#)
        .nth(1)
        .context("an error under step 2")?;
    assert!(err.contains("is not a whole number"), "{page}");
    assert!(page.contains(r#"value="Never saved""#), "the draft is kept");
    // An error the API finds names its field too: an unknown time zone.
    let mut zoned = with_token.clone();
    for f in zoned.iter_mut() {
        if f.0 == "step_after_n" && f.1 == "soon" {
            f.1 = "2";
        }
        if f.0 == "timezone" {
            f.1 = "Mars/Olympus";
        }
    }
    let r = hub
        .http
        .post(format!("{}/hub/sequences/{sid}/edit", env.base))
        .header(header::COOKIE, &hub.cookie)
        .form(&zoned)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await?;
    assert!(page.contains(r#"id="err-timezone""#), "{page}");
    let (_, after) = env.get(&format!("/v1/sequences/{sid}")).await?;
    assert_eq!(after["name"], "Onboarding v2");
    assert_eq!(after["timezone"], "UTC");

    // A refused action's reason comes back on the page once (the flash cookie).
    let r = hub
        .http
        .post(format!("{}/hub/sequences/{sid}/delete", env.base))
        .header(header::COOKIE, &hub.cookie)
        .form(&[("csrf", hub.csrf.as_str()), ("confirm_name", "nope")])
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let flash = set_cookie(&r, "pulse_hub_flash").context("a message for the next page")?;
    let flash = flash.split(';').next().unwrap_or_default();
    let r = hub
        .http
        .get(format!("{}/hub/sequences/{sid}/delete", env.base))
        .header(header::COOKIE, format!("{}; {flash}", hub.cookie))
        .send()
        .await?;
    let cleared = set_cookie(&r, "pulse_hub_flash").unwrap_or_default();
    assert!(
        cleared.contains("Max-Age=0"),
        "the message is shown once: {cleared}"
    );

    // Delete asks for the name: a wrong one deletes nothing.
    let (s, to) = hub
        .post(
            &format!("/hub/sequences/{sid}/delete"),
            &[("confirm_name", "nope")],
        )
        .await?;
    assert_eq!(
        (s, to),
        (
            StatusCode::SEE_OTHER,
            format!("/hub/sequences/{sid}/delete")
        )
    );
    assert_eq!(sequence_status(&env, &sid).await?, "ACTIVE");
    let (s, to) = hub
        .post(
            &format!("/hub/sequences/{sid}/delete"),
            &[("confirm_name", "Onboarding v2")],
        )
        .await?;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/hub/sequences"));
    assert_eq!(sequence_status(&env, &sid).await?, "DELETED");
    env.stop().await
}

#[tokio::test]
async fn the_suppressions_page_adds_searches_and_lifts_with_a_reason() -> anyhow::Result<()> {
    let env = TestEnv::start("hub_pages", &[Role::Api, Role::Ingest], |_| {}).await?;
    let mut body = sequence_body(
        "S",
        &[("Hi", "B", json!({"type": "delay", "delay": "P1D"}))],
        "go",
    );
    body["triggers"] = json!([{"type": "tag_applied", "tag": "go"}]);
    env.create_sequence(body).await?;
    env.post(
        "/v1/events",
        json!({"events": [{"id": "1", "type": "tag_applied", "tag": "go", "lead": {"email": "eve@example.com"}}]}),
    )
    .await?;
    let hub = Hub::sign_in(&env, &env.key).await?;
    let (s, to) = hub
        .post(
            "/hub/suppressions/add",
            &[
                (
                    "values",
                    "email\r\nEve@Example.com,extra\r\nacme.example\r\n",
                ),
                ("reason", "complained"),
                ("return_to", "/hub/suppressions"),
            ],
        )
        .await?;
    assert_eq!(
        (s, to.as_str()),
        (StatusCode::SEE_OTHER, "/hub/suppressions")
    );
    let (_, listed) = env.get("/v1/suppressions").await?;
    let values: Vec<&str> = listed["suppressions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["value"].as_str())
        .collect();
    assert_eq!(values, ["acme.example", "eve@example.com"]);
    assert_eq!(listed["suppressions"][1]["reason"], "complained");
    let ended = count(
        &env.db,
        "SELECT count(*) FROM enrollments WHERE status = 'CANCELLED' AND end_reason = 'complained'",
    )
    .await?;
    assert_eq!(ended, 1, "Eve's enrollment ended");
    let (s, html) = hub.get("/hub/suppressions?q=eve@example.com").await?;
    assert_eq!(s, StatusCode::OK);
    assert!(
        html.contains("eve@example.com") && !html.contains("acme.example</td>"),
        "{html}"
    );
    // A bad line is refused with its line number, nothing added.
    let (s, _) = hub
        .post(
            "/hub/suppressions/add",
            &[
                ("values", "ok@example.com\nnot a domain"),
                ("reason", "manual"),
            ],
        )
        .await?;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM suppressions").await?,
        2
    );
    let (s, _) = hub
        .post(
            "/hub/suppressions/lift",
            &[("value", "eve@example.com"), ("reason", "she asked again")],
        )
        .await?;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let lifted = count(
        &env.db,
        "SELECT count(*) FROM suppression_lifts WHERE value = 'eve@example.com' AND reason = 'she asked again'",
    )
    .await?;
    assert_eq!(lifted, 1);
    env.stop().await
}

#[tokio::test]
async fn what_came_back_lists_replies_and_bounces_and_shows_one_as_received() -> anyhow::Result<()>
{
    let env = TestEnv::start("hub_inbound", &[Role::All], |_| {}).await?;
    env.create_sequence(json!({"name": "Q", "sender": {"from": "rep@sales.test"},
        "triggers": [{"type": "tag_applied", "tag": "go"}],
        "steps": [{"subject": "Hi", "body": "One", "timing": {"type": "immediately"}},
                  {"subject": "Two", "body": "Two", "timing": {"type": "delay", "delay": "P1D"}}]}))
        .await?;
    env.post(
        "/v1/events",
        json!({"events": [
        {"id": "1", "type": "tag_applied", "tag": "go", "lead": {"email": "ada@example.org"}},
        {"id": "2", "type": "tag_applied", "tag": "go", "lead": {"email": "bob@example.org"}}]}),
    )
    .await?;
    let ada_id = pulse_tests::sent_message_id(&env.db, "ada@example.org").await?;
    // Ada's reply, as the listener records it; Bob bounced, as a CRM reports it.
    let raw = format!(
        "From: Ada <ada@example.org>\r\nSubject: Re: Hi <yes>\r\nIn-Reply-To: {ada_id}\r\n\r\nLet's talk Tuesday.\r\n"
    );
    let c = pulse_inbound::classify::classify(raw.as_bytes(), Some("ada@example.org"), None);
    let envelope = pulse_inbound::Envelope {
        mail_from: Some("ada@example.org".into()),
        rcpt_to: vec!["rep@sales.test".into()],
        verp: None,
    };
    let report = pulse_inbound::report(c, envelope, raw.clone().into_bytes(), None);
    let (reply, _, _) = pulse_shared::feedback::record_and_process(&env.db, &report, 3).await?;
    env.post(
        "/v1/events",
        json!({"events": [
        {"id": "b", "type": "bounced", "lead": {"email": "bob@example.org"}}]}),
    )
    .await?;

    let hub = Hub::sign_in(&env, &env.key).await?;
    let (status, list) = hub.get("/hub/inbound").await?;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(list.contains("replied; ended 1 enrollment(s)"), "{list}");
    assert!(list.contains("bounce; address suppressed"), "{list}");
    let (_, bounces) = hub.get("/hub/inbound?kind=bounce").await?;
    assert!(bounces.contains("bob@example.org") && !bounces.contains("ada@example.org"));
    let (status, one) = hub.get(&format!("/hub/inbound/{reply}")).await?;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert!(
        one.contains("Let&#39;s talk Tuesday.") || one.contains("Let's talk Tuesday."),
        "{one}"
    );
    // The raw message is shown as text, never as markup.
    assert!(one.contains("Re: Hi &lt;yes&gt;"), "{one}");
    assert_eq!(
        hub.get("/hub/inbound/abc").await?.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        hub.get("/hub/inbound/999999").await?.0,
        StatusCode::NOT_FOUND
    );
    // The enrollment a reply ended links to it.
    let seq = sqlx::query_scalar::<_, Uuid>("SELECT id FROM sequences")
        .fetch_one(&env.db)
        .await?;
    let (_, enrollments) = hub
        .get(&format!("/hub/sequences/{seq}/enrollments"))
        .await?;
    assert!(
        enrollments.contains("/hub/inbound?enrollment="),
        "{enrollments}"
    );
    env.stop().await
}

#[tokio::test]
async fn the_hub_shows_a_sequences_sending_rules_and_why_a_step_waits() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("hub_rules", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let mut body = sequence_body(
        "Ruled",
        &[("Hi", "One", json!({"type": "immediately"}))],
        "ruled",
    );
    body["limits"] = json!([{"max": 1, "per": "PT1H"}]);
    body["priority"] = json!(8);
    body["steps"][0]["max_lateness"] = json!("P2D");
    let seq = env.create_sequence(body).await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let events: Vec<Value> = (0..2)
        .map(|i| {
            json!({"id": format!("r{i}"), "type": "tag_applied", "tag": "ruled",
                        "lead": {"email": format!("r{i}@example.com")}})
        })
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;
    smtp.wait_for(1, Duration::from_secs(20)).await?;
    pulse_tests::eventually(Duration::from_secs(20), "a step waiting on the limit", || async {
        let n = count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED' AND last_error LIKE 'sequence limit%'",
        )
        .await?;
        Ok((n == 1).then_some(()))
    })
    .await?;

    let hub = Hub::sign_in(&env, &env.key).await?;
    let (status, page) = hub.get(&format!("/hub/sequences/{sid}")).await?;
    assert_eq!(status, StatusCode::OK);
    for shown in [
        "1 per PT1H",
        "8 (0–9, higher first)",
        "pauses itself when more than 10 of its last 20 sends failed; or a step would go to a lead again within PT24H (not by re-enroll); or sends exceed 120 % of a sending limit",
        "P2D after it came due",
    ] {
        assert!(page.contains(shown), "{shown} not on the page");
    }
    let (_, page) = hub
        .get(&format!("/hub/sequences/{sid}/enrollments"))
        .await?;
    assert!(
        page.contains("waiting: <span class=\"muted\">sequence limit (1 per PT1H) until"),
        "the enrollments page says why the step waits"
    );
    env.stop().await
}

#[tokio::test]
async fn a_read_key_sees_the_hub_without_acting_and_a_revoked_key_ends_its_session()
-> anyhow::Result<()> {
    let env = TestEnv::start("hub-read", &[Role::Api], |_| {}).await?;
    let created = env
        .create_sequence(sequence_body(
            "Seen",
            &[("Hi", "hello", json!({"type": "immediately"}))],
            "seen",
        ))
        .await?;
    let sid = created["id"].as_str().unwrap_or_default().to_owned();
    let (status, read) = env
        .post("/v1/keys", json!({"label": "dashboard", "scope": "read"}))
        .await?;
    assert_eq!(status, 201, "{read}");
    let read_key = read["key"].as_str().unwrap_or_default().to_owned();

    let hub = Hub::sign_in(&env, &read_key).await?;
    let (status, page) = hub.get(&format!("/hub/sequences/{sid}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"<body class="read-only">"#), "{page}");
    assert!(page.contains("Signed in with a read key"));
    let (status, _) = hub
        .post(&format!("/hub/sequences/{sid}/pause"), &[])
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(sequence_status(&env, &sid).await?, "ACTIVE");

    // Revoked: the session ends with the key.
    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{}", read["id"].as_str().unwrap_or_default()),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = hub.get(&format!("/hub/sequences/{sid}")).await?;
    assert_eq!(status, StatusCode::SEE_OTHER, "signed out");
    env.stop().await
}

#[tokio::test]
async fn the_mailboxes_page_shows_each_mailboxs_limits() -> anyhow::Result<()> {
    let env = TestEnv::start("hub-mailboxes", &[Role::Api], |_| {}).await?;
    let (status, made) = env
        .post(
            "/v1/mailboxes",
            json!({"address": "ada@example.com", "display_name": "Ada",
                   "limits": [{"max": 2000, "per": "P1D"}, {"max": 30, "per": "PT1M"}],
                   "timezone": "Europe/Paris"}),
        )
        .await?;
    assert_eq!(status, 201, "{made}");
    let hub = Hub::sign_in(&env, &env.key).await?;
    let (status, page) = hub.get("/hub/mailboxes").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("ada@example.com"), "{page}");
    assert!(
        page.contains("2000 a day (midnight, Europe/Paris), 30 per PT1M"),
        "{page}"
    );
    assert!(page.contains(r#"href="/hub/mailboxes""#));
    env.stop().await
}
