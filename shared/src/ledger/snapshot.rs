//! What a sender reads about a step run: before sending, its content snapshot, the state of
//! its enrollment, sequence and lead, and what follows it (for the one-statement record); at the
//! gate, after its claim committed, only the state again ([`recheck_many`]). One rule,
//! [`Status::refusal`], says from either reading whether the send may go on. It only reads.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::Release;
use crate::{
    db::StoreError,
    limits::SendLimits,
    schedule::{self, Rules, StepSpec},
    smtp_url::Secret,
    state::{EnrollmentStatus, SequenceStatus, StepRunState},
};

/// The state of a step run and of everything its send depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub run: StepRunState,
    pub enrollment: EnrollmentStatus,
    pub sequence: SequenceStatus,
    /// The lead's address or domain is on the suppression list (or the lead was marked
    /// unsubscribed or bounced).
    pub lead_suppressed: bool,
}

impl Status {
    /// Why the send must not go on, and what becomes of its run; `None`: it may. A run that is
    /// no longer QUEUED is someone else's (sent, held, cancelled, a duplicate delivery):
    /// `Release::Leave`.
    pub fn refusal(&self) -> Option<(Release, String)> {
        if self.run != StepRunState::Queued {
            Some((
                Release::Leave,
                format!("step run {}", self.run.as_str().to_lowercase()),
            ))
        } else if self.sequence == SequenceStatus::Paused {
            Some((Release::Hold(None), "sequence paused".to_owned()))
        } else if self.sequence != SequenceStatus::Active {
            Some((
                Release::Cancel,
                format!("sequence {}", self.sequence.as_str().to_lowercase()),
            ))
        } else if self.enrollment != EnrollmentStatus::Active {
            Some((
                Release::Cancel,
                format!("enrollment {}", self.enrollment.as_str().to_lowercase()),
            ))
        } else if self.lead_suppressed {
            Some((Release::Skip, "lead suppressed".to_owned()))
        } else {
            None
        }
    }

    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, StoreError> {
        Ok(Self {
            run: row.try_get("state")?,
            enrollment: row.try_get("enrollment_status")?,
            sequence: row.try_get("sequence_status")?,
            lead_suppressed: row.try_get("suppressed")?,
        })
    }
}

/// The columns [`Status::from_row`] reads, for a query over `step_runs sr`, `enrollments e`,
/// `sequences s` and `leads l`.
const STATUS_COLUMNS: &str = "sr.state, e.status AS enrollment_status, s.status AS sequence_status,
     (l.unsubscribed_at IS NOT NULL OR l.bounced_at IS NOT NULL
      OR EXISTS (SELECT 1 FROM suppressions sp WHERE sp.workspace_id = sr.workspace_id
                   AND sp.kind = 'email' AND sp.value = l.email)
      OR EXISTS (SELECT 1 FROM suppressions sp WHERE sp.workspace_id = sr.workspace_id
                   AND sp.kind = 'domain' AND sp.value = split_part(l.email, '@', 2)))
         AS suppressed";

/// A step run's content snapshot and the state of everything it depends on, read before the
/// send (the claim comes later, at the gate).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub subject: String,
    pub body: String,
    pub html: Option<String>,
    pub reply_to: Option<String>,
    /// For a threaded step: the Message-ID it answers, and every earlier one (space-separated).
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
    pub from_addr: String,
    pub to_addr: String,
    pub message_id: String,
    /// The mailbox the run was frozen with: its relay and DKIM key.
    pub mailbox: Option<MailboxRoute>,
    /// The workspace's DKIM key, when it has one.
    pub workspace_dkim: Option<WorkspaceDkim>,
    pub status: Status,
    /// Failed attempts so far (deferrals); this one is `attempts + 1`.
    pub attempts: i32,
    /// Whom the message's unsubscribe link names.
    pub unsubscribe: crate::unsubscribe::Subject,
    /// What follows this step, read in the same query, for [`super::record_sent`]'s fast path.
    pub followup: Followup,
    /// The sending limits this send needs a slot under (mailbox, recipient domain, workspace,
    /// sequence), as they are now.
    pub limits: SendLimits,
    /// The staleness guard: the step's `max_lateness` and the time past which it is skipped
    /// (that long after it first came due).
    pub late_after: Option<(String, DateTime<Utc>)>,
    /// The `repeats` guardrail: a send of the same step to the same lead under another
    /// enrollment, recently enough that this send would repeat it.
    pub repeat_of: Option<crate::guardrails::repeats::Repeat>,
    /// The sequence's priority and when the step first came due: its place among sends waiting
    /// on a limit (`limits::aged_priority`).
    pub priority: i16,
    pub first_due: DateTime<Utc>,
}

/// Where a mailbox's mail goes and how it is signed, read with the snapshot (so a change to the
/// mailbox applies from the next send). Secrets never print.
#[derive(Clone, Debug)]
pub struct MailboxRoute {
    pub id: Uuid,
    /// The sender keeps what it opened for a mailbox while this is unchanged.
    pub updated_at: DateTime<Utc>,
    /// The domain DKIM signs for: the mailbox address's.
    pub domain: String,
    /// `None`: the global relay.
    pub smtp_url: Option<String>,
    pub smtp_password: Option<Secret>,
    /// Selector and private key.
    pub dkim: Option<(String, Secret)>,
}

