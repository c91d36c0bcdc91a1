//! The `overspeed` rule: more sends in a sending limit's period than `max_percent` % of the
//! limit (default 120 %), for any limit that applies to a sequence: its own, its mailboxes',
//! its workspace's, or a recipient domain's of its workspace. The help page's "sends going out
//! faster than configured".
//!
//! The limits are enforced at send time in Redis (`crate::limits`); this rule counts what went
//! out, from the ledger, so it catches what the enforcement could not: Redis restarted without
//! persistence (a day's counts start afresh), two deployments sharing a mailbox with separate
//! Redis, a fault in the check. [`sweep`] runs on the scheduler, on its own task and interval
//! (`PULSE_GUARDRAIL_INTERVAL_MS`), never on the claim's path.
//!
//! How a limit is counted: the sends (`sent_at`) since the later of the period's start (the
//! sliding window's, or local midnight in the scope's zone for `P1D`) and the last change of the
//! scope's limits (`limits_at`, set by a trigger; `updated_at` for a domain), so tightening a
//! limit never trips on what the looser one allowed. A limit trips only above `max_percent` %
//! and above `max + 1`, which absorbs the spread between the check's clock and the relay's.
//!
//! Cost: each count reads the ledger by `(sequence_id, created_at)` for the sequences in the
//! scope and stops one row past the threshold; a mailbox or domain count also reads the rows of
//! the scope's sequences that went elsewhere. Each count runs under a 5-second statement
//! timeout; a count that times out is logged and skipped. Sends claimed more than ten minutes
//! before the period started (a retry after a long deferral) are not counted.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{OverspeedGuard, trip};
use crate::{
    db::StoreError,
    limits::{Applicable, Period, Scope, SendLimits, day_start},
    state::SequenceStatus,
};

/// The longest one count may run.
const COUNT_TIMEOUT_MS: i64 = 5_000;

/// A sequence as the sweep sees it.
struct Seq {
    id: Uuid,
    workspace: Uuid,
    /// ACTIVE with the rule on: the percent it trips at. `None`: counted, never tripped.
    guard: Option<u32>,
    mailboxes: Vec<Uuid>,
}

/// One limit to count, and the sequences it applies to.
struct Check {
    limit: Applicable,
    /// When the scope's limits last changed.
    changed_at: DateTime<Utc>,
    /// Every sequence whose sends count against the limit.
    counted: Vec<Uuid>,
    /// Those among them that trip, with their percent.
    guarded: Vec<(Uuid, u32)>,
    mailbox: Option<Uuid>,
    domain: Option<String>,
}

impl Check {
    /// The count must exceed this for a sequence with `percent` to trip.
    fn threshold(&self, percent: u32) -> i64 {
        let max = i64::from(self.limit.rule.max);
        (max * i64::from(percent) / 100).max(max + 1)
    }

    fn since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let start = match self.limit.rule.period {
            Period::Sliding { ms } => now - chrono::Duration::milliseconds(ms),
            Period::Day => day_start(now, self.limit.zone),
        };
        start.max(self.changed_at)
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Limits counted.
    pub checked: usize,
    /// Sequences paused.
    pub tripped: usize,
    /// Counts that timed out or failed (logged).
    pub skipped: usize,
}

