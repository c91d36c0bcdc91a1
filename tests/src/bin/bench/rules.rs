//! The sending rules under load (`docs/sending-rules.md`), each next to a reference from the
//! same run:
//! * the limit check's cost: end to end with one sender, without limits (twice, before and
//!   after) and with two non-binding limits checked on every send (the Lua script in Redis);
//! * a burst over mailbox limits: `BURST` steps due at once from `MAILBOXES` mailboxes limited
//!   to `PER_MAILBOX` a second each; the most sends of one mailbox in any 1-second window on the
//!   sink's clock, as a multiple of the limit (must be ≤ 1.0), and the rate reached against the
//!   limits' total;
//! * fairness: a second workspace's steps due at 20/s while the first drains a backlog, their
//!   due → accepted p50/p99.

use std::{collections::HashMap, time::Instant};

use pulse_shared::{Settings, db::DEFAULT_WORKSPACE};
use pulse_tests::{SmtpServer, free_port};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Options, Role, bulk_enroll, bulk_enroll_in, env_for, latencies, percentile, sequence,
    sequence_in, smtp_wait,
};

const BURST: usize = 50_000;
const MAILBOXES: usize = 20;
const PER_MAILBOX: u32 = 50;
const SMALL: usize = 200;
const SMALL_PER_S: usize = 20;

#[derive(Debug, Serialize)]
pub struct RulesResult {
    pub without_limits_per_s: f64,
    pub with_limits_per_s: f64,
    pub burst: usize,
    pub mailboxes: usize,
    pub per_mailbox: u32,
    pub max_window_ratio: f64,
    pub burst_per_s: f64,
    pub burst_of_total: f64,
    pub backlog: usize,
    pub backlog_secs: f64,
    pub small_p50_ms: f64,
    pub small_p99_ms: f64,
}

impl RulesResult {
    pub fn print(&self) {
        let r = self;
        println!(
            "limits     end to end without limits       {:>8.0} sends/s",
            r.without_limits_per_s
        );
        println!(
            "limits     with 2 limits checked per send  {:>8.0} sends/s  ({:.2} of without)",
            r.with_limits_per_s,
            r.with_limits_per_s / r.without_limits_per_s
        );
        println!(
            "limits     burst of {} over {} mailboxes at {} per second each: most in any 1 s window {:.2} × the limit; {:.0} sends/s ({:.2} of the limits' total)",
            r.burst,
            r.mailboxes,
            r.per_mailbox,
            r.max_window_ratio,
            r.burst_per_s,
            r.burst_of_total
        );
        println!(
            "fairness   small workspace beside a {}-step backlog: due → accepted p50 {:.0} ms  p99 {:.0} ms (the backlog drained in {:.1} s)",
            r.backlog, r.small_p50_ms, r.small_p99_ms, r.backlog_secs
        );
    }
}

