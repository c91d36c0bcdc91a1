//! Settings for every role, read from `PULSE_*` environment variables.
//!
//! Owns the names and defaults of the configuration. The defaults work on a developer machine
//! with PostgreSQL, RabbitMQ and Redis on their standard local ports. This module never opens a
//! connection; it only describes where things are.

use std::{net::SocketAddr, str::FromStr, time::Duration};

/// A configuration value that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

/// Everything a Pulse role needs to know to start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    /// The relay (`smtp_url` module: `smtp://`, `?tls=required|opportunistic`, `smtps://`,
    /// credentials); `None` sends to the capture outbox in PostgreSQL.
    pub smtp_url: Option<String>,
    /// `PULSE_SMTP_PASSWORD_FILE`: the relay's AUTH password, read from a file (a Kubernetes
    /// secret) instead of the URL. Trailing newlines are ignored.
    pub smtp_password_file: Option<std::path::PathBuf>,
    /// `PULSE_TLS_CA_FILE`: a PEM bundle of private CA certificates trusted on top of the
    /// webpki roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub http_addr: SocketAddr,
    /// `PULSE_PUBLIC_URL`: where recipients reach Pulse (the one-click unsubscribe links);
    /// default `http://PULSE_HTTP_ADDR`.
    pub public_url: String,
    /// `PULSE_UNSUBSCRIBE_SECRET` and `PULSE_UNSUBSCRIBE_SECRET_PREVIOUS`: the keys that sign
    /// unsubscribe tokens (the previous one is still accepted, for rotation). Unset: a random
    /// key made once and kept in PostgreSQL.
    pub unsubscribe_secret: Option<crate::smtp_url::Secret>,
    pub unsubscribe_secret_previous: Option<crate::smtp_url::Secret>,
    /// `PULSE_UNSUBSCRIBE_MAILTO`: an address whose mail unsubscribes (a `mailto:` in
    /// `List-Unsubscribe`, next to the one-click URL); none by default.
    pub unsubscribe_mailto: Option<String>,
    /// Provisioned at startup for the default workspace when set.
    pub api_key: Option<String>,
    /// Outbound webhooks' delivery.
    pub webhooks: WebhookSettings,
    /// `PULSE_ADMIN_KEY`: the platform key that makes and lists workspaces
    /// (`/v1/admin/workspaces`); without it those routes do not exist.
    pub admin_key: Option<crate::smtp_url::Secret>,
    /// Name of the RabbitMQ queue carrying due sends (tests use their own).
    pub queue: String,
    /// `classic` (default) or `quorum` (production: replicated across the RabbitMQ cluster).
    pub queue_type: crate::messaging::QueueType,
    /// Prefix of every Redis key Pulse writes (tests use their own).
    pub redis_prefix: String,
    /// Apply migrations when a role starts.
    pub migrate_on_start: bool,
    /// A worker that has not heartbeaten for this long is taken for dead, and its claims are
    /// settled at the next sweep (`ledger::Leases`).
    pub owner_timeout: Duration,
    pub scheduler: SchedulerSettings,
    pub sender: SenderSettings,
    pub inbound: InboundSettings,
}