/// Counts every limit that applies to an ACTIVE sequence with the rule on, and pauses the
/// sequences whose sends outran one. Each count's window ends when that count starts (a sweep
/// of many limits takes a while, and a window that ended at the sweep's start would grow by
/// that while). The Redis flag is left to expire (`flags` is `None` on the scheduler): every
/// send reads the status from PostgreSQL before it is claimed, and again at its gate.
pub async fn sweep(
    db: &PgPool,
    flags: Option<&crate::pause::PauseFlags>,
) -> Result<Swept, StoreError> {
    let checks = checks(db).await?;
    let mut swept = Swept {
        checked: checks.len(),
        ..Swept::default()
    };
    for check in checks {
        let now = Utc::now();
        let since = check.since(now);
        let Some(cap) = check.guarded.iter().map(|(_, p)| check.threshold(*p)).max() else {
            continue;
        };
        let rows = match count(db, &check, (since, now), cap + 1).await {
            Ok(rows) => rows,
            Err(e) => {
                swept.skipped += 1;
                tracing::warn!(scope = ?check.limit.scope, error = %e, "overspeed count skipped");
                continue;
            }
        };
        let counted = rows.len() as i64;
        for (sequence, percent) in &check.guarded {
            let threshold = check.threshold(*percent);
            let contributed = matches!(check.limit.scope, Scope::Sequence(_))
                || rows.iter().any(|(s, _)| s == sequence);
            if counted <= threshold || !contributed {
                continue;
            }
            let examples: Vec<&str> = rows
                .iter()
                .filter(|(s, _)| s == sequence)
                .take(5)
                .map(|(_, key)| key.as_str())
                .collect();
            let evidence = json!({
                "limit": {"on": check.limit.scope.label(), "max": check.limit.rule.max,
                          "per": check.limit.rule.per},
                "sent": counted,
                "since": since,
                "max_percent": percent,
                "sequences_counted": check.counted.len(),
                "examples": examples,
            });
            if trip(db, flags, *sequence, "overspeed", evidence).await? {
                swept.tripped += 1;
            }
        }
    }
    Ok(swept)
}

/// Up to `cap` sends (sequence, key) counted against `check` within `(since, until]`.
async fn count(
    db: &PgPool,
    check: &Check,
    (since, until): (DateTime<Utc>, DateTime<Utc>),
    cap: i64,
) -> Result<Vec<(Uuid, String)>, StoreError> {
    let mut tx = db.begin().await?;
    sqlx::query(&format!("SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}"))
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT x.sequence_id, x.idempotency_key FROM unnest($1::uuid[]) AS q(id)
         CROSS JOIN LATERAL (
             SELECT sl.sequence_id, sl.idempotency_key, sl.step_run_id, sl.lead_id
             FROM send_ledger sl
             WHERE sl.sequence_id = q.id AND sl.created_at > $2 - interval '10 minutes'
               AND sl.sent_at > $2 AND sl.sent_at <= $6) x
         WHERE ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM step_runs sr
                                             WHERE sr.id = x.step_run_id AND sr.mailbox_id = $3))
           AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM leads l WHERE l.id = x.lead_id
                                             AND split_part(l.email, '@', 2) = $4))
         LIMIT $5",
    )
    .bind(&check.counted)
    .bind(since)
    .bind(check.mailbox)
    .bind(check.domain.as_deref())
    .bind(cap)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Every limit to count: those of the workspaces with an ACTIVE sequence that has the rule on.
