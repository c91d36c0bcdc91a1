//! Where mail goes: an SMTP relay through lettre, or the capture outbox in PostgreSQL when no
//! relay is configured. Owns connections to the relay and the classification of its replies
//! (accepted, transient, permanent, unknown). It never touches the ledger or decides about
//! retries.
//!
//! * `pool`: the relay connections (TLS, AUTH, `TCP_NODELAY`), and one SMTP transaction phase
//!   by phase, so a failure is classified by what the relay can have received.
//! * `gate`: the socket under each connection, which holds the message's final dot until the
//!   sender's gate opens (the claim committed, the re-check passed).
//! * `tls`: the rustls setup shared by STARTTLS and implicit TLS.
//! * `mailboxes`: the relays and DKIM keys of sender mailboxes, opened on first use.
//!
//! A send waits for a free connection only for a bounded time ([`Transport::connect_within`]),
//! after its claim and re-check: the re-check stays valid for the whole send only if the send
//! follows it promptly. A send that cannot get a connection in time gives its claim back (the
//! sender puts the step back to SCHEDULED), so a pause or cancel never waits on, nor is
//! overtaken by, a send queued behind a slow relay.

mod gate;
mod mailboxes;
mod pool;
mod tls;

pub use mailboxes::{Dkim, MAILBOX_POOL_SIZE, Mailboxes, Route};
pub use pool::{ConnectError, Connection, SmtpPool};
pub use tls::TlsSetupError;

use lettre::{
    Address, Message,
    address::Envelope,
    message::{
        Mailbox, MultiPart,
        header::{ContentType, HeaderName, HeaderValue},
    },
};
use pulse_shared::ledger::Reply;
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use uuid::Uuid;

/// One email, ready to go.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    pub workspace: Uuid,
    pub from: String,
    pub to: String,
    pub subject: String,
    /// The text part.
    pub body: String,
    /// The HTML part: with it the message is `multipart/alternative`.
    pub html: Option<String>,
    pub reply_to: Option<String>,
    /// The Message-ID this one answers, and every earlier one of its thread (space-separated).
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
    pub message_id: String,
    /// A header naming the idempotency key (`PULSE_SMTP_IDEMPOTENCY_HEADER`), and the key.
    pub idempotency: Option<(String, String)>,
    /// Sign with this mailbox's DKIM key.
    pub dkim: Option<Dkim>,
    /// `List-Unsubscribe`'s value: with it the message also says `List-Unsubscribe-Post:
    /// List-Unsubscribe=One-Click` (RFC 8058).
    pub list_unsubscribe: Option<String>,
    /// The envelope sender (`MAIL FROM`), when it is not the From address: the send's VERP
    /// bounce address (`pulse_shared::verp`).
    pub return_path: Option<String>,
}

/// Why a send did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying later: SMTP 4xx, connection refused or reset, timeouts.
    #[error("transient: {}", .0.text)]
    Transient(Reply),
    /// Never worth retrying: SMTP 5xx, an address or message that cannot be sent.
    #[error("permanent: {}", .0.text)]
    Permanent(Reply),
    /// The message was on the wire and the answer never came (connection lost, timeout): the
    /// relay may or may not have accepted it. Never retried automatically.
    #[error("outcome unknown: {}", .0.text)]
    Unknown(Reply),
    /// The gate stayed shut (the key was not claimed, or the re-check after the claim refused),
    /// so the final dot was never sent: the relay accepted nothing.
    #[error("not sent: the gate stayed shut before the final dot")]
    Withheld,
}

impl SendError {
    pub(crate) fn transient(text: impl AsRef<str>) -> Self {
        SendError::Transient(Reply::from_relay(None, text.as_ref()))
    }
    pub(crate) fn permanent(text: impl AsRef<str>) -> Self {
        SendError::Permanent(Reply::from_relay(None, text.as_ref()))
    }
}

#[derive(Clone)]
pub enum Transport {
    Smtp(Arc<SmtpPool>),
    Capture(PgPool),
}

impl Transport {
    /// Takes what one send needs: a place in the relay connection pool (`None` when none
    /// frees up within `wait`) and a pooled or new connection, or the capture outbox. A
    /// connection that cannot be opened is reported by [`Session::send`], so the caller
    /// classifies it like any other failure.
    pub async fn connect_within(&self, wait: Duration) -> Option<Session> {
        match self {
            Transport::Smtp(pool) => Some(Session::Smtp(pool.clone().checkout(Some(wait)).await?)),
            Transport::Capture(db) => Some(Session::Capture(db.clone())),
        }
    }

