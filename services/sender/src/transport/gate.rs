//! The socket under every relay connection, able to hold back a message's final dot.
//!
//! A send is in doubt only from the moment the relay may have the whole message: the final
//! `<CRLF>.<CRLF>` of DATA. The sender's ledger claim (which marks the send as on the wire)
//! must be committed before that dot leaves, and should not be made before the body has gone
//! out, or a crash in between leaves in doubt a message the relay never saw. lettre writes the body and the dot
//! in one call ([`AsyncSmtpConnection::message_iter`]), so this module splits it from below:
//!
//! * [`Gated`] wraps the TCP (or TLS) stream handed to lettre. While its [`Gate`] is held,
//!   every write waits for a verdict; `true` lets it through, anything else shuts the gate and
//!   fails every later write, so the dot never leaves and the relay discards the transaction.
//! * [`BodyThenHold`] is the iterator given to `message_iter`. lettre asks it for the next part
//!   only after the previous one was written and flushed, so when it is asked the second time
//!   the body is out: it holds the gate and tells the caller, which claims the key, re-checks
//!   the run and gives the verdict.
//!
//! Under STARTTLS the gate sits below TLS: the held write is then the TLS record carrying the
//! dot, which is the same thing. The gate never inspects bytes; it only orders them.
//!
//! [`AsyncSmtpConnection::message_iter`]: lettre::transport::smtp::client::AsyncSmtpConnection::message_iter

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::oneshot,
};

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Open,
    /// Writes wait for this verdict.
    Held(oneshot::Receiver<bool>),
    /// The verdict was not `true`: nothing more is written on this connection.
    Shut,
}

/// Shared between a [`Gated`] stream (inside lettre) and the transport that drives it.
#[derive(Debug, Default)]
pub struct Gate {
    phase: Mutex<Phase>,
}

impl Gate {
    /// Writes wait for `verdict` from now on.
    fn hold(&self, verdict: oneshot::Receiver<bool>) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = Phase::Held(verdict);
    }

    /// Nothing more is written on this connection (a held write fails).
    pub fn shut(&self) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = Phase::Shut;
    }

    /// Whether writes pass: the gate was never held, or its verdict let them through.
    pub fn is_open(&self) -> bool {
        matches!(
            *self.phase.lock().unwrap_or_else(PoisonError::into_inner),
            Phase::Open
        )
    }

    fn poll_pass(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let verdict = match &mut *phase {
            Phase::Open => return Poll::Ready(Ok(())),
            Phase::Shut => return Poll::Ready(Err(withheld())),
            Phase::Held(verdict) => ready!(Pin::new(verdict).poll(cx)),
        };
        if verdict == Ok(true) {
            *phase = Phase::Open;
            Poll::Ready(Ok(()))
        } else {
            *phase = Phase::Shut;
            Poll::Ready(Err(withheld()))
        }
    }
}

fn withheld() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "withheld: the gate stayed shut before the final dot",
    )
}

/// A stream whose writes pass through a [`Gate`].
#[derive(Debug)]
pub struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Gated<S> {
    pub fn new(inner: S, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.gate.poll_pass(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.gate.poll_pass(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Gated<TcpStream> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

impl AsyncTokioStream for Gated<tokio_rustls::client::TlsStream<TcpStream>> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().0.peer_addr()
    }
}

/// The parts of a message for `message_iter`: the body, then, once the body is written, the
/// gate held and the caller told (`body_out`) that it can decide the verdict.
pub struct BodyThenHold<'a> {
    body: Option<&'a [u8]>,
    hold: Option<(Arc<Gate>, oneshot::Receiver<bool>, oneshot::Sender<()>)>,
}

impl<'a> BodyThenHold<'a> {
    /// Returns the iterator, the receiver told when the body is out, and the sender of the
    /// verdict.
    pub fn new(
        body: &'a [u8],
        gate: Arc<Gate>,
    ) -> (Self, oneshot::Receiver<()>, oneshot::Sender<bool>) {
        let (body_out, body_out_rx) = oneshot::channel();
        let (verdict, verdict_rx) = oneshot::channel();
        let parts = Self {
            body: Some(body),
            hold: Some((gate, verdict_rx, body_out)),
        };
        (parts, body_out_rx, verdict)
    }
}

impl<'a> Iterator for BodyThenHold<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if let Some(body) = self.body.take() {
            return Some(body);
        }
        if let Some((gate, verdict, body_out)) = self.hold.take() {
            gate.hold(verdict);
            let _ = body_out.send(());
        }
        None
    }
}
