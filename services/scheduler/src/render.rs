//! Freezing a claimed run's content: the lead's fields and the enrollment's thread read into
//! `domain::content`, and the result as the run's snapshot and its RabbitMQ message. Owns the
//! columns [`lock_due`](crate::lock_due) must select for it and the one batched read of the
//! threads; it writes nothing (the claim stores what it returns).

use std::collections::HashMap;

use pulse_shared::{
    domain::{
        content::{self, StepTemplates, Thread},
        template::LeadFields,
        validate,
    },
    ledger,
    messaging::SendMessage,
    unsubscribe::{Subject, Unsubscribe},
};
use sqlx::{PgConnection, Row, postgres::PgRow};
use uuid::Uuid;

/// A claimed step run, rendered.
pub(crate) struct Rendered {
    pub id: Uuid,
    pub message: SendMessage,
    pub content: content::Content,
    pub from_addr: String,
    pub reply_to: Option<String>,
    /// The mailbox it goes out from, when the sequence sends from mailboxes.
    pub mailbox: Option<Uuid>,
    pub to_addr: String,
    pub message_id: String,
    pub version: i32,
    /// The W3C context of the request that created the run, continued by its publish.
    pub trace_parent: Option<String>,
}

/// The threads of the enrollments whose due runs are threaded steps, in one query: what each
/// (enrollment, generation) has sent so far, oldest first. Runs of other steps need none.
pub(crate) async fn threads(
    conn: &mut PgConnection,
    rows: &[PgRow],
) -> Result<HashMap<(Uuid, i32), Thread>, sqlx::Error> {
    let mut enrollments = Vec::new();
    for row in rows {
        if row.try_get::<bool, _>("thread")? {
            enrollments.push(row.try_get::<Uuid, _>("enrollment_id")?);
        }
    }
    if enrollments.is_empty() {
        return Ok(HashMap::new());
    }
    let sent = sqlx::query(
        "SELECT enrollment_id, generation, subject, message_id FROM step_runs
         WHERE enrollment_id = ANY($1) AND state = 'SENT' AND message_id IS NOT NULL
         ORDER BY enrollment_id, generation, sent_at, position",
    )
    .bind(&enrollments)
    .fetch_all(&mut *conn)
    .await?;
    let mut threads: HashMap<(Uuid, i32), Thread> = HashMap::new();
    for r in sent {
        let thread = threads
            .entry((r.try_get("enrollment_id")?, r.try_get("generation")?))
            .or_default();
        if thread.first_subject.is_none() {
            thread.first_subject = r.try_get("subject")?;
        }
        thread.message_ids.push(r.try_get("message_id")?);
    }
    Ok(threads)
}

/// Renders one locked row (see `lock_due` for its columns). The error is the reason the run is
/// marked FAILED.
pub(crate) fn render(
    row: &PgRow,
    threads: &HashMap<(Uuid, i32), Thread>,
    unsubscribe: &Unsubscribe,
) -> Result<Rendered, String> {
    let get = |e: sqlx::Error| format!("reading the claimed run: {e}");
    let attributes: serde_json::Value = row.try_get("attributes").map_err(get)?;
    let email: String = row.try_get("email").map_err(get)?;
    let first_name: Option<String> = row.try_get("first_name").map_err(get)?;
    let last_name: Option<String> = row.try_get("last_name").map_err(get)?;
    let timezone: Option<String> = row.try_get("lead_tz").map_err(get)?;
    let unsubscribe_url = unsubscribe.url(Subject {
        workspace: row.try_get("workspace_id").map_err(get)?,
        lead: row.try_get("lead_id").map_err(get)?,
        sequence: row.try_get("sequence_id").map_err(get)?,
    });
    let lead = LeadFields {
        unsubscribe_url: Some(&unsubscribe_url),
        email: &email,
        first_name: first_name.as_deref(),
        last_name: last_name.as_deref(),
        timezone: timezone.as_deref(),
        attributes: Some(&attributes),
    };
    let enrollment: Uuid = row.try_get("enrollment_id").map_err(get)?;
    let generation: i32 = row.try_get("generation").map_err(get)?;
    let html: Option<String> = row.try_get("html").map_err(get)?;
    let first_subject: Option<String> = row.try_get("first_subject").map_err(get)?;
    let step = StepTemplates {
        subject: row.try_get("subject").map_err(get)?,
        body: row.try_get("body").map_err(get)?,
        html: html.as_deref(),
        thread: row.try_get("thread").map_err(get)?,
    };
    let content = content::render(
        step,
        &lead,
        threads.get(&(enrollment, generation)),
        first_subject.as_deref(),
    )?;
    let sender = sender(row)?;
    let from_addr = sender.from.to_string();
    let step_id: Uuid = row.try_get("step_id").map_err(get)?;
    let key = ledger::idempotency_key(enrollment, step_id, generation);
    let message_id = ledger::message_id(&key, sender.from.email.domain());
    let id: Uuid = row.try_get("id").map_err(get)?;
    Ok(Rendered {
        id,
        message: SendMessage {
            key,
            step_run_id: id,
            enrollment_id: enrollment,
            sequence_id: row.try_get("sequence_id").map_err(get)?,
            workspace_id: row.try_get("workspace_id").map_err(get)?,
        },
        content,
        from_addr,
        reply_to: sender.reply_to,
        mailbox: sender.mailbox,
        to_addr: email,
        message_id,
        version: row.try_get("version").map_err(get)?,
        trace_parent: row.try_get("trace_parent").map_err(get)?,
    })
}

/// Who a run goes out from.
struct Sender {
    from: lettre::message::Mailbox,
    reply_to: Option<String>,
    mailbox: Option<Uuid>,
}

/// The run's mailbox (the enrollment's, or the sequence's pick; see `lock_due`), else the
/// sequence's `from`. A mailbox's own Reply-To wins over the sequence's.
fn sender(row: &PgRow) -> Result<Sender, String> {
    let get = |e: sqlx::Error| format!("reading the claimed run's sender: {e}");
    let sequence_reply_to: Option<String> = row.try_get("sender_reply_to").map_err(get)?;
    if let Some(id) = row.try_get::<Option<Uuid>, _>("mailbox_id").map_err(get)? {
        let address: String = row.try_get("mailbox_address").map_err(get)?;
        let name: Option<String> = row.try_get("mailbox_name").map_err(get)?;
        let email = address
            .parse()
            .map_err(|e| format!("mailbox {id} has an invalid address {address:?}: {e}"))?;
        let reply_to: Option<String> = row.try_get("mailbox_reply_to").map_err(get)?;
        return Ok(Sender {
            from: lettre::message::Mailbox::new(name, email),
            reply_to: reply_to.or(sequence_reply_to),
            mailbox: Some(id),
        });
    }
    let from: Option<String> = row.try_get("sender_from").map_err(get)?;
    let from = from.ok_or("the sequence sends from mailboxes and none of them is left")?;
    Ok(Sender {
        from: validate::mailbox(&from)?,
        reply_to: sequence_reply_to,
        mailbox: None,
    })
}
