//! The webhooks role: delivers the messages the other roles wrote to `webhook_messages` in the
//! transactions of their changes (the outbox, `pulse_shared::webhooks`).
//!
//! Each round claims up to [`BATCH`] due messages with `FOR UPDATE SKIP LOCKED` and a lease
//! (their `next_at` moves a minute on), so any number of these roles share the work and a role
//! that dies mid-delivery leaves its messages due again after the lease. Each message is posted
//! with its Standard Webhooks headers (`webhook-id` = `msg_<id>`, stable across retries), within
//! `PULSE_WEBHOOK_TIMEOUT_MS`, after resolving the endpoint's host (once per endpoint per round)
//! and refusing a private address (unless `PULSE_WEBHOOKS_ALLOW_PRIVATE`). A 2xx delivers it;
//! anything else is retried with exponential backoff from `PULSE_WEBHOOK_RETRY_BASE_MS` for 24
//! hours, then FAILED. An endpoint failing for a day is disabled, with the reason, and counted
//! (`pulse_webhook_endpoints_disabled_total`, alert `PulseWebhookDisabled`); a disabled
//! endpoint's messages wait, unclaimed, until it is enabled again. Delivered and failed
//! messages are pruned after `PULSE_WEBHOOK_RETENTION_HOURS`.
//!
//! Order: an endpoint gets up to `PULSE_WEBHOOK_CONCURRENCY` requests at once, in lanes keyed
//! by what the event is about (its enrollment, else its sequence). One lane's messages go one
//! after the other in the order they were written, so the events of one enrollment arrive in
//! order while none fails; a retried one does not hold back the next. Delivery is at least
//! once: a receiver deduplicates by `webhook-id`. It never changes what the events report.
//!
//! Each round's outcomes are written in two statements (delivered, retried), whatever its size.
//! A lane starts no delivery once the round is [`LANE_BUDGET`] old; the rest go back, due now, so
//! a slow endpoint never keeps a claimed message past its lease.
//!
//! PostgreSQL, not RabbitMQ, carries these: the outbox is already a table the change's
//! transaction writes, and claiming from it is what the scheduler does for steps; a relay to
//! RabbitMQ would add a hop and a second place for a message to be lost. Measured against the
//! send path in `docs/BENCHMARKS.md` ("Webhook events").

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    net::SocketAddr,
    time::{Duration, Instant},
};

use chrono::Utc;
use pulse_shared::{Settings, config::WebhookSettings, metrics::Metrics, webhooks};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most messages claimed in one round.
const BATCH: i64 = 500;
/// How long a claimed message is someone's before it is due again.
const LEASE: &str = "1 minute";
/// A lane starts no delivery after this much of the round has passed: what it has not started
/// goes back, due now, so no claimed message outlives its lease (a slow endpoint at the full
/// timeout would otherwise hold a lane for minutes).
const LANE_BUDGET: Duration = Duration::from_secs(30);
/// A message is retried this long after it was written.
const GIVE_UP: chrono::Duration = chrono::Duration::hours(24);
/// How often old messages are pruned, and how many at most each time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 10_000;

/// What one delivery came to: `Ok` with a 2xx, or the status (if any) and why not.
type Outcome = Result<u16, (Option<u16>, String)>;

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

impl Due {
    /// The lane of an endpoint this message goes in: what the event is about.
    fn lane(&self, lanes: usize) -> usize {
        let data = &self.payload["data"];
        let about = data
            .get("enrollment_id")
            .filter(|v| !v.is_null())
            .or_else(|| data.get("sequence_id"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        about.hash(&mut h);
        (h.finish() % lanes as u64) as usize
    }
}

/// HTTP clients pinned to a checked address, kept across rounds so connections are reused.
struct Clients {
    plain: reqwest::Client,
    pinned: HashMap<(String, SocketAddr), reqwest::Client>,
    timeout: Duration,
}

impl Clients {
    fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            plain: Self::builder(timeout).build()?,
            pinned: HashMap::new(),
            timeout,
        })
    }

    fn builder(timeout: Duration) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
    }

    /// The client for `url` resolved to `addr`: the shared one for an address literal, else one
    /// that can only reach `addr` (so a second lookup cannot swap it).
    fn get(&mut self, url: &reqwest::Url, addr: SocketAddr) -> Result<reqwest::Client, String> {
        let host = url.host_str().unwrap_or_default();
        if host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
        {
            return Ok(self.plain.clone());
        }
        if self.pinned.len() > 256 {
            self.pinned.clear();
        }
        let key = (host.to_owned(), addr);
        if let Some(c) = self.pinned.get(&key) {
            return Ok(c.clone());
        }
        let client = Self::builder(self.timeout)
            .resolve(host, addr)
            .build()
            .map_err(|e| e.to_string())?;
        self.pinned.insert(key, client.clone());
        Ok(client)
    }
}

