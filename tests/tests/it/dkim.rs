//! DKIM: mail from a mailbox with a key is signed, and the signature verifies with a verifier
//! nobody here wrote (dkimpy, from PyPI), the public key served by a local DNS stand-in. A
//! message changed after signing fails the same check, so the check can fail.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;
use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, process::Command};

const VERIFY: &str = r#"
import dkim, json, sys
public, asked = sys.argv[1], []
def dns(name, timeout=5):
    asked.append(name.decode())
    return ("v=DKIM1; k=rsa; p=" + public).encode()
results = [bool(dkim.verify(raw.encode(), dnsfunc=dns)) for raw in json.load(sys.stdin)]
json.dump({"verified": results, "asked": sorted(set(asked))}, sys.stdout)
"#;

/// An RSA key: PKCS#1 PEM (what lettre signs with) and the public key for the DNS record.
async fn rsa_key() -> anyhow::Result<(String, String)> {
    let private = Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .stderr(Stdio::null())
        .output()
        .await
        .context("openssl (deploy/local/aiosmtpd.sh installs it)")?;
    anyhow::ensure!(private.status.success(), "openssl genrsa failed");
    let mut public = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = public.stdin.take().context("openssl stdin")?;
    stdin.write_all(&private.stdout).await?;
    drop(stdin);
    let der = public.wait_with_output().await?;
    anyhow::ensure!(der.status.success(), "openssl rsa -pubout failed");
    use base64::Engine as _;
    Ok((
        String::from_utf8(private.stdout)?,
        base64::engine::general_purpose::STANDARD.encode(der.stdout),
    ))
}

