//! Where mail goes: an SMTP relay through lettre, or the capture outbox in PostgreSQL when no
//! relay is configured. Owns connections to the relay and the classification of its replies
//! (accepted, transient, permanent). It never touches the ledger or decides about retries.
//!
//! lettre 0.11.23 writes the message body and the final `.` as two writes on a socket without
//! `TCP_NODELAY`, so the relay's delayed ACK costs ~40 ms per message. This module opens the TCP
//! connection itself with `TCP_NODELAY` set and hands it to lettre
//! (`AsyncSmtpConnection::connect_with_transport`), keeping its own small pool of connections.
//! It drives the SMTP phases itself (lettre's `command` and `message`) so that it knows whether
//! a failure happened before the message body was sent (nothing went out) or after (unknown).
//!
//! Between the relay's go-ahead for DATA (354) and the message body, a send has the sender mark
//! its ledger claim (`on_wire`): from the body on, the relay may have the message. When the mark
//! does not take, the body is not sent and the connection is dropped without the final dot, so
//! the relay discards the transaction. The mark is made after the 354 and not in parallel with
//! MAIL/RCPT/DATA: in parallel, a crash during those exchanges would leave UNKNOWN a send the
//! relay never saw (the chaos suite counted one in two crashes), and against the loopback sink it
//! gained nothing measurable (`docs/BENCHMARKS.md`).

//! A send waits for a free connection only for a bounded time ([`Transport::connect_within`]),
//! after its claim and re-check: the re-check stays valid for the whole send only if the send
//! follows it promptly. A send that cannot get a connection in time gives its claim back (the
//! sender puts the step back to SCHEDULED), so a pause or cancel never waits on, nor is
//! overtaken by, a send queued behind a slow relay.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lettre::{
    Message,
    message::{
        Mailbox,
        header::{ContentType, HeaderName, HeaderValue},
    },
    transport::smtp::{
        client::AsyncSmtpConnection,
        commands::{Data, Mail, Rcpt},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter},
    },
};
use pulse_shared::{ledger::Reply, smtp_url::SmtpUrl};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// One email, ready to go.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub workspace: Uuid,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub message_id: String,
    /// A header naming the idempotency key (`PULSE_SMTP_IDEMPOTENCY_HEADER`), and the key.
    pub idempotency: Option<(String, String)>,
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
    /// The sender's claim could not be marked on the wire, so the body was never sent: nothing
    /// went out, and this sender must not act on the key further.
    #[error("not sent: the claim could not be marked on the wire")]
    Withheld,
}

impl SendError {
    fn transient(text: impl Into<String>) -> Self {
        SendError::Transient(Reply {
            code: None,
            text: text.into(),
        })
    }
    fn permanent(text: impl Into<String>) -> Self {
        SendError::Permanent(Reply {
            code: None,
            text: text.into(),
        })
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

    /// Connects (waiting as long as it takes) and sends one message, with no claim to mark.
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
    /// Sends `mail`; `on_wire` runs right before the body goes out and must say `true` for it
    /// to go (see the module doc).
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

/// A pooled SMTP connection and its pool permit; back to the pool's idle list when dropped,
/// unless it broke.
pub struct Connection {
    pool: Arc<SmtpPool>,
    conn: Option<AsyncSmtpConnection>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn send(
        mut self,
        message: &Message,
        on_wire: impl Future<Output = bool>,
    ) -> Result<Reply, SendError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(SendError::transient("SMTP connection already used"));
        };
        let result = self.pool.transact(conn, message, on_wire).await;
        if result.is_err()
            && let Some(mut conn) = self.conn.take()
        {
            conn.abort().await;
        }
        result
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !conn.has_broken()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push((conn, Instant::now()));
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
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject.clone())
        .message_id(Some(mail.message_id.clone()))
        .header(ContentType::TEXT_PLAIN);
    if let Some((name, key)) = &mail.idempotency {
        let name = HeaderName::new_from_ascii(name.clone())
            .map_err(|e| SendError::permanent(format!("bad idempotency header {name:?}: {e}")))?;
        builder = builder.raw_header(HeaderValue::new(name, key.clone()));
    }
    builder
        .body(mail.body.clone())
        .map_err(|e| SendError::permanent(format!("cannot build message: {e}")))
}