pub async fn phase(
    o: &Options,
    s: &Settings,
    db: &PgPool,
    smtp: &SmtpServer,
) -> anyhow::Result<RulesResult> {
    let scheduler = Role::start(&o.bin, &["scheduler"], &env_for(s, free_port()?, &[]))?;
    let sender = Role::start(&o.bin, &["sender"], &env_for(s, free_port()?, &[]))?;

    // The check's cost: the same run of sends, without and with limits that never bind.
    // Alternated (without, with, without) so a warming process does not favour either.
    let mut rates = Vec::new();
    for (run, limited) in [false, true, false].into_iter().enumerate() {
        let seq = sequence(db).await?;
        if limited {
            sqlx::query(
                "UPDATE sequences SET limits = '[{\"max\": 1000000, \"per\": \"PT1S\"}]' WHERE id = $1",
            )
            .bind(seq.0)
            .execute(db)
            .await?;
            set_workspace_limits(db, Some(json!([{"max": 10_000_000, "per": "P1D"}]))).await?;
        }
        let before = smtp.count();
        let started = Instant::now();
        bulk_enroll(
            db,
            seq,
            &format!("cost{run}"),
            o.sends,
            chrono::Utc::now(),
            None,
        )
        .await?;
        smtp_wait(smtp, before, o.sends, started).await?;
        rates.push(o.sends as f64 / started.elapsed().as_secs_f64());
        if limited {
            set_workspace_limits(db, None).await?;
        }
    }

    // A burst over mailbox limits.
    let limits = json!([{"max": PER_MAILBOX, "per": "PT1S"}]);
    let mut mailboxes = Vec::with_capacity(MAILBOXES);
    for i in 0..MAILBOXES {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO mailboxes (id, workspace_id, address, limits) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .bind(format!("rep{i}@example.com"))
        .bind(&limits)
        .execute(db)
        .await?;
        mailboxes.push(id);
    }
    let seq = sequence_in(db, DEFAULT_WORKSPACE, Some(&mailboxes)).await?;
    let before = smtp.count();
    let started = Instant::now();
    bulk_enroll(db, seq, "burst", BURST, chrono::Utc::now(), None).await?;
    smtp_wait(smtp, before, BURST, started).await?;
    let burst_secs = started.elapsed().as_secs_f64();
    let mut by_mailbox: HashMap<String, Vec<Instant>> = HashMap::new();
    for m in smtp.received().iter().skip(before) {
        if m.mail_from.starts_with("rep") {
            by_mailbox
                .entry(m.mail_from.clone())
                .or_default()
                .push(m.at);
        }
    }
    let mut most = 0usize;
    for times in by_mailbox.values_mut() {
        times.sort();
        let mut j = 0;
        for i in 0..times.len() {
            while times[i].duration_since(times[j]).as_secs_f64() >= 1.0 {
                j += 1;
            }
            most = most.max(i - j + 1);
        }
    }
    let burst_per_s = BURST as f64 / burst_secs;

    // Fairness: a small workspace's steps, due at 20/s, beside a backlog of the default one's.
    let backlog = o.sends;
    let small_ws = Uuid::new_v4();
    pulse_shared::db::provision_key(db, small_ws, "small", "bench-small-key").await?;
    let small = sequence_in(db, small_ws, None).await?;
    let big = sequence(db).await?;
    let t0 = chrono::Utc::now() + chrono::Duration::seconds(2);
    bulk_enroll(db, big, "backlog", backlog, t0, None).await?;
    bulk_enroll_in(db, small_ws, small, "small", SMALL, t0, Some(SMALL_PER_S)).await?;
    let before = smtp.count();
    let epoch = Instant::now() + (t0 - chrono::Utc::now()).to_std().unwrap_or_default();
    smtp_wait(smtp, before, backlog + SMALL, Instant::now()).await?;
    let received = smtp.received();
    let fresh = &received[before..];
    let backlog_done = fresh
        .iter()
        .filter(|m| subject_has(m, "b backlog-"))
        .map(|m| m.at)
        .max()
        .map_or(f64::NAN, |t| {
            t.saturating_duration_since(epoch).as_secs_f64()
        });
    let lat = latencies(fresh, "b small-", epoch, SMALL_PER_S);
    let pct = |p: f64| percentile(&lat, p);
    sender.stop();
    scheduler.stop();
    Ok(RulesResult {
        without_limits_per_s: (rates[0] + rates[2]) / 2.0,
        with_limits_per_s: rates[1],
        burst: BURST,
        mailboxes: MAILBOXES,
        per_mailbox: PER_MAILBOX,
        max_window_ratio: most as f64 / f64::from(PER_MAILBOX),
        burst_per_s,
        burst_of_total: burst_per_s / (MAILBOXES as f64 * f64::from(PER_MAILBOX)),
        backlog,
        backlog_secs: backlog_done,
        small_p50_ms: pct(0.5),
        small_p99_ms: pct(0.99),
    })
}

fn subject_has(m: &pulse_tests::smtp::Received, prefix: &str) -> bool {
    m.subject.as_deref().is_some_and(|s| s.starts_with(prefix))
}

async fn set_workspace_limits(
    db: &PgPool,
    limits: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE workspaces SET limits = $2 WHERE id = $1")
        .bind(DEFAULT_WORKSPACE)
        .bind(limits)
        .execute(db)
        .await?;
    Ok(())
}