async fn verify(public: &str, raw: &[String]) -> anyhow::Result<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repository root")?;
    let python = root.join("target/tools/aiosmtpd/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run deploy/local/aiosmtpd.sh (make test does)",
        python.display()
    );
    let mut child = Command::new(python)
        .args(["-c", VERIFY, public])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("python stdin")?;
    stdin.write_all(&serde_json::to_vec(raw)?).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(out.status.success(), "dkimpy failed");
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test]
async fn mail_from_a_mailbox_with_a_key_is_dkim_signed_and_verifies_with_dkimpy()
-> anyhow::Result<()> {
    let (private, public) = rsa_key().await?;
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("dkim", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let (status, mailbox) = env
        .post(
            "/v1/mailboxes",
            json!({"address": "rep@example.com", "display_name": "Rep",
                   "dkim": {"selector": "pulse2026", "private_key": private}}),
        )
        .await?;
    assert_eq!(status, 201, "{mailbox}");
    assert_eq!(mailbox["dkim_selector"], "pulse2026");
    assert!(!mailbox.to_string().contains("PRIVATE KEY"), "{mailbox}");
    env.create_sequence(json!({
        "name": "Signed",
        "sender": {"mailbox_ids": [mailbox["id"]]},
        "triggers": [{"type": "tag_applied", "tag": "go"}],
        "steps": [
            {"subject": "Hello {{ lead.first_name }}", "body": "Text one",
             "html": "<p>Hi <b>{{ lead.first_name }}</b></p>", "timing": {"type": "immediately"}},
            {"subject": "", "body": "Following up", "thread": true,
             "timing": {"type": "delay", "delay": "PT1S"}},
        ],
    }))
    .await?;
    let events: Vec<Value> = ["ada", "bo", "cy"]
        .iter()
        .map(|n| {
            json!({"id": n, "type": "tag_applied", "tag": "go",
                        "lead": {"email": format!("{n}@example.com"), "first_name": n}})
        })
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;
    let received = smtp.wait_for(6, Duration::from_secs(30)).await?;
    let raw: Vec<String> = received.iter().map(|m| m.data.clone()).collect();
    assert!(raw.iter().all(|r| r.contains("DKIM-Signature:")));

    let checked = verify(&public, &raw).await?;
    assert_eq!(checked["verified"], json!(vec![true; 6]), "{checked}");
    assert_eq!(
        checked["asked"],
        json!(["pulse2026._domainkey.example.com."])
    );
    // Changed after signing: the same verifier says no.
    let tampered: Vec<String> = raw
        .iter()
        .map(|r| r.replace("Following up", "Following"))
        .collect();
    let checked = verify(&public, &tampered).await?;
    let verdicts: Vec<bool> = serde_json::from_value(checked["verified"].clone())?;
    assert_eq!(verdicts.iter().filter(|v| !**v).count(), 3, "{checked}");
    env.stop().await
}

#[tokio::test]
async fn a_workspace_key_signs_mail_from_its_domain_and_nothing_else() -> anyhow::Result<()> {
    let (private, public) = rsa_key().await?;
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("dkim", &[Role::All], |s| s.smtp_url = Some(url)).await?;
    let (status, ws) = env
        .call(
            reqwest::Method::PATCH,
            "/v1/workspace",
            Some(json!({"dkim": {"domain": "Example.COM", "selector": "ws2026", "private_key": private}})),
        )
        .await?;
    assert_eq!(status, 200, "{ws}");
    assert_eq!(
        (ws["dkim_domain"].as_str(), ws["dkim_selector"].as_str()),
        (Some("example.com"), Some("ws2026"))
    );
    assert!(!ws.to_string().contains("PRIVATE KEY"), "{ws}");
    let (status, err) = env
        .call(
            reqwest::Method::PATCH,
            "/v1/workspace",
            Some(json!({"dkim": {"domain": "not a domain", "selector": "s", "private_key": "x"}})),
        )
        .await?;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("dkim.domain")),
        "{err}"
    );
    for (name, from, tag) in [
        ("Ours", "Team <team@example.com>", "ours"),
        ("Theirs", "Other <x@other.example>", "theirs"),
    ] {
        env.create_sequence(json!({
            "name": name, "sender": {"from": from},
            "triggers": [{"type": "tag_applied", "tag": tag}],
            "steps": [{"subject": "Hi", "body": "Hello", "timing": {"type": "immediately"}}],
        }))
        .await?;
    }
    let events: Vec<Value> = ["ours", "theirs"]
        .iter()
        .flat_map(|tag| {
            (0..2).map(move |i| {
                json!({"id": format!("{tag}{i}"), "type": "tag_applied", "tag": tag,
                                       "lead": {"email": format!("{tag}{i}@leads.example")}})
            })
        })
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;
    let received = smtp.wait_for(4, Duration::from_secs(30)).await?;
    let (ours, theirs): (Vec<_>, Vec<_>) = received
        .iter()
        .partition(|m| m.mail_from == "team@example.com");
    assert_eq!((ours.len(), theirs.len()), (2, 2));
    assert!(theirs.iter().all(|m| !m.data.contains("DKIM-Signature:")));
    let raw: Vec<String> = ours.iter().map(|m| m.data.clone()).collect();
    let checked = verify(&public, &raw).await?;
    assert_eq!(checked["verified"], json!([true, true]), "{checked}");
    assert_eq!(checked["asked"], json!(["ws2026._domainkey.example.com."]));
    // Removed: the next mail goes unsigned.
    let (status, ws) = env
        .call(
            reqwest::Method::PATCH,
            "/v1/workspace",
            Some(json!({"dkim": null})),
        )
        .await?;
    assert_eq!((status, &ws["dkim_domain"]), (200, &Value::Null), "{ws}");
    env.post(
        "/v1/events",
        json!({"events": [{"id": "late", "type": "tag_applied", "tag": "ours",
                           "lead": {"email": "late@leads.example"}}]}),
    )
    .await?;
    let received = smtp.wait_for(5, Duration::from_secs(30)).await?;
    let late = received
        .iter()
        .find(|m| m.rcpt_to == ["late@leads.example"])
        .map(|m| m.data.clone())
        .unwrap_or_default();
    assert!(
        !late.is_empty() && !late.contains("DKIM-Signature:"),
        "{late}"
    );
    env.stop().await
}
