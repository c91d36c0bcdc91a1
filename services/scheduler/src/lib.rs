//! The scheduler role: finds step runs that are due, freezes their rendered content, marks them
//! QUEUED and commits, then publishes them to RabbitMQ with publisher confirms. The claim uses
//! `FOR UPDATE SKIP LOCKED`, so any number of schedulers can run without a leader and without
//! publishing a step twice.
//!
//! QUEUED is committed *before* publishing, so a sender never receives a message whose run is
//! still locked here (it would wait for this commit, the whole publish round trip, on every
//! message). If publishing fails — a nack, a return, a channel or connection error, or no
//! confirm within [`CONFIRM_TIMEOUT`] — the batch's runs go straight back to SCHEDULED and are
//! published again (a copy that did reach the queue is absorbed by the sender's ledger claim).
//! A crash between the commit and the publish leaves runs QUEUED with no message. Each
//! scheduler registers as a worker (`pulse_shared::workers`) and names itself on the runs it
//! queues (`queued_by`): once it has missed its heartbeats for `PULSE_OWNER_TIMEOUT_MS`, the sweep
//! (`ledger::sweep`, every `PULSE_SWEEP_INTERVAL_MS`, run by every scheduler) publishes again the
//! runs it queued in its last seconds. A scheduler whose session failed (a commit whose answer
//! was lost leaves runs QUEUED it never published) gives back its own unclaimed QUEUED runs when
//! the next session starts. `PULSE_QUEUED_LEASE_MS` remains the last resort for runs whose owner
//! is unknown or alive but hung. A step whose own or sequence end date has passed is skipped
//! here and its enrollment ended with that reason. Beside the claim loop, the `overspeed`
//! guardrail counts sends against the sending limits ([`guardrail`]). The scheduler never sends
//! mail and never holds a message back as a delay: only work that is due now reaches RabbitMQ.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use lapin::{
    BasicProperties, Channel,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use pulse_shared::{
    Settings,
    db::{self, StoreError},
    health::{Health, supervise},
    ledger,
    messaging::{self, MessagingError},
    metrics::Metrics,
    schedule,
    state::EnrollmentStatus,
    telemetry,
    transitions::{self, Replan},
    unsubscribe::Unsubscribe,
    workers::Registration,
};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

mod guardrail;
mod render;
use render::Rendered;

/// How often the depth of the send queue and its dead-letter queue is read.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(5);

/// How long a batch's publisher confirms may take. A broker that goes away mid-publish may
/// leave confirms that never resolve; after this the batch is given back (due again at once)
/// instead of waiting for the queued lease.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("encoding a message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("a publishing task failed: {0}")]
    Task(String),
}

/// Runs the scheduler until `shutdown` is cancelled, reconnecting to RabbitMQ and PostgreSQL
/// with backoff whenever either fails, and reporting its RabbitMQ session in `health`.
pub async fn run(
    settings: Settings,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let db = db::pool_for(&settings, 4)?;
    let Some(worker) =
        Registration::start_when_ready(&db, "scheduler", settings.owner_timeout, &shutdown).await
    else {
        return Ok(());
    };
    let guard = tokio::spawn(guardrail::run(
        db.clone(),
        settings.scheduler.guardrail_interval,
        metrics.clone(),
        shutdown.clone(),
    ));
    supervise("scheduler", &health, &metrics, &shutdown, || {
        session(&settings, &db, &worker, &health, &metrics, &shutdown)
    })
    .await;
    let _ = guard.await;
    // Every publish of this session finished or was given back: nothing left to sweep for it.
    worker.stop().await;
    tracing::info!("scheduler stopped");
    Ok(())
}