/// The inbound role: the SMTP listener that reads replies, bounces and complaints.
#[derive(Clone, Debug)]
pub struct InboundSettings {
    /// `PULSE_INBOUND_SMTP_ADDR`: where it listens (the MX of the bounce domain).
    pub smtp_addr: SocketAddr,
    /// `PULSE_BOUNCE_DOMAIN`: with it, every send's envelope sender is a VERP address at this
    /// domain (`verp`) and the listener takes mail for any address there. Unset: the envelope
    /// sender is the From address, as before, and bounces are matched by Message-ID only.
    pub bounce_domain: Option<String>,
    /// `PULSE_INBOUND_MAX_BYTES`: the largest message taken (bigger: 552).
    pub max_bytes: usize,
    /// `PULSE_INBOUND_MAX_CONNECTIONS`: connections served at once (more: 421).
    pub max_connections: usize,
    /// `PULSE_INBOUND_COMMAND_TIMEOUT_MS`: the longest wait for one command or the message body.
    pub command_timeout: Duration,
    /// `PULSE_SOFT_BOUNCE_LIMIT`: transient bounces in a row that suppress an address.
    pub soft_bounce_limit: i32,
    /// `PULSE_INBOUND_TLS_CERT_FILE` and `PULSE_INBOUND_TLS_KEY_FILE`: the listener's certificate
    /// chain and key (PEM); with them it offers STARTTLS.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// `PULSE_SES_SNS_CERT_FILE`: the PEM certificate Amazon SNS signs its messages with; with
    /// it, `POST /v1/inbound/ses` takes SES bounce and complaint notifications.
    pub ses_sns_cert_file: Option<std::path::PathBuf>,
    /// `PULSE_SES_TOPIC_ARNS`: the SNS topics accepted (comma-separated); empty: any topic the
    /// certificate signs for.
    pub ses_topic_arns: Vec<String>,
    /// `PULSE_SENDGRID_WEBHOOK_KEY`: SendGrid's Event Webhook verification key (base64 of the
    /// public key's DER); with it, `POST /v1/inbound/sendgrid` takes its events.
    pub sendgrid_webhook_key: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SchedulerSettings {
    /// Most step runs claimed and published in one transaction.
    pub batch_size: i64,
    /// Sleep between claims when the last claim found less than a full batch.
    pub poll_interval: Duration,
    /// How often stale work is looked for (see `queued_lease` and `SenderSettings::sending_lease`).
    pub sweep_interval: Duration,
    /// A step run QUEUED this long without being handled lost its message (a broker that lost
    /// it, a dead-lettered delivery): it is published again.
    pub queued_lease: Duration,
    /// A due step waiting this long gains one priority level in the claim (starvation-free
    /// priorities).
    pub priority_aging: Duration,
    /// Claims pause while the send queue holds this many ready messages (0: never): the backlog
    /// waits in PostgreSQL, where the claim's fairness and priorities order it, not in a FIFO
    /// queue.
    pub max_ready: u32,
    /// How often the `overspeed` guardrail counts the sends against every sending limit
    /// (`guardrails::overspeed`).
    pub guardrail_interval: Duration,
}

/// How the webhooks role delivers (`pulse_shared::webhooks`).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// `PULSE_WEBHOOKS_ALLOW_PRIVATE`: let endpoints on loopback and private networks through
    /// (development and tests only).
    pub allow_private: bool,
    /// First retry delay, doubled each try up to an hour; a message is retried for 24 hours.
    pub retry_base: Duration,
    /// Longest one delivery may take.
    pub timeout: Duration,
    /// Requests in flight at once to one endpoint (`PULSE_WEBHOOK_CONCURRENCY`, at least 1).
    pub concurrency: usize,
    /// How long delivered and failed messages stay in the delivery log
    /// (`PULSE_WEBHOOK_RETENTION_HOURS`).
    pub retention: Duration,
}

#[derive(Clone, Debug)]
pub struct SenderSettings {
    /// RabbitMQ prefetch: deliveries held by one sender at once.
    pub prefetch: u16,
    /// Sends in progress at once in one sender.
    pub concurrency: usize,
    /// SMTP connections kept open to the relay.
    pub smtp_pool_size: usize,
    /// Most deliveries whose ledger claims, re-checks or records share one statement.
    pub db_batch: usize,
    /// How long a ledger batch that starts while the other of its kind runs waits for more
    /// deliveries (`crate::batch`): larger statements under load, at most this much latency
    /// each; zero turns it off. An idle sender never waits.
    pub db_linger: Duration,
    /// Timeout of one SMTP command.
    pub smtp_timeout: Duration,
    /// Transient failures (4xx, connection errors) retried before a send is FAILED.
    pub max_attempts: i32,
    /// First retry delay; doubles each attempt, with jitter, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A SENDING ledger entry older than this belongs to a worker that died mid-send.
    pub sending_lease: Duration,
    /// Deliveries of one message that failed on a dependency before it is dead-lettered (its
    /// step run is then published again after `queued_lease`).
    pub max_deliveries: u32,
    /// A header every message carries with its idempotency key, for relays and providers that
    /// deduplicate on one (`PULSE_SMTP_IDEMPOTENCY_HEADER`); none by default.
    pub idempotency_header: Option<String>,
}

/// How long a claimed, re-checked send may wait for a relay connection before it gives its
/// claim back. Pause and cancel wait for claimed sends (up to the SMTP timeout + 5 s), so this
/// plus one SMTP transaction must stay well inside that.
pub const CONNECTION_WAIT: Duration = Duration::from_secs(2);

