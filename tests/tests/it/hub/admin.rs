//! The Hub's Keys and Webhooks pages: an admin key makes a read key (shown once, working on
//! the API at once) and revokes it; a write key's session gets 403 there and no links to them;
//! an endpoint is added (its secret shown once), tested, disabled and deleted from the pages,
//! and its delivery log shows the test.

use std::time::Duration;

use pulse::Role;
use pulse_tests::{TestEnv, eventually};
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{Hub, between};

#[tokio::test]
async fn an_admin_makes_and_revokes_keys_and_runs_webhooks_from_the_hub() -> anyhow::Result<()> {
    let env = TestEnv::start("hub_admin", &[Role::All], |s| {
        s.webhooks.allow_private = true;
    })
    .await?;
    let hub = Hub::sign_in(&env, &env.key).await?;
    let (status, page) = hub.get("/hub/keys").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"href="/hub/webhooks""#),
        "an admin sees the links"
    );

    // A read key, shown once; it reads over the API and cannot write.
    let (status, page) = hub
        .post_page("/hub/keys", &[("label", "dashboard"), ("scope", "read")])
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    let key = between(&page, r#"<pre class="secret">"#, "</pre>")
        .unwrap_or_default()
        .to_owned();
    assert!(key.starts_with("pulse_"), "{page}");
    let (status, _) = env
        .call_as(&key, Method::GET, "/v1/sequences", None)
        .await?;
    assert_eq!(status, 200);
    let (status, _) = env
        .call_as(&key, Method::POST, "/v1/sequences", Some(json!({})))
        .await?;
    assert_eq!(status, 403);
    let (_, listed) = hub.get("/hub/keys").await?;
    assert!(!listed.contains(&key), "the key is never shown again");

    // A write key's session: no links, and 403 on the pages and their forms.
    let (_, made) = env
        .post("/v1/keys", json!({"label": "ops", "scope": "write"}))
        .await?;
    let writer = Hub::sign_in(&env, made["key"].as_str().unwrap_or_default()).await?;
    let (_, page) = writer.get("/hub/sequences").await?;
    assert!(!page.contains(r#"href="/hub/keys""#));
    let (status, _) = writer.get("/hub/keys").await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = writer.get("/hub/webhooks").await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = writer
        .post("/hub/keys", &[("label", "sneaky"), ("scope", "admin")])
        .await?;
    assert_ne!(status, StatusCode::OK);
    let (_, keys) = env.get("/v1/keys").await?;
    assert!(!keys.to_string().contains("sneaky"), "nothing made");

    // Revoke the read key: it opens nothing.
    let (_, keys) = env.get("/v1/keys").await?;
    let read_id = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["label"] == "dashboard")
        .and_then(|k| k["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    let (status, to) = hub
        .post(&format!("/hub/keys/{read_id}/revoke"), &[])
        .await?;
    assert_eq!((status, to.as_str()), (StatusCode::SEE_OTHER, "/hub/keys"));
    let (status, _) = env
        .call_as(&key, Method::GET, "/v1/sequences", None)
        .await?;
    assert_eq!(status, 401);

    // An endpoint: its secret once, a test delivery in its log, disabled, deleted.
    let (status, page) = hub
        .post_page(
            "/hub/webhooks",
            &[
                ("url", "http://127.0.0.1:9/hooks"),
                ("events", "sequence.paused"),
                ("events", "lead.suppressed"),
            ],
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    let secret = between(&page, r#"<pre class="secret">"#, "</pre>").unwrap_or_default();
    assert!(secret.starts_with("whsec_"), "{page}");
    let (_, hooks) = env.get("/v1/webhooks").await?;
    let wid = hooks["webhooks"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        hooks["webhooks"][0]["events"],
        json!(["sequence.paused", "lead.suppressed"])
    );
    let (status, _) = hub.post(&format!("/hub/webhooks/{wid}/test"), &[]).await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    eventually(Duration::from_secs(10), "the test in the log", || async {
        let (_, page) = hub.get(&format!("/hub/webhooks/{wid}")).await?;
        Ok(page.contains("webhook.test").then_some(()))
    })
    .await?;
    let (status, _) = hub
        .post(&format!("/hub/webhooks/{wid}/disable"), &[])
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, w) = env.get(&format!("/v1/webhooks/{wid}")).await?;
    assert_eq!(w["enabled"], false);
    let (status, to) = hub
        .post(&format!("/hub/webhooks/{wid}/delete"), &[])
        .await?;
    assert_eq!(
        (status, to.as_str()),
        (StatusCode::SEE_OTHER, "/hub/webhooks")
    );
    let (status, _) = env.get(&format!("/v1/webhooks/{wid}")).await?;
    assert_eq!(status, 404);
    env.stop().await
}
