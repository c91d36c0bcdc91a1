//! Provider webhooks: Amazon SES through SNS and SendGrid's Event Webhook, with payloads in the
//! providers' published formats, signed by keys this test makes with openssl (an RSA
//! certificate for SNS, a P-256 key for SendGrid). A verified report acts like mail the inbound
//! role reads; a bad signature is 401 and changes nothing.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use base64::Engine as _;
use pulse::Role;
use pulse_tests::{TestEnv, count, sent_message_id};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:pulse-feedback";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// An RSA key and a self-signed certificate (SNS's signing certificate, in this test), and a
/// P-256 key with its public key as SendGrid shows it (base64 of the DER).
fn keys(dir: &Path) -> anyhow::Result<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sns.us-east-1.amazonaws.com",
            "-keyout",
            &p("sns.key"),
            "-out",
            &p("sns.pem"),
        ],
        None,
    )?;
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &p("sg.key"),
        ],
        None,
    )?;
    let der = openssl(
        &["ec", "-in", &p("sg.key"), "-pubout", "-outform", "DER"],
        None,
    )?;
    Ok(B64.encode(der))
}

fn sign(dir: &Path, key: &str, data: &[u8]) -> anyhow::Result<String> {
    let key = dir.join(key).display().to_string();
    Ok(B64.encode(openssl(&["dgst", "-sha256", "-sign", &key], Some(data))?))
}