    /// Connects (waiting as long as it takes) and sends one message, with no gate to pass.
    pub async fn send(&self, mail: &Outgoing) -> Result<Reply, SendError> {
        let session = match self {
            Transport::Smtp(pool) => match pool.clone().checkout(None).await {
                Some(conn) => Session::Smtp(conn),
                None => return Err(SendError::transient("SMTP pool closed")),
            },
            Transport::Capture(db) => Session::Capture(db.clone()),
        };
        session.send(mail, async { true }).await
    }
}

/// A connection held for one send. Dropped unused, it goes back to the pool.
pub enum Session {
    Smtp(Result<Connection, SendError>),
    Capture(PgPool),
}

impl Session {
    /// Sends `mail`; `on_wire` runs once the body is out and must say `true` for the final dot
    /// to follow (see `gate`). The capture outbox runs it before recording.
    pub async fn send(
        self,
        mail: &Outgoing,
        on_wire: impl Future<Output = bool>,
    ) -> Result<Reply, SendError> {
        let message = build(mail)?;
        match self {
            Session::Smtp(conn) => conn?.send(&message, on_wire).await,
            Session::Capture(db) => {
                if !on_wire.await {
                    return Err(SendError::Withheld);
                }
                capture(&db, mail, &message).await
            }
        }
    }
}

fn build(mail: &Outgoing) -> Result<Message, SendError> {
    let from: Mailbox = mail
        .from
        .parse()
        .map_err(|e| SendError::permanent(format!("bad sender {:?}: {e}", mail.from)))?;
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| SendError::permanent(format!("bad recipient {:?}: {e}", mail.to)))?;
    let mut builder = Message::builder();
    if let Some(bounce) = &mail.return_path {
        let bounce: Address = bounce
            .parse()
            .map_err(|e| SendError::permanent(format!("bad bounce address {bounce:?}: {e}")))?;
        let envelope = Envelope::new(Some(bounce), vec![to.email.clone()])
            .map_err(|e| SendError::permanent(format!("cannot build the envelope: {e}")))?;
        builder = builder.envelope(envelope);
    }
    let mut builder = builder
        .from(from)
        .to(to)
        .subject(mail.subject.clone())
        .message_id(Some(mail.message_id.clone()));
    if let Some(reply_to) = &mail.reply_to {
        let reply_to: Mailbox = reply_to
            .parse()
            .map_err(|e| SendError::permanent(format!("bad reply-to {reply_to:?}: {e}")))?;
        builder = builder.reply_to(reply_to);
    }
    if let Some(parent) = &mail.in_reply_to {
        builder = builder.in_reply_to(parent.clone());
    }
    if let Some(references) = &mail.references {
        builder = builder.references(references.clone());
    }
    if let Some(link) = &mail.list_unsubscribe {
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                link.clone(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
    }
    if let Some((name, key)) = &mail.idempotency {
        let name = HeaderName::new_from_ascii(name.clone())
            .map_err(|e| SendError::permanent(format!("bad idempotency header {name:?}: {e}")))?;
        builder = builder.raw_header(HeaderValue::new(name, key.clone()));
    }
    let built = match &mail.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            mail.body.clone(),
            html.clone(),
        )),
        None => builder
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone()),
    };
    let mut message =
        built.map_err(|e| SendError::permanent(format!("cannot build message: {e}")))?;
    if let Some(dkim) = &mail.dkim {
        message.sign(dkim.config());
    }
    Ok(message)
}

async fn capture(db: &PgPool, mail: &Outgoing, message: &Message) -> Result<Reply, SendError> {
    let raw = String::from_utf8_lossy(&message.formatted()).into_owned();
    // The envelope sender, as MAIL FROM carries it: the bare address.
    let mail_from = message
        .envelope()
        .from()
        .map_or_else(|| mail.from.clone(), ToString::to_string);
    sqlx::query(
        "INSERT INTO dev_outbox (workspace_id, message_id, mail_from, rcpt_to, subject, body, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(mail.workspace)
    .bind(&mail.message_id)
    .bind(&mail_from)
    .bind(&mail.to)
    .bind(&mail.subject)
    .bind(&mail.body)
    .bind(raw)
    .execute(db)
    .await
    .map_err(|e| SendError::transient(format!("capture outbox: {e}")))?;
    Ok(Reply {
        code: Some(250),
        text: "captured in the dev outbox".into(),
    })
}