async fn capture(db: &PgPool, mail: &Outgoing, message: &Message) -> Result<Reply, SendError> {
    let raw = String::from_utf8_lossy(&message.formatted()).into_owned();
    sqlx::query(
        "INSERT INTO dev_outbox (workspace_id, message_id, mail_from, rcpt_to, subject, body, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(mail.workspace)
    .bind(&mail.message_id)
    .bind(&mail.from)
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

/// Idle time after which a pooled connection is probed before use.
const IDLE_PROBE_AFTER: Duration = Duration::from_secs(5);

/// A bounded pool of SMTP connections to one relay, with `TCP_NODELAY` on every socket.
pub struct SmtpPool {
    relay: SmtpUrl,
    hello: ClientId,
    timeout: Duration,
    idle: std::sync::Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    permits: Arc<Semaphore>,
}

impl SmtpPool {
    pub fn new(relay: SmtpUrl, size: usize, timeout: Duration) -> Self {
        Self {
            relay,
            hello: ClientId::default(),
            timeout,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let addr = (self.relay.host.as_str(), self.relay.port);
        let stream = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::transient("timed out connecting to the SMTP relay"))?
            .map_err(|e| SendError::transient(format!("cannot connect to the SMTP relay: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| SendError::transient(format!("setting TCP_NODELAY: {e}")))?;
        tokio::time::timeout(
            self.timeout,
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello),
        )
        .await
        .map_err(|_| SendError::transient("timed out waiting for the SMTP greeting"))?
        .map_err(classify)
    }

    /// An idle connection that still answers; one idle for a while is probed with NOOP first,
    /// since relays close idle connections and a send must not fail for that.
    async fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut conn, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() < IDLE_PROBE_AFTER || conn.test_connected().await {
                return Some(conn);
            }
        }
    }

    /// Waits for a free place in the pool (at most `wait`, if given: `None` when none freed up),
    /// then takes an idle connection or opens one.
    async fn checkout(
        self: Arc<Self>,
        wait: Option<Duration>,
    ) -> Option<Result<Connection, SendError>> {
        let acquire = self.permits.clone().acquire_owned();
        let permit = match wait {
            Some(wait) => tokio::time::timeout(wait, acquire).await.ok()?,
            None => acquire.await,
        };
        let Ok(permit) = permit else {
            return Some(Err(SendError::transient("SMTP pool closed")));
        };
        let conn = match self.take_idle().await {
            Some(conn) => conn,
            None => match self.connect().await {
                Ok(conn) => conn,
                Err(e) => return Some(Err(e)),
            },
        };
        Some(Ok(Connection {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        }))
    }

    /// One SMTP transaction, phase by phase, so that a failure is classified by what the relay
    /// can have received: before the message body is sent (MAIL, RCPT, DATA refused or the
    /// connection lost) nothing went out; after it, a lost answer leaves the outcome unknown.
    async fn transact(
        &self,
        conn: &mut AsyncSmtpConnection,
        message: &Message,
        on_wire: impl Future<Output = bool>,
    ) -> Result<Reply, SendError> {
        let envelope = message.envelope();
        let bytes = message.formatted();
        let before_body = async {
            let info = conn.server_info();
            let mut mail_params = Vec::new();
            let ascii_addresses = envelope.from().is_none_or(|a| a.to_string().is_ascii())
                && envelope.to().iter().all(|a| a.to_string().is_ascii());
            if !ascii_addresses {
                if !info.supports_feature(Extension::SmtpUtfEight) {
                    return Err(SendError::permanent(
                        "the relay does not support SMTPUTF8 addresses",
                    ));
                }
                mail_params.push(MailParameter::SmtpUtfEight);
            }
            if !bytes.is_ascii() {
                if !info.supports_feature(Extension::EightBitMime) {
                    return Err(SendError::permanent("the relay does not support 8BITMIME"));
                }
                mail_params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
            }
            conn.command(Mail::new(envelope.from().cloned(), mail_params))
                .await
                .map_err(classify)?;
            for to in envelope.to() {
                conn.command(Rcpt::new(to.clone(), Vec::new()))
                    .await
                    .map_err(classify)?;
            }
            conn.command(Data).await.map_err(classify)?;
            Ok(())
        };
        tokio::time::timeout(self.timeout, before_body)
            .await
            .map_err(|_| {
                SendError::transient("the SMTP relay timed out before the message was sent")
            })??;
        // The relay said 354: from the body on, it may have the message.
        if !on_wire.await {
            // `Connection::send` aborts the connection on any error: no final dot is sent.
            return Err(SendError::Withheld);
        }
        match tokio::time::timeout(self.timeout, conn.message(&bytes)).await {
            Ok(Ok(response)) => Ok(Reply {
                code: Some(i32::from(u16::from(response.code()))),
                text: response.message().collect::<Vec<_>>().join(" "),
            }),
            // The relay answered, and refused: nothing was accepted.
            Ok(Err(e)) if e.status().is_some() => Err(classify(e)),
            Ok(Err(e)) => Err(SendError::Unknown(Reply {
                code: None,
                text: format!("connection lost after the message was sent: {e}"),
            })),
            Err(_) => Err(SendError::Unknown(Reply {
                code: None,
                text: format!(
                    "no answer within {}s after the message was sent",
                    self.timeout.as_secs_f64()
                ),
            })),
        }
    }
}

fn classify(e: lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| i32::from(u16::from(c)));
    let reply = Reply {
        code,
        text: e.to_string(),
    };
    if e.is_permanent() {
        SendError::Permanent(reply)
    } else {
        SendError::Transient(reply)
    }
}
