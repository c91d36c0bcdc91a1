//! What a sender holds for its whole life: its connections (PostgreSQL, Redis, the relay or the
//! capture outbox, the mailboxes' relays), its unsubscribe key, and the batchers that share one
//! ledger statement among the deliveries that want it at the same moment (snapshots, the gate's
//! claim and re-check, sent records). Built once by [`Context::build`]; it sends nothing.

use std::{sync::Arc, time::Duration};

use pulse_shared::{
    Settings,
    batch::{BatchOp, Batcher},
    config::SenderSettings,
    db::{self, StoreError},
    ledger::{self, ClaimRequest, Gated, SentRecord, Settled, Snapshot},
    metrics::Metrics,
    pause::PauseFlags,
    smtp_url::{Secret, SmtpUrl},
    unsubscribe::Unsubscribe,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    SenderError,
    transport::{Mailboxes, SmtpPool, Transport},
};

/// What handling one message needs.
#[derive(Clone)]
pub struct Context {
    /// This sender's worker id: the owner its claims name.
    pub worker: Uuid,
    pub db: PgPool,
    pub flags: PauseFlags,
    pub transport: Transport,
    /// The relays and DKIM keys of the mailboxes sends come from.
    pub mailboxes: Arc<Mailboxes>,
    /// Signs the one-click unsubscribe link of every message, and its VERP bounce address.
    pub unsubscribe: Unsubscribe,
    /// `PULSE_BOUNCE_DOMAIN`: with it, each message's envelope sender is its VERP address.
    pub bounce_domain: Option<String>,
    pub settings: SenderSettings,
    /// `PULSE_PRIORITY_AGING_MS`: a send waiting on a limit gains a priority level per this
    /// much waiting, as in the scheduler's claim.
    pub priority_aging: Duration,
    pub metrics: Metrics,
    pub(crate) batches: Batches,
}

/// The ledger statements every send makes, each shared by the deliveries that want it at the
/// same moment (see `pulse_shared::batch`): snapshots, gates (claim, then re-check) and sent
/// records.
#[derive(Clone)]
pub(crate) struct Batches {
    pub(crate) snapshots: Batcher<Snapshots>,
    pub(crate) gates: Batcher<Gates>,
    pub(crate) sent: Batcher<Sent>,
}

/// Batches of one kind running at once: two, so that one waiting on a row lock (a scheduler
/// that has not committed yet) does not hold up the sends behind it. Not more: each batch is a
/// statement whose start-up, commit and index work are paid per batch, and with three the
/// batches were smaller and PostgreSQL spent 20 % more CPU per send (`docs/BENCHMARKS.md`).
const BATCHES_IN_FLIGHT: usize = 2;

impl Batches {
    fn spawn(db: &PgPool, settings: &Settings, worker: Uuid) -> Self {
        let s = &settings.sender;
        Self {
            gates: Batcher::spawn(
                Gates {
                    db: db.clone(),
                    leases: ledger::Leases::new(settings),
                    worker,
                },
                s.db_batch,
                BATCHES_IN_FLIGHT,
                s.db_linger,
            ),
            snapshots: Batcher::spawn(
                Snapshots(db.clone()),
                s.db_batch,
                BATCHES_IN_FLIGHT,
                s.db_linger,
            ),
            sent: Batcher::spawn(Sent(db.clone()), s.db_batch, BATCHES_IN_FLIGHT, s.db_linger),
        }
    }
}

pub(crate) struct Gates {
    db: PgPool,
    leases: ledger::Leases,
    worker: Uuid,
}

impl BatchOp for Gates {
    type Item = ClaimRequest;
    type Output = Gated;
    async fn many(
        &self,
        items: &[ClaimRequest],
    ) -> Result<Vec<Result<Gated, StoreError>>, StoreError> {
        ledger::gate_many(&self.db, items, &self.leases, self.worker).await
    }
    async fn one(&self, r: &ClaimRequest) -> Result<Gated, StoreError> {
        let mut one =
            ledger::gate_many(&self.db, std::slice::from_ref(r), &self.leases, self.worker).await?;
        one.pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("no gate result".into())))
    }
}

pub(crate) struct Snapshots(PgPool);

impl BatchOp for Snapshots {
    type Item = Uuid;
    type Output = Snapshot;
    async fn many(&self, runs: &[Uuid]) -> Result<Vec<Result<Snapshot, StoreError>>, StoreError> {
        ledger::snapshot_many(&self.0, runs).await
    }
    async fn one(&self, &run: &Uuid) -> Result<Snapshot, StoreError> {
        ledger::snapshot(&self.0, run).await
    }
}

pub(crate) struct Sent(PgPool);

impl BatchOp for Sent {
    type Item = SentRecord;
    type Output = Settled;
    async fn many(
        &self,
        records: &[SentRecord],
    ) -> Result<Vec<Result<Settled, StoreError>>, StoreError> {
        ledger::record_sent_many(&self.0, records).await
    }
    async fn one(&self, r: &SentRecord) -> Result<Settled, StoreError> {
        ledger::record_sent(
            &self.0,
            &r.fence,
            r.step_run,
            &r.reply,
            r.at,
            Some(&r.followup),
        )
        .await
    }
}

impl Context {
    /// Connects to PostgreSQL and Redis and picks the transport from `PULSE_SMTP_URL`; its
    /// claims will name `worker`.
    pub async fn build(
        settings: &Settings,
        metrics: Metrics,
        worker: Uuid,
    ) -> Result<Self, SenderError> {
        let s = &settings.sender;
        // Database work per send is short (most of a send waits on SMTP): a few connections
        // serve many concurrent sends, and several senders stay under PostgreSQL's limit.
        let db = db::pool_with(
            settings,
            (s.concurrency as u32).min(16) + 2,
            db::Plans::Generic,
        )?;
        let flags = PauseFlags::connect_for(settings, Duration::from_secs(30)).await?;
        let transport = match &settings.smtp_url {
            Some(url) => Transport::Smtp(Arc::new(relay_pool(settings, url)?)),
            None => Transport::Capture(db.clone()),
        };
        let ca = settings
            .tls_ca()
            .map_err(|e| SenderError::Tls(e.to_string()))?;
        let unsubscribe = Unsubscribe::load(&db, settings).await?;
        Ok(Self {
            unsubscribe,
            bounce_domain: settings.inbound.bounce_domain.clone(),
            mailboxes: Arc::new(Mailboxes::new(s.smtp_timeout, ca)),
            batches: Batches::spawn(&db, settings, worker),
            worker,
            db,
            flags,
            transport,
            settings: s.clone(),
            priority_aging: settings.scheduler.priority_aging,
            metrics,
        })
    }
}

/// The relay's connection pool: the URL, the password file and the CA bundle of `settings`.
fn relay_pool(settings: &Settings, url: &str) -> Result<SmtpPool, SenderError> {
    let mut relay = SmtpUrl::parse(url).map_err(SenderError::SmtpUrl)?;
    if let Some(path) = &settings.smtp_password_file {
        let password = std::fs::read_to_string(path).map_err(|e| SenderError::File {
            var: "PULSE_SMTP_PASSWORD_FILE",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        relay = relay
            .with_password(Secret::new(password.trim_end_matches(['\r', '\n'])))
            .map_err(SenderError::SmtpUrl)?;
    }
    let ca = settings
        .tls_ca()
        .map_err(|e| SenderError::Tls(e.to_string()))?;
    let s = &settings.sender;
    SmtpPool::new(relay, s.smtp_pool_size, s.smtp_timeout, ca.as_deref())
        .map_err(|e| SenderError::Tls(e.to_string()))
}
