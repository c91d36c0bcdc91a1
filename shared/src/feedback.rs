//! What comes back after a send: replies, auto-replies, bounces, complaints and unsubscribes,
//! whether read by the inbound role's SMTP listener or reported through `POST /v1/events` and the
//! provider webhooks. Owns the two steps every one of them takes:
//!
//! 1. [`record`]: match it to the send it answers (by the hash of a Pulse Message-ID, which a
//!    VERP bounce address carries too; or, for a lead who writes anew, [`find_unthreaded`]) and
//!    write it to `inbound_messages`. The listener answers
//!    250 only after this commits.
//! 2. [`process`]: do what it means, once (`processed_at`). A reply ends its enrollment
//!    (`COMPLETED`, `replied`; how far is the sequence's `exit_on_reply`); a bounce or complaint
//!    marks the send BOUNCED or COMPLAINED and suppresses the address (`suppression::add`, which
//!    ends the lead's enrollments); transient bounces are counted, and `soft_bounce_limit` of
//!    them in a row suppress. Every effect is idempotent, so a message processed again after a
//!    crash changes nothing twice; a count is taken at most once per message.
//!
//! It never parses mail (the inbound role classifies) and never answers a client.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::{
    audit,
    db::StoreError,
    model::{EnrollmentStatus, SuppressionReason},
    state::LedgerState,
    suppression::{self, Entry},
    transitions,
};

/// Who the audit trail names for what this module does.
pub const ACTOR: &str = "inbound";

/// What a message or report is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A person answered a send: their enrollment ends.
    Reply,
    /// An out-of-office or other automatic answer: recorded, nothing ends.
    AutoReply,
    /// Permanent delivery failure (5.x.x): the address is suppressed.
    Bounce,
    /// Transient delivery failure (4.x.x): counted.
    SoftBounce,
    /// The recipient reported the message as spam: the address is suppressed.
    Complaint,
    /// The recipient asked to be removed (reported from outside).
    Unsubscribe,
    /// None of these (a delivery notice, a message about nothing Pulse sent): recorded only.
    Other,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Reply,
        Kind::AutoReply,
        Kind::Bounce,
        Kind::SoftBounce,
        Kind::Complaint,
        Kind::Unsubscribe,
        Kind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reply => "reply",
            Kind::AutoReply => "auto_reply",
            Kind::Bounce => "bounce",
            Kind::SoftBounce => "soft_bounce",
            Kind::Complaint => "complaint",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Other => "other",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// The suppression this kind adds, and the ledger state its send moves to.
    fn suppresses(self) -> Option<(SuppressionReason, Option<LedgerState>)> {
        match self {
            Kind::Bounce => Some((SuppressionReason::Bounced, Some(LedgerState::Bounced))),
            Kind::Complaint => Some((SuppressionReason::Complained, Some(LedgerState::Complained))),
            Kind::Unsubscribe => Some((SuppressionReason::Unsubscribed, None)),
            _ => None,
        }
    }
}

/// A message or report to record.
#[derive(Clone, Debug)]
pub struct Report {
    /// `smtp`, `api`, `ses`, `sendgrid`.
    pub source: &'static str,
    pub kind: Kind,
    pub mail_from: Option<String>,
    pub rcpt_to: Vec<String>,
    /// The bytes received (SMTP); their digest is kept either way.
    pub raw: Option<Vec<u8>>,
    /// The bytes the digest is taken over when there is no `raw` (an API report's JSON).
    pub payload: Vec<u8>,
    /// Known when reported through the API; else found from the send it matches.
    pub workspace: Option<Uuid>,
    /// The hashes (hex, `verp::message_hash`) of the Pulse Message-IDs it names, the most
    /// telling first: a VERP token, a bounce's original message, `In-Reply-To`, `References`.
    pub hashes: Vec<String>,
    /// The address it is about: a bounce's final recipient, a complaint's original recipient,
    /// a reply's sender, an API report's lead. Canonical (as leads are stored) when known.
    pub address: Option<String>,
    /// What the operator is shown: status, diagnostic, subject, an excerpt.
    pub detail: Value,
    /// Set when the caller matched it already ([`find_unthreaded`]); [`find`] is then skipped.
    pub matched: Option<Matched>,
}

/// The send a report answers, or only its lead (an API report without a Message-ID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matched {
    pub workspace: Option<Uuid>,
    pub key: Option<String>,
    pub enrollment: Option<Uuid>,
    pub sequence: Option<Uuid>,
    pub lead: Option<Uuid>,
}