/// A workspace's DKIM key: it signs mail from `domain` that no mailbox key signs.
#[derive(Clone, Debug)]
pub struct WorkspaceDkim {
    pub workspace: Uuid,
    pub updated_at: DateTime<Utc>,
    pub domain: String,
    pub selector: String,
    pub private_key: Secret,
}

/// The step after a claimed one and the rules that time it, as read with the snapshot. If the
/// sequence and that step are unchanged when the send is recorded (same versions), recording and
/// scheduling the next step take one statement; otherwise the full transaction recomputes.
#[derive(Clone, Debug)]
pub struct Followup {
    pub sequence: Uuid,
    pub sequence_version: i32,
    pub rules: Rules,
    pub lead_tz: Option<chrono_tz::Tz>,
    /// The next live step and its version; `None` when this is the last step.
    pub next: Option<(StepSpec, i32)>,
}

impl Followup {
    /// When the send window (in the lead's zone, else the sequence's) next opens, if it is
    /// closed at `now`: the same rule every due time goes through, checked again at send time.
    pub fn window_opens_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let zone = self.lead_tz.unwrap_or(self.rules.timezone);
        let at = crate::domain::window::next_valid(now, self.rules.window.as_ref(), zone);
        (at > now).then_some(at)
    }
}

/// Loads the snapshot of a step run.
pub async fn snapshot(db: &PgPool, step_run: Uuid) -> Result<Snapshot, StoreError> {
    let mut all = snapshot_many(db, &[step_run]).await?;
    all.pop().unwrap_or_else(|| {
        Err(StoreError::Corrupt(format!(
            "step run {step_run} not found"
        )))
    })
}

/// Loads the snapshots of many step runs in one query, one result per id, in order.
pub async fn snapshot_many(
    db: &PgPool,
    step_runs: &[Uuid],
) -> Result<Vec<Result<Snapshot, StoreError>>, StoreError> {
    use crate::{
        guardrails::repeats::{REPEAT_COLUMNS, REPEAT_JOIN},
        limits::LIMIT_COLUMNS,
    };
    let sql = format!(
        "SELECT sr.id, sr.workspace_id, sr.subject, sr.body, sr.html, sr.reply_to, sr.in_reply_to, sr.thread_refs,
                sr.from_addr, sr.to_addr, sr.message_id, sr.sequence_id, sr.attempts,
                e.lead_id, {STATUS_COLUMNS},
                s.version AS sequence_version, s.timezone, s.send_window, s.end_date,
                l.timezone AS lead_tz, nx.id AS next_id, nx.position AS next_position,
                nx.timing AS next_timing, nx.end_date AS next_end_date, nx.version AS next_version,
                mb.updated_at AS mb_updated_at,
                mb.smtp_url AS mb_smtp_url, mb.smtp_password AS mb_smtp_password,
                mb.dkim_selector AS mb_dkim_selector, mb.dkim_private_key AS mb_dkim_key,
                w.dkim_domain AS ws_dkim_domain, w.dkim_selector AS ws_dkim_selector,
                w.dkim_private_key AS ws_dkim_key, w.dkim_updated_at AS ws_dkim_updated_at,
                {LIMIT_COLUMNS}, {REPEAT_COLUMNS},
                cur.max_lateness, s.priority, COALESCE(sr.first_due_at, sr.due_at) AS first_due,
                COALESCE(sr.first_due_at, sr.due_at) + cur.max_lateness::interval AS late_after
         FROM step_runs sr
         LEFT JOIN mailboxes mb ON mb.id = sr.mailbox_id
         JOIN workspaces w ON w.id = sr.workspace_id
         JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN sequences s ON s.id = sr.sequence_id
         JOIN leads l ON l.id = e.lead_id
         LEFT JOIN domain_limits dl ON dl.workspace_id = sr.workspace_id
                                   AND dl.domain = split_part(l.email, '@', 2)
         JOIN sequence_steps cur ON cur.id = sr.step_id
         LEFT JOIN LATERAL (
             SELECT st.id, st.position, st.timing, st.end_date, st.version FROM sequence_steps st
             WHERE st.sequence_id = sr.sequence_id AND st.position > cur.position
               AND st.deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM step_runs r WHERE r.enrollment_id = sr.enrollment_id
                               AND r.generation = sr.generation AND r.step_id = st.id)
             ORDER BY st.position LIMIT 1) nx ON true
         {REPEAT_JOIN}
         WHERE sr.id = ANY($1)"
    );
    let rows = sqlx::query(&sql).bind(step_runs).fetch_all(db).await?;
    in_order(step_runs, rows, snapshot_from_row)
}

