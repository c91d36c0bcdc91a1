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
