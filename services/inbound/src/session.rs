//! One SMTP session of the inbound listener, server side (RFC 5321): greeting, EHLO, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT, with PIPELINING, and STARTTLS (RFC 3207) when a certificate is
//! configured: the session hands its stream back to be wrapped in TLS ([`Ended::StartTls`]),
//! dropping whatever the client pipelined after the command, and starts afresh over TLS. Commands and the dot-terminated body are parsed by
//! `smtp-proto`; this module holds the session's state and its answers, and the bounds: the size
//! of a message (552, the rest of the body read and dropped), the recipients of one message, the
//! wait for each command, the session's length, and the bad commands it tolerates.
//!
//! It decides nothing about mail: which recipients are taken and what happens to a message are
//! the [`Mailroom`]'s. A message is answered 250 only once the mailroom has recorded it.

use std::{future::Future, time::Duration};

use pulse_shared::verp::Token;
use smtp_proto::{
    Error as ProtoError, Request,
    request::receiver::{DataReceiver, DummyDataReceiver, RequestReceiver},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Most recipients of one message.
pub const MAX_RECIPIENTS: usize = 100;
/// Bad commands tolerated in one session before it is closed.
const MAX_ERRORS: u32 = 20;

/// What a session answers for: where mail goes.
pub trait Mailroom: Send + Sync {
    /// Whether mail for `rcpt` is taken here: `Ok(Some(token))` with what a tagged address
    /// (`bounce+…`, `unsubscribe+…`) names, if it is one; `Ok(None)` for a stranger (550).
    fn accepts(
        &self,
        rcpt: &str,
    ) -> impl Future<Output = Result<Option<Option<Token>>, String>> + Send;

    /// Records one message durably; an error answers 451 (the client tries again).
    fn deliver(
        &self,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> impl Future<Output = Result<i64, String>> + Send;
}

/// The envelope of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// `None`: the null sender `<>` (bounces and auto-replies).
    pub mail_from: Option<String>,
    pub rcpt_to: Vec<String>,
    /// What the first tagged address among the recipients names (`pulse_shared::verp`).
    pub verp: Option<Token>,
}

/// The bounds of a session.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_bytes: usize,
    /// The longest wait for a command, or for more of a message body.
    pub command_timeout: Duration,
    /// The longest a session may last.
    pub session_timeout: Duration,
    /// The name in the greeting.
    pub hostname: String,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
}

/// How a session ended.
#[derive(Debug)]
pub enum Ended<S> {
    /// QUIT, a timeout, too many errors, or the client went away.
    Closed,
    /// The client asked for TLS and was told to go ahead: wrap the stream and serve it again
    /// (`secured`).
    StartTls(S),
}

enum Mode {
    Command,
    /// Reading the body; `Some(discard)` once it went over the size limit.
    Data(DataReceiver, Option<DummyDataReceiver>),
}