/// Reads the state of many step runs again, in one query (the gate's re-check, made after the
/// claim committed): one result per id, in order.
pub async fn recheck_many(
    db: &PgPool,
    step_runs: &[Uuid],
) -> Result<Vec<Result<Status, StoreError>>, StoreError> {
    let sql = format!(
        "SELECT sr.id, {STATUS_COLUMNS}
         FROM step_runs sr
         JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN sequences s ON s.id = sr.sequence_id
         JOIN leads l ON l.id = e.lead_id
         WHERE sr.id = ANY($1)"
    );
    let rows = sqlx::query(&sql).bind(step_runs).fetch_all(db).await?;
    in_order(step_runs, rows, |row, _| Status::from_row(row))
}

/// One result per id of `ids`, in order, from rows keyed by their `id` column.
fn in_order<T>(
    ids: &[Uuid],
    rows: Vec<sqlx::postgres::PgRow>,
    read: impl Fn(&sqlx::postgres::PgRow, Uuid) -> Result<T, StoreError>,
) -> Result<Vec<Result<T, StoreError>>, StoreError> {
    let mut by_id = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        by_id.insert(row.try_get::<Uuid, _>("id")?, row);
    }
    Ok(ids
        .iter()
        .map(|id| match by_id.get(id) {
            Some(row) => read(row, *id),
            None => Err(StoreError::Corrupt(format!("step run {id} not found"))),
        })
        .collect())
}

fn snapshot_from_row(row: &sqlx::postgres::PgRow, step_run: Uuid) -> Result<Snapshot, StoreError> {
    let status = Status::from_row(row)?;
    // A run that is not QUEUED is not sent (`Status::refusal`), whatever its content.
    let text = |col: &str| -> Result<String, StoreError> {
        match row.try_get::<Option<String>, _>(col)? {
            Some(text) => Ok(text),
            None if status.run != StepRunState::Queued => Ok(String::new()),
            None => Err(StoreError::Corrupt(format!(
                "queued step run {step_run} has no {col}"
            ))),
        }
    };
    let next = match row.try_get::<Option<Uuid>, _>("next_id")? {
        None => None,
        Some(id) => Some((
            StepSpec {
                id,
                position: row.try_get("next_position")?,
                timing: serde_json::from_value(row.try_get("next_timing")?)
                    .map_err(|e| StoreError::Corrupt(format!("step timing: {e}")))?,
                end_date: row.try_get("next_end_date")?,
            },
            row.try_get("next_version")?,
        )),
    };
    let mailbox = match row.try_get::<Option<Uuid>, _>("mb_id")? {
        None => None,
        Some(id) => {
            let address: String = row.try_get("mb_address")?;
            let selector: Option<String> = row.try_get("mb_dkim_selector")?;
            let key: Option<String> = row.try_get("mb_dkim_key")?;
            Some(MailboxRoute {
                id,
                updated_at: row.try_get("mb_updated_at")?,
                domain: address
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_default(),
                smtp_url: row.try_get("mb_smtp_url")?,
                smtp_password: row
                    .try_get::<Option<String>, _>("mb_smtp_password")?
                    .map(Secret::new),
                dkim: selector.zip(key.map(Secret::new)),
            })
        }
    };
    let limits = crate::limits::from_row(row)?;
    let workspace_dkim = match row.try_get::<Option<String>, _>("ws_dkim_domain")? {
        None => None,
        Some(domain) => Some(WorkspaceDkim {
            workspace: row.try_get("workspace_id")?,
            updated_at: row
                .try_get::<Option<DateTime<Utc>>, _>("ws_dkim_updated_at")?
                .unwrap_or_default(),
            domain,
            selector: text("ws_dkim_selector")?,
            private_key: Secret::new(text("ws_dkim_key")?),
        }),
    };
    Ok(Snapshot {
        mailbox,
        workspace_dkim,
        subject: text("subject")?,
        body: text("body")?,
        html: row.try_get("html")?,
        reply_to: row.try_get("reply_to")?,
        in_reply_to: row.try_get("in_reply_to")?,
        references: row.try_get("thread_refs")?,
        from_addr: text("from_addr")?,
        to_addr: text("to_addr")?,
        message_id: text("message_id")?,
        status,
        attempts: row.try_get("attempts")?,
        unsubscribe: crate::unsubscribe::Subject {
            workspace: row.try_get("workspace_id")?,
            lead: row.try_get("lead_id")?,
            sequence: row.try_get("sequence_id")?,
        },
        limits,
        priority: row.try_get("priority")?,
        first_due: row.try_get("first_due")?,
        repeat_of: match row.try_get::<Option<String>, _>("repeat_key")? {
            None => None,
            Some(key) => Some(crate::guardrails::repeats::Repeat {
                key,
                sent_at: row.try_get("repeat_sent_at")?,
            }),
        },
        late_after: row
            .try_get::<Option<String>, _>("max_lateness")?
            .zip(row.try_get::<Option<DateTime<Utc>>, _>("late_after")?),
        followup: Followup {
            sequence: row.try_get("sequence_id")?,
            sequence_version: row.try_get("sequence_version")?,
            rules: schedule::rules_from_row(row)?,
            lead_tz: schedule::lead_zone(row.try_get("lead_tz")?),
            next,
        },
    })
}
