//! A bounded pool of connections to one SMTP relay, and one SMTP transaction on a connection.
//!
//! Every connection is a socket opened here with `TCP_NODELAY` (lettre 0.11 writes the body and
//! the final dot as two writes, so without it the relay's delayed ACK costs ~40 ms a message)
//! and wrapped in a [`Gated`] stream, then handed to lettre's `AsyncSmtpConnection`, which
//! speaks SMTP: EHLO, STARTTLS (`?tls=required|opportunistic`), AUTH PLAIN or LOGIN, whichever
//! the relay offers, then MAIL, RCPT, DATA. Implicit TLS (`smtps://`) is the handshake of
//! `tls.rs` before lettre reads the greeting.
//!
//! A transaction is driven phase by phase so that a failure is classified by what the relay can
//! have received: MAIL, RCPT or DATA refused, or the connection lost before the final dot,
//! means nothing went out (the connection is kept after a refusal, with RSET); a lost answer
//! after the dot leaves the outcome unknown. The dot leaves only after the sender's gate opened
//! (its claim committed and its re-check passed), and the gate is asked only once the body is
//! out (`gate.rs`).
//!
//! A connection that cannot be set up (TLS refused, AUTH refused, STARTTLS required but not
//! offered) fails the send as transient, never as sent; [`SmtpPool::probe`] reports the same at
//! startup so a misconfigured relay shows on the readiness check.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lettre::{
    Message,
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, AsyncTokioStream},
        commands::{Data, Mail, Rcpt, Rset},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter},
    },
};
use pulse_shared::{
    ledger::Reply,
    smtp_url::{Security, SmtpUrl},
};
use rustls::pki_types::ServerName;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    SendError,
    gate::{BodyThenHold, Gate, Gated},
    tls::{TlsConfig, TlsSetupError},
};

/// Idle time after which a pooled connection is probed before use.
const IDLE_PROBE_AFTER: Duration = Duration::from_secs(5);

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The relay could not be reached or did not answer in time: may pass by itself.
    #[error("{0}")]
    Network(String),
    /// The relay was reached and refused the setup (certificate, STARTTLS, AUTH): needs an
    /// operator.
    #[error("{0}")]
    Refused(String),
}

impl From<ConnectError> for SendError {
    /// A send that could not connect is retried: nothing went out.
    fn from(e: ConnectError) -> Self {
        SendError::transient(e.to_string())
    }
}

/// An open relay connection and the gate under it.
struct Open {
    conn: AsyncSmtpConnection,
    gate: Arc<Gate>,
}

/// A bounded pool of SMTP connections to one relay.
pub struct SmtpPool {
    relay: SmtpUrl,
    tls: Option<TlsConfig>,
    hello: ClientId,
    timeout: Duration,
    idle: std::sync::Mutex<Vec<(Box<Open>, Instant)>>,
    permits: Arc<Semaphore>,
}

