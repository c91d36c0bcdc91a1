//! What a sender re-checks after claiming: the claimed step run's content snapshot, the state
//! of its enrollment, sequence and lead, and what follows it (for the one-statement record). It
//! only reads.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::{
    db::StoreError,
    schedule::{self, Rules, StepSpec},
    smtp_url::Secret,
};

/// The claimed step run's content snapshot and the state of everything it depends on, read
/// after the claim committed.
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
    pub enrollment_status: crate::state::EnrollmentStatus,
    pub sequence_status: crate::state::SequenceStatus,
    /// The lead's address or domain is on the suppression list (or the lead was marked
    /// unsubscribed or bounced).
    pub lead_suppressed: bool,
    /// Whom the message's unsubscribe link names.
    pub unsubscribe: crate::unsubscribe::Subject,
    /// What follows this step, read in the same query, for [`super::record_sent`]'s fast path.
    pub followup: Followup,
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

/// Loads the snapshot of a claimed step run.
pub async fn snapshot(db: &PgPool, step_run: Uuid) -> Result<Snapshot, StoreError> {
    let mut all = snapshot_many(db, &[step_run]).await?;
    all.pop().unwrap_or_else(|| {
        Err(StoreError::Corrupt(format!(
            "step run {step_run} not found"
        )))
    })
}

/// Loads the snapshots of many claimed step runs in one query, one result per id, in order.
pub async fn snapshot_many(
    db: &PgPool,
    step_runs: &[Uuid],
) -> Result<Vec<Result<Snapshot, StoreError>>, StoreError> {
    let rows = sqlx::query(
        "SELECT sr.id, sr.workspace_id, sr.subject, sr.body, sr.html, sr.reply_to, sr.in_reply_to, sr.thread_refs,
                sr.from_addr, sr.to_addr, sr.message_id, sr.sequence_id,
                e.status AS enrollment_status, s.status AS sequence_status,
                e.lead_id,
                (l.unsubscribed_at IS NOT NULL OR l.bounced_at IS NOT NULL
                 OR EXISTS (SELECT 1 FROM suppressions sp WHERE sp.workspace_id = sr.workspace_id
                              AND sp.kind = 'email' AND sp.value = l.email)
                 OR EXISTS (SELECT 1 FROM suppressions sp WHERE sp.workspace_id = sr.workspace_id
                              AND sp.kind = 'domain' AND sp.value = split_part(l.email, '@', 2)))
                    AS suppressed,
                s.version AS sequence_version, s.timezone, s.send_window, s.end_date,
                l.timezone AS lead_tz, nx.id AS next_id, nx.position AS next_position,
                nx.timing AS next_timing, nx.end_date AS next_end_date, nx.version AS next_version,
                mb.id AS mb_id, mb.updated_at AS mb_updated_at, mb.address AS mb_address,
                mb.smtp_url AS mb_smtp_url, mb.smtp_password AS mb_smtp_password,
                mb.dkim_selector AS mb_dkim_selector, mb.dkim_private_key AS mb_dkim_key,
                w.dkim_domain AS ws_dkim_domain, w.dkim_selector AS ws_dkim_selector,
                w.dkim_private_key AS ws_dkim_key, w.dkim_updated_at AS ws_dkim_updated_at
         FROM step_runs sr
         LEFT JOIN mailboxes mb ON mb.id = sr.mailbox_id
         LEFT JOIN workspaces w ON w.id = sr.workspace_id AND w.dkim_domain IS NOT NULL
         JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN sequences s ON s.id = sr.sequence_id
         JOIN leads l ON l.id = e.lead_id
         JOIN sequence_steps cur ON cur.id = sr.step_id
         LEFT JOIN LATERAL (
             SELECT st.id, st.position, st.timing, st.end_date, st.version FROM sequence_steps st
             WHERE st.sequence_id = sr.sequence_id AND st.position > cur.position
               AND st.deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM step_runs r WHERE r.enrollment_id = sr.enrollment_id
                               AND r.generation = sr.generation AND r.step_id = st.id)
             ORDER BY st.position LIMIT 1) nx ON true
         WHERE sr.id = ANY($1)",
    )
    .bind(step_runs)
    .fetch_all(db)
    .await?;
    let mut by_id = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        by_id.insert(row.try_get::<Uuid, _>("id")?, row);
    }
    Ok(step_runs
        .iter()
        .map(|id| match by_id.get(id) {
            Some(row) => snapshot_from_row(row, *id),
            None => Err(StoreError::Corrupt(format!("step run {id} not found"))),
        })
        .collect())
}

fn snapshot_from_row(row: &sqlx::postgres::PgRow, step_run: Uuid) -> Result<Snapshot, StoreError> {
    let text = |col: &str| -> Result<String, StoreError> {
        row.try_get::<Option<String>, _>(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("queued step run {step_run} has no {col}")))
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
        enrollment_status: row.try_get("enrollment_status")?,
        sequence_status: row.try_get("sequence_status")?,
        lead_suppressed: row.try_get("suppressed")?,
        unsubscribe: crate::unsubscribe::Subject {
            workspace: row.try_get("workspace_id")?,
            lead: row.try_get("lead_id")?,
            sequence: row.try_get("sequence_id")?,
        },
        followup: Followup {
            sequence: row.try_get("sequence_id")?,
            sequence_version: row.try_get("sequence_version")?,
            rules: schedule::rules_from_row(row)?,
            lead_tz: schedule::lead_zone(row.try_get("lead_tz")?),
            next,
        },
    })
}