/// Finds the send `report` answers: the first of its hashes that names a send (in its
/// workspace, when that is known); else, in a known workspace, the lead with its address.
pub async fn find(db: &PgPool, report: &Report) -> Result<Matched, StoreError> {
    if let Some(m) = &report.matched {
        return Ok(m.clone());
    }
    if !report.hashes.is_empty() {
        let prefixes: Vec<String> = report
            .hashes
            .iter()
            .map(|h| format!("<pulse.{h}"))
            .collect();
        let rows = sqlx::query(
            "SELECT split_part(message_id, '@', 1) AS prefix, workspace_id, idempotency_key,
                    enrollment_id, sequence_id, lead_id
             FROM send_ledger
             WHERE split_part(message_id, '@', 1) = ANY($1)
               AND ($2::uuid IS NULL OR workspace_id = $2)",
        )
        .bind(&prefixes)
        .bind(report.workspace)
        .fetch_all(db)
        .await?;
        for prefix in &prefixes {
            if let Some(r) = rows
                .iter()
                .find(|r| r.get::<String, _>("prefix") == *prefix)
            {
                return Ok(Matched {
                    workspace: r.get("workspace_id"),
                    key: r.get("idempotency_key"),
                    enrollment: r.get("enrollment_id"),
                    sequence: r.get("sequence_id"),
                    lead: r.get("lead_id"),
                });
            }
        }
    }
    let (Some(workspace), Some(address)) = (report.workspace, &report.address) else {
        return Ok(Matched::default());
    };
    let lead: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM leads WHERE workspace_id = $1 AND email = $2")
            .bind(workspace)
            .bind(address)
            .fetch_optional(db)
            .await?;
    Ok(Matched {
        workspace: Some(workspace),
        lead,
        ..Matched::default()
    })
}

/// The lead's latest ACTIVE enrollment that mails from (or asks replies to) one of `rcpts`:
/// what a message from `address` to those addresses answers when it names no Pulse message (a
/// lead who writes anew instead of replying). Workspaces are found by the recipient first, so
/// the lead is looked up by its (workspace, email) index.
pub async fn find_unthreaded(
    db: &PgPool,
    address: &str,
    rcpts: &[String],
) -> Result<Option<Matched>, StoreError> {
    let rcpts: Vec<String> = rcpts.iter().map(|r| r.trim().to_lowercase()).collect();
    let row = sqlx::query(&format!(
        "WITH {}
          SELECT e.id, e.sequence_id, e.lead_id, l.workspace_id
          FROM (SELECT DISTINCT workspace_id FROM sender) w
          JOIN leads l ON l.workspace_id = w.workspace_id AND l.email = $1
          JOIN enrollments e ON e.lead_id = l.id AND e.status = 'ACTIVE'
          WHERE EXISTS (SELECT 1 FROM sender x
                        WHERE x.sequence_id = e.sequence_id OR x.mailbox_id = e.mailbox_id)
          ORDER BY e.created_at DESC LIMIT 1",
        senders("$2")
    ))
    .bind(address)
    .bind(&rcpts)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Matched {
        workspace: r.get("workspace_id"),
        key: None,
        enrollment: r.get("id"),
        sequence: r.get("sequence_id"),
        lead: r.get("lead_id"),
    }))
}

/// A CTE named `sender`: the sequences (`sequence_id`) and live mailboxes (`mailbox_id`), with
/// their workspace, that send from or ask replies to one of the lower-case addresses in the
/// text-array parameter `param`. A stored sender may be `Name <address>`.
fn senders(param: &str) -> String {
    format!(
        r"sender AS (
              SELECT s.id AS sequence_id, NULL::uuid AS mailbox_id, s.workspace_id
              FROM sequences s, LATERAL (VALUES (s.sender_from), (s.sender_reply_to)) v(a)
              WHERE s.status <> 'DELETED' AND v.a IS NOT NULL
                AND lower(coalesce(substring(v.a from '<([^<>]*)>\s*$'), v.a)) = ANY({param})
              UNION
              SELECT NULL, m.id, m.workspace_id
              FROM mailboxes m, LATERAL (VALUES (m.address), (m.reply_to)) v(a)
              WHERE m.deleted_at IS NULL AND v.a IS NOT NULL
                AND lower(coalesce(substring(v.a from '<([^<>]*)>\s*$'), v.a)) = ANY({param}))"
    )
}

/// Whether some workspace sends from, or asks replies to, `address`: mail to it is taken by
/// the inbound role.
pub async fn is_sending_address(db: &PgPool, address: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "WITH {} SELECT EXISTS (SELECT 1 FROM sender)",
        senders("$1")
    ))
    .bind([address.trim().to_lowercase()])
    .fetch_one(db)
    .await?)
}