/// Runs until `shutdown`: a round whenever messages are due, else a short sleep.
pub async fn run(
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), pulse_shared::db::StoreError> {
    let db = pulse_shared::db::pool_for(&settings, 2)?;
    let mut clients = Clients::new(settings.webhooks.timeout)
        .map_err(|e| pulse_shared::db::StoreError::Corrupt(format!("HTTP client: {e}")))?;
    let mut pruned_at: Option<Instant> = None;
    tracing::info!("webhooks role delivering");
    while !shutdown.is_cancelled() {
        if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(Instant::now());
            match prune(&db, settings.webhooks.retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(messages = n, "old webhook messages pruned"),
                Err(e) => tracing::warn!(error = %e, "webhook prune failed; trying again later"),
            }
        }
        let n = match round(&db, &mut clients, &settings.webhooks, &metrics).await {
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

/// Deletes up to [`PRUNE_BATCH`] delivered or failed messages older than `retention`; returns
/// how many. Pending messages stay, however old (a disabled endpoint's wait for it).
pub async fn prune(db: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "DELETE FROM webhook_messages WHERE id IN (
             SELECT id FROM webhook_messages
             WHERE state <> 'PENDING' AND created_at < now() - make_interval(secs => $1)
             ORDER BY created_at LIMIT $2)",
    )
    .bind(secs as f64)
    .bind(PRUNE_BATCH)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Claims due messages, delivers them, records the outcomes. Returns how many it claimed.
async fn round(
    db: &PgPool,
    clients: &mut Clients,
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
    // Each endpoint's messages in id order, then into its lanes.
    let mut by_endpoint: BTreeMap<Uuid, Vec<Due>> = BTreeMap::new();
    for row in rows {
        let d = Due {
            id: row.try_get("id")?,
            webhook: row.try_get("webhook_id")?,
            url: row.try_get("url")?,
            secret: row.try_get("secret")?,
            payload: row.try_get("payload")?,
            attempts: row.try_get("attempts")?,
            created_at: row.try_get("created_at")?,
        };
        by_endpoint.entry(d.webhook).or_default().push(d);
    }
    let mut lanes: Vec<(Result<Target, String>, Vec<Due>)> = Vec::new();
    for (_, mut list) in by_endpoint {
        list.sort_by_key(|d| d.id);
        let target = target(clients, settings, &list[0].url).await;
        let mut split: Vec<Vec<Due>> = (0..settings.concurrency).map(|_| Vec::new()).collect();
        for d in list {
            let lane = d.lane(settings.concurrency);
            split[lane].push(d);
        }
        for lane in split.into_iter().filter(|l| !l.is_empty()) {
            lanes.push((target.clone(), lane));
        }
    }
    let started = Instant::now();
    let results = futures::future::join_all(lanes.into_iter().map(|(target, lane)| async move {
        let (mut out, mut later) = (Vec::with_capacity(lane.len()), Vec::new());
        for d in lane {
            if started.elapsed() >= LANE_BUDGET {
                later.push(d.id);
                continue;
            }
            let result = match &target {
                Ok(t) => deliver(t, &d).await,
                Err(e) => Err((None, e.clone())),
            };
            out.push((d, result));
        }
        (out, later)
    }))
    .await;
    let (done, later): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    let later: Vec<i64> = later.into_iter().flatten().collect();
    if !later.is_empty() {
        // Not attempted: due again now, no attempt counted.
        sqlx::query("UPDATE webhook_messages SET next_at = now() WHERE id = ANY($1)")
            .bind(&later)
            .execute(db)
            .await?;
    }
    record(db, settings, metrics, done.into_iter().flatten().collect()).await?;
    Ok(n)
}

/// Writes a round's outcomes: the delivered in one statement, the retried in another, then each
/// failing endpoint's day-long failure check.
async fn record(
    db: &PgPool,
    settings: &WebhookSettings,
    metrics: &Metrics,
    results: Vec<(Due, Outcome)>,
) -> Result<(), sqlx::Error> {
    let (mut ok_ids, mut ok_status, mut ok_endpoints) = (vec![], vec![], vec![]);
    let (mut ids, mut attempts, mut statuses, mut errors, mut give_ups, mut nexts) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut failing: BTreeMap<Uuid, String> = BTreeMap::new();
    for (d, result) in results {
        match result {
            Ok(status) => {
                ok_ids.push(d.id);
                ok_status.push(i32::from(status));
                ok_endpoints.push(d.webhook);
            }
            Err((status, error)) => {
                let tries = d.attempts + 1;
                let next = Utc::now()
                    + chrono::Duration::from_std(webhooks::backoff(settings.retry_base, tries))
                        .unwrap_or(chrono::Duration::hours(1));
                let give_up = next > d.created_at + GIVE_UP;
                tracing::warn!(message = d.id, webhook = %d.webhook, attempts = tries, ?status, %error, give_up, "webhook delivery failed");
                ids.push(d.id);
                attempts.push(tries);
                statuses.push(status.map(i32::from));
                failing.entry(d.webhook).or_insert_with(|| error.clone());
                errors.push(error);
                give_ups.push(give_up);
                nexts.push(next);
            }
        }
    }
    if !ok_ids.is_empty() {
        sqlx::query(
            "WITH done AS (
                 UPDATE webhook_messages m SET state = 'DELIVERED', attempts = m.attempts + 1,
                     last_status = u.status, last_error = NULL, delivered_at = now()
                 FROM UNNEST($1::int8[], $2::int4[]) AS u(id, status) WHERE m.id = u.id)
             UPDATE webhooks SET failing_since = NULL
             WHERE id = ANY($3) AND failing_since IS NOT NULL",
        )
        .bind(&ok_ids)
        .bind(&ok_status)
        .bind(&ok_endpoints)
        .execute(db)
        .await?;
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE webhook_messages m SET attempts = u.attempts, last_status = u.status,
             last_error = u.error, state = CASE WHEN u.give_up THEN 'FAILED' ELSE 'PENDING' END,
             next_at = u.next
         FROM UNNEST($1::int8[], $2::int4[], $3::int4[], $4::text[], $5::bool[], $6::timestamptz[])
             AS u(id, attempts, status, error, give_up, next)
         WHERE m.id = u.id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&errors)
    .bind(&give_ups)
    .bind(&nexts)
    .execute(db)
    .await?;
    for (webhook, error) in failing {
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
        .bind(webhook)
        .bind(&error)
        .fetch_optional(db)
        .await?;
        if disabled.is_some_and(|r| r.get::<bool, _>("just_disabled")) {
            metrics.webhook_disabled();
            tracing::error!(%webhook, "webhook endpoint failing for a day; disabled");
        }
    }
    Ok(())
}