/// An SNS message of `kind`, signed as SNS signs (SignatureVersion 2).
fn sns(dir: &Path, kind: &str, message: &str, extra: &[(&str, &str)]) -> anyhow::Result<Value> {
    let mut m = json!({
        "Type": kind, "MessageId": uuid::Uuid::new_v4().to_string(), "TopicArn": TOPIC,
        "Message": message, "Timestamp": "2026-11-27T10:00:00.000Z", "SignatureVersion": "2",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService.pem",
    });
    for (k, v) in extra {
        m[*k] = json!(v);
    }
    let field = |k: &str| {
        m[k].as_str()
            .map(|v| format!("{k}\n{v}\n"))
            .unwrap_or_default()
    };
    let signed: String = if kind == "Notification" {
        [
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
        .iter()
        .map(|k| field(k))
        .collect()
    } else {
        [
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
        .iter()
        .map(|k| field(k))
        .collect()
    };
    m["Signature"] = json!(sign(dir, "sns.key", signed.as_bytes())?);
    Ok(m)
}

fn ses_bounce(email: &str, message_id: &str, permanent: bool) -> String {
    json!({
        "notificationType": "Bounce",
        "bounce": {"bounceType": if permanent { "Permanent" } else { "Transient" },
                   "bounceSubType": "General", "timestamp": "2026-11-27T10:00:00.000Z",
                   "bouncedRecipients": [{"emailAddress": email, "action": "failed",
                                          "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "mail": {"messageId": "0100018c-ses-id", "source": "rep@sales.test",
                 "destination": [email],
                 "commonHeaders": {"messageId": message_id, "subject": "Quick question"}}
    })
    .to_string()
}

async fn post_raw(
    env: &TestEnv,
    path: &str,
    body: &str,
    headers: &[(&str, String)],
) -> anyhow::Result<(u16, Value)> {
    let mut req = env
        .http
        .post(format!("{}{path}", env.base))
        .header("content-type", "text/plain; charset=UTF-8")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The ledger state of the send to `email`, and the reason its address is suppressed.
async fn send_and_suppression(env: &TestEnv, email: &str) -> anyhow::Result<(String, String)> {
    Ok(sqlx::query_as(
        "SELECT sl.state, s.reason FROM send_ledger sl JOIN leads l ON l.id = sl.lead_id
         JOIN suppressions s ON s.value = l.email WHERE l.email = $1",
    )
    .bind(email)
    .fetch_one(&env.db)
    .await?)
}

/// A one-route HTTP server counting the GETs it answers (SNS's SubscribeURL).
async fn confirmation_server() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/confirm?Token=t", listener.local_addr()?);
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    Ok((url, hits))
}

#[tokio::test]
async fn ses_and_sendgrid_reports_act_only_when_their_signatures_verify() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("pulse-providers-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let sendgrid_key = keys(&dir)?;
    let cert = dir.join("sns.pem");
    let env = TestEnv::start("providers", &[Role::All], |s| {
        s.inbound.ses_sns_cert_file = Some(cert);
        s.inbound.ses_topic_arns = vec![TOPIC.into()];
        s.inbound.sendgrid_webhook_key = Some(sendgrid_key);
    })
    .await?;
    env.create_sequence(json!({"name": "S", "sender": {"from": "rep@sales.test"},
        "triggers": [{"type": "tag_applied", "tag": "go"}],
        "steps": [{"subject": "Hi", "body": "One", "timing": {"type": "immediately"}},
                  {"subject": "Again", "body": "Two", "timing": {"type": "delay", "delay": "P1D"}}]}))
        .await?;
    let leads = ["ada@example.org", "bob@example.org"];
    let events: Vec<Value> = leads.iter().enumerate().map(|(i, e)| {
        json!({"id": i.to_string(), "type": "tag_applied", "tag": "go", "lead": {"email": e}})
    }).collect();
    env.post("/v1/events", json!({"events": events})).await?;
    let (ada, bob) = (
        sent_message_id(&env.db, "ada@example.org").await?,
        sent_message_id(&env.db, "bob@example.org").await?,
    );
    let recorded = || count(&env.db, "SELECT count(*) FROM inbound_messages");

    // SES: a tampered message, an old signature version and a foreign topic change nothing.
    let good = sns(
        &dir,
        "Notification",
        &ses_bounce("ada@example.org", &ada, true),
        &[],
    )?;
    let mut tampered = good.clone();
    tampered["Message"] = json!(ses_bounce("bob@example.org", &bob, true));
    let (status, _) = post_raw(&env, "/v1/inbound/ses", &tampered.to_string(), &[]).await?;
    assert_eq!(status, 401);
    let mut v1 = good.clone();
    v1["SignatureVersion"] = json!("1");
    assert_eq!(
        post_raw(&env, "/v1/inbound/ses", &v1.to_string(), &[])
            .await?
            .0,
        401
    );
    let mut moved = good.clone();
    moved["TopicArn"] = json!("arn:aws:sns:us-east-1:999:other");
    assert_eq!(
        post_raw(&env, "/v1/inbound/ses", &moved.to_string(), &[])
            .await?
            .0,
        401
    );
    // Signed, but for a topic this Pulse does not take.
    let elsewhere = sns(
        &dir,
        "Notification",
        &ses_bounce("ada@example.org", &ada, true),
        &[("TopicArn", "arn:aws:sns:us-east-1:999:other")],
    )?;
    assert_eq!(
        post_raw(&env, "/v1/inbound/ses", &elsewhere.to_string(), &[])
            .await?
            .0,
        403
    );
    assert_eq!(
        post_raw(&env, "/v1/inbound/ses", "{not json", &[]).await?.0,
        400
    );
    assert_eq!(recorded().await?, 0);
    // The real one: Ada's send bounced.
    let (status, body) = post_raw(&env, "/v1/inbound/ses", &good.to_string(), &[]).await?;
    assert_eq!(
        (status, body["recorded"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(
        send_and_suppression(&env, "ada@example.org").await?,
        ("BOUNCED".to_owned(), "bounced".to_owned())
    );

    // A subscription is confirmed by visiting its SubscribeURL once the message verifies.
    let (url, hits) = confirmation_server().await?;
    let confirm = sns(
        &dir,
        "SubscriptionConfirmation",
        "You have chosen to subscribe",
        &[("SubscribeURL", url.as_str()), ("Token", "t")],
    )?;
    let mut forged = confirm.clone();
    forged["SubscribeURL"] = json!("http://127.0.0.1:9/steal");
    assert_eq!(
        post_raw(&env, "/v1/inbound/ses", &forged.to_string(), &[])
            .await?
            .0,
        401
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let (status, body) = post_raw(&env, "/v1/inbound/ses", &confirm.to_string(), &[]).await?;
    assert_eq!(
        (status, body["confirmed"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // SendGrid: Bob reported a send as spam.
    let events = json!([
        {"email": "bob@example.org", "timestamp": 1764237600, "event": "spamreport",
         "smtp-id": bob, "sg_event_id": "ev-1", "sg_message_id": "sg-1"},
        {"email": "bob@example.org", "timestamp": 1764237600, "event": "open", "smtp-id": bob},
    ])
    .to_string();
    let now = chrono::Utc::now().timestamp().to_string();
    let signature = sign(&dir, "sg.key", format!("{now}{events}").as_bytes())?;
    let headers = |ts: &str, sig: &str| {
        vec![
            ("X-Twilio-Email-Event-Webhook-Timestamp", ts.to_owned()),
            ("X-Twilio-Email-Event-Webhook-Signature", sig.to_owned()),
        ]
    };
    let other = sign(&dir, "sg.key", b"something else")?;
    assert_eq!(
        post_raw(
            &env,
            "/v1/inbound/sendgrid",
            &events,
            &headers(&now, &other)
        )
        .await?
        .0,
        401
    );
    let old = (chrono::Utc::now().timestamp() - 3600).to_string();
    let old_sig = sign(&dir, "sg.key", format!("{old}{events}").as_bytes())?;
    assert_eq!(
        post_raw(
            &env,
            "/v1/inbound/sendgrid",
            &events,
            &headers(&old, &old_sig)
        )
        .await?
        .0,
        401
    );
    assert_eq!(
        post_raw(&env, "/v1/inbound/sendgrid", &events, &[])
            .await?
            .0,
        401
    );
    assert_eq!(recorded().await?, 1);
    let (status, body) = post_raw(
        &env,
        "/v1/inbound/sendgrid",
        &events,
        &headers(&now, &signature),
    )
    .await?;
    assert_eq!(
        (status, body["recorded"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(
        send_and_suppression(&env, "bob@example.org").await?,
        ("COMPLAINED".to_owned(), "complained".to_owned())
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.stop().await
}

#[tokio::test]
async fn provider_routes_are_absent_until_configured() -> anyhow::Result<()> {
    let env = TestEnv::start("providers_off", &[Role::Api], |_| {}).await?;
    assert_eq!(post_raw(&env, "/v1/inbound/ses", "{}", &[]).await?.0, 404);
    assert_eq!(
        post_raw(&env, "/v1/inbound/sendgrid", "[]", &[]).await?.0,
        404
    );
    env.stop().await
}