impl SenderSettings {
    /// The longest a sender can take from its claim to the wire mark: the connection wait,
    /// then opening a connection (TCP, TLS, greeting, STARTTLS, AUTH: one SMTP timeout in
    /// all), MAIL/RCPT/DATA and the body, each bounded by the SMTP timeout; and a margin. An unmarked claim older than this is given back whatever its owner's health.
    pub fn unmarked_lease(&self) -> Duration {
        CONNECTION_WAIT + self.smtp_timeout * 3 + Duration::from_secs(10)
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `lookup`, so tests can supply their own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str, default: &str| lookup(k).unwrap_or_else(|| default.to_owned());
        let non_empty = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        Settings {
            database_url: get(
                "PULSE_DATABASE_URL",
                // Loopback needs no TLS; a remote server's URL says `sslmode=verify-full`.
                "postgres://postgres@127.0.0.1:5432/pulse?sslmode=disable",
            ),
            amqp_url: get("PULSE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            redis_url: get("PULSE_REDIS_URL", "redis://127.0.0.1:6379/"),
            smtp_url: non_empty("PULSE_SMTP_URL"),
            smtp_password_file: non_empty("PULSE_SMTP_PASSWORD_FILE").map(Into::into),
            tls_ca_file: non_empty("PULSE_TLS_CA_FILE").map(Into::into),
            http_addr: parse(&lookup, "PULSE_HTTP_ADDR", "127.0.0.1:8080")?,
            public_url: non_empty("PULSE_PUBLIC_URL")
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .unwrap_or_else(|| {
                    format!("http://{}", get("PULSE_HTTP_ADDR", "127.0.0.1:8080").trim())
                }),
            unsubscribe_secret: non_empty("PULSE_UNSUBSCRIBE_SECRET")
                .map(crate::smtp_url::Secret::new),
            unsubscribe_secret_previous: non_empty("PULSE_UNSUBSCRIBE_SECRET_PREVIOUS")
                .map(crate::smtp_url::Secret::new),
            unsubscribe_mailto: non_empty("PULSE_UNSUBSCRIBE_MAILTO").map(|m| m.trim().to_owned()),
            api_key: non_empty("PULSE_API_KEY"),
            admin_key: non_empty("PULSE_ADMIN_KEY").map(crate::smtp_url::Secret::new),
            webhooks: WebhookSettings {
                allow_private: parse(&lookup, "PULSE_WEBHOOKS_ALLOW_PRIVATE", "false")?,
                retry_base: millis(&lookup, "PULSE_WEBHOOK_RETRY_BASE_MS", "5000")?,
                timeout: millis(&lookup, "PULSE_WEBHOOK_TIMEOUT_MS", "10000")?,
                concurrency: parse::<usize>(&lookup, "PULSE_WEBHOOK_CONCURRENCY", "8")?.max(1),
                retention: Duration::from_secs(
                    parse::<u64>(&lookup, "PULSE_WEBHOOK_RETENTION_HOURS", "168")?
                        .saturating_mul(3600),
                ),
            },
            queue: get("PULSE_QUEUE", "pulse.sends"),
            queue_type: parse(&lookup, "PULSE_QUEUE_TYPE", "classic")?,
            redis_prefix: get("PULSE_REDIS_PREFIX", "pulse"),
            migrate_on_start: parse(&lookup, "PULSE_MIGRATE_ON_START", "true")?,
            owner_timeout: millis(&lookup, "PULSE_OWNER_TIMEOUT_MS", "15000")?,
            scheduler: SchedulerSettings {
                batch_size: parse(&lookup, "PULSE_SCHEDULER_BATCH", "500")?,
                poll_interval: millis(&lookup, "PULSE_SCHEDULER_POLL_MS", "200")?,
                sweep_interval: millis(&lookup, "PULSE_SWEEP_INTERVAL_MS", "5000")?,
                guardrail_interval: millis(&lookup, "PULSE_GUARDRAIL_INTERVAL_MS", "10000")?,
                queued_lease: millis(&lookup, "PULSE_QUEUED_LEASE_MS", "600000")?,
                priority_aging: millis(&lookup, "PULSE_PRIORITY_AGING_MS", "600000")?,
                max_ready: parse(&lookup, "PULSE_SCHEDULER_MAX_READY", "1000")?,
            },
            sender: SenderSettings {
                prefetch: parse(&lookup, "PULSE_SENDER_PREFETCH", "512")?,
                concurrency: parse(&lookup, "PULSE_SENDER_CONCURRENCY", "256")?,
                smtp_pool_size: parse(&lookup, "PULSE_SMTP_POOL", "32")?,
                db_batch: parse(&lookup, "PULSE_SENDER_DB_BATCH", "128")?,
                db_linger: millis(&lookup, "PULSE_SENDER_DB_LINGER_MS", "2")?,
                smtp_timeout: millis(&lookup, "PULSE_SMTP_TIMEOUT_MS", "30000")?,
                max_attempts: parse(&lookup, "PULSE_SEND_MAX_ATTEMPTS", "8")?,
                retry_base: millis(&lookup, "PULSE_RETRY_BASE_MS", "30000")?,
                retry_max: millis(&lookup, "PULSE_RETRY_MAX_MS", "3600000")?,
                sending_lease: millis(&lookup, "PULSE_SENDING_LEASE_MS", "600000")?,
                max_deliveries: parse(&lookup, "PULSE_MAX_DELIVERIES", "10")?,
                idempotency_header: non_empty("PULSE_SMTP_IDEMPOTENCY_HEADER")
                    .map(|h| h.trim().to_owned()),
            },
            inbound: InboundSettings {
                smtp_addr: parse(&lookup, "PULSE_INBOUND_SMTP_ADDR", "127.0.0.1:2525")?,
                bounce_domain: non_empty("PULSE_BOUNCE_DOMAIN")
                    .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase()),
                max_bytes: parse(&lookup, "PULSE_INBOUND_MAX_BYTES", "10485760")?,
                max_connections: parse(&lookup, "PULSE_INBOUND_MAX_CONNECTIONS", "100")?,
                command_timeout: millis(&lookup, "PULSE_INBOUND_COMMAND_TIMEOUT_MS", "60000")?,
                soft_bounce_limit: parse(&lookup, "PULSE_SOFT_BOUNCE_LIMIT", "3")?,
                tls_cert_file: non_empty("PULSE_INBOUND_TLS_CERT_FILE").map(Into::into),
                tls_key_file: non_empty("PULSE_INBOUND_TLS_KEY_FILE").map(Into::into),
                ses_sns_cert_file: non_empty("PULSE_SES_SNS_CERT_FILE").map(Into::into),
                ses_topic_arns: lookup("PULSE_SES_TOPIC_ARNS")
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
                sendgrid_webhook_key: non_empty("PULSE_SENDGRID_WEBHOOK_KEY")
                    .map(|k| k.trim().to_owned()),
            },
        }
        .validated()
    }

