//! The inbound role: an SMTP listener that reads what comes back after a send, the MX of the
//! bounce domain and of the addresses workspaces send from.
//!
//! * `session`: one SMTP conversation and its bounds.
//! * `classify`: what a message is (reply, auto-reply, bounce, complaint) and what it names.
//! * here: which recipients are taken ([`Room::accepts`]: any address at `PULSE_BOUNCE_DOMAIN`,
//!   and every address a workspace sends from or asks replies to, per
//!   `feedback::is_sending_address`; others get 550), recording a
//!   message before it is answered 250 (`pulse_shared::feedback::record`), the connection limit
//!   (over it: 421), and the processor, which does what each recorded message means
//!   (`feedback::process`) right after it is recorded and, for anything left by a crash or a
//!   failure, at every sweep.
//!
//! It never sends mail and never touches a message's send beyond what `feedback` does.

pub mod classify;
pub mod session;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use pulse_shared::{
    Settings,
    config::InboundSettings,
    db::StoreError,
    feedback::{self, Kind, Report},
    metrics::Metrics,
    unsubscribe::Unsubscribe,
    verp::{self, Purpose, Token},
};
use sqlx::PgPool;
use tokio::{
    io::AsyncWriteExt,
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tokio_util::sync::CancellationToken;

pub use session::{Ended, Envelope, Limits, Mailroom};

/// How often recorded messages left unprocessed are looked for.
const SWEEP: Duration = Duration::from_secs(5);
/// Messages processed per sweep.
const SWEEP_BATCH: i64 = 500;
/// Messages processed at once.
const PROCESSORS: usize = 8;
/// The longest one session may last.
const SESSION: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the inbound TLS certificate or key: {0}")]
    Tls(String),
}

