//! The `pulse` binary as a user runs it: configured by environment variables only, migrating,
//! serving every role, refusing bad configuration with a message, exporting traces, and
//! draining on SIGTERM.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pulse_shared::Settings;
use pulse_tests::{SmtpServer, free_port, isolated_settings, sequence_body};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_pulse");

fn command(settings: &Settings) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PULSE_DATABASE_URL", &settings.database_url)
        .env("PULSE_AMQP_URL", &settings.amqp_url)
        .env("PULSE_REDIS_URL", &settings.redis_url)
        .env("PULSE_HTTP_ADDR", settings.http_addr.to_string())
        // `serve all` includes the inbound listener: any free port, so tests never collide.
        .env("PULSE_INBOUND_SMTP_ADDR", "127.0.0.1:0")
        .env("PULSE_QUEUE", &settings.queue)
        .env("PULSE_REDIS_PREFIX", &settings.redis_prefix)
        .env(
            "PULSE_API_KEY",
            settings.api_key.clone().unwrap_or_default(),
        )
        .env("PULSE_SCHEDULER_POLL_MS", "50")
        .env("RUST_LOG", "info");
    if let Some(url) = &settings.smtp_url {
        cmd.env("PULSE_SMTP_URL", url);
    }
    cmd
}

/// Sends SIGTERM to a `pulse serve` process; it must drain and exit 0 within 20 s.
fn stop(child: &mut Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let exit = wait_exit(child, Duration::from_secs(20))?;
    anyhow::ensure!(exit.success(), "pulse exited with {exit}");
    Ok(())
}