/// Serves one connection until QUIT, a timeout, too many errors, its end, or STARTTLS.
/// `secured`: the stream is already TLS (no greeting: the client says EHLO again).
pub async fn serve<S, M>(
    mut stream: S,
    room: &M,
    limits: &Limits,
    secured: bool,
) -> std::io::Result<Ended<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: Mailroom,
{
    let deadline = Instant::now() + limits.session_timeout;
    if !secured {
        stream
            .write_all(format!("220 {} ESMTP Pulse inbound\r\n", limits.hostname).as_bytes())
            .await?;
    }
    let mut session = Session {
        secured,
        ..Session::default()
    };
    let mut requests = RequestReceiver::default();
    let mut mode = Mode::Command;
    let mut body = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = String::new();
    loop {
        if pending.is_empty() {
            // Answers to pipelined commands go out together, before waiting for more.
            if !out.is_empty() {
                stream.write_all(out.as_bytes()).await?;
                out.clear();
            }
            let wait = limits
                .command_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Ok(Ended::Closed),
                Ok(Ok(n)) => pending.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    stream
                        .write_all(b"421 4.4.2 Timeout, closing the connection\r\n")
                        .await?;
                    return Ok(Ended::Closed);
                }
            }
        }
        let mut bytes = pending.iter();
        match &mut mode {
            Mode::Command => {
                let parsed = requests.ingest(&mut bytes).map(Request::into_owned);
                let left = bytes.as_slice().len();
                pending.drain(..pending.len() - left);
                let reply = match parsed {
                    Err(ProtoError::NeedsMoreData { .. }) => continue,
                    Err(e) => {
                        session.errors += 1;
                        refusal(&e)
                    }
                    Ok(request) => match session.command(request, room, limits).await {
                        Step::Reply(r) => r,
                        Step::Data => {
                            mode = Mode::Data(DataReceiver::new(), None);
                            body.clear();
                            "354 2.0.0 End data with <CR><LF>.<CR><LF>".to_owned()
                        }
                        Step::Close(r) => {
                            out.push_str(&r);
                            out.push_str("\r\n");
                            stream.write_all(out.as_bytes()).await?;
                            return Ok(Ended::Closed);
                        }
                        Step::StartTls => {
                            // Anything pipelined after STARTTLS is plaintext an attacker may
                            // have injected: dropped, never read as commands over TLS.
                            out.push_str("220 2.0.0 Ready to start TLS\r\n");
                            stream.write_all(out.as_bytes()).await?;
                            return Ok(Ended::StartTls(stream));
                        }
                    },
                };
                out.push_str(&reply);
                out.push_str("\r\n");
                if session.errors >= MAX_ERRORS {
                    out.push_str("421 4.7.0 Too many errors, closing the connection\r\n");
                    stream.write_all(out.as_bytes()).await?;
                    return Ok(Ended::Closed);
                }
            }
            Mode::Data(receiver, discard) => {
                let done = match discard {
                    Some(d) => d.ingest(&mut bytes),
                    None => receiver.ingest(&mut bytes, &mut body),
                };
                let left = bytes.as_slice().len();
                pending.drain(..pending.len() - left);
                if discard.is_none() && body.len() > limits.max_bytes {
                    *discard = Some(DummyDataReceiver::new_data(receiver));
                    body = Vec::new();
                }
                if !done {
                    continue;
                }
                let reply = if discard.is_some() {
                    session.reset();
                    format!(
                        "552 5.3.4 Message exceeds the limit of {} bytes",
                        limits.max_bytes
                    )
                } else {
                    session.finish(std::mem::take(&mut body), room).await
                };
                mode = Mode::Command;
                out.push_str(&reply);
                out.push_str("\r\n");
            }
        }
    }
}

/// What a command leads to.
enum Step {
    Reply(String),
    Data,
    Close(String),
    StartTls,
}

#[derive(Default)]
struct Session {
    /// Over TLS already.
    secured: bool,
    greeted: bool,
    mail: Option<Envelope>,
    errors: u32,
}

impl Session {
    fn reset(&mut self) {
        self.mail = None;
    }

