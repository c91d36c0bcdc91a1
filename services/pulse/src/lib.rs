//! Composition of the roles into one process: which roles run, the HTTP server they share
//! (`/v1` routes, `/healthz`, `/readyz`, `/metrics`, with a span and request metrics for every
//! request), startup (migrations, API-key provisioning) and graceful shutdown. The binary and
//! the end-to-end tests both start Pulse through [`serve`].

pub mod cli;
mod webhooks;

pub use webhooks::prune as prune_webhook_messages;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use pulse_shared::{
    Settings, db,
    health::Health,
    http,
    metrics::{self, Metrics},
    pause::PauseFlags,
    telemetry,
};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// Longest a readiness check may take before it counts as a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the database gauges of a scrape may take; the scrape then answers without them.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request body accepted (a full event batch fits comfortably).
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// A role of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Ingest,
    Scheduler,
    Sender,
    Api,
    /// The SMTP listener for replies, bounces and complaints.
    Inbound,
    /// Delivers outbound webhooks.
    Webhooks,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] pulse_shared::db::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{role} failed: {message}")]
    Role { role: &'static str, message: String },
}

/// The roles to run, with `All` expanded.
fn expand(roles: &[Role]) -> Vec<Role> {
    if roles.is_empty() || roles.contains(&Role::All) {
        vec![
            Role::Ingest,
            Role::Scheduler,
            Role::Sender,
            Role::Api,
            Role::Inbound,
            Role::Webhooks,
        ]
    } else {
        roles.to_vec()
    }
}

/// The service name traces are exported under: `pulse` for every role in one process,
/// `pulse-sender` for the sender alone, `pulse-api-ingest` for two roles.
pub fn service_name(roles: &[Role]) -> String {
    let roles = if roles.contains(&Role::All) {
        &[][..]
    } else {
        roles
    };
    let mut name = "pulse".to_owned();
    for role in roles {
        if let Some(v) = clap::ValueEnum::to_possible_value(role) {
            name.push('-');
            name.push_str(v.get_name());
        }
    }
    name
}

/// Prepares the database: migrations (unless disabled) and the `PULSE_API_KEY` key.
pub async fn prepare(settings: &Settings) -> Result<PgPool, ServeError> {
    let pool = db::pool_for(settings, 8)?;
    if settings.migrate_on_start {
        db::ensure_database(&settings.database_url).await?;
        db::migrate(&pool).await?;
    }
    if let Some(key) = &settings.api_key {
        db::provision_key(&pool, db::DEFAULT_WORKSPACE, "default", key).await?;
    }
    Ok(pool)
}

/// The sockets Pulse listens on, bound before it starts so callers learn the real addresses
/// (port 0 in tests).
pub struct Listeners {
    pub http: TcpListener,
    /// The inbound role's SMTP listener, when that role runs.
    pub inbound: Option<TcpListener>,
}

/// Binds the HTTP listener and, when `roles` include the inbound role, its SMTP listener.
pub async fn bind(settings: &Settings, roles: &[Role]) -> Result<Listeners, ServeError> {
    let listen = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let inbound = if expand(roles).contains(&Role::Inbound) {
        Some(listen(settings.inbound.smtp_addr).await?)
    } else {
        None
    };
    Ok(Listeners {
        http: listen(settings.http_addr).await?,
        inbound,
    })
}

/// Runs `roles` until `shutdown` is cancelled, then drains them. Returns the first role failure.
pub async fn serve(
    settings: Settings,
    roles: Vec<Role>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let roles = expand(&roles);
    let Listeners {
        http: listener,
        inbound,
    } = listeners;
    let db = prepare(&settings).await?;
    let mut tasks: JoinSet<Result<(), ServeError>> = JoinSet::new();
    let health = Health::default();
    let metrics = Metrics::new();

    let flags = PauseFlags::connect_for(&settings, Duration::from_secs(30))
        .await
        .map_err(|e| ServeError::Role {
            role: "startup",
            message: e.to_string(),
        })?;
    let local = ["://0.0.0.0", "://127.", "://localhost", "://[::"]
        .iter()
        .any(|h| settings.public_url.contains(h));
    if local && settings.smtp_url.is_some() && roles.contains(&Role::Scheduler) {
        tracing::warn!(public_url = %settings.public_url, "unsubscribe links point at this machine; set PULSE_PUBLIC_URL to the address recipients can reach");
    }
    let mut app = Router::new();
    if roles.contains(&Role::Api) {
        let unsubscribe = pulse_shared::unsubscribe::Unsubscribe::load(&db, &settings)
            .await
            .map_err(|e| ServeError::Role {
                role: "startup",
                message: e.to_string(),
            })?;
        let api = pulse_api::ApiState {
            db: db.clone(),
            flags: flags.clone(),
            drain_timeout: settings.pause_drain_timeout(),
            unsubscribe: std::sync::Arc::new(pulse_api::OneClick::new(unsubscribe)),
            providers: std::sync::Arc::new(pulse_api::Providers::load(&settings.inbound).map_err(
                |message| ServeError::Role {
                    role: "startup",
                    message,
                },
            )?),
            metrics: metrics.clone(),
            admin_key: settings.admin_key.clone(),
            webhooks_allow_private: settings.webhooks.allow_private,
        };
        app = app
            .merge(pulse_api::hub::router(api.clone()))
            .merge(pulse_api::router(api));
    }
    if roles.contains(&Role::Ingest) {
        app = app.merge(pulse_ingest::router(pulse_ingest::IngestState {
            db: db.clone(),
            metrics: metrics.clone(),
            soft_bounce_limit: settings.inbound.soft_bounce_limit,
        }));
    }
    if let Some(inbound) = inbound.filter(|_| roles.contains(&Role::Inbound)) {
        let (s, d, m, t) = (
            settings.clone(),
            db.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            pulse_inbound::run(s, inbound, d, m, t)
                .await
                .map_err(|e| ServeError::Role {
                    role: "inbound",
                    message: e.to_string(),
                })
        });
    }
    let probe = Probe {
        db,
        flags,
        health: health.clone(),
        metrics: metrics.clone(),
        observe: roles
            .contains(&Role::Scheduler)
            .then(|| (settings.pause_drain_timeout(), Arc::default())),
    };
    let app = app
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(
            Router::new()
                .route("/readyz", get(ready))
                .route("/metrics", get(metrics_page))
                .with_state(probe),
        )
        .fallback(http::not_found)
        .layer(middleware::from_fn_with_state(metrics.clone(), record_http))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span));
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: settings.http_addr,
        source,
    })?;
    tracing::info!(%addr, roles = ?roles, "pulse serving");
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await
        .map_err(|e| ServeError::Role {
            role: "http",
            message: e.to_string(),
        })
    });
    if roles.contains(&Role::Scheduler) {
        let (s, h, m, t) = (
            settings.clone(),
            health.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            pulse_scheduler::run(s, h, m, t)
                .await
                .map_err(|e| ServeError::Role {
                    role: "scheduler",
                    message: e.to_string(),
                })
        });
    }
    if roles.contains(&Role::Webhooks) {
        let (s, m, t) = (settings.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            webhooks::run(s, m, t).await.map_err(|e| ServeError::Role {
                role: "webhooks",
                message: e.to_string(),
            })
        });
    }
    if roles.contains(&Role::Sender) {
        let (s, h, m, t) = (
            settings.clone(),
            health.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            pulse_sender::run(s, h, m, t)
                .await
                .map_err(|e| ServeError::Role {
                    role: "sender",
                    message: e.to_string(),
                })
        });
    }

    // The first role to stop (failure or shutdown) stops the others; all are drained.
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(ServeError::Role {
                role: "task",
                message: e.to_string(),
            })
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "a role stopped with an error; shutting down");
            first_error.get_or_insert(e);
        }
        shutdown.cancel();
    }
    first_error.map_or(Ok(()), Err)
}

