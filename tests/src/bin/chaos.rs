//! The chaos suite: Pulse's roles as separate processes against the real PostgreSQL, RabbitMQ and
//! Redis and a recording SMTP server, with faults injected in rounds. After each round it waits
//! for quiescence and classifies every expected send (per lead and step) by comparing the send
//! ledger with what the SMTP server accepted:
//!
//! * `ok` — accepted once, ledger SENT;
//! * `lost` — never accepted, and nothing tells the operator why;
//! * `duplicated` — accepted more than once;
//! * `unknown` — ledger UNKNOWN (the reported window), or a later step waiting behind one;
//! * `false-unknown` — ledger UNKNOWN, but the relay's record shows none of its body: a send
//!   that was never in doubt, handed to an operator anyway (a lead's later step waiting behind
//!   it counts as `unknown`);
//! * `failed` — ledger FAILED with the relay's refusal (the smtp round refuses some on purpose);
//! * `suppressed` — never sent because the lead was suppressed (each round suppresses one lead
//!   in ten while the fault strikes);
//! * `unexpected` — accepted while its sequence was paused, accepted after its lead's
//!   suppression returned, or accepted with a ledger that says it was not.
//!
//! Each round also reports its **recovery**: the seconds from the fault's end until every
//! expected send settled; the table gives its mean and max per fault, and the mean and max
//! UNKNOWN count per round. Pulse runs on its shipped leases and owner timeout here; only the
//! SMTP timeout and the retry delays are shortened, to keep rounds short.
//!
//! `cargo run --release -p pulse-tests --bin chaos -- --rounds 20` (see `make chaos`). Needs the
//! `pulse` binary built with the `failpoints` feature (`PULSE_BIN`). Traffic stays on loopback;
//! every loop is bounded; it stops by itself.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use pulse_tests::{SmtpServer, create_database, free_port, isolated_settings, smtp::AfterData};
use serde_json::{Value, json};

const FAULTS: [&str; 8] = [
    "kill-sender",
    "kill-scheduler",
    "kill-ingest",
    "crash-after-smtp",
    "rabbitmq",
    "postgres",
    "redis-paused",
    "smtp",
];
const CLASSES: [&str; 8] = [
    "ok",
    "lost",
    "duplicated",
    "unknown",
    "false-unknown",
    "failed",
    "suppressed",
    "unexpected",
];

struct Options {
    rounds: usize,
    leads: usize,
    faults: Vec<String>,
    max_seconds: u64,
    bin: String,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        rounds: 20,
        leads: 30,
        faults: FAULTS.iter().map(|f| f.to_string()).collect(),
        max_seconds: 3600,
        bin: std::env::var("PULSE_BIN").unwrap_or_else(|_| "target/chaos/release/pulse".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse()?,
            "--leads" => o.leads = value()?.parse()?,
            "--faults" => o.faults = value()?.split(',').map(str::to_owned).collect(),
            "--max-seconds" => o.max_seconds = value()?.parse()?,
            "--bin" => o.bin = value()?,
            other => anyhow::bail!("unknown option {other}; see the module docs"),
        }
    }
    for f in &o.faults {
        anyhow::ensure!(
            FAULTS.contains(&f.as_str()),
            "unknown fault {f}; one of {}",
            FAULTS.join(",")
        );
    }
    anyhow::ensure!(
        o.rounds > 0 && o.leads > 0,
        "rounds and leads must be positive"
    );
    Ok(o)
}

/// One Pulse process, restarted at will.
struct Proc {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn start(&mut self, bin: &str, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut cmd = self.command(bin);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().with_context(|| format!("starting {bin}"))?);
        Ok(())
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn restart_server(what: &str) -> anyhow::Result<()> {
    let status = Command::new("deploy/local/restart.sh")
        .args([what, "1"])
        .status()?;
    anyhow::ensure!(status.success(), "restart.sh {what} failed");
    Ok(())
}

fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis((uuid::Uuid::new_v4().as_u128() % u128::from(max_ms.max(1))) as u64)
}

struct Harness {
    opts: Options,
    smtp: SmtpServer,
    db: sqlx::PgPool,
    api: String,
    key: String,
    http: reqwest::Client,
    ingest: Proc,
    schedulers: Vec<Proc>,
    senders: Vec<Proc>,
}

