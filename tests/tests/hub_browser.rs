//! The Hub in a real browser: headless Chromium (Debian's package, driven over WebDriver)
//! against a running Pulse and a real SMTP server. An operator signs in, watches sends arrive,
//! flips the toggle to Paused and sees that nothing more is sent, cancels one lead from the
//! Enrollments view, resumes through the preview, and re-enrolls the lead. A screenshot of each
//! page is saved in `target/hub-screenshots/`.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, browser::Browser, eventually, sequence_body};
use serde_json::{Value, json};

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/hub-screenshots")
}

fn per_lead(smtp: &SmtpServer) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for m in smtp.received() {
        *n.entry(m.rcpt_to.join(",")).or_insert(0) += 1;
    }
    n
}

async fn status(env: &TestEnv, id: &str) -> anyhow::Result<String> {
    let (_, s) = env.get(&format!("/v1/sequences/{id}")).await?;
    Ok(s["status"].as_str().unwrap_or_default().to_owned())
}

async fn sign_in(b: &Browser, env: &TestEnv) -> anyhow::Result<()> {
    b.goto(&format!("{}/hub/sequences", env.base)).await?;
    b.wait_for("#api_key", Duration::from_secs(5)).await?;
    b.type_into("#api_key", &env.key).await?;
    b.screenshot("01-sign-in").await?;
    b.click("form button[type=submit]").await?;
    b.wait_for("table.list, p.empty", Duration::from_secs(5))
        .await?;
    anyhow::ensure!(
        b.current_url().await?.ends_with("/hub/sequences"),
        "signing in leads back to the page asked for"
    );
    Ok(())
}

