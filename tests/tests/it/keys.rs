//! Keys and workspaces from outside: the platform key makes a workspace and its first admin key;
//! an admin key makes read and write keys; each scope is held (403 naming the scope needed), a
//! key is never shown again, a revoked key is refused at once, and every key action is in the
//! workspace's audit log.

use pulse::Role;
use pulse_tests::TestEnv;
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "platform-admin-key-for-tests";

#[tokio::test]
async fn the_platform_key_makes_workspaces_and_scoped_keys_hold() -> anyhow::Result<()> {
    let env = TestEnv::start("keys", &[Role::Api], |s| {
        s.admin_key = Some(pulse_shared::smtp_url::Secret::new(ADMIN));
    })
    .await?;

    // Platform level: only the platform key.
    let (status, _) = env
        .call_as(&env.key.clone(), Method::GET, "/v1/admin/workspaces", None)
        .await?;
    assert_eq!(status, 401, "a workspace key is not the platform key");
    let resp = env
        .http
        .post(format!("{}/v1/admin/workspaces", env.base))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Acme"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/v1/admin/workspaces")
    );
    let made: Value = resp.json().await?;
    assert_eq!(made["workspace"]["name"], "Acme");
    assert_eq!(made["key"]["scope"], "admin");
    let acme = made["key"]["key"].as_str().unwrap_or_default().to_owned();
    assert!(acme.starts_with("pulse_"), "{made}");
    let (status, list) = env
        .call_as(ADMIN, Method::GET, "/v1/admin/workspaces", None)
        .await?;
    assert_eq!(status, 200);
    assert!(
        list["workspaces"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["name"] == "Acme")
    );
    let (status, body) = env
        .call_as(
            ADMIN,
            Method::POST,
            "/v1/admin/workspaces",
            Some(json!({"name": " "})),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "name");

    // The new workspace's admin key makes a read key and a write key.
    let (status, sequences) = env
        .call_as(&acme, Method::GET, "/v1/sequences", None)
        .await?;
    assert_eq!(status, 200, "{sequences}");
    let mut made_keys = Vec::new();
    for scope in ["read", "write"] {
        let (status, key) = env
            .call_as(
                &acme,
                Method::POST,
                "/v1/keys",
                Some(json!({"label": format!("{scope} key"), "scope": scope})),
            )
            .await?;
        assert_eq!(status, 201, "{key}");
        assert_eq!(key["scope"], scope);
        made_keys.push(key);
    }
    let read = made_keys[0]["key"].as_str().unwrap_or_default().to_owned();
    let write = made_keys[1]["key"].as_str().unwrap_or_default().to_owned();
    let (status, body) = env
        .call_as(
            &acme,
            Method::POST,
            "/v1/keys",
            Some(json!({"label": "x", "scope": "root"})),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "scope", "{body}");
    let (status, body) = env
        .call_as(
            &acme,
            Method::POST,
            "/v1/keys",
            Some(json!({"label": "", "scope": "read"})),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "label", "{body}");

    let body = json!({"name": "S", "sender": {"from": "a@example.com"},
                      "steps": [{"subject": "A", "body": "a", "timing": {"type": "immediately"}}]});
    let (status, seq) = env
        .call_as(&write, Method::POST, "/v1/sequences", Some(body.clone()))
        .await?;
    assert_eq!(status, 201, "a write key creates: {seq}");
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = env
        .call_as(&read, Method::GET, &format!("/v1/sequences/{sid}"), None)
        .await?;
    assert_eq!(status, 200, "a read key reads");
    let (status, refused) = env
        .call_as(
            &read,
            Method::POST,
            &format!("/v1/sequences/{sid}/pause"),
            None,
        )
        .await?;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("needs a write key")),
        "{refused}"
    );
    let (status, refused) = env.call_as(&write, Method::GET, "/v1/keys", None).await?;
    assert_eq!(status, 403, "keys need an admin key: {refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("needs an admin key")),
        "{refused}"
    );

    // Listed without the key; the provisioned key of the other workspace sees none of them.
    let (status, listed) = env.call_as(&acme, Method::GET, "/v1/keys", None).await?;
    assert_eq!(status, 200);
    let keys = listed["keys"].as_array().cloned().unwrap_or_default();
    assert_eq!(keys.len(), 3, "{listed}");
    assert!(keys.iter().all(|k| k.get("key").is_none()), "{listed}");
    assert!(
        keys.iter().any(|k| k["last_used_at"].is_string()),
        "{listed}"
    );
    let (_, other) = env.get("/v1/keys").await?;
    assert!(
        other["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|k| k["label"] != "read key"),
        "{other}"
    );

    // Revoked: refused from the next request on.
    let read_id = made_keys[0]["id"].as_str().unwrap_or_default().to_owned();
    let (status, revoked) = env
        .call_as(&acme, Method::DELETE, &format!("/v1/keys/{read_id}"), None)
        .await?;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, _) = env
        .call_as(&read, Method::GET, &format!("/v1/sequences/{sid}"), None)
        .await?;
    assert_eq!(status, 401, "a revoked key opens nothing");
    let (status, _) = env
        .call_as(
            &acme,
            Method::DELETE,
            &format!("/v1/keys/{}", uuid::Uuid::new_v4()),
            None,
        )
        .await?;
    assert_eq!(status, 404);

    // Every key action is in the workspace's audit log, newest first.
    let (status, audit) = env
        .call_as(&acme, Method::GET, "/v1/audit?limit=2", None)
        .await?;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["key_revoked", "key_created"], "{audit}");
    assert_eq!(audit["events"][0]["detail"]["label"], "read key");
    let next = audit["next"].as_i64().unwrap_or_default();
    let (_, rest) = env
        .call_as(
            &acme,
            Method::GET,
            &format!("/v1/audit?before={next}"),
            None,
        )
        .await?;
    let rest: Vec<&str> = rest["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        rest,
        ["key_created", "key_created"],
        "the read key's and the first admin key's"
    );
    env.stop().await
}