async fn session(
    settings: &Settings,
    db: &PgPool,
    worker: &Registration,
    health: &Health,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), SchedulerError> {
    let conn = messaging::connect_for(settings).await?;
    let channel = messaging::rpc("channel.open", conn.create_channel()).await?;
    messaging::declare(&channel, &settings.queue, settings.queue_type).await?;
    messaging::rpc(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    // A session that failed may have committed QUEUED without learning it (a commit whose answer
    // was lost), so nothing was published for those runs: give back every run this scheduler
    // queued and nobody claimed. The first session has none.
    let back = ledger::requeue_unclaimed(db, ledger::Requeue::QueuedBy(worker.id)).await?;
    if back > 0 {
        metrics.requeued(back);
        tracing::warn!(
            requeued = back,
            "runs queued before this session are published again"
        );
    }
    let unsubscribe = Unsubscribe::load(db, settings).await?;
    health.ready("scheduler");
    tracing::info!(queue = %settings.queue, "scheduler connected");
    let result = claim_loop(
        settings,
        db,
        worker,
        &channel,
        &unsubscribe,
        metrics,
        shutdown,
    )
    .await;
    let _ = messaging::rpc(
        "connection.close",
        conn.close(200, "scheduler shutting down".into()),
    )
    .await;
    result
}

/// Claims and publishes until `shutdown`, sweeping stale work on its interval. The next batch is
/// claimed while the previous one is being published (its runs are already QUEUED, so the two
/// never overlap), which keeps PostgreSQL and RabbitMQ busy at the same time.
async fn claim_loop(
    settings: &Settings,
    db: &PgPool,
    worker: &Registration,
    channel: &Channel,
    unsubscribe: &Unsubscribe,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), SchedulerError> {
    let batch = settings.scheduler.batch_size;
    let mut next_sweep = tokio::time::Instant::now();
    let mut next_depth = tokio::time::Instant::now();
    let mut publishing: Option<tokio::task::JoinHandle<Result<usize, SchedulerError>>> = None;
    let max_ready = settings.scheduler.max_ready;
    let mut backlogged = false;
    let result = async {
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= next_sweep {
                let mut leases = ledger::Leases::new(settings);
                if !worker.steady() {
                    leases.owner = None;
                }
                let swept = ledger::sweep(db, &leases).await?;
                metrics.swept(&swept);
                if swept != ledger::Swept::default() {
                    tracing::warn!(
                        unknown = swept.unknown,
                        given_back = swept.given_back,
                        requeued = swept.requeued,
                        "stale work found"
                    );
                }
                next_sweep = tokio::time::Instant::now() + settings.scheduler.sweep_interval;
            }
            // With a cap, the depth is read before every claim (one round trip).
            if max_ready > 0 || tokio::time::Instant::now() >= next_depth {
                let ready = queue_depth(channel, &settings.queue, metrics).await?;
                backlogged = max_ready > 0 && ready >= max_ready;
                next_depth = tokio::time::Instant::now() + QUEUE_DEPTH_EVERY;
            }
            // Enough is waiting in the queue: the rest waits in PostgreSQL, in the claim's order.
            if backlogged {
                tokio::select! {
                    _ = tokio::time::sleep(settings.scheduler.poll_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let claiming = Claiming {
                batch,
                aging: settings.scheduler.priority_aging,
            };
            let claimed = claim(db, claiming, worker.id, unsubscribe, metrics)
                // Debug level: an idle poll, several a second, is no trace of its own.
                .instrument(tracing::debug_span!("claim_batch", limit = batch))
                .await?;
            if let Some(previous) = publishing.take() {
                finish(previous).await?;
            }
            let n = claimed.len();
            if n > 0 {
                let (db, channel, queue) = (db.clone(), channel.clone(), settings.queue.clone());
                let metrics = metrics.clone();
                publishing = Some(tokio::spawn(async move {
                    publish_or_requeue(&db, &channel, &queue, &metrics, claimed).await
                }));
            }
            if (n as i64) < batch {
                tokio::select! {
                    _ = tokio::time::sleep(settings.scheduler.poll_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
        Ok(())
    }
    .await;
    // Never leave a publish behind: its outcome (or its requeue) is part of this session.
    if let Some(previous) = publishing.take() {
        let last = finish(previous).await;
        return result.and(last);
    }
    result
}

/// Reads how many messages wait in the send queue and its dead-letter queue (both declared by
/// this session, so the passive declare cannot fail on a missing queue); returns the send
/// queue's.
async fn queue_depth(
    channel: &Channel,
    queue: &str,
    metrics: &Metrics,
) -> Result<u32, SchedulerError> {
    let mut ready = 0;
    for q in [queue.to_owned(), messaging::dead_letter_queue(queue)] {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = messaging::rpc(
            "queue.declare",
            channel.queue_declare(q.as_str().into(), passive, FieldTable::default()),
        )
        .await?;
        metrics.set_queue_messages(&q, declared.message_count());
        if q == queue {
            ready = declared.message_count();
        }
    }
    Ok(ready)
}

/// Waits for a batch's publish task and passes on its error (its runs are back to SCHEDULED by
/// then, or left to the sweep if even that failed).
async fn finish(
    publishing: tokio::task::JoinHandle<Result<usize, SchedulerError>>,
) -> Result<(), SchedulerError> {
    let published = publishing
        .await
        .map_err(|e| SchedulerError::Task(e.to_string()))??;
    tracing::debug!(published, "published due steps");
    Ok(())
}

/// How much one claim takes (`PULSE_SCHEDULER_BATCH`) and how fast a waiting step gains a
/// priority level (`PULSE_PRIORITY_AGING_MS`); see [`lock_due`].
#[derive(Clone, Copy, Debug)]
pub struct Claiming {
    pub batch: i64,
    pub aging: Duration,
}

/// Locks up to `batch` due SCHEDULED runs of ACTIVE enrollments of ACTIVE sequences
/// (`SKIP LOCKED`), inside the caller's transaction, and returns them with what rendering needs.
///
/// The order is fair, then by priority (`docs/sending-rules.md`): round-robin across workspaces,
/// so a workspace with a million due steps and one with ten both get sends out in the same
/// claim; within a workspace, higher priority first (a step gains a level per `aging` it has
/// waited, so none starves), then round-robin across its sequences, then oldest first.
///
/// Four statements, each with one obvious plan whatever the table statistics say (a single
/// statement was seen to pick a 25,000-row scan of a freshly loaded sequence, 280 ms a claim):
/// 1. candidates, at most `batch` per ACTIVE sequence from the `(sequence_id, due_at)` index,
///    so a paused sequence's due backlog costs nothing and the work is flat in the table's
///    size, ranked as above;
/// 2. the edit lock on their sequences (`FOR KEY SHARE SKIP LOCKED`, see
///    `schedule::lock_sequences`): a sequence being edited, paused or deleted right now is
///    left for the next claim, and the content read below is the committed one;
/// 3. the lock, on `step_runs` alone by primary key; the state is re-checked on the locked row
///    (a row another scheduler holds is skipped, one changed meanwhile is re-read first);
/// 4. the rows with their sequence, step and lead (of ACTIVE sequences and enrollments).
pub async fn lock_due(
    conn: &mut sqlx::PgConnection,
    batch: i64,
    aging: Duration,
) -> Result<Due, sqlx::Error> {
    let candidates: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, sequence_id FROM (
             SELECT d.id, a.id AS sequence_id, d.due_at,
                    row_number() OVER (
                        PARTITION BY a.workspace_id
                        ORDER BY LEAST(9, a.priority + floor(
                                     extract(epoch FROM now() - d.due_at) / $2)) DESC,
                                 d.turn, d.due_at) AS turn
             FROM sequences a
             CROSS JOIN LATERAL (
                 SELECT r.id, r.due_at, row_number() OVER (ORDER BY r.due_at) AS turn
                 FROM step_runs r
                 WHERE r.sequence_id = a.id AND r.state = 'SCHEDULED' AND r.due_at <= now()
                 ORDER BY r.due_at LIMIT $1) d
             WHERE a.status = 'ACTIVE') c
         ORDER BY turn, due_at LIMIT $1",
    )
    .bind(batch)
    .bind(aging.as_secs_f64().max(1.0))
    .fetch_all(&mut *conn)
    .await?;
    if candidates.is_empty() {
        return Ok(Due::default());
    }
    let mut sequences: Vec<Uuid> = candidates.iter().map(|(_, s)| *s).collect();
    sequences.sort_unstable();
    sequences.dedup();
    let open: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sequences WHERE id = ANY($1) AND status = 'ACTIVE'
         ORDER BY id FOR KEY SHARE SKIP LOCKED",
    )
    .bind(&sequences)
    .fetch_all(&mut *conn)
    .await?;
    let runs: Vec<Uuid> = candidates
        .iter()
        .filter(|(_, s)| open.contains(s))
        .map(|(r, _)| *r)
        .collect();
    if runs.is_empty() {
        return Ok(Due::default());
    }
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM step_runs
         WHERE id = ANY($1) AND state = 'SCHEDULED' AND due_at <= now()
         FOR UPDATE SKIP LOCKED",
    )
    .bind(&runs)
    .fetch_all(&mut *conn)
    .await?;
    if locked.is_empty() {
        return Ok(Due::default());
    }
    let rows = sqlx::query(
        "SELECT sr.id, sr.enrollment_id, sr.step_id, sr.generation, sr.sequence_id,
                sr.workspace_id, sr.position, st.subject, st.body, st.html, st.thread,
                s.sender_from, s.sender_reply_to, s.version,
                s.timezone, s.send_window, s.end_date,
                st.end_date AS step_end, st.deleted_at IS NOT NULL AS step_deleted,
                e.lead_id, l.email, l.first_name, l.last_name, l.timezone AS lead_tz,
                l.attributes, e.status AS enrollment_status, sr.trace_parent,
                CASE WHEN st.thread AND btrim(st.subject) = '' THEN
                    (SELECT f.subject FROM sequence_steps f
                     WHERE f.sequence_id = sr.sequence_id AND f.deleted_at IS NULL
                     ORDER BY f.position LIMIT 1) END AS first_subject,
                m.id AS mailbox_id, m.address AS mailbox_address,
                m.display_name AS mailbox_name, m.reply_to AS mailbox_reply_to
         FROM step_runs sr
         JOIN sequences s ON s.id = sr.sequence_id
         JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN sequence_steps st ON st.id = sr.step_id
         JOIN leads l ON l.id = e.lead_id
         -- The enrollment's mailbox while it is live; else one of the sequence's, by enrollment.
         LEFT JOIN mailboxes m ON m.deleted_at IS NULL AND m.id = COALESCE(
             (SELECT em.id FROM mailboxes em WHERE em.id = e.mailbox_id AND em.deleted_at IS NULL),
             s.sender_mailboxes[1 + abs(hashtext(e.id::text)) % cardinality(s.sender_mailboxes)])
         WHERE sr.id = ANY($1) AND s.status = 'ACTIVE'
         ORDER BY sr.due_at",
    )
    .bind(&locked)
    .fetch_all(&mut *conn)
    .await?;
    // A run left SCHEDULED under an enrollment that has ended would be a candidate for ever:
    // cancel it (ending an enrollment cancels its scheduled runs, so this only heals strays).
    // A run whose sequence was paused meanwhile is simply left for the resume.
    let (live, ended): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| {
        r.get::<EnrollmentStatus, _>("enrollment_status") == EnrollmentStatus::Active
    });
    if !ended.is_empty() {
        let ids: Vec<Uuid> = ended.iter().map(|r| r.get("id")).collect();
        sqlx::query(
            "UPDATE step_runs SET state = 'CANCELLED', updated_at = now(),
                 last_error = 'the enrollment had ended'
             WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Due {
        rows: live,
        ended: ended.len(),
    })
}

/// What [`lock_due`] locked.
#[derive(Default)]
pub struct Due {
    /// Due runs of ACTIVE enrollments, locked, with what rendering needs.
    pub rows: Vec<sqlx::postgres::PgRow>,
    /// Stray runs of ended enrollments, cancelled.
    pub ended: usize,
}

/// Claims up to `batch` due step runs, marks them QUEUED by `owner` with their rendered content
/// and commits, then publishes them with confirms. Returns how many were published. If
/// publishing fails, the runs go back to SCHEDULED before the error is returned.
pub async fn claim_and_publish(
    db: &PgPool,
    channel: &Channel,
    queue: &str,
    claiming: Claiming,
    owner: Uuid,
    unsubscribe: &Unsubscribe,
    metrics: &Metrics,
) -> Result<usize, SchedulerError> {
    let rendered = claim(db, claiming, owner, unsubscribe, metrics).await?;
    publish_or_requeue(db, channel, queue, metrics, rendered).await
}

/// Publishes claimed runs; if that fails, puts them back to SCHEDULED before returning the error.
async fn publish_or_requeue(
    db: &PgPool,
    channel: &Channel,
    queue: &str,
    metrics: &Metrics,
    rendered: Vec<Rendered>,
) -> Result<usize, SchedulerError> {
    if rendered.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let published = publish(channel, queue, &rendered)
        .instrument(tracing::info_span!("publish_batch", steps = rendered.len()))
        .await;
    if let Err(e) = published {
        let ids: Vec<Uuid> = rendered.iter().map(|r| r.id).collect();
        match ledger::requeue_unclaimed(db, ledger::Requeue::Runs(&ids)).await {
            Ok(n) => {
                metrics.requeued(n);
                tracing::warn!(error = %e, requeued = n, "publishing failed; the batch is due again")
            }
            Err(undo) => {
                tracing::error!(error = %e, requeue_error = %undo, "publishing failed and the batch could not be put back; the sweep publishes it after the queued lease")
            }
        }
        return Err(e);
    }
    metrics.published(rendered.len(), started.elapsed().as_secs_f64());
    Ok(rendered.len())
}

/// In one transaction: claims due runs (`SKIP LOCKED`), renders them, marks the rendered ones
/// QUEUED with their snapshot, skips expired ones and fails unrenderable ones. Returns the
/// rendered runs, to publish after the commit.
async fn claim(
    db: &PgPool,
    Claiming { batch, aging }: Claiming,
    owner: Uuid,
    unsubscribe: &Unsubscribe,
    metrics: &Metrics,
) -> Result<Vec<Rendered>, SchedulerError> {
    let started = Instant::now();
    let mut tx = db.begin().await?;
    let Due { rows, ended } = lock_due(&mut tx, batch, aging).await?;
    metrics.not_queued("enrollment_ended", ended);
    if rows.is_empty() {
        // Commit: the claim may have cancelled strays.
        tx.commit().await?;
        return Ok(Vec::new());
    }

    let threads = render::threads(&mut tx, &rows).await?;
    let mut rendered = Vec::with_capacity(rows.len());
    let mut broken: Vec<(Uuid, String)> = Vec::new();
    // Runs that wait for their window's next opening, or can no longer go out.
    let mut replans: Vec<Replan> = Vec::new();
    let mut deleted = Vec::new();
    let now = chrono::Utc::now();
    for row in &rows {
        if row.get::<bool, _>("step_deleted") {
            deleted.push(row);
            continue;
        }
        // The one rule for due times, applied once more when the step is queued: a run that
        // came due outside its send window (a pause hold, a sweep, a slow claim) waits for the
        // next opening; one that can no longer go out before an end date is skipped.
        match queue_time(row, now) {
            Ok(schedule::Planned::At(at)) if at <= now => {
                match render::render(row, &threads, unsubscribe) {
                    Ok(r) => rendered.push(r),
                    Err(reason) => broken.push((row.get("id"), reason)),
                }
            }
            Ok(plan) => replans.push(Replan {
                run: row.get("id"),
                enrollment: row.get("enrollment_id"),
                plan,
            }),
            Err(e) => broken.push((row.get("id"), e.to_string())),
        }
    }

    let col = |f: fn(&Rendered) -> String| rendered.iter().map(f).collect::<Vec<_>>();
    let opt = |f: fn(&Rendered) -> Option<String>| rendered.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "UPDATE step_runs sr SET state = 'QUEUED', queued_at = now(), queued_by = $8,
             updated_at = now(), subject = u.subject, body = u.body, from_addr = u.from_addr, to_addr = u.to_addr,
             message_id = u.message_id, sequence_version = u.version, html = u.html,
             reply_to = u.reply_to, in_reply_to = u.in_reply_to, thread_refs = u.refs,
             mailbox_id = u.mailbox
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::int[], $9::text[], $10::text[], $11::text[], $12::text[], $13::uuid[])
              AS u(id, subject, body, from_addr, to_addr, message_id, version, html, reply_to,
                   in_reply_to, refs, mailbox)
         WHERE sr.id = u.id",
    )
    .bind(rendered.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(col(|r| r.content.subject.clone()))
    .bind(col(|r| r.content.text.clone()))
    .bind(col(|r| r.from_addr.clone()))
    .bind(col(|r| r.to_addr.clone()))
    .bind(col(|r| r.message_id.clone()))
    .bind(rendered.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(owner)
    .bind(opt(|r| r.content.html.clone()))
    .bind(opt(|r| r.reply_to.clone()))
    .bind(opt(|r| r.content.in_reply_to.clone()))
    .bind(opt(|r| r.content.references.clone()))
    .bind(rendered.iter().map(|r| r.mailbox).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let applied = transitions::apply_plans(&mut tx, &replans).await?;
    for row in &deleted {
        skip_deleted_step(&mut tx, row).await?;
    }
    for (id, reason) in &broken {
        tracing::error!(step_run = %id, %reason, "step cannot be rendered; marking it FAILED");
        sqlx::query(
            "UPDATE step_runs SET state = 'FAILED', last_error = $2, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    metrics.claimed(rows.len(), started.elapsed().as_secs_f64());
    metrics.not_queued("expired", applied.skipped);
    metrics.not_queued("unrenderable", broken.len());
    metrics.not_queued("outside_window", applied.retimed);
    metrics.not_queued("step_deleted", deleted.len());
    Ok(rendered)
}

/// Publishes every message, then waits for all confirms together: one round trip per batch.
async fn publish(
    channel: &Channel,
    queue: &str,
    rendered: &[Rendered],
) -> Result<(), SchedulerError> {
    let mut confirms = Vec::with_capacity(rendered.len());
    for r in rendered {
        let payload = serde_json::to_vec(&r.message)?;
        // One span per step, continuing the trace of the request that created the run; its
        // context rides in the message for the sender to continue.
        let span = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation = "publish",
            messaging.destination.name = queue,
            key = %r.message.key,
        );
        telemetry::continue_trace(&span, r.trace_parent.as_deref());
        let mut headers = FieldTable::default();
        telemetry::inject_amqp(&span, &mut headers);
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(r.message.key.as_str().into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = messaging::rpc(
            "basic.publish",
            channel.basic_publish("".into(), queue.into(), options, &payload, props),
        )
        .await?;
        confirms.push(confirm);
    }
    let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, try_join_all(confirms))
        .await
        .map_err(|_| MessagingError::ConfirmTimeout(CONFIRM_TIMEOUT))?
        .map_err(MessagingError::from)?;
    // A nack, or an ack that carries a returned (unroutable) message, means it went nowhere.
    let all_routed = confirmations
        .into_iter()
        .all(|c| c.is_ack() && c.take_message().is_none());
    if !all_routed {
        return Err(MessagingError::NotConfirmed.into());
    }
    Ok(())
}

/// When a due run may be queued, by `schedule::plan` from `now`: now, the send window's next
/// opening, or never (an end date passes first).
fn queue_time(
    row: &sqlx::postgres::PgRow,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<schedule::Planned, StoreError> {
    let rules = schedule::rules_from_row(row)?;
    let lead_tz = schedule::lead_zone(row.try_get("lead_tz")?);
    Ok(schedule::plan(
        now,
        &rules,
        lead_tz,
        row.try_get("position")?,
        row.try_get("step_end")?,
    ))
}

/// A due run of a step deleted after it was scheduled (the edit skips these itself; this heals
/// any left behind): skipped, and its enrollment moves on to what now follows that step.
async fn skip_deleted_step(
    conn: &mut sqlx::PgConnection,
    row: &sqlx::postgres::PgRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE step_runs SET state = 'SKIPPED', last_error = 'step deleted', updated_at = now()
         WHERE id = $1",
    )
    .bind(row.try_get::<Uuid, _>("id")?)
    .execute(&mut *conn)
    .await?;
    let target = schedule::Target {
        workspace: row.try_get("workspace_id")?,
        sequence: row.try_get("sequence_id")?,
        enrollment: row.try_get("enrollment_id")?,
        lead: row.try_get("lead_id")?,
        generation: row.try_get("generation")?,
    };
    schedule::move_past_deleted(conn, target, row.try_get("step_id")?).await
}

/// Reads what the database says about the schedule into `metrics` (on each scrape of
/// `/metrics` where this role runs): enrollments by status; the due, unsent runs of ACTIVE
/// sequences and the age of the oldest; the due runs held by paused sequences; and sends
/// recorded while a sequence was paused, more than `pause_grace` after the pause (a send claimed
/// before the pause may finish within the pause's drain; anything later must never happen),
/// each kept in `pause_violations` for good so the counter never forgets it.
///
/// Each count is bounded by an index: due runs per sequence, QUEUED runs, and ledger rows of
/// paused sequences created from a day before their pause (retries never span more). The
/// enrollment count scans `enrollments`; see docs/SCALING.md for its cost.
pub async fn observe(
    db: &PgPool,
    metrics: &Metrics,
    pause_grace: Duration,
) -> Result<(), sqlx::Error> {
    let statuses: Vec<(EnrollmentStatus, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM enrollments GROUP BY status")
            .fetch_all(db)
            .await?;
    metrics.set_enrollments(&statuses);
    let backlog = sqlx::query(
        "WITH due AS (
             SELECT s.status, d.n, d.oldest FROM sequences s
             CROSS JOIN LATERAL (
                 SELECT count(*) AS n, min(r.due_at) AS oldest FROM step_runs r
                 WHERE r.sequence_id = s.id AND r.state = 'SCHEDULED' AND r.due_at <= now()) d
             WHERE s.status IN ('ACTIVE', 'PAUSED') AND d.n > 0),
         queued AS (
             SELECT count(*) AS n, min(due_at) AS oldest FROM step_runs WHERE state = 'QUEUED')
         SELECT
             COALESCE((SELECT sum(n) FROM due WHERE status = 'ACTIVE'), 0)::int8 AS scheduled,
             (SELECT n FROM queued) AS queued,
             COALESCE((SELECT sum(n) FROM due WHERE status = 'PAUSED'), 0)::int8 AS held,
             COALESCE(EXTRACT(EPOCH FROM now() - LEAST(
                 (SELECT min(oldest) FROM due WHERE status = 'ACTIVE'),
                 (SELECT oldest FROM queued)))::float8, 0) AS oldest_age",
    )
    .fetch_one(db)
    .await?;
    metrics.set_backlog(
        backlog.get("scheduled"),
        backlog.get("queued"),
        backlog.get::<f64, _>("oldest_age").max(0.0),
        backlog.get("held"),
    );
    // Pauses of the last day, and the current one of each paused sequence, each until its
    // resume (or now); a send recorded inside one after the grace is kept for good.
    let violations: i64 = sqlx::query_scalar(
        "WITH pauses AS (
             SELECT a.sequence_id, a.at FROM audit_events a
             WHERE a.action = 'paused' AND a.at > now() - interval '1 day'
             UNION
             SELECT s.id, p.at FROM sequences s
             CROSS JOIN LATERAL (SELECT max(a.at) AS at FROM audit_events a
                                 WHERE a.sequence_id = s.id AND a.action = 'paused') p
             WHERE s.status = 'PAUSED' AND p.at IS NOT NULL),
         spans AS (
             SELECT p.sequence_id, p.at AS paused_at,
                    (SELECT min(r.at) FROM audit_events r
                     WHERE r.sequence_id = p.sequence_id AND r.action IN ('resumed', 'deleted')
                       AND r.at > p.at) AS until
             FROM pauses p),
         found AS (
             INSERT INTO pause_violations (idempotency_key, sequence_id, paused_at, sent_at)
             SELECT DISTINCT ON (l.idempotency_key) l.idempotency_key, l.sequence_id,
                    sp.paused_at, l.sent_at
             FROM spans sp
             JOIN send_ledger l ON l.sequence_id = sp.sequence_id
                               AND l.created_at > sp.paused_at - interval '1 day'
             WHERE l.state IN ('SENT', 'BOUNCED', 'COMPLAINED')
               AND l.sent_at > sp.paused_at + make_interval(secs => $1)
               AND (sp.until IS NULL OR l.sent_at < sp.until)
             ORDER BY l.idempotency_key
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING 1)
         SELECT (SELECT count(*) FROM pause_violations) + (SELECT count(*) FROM found)",
    )
    .bind(pause_grace.as_secs_f64())
    .fetch_one(db)
    .await?;
    metrics.observe_paused_sends(violations);
    // By the partial index of UNKNOWN entries: never a read of the ledger.
    let unknown: i64 =
        sqlx::query_scalar("SELECT count(*) FROM send_ledger WHERE state = 'UNKNOWN'")
            .fetch_one(db)
            .await?;
    metrics.set_unknown_outstanding(unknown);
    Ok(())
}