/// Matches `report` to its send and writes it down. Returns its id and what it matched. Once
/// this returns, nothing of the report can be lost: [`process`] picks it up, now or after a
/// restart.
pub async fn record(db: &PgPool, report: &Report) -> Result<(i64, Matched), StoreError> {
    let matched = find(db, report).await?;
    let digest = Sha256::digest(report.raw.as_deref().unwrap_or(&report.payload));
    let digest: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO inbound_messages (source, kind, mail_from, rcpt_to, digest, raw, workspace_id,
                                       idempotency_key, enrollment_id, sequence_id, lead_id,
                                       address, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         RETURNING id",
    )
    .bind(report.source)
    .bind(report.kind.as_str())
    .bind(&report.mail_from)
    .bind(&report.rcpt_to)
    .bind(&digest)
    .bind(&report.raw)
    .bind(matched.workspace)
    .bind(&matched.key)
    .bind(matched.enrollment)
    .bind(matched.sequence)
    .bind(matched.lead)
    .bind(&report.address)
    .bind(&report.detail)
    .fetch_one(db)
    .await?;
    Ok((id, matched))
}

/// Records `report` and processes it at once: what an API report or a provider's webhook does
/// (the inbound listener answers its client in between, so it calls the two apart).
pub async fn record_and_process(
    db: &PgPool,
    report: &Report,
    soft_bounce_limit: i32,
) -> Result<(i64, Matched, Option<Processed>), StoreError> {
    let (id, matched) = record(db, report).await?;
    let done = process(db, id, soft_bounce_limit).await?;
    Ok((id, matched, done))
}

/// The recorded messages not processed yet, oldest first (at most `limit`).
pub async fn pending(db: &PgPool, limit: i64) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM inbound_messages WHERE processed_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// What processing one message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Processed {
    pub kind: Kind,
    /// Enrollments it ended (a reply's, or the suppressed lead's).
    pub ended: usize,
    /// What the operator reads in `inbound_messages.outcome`.
    pub outcome: String,
}

/// Does what message `id` means, unless it has been done (or another process is doing it now):
/// then `None`. `soft_bounce_limit` transient bounces in a row suppress the address.
pub async fn process(
    db: &PgPool,
    id: i64,
    soft_bounce_limit: i32,
) -> Result<Option<Processed>, StoreError> {
    let mut tx = db.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT m.kind, m.source, m.workspace_id, m.idempotency_key, m.enrollment_id,
                m.sequence_id, m.lead_id, m.address, m.outcome, l.email AS lead_email
         FROM inbound_messages m LEFT JOIN leads l ON l.id = m.lead_id
         WHERE m.id = $1 AND m.processed_at IS NULL
         FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let raw_kind: String = row.get("kind");
    let kind = Kind::parse(&raw_kind)
        .ok_or_else(|| StoreError::Corrupt(format!("inbound message {id}: kind {raw_kind:?}")))?;
    let source: String = row.get("source");
    let workspace: Option<Uuid> = row.get("workspace_id");
    let key: Option<String> = row.get("idempotency_key");
    let lead: Option<Uuid> = row.get("lead_id");
    // The address to suppress: the lead's as Pulse mails it, else the one reported.
    let email: Option<String> = row
        .get::<Option<String>, _>("lead_email")
        .or_else(|| row.get("address"));
    let mut done = Processed {
        kind,
        ended: 0,
        outcome: String::new(),
    };
    let Some(workspace) = workspace else {
        done.outcome = "recorded; it names no send of Pulse's".into();
        finish(tx, id, &done.outcome).await?;
        return Ok(Some(done));
    };
    let suppress = match kind {
        Kind::Reply => {
            let Some(lead) = lead else {
                done.outcome = "recorded; no lead has this address".into();
                finish(tx, id, &done.outcome).await?;
                return Ok(Some(done));
            };
            let ended = end_on_reply(
                &mut tx,
                id,
                workspace,
                row.get("sequence_id"),
                row.get("enrollment_id"),
                lead,
            )
            .await?;
            if let Some(email) = &email {
                sqlx::query("DELETE FROM soft_bounces WHERE workspace_id = $1 AND email = $2")
                    .bind(workspace)
                    .bind(email)
                    .execute(&mut *tx)
                    .await?;
            }
            done.ended = ended;
            done.outcome = match ended {
                0 => "replied; nothing was active to end".into(),
                n => format!("replied; ended {n} enrollment(s)"),
            };
            None
        }
        Kind::SoftBounce => {
            let Some(email) = &email else {
                done.outcome = "recorded; no address to count".into();
                finish(tx, id, &done.outcome).await?;
                return Ok(Some(done));
            };
            // Counted once: a message processed again reads the count it left.
            let counted: Option<String> = row.get("outcome");
            let count: i32 = if counted.is_none() {
                let n: i32 = sqlx::query_scalar(
                    "INSERT INTO soft_bounces (workspace_id, email, count) VALUES ($1, $2, 1)
                     ON CONFLICT (workspace_id, email)
                     DO UPDATE SET count = soft_bounces.count + 1, last_at = now()
                     RETURNING count",
                )
                .bind(workspace)
                .bind(email)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("UPDATE inbound_messages SET outcome = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("soft bounce {n} in a row"))
                    .execute(&mut *tx)
                    .await?;
                n
            } else {
                sqlx::query_scalar(
                    "SELECT count FROM soft_bounces WHERE workspace_id = $1 AND email = $2",
                )
                .bind(workspace)
                .bind(email)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0)
            };
            done.outcome = format!("soft bounce {count} of {soft_bounce_limit} in a row");
            (count >= soft_bounce_limit).then(|| (email.clone(), SuppressionReason::Bounced))
        }
        _ => match (kind.suppresses(), &email) {
            (Some((reason, ledger_state)), Some(email)) => {
                if let (Some(state), Some(key)) = (ledger_state, &key) {
                    sqlx::query(
                        "UPDATE send_ledger SET state = $2, feedback_at = now(), feedback = $3,
                             updated_at = now()
                         WHERE idempotency_key = $1 AND state = 'SENT'",
                    )
                    .bind(key)
                    .bind(state)
                    .bind(format!("{} (inbound message {id})", kind.as_str()))
                    .execute(&mut *tx)
                    .await?;
                }
                done.outcome = format!("{}; address suppressed", kind.as_str());
                Some((email.clone(), reason))
            }
            (Some(_), None) => {
                done.outcome = "recorded; no address to suppress".into();
                None
            }
            (None, _) => {
                done.outcome = "recorded".into();
                None
            }
        },
    };
    let Some((email, reason)) = suppress else {
        finish(tx, id, &done.outcome).await?;
        return Ok(Some(done));
    };
    // The send's new state and the count are kept before suppressing (its own transactions).
    tx.commit().await?;
    let entry = Entry::Email(email);
    let added = suppression::add(
        db,
        workspace,
        ACTOR,
        &format!("inbound:{source}"),
        vec![(entry, reason)],
    )
    .await?;
    done.ended = added.ended;
    if matches!(kind, Kind::SoftBounce) {
        done.outcome.push_str("; address suppressed");
    }
    let tx = db.begin().await?;
    finish(tx, id, &done.outcome).await?;
    Ok(Some(done))
}

