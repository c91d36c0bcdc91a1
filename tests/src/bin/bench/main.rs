//! The benchmark harness (`make bench`): Pulse's speed as numbers anyone can rerun, each next to
//! what the machine itself allows, measured in the same run.
//!
//! * reference — a bare lapin publish-with-confirms and consume-with-ack loop on the same broker,
//!   and a bare SMTP client (lettre over TCP_NODELAY) against the same sink;
//! * ingest — trigger events/s over HTTP, in batches with overlapping triggers and repeated ids;
//! * scheduler — due steps/s claimed and published with confirms, and the claim query's time as
//!   the schedule table grows;
//! * end to end — N enrollments all due now, sends/s until the SMTP sink accepted every one (with
//!   1 and 2 senders), checked exactly once;
//! * latency — due → accepted p50/p99 at a fixed offered rate below saturation;
//! * sending rules — the limit check's cost, a 50,000-step burst over 20 limited mailboxes (the
//!   most in any window against the limit), and a small workspace's latency beside a backlog
//!   (`rules`);
//! * webhooks — the end-to-end run with an endpoint subscribed to every send and enrollment
//!   event, next to the run without one, and the events delivered per second (`webhooks`);
//! * inbound — replies into the inbound role over SMTP: accepted (recorded) and processed per
//!   second, next to the bare SMTP client (`inbound`);
//! * memory — peak RSS of each role process.
//!
//! Roles run as separate release processes (`PULSE_BIN`, default `target/release/pulse`); the SMTP
//! sink runs in this process. Options: `--sends N`, `--rate R`, `--seconds S`, `--events N`,
//! `--rows 10000,100000,1000000`, `--json PATH`, `--quick` (stop after the end-to-end runs). Loopback only, bounded, stops by itself.