    async fn command<M: Mailroom>(
        &mut self,
        request: Request<String>,
        room: &M,
        limits: &Limits,
    ) -> Step {
        let reply = |s: &str| Step::Reply(s.to_owned());
        match request {
            Request::Ehlo { .. } => {
                self.greeted = true;
                self.reset();
                let tls = if limits.starttls && !self.secured {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                Step::Reply(format!(
                    "250-{}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n{tls}250-SIZE {}\r\n250 ENHANCEDSTATUSCODES",
                    limits.hostname, limits.max_bytes
                ))
            }
            Request::Helo { .. } => {
                self.greeted = true;
                self.reset();
                Step::Reply(format!("250 {}", limits.hostname))
            }
            Request::Mail { from } => {
                if !self.greeted {
                    self.errors += 1;
                    return reply("503 5.5.1 Say EHLO first");
                }
                if self.mail.is_some() {
                    self.errors += 1;
                    return reply("503 5.5.1 A message is already under way");
                }
                if from.size > limits.max_bytes {
                    return Step::Reply(format!(
                        "552 5.3.4 Message exceeds the limit of {} bytes",
                        limits.max_bytes
                    ));
                }
                let address = from.address.trim().to_owned();
                self.mail = Some(Envelope {
                    mail_from: (!address.is_empty()).then_some(address),
                    ..Envelope::default()
                });
                reply("250 2.1.0 OK")
            }
            Request::Rcpt { to } => {
                let Some(mail) = &mut self.mail else {
                    self.errors += 1;
                    return reply("503 5.5.1 MAIL first");
                };
                if mail.rcpt_to.len() >= MAX_RECIPIENTS {
                    return reply("452 4.5.3 Too many recipients");
                }
                let rcpt = to.address.trim().to_owned();
                match room.accepts(&rcpt).await {
                    Ok(Some(verp)) => {
                        if mail.verp.is_none() {
                            mail.verp = verp;
                        }
                        mail.rcpt_to.push(rcpt);
                        reply("250 2.1.5 OK")
                    }
                    Ok(None) => {
                        self.errors += 1;
                        reply("550 5.1.1 No such recipient here")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "recipient not checked; asking the client to retry");
                        reply("451 4.3.0 Cannot check the recipient now; try again later")
                    }
                }
            }
            Request::Data => match &self.mail {
                Some(m) if !m.rcpt_to.is_empty() => Step::Data,
                _ => {
                    self.errors += 1;
                    reply("503 5.5.1 RCPT first")
                }
            },
            Request::Rset => {
                self.reset();
                reply("250 2.0.0 OK")
            }
            Request::Noop { .. } => reply("250 2.0.0 OK"),
            Request::Quit => Step::Close("221 2.0.0 Bye".to_owned()),
            Request::Vrfy { .. } => reply("252 2.1.5 Cannot verify the user, but will take mail"),
            Request::Help { .. } => reply("214 2.0.0 See RFC 5321"),
            Request::StartTls if self.secured => {
                self.errors += 1;
                reply("503 5.5.1 TLS is already active")
            }
            Request::StartTls if !limits.starttls => reply("454 4.7.0 TLS not available"),
            Request::StartTls => Step::StartTls,
            // The chunk's bytes follow the command: without CHUNKING they cannot be told apart
            // from commands, so the session ends.
            Request::Bdat { .. } => Step::Close("502 5.5.1 CHUNKING is not offered".to_owned()),
            Request::Auth { .. } => reply("502 5.5.1 AUTH is not offered"),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => {
                self.errors += 1;
                reply("502 5.5.1 Command not implemented")
            }
        }
    }

    /// The end of a body: the mailroom records it, or the client is asked to try again.
    async fn finish<M: Mailroom>(&mut self, raw: Vec<u8>, room: &M) -> String {
        let Some(envelope) = self.mail.take() else {
            return "503 5.5.1 No message under way".to_owned();
        };
        match room.deliver(envelope, raw).await {
            Ok(id) => format!("250 2.0.0 OK: recorded as {id}"),
            Err(e) => {
                tracing::warn!(error = %e, "message not recorded; asking the client to retry");
                "451 4.3.0 Not recorded; try again later".to_owned()
            }
        }
    }
}

fn refusal(e: &ProtoError) -> String {
    match e {
        ProtoError::UnknownCommand => "500 5.5.1 Unknown command".to_owned(),
        ProtoError::InvalidSenderAddress => "501 5.1.7 Bad sender address".to_owned(),
        ProtoError::InvalidRecipientAddress => "501 5.1.3 Bad recipient address".to_owned(),
        ProtoError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
        ProtoError::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}"),
        ProtoError::UnsupportedParameter { .. } => "555 5.5.4 Unsupported parameter".to_owned(),
        ProtoError::ResponseTooLong => "500 5.5.2 Line too long".to_owned(),
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            "500 5.5.2 Syntax error".to_owned()
        }
    }
}

#[cfg(test)]
mod tests;