#[derive(Clone)]
struct Probe {
    db: PgPool,
    flags: PauseFlags,
    health: Health,
    metrics: Metrics,
    /// Where the scheduler runs: the pause drain time, and one scrape's database reads at a time.
    observe: Option<(Duration, Arc<tokio::sync::Mutex<()>>)>,
}

/// The readiness checks: PostgreSQL and Redis answer, and each RabbitMQ session is up. A check
/// that hangs counts as a failure, so a probe answers promptly.
async fn checks(h: &Probe) -> Vec<(&'static str, Result<(), String>)> {
    let postgres = tokio::time::timeout(READY_TIMEOUT, sqlx::query("SELECT 1").execute(&h.db))
        .await
        .map_err(|_| "PostgreSQL did not answer in time".to_owned())
        .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let redis = tokio::time::timeout(READY_TIMEOUT, h.flags.ping())
        .await
        .map_err(|_| "Redis did not answer in time".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let mut all = vec![("postgres", postgres), ("redis", redis)];
    for (part, problem) in h.health.parts() {
        let name = match part {
            "scheduler" => "rabbitmq_scheduler",
            "sender" => "rabbitmq_sender",
            "smtp_relay" => "smtp_relay",
            _ => "rabbitmq",
        };
        all.push((name, problem.map_or(Ok(()), Err)));
    }
    all
}

/// Ready when PostgreSQL and Redis answer and every RabbitMQ session (scheduler, sender) is up.
async fn ready(State(h): State<Probe>) -> (StatusCode, Json<serde_json::Value>) {
    let mut body = serde_json::Map::new();
    let mut ok = true;
    for (name, result) in checks(&h).await {
        ok &= result.is_ok();
        body.insert(
            name.into(),
            result.err().unwrap_or_else(|| "ok".into()).into(),
        );
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body.into()))
}

/// The Prometheus scrape: the readiness checks as gauges, the database gauges where the
/// scheduler runs (one scrape's reads at a time), then every metric of this process.
async fn metrics_page(State(h): State<Probe>) -> impl IntoResponse {
    for (name, result) in checks(&h).await {
        h.metrics.set_ready(name, result.is_ok());
    }
    if let Some((pause_grace, one_at_a_time)) = &h.observe {
        let _turn = one_at_a_time.lock().await;
        let observed = tokio::time::timeout(
            OBSERVE_TIMEOUT,
            pulse_scheduler::observe(&h.db, &h.metrics, *pause_grace),
        )
        .await;
        match observed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "database gauges not read; serving the last values")
            }
            Err(_) => tracing::warn!(
                timeout_s = OBSERVE_TIMEOUT.as_secs(),
                "database gauges took too long; serving the last values"
            ),
        }
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        h.metrics.render(),
    )
}

/// Counts every request by method, route template and status, and times it.
async fn record_http(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    // The request span (`request_span`) is the current one here.
    let span = tracing::Span::current();
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    m.http_request(
        method.as_str(),
        route.as_deref(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The span of one request (an OpenTelemetry server span named `METHOD route`, with its status
/// recorded by `record_http`), continuing the caller's trace when it sends a `traceparent`.
/// Probes and scrapes get none: each would be a trace of its own, several a minute.
fn request_span(req: &axum::http::Request<Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    if matches!(route, "/metrics" | "/healthz" | "/readyz") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = req
        .headers()
        .get(telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    telemetry::continue_trace(&span, parent);
    span
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutdown signal received; draining");
        token.cancel();
    });
}