    /// The private CA bundle of `PULSE_TLS_CA_FILE` (PEM), read now; `None` when unset.
    /// PostgreSQL, RabbitMQ, Redis and the SMTP relay trust it on top of the webpki roots.
    pub fn tls_ca(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.tls_ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| ConfigError {
            var: "PULSE_TLS_CA_FILE",
            reason: format!("{}: {e}", path.display()),
        })?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError {
                var: "PULSE_TLS_CA_FILE",
                reason: format!("{}: no PEM certificate in it", path.display()),
            });
        }
        Ok(Some(pem))
    }

    /// How long a pause or cancel waits for sends already claimed to settle: one SMTP timeout
    /// and a margin. After it, nothing of a paused sequence may be sent.
    pub fn pause_drain_timeout(&self) -> Duration {
        self.sender.smtp_timeout + Duration::from_secs(5)
    }

    fn validated(self) -> Result<Self, ConfigError> {
        let positive = |var: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError {
                    var,
                    reason: "must be greater than zero".into(),
                })
            }
        };
        positive("PULSE_SCHEDULER_BATCH", self.scheduler.batch_size > 0)?;
        positive("PULSE_SENDER_PREFETCH", self.sender.prefetch > 0)?;
        positive("PULSE_SENDER_CONCURRENCY", self.sender.concurrency > 0)?;
        positive("PULSE_SMTP_POOL", self.sender.smtp_pool_size > 0)?;
        positive("PULSE_SENDER_DB_BATCH", self.sender.db_batch > 0)?;
        positive("PULSE_SEND_MAX_ATTEMPTS", self.sender.max_attempts > 0)?;
        positive("PULSE_OWNER_TIMEOUT_MS", !self.owner_timeout.is_zero())?;
        positive("PULSE_INBOUND_MAX_BYTES", self.inbound.max_bytes > 0)?;
        positive(
            "PULSE_INBOUND_MAX_CONNECTIONS",
            self.inbound.max_connections > 0,
        )?;
        positive(
            "PULSE_INBOUND_COMMAND_TIMEOUT_MS",
            !self.inbound.command_timeout.is_zero(),
        )?;
        positive(
            "PULSE_SOFT_BOUNCE_LIMIT",
            self.inbound.soft_bounce_limit > 0,
        )?;
        if self.inbound.tls_cert_file.is_some() != self.inbound.tls_key_file.is_some() {
            return Err(ConfigError {
                var: "PULSE_INBOUND_TLS_CERT_FILE",
                reason: "set it and PULSE_INBOUND_TLS_KEY_FILE together, or neither".into(),
            });
        }
        if let Some(domain) = &self.inbound.bounce_domain
            && crate::domain::validate::domain(domain).is_err()
        {
            return Err(ConfigError {
                var: "PULSE_BOUNCE_DOMAIN",
                reason: format!("{domain:?} is not a domain name"),
            });
        }
        let url = url::Url::parse(&self.public_url).ok();
        if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()) {
            return Err(ConfigError {
                var: "PULSE_PUBLIC_URL",
                reason: format!("{:?} is not an http(s) URL", self.public_url),
            });
        }
        if let Some(to) = &self.unsubscribe_mailto
            && crate::domain::validate::email(to).is_err()
        {
            return Err(ConfigError {
                var: "PULSE_UNSUBSCRIBE_MAILTO",
                reason: format!("{to:?} is not an email address"),
            });
        }
        if let Some(name) = &self.sender.idempotency_header {
            // RFC 5322 field name: printable ASCII but the colon.
            let valid =
                !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
            if !valid {
                return Err(ConfigError {
                    var: "PULSE_SMTP_IDEMPOTENCY_HEADER",
                    reason: format!(
                        "{name:?} is not a header name (printable ASCII, no colon or space)"
                    ),
                });
            }
        }
        if let Some(url) = &self.smtp_url {
            let relay = crate::smtp_url::SmtpUrl::parse(url).map_err(|reason| ConfigError {
                var: "PULSE_SMTP_URL",
                reason,
            })?;
            if self.smtp_password_file.is_some() && relay.credentials.is_none() {
                return Err(ConfigError {
                    var: "PULSE_SMTP_PASSWORD_FILE",
                    reason: "set, but PULSE_SMTP_URL names no user (smtp://user@host...)".into(),
                });
            }
        }
        Ok(self)
    }
}

