//! The webhooks role: delivers the messages the other roles wrote to `webhook_messages` in the
//! transactions of their changes (the outbox, `pulse_shared::webhooks::emit`).
//!
//! Each round claims up to [`BATCH`] due messages with `FOR UPDATE SKIP LOCKED` and a lease
//! (their `next_at` moves a minute on), so any number of these roles share the work and a role
//! that dies mid-delivery leaves its messages due again after the lease. Each message is posted
//! with its Standard Webhooks headers (`webhook-id` = `msg_<id>`, stable across retries), within
//! `PULSE_WEBHOOK_TIMEOUT_MS`, after resolving the endpoint's host and refusing a private
//! address (unless `PULSE_WEBHOOKS_ALLOW_PRIVATE`). A 2xx delivers it; anything else is retried
//! with exponential backoff from `PULSE_WEBHOOK_RETRY_BASE_MS` for 24 hours, then FAILED. An
//! endpoint failing for a day is disabled, with the reason, and counted
//! (`pulse_webhook_endpoints_disabled_total`, alert `PulseWebhookDisabled`); a disabled
//! endpoint's messages wait, unclaimed, until it is enabled again.
//!
//! Delivery is at least once: a receiver deduplicates by `webhook-id`. Messages to one endpoint
//! go out in the order they were written while none fails; a retried one does not hold back
//! the next. It never changes what the events report.
//!
//! PostgreSQL, not RabbitMQ, carries these: the outbox is already a table the change's
//! transaction writes, and claiming from it is what the scheduler does for steps; a relay to
//! RabbitMQ would add a hop and a second place for a message to be lost, for volumes (control
//! events) that one indexed claim serves.

use std::{net::SocketAddr, time::Duration};

use chrono::Utc;
use pulse_shared::{Settings, config::WebhookSettings, metrics::Metrics, webhooks};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most messages claimed in one round.
const BATCH: i64 = 50;
/// How long a claimed message is someone's before it is due again.
const LEASE: &str = "1 minute";
/// A message is retried this long after it was written.
const GIVE_UP: chrono::Duration = chrono::Duration::hours(24);

/// One message to deliver.
struct Due {
    id: i64,
    webhook: Uuid,
    url: String,
    secret: String,
    payload: serde_json::Value,
    attempts: i32,
    created_at: chrono::DateTime<Utc>,
}

/// Runs until `shutdown`: a round whenever messages are due, else a short sleep.
pub async fn run(
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), pulse_shared::db::StoreError> {
    let db = pulse_shared::db::pool_for(&settings, 2)?;
    let http = reqwest::Client::builder()
        .timeout(settings.webhooks.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| pulse_shared::db::StoreError::Corrupt(format!("HTTP client: {e}")))?;
    tracing::info!("webhooks role delivering");
    while !shutdown.is_cancelled() {
        let n = match round(&db, &http, &settings.webhooks, &metrics).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "webhook round failed; trying again");
                0
            }
        };
        if n < BATCH as usize {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
    tracing::info!("webhooks role stopped");
    Ok(())
}

