//! The sender's relay connections. The order of a send on the wire: the body, then the claim's
//! mark, then the final dot, and nothing after a refused mark; a refused recipient costs an
//! RSET, not the connection. And sending through a relay that requires TLS and AUTH, as every
//! real provider does, against a server nobody here wrote: aiosmtpd (PyPI, installed by
//! `deploy/local/aiosmtpd.sh`, which `make test` runs), with a CA and a certificate generated
//! here (rcgen). STARTTLS required on one port, implicit TLS on another, AUTH required on both.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use pulse::Role;
use pulse_sender::transport::{ConnectError, Outgoing, SendError, SmtpPool, Transport};
use pulse_shared::{health::Health, smtp_url::SmtpUrl, state::LedgerState};
use pulse_tests::{
    SmtpServer, TestEnv, cleanup, count, create_database, eventually, free_port, isolated_settings,
    sequence_body, smtp::Secured, tls::TestCa,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USER: &str = "rep@example.com";
const PASSWORD: &str = "s3cret/with:odd@chars";

/// A running aiosmtpd relay and the files it uses.
struct Relay {
    starttls: u16,
    implicit: u16,
    tls: TestCa,
    _child: Child,
}

impl Relay {
    async fn start() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("repository root")?
            .to_path_buf();
        let python = root.join("target/tools/aiosmtpd/bin/python");
        anyhow::ensure!(
            python.exists(),
            "{} is missing: run deploy/local/aiosmtpd.sh (make test does)",
            python.display()
        );
        let tls = TestCa::generate()?;
        let (starttls, implicit) = (free_port()?, free_port()?);
        let mut child = Command::new(python)
            .arg(root.join("tests/relays/aiosmtpd_relay.py"))
            .args(["--cert", &tls.cert_path().display().to_string()])
            .args(["--key", &tls.key_path().display().to_string()])
            .args(["--user", USER, "--password", PASSWORD])
            .args(["--out", &tls.file("received.jsonl").display().to_string()])
            .args(["--starttls-port", &starttls.to_string()])
            .args(["--implicit-port", &implicit.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(tls.file("relay.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting aiosmtpd")?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        anyhow::ensure!(
            matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
            "aiosmtpd did not start: {ready:?}"
        );
        Ok(Self {
            starttls,
            implicit,
            tls,
            _child: child,
        })
    }

    fn ca(&self) -> Vec<u8> {
        self.tls.ca_pem.clone().into_bytes()
    }

    fn ca_path(&self) -> PathBuf {
        self.tls.ca_path()
    }

    /// Every message the relay accepted.
    fn received(&self) -> anyhow::Result<Vec<Value>> {
        let text = std::fs::read_to_string(self.tls.file("received.jsonl")).unwrap_or_default();
        text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    }

    fn url(&self, implicit: bool, credentials: Option<(&str, &str)>) -> String {
        let auth = credentials
            .map(|(u, p)| format!("{}:{}@", encode(u), encode(p)))
            .unwrap_or_default();
        if implicit {
            format!("smtps://{auth}127.0.0.1:{}", self.implicit)
        } else {
            format!("smtp://{auth}127.0.0.1:{}?tls=required", self.starttls)
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.tls.file("relay.log")).unwrap_or_default();
            eprintln!("aiosmtpd's log:\n{log}");
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn mail(to: &str) -> Outgoing {
    Outgoing {
        workspace: Uuid::nil(),
        from: "Pulse Rep <rep@example.com>".into(),
        to: to.into(),
        subject: "Over TLS".into(),
        body: "Hello over TLS".into(),
        message_id: format!("<{}@example.com>", Uuid::new_v4()),
        ..Default::default()
    }
}

/// The body reaches the relay before the mark is asked for, and the final dot only after the
/// mark said yes; when it says no, the relay has the body but never the dot, and accepts
/// nothing. The same under STARTTLS, where the held write is a TLS record.
#[tokio::test]
async fn the_final_dot_waits_for_the_mark_and_a_refused_mark_sends_nothing() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let transport = Transport::Smtp(pool(&smtp.url(), None)?.into());
    for verdict in [true, false] {
        let m = mail("ada@example.com");
        let id = m.message_id.clone();
        let session = transport
            .connect_within(Duration::from_secs(5))
            .await
            .context("a connection")?;
        let on_wire = async {
            let seen = eventually(Duration::from_secs(5), "the body at the relay", || async {
                Ok(smtp.body_seen().contains(&id).then_some(()))
            })
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The body is there; the end of DATA is not (one earlier message had its dot).
            seen.is_ok() && smtp.data_started() == usize::from(!verdict) && verdict
        };
        let sent = session.send(&m, on_wire).await;
        if verdict {
            assert_eq!(sent?.code, Some(250));
            assert_eq!(smtp.count(), 1);
        } else {
            assert!(matches!(sent, Err(SendError::Withheld)), "{sent:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!((smtp.count(), smtp.data_started()), (1, 1));
        }
    }
    // A connection whose dot was withheld is never reused; the next send gets a new one.
    let reply = transport.send(&mail("bob@example.com")).await?;
    assert_eq!(reply.code, Some(250));
    assert_eq!((smtp.count(), smtp.connections()), (2, 2));

    let relay = Relay::start().await?;
    let ca = relay.ca();
    let transport =
        Transport::Smtp(pool(&relay.url(false, Some((USER, PASSWORD))), Some(&ca))?.into());
    for verdict in [false, true] {
        let session = transport
            .connect_within(Duration::from_secs(5))
            .await
            .context("a connection")?;
        let sent = session
            .send(&mail("tls@example.com"), async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                verdict
            })
            .await;
        assert_eq!(sent.is_ok(), verdict, "{sent:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.received()?.len(), 1);
    Ok(())
}

/// A refused recipient is answered with RSET and the connection serves the next send.
#[tokio::test]
async fn a_refused_recipient_costs_an_rset_not_the_connection() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    smtp.refuse("gone@example.com", 550, None);
    smtp.refuse("busy@example.com", 451, None);
    let transport = Transport::Smtp(pool(&smtp.url(), None)?.into());
    let sent = transport.send(&mail("gone@example.com")).await;
    assert!(
        matches!(&sent, Err(SendError::Permanent(r)) if r.code == Some(550)),
        "{sent:?}"
    );
    let sent = transport.send(&mail("busy@example.com")).await;
    assert!(
        matches!(&sent, Err(SendError::Transient(r)) if r.code == Some(451)),
        "{sent:?}"
    );
    transport.send(&mail("ada@example.com")).await?;
    assert_eq!((smtp.count(), smtp.connections()), (1, 1));
    Ok(())
}

fn pool(url: &str, ca: Option<&[u8]>) -> anyhow::Result<SmtpPool> {
    Ok(SmtpPool::new(
        SmtpUrl::parse(url).map_err(anyhow::Error::msg)?,
        2,
        Duration::from_secs(10),
        ca,
    )?)
}

#[tokio::test]
async fn mail_goes_through_starttls_and_implicit_tls_with_auth() -> anyhow::Result<()> {
    let relay = Relay::start().await?;
    let ca = relay.ca();
    for (implicit, to) in [(false, "ada@example.com"), (true, "bob@example.com")] {
        let pool = pool(&relay.url(implicit, Some((USER, PASSWORD))), Some(&ca))?;
        pool.probe().await?;
        let transport = Transport::Smtp(pool.into());
        // Two sends: the second reuses the pooled, authenticated connection.
        for _ in 0..2 {
            let reply = transport.send(&mail(to)).await?;
            assert_eq!(reply.code, Some(250), "{reply:?}");
        }
    }
    // The bench's stand-in for a provider (STARTTLS and AUTH in the Rust test server) takes
    // the same URL and refuses the same way.
    let tls = TestCa::generate()?;
    let stand_in = SmtpServer::start_secured(Secured {
        acceptor: tls.acceptor()?,
        user: USER.into(),
        password: PASSWORD.into(),
    })
    .await?;
    let url = |password: &str| {
        format!(
            "smtp://{}:{}@127.0.0.1:{}?tls=required",
            encode(USER),
            encode(password),
            stand_in.addr.port()
        )
    };
    let ca_pem = tls.ca_pem.as_bytes();
    Transport::Smtp(pool(&url(PASSWORD), Some(ca_pem))?.into())
        .send(&mail("ada@example.com"))
        .await?;
    assert!(matches!(
        pool(&url("wrong"), Some(ca_pem))?.probe().await,
        Err(ConnectError::Refused(_))
    ));
    assert_eq!(stand_in.count(), 1);

    let received = relay.received()?;
    assert_eq!(received.len(), 4, "{received:?}");
    for m in &received {
        assert_eq!(m["tls"], true);
        assert_eq!(m["login"], USER);
        // MAIL FROM carries the bare address, not the display name.
        assert_eq!(m["mail_from"], "rep@example.com");
    }
    Ok(())
}

#[tokio::test]
async fn wrong_or_missing_credentials_and_untrusted_certificates_fail_clearly_and_never_send()
-> anyhow::Result<()> {
    let relay = Relay::start().await?;
    let ca = relay.ca();
    for implicit in [false, true] {
        // Wrong password: the setup is refused, AUTH named; a send is transient.
        let bad = pool(&relay.url(implicit, Some((USER, "wrong"))), Some(&ca))?;
        match bad.probe().await {
            Err(ConnectError::Refused(why)) => {
                assert!(why.contains("AUTH") && why.contains("535"), "{why}");
                assert!(!why.contains("wrong"), "the password leaked: {why}");
            }
            other => panic!("wrong password: {other:?}"),
        }
        let sent = Transport::Smtp(bad.into())
            .send(&mail("c@example.com"))
            .await;
        assert!(matches!(sent, Err(SendError::Transient(_))), "{sent:?}");

        // No credentials: the relay refuses MAIL (530); retried, never permanent.
        let anonymous = pool(&relay.url(implicit, None), Some(&ca))?;
        let sent = Transport::Smtp(anonymous.into())
            .send(&mail("d@example.com"))
            .await;
        match sent {
            Err(SendError::Transient(r)) => assert_eq!(r.code, Some(530), "{r:?}"),
            other => panic!("no credentials: {other:?}"),
        }

        // The relay's certificate is not trusted without the private CA.
        let untrusted = pool(&relay.url(implicit, Some((USER, PASSWORD))), None)?;
        match untrusted.probe().await {
            Err(ConnectError::Refused(why)) => assert!(why.contains("TLS"), "{why}"),
            other => panic!("untrusted certificate: {other:?}"),
        }
        let sent = Transport::Smtp(untrusted.into())
            .send(&mail("e@example.com"))
            .await;
        assert!(matches!(sent, Err(SendError::Transient(_))), "{sent:?}");
    }
    assert_eq!(relay.received()?.len(), 0);

    // A relay without STARTTLS: tls=required refuses it; credentials never go in clear.
    let plain = SmtpServer::start().await?;
    let port = plain.addr.port();
    for url in [
        format!("smtp://127.0.0.1:{port}?tls=required"),
        format!("smtp://u:p@127.0.0.1:{port}?tls=opportunistic"),
    ] {
        match pool(&url, None)?.probe().await {
            Err(ConnectError::Refused(why)) => assert!(why.contains("STARTTLS"), "{why}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    assert_eq!(plain.count(), 0);
    Ok(())
}

/// The whole system against the relay: the password comes from a file, the CA from
/// `PULSE_TLS_CA_FILE`; the lead's step is SENT and arrives.
#[tokio::test]
async fn pulse_sends_through_an_authenticated_relay() -> anyhow::Result<()> {
    let relay = Relay::start().await?;
    let password_file = relay.tls.file("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let url = format!(
        "smtp://{}@127.0.0.1:{}?tls=required",
        encode(USER),
        relay.starttls
    );
    let ca = relay.ca_path();
    let env = TestEnv::start("relay_tls", &[Role::All], |s| {
        s.smtp_url = Some(url);
        s.smtp_password_file = Some(password_file);
        s.tls_ca_file = Some(ca);
    })
    .await?;
    env.create_sequence(sequence_body(
        "TLS",
        &[("Hi", "Over TLS", json!({"type": "immediately"}))],
        "tls",
    ))
    .await?;
    env.post(
        "/v1/events",
        json!({"events": [{"id": "e1", "type": "tag_applied", "lead": {"email": "ada@example.com"}, "tag": "tls"}]}),
    )
    .await?;
    eventually(
        Duration::from_secs(20),
        "the send recorded SENT",
        || async {
            let sent = count(
                &env.db,
                &format!(
                    "SELECT count(*) FROM send_ledger WHERE state = '{}'",
                    LedgerState::Sent.as_str()
                ),
            )
            .await?;
            Ok((sent == 1).then_some(()))
        },
    )
    .await?;
    env.stop().await?;
    let received = relay.received()?;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["rcpt_tos"], json!(["ada@example.com"]));
    Ok(())
}

/// A sender whose relay refuses its password stays unready, says why (without the password),
/// and takes no send it would fail.
#[tokio::test]
async fn a_sender_whose_relay_refuses_auth_is_unready_and_says_why() -> anyhow::Result<()> {
    let relay = Relay::start().await?;
    let mut settings = isolated_settings("relay_auth");
    settings.smtp_url = Some(relay.url(false, Some((USER, "wrong-password"))));
    settings.tls_ca_file = Some(relay.ca_path());
    create_database(&settings).await?;
    let health = Health::default();
    let token = CancellationToken::new();
    let sender = tokio::spawn(pulse_sender::run(
        settings.clone(),
        health.clone(),
        Default::default(),
        token.clone(),
    ));
    let why = eventually(Duration::from_secs(20), "the relay's reason", || async {
        Ok(health.parts().get("smtp_relay").cloned().flatten())
    })
    .await?;
    // The sender's session is down for it too: it consumes nothing.
    assert!(matches!(health.parts().get("sender"), Some(Some(_))));
    assert!(why.contains("AUTH") && why.contains("535"), "{why}");
    assert!(
        !why.contains("wrong-password"),
        "the password leaked: {why}"
    );
    token.cancel();
    sender.await??;
    cleanup(&settings).await?;
    assert_eq!(relay.received()?.len(), 0);
    Ok(())
}