#[tokio::test]
async fn an_operator_takes_control_of_a_sequence_from_the_hub() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("hub_browser", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let b = Browser::start(&shots()).await?;
    sign_in(&b, &env).await?;

    // A sequence created through the API appears; its sends arrive and the counts follow live.
    let seq = env
        .create_sequence(sequence_body(
            "Trial onboarding",
            &[
                (
                    "Welcome, {{ lead.first_name }}",
                    "Glad you're here.",
                    json!({"type": "immediately"}),
                ),
                (
                    "Getting started",
                    "Here is how.",
                    json!({"type": "delay", "delay": "PT4S"}),
                ),
                (
                    "Any questions?",
                    "Just reply.",
                    json!({"type": "delay", "delay": "PT4S"}),
                ),
            ],
            "trial",
        ))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    b.goto(&format!("{}/hub/sequences", env.base)).await?;
    b.script("window.__notReloaded = true").await?;
    let leads = ["ada", "bob", "cy"];
    let events: Vec<Value> = leads
        .iter()
        .map(|l| {
            json!({"id": l, "type": "tag_applied", "tag": "trial",
                        "lead": {"email": format!("{l}@example.com"), "first_name": l}})
        })
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;
    smtp.wait_for(3, Duration::from_secs(15)).await?;
    let cell = format!("tr[data-sequence=\"{sid}\"] [data-field=sends_today]");
    eventually(
        Duration::from_secs(10),
        "the live count of today's sends",
        || async {
            let e = b.find(&cell).await?;
            Ok((b.element_text(&e).await? == "3").then_some(()))
        },
    )
    .await?;
    assert_eq!(
        b.script("return window.__notReloaded === true").await?,
        json!(true),
        "the counts changed without a reload"
    );
    b.screenshot("02-sequences").await?;

    // Flip the toggle to Paused: nothing more is sent, though steps 2 and 3 fall due.
    b.click(&format!("[data-toggle=\"{sid}\"] button.toggle"))
        .await?;
    b.wait_for(
        &format!("[data-toggle=\"{sid}\"] .toggle.off"),
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(status(&env, &sid).await?, "PAUSED");
    assert!(b.text().await?.contains("is paused"));
    b.screenshot("03-paused").await?;
    let at_pause = smtp.received().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        smtp.received().len(),
        at_pause,
        "a paused sequence sent mail"
    );

    // The details page, then the Enrollments view: cancel bob with the row action.
    b.click(&format!("tr[data-sequence=\"{sid}\"] td a"))
        .await?;
    b.wait_for("section h2", Duration::from_secs(5)).await?;
    b.screenshot("04-details").await?;
    b.click("a.button[href$=\"/enrollments\"]").await?;
    b.wait_for("table.enrollments", Duration::from_secs(5))
        .await?;
    let (_, list) = env.get(&format!("/v1/sequences/{sid}/enrollments")).await?;
    let bob = list["enrollments"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["lead_email"] == "bob@example.com"))
        .and_then(|e| e["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    b.screenshot("05-enrollments").await?;
    b.click(&format!("tr[data-enrollment=\"{bob}\"] td.actions button"))
        .await?;
    let asked = b.accept_dialog().await?;
    assert!(asked.contains("bob@example.com"), "{asked}");
    b.wait_for("p.flash.ok", Duration::from_secs(5)).await?;
    let (_, e) = env.get(&format!("/v1/enrollments/{bob}")).await?;
    assert_eq!(e["status"], "CANCELLED");

    // Resume through the toggle: the preview first, then the resume.
    b.goto(&format!("{}/hub/sequences", env.base)).await?;
    b.click(&format!("[data-toggle=\"{sid}\"] a.toggle"))
        .await?;
    b.wait_for("button.primary", Duration::from_secs(5)).await?;
    assert!(b.text().await?.contains("Resuming now would send"));
    b.screenshot("06-resume-preview").await?;
    b.click("button.primary").await?;
    b.wait_for("p.flash.ok", Duration::from_secs(5)).await?;
    assert_eq!(status(&env, &sid).await?, "ACTIVE");

    // Ada and cy get steps 2 and 3, each once; bob gets nothing more.
    smtp.wait_for(7, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = per_lead(&smtp);
    assert_eq!(n.get("ada@example.com"), Some(&3), "{n:?}");
    assert_eq!(n.get("cy@example.com"), Some(&3), "{n:?}");
    assert_eq!(n.get("bob@example.com"), Some(&1), "{n:?}");

    // Re-enroll bob from the details page: step 1 again.
    b.goto(&format!("{}/hub/sequences/{sid}", env.base)).await?;
    b.type_into("#lead_emails", "bob@example.com").await?;
    b.click("form[action$=\"/re-enroll\"] button").await?;
    b.accept_dialog().await?;
    b.wait_for("p.flash.ok", Duration::from_secs(5)).await?;
    assert!(b.text().await?.contains("Re-enrolled 1"));
    eventually(Duration::from_secs(15), "bob's step 1 again", || async {
        Ok((per_lead(&smtp).get("bob@example.com") >= Some(&2)).then_some(()))
    })
    .await?;
    b.screenshot("07-details-after").await?;

    // The send history, filtered to one lead.
    b.goto(&format!("{}/hub/sends?lead=bob%40example.com", env.base))
        .await?;
    b.wait_for("table.sends", Duration::from_secs(5)).await?;
    let rows = b.find_all("table.sends tbody tr").await?;
    assert!(rows.len() >= 2, "bob's sends: {}", rows.len());
    b.screenshot("08-send-history").await?;

    // A pause made elsewhere (the API, the CLI) shows on an open page without a reload.
    b.goto(&format!("{}/hub/sequences", env.base)).await?;
    b.script("window.__notReloaded = true").await?;
    env.post(&format!("/v1/sequences/{sid}/pause"), json!({}))
        .await?;
    b.wait_for(
        &format!("[data-toggle=\"{sid}\"] .toggle.off"),
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(
        b.script("return window.__notReloaded === true").await?,
        json!(true)
    );

    // The edit and delete pages, with the help page's guidance.
    b.goto(&format!("{}/hub/sequences/{sid}/edit", env.base))
        .await?;
    assert!(b.text().await?.contains("Pause first for"));
    b.screenshot("09-edit").await?;
    b.goto(&format!("{}/hub/sequences/{sid}/delete", env.base))
        .await?;
    assert!(b.text().await?.contains("Deletion is irreversible"));
    b.screenshot("10-delete").await?;
    b.quit().await?;
    env.stop().await
}

#[tokio::test]
async fn the_dev_outbox_shows_captured_mail() -> anyhow::Result<()> {
    // No SMTP relay: mail is captured in PostgreSQL.
    let env = TestEnv::start("hub_outbox", &[Role::All], |_| {}).await?;
    env.create_sequence(sequence_body(
        "Captured",
        &[(
            "Hello from the outbox",
            "It stays here.",
            json!({"type": "immediately"}),
        )],
        "outbox",
    ))
    .await?;
    env.post(
        "/v1/events",
        json!({"events": [{"id": "o-1", "type": "tag_applied", "tag": "outbox",
                           "lead": {"email": "dev@example.com"}}]}),
    )
    .await?;
    eventually(Duration::from_secs(15), "the captured mail", || async {
        let (_, o) = env.get("/v1/dev/outbox").await?;
        Ok((o["messages"].as_array().map(Vec::len) == Some(1)).then_some(()))
    })
    .await?;
    let b = Browser::start(&shots()).await?;
    sign_in(&b, &env).await?;
    b.click("header nav a[href=\"/hub/outbox\"]").await?;
    b.wait_for("article.mail", Duration::from_secs(5)).await?;
    let text = b.text().await?;
    assert!(
        text.contains("Hello from the outbox") && text.contains("dev@example.com"),
        "{text}"
    );
    b.screenshot("11-dev-outbox").await?;
    b.quit().await?;
    env.stop().await
}

/// Clicks a button that submits the page's form and waits for the page that answers.
async fn submit(b: &Browser, css: &str) -> anyhow::Result<()> {
    b.script("window.__before = true").await?;
    b.click(css).await?;
    eventually(Duration::from_secs(10), "the next page", || async {
        let left = b
            .script("return window.__before !== true && document.readyState === 'complete'")
            .await?;
        Ok((left == json!(true)).then_some(()))
    })
    .await
}

/// The subjects of the editor's cards, in the order they stand.
async fn card_subjects(b: &Browser) -> anyhow::Result<Vec<String>> {
    let v = b
        .script(
            "return [...document.querySelectorAll('ol.step-cards input[name=step_subject]')]\
             .map(i => i.value)",
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

#[tokio::test]
async fn an_operator_builds_a_sequence_in_the_hub_and_previews_an_edit() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("hub_builder", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let b = Browser::start(&shots()).await?;
    sign_in(&b, &env).await?;

    // New sequence: three cards, the last one moved up to second place.
    b.click("a.button[href=\"/hub/sequences/new\"]").await?;
    b.wait_for("ol.step-cards", Duration::from_secs(5)).await?;
    b.type_into("#name", "Built in a browser").await?;
    b.type_into("#sender", "Pulse <tests@example.com>").await?;
    b.type_into(
        "ol.step-cards li:nth-child(1) input[name=step_subject]",
        "Welcome",
    )
    .await?;
    b.type_into("input[name=trigger_value]", "browser").await?;
    for _ in 0..2 {
        submit(&b, "button[value=add]").await?;
    }
    b.type_into(
        "ol.step-cards li:nth-child(2) input[name=step_subject]",
        "Third one",
    )
    .await?;
    b.type_into(
        "ol.step-cards li:nth-child(2) input[name=step_after_n]",
        "1",
    )
    .await?;
    b.type_into(
        "ol.step-cards li:nth-child(3) input[name=step_subject]",
        "Second one",
    )
    .await?;
    b.type_into(
        "ol.step-cards li:nth-child(3) input[name=step_after_n]",
        "2",
    )
    .await?;
    b.script(
        "document.querySelector('ol.step-cards li:nth-child(3) select[name=step_after_unit]').value = 'seconds';\
         document.querySelectorAll('input[name=window_day]').forEach(c => c.checked = true);\
         document.querySelector('input[name=window_start]').value = '00:00';\
         document.querySelector('input[name=window_end]').value = '00:00';",
    )
    .await?;
    submit(&b, "button[value=\"up:2\"]").await?;
    assert_eq!(
        card_subjects(&b).await?,
        ["Welcome", "Second one", "Third one"],
        "moved up without saving"
    );

    // A mistake is shown on its field, the draft kept.
    b.type_into("#max_sends_per_minute", "lots").await?;
    submit(&b, "button[value=save]").await?;
    b.wait_for("#err-max_sends_per_minute", Duration::from_secs(5))
        .await?;
    b.screenshot("12-new-sequence-error").await?;
    assert_eq!(card_subjects(&b).await?.len(), 3);
    let (_, list) = env.get("/v1/sequences").await?;
    assert_eq!(list["sequences"].as_array().map(Vec::len), Some(0));
    b.type_into("#max_sends_per_minute", "").await?;
    b.screenshot("13-new-sequence").await?;
    submit(&b, "button[value=save]").await?;
    b.wait_for("p.flash.ok", Duration::from_secs(5)).await?;
    let id = b
        .current_url()
        .await?
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let (_, seq) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(seq["steps"][1]["subject"], "Second one");
    assert_eq!(
        seq["steps"][1]["timing"],
        json!({"type": "delay", "delay": "PT2S"})
    );
    assert_eq!(
        seq["steps"][2]["timing"],
        json!({"type": "delay", "delay": "P1D"})
    );
    assert_eq!(seq["send_window"]["days"].as_array().map(Vec::len), Some(7));

    // A lead enrolled over the API gets the first two steps, in the new order.
    let (status, body) = env
        .post(
            &format!("/v1/sequences/{id}/enrollments"),
            json!({"lead": {"email": "eve@example.com"}}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let got = smtp.wait_for(2, Duration::from_secs(30)).await?;
    let subjects: Vec<_> = got.iter().filter_map(|m| m.subject.clone()).collect();
    assert_eq!(subjects, ["Welcome", "Second one"]);

    // Its activity: two sends, one lead at each of the first two steps.
    b.goto(&format!("{}/hub/sequences/{id}?range=1h", env.base))
        .await?;
    b.wait_for("figure.chart[data-chart=sends]", Duration::from_secs(5))
        .await?;
    let counts = b
        .script(
            "return [document.querySelector('[data-chart=sends]').dataset.total,\
             ...[...document.querySelectorAll('[data-chart=funnel] g[data-item]')].map(g => g.dataset.value)]",
        )
        .await?;
    assert_eq!(counts, json!(["2", "1", "1", "0"]));
    b.script("document.getElementById('activity').scrollIntoView()")
        .await?;
    b.screenshot("14-activity").await?;

    // Preview making the third step two days after: the waiting lead is re-timed; then save.
    b.goto(&format!("{}/hub/sequences/{id}/edit", env.base))
        .await?;
    b.wait_for("ol.step-cards", Duration::from_secs(5)).await?;
    b.type_into(
        "ol.step-cards li:nth-child(3) input[name=step_after_n]",
        "2",
    )
    .await?;
    submit(&b, "button[value=preview]").await?;
    b.wait_for("section.preview", Duration::from_secs(5))
        .await?;
    let said = b
        .element_text(&b.find("[data-preview=retimed]").await?)
        .await?;
    assert!(said.contains("1 waiting steps move"), "{said}");
    b.screenshot("15-edit-preview").await?;
    let (_, now) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(now["version"], seq["version"], "a preview saves nothing");
    submit(&b, "button[value=save]").await?;
    b.wait_for("p.flash.ok", Duration::from_secs(5)).await?;
    let (_, now) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(
        now["steps"][2]["timing"],
        json!({"type": "delay", "delay": "P2D"})
    );

    // The remaining pages, for the screenshots in docs/.
    for (path, shot) in [
        ("/hub/inbound", "16-what-came-back"),
        ("/hub/suppressions", "17-suppressions"),
        ("/hub/mailboxes", "18-mailboxes"),
        ("/hub/keys", "19-keys"),
        ("/hub/webhooks", "20-webhooks"),
    ] {
        b.goto(&format!("{}{path}", env.base)).await?;
        b.wait_for("main h1", Duration::from_secs(5)).await?;
        b.screenshot(shot).await?;
    }
    b.quit().await?;
    env.stop().await
}