async fn round(
    db: &PgPool,
    http: &reqwest::Client,
    settings: &WebhookSettings,
    metrics: &Metrics,
) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "WITH due AS (
             SELECT m.id FROM webhook_messages m
             JOIN webhooks w ON w.id = m.webhook_id AND w.enabled
             WHERE m.state = 'PENDING' AND m.next_at <= now()
             ORDER BY m.next_at, m.id LIMIT $1 FOR UPDATE OF m SKIP LOCKED)
         UPDATE webhook_messages m SET next_at = now() + interval '{LEASE}'
         FROM due, webhooks w
         WHERE m.id = due.id AND w.id = m.webhook_id
         RETURNING m.id, m.webhook_id, w.url, w.secret, m.payload, m.attempts, m.created_at"
    ))
    .bind(BATCH)
    .fetch_all(db)
    .await?;
    let n = rows.len();
    let mut due = Vec::with_capacity(n);
    for row in rows {
        due.push(Due {
            id: row.try_get("id")?,
            webhook: row.try_get("webhook_id")?,
            url: row.try_get("url")?,
            secret: row.try_get("secret")?,
            payload: row.try_get("payload")?,
            attempts: row.try_get("attempts")?,
            created_at: row.try_get("created_at")?,
        });
    }
    // Each endpoint's messages in order; endpoints side by side.
    let mut by_endpoint: std::collections::BTreeMap<Uuid, Vec<Due>> = Default::default();
    for d in due {
        by_endpoint.entry(d.webhook).or_default().push(d);
    }
    let results = futures::future::join_all(by_endpoint.into_values().map(|list| async move {
        let mut out = Vec::with_capacity(list.len());
        for d in list {
            let result = deliver(http, settings, &d).await;
            out.push((d, result));
        }
        out
    }))
    .await;
    for (d, result) in results.into_iter().flatten() {
        match result {
            Ok(status) => {
                delivered(db, d.id, status).await?;
                sqlx::query("UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                    .bind(d.webhook)
                    .execute(db)
                    .await?;
            }
            Err((status, error)) => {
                let attempts = d.attempts + 1;
                let next = Utc::now()
                    + chrono::Duration::from_std(webhooks::backoff(settings.retry_base, attempts))
                        .unwrap_or(chrono::Duration::hours(1));
                let give_up = next > d.created_at + GIVE_UP;
                tracing::warn!(message = d.id, webhook = %d.webhook, attempts, ?status, %error, give_up, "webhook delivery failed");
                sqlx::query(
                    "UPDATE webhook_messages SET attempts = $2, last_status = $3, last_error = $4,
                         state = CASE WHEN $5 THEN 'FAILED' ELSE 'PENDING' END, next_at = $6
                     WHERE id = $1",
                )
                .bind(d.id)
                .bind(attempts)
                .bind(status.map(i32::from))
                .bind(&error)
                .bind(give_up)
                .bind(next)
                .execute(db)
                .await?;
                // `just_disabled` only for the update that turned it off: counted once.
                let disabled = sqlx::query(
                    "WITH old AS (SELECT enabled FROM webhooks WHERE id = $1 FOR UPDATE)
                     UPDATE webhooks w SET failing_since = COALESCE(w.failing_since, now()),
                         enabled = CASE WHEN w.failing_since < now() - interval '24 hours'
                                        THEN false ELSE w.enabled END,
                         disabled_reason = CASE WHEN w.failing_since < now() - interval '24 hours'
                                                THEN 'failing for a day: ' || $2
                                                ELSE w.disabled_reason END,
                         updated_at = now()
                     FROM old WHERE w.id = $1
                     RETURNING old.enabled AND NOT w.enabled AS just_disabled",
                )
                .bind(d.webhook)
                .bind(&error)
                .fetch_optional(db)
                .await?;
                if disabled.is_some_and(|r| r.get::<bool, _>("just_disabled")) {
                    metrics.webhook_disabled();
                    tracing::error!(webhook = %d.webhook, "webhook endpoint failing for a day; disabled");
                }
            }
        }
    }
    Ok(n)
}

/// Records a message delivered.
async fn delivered(db: &PgPool, id: i64, status: u16) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_messages SET state = 'DELIVERED', attempts = attempts + 1,
             last_status = $2, last_error = NULL, delivered_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(i32::from(status))
    .execute(db)
    .await?;
    Ok(())
}

/// Posts one message. `Ok`: a 2xx; `Err`: the status (if any) and why.
async fn deliver(
    http: &reqwest::Client,
    settings: &WebhookSettings,
    d: &Due,
) -> Result<u16, (Option<u16>, String)> {
    let url = webhooks::check_url(&d.url, settings.allow_private).map_err(|e| (None, e))?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    // Resolved here, at each delivery, and every address checked: a name that moved to a
    // private address is refused. The request then goes to the first checked address.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| (None, format!("cannot resolve {host}: {e}")))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| (None, format!("{host} has no address")))?;
    for a in &addrs {
        webhooks::check_address(a.ip(), settings.allow_private).map_err(|e| (None, e))?;
    }
    let body = serde_json::to_vec(&d.payload).map_err(|e| (None, e.to_string()))?;
    let msg_id = format!("msg_{}", d.id);
    let timestamp = Utc::now().timestamp();
    let signature = webhooks::sign(&d.secret, &msg_id, timestamp, &body).map_err(|e| (None, e))?;
    let client = if url
        .host_str()
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some()
    {
        http.clone()
    } else {
        // Pin the checked address so a second lookup cannot swap it.
        reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, first)
            .build()
            .map_err(|e| (None, e.to_string()))?
    };
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| (None, e.to_string()))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        Ok(status)
    } else {
        Err((Some(status), format!("answered {status}")))
    }
}
