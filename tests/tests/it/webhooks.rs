//! Outbound webhooks from outside: an admin key makes an endpoint (its secret shown once), a
//! pause and a suppression reach it signed per Standard Webhooks (verified by the
//! `standardwebhooks` PyPI package), a receiver that answers 500 twice gets the event on the
//! third try with the same `webhook-id`, the delivery log says so, and a replay delivers again.
//! An endpoint on a private network is refused when saved, or at delivery when its name
//! resolves there.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use pulse::Role;
use pulse_tests::{TestEnv, eventually, sequence_body};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Got {
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: String,
    pub(crate) answered: u16,
}

/// A minimal HTTP receiver: answers 500 to its first `fail` requests, then 204.
pub(crate) async fn receiver(fail: usize) -> anyhow::Result<(String, Arc<Mutex<Vec<Got>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let headers: HashMap<String, String> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let answered = {
                    let mut all = seen.lock().unwrap_or_else(|e| e.into_inner());
                    let answered = if all.len() < fail { 500 } else { 204 };
                    all.push(Got {
                        headers,
                        body,
                        answered,
                    });
                    answered
                };
                let reply = format!(
                    "HTTP/1.1 {answered} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((url, got))
}

pub(crate) fn delivered(got: &Mutex<Vec<Got>>, kind: &str) -> Vec<Got> {
    got.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|g| g.body.contains(&format!("\"type\":\"{kind}\"")))
        .cloned()
        .collect()
}

/// Verifies a delivery with the `standardwebhooks` package; returns the payload it parsed.
pub(crate) async fn verify(secret: &str, g: &Got) -> anyhow::Result<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("repository root"))?
        .to_path_buf();
    let python = root.join("target/tools/openapi-client/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run deploy/local/pyclient.sh (make test does)",
        python.display()
    );
    let script = "import json, sys\nfrom standardwebhooks.webhooks import Webhook\n\
                  secret, headers, body = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n\
                  print(json.dumps(Webhook(secret).verify(body, headers)))";
    let headers = serde_json::to_string(&g.headers)?;
    let out = tokio::process::Command::new(python)
        .args(["-c", script, secret, &headers, &g.body])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "standardwebhooks refused it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test]