impl SmtpPool {
    /// A pool of at most `size` connections to `relay`. `ca_pem` adds private CA certificates
    /// to the webpki roots for relays that speak TLS.
    pub fn new(
        relay: SmtpUrl,
        size: usize,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, TlsSetupError> {
        let tls = match relay.security {
            Security::Plain => None,
            _ => Some(TlsConfig::new(&relay.host, ca_pem)?),
        };
        Ok(Self {
            relay,
            tls,
            hello: ClientId::default(),
            timeout,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Opens one connection (TLS and AUTH included) and keeps it for the first send. `Err` when
    /// the relay refuses the setup; a relay that cannot be reached is only logged, since it may
    /// come back and every send retries.
    pub async fn probe(&self) -> Result<(), ConnectError> {
        match self.connect().await {
            Ok(open) => {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push((open, Instant::now()));
                }
                Ok(())
            }
            Err(ConnectError::Network(e)) => {
                tracing::warn!(host = %self.relay.host, port = self.relay.port, error = %e, "SMTP relay not reachable yet; sends will retry");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Opens a connection: TCP, TLS, the greeting, STARTTLS and AUTH, within one SMTP timeout
    /// in all (`SenderSettings::unmarked_lease` counts on it).
    async fn connect(&self) -> Result<Box<Open>, ConnectError> {
        tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| {
                ConnectError::Network(format!(
                    "setting up a connection to the SMTP relay {} took over {}s",
                    self.relay.host,
                    self.timeout.as_secs_f64()
                ))
            })?
    }

    async fn open(&self) -> Result<Box<Open>, ConnectError> {
        let network = |what: &str, e: &dyn std::fmt::Display| {
            ConnectError::Network(format!("{what} the SMTP relay {}: {e}", self.relay.host))
        };
        let addr = (self.relay.host.as_str(), self.relay.port);
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| network("timed out connecting to", &"no answer"))?
            .map_err(|e| network("cannot connect to", &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| network("setting TCP_NODELAY towards", &e))?;
        let gate = Arc::new(Gate::default());
        let stream: Box<dyn AsyncTokioStream> = match (&self.tls, self.relay.security) {
            (Some(tls), Security::Implicit) => {
                let name = ServerName::try_from(self.relay.host.clone()).map_err(|e| {
                    ConnectError::Refused(format!(
                        "{:?} is not a TLS server name: {e}",
                        self.relay.host
                    ))
                })?;
                let tls = tokio::time::timeout(self.timeout, tls.connector().connect(name, tcp))
                    .await
                    .map_err(|_| network("timed out in the TLS handshake with", &"no answer"))?
                    .map_err(|e| match e.kind() {
                        // rustls reports a refused certificate or handshake as invalid data.
                        std::io::ErrorKind::InvalidData => tls_refused(&self.relay.host, &e),
                        _ => network("TLS handshake failed with", &e),
                    })?;
                Box::new(Gated::new(tls, gate.clone()))
            }
            _ => Box::new(Gated::new(tcp, gate.clone())),
        };
        let mut conn = self
            .within(AsyncSmtpConnection::connect_with_transport(
                stream,
                &self.hello,
            ))
            .await?
            .map_err(|e| setup("greeting from", &self.relay.host, e))?;
        let mut encrypted = self.relay.security == Security::Implicit;
        if let Some(tls) = &self.tls
            && matches!(
                self.relay.security,
                Security::Required | Security::Opportunistic
            )
        {
            if conn.server_info().supports_feature(Extension::StartTls) {
                self.within(conn.starttls(tls.starttls(), &self.hello))
                    .await?
                    .map_err(|e| match e.status() {
                        Some(_) => setup("STARTTLS with", &self.relay.host, e),
                        None => tls_refused(&self.relay.host, &e),
                    })?;
                encrypted = true;
            } else if self.relay.security == Security::Required {
                return Err(ConnectError::Refused(format!(
                    "the SMTP relay {} does not offer STARTTLS, and the URL requires it (tls=required)",
                    self.relay.host
                )));
            }
        }
        if let Some(credentials) = &self.relay.credentials {
            if self.relay.security.tls() && !encrypted {
                return Err(ConnectError::Refused(format!(
                    "the SMTP relay {} did not offer STARTTLS: credentials are never sent in clear (use tls=required)",
                    self.relay.host
                )));
            }
            let credentials = Credentials::new(
                credentials.user.clone(),
                credentials.password.expose().to_owned(),
            );
            self.within(conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials))
                .await?
                .map_err(|e| setup("AUTH with", &self.relay.host, e))?;
        }
        Ok(Box::new(Open { conn, gate }))
    }

    async fn within<T>(&self, step: impl Future<Output = T>) -> Result<T, ConnectError> {
        tokio::time::timeout(self.timeout, step).await.map_err(|_| {
            ConnectError::Network(format!(
                "the SMTP relay {} did not answer within {}s",
                self.relay.host,
                self.timeout.as_secs_f64()
            ))
        })
    }

    /// An idle connection that still answers; one idle for a while is probed with NOOP first,
    /// since relays close idle connections and a send must not fail for that.
    async fn take_idle(&self) -> Option<Box<Open>> {
        loop {
            let (mut open, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() < IDLE_PROBE_AFTER || open.conn.test_connected().await {
                return Some(open);
            }
        }
    }

    /// Waits for a free place in the pool (at most `wait`, if given: `None` when none freed up),
    /// then takes an idle connection or opens one.
    pub(super) async fn checkout(
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
        let open = match self.take_idle().await {
            Some(open) => open,
            None => match self.connect().await {
                Ok(open) => open,
                Err(e) => return Some(Err(e.into())),
            },
        };
        Some(Ok(Connection {
            pool: self,
            open: Some(open),
            _permit: permit,
        }))
    }

    /// One SMTP transaction (see the module doc). `Err((error, reusable))`: whether the
    /// connection is still in a clean state for another transaction.
    async fn transact(
        &self,
        open: &mut Open,
        message: &Message,
        on_wire: impl Future<Output = bool>,
    ) -> Result<Reply, (SendError, bool)> {
        let conn = &mut open.conn;
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
        match tokio::time::timeout(self.timeout, before_body).await {
            Ok(Ok(())) => {}
            // A refusal leaves the connection usable after RSET; a lost connection does not.
            Ok(Err(e)) => {
                let refused = matches!(&e, SendError::Permanent(r) | SendError::Transient(r) if r.code.is_some());
                let reusable = refused && self.reset(conn).await;
                return Err((e, reusable));
            }
            Err(_) => {
                return Err((
                    SendError::transient("the SMTP relay timed out before the message was sent"),
                    false,
                ));
            }
        }
        // The relay said 354. The body goes out; once it is out, the gate is asked; only
        // then does the final dot follow (`gate.rs`).
        let (parts, body_out, verdict) = BodyThenHold::new(&bytes, open.gate.clone());
        let mark = async move {
            body_out.await.ok()?;
            let marked = on_wire.await;
            let _ = verdict.send(marked);
            Some(marked)
        };
        let sending = tokio::time::timeout(self.timeout, conn.message_iter(parts));
        let (marked, sent) = tokio::join!(mark, sending);
        let dot_sent = open.gate.is_open();
        if !dot_sent {
            // Whatever lettre or TLS still buffers (the dot) must never reach the relay.
            open.gate.shut();
        }
        let not_sent = |what: &str| {
            if marked == Some(false) {
                SendError::Withheld
            } else {
                SendError::transient(format!("{what} before the end of the message: not sent"))
            }
        };
        match sent {
            Ok(Ok(response)) => Ok(Reply::from_relay(
                Some(i32::from(u16::from(response.code()))),
                &response.message().collect::<Vec<_>>().join(" "),
            )),
            // The relay answered, and refused: nothing was accepted.
            Ok(Err(e)) if e.status().is_some() => Err((classify(e), false)),
            Ok(Err(e)) if dot_sent => Err((
                SendError::Unknown(Reply::from_relay(
                    None,
                    &format!("connection lost after the message was sent: {e}"),
                )),
                false,
            )),
            Ok(Err(e)) => Err((not_sent(&format!("connection lost ({e})")), false)),
            Err(_) if dot_sent => Err((
                SendError::Unknown(Reply {
                    code: None,
                    text: format!(
                        "no answer within {}s after the message was sent",
                        self.timeout.as_secs_f64()
                    ),
                }),
                false,
            )),
            Err(_) => Err((not_sent("timed out"), false)),
        }
    }

    /// RSET after a refused MAIL, RCPT or DATA, so the connection serves the next send.
    async fn reset(&self, conn: &mut AsyncSmtpConnection) -> bool {
        matches!(
            tokio::time::timeout(self.timeout, conn.command(Rset)).await,
            Ok(Ok(_))
        )
    }
}

/// A pooled SMTP connection and its pool permit; back to the pool's idle list when dropped,
/// unless it broke.
pub struct Connection {
    pool: Arc<SmtpPool>,
    open: Option<Box<Open>>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    pub(super) async fn send(
        mut self,
        message: &Message,
        on_wire: impl Future<Output = bool>,
    ) -> Result<Reply, SendError> {
        let Some(open) = self.open.as_mut() else {
            return Err(SendError::transient("SMTP connection already used"));
        };
        match self.pool.transact(open, message, on_wire).await {
            Ok(reply) => Ok(reply),
            Err((e, true)) => Err(e),
            Err((e, false)) => {
                if let Some(mut open) = self.open.take() {
                    open.conn.abort().await;
                }
                Err(e)
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(open) = self.open.take()
            && !open.conn.has_broken()
            && open.gate.is_open()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push((open, Instant::now()));
        }
    }
}

/// A setup step the relay answered badly: refused with a code, or broke off.
fn setup(step: &str, host: &str, e: lettre::transport::smtp::Error) -> ConnectError {
    match e.status() {
        Some(code) => ConnectError::Refused(format!(
            "{step} the SMTP relay {host} refused ({}): {e}",
            u16::from(code)
        )),
        None => ConnectError::Network(format!("{step} the SMTP relay {host} failed: {e}")),
    }
}

fn tls_refused(host: &str, e: &dyn std::fmt::Display) -> ConnectError {
    ConnectError::Refused(format!("TLS with the SMTP relay {host} failed: {e}"))
}

fn classify(e: lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| i32::from(u16::from(c)));
    let reply = Reply::from_relay(code, &e.to_string());
    // 530/534/535/538 say this connection is not authenticated: the relay's configuration,
    // not the message, is at fault, and the send is retried once an operator fixes it.
    let auth = matches!(code, Some(530 | 534 | 535 | 538));
    if e.is_permanent() && !auth {
        SendError::Permanent(reply)
    } else {
        SendError::Transient(reply)
    }
}