impl Harness {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Retries until the API answers `ok`, as a client of a restarting service would.
    async fn call_until_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((s, v)) = self.call(method.clone(), path, Some(body.clone())).await
                && (200..300).contains(&s)
            {
                return Ok(v);
            }
            anyhow::ensure!(Instant::now() < deadline, "{path} never succeeded");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts any process that died (crash failpoints) without failpoints.
    fn revive(&mut self) -> anyhow::Result<()> {
        let bin = self.opts.bin.clone();
        for p in std::iter::once(&mut self.ingest)
            .chain(self.schedulers.iter_mut())
            .chain(self.senders.iter_mut())
        {
            if p.exited() {
                eprintln!("  {} is down; starting it again", p.name);
                p.start(&bin, &[])?;
            }
        }
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let opts = options()?;
    anyhow::ensure!(
        std::path::Path::new(&opts.bin).exists(),
        "{} not found: build it with `make chaos`",
        opts.bin
    );
    let started = Instant::now();
    let smtp = SmtpServer::start().await?;
    let mut settings = isolated_settings("chaos");
    settings.smtp_url = Some(smtp.url());
    let db = create_database(&settings).await?;
    let base_env = |port: u16| -> Vec<(String, String)> {
        [
            ("PULSE_DATABASE_URL", settings.database_url.clone()),
            ("PULSE_AMQP_URL", settings.amqp_url.clone()),
            ("PULSE_REDIS_URL", settings.redis_url.clone()),
            ("PULSE_SMTP_URL", smtp.url()),
            ("PULSE_QUEUE", settings.queue.clone()),
            ("PULSE_REDIS_PREFIX", settings.redis_prefix.clone()),
            (
                "PULSE_API_KEY",
                settings.api_key.clone().unwrap_or_default(),
            ),
            ("PULSE_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("PULSE_SCHEDULER_POLL_MS", "100".into()),
            ("PULSE_SWEEP_INTERVAL_MS", "500".into()),
            ("PULSE_SMTP_TIMEOUT_MS", "2000".into()),
            ("PULSE_RETRY_BASE_MS", "300".into()),
            ("PULSE_RETRY_MAX_MS", "2000".into()),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let api_port = free_port()?;
    let proc = |name: &str, roles: &[&str], port: u16| Proc {
        name: name.to_owned(),
        args: std::iter::once("serve".to_owned())
            .chain(roles.iter().map(|r| r.to_string()))
            .collect(),
        env: base_env(port),
        child: None,
    };
    let mut h = Harness {
        ingest: proc("api+ingest", &["api", "ingest"], api_port),
        schedulers: vec![
            proc("scheduler-1", &["scheduler"], free_port()?),
            proc("scheduler-2", &["scheduler"], free_port()?),
        ],
        senders: vec![
            proc("sender-1", &["sender"], free_port()?),
            proc("sender-2", &["sender"], free_port()?),
        ],
        api: format!("http://127.0.0.1:{api_port}"),
        key: settings.api_key.clone().unwrap_or_default(),
        http: reqwest::Client::new(),
        smtp,
        db,
        opts,
    };
    h.revive()?;
    println!(
        "chaos: {} rounds x {} faults, {} leads x 2 steps a round, roles as 5 processes ({})",
        h.opts.rounds,
        h.opts.faults.len(),
        h.opts.leads,
        h.opts.bin
    );

    let mut table: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    let mut rounds_done: BTreeMap<String, usize> = BTreeMap::new();
    // Per fault: each round's recovery and UNKNOWN count.
    let mut recoveries: BTreeMap<String, Vec<(Duration, usize)>> = BTreeMap::new();
    'rounds: for round in 1..=h.opts.rounds {
        for fault in h.opts.faults.clone() {
            if started.elapsed() > Duration::from_secs(h.opts.max_seconds) {
                println!("time limit reached; stopping");
                break 'rounds;
            }
            let t0 = Instant::now();
            let (counts, recovery) = run_round(&mut h, &fault, round)
                .await
                .with_context(|| format!("round {round} {fault}"))?;
            recoveries.entry(fault.clone()).or_default().push((
                recovery,
                ["unknown", "false-unknown"]
                    .iter()
                    .map(|c| counts.get(c).copied().unwrap_or(0))
                    .sum(),
            ));
            let line: Vec<String> = CLASSES
                .iter()
                .map(|c| format!("{c} {}", counts.get(c).copied().unwrap_or(0)))
                .collect();
            println!(
                "round {round:>2} {fault:<16} {:>5.1}s  recovery {:>5.1}s  {}",
                t0.elapsed().as_secs_f64(),
                recovery.as_secs_f64(),
                line.join("  ")
            );
            let row = table.entry(fault.clone()).or_default();
            for (c, n) in counts {
                *row.entry(c).or_default() += n;
            }
            *rounds_done.entry(fault).or_default() += 1;
        }
    }

    println!(
        "\n| fault | rounds | {} | recovery s (mean / max) | unknown per round (mean / max) |",
        CLASSES.join(" | ")
    );
    println!("|---|---|{}---|---|", "---|".repeat(CLASSES.len()));
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for (fault, row) in &table {
        let cells: Vec<String> = CLASSES
            .iter()
            .map(|c| row.get(c).copied().unwrap_or(0).to_string())
            .collect();
        let per_round = recoveries.get(fault).map(Vec::as_slice).unwrap_or_default();
        let n = per_round.len().max(1) as f64;
        let secs: Vec<f64> = per_round.iter().map(|(d, _)| d.as_secs_f64()).collect();
        let unknown: Vec<usize> = per_round.iter().map(|(_, u)| *u).collect();
        println!(
            "| {fault} | {} | {} | {:.1} / {:.1} | {:.1} / {} |",
            rounds_done.get(fault).copied().unwrap_or(0),
            cells.join(" | "),
            secs.iter().sum::<f64>() / n,
            secs.iter().copied().fold(0.0, f64::max),
            unknown.iter().sum::<usize>() as f64 / n,
            unknown.iter().max().copied().unwrap_or(0),
        );
        for c in CLASSES {
            *totals.entry(c).or_default() += row.get(c).copied().unwrap_or(0);
        }
    }
    let cells: Vec<String> = CLASSES
        .iter()
        .map(|c| totals.get(c).copied().unwrap_or(0).to_string())
        .collect();
    println!(
        "| **total** | {} | {} | | |",
        rounds_done.values().sum::<usize>(),
        cells.join(" | ")
    );
    println!("\n{:.0} s in all", started.elapsed().as_secs_f64());
    let bad = totals.get("lost").copied().unwrap_or(0)
        + totals.get("duplicated").copied().unwrap_or(0)
        + totals.get("unexpected").copied().unwrap_or(0)
        + totals.get("false-unknown").copied().unwrap_or(0);
    drop(h);
    pulse_tests::cleanup(&settings).await?;
    anyhow::ensure!(
        bad == 0,
        "{bad} sends lost, duplicated, unexpected or UNKNOWN without reaching the relay"
    );
    Ok(())
}

/// A round's classified sends, and its recovery: the time from the fault's end (the killed
/// process restarted, the server back, the sequence resumed) until every expected send settled.
async fn run_round(
    h: &mut Harness,
    fault: &str,
    round: usize,
) -> anyhow::Result<(BTreeMap<&'static str, usize>, Duration)> {
    let tag = format!("r{round}-{fault}");
    let seq = h
        .call_until_ok(reqwest::Method::POST, "/v1/sequences", json!({
            "name": tag,
            "steps": [
                {"subject": format!("{tag} s1 {{{{ lead.email }}}}"), "body": "one", "timing": {"type": "immediately"}},
                {"subject": format!("{tag} s2 {{{{ lead.email }}}}"), "body": "two", "timing": {"type": "immediately"}}
            ],
            "triggers": [{"type": "tag_applied", "tag": tag}],
            "sender": {"from": "Chaos <chaos@example.com>"}
        }))
        .await?;
    let seq_id = seq["id"].as_str().unwrap_or_default().to_owned();
    let leads: Vec<String> = (0..h.opts.leads)
        .map(|i| format!("{tag}-{i}@example.com"))
        .collect();
    if fault == "smtp" {
        for (i, lead) in leads.iter().enumerate() {
            match i % 10 {
                0 => h.smtp.refuse(lead, 421, Some(1)),
                1 => h.smtp.after_data(lead, AfterData::Reply(451), Some(1)),
                2 => h.smtp.after_data(lead, AfterData::Reply(554), Some(1)),
                3 => h.smtp.after_data(lead, AfterData::Drop, Some(1)),
                4 => h.smtp.after_data(lead, AfterData::AcceptThenDrop, Some(1)),
                5 => {
                    h.smtp
                        .after_data(lead, AfterData::Stall(Duration::from_millis(3000)), Some(1))
                }
                _ => {}
            }
        }
    }
    if fault == "crash-after-smtp" {
        let bin = h.opts.bin.clone();
        let victim = &mut h.senders[round % 2];
        victim.kill();
        victim.start(&bin, &[("PULSE_FAILPOINT_CRASH_AFTER_SMTP", "0.1")])?;
    }
    let events: Vec<Value> = leads
        .iter()
        .map(|l| json!({"id": format!("{tag}/{l}"), "type": "tag_applied", "tag": tag, "lead": {"email": l}}))
        .collect();

    // Enroll (retrying, as a client would) while the fault strikes at a random moment.
    let mut paused_window: Option<(Instant, Instant)> = None;
    let enrolling = async {
        for chunk in events.chunks(10) {
            h.call_until_ok(
                reqwest::Method::POST,
                "/v1/events",
                json!({"events": chunk}),
            )
            .await?;
        }
        anyhow::Ok(())
    };
    let victim = match fault {
        "kill-sender" => Some(&h.senders[round % 2]),
        "kill-scheduler" => Some(&h.schedulers[round % 2]),
        "kill-ingest" => Some(&h.ingest),
        _ => None,
    }
    .and_then(|p| Some((p.name.clone(), p.pid()?, p.command(&h.opts.bin))));
    let inject = async {
        tokio::time::sleep(jitter(800)).await;
        match (fault, victim) {
            (_, Some((name, pid, mut command))) => {
                // kill -9 at a random moment, mid-enrollment or mid-send, and start it again.
                Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()?;
                tokio::time::sleep(jitter(1000)).await;
                return Ok(Some((name, command.spawn()?)));
            }
            ("rabbitmq", _) => tokio::task::spawn_blocking(|| restart_server("rabbitmq")).await??,
            ("postgres", _) => tokio::task::spawn_blocking(|| restart_server("postgres")).await??,
            _ => {}
        }
        anyhow::Ok(None)
    };
    let (enrolled, injected) = tokio::join!(enrolling, inject);
    if let Some((name, child)) = injected? {
        let p = std::iter::once(&mut h.ingest)
            .chain(h.schedulers.iter_mut())
            .chain(h.senders.iter_mut())
            .find(|p| p.name == name)
            .context("victim")?;
        p.kill();
        p.child = Some(child);
    }
    enrolled?;
    h.revive()?;
    // One lead in ten opts out while its sends are in flight: nothing may reach it once the
    // suppression call returned.
    let opted: HashSet<String> = leads.iter().skip(9).step_by(10).cloned().collect();
    let entries: Vec<Value> = opted
        .iter()
        .map(|l| json!({"email": l, "reason": "unsubscribed"}))
        .collect();
    h.call_until_ok(
        reqwest::Method::POST,
        "/v1/suppressions",
        json!({"entries": entries}),
    )
    .await?;
    let opted_out = (opted, Instant::now());
    if fault == "redis-paused" {
        tokio::time::sleep(jitter(300)).await;
        h.call_until_ok(
            reqwest::Method::POST,
            &format!("/v1/sequences/{seq_id}/pause"),
            json!({}),
        )
        .await?;
        let paused_at = Instant::now();
        tokio::task::spawn_blocking(|| restart_server("redis")).await??;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let resumed_at = Instant::now();
        h.call_until_ok(
            reqwest::Method::POST,
            &format!("/v1/sequences/{seq_id}/resume"),
            json!({}),
        )
        .await?;
        paused_window = Some((paused_at, resumed_at));
    }

    let fault_ended = Instant::now();
    quiesce(h, &seq_id).await?;
    let recovery = fault_ended.elapsed();
    if fault == "crash-after-smtp" {
        // The failpoint must not outlive its round (it would crash a sender in the next one).
        let bin = h.opts.bin.clone();
        let victim = &mut h.senders[round % 2];
        victim.kill();
        victim.start(&bin, &[])?;
    }
    h.revive()?;
    Ok((
        classify(h, &tag, &seq_id, &leads, paused_window, &opted_out).await?,
        recovery,
    ))
}

/// Waits until nothing of the sequence is due, queued or being sent.
async fn quiesce(h: &mut Harness, seq: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        h.revive()?;
        let busy: Result<i64, _> = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM step_runs WHERE sequence_id = $1::uuid AND state IN ('SCHEDULED', 'QUEUED'))
                  + (SELECT count(*) FROM send_ledger WHERE sequence_id = $1::uuid AND state = 'SENDING')",
        )
        .bind(seq)
        .fetch_one(&h.db)
        .await;
        if matches!(busy, Ok(0)) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sequence {seq} did not quiesce (busy {busy:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn classify(
    h: &Harness,
    tag: &str,
    seq: &str,
    leads: &[String],
    paused: Option<(Instant, Instant)>,
    (opted, suppressed_at): &(HashSet<String>, Instant),
) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let ledger: Vec<(String, i32, String, Option<String>)> = sqlx::query_as(
        "SELECT l.email, sl.position, sl.state, sr.message_id
         FROM send_ledger sl JOIN leads l ON l.id = sl.lead_id
         JOIN step_runs sr ON sr.id = sl.step_run_id
         WHERE sl.sequence_id = $1::uuid",
    )
    .bind(seq)
    .fetch_all(&h.db)
    .await?;
    // What the relay saw: every body that began to arrive, whatever became of it (a crash in
    // the middle of the body, between its bytes and the final dot, is in doubt too).
    let at_relay: HashSet<String> = h.smtp.body_seen().into_iter().collect();
    let mut doubtful: HashSet<(String, i32)> = HashSet::new();
    for (email, position, state, message_id) in &ledger {
        if state == "UNKNOWN" && message_id.as_ref().is_some_and(|m| at_relay.contains(m)) {
            doubtful.insert((email.clone(), *position));
        }
    }
    let states: HashMap<(String, i32), String> =
        ledger.into_iter().map(|(e, p, s, _)| ((e, p), s)).collect();
    let mut received: HashMap<(String, i32), Vec<Instant>> = HashMap::new();
    for m in h.smtp.received() {
        let subject = m.subject.clone().unwrap_or_default();
        for step in [1, 2] {
            let prefix = format!("{tag} s{step} ");
            if let Some(email) = subject.strip_prefix(&prefix) {
                received
                    .entry((email.to_owned(), step))
                    .or_default()
                    .push(m.at);
            }
        }
    }
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for lead in leads {
        let mut behind_unknown = false;
        for step in [1, 2] {
            let key = (lead.clone(), step);
            let got = received.get(&key).map(Vec::as_slice).unwrap_or_default();
            let state = states.get(&key).map(String::as_str);
            let during_pause =
                paused.is_some_and(|(from, to)| got.iter().any(|t| *t > from && *t < to));
            let opted_out = opted.contains(lead);
            let after_opt_out = opted_out && got.iter().any(|t| t > suppressed_at);
            let class = match (got.len(), state) {
                _ if during_pause || after_opt_out => "unexpected",
                (n, _) if n > 1 => "duplicated",
                (_, Some("UNKNOWN")) if doubtful.contains(&key) => "unknown",
                (_, Some("UNKNOWN")) => "false-unknown",
                (0, _) if opted_out => "suppressed",
                (_, None) if behind_unknown => "unknown",
                (1, Some("SENT")) => "ok",
                (1, _) => "unexpected",
                (0, Some("FAILED")) => "failed",
                (_, None) if state_failed(&states, lead) => "failed",
                _ => "lost",
            };
            behind_unknown |= class == "unknown" || class == "false-unknown";
            *counts.entry(class).or_default() += 1;
        }
    }
    Ok(counts)
}

/// An earlier step of this lead FAILED, so later steps are rightly never sent.
fn state_failed(states: &HashMap<(String, i32), String>, lead: &str) -> bool {
    states
        .get(&(lead.to_owned(), 1))
        .is_some_and(|s| s == "FAILED")
}