async fn events_reach_an_endpoint_signed_and_a_failing_receiver_gets_them_on_the_third_try()
-> anyhow::Result<()> {
    let (url, got) = receiver(2).await?;
    let env = TestEnv::start("webhooks", &[Role::All], |s| {
        s.webhooks.allow_private = true;
        s.webhooks.retry_base = Duration::from_millis(200);
    })
    .await?;
    let seq = env
        .create_sequence(sequence_body(
            "Hooked",
            &[("Hi", "b", json!({"type": "delay", "delay": "P1D"}))],
            "t",
        ))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();

    let (status, bad) = env
        .post(
            "/v1/webhooks",
            json!({"url": url, "events": ["sequence.paused", "nope"]}),
        )
        .await?;
    assert_eq!(
        (status, &bad["error"]["field"]),
        (422, &json!("events[1]")),
        "{bad}"
    );
    let (status, made) = env
        .post(
            "/v1/webhooks",
            json!({"url": url, "events": ["sequence.paused", "lead.suppressed"]}),
        )
        .await?;
    assert_eq!(status, 201, "{made}");
    let secret = made["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{made}");
    let wid = made["id"].as_str().unwrap_or_default().to_owned();
    let (_, listed) = env.get("/v1/webhooks").await?;
    assert!(
        listed["webhooks"][0].get("secret").is_none(),
        "never shown again: {listed}"
    );
    // Webhooks need an admin key.
    let (_, write) = env
        .post("/v1/keys", json!({"label": "w", "scope": "write"}))
        .await?;
    let (status, _) = env
        .call_as(
            write["key"].as_str().unwrap_or_default(),
            Method::GET,
            "/v1/webhooks",
            None,
        )
        .await?;
    assert_eq!(status, 403);

    // A pause: refused twice by the receiver, delivered on the third try, same webhook-id.
    let (status, _) = env
        .call(Method::POST, &format!("/v1/sequences/{sid}/pause"), None)
        .await?;
    assert_eq!(status, 200);
    let tries = eventually(Duration::from_secs(20), "the third try", || async {
        let tries = delivered(&got, "sequence.paused");
        Ok((tries.len() >= 3).then_some(tries))
    })
    .await?;
    assert_eq!(
        tries.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [500, 500, 204]
    );
    let ids: Vec<&str> = tries
        .iter()
        .map(|g| g.headers["webhook-id"].as_str())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let payload = verify(&secret, &tries[2]).await?;
    assert_eq!(payload["type"], "sequence.paused");
    assert_eq!(payload["data"]["sequence_id"], sid.as_str());
    assert!(
        payload["data"]["actor"]
            .as_str()
            .is_some_and(|a| a.contains("key"))
    );
    let mut forged = tries[2].clone();
    forged.body = forged.body.replace("paused", "resumed");
    assert!(
        verify(&secret, &forged).await.is_err(),
        "a changed body does not verify"
    );

    // A suppression is an event too; the delivery log says what happened to each.
    let (status, _) = env
        .post(
            "/v1/suppressions",
            json!({"entries": [{"email": "gone@example.com"}]}),
        )
        .await?;
    assert_eq!(status, 200);
    let suppressed = eventually(Duration::from_secs(10), "lead.suppressed", || async {
        Ok(delivered(&got, "lead.suppressed").pop())
    })
    .await?;
    assert_eq!(
        verify(&secret, &suppressed).await?["data"]["value"],
        "gone@example.com"
    );
    let (_, log) = env.get(&format!("/v1/webhooks/{wid}/deliveries")).await?;
    let paused = log["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["type"] == "sequence.paused")
        .cloned()
        .unwrap_or_default();
    assert_eq!(paused["state"], "DELIVERED", "{log}");
    assert_eq!(paused["attempts"], 3, "{log}");
    assert_eq!(paused["last_status"], 204, "{log}");
    assert_eq!(paused["webhook_id"], ids[0], "{log}");

    // A replay delivers the same message again.
    let (status, _) = env
        .call(
            Method::POST,
            &format!("/v1/webhooks/{wid}/deliveries/{}/replay", paused["id"]),
            None,
        )
        .await?;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(10), "the replay", || async {
        Ok((delivered(&got, "sequence.paused").len() == 4).then_some(()))
    })
    .await?;
    // Events it does not subscribe to are not sent.
    env.call(Method::POST, &format!("/v1/sequences/{sid}/resume"), None)
        .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(delivered(&got, "sequence.resumed").is_empty());
    env.stop().await
}

#[tokio::test]
async fn an_endpoint_on_a_private_network_is_refused_when_saved_and_when_its_name_resolves_there()
-> anyhow::Result<()> {
    let (url, got) = receiver(0).await?;
    let env = TestEnv::start("webhooks-ssrf", &[Role::All], |s| {
        s.webhooks.retry_base = Duration::from_secs(60);
    })
    .await?;
    // A literal private address: refused when saved.
    let (status, refused) = env
        .post(
            "/v1/webhooks",
            json!({"url": url, "events": ["sequence.paused"]}),
        )
        .await?;
    assert_eq!(
        (status, &refused["error"]["field"]),
        (422, &json!("url")),
        "{refused}"
    );
    // A name: saved, then refused at delivery once it resolves to loopback. Nothing is sent.
    let by_name = url.replace("127.0.0.1", "localhost");
    let (status, made) = env
        .post(
            "/v1/webhooks",
            json!({"url": by_name, "events": ["sequence.paused"]}),
        )
        .await?;
    assert_eq!(status, 201, "{made}");
    let wid = made["id"].as_str().unwrap_or_default().to_owned();
    let seq = env
        .create_sequence(sequence_body(
            "Guarded",
            &[("Hi", "b", json!({"type": "delay", "delay": "P1D"}))],
            "t",
        ))
        .await?;
    env.call(
        Method::POST,
        &format!(
            "/v1/sequences/{}/pause",
            seq["id"].as_str().unwrap_or_default()
        ),
        None,
    )
    .await?;
    let log = eventually(Duration::from_secs(10), "the refused attempt", || async {
        let (_, log) = env.get(&format!("/v1/webhooks/{wid}/deliveries")).await?;
        Ok((log["deliveries"][0]["attempts"] == 1).then_some(log))
    })
    .await?;
    let error = log["deliveries"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("private network"), "{log}");
    assert_eq!(
        log["deliveries"][0]["state"], "PENDING",
        "retried later: {log}"
    );
    assert!(
        got.lock().map(|g| g.is_empty()).unwrap_or(false),
        "nothing reached it"
    );
    env.stop().await
}