async fn checks(db: &PgPool) -> Result<Vec<Check>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.id, s.workspace_id, s.status, s.timezone, s.limits, s.max_sends_per_minute,
                s.limits_at, s.guardrails -> 'overspeed' AS guard,
                COALESCE(s.sender_mailboxes, '{}') AS mailboxes
         FROM sequences s
         WHERE s.status IN ('ACTIVE', 'PAUSED')
           AND s.workspace_id IN (
               SELECT workspace_id FROM sequences WHERE status = 'ACTIVE'
                 AND jsonb_typeof(guardrails -> 'overspeed') IS DISTINCT FROM 'null')",
    )
    .fetch_all(db)
    .await?;
    let mut seqs = Vec::with_capacity(rows.len());
    let mut checks = Vec::new();
    for row in &rows {
        let status: SequenceStatus = row.try_get("status")?;
        let guard = match row.try_get::<Option<serde_json::Value>, _>("guard")? {
            None => Some(120),
            Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<OverspeedGuard>(v)
                    .map_err(|e| StoreError::Corrupt(format!("guardrails.overspeed: {e}")))?
                    .max_percent,
            ),
        }
        .filter(|_| status == SequenceStatus::Active);
        let seq = Seq {
            id: row.try_get("id")?,
            workspace: row.try_get("workspace_id")?,
            guard,
            mailboxes: row.try_get("mailboxes")?,
        };
        // The sequence's own limits, `max_sends_per_minute` among them.
        let zone = zone(row.try_get("timezone")?);
        let mut own = SendLimits::new(seq.workspace);
        own.add_stored(Scope::Sequence(seq.id), row.try_get("limits")?, zone)
            .map_err(StoreError::Corrupt)?;
        if let Some(per_minute) = row.try_get::<Option<i32>, _>("max_sends_per_minute")? {
            own.per_minute(seq.id, per_minute, zone);
        }
        for limit in own.list {
            checks.push(Check {
                limit,
                changed_at: row.try_get("limits_at")?,
                counted: vec![seq.id],
                guarded: seq.guard.map(|p| (seq.id, p)).into_iter().collect(),
                mailbox: None,
                domain: None,
            });
        }
        seqs.push(seq);
    }
    let workspaces: Vec<Uuid> = {
        let mut w: Vec<Uuid> = seqs.iter().map(|s| s.workspace).collect();
        w.sort();
        w.dedup();
        w
    };
    let in_workspace = |w: Uuid, pick: &dyn Fn(&Seq) -> bool| {
        let counted: Vec<Uuid> = seqs
            .iter()
            .filter(|s| s.workspace == w && pick(s))
            .map(|s| s.id)
            .collect();
        let guarded: Vec<(Uuid, u32)> = seqs
            .iter()
            .filter(|s| s.workspace == w && pick(s))
            .filter_map(|s| s.guard.map(|p| (s.id, p)))
            .collect();
        (counted, guarded)
    };
    let mut add = |scope: Scope,
                   workspace: Uuid,
                   stored: Option<serde_json::Value>,
                   zone: Tz,
                   changed_at: DateTime<Utc>,
                   pick: &dyn Fn(&Seq) -> bool|
     -> Result<(), StoreError> {
        let (counted, guarded) = in_workspace(workspace, pick);
        if guarded.is_empty() {
            return Ok(());
        }
        let mut list = SendLimits::new(workspace);
        list.add_stored(scope.clone(), stored, zone)
            .map_err(StoreError::Corrupt)?;
        for limit in list.list {
            checks.push(Check {
                limit,
                changed_at,
                counted: counted.clone(),
                guarded: guarded.clone(),
                mailbox: match &scope {
                    Scope::Mailbox { id, .. } => Some(*id),
                    _ => None,
                },
                domain: match &scope {
                    Scope::Domain(d) => Some(d.clone()),
                    _ => None,
                },
            });
        }
        Ok(())
    };
    for row in sqlx::query(
        "SELECT id, limits, timezone, limits_at FROM workspaces
         WHERE id = ANY($1) AND limits IS NOT NULL",
    )
    .bind(&workspaces)
    .fetch_all(db)
    .await?
    {
        let id: Uuid = row.try_get("id")?;
        let z = zone(row.try_get("timezone")?);
        add(
            Scope::Workspace,
            id,
            row.try_get("limits")?,
            z,
            row.try_get("limits_at")?,
            &|_| true,
        )?;
    }
    for row in sqlx::query(
        "SELECT id, workspace_id, address, limits, timezone, limits_at FROM mailboxes
         WHERE workspace_id = ANY($1) AND limits IS NOT NULL",
    )
    .bind(&workspaces)
    .fetch_all(db)
    .await?
    {
        let id: Uuid = row.try_get("id")?;
        let scope = Scope::Mailbox {
            id,
            address: row.try_get("address")?,
        };
        let z = zone(row.try_get("timezone")?);
        add(
            scope,
            row.try_get("workspace_id")?,
            row.try_get("limits")?,
            z,
            row.try_get("limits_at")?,
            &|s| s.mailboxes.contains(&id),
        )?;
    }
    for row in sqlx::query(
        "SELECT workspace_id, domain, limits, updated_at FROM domain_limits
         WHERE workspace_id = ANY($1)",
    )
    .bind(&workspaces)
    .fetch_all(db)
    .await?
    {
        add(
            Scope::Domain(row.try_get("domain")?),
            row.try_get("workspace_id")?,
            row.try_get("limits")?,
            Tz::UTC,
            row.try_get("updated_at")?,
            &|_| true,
        )?;
    }
    Ok(checks)
}

fn zone(name: Option<String>) -> Tz {
    name.and_then(|z| z.parse().ok()).unwrap_or(Tz::UTC)
}