/// `pulse migrate` for `settings`; it must succeed.
fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let out = command(settings).arg("migrate").output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// POSTs `body` to the API at `base` with `key`; the status.
async fn post(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<u16> {
    let resp = http
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// The sends in `state`, polled until there is at least one (or 10 s pass: then none).
async fn sends_in(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    state: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    for _ in 0..200 {
        let list: serde_json::Value = http
            .get(format!("{base}/v1/sends?state={state}"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        let sends = list["sends"].as_array().cloned().unwrap_or_default();
        if !sends.is_empty() {
            return Ok(sends);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Vec::new())
}

/// What a fake OpenTelemetry collector received: (request line, content type, body) per request.
type Exports = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP collector on loopback: records every request and answers 200.
async fn fake_collector() -> anyhow::Result<(u16, Exports)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let got: Exports = Default::default();
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut length, mut content_type) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        if read.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            match k.to_ascii_lowercase().as_str() {
                                "content-length" => length = v.trim().parse().unwrap_or(0),
                                "content-type" => content_type = v.trim().to_owned(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if let Ok(mut g) = seen.lock() {
                        g.push((line.trim_end().to_owned(), content_type, body));
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if write.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, got))
}

fn wait_exit(child: &mut Child, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("pulse did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_configuration_is_refused_with_the_variable_named() -> anyhow::Result<()> {
    let settings = isolated_settings("bin");
    let out = command(&settings)
        .env("PULSE_HTTP_ADDR", "not-an-address")
        .args(["serve", "all"])
        .output()?;
    // `serve` failures have their own exit code (4), apart from the CLI's 1 to 3.
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PULSE_HTTP_ADDR"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // And `migrate` failures theirs (5): here, no PostgreSQL on that port.
    let out = command(&settings)
        .env(
            "PULSE_DATABASE_URL",
            "postgres://postgres@127.0.0.1:9/nothing",
        )
        .arg("migrate")
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command(&settings)
        .env("PULSE_SMTP_URL", "http://relay")
        .args(["serve", "all"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PULSE_SMTP_URL"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_sends_and_drains_an_in_flight_send_on_sigterm() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let mut settings = isolated_settings("bin");
    settings.http_addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    settings.smtp_url = Some(smtp.url());

    // `pulse migrate` creates the database and applies the schema.
    migrate(&settings)?;

    let (collector, exports) = fake_collector().await?;
    let mut child = command(&settings)
        .env(
            "PULSE_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector}"),
        )
        .args(["serve", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://{}", settings.http_addr);
    let http = reqwest::Client::new();
    let key = settings.api_key.clone().unwrap_or_default();
    wait_ready(&http, &base).await?;

    let seq = sequence_body(
        "Bin",
        &[("Hello", "From the binary", json!({"type": "immediately"}))],
        "t",
    );
    assert_eq!(post(&http, &base, &key, "/v1/sequences", &seq).await?, 201);
    let event = json!({"events": [{"id": "e1", "type": "tag_applied", "tag": "t", "lead": {"email": "ada@example.com"}}]});
    assert_eq!(post(&http, &base, &key, "/v1/events", &event).await?, 200);
    smtp.wait_for(1, Duration::from_secs(15)).await?;

    // A slow relay: SIGTERM arrives while a send waits for its reply; it must be finished and
    // recorded before the process exits.
    smtp.delay_data_reply(Duration::from_millis(1500));
    let event = json!({"events": [{"id": "e2", "type": "tag_applied", "tag": "t", "lead": {"email": "bob@example.com"}}]});
    post(&http, &base, &key, "/v1/events", &event).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while smtp.data_started() < 2 {
        anyhow::ensure!(Instant::now() < deadline, "the second send never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = wait_exit(&mut child, Duration::from_secs(20))?;
    assert!(exit.success(), "pulse exited with {exit}");
    assert_eq!(smtp.count(), 2, "the in-flight send completed");
    // Spans went out over OTLP/HTTP, the last ones flushed on the way out: the collector holds
    // the sends' SMTP spans, under the binary's service name.
    let exports = exports.lock().map(|g| g.clone()).unwrap_or_default();
    assert!(!exports.is_empty(), "no trace was exported");
    let mut spans = Vec::new();
    for (request, content_type, body) in &exports {
        assert_eq!(request, "POST /v1/traces HTTP/1.1");
        assert_eq!(content_type, "application/x-protobuf");
        spans.extend_from_slice(body);
    }
    let has = |needle: &[u8]| spans.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"smtp") && has(b"publish") && has(b"pulse"),
        "the spans of a send"
    );

    let db = pulse_shared::db::pool(&settings.database_url, 2)?;
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM send_ledger ORDER BY created_at")
            .fetch_all(&db)
            .await?;
    assert_eq!(
        states,
        vec!["SENT", "SENT"],
        "the in-flight send was recorded before exit"
    );
    db.close().await;
    pulse_tests::cleanup(&settings).await
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("pulse never became ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_smtp_acceptance_and_the_ledger_is_unknown_and_never_resent()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let mut settings = isolated_settings("crash");
    settings.http_addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    settings.smtp_url = Some(smtp.url());
    migrate(&settings)?;
    let serve = |crash: bool| -> std::io::Result<Child> {
        let mut cmd = command(&settings);
        cmd.args(["serve", "all"])
            .env("PULSE_SENDING_LEASE_MS", "1000")
            .env("PULSE_SWEEP_INTERVAL_MS", "200")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if crash {
            cmd.env("PULSE_FAILPOINT_CRASH_AFTER_SMTP", "1");
        }
        cmd.spawn()
    };
    let base = format!("http://{}", settings.http_addr);
    let http = reqwest::Client::new();
    let key = settings.api_key.clone().unwrap_or_default();

    let mut child = serve(true)?;
    wait_ready(&http, &base).await?;
    let seq = sequence_body(
        "Crash",
        &[
            ("One", "1", json!({"type": "immediately"})),
            ("Two", "2", json!({"type": "immediately"})),
        ],
        "t",
    );
    assert_eq!(post(&http, &base, &key, "/v1/sequences", &seq).await?, 201);
    let event = json!({"events": [{"id": "e1", "type": "tag_applied", "tag": "t", "lead": {"email": "ada@example.com"}}]});
    post(&http, &base, &key, "/v1/events", &event).await?;
    let exit = wait_exit(&mut child, Duration::from_secs(20))?;
    assert!(!exit.success(), "the failpoint killed the process");
    assert_eq!(
        smtp.count(),
        1,
        "the relay accepted the message before the crash"
    );

    // Back up without the failpoint: the claim is found stale and reported, never resent.
    let mut child = serve(false)?;
    wait_ready(&http, &base).await?;
    let unknown = sends_in(&http, &base, &key, "UNKNOWN").await?;
    assert_eq!(
        unknown.len(),
        1,
        "the operator sees the one send whose outcome is unknown"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(smtp.count(), 1, "never resent automatically");
    let received_id = smtp.received()[0].message_id.clone().unwrap_or_default();
    assert_eq!(
        unknown[0]["message_id"],
        received_id.as_str(),
        "the Message-ID settles it against the relay's log"
    );

    let key_of = unknown[0]["idempotency_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let resp = http
        .post(format!("{base}/v1/sends/{key_of}/resolve"))
        .bearer_auth(&key)
        .json(&json!({"outcome": "sent", "note": "found in the relay log"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    smtp.wait_for(2, Duration::from_secs(10)).await?;
    assert_eq!(
        smtp.received()[1].subject.as_deref(),
        Some("Two"),
        "the enrollment moved on"
    );

    stop(&mut child)?;
    pulse_tests::cleanup(&settings).await
}

/// A sender killed mid-transaction, before its gate, claimed nothing and the relay accepted
/// nothing: the broker delivers the unacked message again and the next process sends it, with
/// no UNKNOWN, no operator and no lease to wait for (the shipped defaults: 10 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_before_its_gate_leaves_nothing_in_doubt_and_the_send_goes_out_again()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    // The relay holds every DATA before its 354: the send waits mid-transaction, body unsent.
    smtp.delay_go_ahead(Duration::from_secs(60));
    let mut settings = isolated_settings("killgate");
    settings.http_addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    settings.smtp_url = Some(smtp.url());
    migrate(&settings)?;
    let serve = || {
        command(&settings)
            .args(["serve", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let base = format!("http://{}", settings.http_addr);
    let http = reqwest::Client::new();
    let key = settings.api_key.clone().unwrap_or_default();
    let get = |path: &str| {
        let request = http.get(format!("{base}{path}")).bearer_auth(&key);
        async move { anyhow::Ok(request.send().await?.json::<serde_json::Value>().await?) }
    };

    let mut child = serve()?;
    wait_ready(&http, &base).await?;
    let seq = sequence_body("Gate", &[("One", "1", json!({"type": "immediately"}))], "t");
    assert_eq!(post(&http, &base, &key, "/v1/sequences", &seq).await?, 201);
    let event = json!({"events": [{"id": "e1", "type": "tag_applied", "tag": "t", "lead": {"email": "ada@example.com"}}]});
    post(&http, &base, &key, "/v1/events", &event).await?;
    let started = Instant::now();
    while smtp.rcpt_attempts("ada@example.com") == 0 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get("/v1/sends").await?["sends"],
        json!([]),
        "nothing claimed before the gate"
    );
    child.kill()?;
    child.wait()?;

    smtp.delay_go_ahead(Duration::ZERO);
    let mut child = serve()?;
    wait_ready(&http, &base).await?;
    let got = smtp.wait_for(1, Duration::from_secs(30)).await?;
    assert_eq!(got[0].rcpt_to, vec!["ada@example.com".to_owned()]);
    assert_eq!(sends_in(&http, &base, &key, "SENT").await?.len(), 1);
    assert_eq!(get("/v1/sends?state=UNKNOWN").await?["sends"], json!([]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 1, "sent once");
    stop(&mut child)?;
    pulse_tests::cleanup(&settings).await
}

/// No lead address leaves the process: with a relay that echoes the recipient in its refusal
/// (`550 <address> refused …`, as Postfix does), neither the OTLP export, nor the log lines (the
/// roles' own at debug level), nor `/metrics` holds a lead's address or its local part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lead_address_leaves_the_process_in_traces_logs_or_metrics() -> anyhow::Result<()> {
    const LEADS: [&str; 2] = ["kept-lead-ada@example.com", "echoed-lead-bob@example.com"];
    let smtp = SmtpServer::start().await?;
    smtp.refuse(LEADS[1], 550, None);
    let mut settings = isolated_settings("leak");
    settings.http_addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    settings.smtp_url = Some(smtp.url());
    migrate(&settings)?;
    let (collector, exports) = fake_collector().await?;
    let log_path = std::env::temp_dir().join(format!("pulse-leak-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)?;
    let mut child = command(&settings)
        .env(
            "PULSE_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector}"),
        )
        .env(
            "RUST_LOG",
            "info,pulse=debug,pulse_api=debug,pulse_ingest=debug,pulse_scheduler=debug,\
             pulse_sender=debug,pulse_shared=debug,pulse_inbound=debug",
        )
        .args(["serve", "all"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let base = format!("http://{}", settings.http_addr);
    let http = reqwest::Client::new();
    let key = settings.api_key.clone().unwrap_or_default();
    wait_ready(&http, &base).await?;
    let seq = sequence_body(
        "Leak",
        &[("Hello", "Hi", json!({"type": "immediately"}))],
        "t",
    );
    assert_eq!(post(&http, &base, &key, "/v1/sequences", &seq).await?, 201);
    let events: Vec<_> = LEADS
        .iter()
        .enumerate()
        .map(|(i, email)| json!({"id": format!("e{i}"), "type": "tag_applied", "tag": "t", "lead": {"email": email}}))
        .collect();
    assert_eq!(
        post(
            &http,
            &base,
            &key,
            "/v1/events",
            &json!({ "events": events })
        )
        .await?,
        200
    );
    smtp.wait_for(1, Duration::from_secs(15)).await?;
    let failed = sends_in(&http, &base, &key, "FAILED").await?;
    assert_eq!(failed.len(), 1, "the refused send failed");
    let reply = failed[0]["smtp_reply"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reply.contains("550") && reply.contains("addr:"),
        "redacted: {reply}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    stop(&mut child)?;

    let logs = std::fs::read(&log_path)?;
    let _ = std::fs::remove_file(&log_path);
    let exports = exports.lock().map(|g| g.clone()).unwrap_or_default();
    let spans: Vec<u8> = exports.into_iter().flat_map(|(_, _, body)| body).collect();
    let has = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has(&spans, "smtp"), "no SMTP span was exported");
    assert!(has(&logs, "addr:"), "the refusal was logged, redacted");
    for lead in LEADS {
        let local = lead.split('@').next().unwrap_or(lead);
        for (what, hay) in [
            ("OTLP", &spans),
            ("logs", &logs),
            ("/metrics", &metrics.as_bytes().to_vec()),
        ] {
            assert!(!has(hay, local), "{lead} leaked into {what}");
        }
    }
    pulse_tests::cleanup(&settings).await
}