/// The STARTTLS acceptor of `PULSE_INBOUND_TLS_CERT_FILE` and `…_KEY_FILE`, if they are set.
fn acceptor(inbound: &InboundSettings) -> Result<Option<TlsAcceptor>, InboundError> {
    let (Some(cert), Some(key)) = (&inbound.tls_cert_file, &inbound.tls_key_file) else {
        return Ok(None);
    };
    let tls = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        InboundError::Tls(format!("{}: {e}", what.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(cert, &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| tls(cert, &e))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Where the listener's mail goes: the database, through `feedback`.
pub struct Room {
    db: PgPool,
    keys: Unsubscribe,
    bounce_domain: Option<String>,
    metrics: Metrics,
    /// Tells the processor a message was recorded.
    recorded: mpsc::UnboundedSender<i64>,
}

impl Mailroom for Room {
    async fn accepts(&self, rcpt: &str) -> Result<Option<Option<Token>>, String> {
        let rcpt = rcpt.trim();
        let domain = rcpt
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
        if let (Some(ours), Some(domain)) = (&self.bounce_domain, domain)
            && *ours == domain
        {
            // The token is case-sensitive (base64): verified as received.
            return Ok(Some(verp::verify_token(&self.keys, rcpt)));
        }
        feedback::is_sending_address(&self.db, rcpt)
            .await
            .map(|known| known.then_some(None))
            .map_err(|e| e.to_string())
    }

    async fn deliver(&self, envelope: Envelope, raw: Vec<u8>) -> Result<i64, String> {
        let bounce = envelope
            .verp
            .as_ref()
            .filter(|t| t.purpose == Purpose::Bounce)
            .map(|t| t.hash.as_str());
        let mut c = classify::classify(&raw, envelope.mail_from.as_deref(), bounce);
        // Mail to a send's `unsubscribe+…` address (the `mailto:` of List-Unsubscribe)
        // unsubscribes the lead it went to, whatever it says.
        if let Some(Token {
            purpose: Purpose::Unsubscribe,
            hash,
        }) = &envelope.verp
        {
            c.kind = Kind::Unsubscribe;
            c.hashes = vec![hash.clone()];
            c.address = None;
        }
        // A lead who writes anew to the rep instead of replying: matched by address.
        let mut matched = None;
        if c.kind == Kind::Other
            && c.hashes.is_empty()
            && envelope.verp.is_none()
            && let Some(address) = &c.address
        {
            matched = feedback::find_unthreaded(&self.db, address, &envelope.rcpt_to)
                .await
                .map_err(|e| e.to_string())?;
            if matched.is_some() {
                c.kind = Kind::Reply;
                c.detail["matched_by"] = "address".into();
            }
        }
        let report = report(c, envelope, raw, matched);
        let (id, matched) = feedback::record(&self.db, &report)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.inbound(report.kind.as_str());
        tracing::info!(
            id,
            kind = report.kind.as_str(),
            matched = matched.key.is_some(),
            "inbound message recorded"
        );
        // A lost notice is picked up by the next sweep.
        let _ = self.recorded.send(id);
        Ok(id)
    }
}

/// What the listener records for a message received with `envelope` and classified as `c`.
pub fn report(
    c: classify::Classified,
    envelope: Envelope,
    raw: Vec<u8>,
    matched: Option<feedback::Matched>,
) -> Report {
    Report {
        matched,
        source: "smtp",
        kind: c.kind,
        mail_from: envelope.mail_from,
        rcpt_to: envelope.rcpt_to,
        raw: Some(raw),
        payload: Vec::new(),
        workspace: None,
        hashes: c.hashes,
        address: c.address,
        detail: c.detail,
    }
}

/// Runs the inbound role on `listener` until `shutdown`: sessions, and the processor.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    db: PgPool,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), InboundError> {
    let keys = Unsubscribe::load(&db, &settings).await?;
    let inbound = settings.inbound.clone();
    let tls = acceptor(&inbound)?;
    let (recorded, notices) = mpsc::unbounded_channel();
    let room = Arc::new(Room {
        db: db.clone(),
        keys,
        bounce_domain: inbound.bounce_domain.clone(),
        metrics,
        recorded,
    });
    let processor = tokio::spawn(process_loop(
        db,
        inbound.soft_bounce_limit,
        notices,
        shutdown.clone(),
    ));
    let limits = Arc::new(Limits {
        max_bytes: inbound.max_bytes,
        command_timeout: inbound.command_timeout,
        session_timeout: SESSION,
        hostname: inbound
            .bounce_domain
            .clone()
            .unwrap_or_else(|| "localhost".into()),
        starttls: tls.is_some(),
    });
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, bounce_domain = ?inbound.bounce_domain, "inbound SMTP listening");
    accept_loop(listener, room, limits, tls, &inbound, shutdown).await;
    // The processor stops with the shutdown; what it leaves is swept at the next start.
    let _ = processor.await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    room: Arc<Room>,
    limits: Arc<Limits>,
    tls: Option<TlsAcceptor>,
    inbound: &InboundSettings,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(inbound.max_connections));
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (mut stream, peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "inbound connection not accepted");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                    .await;
            });
            continue;
        };
        let (room, limits, tls) = (room.clone(), limits.clone(), tls.clone());
        sessions.spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let ended = match session::serve(stream, room.as_ref(), &limits, false).await {
                Ok(Ended::StartTls(plain)) => match tls {
                    Some(tls) => match tls.accept(plain).await {
                        Ok(secured) => session::serve(secured, room.as_ref(), &limits, true)
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    },
                    None => Ok(()),
                },
                other => other.map(|_| ()),
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "inbound session ended with an error");
            }
        });
        while sessions.try_join_next().is_some() {}
    }
    // Sessions under way get a moment to finish their message; then they are dropped (a client
    // that got no 250 sends again).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
}

/// Processes each message as it is recorded, and sweeps for any left unprocessed; up to
/// [`PROCESSORS`] at once (each in its own transactions; two never take the same message).
async fn process_loop(
    db: PgPool,
    soft_bounce_limit: i32,
    mut notices: mpsc::UnboundedReceiver<i64>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(PROCESSORS));
    let mut running = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        let ids = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(id) = notices.recv() => vec![id],
            _ = sweep.tick() => match feedback::pending(&db, SWEEP_BATCH).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "unprocessed inbound messages not read; trying again at the next sweep");
                    continue;
                }
            },
        };
        for id in ids {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let db = db.clone();
            running.spawn(async move {
                let _slot = slot;
                process_one(&db, id, soft_bounce_limit).await;
            });
            while running.try_join_next().is_some() {}
        }
    }
    // What is under way finishes (each is a few statements); the rest waits for the next start.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while running.join_next().await.is_some() {}
    })
    .await;
}

async fn process_one(db: &PgPool, id: i64, soft_bounce_limit: i32) {
    match feedback::process(db, id, soft_bounce_limit).await {
        Ok(Some(done)) => tracing::info!(
            id,
            kind = done.kind.as_str(),
            ended = done.ended,
            outcome = %done.outcome,
            "inbound message processed"
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(id, error = %e, "inbound message not processed; trying again at the next sweep")
        }
    }
}