/// Ends the enrollments a reply reaches, per its sequence's `exit_on_reply`: the enrollment it
/// answers, every ACTIVE one of the lead, or none. A reply that names no send (an API report)
/// ends the lead's enrollments in every sequence that does not say `none`.
async fn end_on_reply(
    tx: &mut sqlx::PgConnection,
    message: i64,
    workspace: Uuid,
    sequence: Option<Uuid>,
    enrollment: Option<Uuid>,
    lead: Uuid,
) -> Result<usize, StoreError> {
    let scope: Option<String> = match sequence {
        Some(s) => {
            sqlx::query_scalar("SELECT exit_on_reply FROM sequences WHERE id = $1")
                .bind(s)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    if scope.as_deref() == Some("none") {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT e.id, e.sequence_id FROM enrollments e JOIN sequences s ON s.id = e.sequence_id
         WHERE e.lead_id = $1 AND e.status = 'ACTIVE' AND s.workspace_id = $2
           AND CASE $3::text WHEN 'all_sequences' THEN true
                             WHEN 'enrollment' THEN e.id = $4
                             ELSE s.exit_on_reply <> 'none' END
         ORDER BY e.id FOR UPDATE OF e",
    )
    .bind(lead)
    .bind(workspace)
    .bind(&scope)
    .bind(enrollment)
    .fetch_all(&mut *tx)
    .await?;
    let ends: Vec<(Uuid, String)> = rows
        .iter()
        .map(|r| (r.get("id"), "replied".to_owned()))
        .collect();
    let ended = transitions::end_enrollments(tx, EnrollmentStatus::Completed, &ends).await?;
    for row in &rows {
        let id: Uuid = row.get("id");
        if ended.binary_search(&id).is_ok() {
            audit::record(
                tx,
                workspace,
                row.get("sequence_id"),
                Some(id),
                ACTOR,
                "enrollment_replied",
                Some(json!({"status": EnrollmentStatus::Active})),
                Some(
                    json!({"status": EnrollmentStatus::Completed, "reason": "replied",
                            "inbound_message": message}),
                ),
            )
            .await?;
        }
    }
    Ok(ended.len())
}

async fn finish(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: i64,
    outcome: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE inbound_messages SET processed_at = now(), outcome = $2 WHERE id = $1")
        .bind(id)
        .bind(outcome)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("spam"), None);
        assert!(Kind::Reply.suppresses().is_none());
        assert_eq!(
            Kind::Bounce.suppresses(),
            Some((SuppressionReason::Bounced, Some(LedgerState::Bounced)))
        );
    }
}