use std::{
    collections::{BTreeMap, HashSet},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod cpu;
mod data;
mod inbound;
mod ingest;
mod reference;
mod rules;
mod webhooks;

use data::{bulk_enroll, bulk_enroll_in, fill, sequence, sequence_in};
use ingest::{INGEST_CONNECTIONS, ingest};
use reference::{amqp_reference, smtp_reference};

use anyhow::Context;
use cpu::{cpu_ms_per_send, cpu_split, cpu_ticks};
use pulse_shared::{Settings, db::DEFAULT_WORKSPACE};
use pulse_tests::{
    SmtpServer, create_database, free_port, isolated_settings, smtp::Secured, tls::TestCa,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

struct Options {
    sends: usize,
    rate: usize,
    seconds: usize,
    events: usize,
    rows: Vec<i64>,
    json: String,
    bin: String,
    /// Stop after the end-to-end runs (`--quick`): the send path's figures in about two minutes.
    quick: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        sends: 20_000,
        rate: 1000,
        seconds: 10,
        events: 20_000,
        rows: vec![10_000, 100_000, 1_000_000],
        json: "target/bench/latest.json".into(),
        bin: std::env::var("PULSE_BIN").unwrap_or_else(|_| "target/release/pulse".into()),
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--sends" => o.sends = value()?.parse()?,
            "--rate" => o.rate = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--events" => o.events = value()?.parse()?,
            "--rows" => {
                o.rows = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--json" => o.json = value()?,
            "--bin" => o.bin = value()?,
            "--quick" => o.quick = true,
            other => anyhow::bail!("unknown option {other}; see the module docs"),
        }
    }
    anyhow::ensure!(
        o.sends > 0 && o.rate > 0 && o.seconds > 0 && o.events > 0,
        "counts must be positive"
    );
    Ok(o)
}

/// A role process; its peak RSS is read before it is stopped.
struct Role {
    child: Child,
}

impl Role {
    fn start(bin: &str, roles: &[&str], env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(roles)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Self {
            child: cmd.spawn().with_context(|| format!("starting {bin}"))?,
        })
    }

    /// Peak resident set size in MiB (VmHWM).
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    fn stop(mut self) -> Option<f64> {
        let rss = self.peak_rss_mib();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return rss;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        rss
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn env_for(s: &Settings, port: u16, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PULSE_DATABASE_URL", s.database_url.clone()),
        ("PULSE_AMQP_URL", s.amqp_url.clone()),
        ("PULSE_REDIS_URL", s.redis_url.clone()),
        ("PULSE_SMTP_URL", s.smtp_url.clone().unwrap_or_default()),
        ("PULSE_QUEUE", s.queue.clone()),
        ("PULSE_REDIS_PREFIX", s.redis_prefix.clone()),
        ("PULSE_API_KEY", s.api_key.clone().unwrap_or_default()),
        ("PULSE_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("PULSE_MIGRATE_ON_START", "false".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn progress(what: &str, done: usize, total: usize, started: Instant) {
    eprint!(
        "\r  {what}: {done}/{total} ({:.0}/s)   ",
        done as f64 / started.elapsed().as_secs_f64().max(1e-3)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    anyhow::ensure!(
        std::path::Path::new(&o.bin).exists(),
        "{} not found: `make bench` builds it",
        o.bin
    );
    let smtp = SmtpServer::start().await?;
    let mut s = isolated_settings("bench");
    s.smtp_url = Some(smtp.url());
    let db = create_database(&s).await?;
    pulse_shared::db::provision_key(
        &db,
        DEFAULT_WORKSPACE,
        "default",
        s.api_key.as_deref().unwrap_or_default(),
    )
    .await?;
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    let mut rss: BTreeMap<String, f64> = BTreeMap::new();
    println!(
        "Pulse benchmark: {} sends, {} events, offered {} /s for {} s ({} cores)",
        o.sends,
        o.events,
        o.rate,
        o.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // ---- references
    let (publish_ref, consume_ref) = amqp_reference(&s, o.sends).await?;
    println!("reference  RabbitMQ publish with confirms   {publish_ref:>8.0} msg/s");
    println!("reference  RabbitMQ consume with ack        {consume_ref:>8.0} msg/s");
    let smtp_ref = smtp_reference(&smtp, o.sends.min(20_000)).await?;
    println!("reference  bare SMTP client → sink          {smtp_ref:>8.0} msg/s");
    let broker_ref = publish_ref.min(consume_ref);
    results.insert("reference", json!({"amqp_publish_confirm_per_s": publish_ref, "amqp_consume_ack_per_s": consume_ref, "smtp_per_s": smtp_ref}));

    // ---- ingest
    let port = free_port()?;
    let api = Role::start(&o.bin, &["api", "ingest"], &env_for(&s, port, &[]))?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await?;
    let events_per_s = ingest(&base, s.api_key.as_deref().unwrap_or_default(), o.events).await?;
    println!(
        "ingest     events accepted and deduplicated {events_per_s:>8.0} /s  (through POST /v1/events, {INGEST_CONNECTIONS} connections; goal ≥ 10,000)"
    );
    results.insert(
        "ingest",
        json!({"events_per_s": events_per_s, "events": o.events}),
    );
    rss.insert("api+ingest".into(), api.stop().unwrap_or_default());
    sqlx::query("UPDATE sequences SET status = 'PAUSED'")
        .execute(&db)
        .await?;

    // ---- scheduler alone: claim + publish
    let seq = sequence(&db).await?;
    bulk_enroll(&db, seq, "sched", o.sends, chrono::Utc::now(), None).await?;
    let started = Instant::now();
    // No cap on the ready messages here: with no sender yet, the whole batch must be queued.
    let scheduler = Role::start(
        &o.bin,
        &["scheduler"],
        &env_for(&s, free_port()?, &[("PULSE_SCHEDULER_MAX_READY", "0")]),
    )?;
    wait_state(&db, seq.0, "QUEUED", o.sends, "queued", started).await?;
    let sched_per_s = o.sends as f64 / started.elapsed().as_secs_f64();
    println!(
        "scheduler  steps claimed and published      {sched_per_s:>8.0} /s  ({:.2} of the broker's publish rate)",
        sched_per_s / publish_ref
    );
    results.insert("scheduler", json!({"steps_per_s": sched_per_s}));

    // ---- sender alone, then end to end with 1 and 2 senders
    let started = Instant::now();
    let sender = Role::start(&o.bin, &["sender"], &env_for(&s, free_port()?, &[]))?;
    smtp_wait(&smtp, 0, o.sends, started).await?;
    let sender_per_s = o.sends as f64 / started.elapsed().as_secs_f64();
    println!("sender     one worker, queue pre-filled     {sender_per_s:>8.0} /s");
    rss.insert("sender".into(), sender.stop().unwrap_or_default());
    check_exactly_once(&[&smtp], &db, o.sends).await?;
    let mut e2e = BTreeMap::new();
    for senders in [1usize, 2] {
        let before = smtp.count();
        let seq = sequence(&db).await?;
        bulk_enroll(
            &db,
            seq,
            &format!("e2e{senders}"),
            o.sends,
            chrono::Utc::now() + chrono::Duration::seconds(2),
            None,
        )
        .await?;
        let workers: Vec<Role> = (0..senders)
            .map(|_| {
                Role::start(
                    &o.bin,
                    &["sender"],
                    &env_for(&s, free_port().unwrap_or(0), &[]),
                )
            })
            .collect::<Result<_, _>>()?;
        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(2)).await;
        let started = Instant::now();
        let cpu_before = cpu_ticks();
        smtp_wait(&smtp, before, o.sends, started).await?;
        let secs = started.elapsed().as_secs_f64();
        let split = cpu_split(&cpu_before, &cpu_ticks(), secs);
        let per_s = o.sends as f64 / secs;
        println!(
            "end to end {senders} sender(s), all due now        {per_s:>8.0} sends/s  ({:.2} of the bare broker loop)",
            per_s / broker_ref
        );
        let shown: Vec<String> = split
            .iter()
            .take(6)
            .map(|(cmd, share)| format!("{cmd} {:.0}%", share * 100.0))
            .collect();
        println!("           CPU meanwhile: {}", shown.join(" · "));
        let per_send = cpu_ms_per_send(&split, secs, o.sends);
        let shown: Vec<String> = per_send
            .iter()
            .map(|(class, ms)| format!("{class} {ms:.3}"))
            .collect();
        println!("           CPU-ms per send: {}", shown.join(" · "));
        let spent: f64 = per_send.iter().map(|(_, ms)| ms).sum();
        let budget = cpu::goal_budget_ms(broker_ref);
        println!(
            "           goal {:.2} × the broker loop = {:.0} sends/s: {budget:.3} CPU-ms per send in all; spent {spent:.3} ({:.1}× the budget)",
            cpu::GOAL_OF_BROKER,
            cpu::GOAL_OF_BROKER * broker_ref,
            spent / budget
        );
        results.insert(
            if senders == 1 {
                "cpu_ms_per_send_1_sender"
            } else {
                "cpu_ms_per_send_2_senders"
            },
            json!(per_send.into_iter().collect::<BTreeMap<_, _>>()),
        );
        results.insert(
            if senders == 1 {
                "cpu_end_to_end_1_sender"
            } else {
                "cpu_end_to_end_2_senders"
            },
            json!(split.into_iter().collect::<BTreeMap<_, _>>()),
        );
        e2e.insert(format!("senders_{senders}"), per_s);
        for w in workers {
            let r = w.stop().unwrap_or_default();
            let peak = rss.entry("sender".into()).or_default();
            *peak = peak.max(r);
        }
        check_exactly_once(&[&smtp], &db, before + o.sends).await?;
    }
    results.insert("end_to_end", json!(e2e));
    if o.quick {
        return finish(&o, &s, db, results).await;
    }

    // ---- the same with a webhook endpoint subscribed to every send and enrollment event
    let w = webhooks::phase(&o.bin, &s, &db, &smtp, o.sends).await?;
    results.insert(
        "webhooks",
        w.report(e2e.get("senders_1").copied().unwrap_or(f64::NAN)),
    );
    check_exactly_once(&[&smtp], &db, smtp.count()).await?;

    // ---- end to end through a relay requiring STARTTLS and AUTH, next to plaintext above
    let ca = TestCa::generate()?;
    let secured = SmtpServer::start_secured(Secured {
        acceptor: ca.acceptor()?,
        user: "bench".into(),
        password: "bench-secret".into(),
    })
    .await?;
    let mut s_tls = s.clone();
    s_tls.smtp_url = Some(format!(
        "smtp://bench:bench-secret@127.0.0.1:{}?tls=required",
        secured.addr.port()
    ));
    let seq = sequence(&db).await?;
    bulk_enroll(
        &db,
        seq,
        "e2etls",
        o.sends,
        chrono::Utc::now() + chrono::Duration::seconds(2),
        None,
    )
    .await?;
    let ca_file = ca.ca_path().display().to_string();
    let worker = Role::start(
        &o.bin,
        &["sender"],
        &env_for(&s_tls, free_port()?, &[("PULSE_TLS_CA_FILE", &ca_file)]),
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    smtp_wait(&secured, 0, o.sends, started).await?;
    let tls_per_s = o.sends as f64 / started.elapsed().as_secs_f64();
    let plain_per_s = e2e.get("senders_1").copied().unwrap_or(f64::NAN);
    println!(
        "end to end 1 sender, STARTTLS + AUTH        {tls_per_s:>8.0} sends/s  ({:.2} of plaintext)",
        tls_per_s / plain_per_s
    );
    results.insert(
        "end_to_end_tls",
        json!({"senders_1": tls_per_s, "of_plaintext": tls_per_s / plain_per_s}),
    );
    let r = worker.stop().unwrap_or_default();
    let peak = rss.entry("sender".into()).or_default();
    *peak = peak.max(r);
    check_exactly_once(&[&smtp, &secured], &db, smtp.count() + o.sends).await?;

    // ---- latency at a fixed offered rate
    let n = o.rate * o.seconds;
    let seq = sequence(&db).await?;
    let t0 = chrono::Utc::now() + chrono::Duration::seconds(3);
    bulk_enroll(&db, seq, "lat", n, t0, Some(o.rate)).await?;
    let before = smtp.count();
    let sender = Role::start(&o.bin, &["sender"], &env_for(&s, free_port()?, &[]))?;
    smtp_wait(&smtp, before, n, Instant::now()).await?;
    let epoch = Instant::now() - (chrono::Utc::now() - t0).to_std().unwrap_or_default();
    let lat = latencies(&smtp.received(), "b lat-", epoch, o.rate);
    let pct = |p: f64| percentile(&lat, p);
    println!(
        "latency    due → accepted at {} /s offered   p50 {:>6.0} ms  p99 {:>6.0} ms",
        o.rate,
        pct(0.5),
        pct(0.99)
    );
    results.insert("latency", json!({"offered_per_s": o.rate, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "samples": lat.len()}));
    let r = sender.stop().unwrap_or_default();
    let peak = rss.entry("sender".into()).or_default();
    *peak = peak.max(r);
    rss.insert("scheduler".into(), scheduler.stop().unwrap_or_default());

    // ---- inbound: replies over SMTP into the inbound role
    let replies = o.sends.min(10_000);
    let m = inbound::phase(&o.bin, &s, &db, replies).await?;
    println!(
        "inbound    {replies} replies accepted (recorded) {:>8.0} /s  ({:.2} of the bare SMTP client)",
        m.accepted_per_s,
        m.accepted_per_s / smtp_ref
    );
    println!(
        "inbound    replies processed                {:>8.0} /s",
        m.processed_per_s
    );
    results.insert(
        "inbound",
        json!({"replies": replies, "accepted_per_s": m.accepted_per_s, "processed_per_s": m.processed_per_s, "of_bare_smtp": m.accepted_per_s / smtp_ref}),
    );
    rss.insert("inbound".into(), m.peak_rss_mib);

    // ---- claim time as the schedule table grows
    let mut claims = BTreeMap::new();
    let seq = sequence(&db).await?;
    let mut have = 0i64;
    for rows in &o.rows {
        let add = rows - have;
        if add > 0 {
            let load = Instant::now();
            fill(
                &db,
                seq,
                have,
                add,
                chrono::Utc::now() + chrono::Duration::days(30),
            )
            .await?;
            eprintln!(
                "  loaded {add} rows in {:.0} s",
                load.elapsed().as_secs_f64()
            );
            have = *rows;
        }
        sqlx::query("ANALYZE step_runs").execute(&db).await?;
        let ms = claim_ms(&db).await?;
        println!("scheduler  claim of 500 due with {rows:>9} scheduled rows  {ms:>6.1} ms");
        claims.insert(rows.to_string(), ms);
    }
    results.insert("claim_ms_by_rows", json!(claims));
    // A paused sequence's due backlog must not slow the claims of the others.
    let paused = sequence(&db).await?;
    bulk_enroll(&db, paused, "held", 100_000, chrono::Utc::now(), None).await?;
    sqlx::query("UPDATE sequences SET status = 'PAUSED' WHERE id = $1")
        .bind(paused.0)
        .execute(&db)
        .await?;
    sqlx::query("ANALYZE step_runs").execute(&db).await?;
    let behind_paused = claim_ms(&db).await?;
    println!("scheduler  claim of 500 due beside 100000 paused due rows {behind_paused:>6.1} ms");
    results.insert("claim_ms_beside_paused_backlog", json!(behind_paused));
    // ---- sending rules: the limit check's cost, a burst over mailbox limits, fairness. Last:
    // the burst's deferrals leave dead index entries behind that slow the claim until a vacuum,
    // which the claim measurements above must not see.
    let r = rules::phase(&o, &s, &db, &smtp).await?;
    r.print();
    results.insert("sending_rules", serde_json::to_value(&r)?);

    for (role, mib) in &rss {
        println!("memory     peak RSS {role:<11} {mib:>6.1} MiB");
    }
    results.insert("peak_rss_mib", json!(rss));
    finish(&o, &s, db, results).await
}

/// Writes the JSON report and drops the bench's database.
async fn finish(
    o: &Options,
    s: &Settings,
    db: PgPool,
    results: BTreeMap<&str, Value>,
) -> anyhow::Result<()> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = json!({"commit": commit, "at": chrono::Utc::now(), "options": {"sends": o.sends, "rate": o.rate, "seconds": o.seconds, "events": o.events}, "results": results});
    if let Some(dir) = std::path::Path::new(&o.json).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.json, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", o.json);
    db.close().await;
    pulse_tests::cleanup(s).await
}

/// Due → accepted, in ms and sorted, of the messages whose subject is `prefix` and a lead
/// number `i` (due `i / per_second` seconds after `epoch`, as [`bulk_enroll`] timed them).
fn latencies(
    received: &[pulse_tests::smtp::Received],
    prefix: &str,
    epoch: Instant,
    per_second: usize,
) -> Vec<f64> {
    let mut lat: Vec<f64> = received
        .iter()
        .filter_map(|m| {
            let i: f64 = m
                .subject
                .as_deref()?
                .strip_prefix(prefix)?
                .split('@')
                .next()?
                .parse()
                .ok()?;
            let due = epoch + Duration::from_secs_f64(i / per_second as f64);
            Some(m.at.saturating_duration_since(due).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    lat
}

/// The `p` quantile of sorted values (NaN when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{base} never became ready")
}

/// Waits until `n` runs of `seq` are in `state`.
async fn wait_state(
    db: &PgPool,
    seq: Uuid,
    state: &str,
    n: usize,
    what: &str,
    started: Instant,
) -> anyhow::Result<()> {
    wait_count(what, n, started, Duration::from_millis(100), async || {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM step_runs WHERE sequence_id = $1 AND state = $2",
        )
        .bind(seq)
        .bind(state)
        .fetch_one(db)
        .await?;
        Ok(usize::try_from(done)?)
    })
    .await
}

/// Waits until the sink holds `base + n` messages, showing the progress of those `n`.
async fn smtp_wait(
    smtp: &SmtpServer,
    base: usize,
    n: usize,
    started: Instant,
) -> anyhow::Result<()> {
    wait_count(
        "accepted",
        n,
        started,
        Duration::from_millis(50),
        async || Ok(smtp.count().saturating_sub(base)),
    )
    .await
}

/// Polls `count` every `every` until it reaches `n`, with a progress line at most twice a
/// second; gives up after 10 minutes.
async fn wait_count(
    what: &str,
    n: usize,
    started: Instant,
    every: Duration,
    mut count: impl AsyncFnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<()> {
    let deadline = started + Duration::from_secs(600);
    let mut shown: Option<Instant> = None;
    loop {
        let done = count().await?;
        if done >= n || shown.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            progress(what, done, n, started);
            shown = Some(Instant::now());
        }
        if done >= n {
            eprintln!();
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {n} {what} in 10 minutes"
        );
        tokio::time::sleep(every).await;
    }
}

/// Every accepted message is distinct (by Message-ID), and the ledger recorded exactly the
/// Message-IDs the sinks accepted, each SENT.
async fn check_exactly_once(
    sinks: &[&SmtpServer],
    db: &PgPool,
    expected: usize,
) -> anyhow::Result<()> {
    let received: Vec<_> = sinks.iter().flat_map(|s| s.received()).collect();
    let ids: HashSet<String> = received
        .iter()
        .filter_map(|m| m.message_id.clone())
        .collect();
    anyhow::ensure!(
        received.len() == expected,
        "{} accepted, {expected} expected",
        received.len()
    );
    anyhow::ensure!(ids.len() == expected, "{} duplicates", expected - ids.len());
    let sent: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM send_ledger WHERE state = 'SENT'")
            .fetch_all(db)
            .await?;
    let recorded: HashSet<String> = sent.into_iter().collect();
    anyhow::ensure!(
        recorded == ids,
        "the ledger's SENT keys differ from what the sink accepted"
    );
    Ok(())
}

/// The claim query of the scheduler, 500 due rows, median of 5 (rolled back).
async fn claim_ms(db: &PgPool) -> anyhow::Result<f64> {
    let seq = sequence(db).await?;
    bulk_enroll(
        db,
        seq,
        &format!("due{}", Uuid::new_v4().simple()),
        500,
        chrono::Utc::now(),
        None,
    )
    .await?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let mut tx = db.begin().await?;
        let started = Instant::now();
        // The scheduler's own claim.
        pulse_scheduler::lock_due(&mut tx, 500, std::time::Duration::from_secs(600)).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        tx.rollback().await?;
    }
    sqlx::query("UPDATE step_runs SET state = 'CANCELLED' WHERE sequence_id = $1")
        .bind(seq.0)
        .execute(db)
        .await?;
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}