fn parse<T: FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let raw = lookup(var).unwrap_or_else(|| default.to_owned());
    raw.trim().parse().map_err(|e: T::Err| ConfigError {
        var,
        reason: format!("{raw:?}: {e}"),
    })
}

fn millis(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<Duration, ConfigError> {
    parse::<u64>(lookup, var, default).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert!(s.smtp_url.is_none());
        assert!(s.api_key.is_none());
        assert_eq!(s.queue, "pulse.sends");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err =
            Settings::from_lookup(|k| (k == "PULSE_HTTP_ADDR").then(|| "nope".into())).unwrap_err();
        assert_eq!(err.var, "PULSE_HTTP_ADDR");
        let err = Settings::from_lookup(|k| (k == "PULSE_SENDER_PREFETCH").then(|| "0".into()))
            .unwrap_err();
        assert_eq!(err.var, "PULSE_SENDER_PREFETCH");
        let err = Settings::from_lookup(|k| (k == "PULSE_SMTP_URL").then(|| "http://x".into()))
            .unwrap_err();
        assert_eq!(err.var, "PULSE_SMTP_URL");
        let err = Settings::from_lookup(|k| {
            (k == "PULSE_SMTP_IDEMPOTENCY_HEADER").then(|| "X-Key: oops".into())
        })
        .unwrap_err();
        assert_eq!(err.var, "PULSE_SMTP_IDEMPOTENCY_HEADER");
    }

    #[test]
    fn a_password_file_needs_a_user_in_the_url() {
        let env = |url: &'static str| {
            move |k: &str| match k {
                "PULSE_SMTP_URL" => Some(url.to_owned()),
                "PULSE_SMTP_PASSWORD_FILE" => Some("/run/secrets/smtp".to_owned()),
                _ => None,
            }
        };
        let err = Settings::from_lookup(env("smtp://relay:587?tls=required")).unwrap_err();
        assert_eq!(err.var, "PULSE_SMTP_PASSWORD_FILE");
        let s = Settings::from_lookup(env("smtp://apikey@relay:587?tls=required")).unwrap();
        assert!(s.smtp_password_file.is_some());
    }

    #[test]
    fn empty_smtp_url_means_capture() {
        let s = Settings::from_lookup(|k| (k == "PULSE_SMTP_URL").then(|| " ".into())).unwrap();
        assert!(s.smtp_url.is_none());
    }
}