/// Where an endpoint's messages go this round: its URL and a client that reaches only the
/// address checked here.
#[derive(Clone)]
struct Target {
    url: reqwest::Url,
    client: reqwest::Client,
}

/// Resolves an endpoint's host and checks every address it has: a name that moved to a private
/// address is refused. Requests then go to the first checked address.
async fn target(
    clients: &mut Clients,
    settings: &WebhookSettings,
    url: &str,
) -> Result<Target, String> {
    let url = webhooks::check_url(url, settings.allow_private)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    for a in &addrs {
        webhooks::check_address(a.ip(), settings.allow_private)?;
    }
    let client = clients.get(&url, first)?;
    Ok(Target { url, client })
}

/// Posts one message. `Ok`: a 2xx; `Err`: the status (if any) and why.
async fn deliver(target: &Target, d: &Due) -> Outcome {
    let body = serde_json::to_vec(&d.payload).map_err(|e| (None, e.to_string()))?;
    let msg_id = format!("msg_{}", d.id);
    let timestamp = Utc::now().timestamp();
    let signature = webhooks::sign(&d.secret, &msg_id, timestamp, &body).map_err(|e| (None, e))?;
    let resp = target
        .client
        .post(target.url.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn due(data: serde_json::Value) -> Due {
        Due {
            id: 1,
            webhook: Uuid::nil(),
            url: String::new(),
            secret: String::new(),
            payload: serde_json::json!({"type": "x", "data": data}),
            attempts: 0,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn the_events_of_one_enrollment_share_a_lane_and_others_spread() {
        let e = Uuid::new_v4().to_string();
        let lane = due(serde_json::json!({"enrollment_id": e, "sequence_id": "s1"})).lane(8);
        assert_eq!(
            due(serde_json::json!({"enrollment_id": e, "sequence_id": "s2"})).lane(8),
            lane
        );
        // Without an enrollment, the sequence decides.
        assert_eq!(
            due(serde_json::json!({"enrollment_id": null, "sequence_id": "s1"})).lane(8),
            due(serde_json::json!({"sequence_id": "s1"})).lane(8)
        );
        let lanes: std::collections::HashSet<usize> = (0..200)
            .map(|_| due(serde_json::json!({"enrollment_id": Uuid::new_v4().to_string()})).lane(8))
            .collect();
        assert_eq!(lanes.len(), 8, "200 enrollments use every lane");
        assert_eq!(due(serde_json::json!({})).lane(1), 0);
    }
}
