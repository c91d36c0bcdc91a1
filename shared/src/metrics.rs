//! Prometheus metrics: one registry per running Pulse, served at `/metrics` by every role.
//!
//! Owns every metric's name, help text, unit and label set. Label values come from closed sets
//! only (the `&'static str` constants and enums below, an HTTP route *template*, a configured
//! queue name), never from data: no lead, address, sequence or key ever becomes a label. Roles
//! record through the methods here; nothing outside this module names a metric. Gauges that
//! describe the database (enrollments, backlog) are read on scrape by `pulse_scheduler::observe`.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// Every metric family Pulse exposes, as named in its `# TYPE` line (a counter's samples add
/// `_total`, a histogram's `_bucket`, `_sum` and `_count`). Dashboards and alert rules may
/// query these and nothing else (tests/tests/deploy.rs checks).
pub const NAMES: &[&str] = &[
    "pulse_http_requests",
    "pulse_http_request_duration_seconds",
    "pulse_ingest_events",
    "pulse_ingest_enrollments",
    "pulse_enrollments",
    "pulse_scheduler_steps_claimed",
    "pulse_scheduler_steps_published",
    "pulse_scheduler_steps_requeued",
    "pulse_scheduler_steps_not_queued",
    "pulse_scheduler_claim_duration_seconds",
    "pulse_scheduler_publish_confirm_duration_seconds",
    "pulse_sweep_stale",
    "pulse_backlog_steps",
    "pulse_backlog_oldest_age_seconds",
    "pulse_held_steps",
    "pulse_unknown_sends_outstanding",
    "pulse_paused_sequence_sends",
    "pulse_sender_messages_consumed",
    "pulse_sender_sends",
    "pulse_smtp_send_duration_seconds",
    "pulse_ledger_claim_conflicts",
    "pulse_sender_dead_lettered",
    "pulse_queue_messages",
    "pulse_reconnects",
    "pulse_ready",
    "pulse_process_resident_memory_bytes",
    "pulse_inbound_messages",
    "pulse_guardrail_trips",
    "pulse_webhook_endpoints_disabled",
];

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What became of one due-send message in a sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The relay accepted it.
    Sent,
    /// Refused for good (5xx, or transient failures until attempts ran out).
    Failed,
    /// A transient failure; due again later.
    Retried,
    /// Its sequence is paused: held, not sent.
    HeldByPause,
    /// A sending limit (mailbox, domain, workspace, sequence) was reached: due when its slot
    /// frees.
    RateLimited,
    /// The send window closed before it went out: due at the next opening.
    HeldByWindow,
    /// No relay connection freed up in time: due again shortly.
    PoolBusy,
    /// The key was already settled (a redelivery or a second copy): not sent again.
    DuplicateSuppressed,
    /// Unsent because the sequence, enrollment or lead changed after queueing.
    Released,
    /// The relay's answer was lost: left UNKNOWN for an operator.
    Unknown,
    /// Redis could not be reached (pause flags, sending limits): held, due again shortly.
    HeldWithoutRedis,
    /// Later than its step's `max_lateness`: skipped, and its enrollment moved on.
    SkippedLate,
}

impl SendOutcome {
    pub const ALL: [SendOutcome; 12] = [
        Self::Sent,
        Self::Failed,
        Self::Retried,
        Self::HeldByPause,
        Self::RateLimited,
        Self::HeldByWindow,
        Self::PoolBusy,
        Self::DuplicateSuppressed,
        Self::Released,
        Self::Unknown,
        Self::HeldWithoutRedis,
        Self::SkippedLate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Retried => "retried",
            Self::HeldByPause => "held_by_pause",
            Self::RateLimited => "rate_limited",
            Self::HeldByWindow => "held_by_window",
            Self::PoolBusy => "pool_busy",
            Self::DuplicateSuppressed => "duplicate_suppressed",
            Self::Released => "released",
            Self::Unknown => "unknown",
            Self::HeldWithoutRedis => "held_without_redis",
            Self::SkippedLate => "skipped_late",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabel {
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    /// The route template (`/v1/sequences/{id}`), or `unmatched`.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of one running Pulse. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<RouteLabels>,
    events: Family<StatusLabel, Counter>,
    enrollment_outcomes: Family<OutcomeLabel, Counter>,
    enrollments: Family<StatusLabel, Gauge>,
    claimed: Counter,
    published: Counter,
    requeued: Counter,
    not_queued: Family<ReasonLabel, Counter>,
    claim_duration: Histogram,
    publish_confirm: Histogram,
    stale: Family<StateLabel, Counter>,
    backlog: Family<StateLabel, Gauge>,
    backlog_age: Gauge<f64, AtomicU64>,
    held: Gauge,
    unknown_outstanding: Gauge,
    paused_sends: Counter,
    consumed: Counter,
    sends: Family<OutcomeLabel, Counter>,
    smtp_duration: Histogram,
    claim_conflicts: Counter,
    dead_lettered: Counter,
    queue_messages: Family<QueueLabel, Gauge>,
    reconnects: Family<PartLabel, Counter>,
    ready: Family<PartLabel, Gauge>,
    resident_memory: Gauge,
    inbound: Family<KindLabel, Counter>,
    guardrail_trips: Family<RuleLabel, Counter>,
    webhooks_disabled: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("pulse");
        let http_requests = Family::<HttpLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status code",
            http_requests.clone(),
        );
        let http_duration: Histograms<RouteLabels> = Family::new_with_constructor(latency);
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by method and route template",
            Unit::Seconds,
            http_duration.clone(),
        );
        let events = Family::<StatusLabel, Counter>::default();
        r.register(
            "ingest_events",
            "Trigger events accepted: processed, or duplicate_event (an event id seen before)",
            events.clone(),
        );
        let enrollment_outcomes = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "ingest_enrollments",
            "What trigger events did per matching sequence: created, already_active \
             (deduplicated), ended_not_reenrolled, sequence_paused",
            enrollment_outcomes.clone(),
        );
        let enrollments = Family::<StatusLabel, Gauge>::default();
        r.register(
            "enrollments",
            "Enrollments by status, read from PostgreSQL on scrape (scheduler role)",
            enrollments.clone(),
        );
        let claimed = Counter::default();
        r.register(
            "scheduler_steps_claimed",
            "Due step runs claimed by the scheduler",
            claimed.clone(),
        );
        let published = Counter::default();
        r.register(
            "scheduler_steps_published",
            "Step runs published to RabbitMQ and confirmed by the broker",
            published.clone(),
        );
        let requeued = Counter::default();
        r.register(
            "scheduler_steps_requeued",
            "Claimed step runs put back to SCHEDULED because the broker did not confirm them",
            requeued.clone(),
        );
        let not_queued = Family::<ReasonLabel, Counter>::default();
        r.register(
            "scheduler_steps_not_queued",
            "Claimed step runs not published: expired (an end date passed), unrenderable, \
             enrollment_ended, outside_window (due again at the window's next opening), \
             step_deleted",
            not_queued.clone(),
        );
        let claim_duration = latency();
        r.register_with_unit(
            "scheduler_claim_duration",
            "Time to claim, render and commit one batch of due step runs",
            Unit::Seconds,
            claim_duration.clone(),
        );
        let publish_confirm = latency();
        r.register_with_unit(
            "scheduler_publish_confirm_duration",
            "Time from publishing a batch to the broker's last confirm",
            Unit::Seconds,
            publish_confirm.clone(),
        );
        let stale = Family::<StateLabel, Counter>::default();
        r.register(
            "sweep_stale",
            "Stale work found by the sweep: unknown (a stale claim that was on the wire), \
             given_back (an earlier version's unmarked claim, sent again) or requeued (a QUEUED run \
             whose message was lost)",
            stale.clone(),
        );
        let backlog = Family::<StateLabel, Gauge>::default();
        r.register(
            "backlog_steps",
            "Due but not sent step runs of active sequences, by state (scheduled: not yet \
             published; queued: published, not yet handled), read on scrape",
            backlog.clone(),
        );
        let backlog_age = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "backlog_oldest_age",
            "How long the oldest due, unsent step run of an active sequence has been due",
            Unit::Seconds,
            backlog_age.clone(),
        );
        let held = Gauge::default();
        r.register(
            "held_steps",
            "Due step runs of paused sequences, held for the resume",
            held.clone(),
        );
        let unknown_outstanding = Gauge::default();
        r.register(
            "unknown_sends_outstanding",
            "Sends whose outcome is unknown and that no operator has settled yet, read on scrape",
            unknown_outstanding.clone(),
        );
        let paused_sends = Counter::default();
        r.register(
            "paused_sequence_sends",
            "Sends recorded for a sequence while it was paused, after its pause settled, ever \
             (kept in PostgreSQL, read on scrape by the scheduler role); must stay zero",
            paused_sends.clone(),
        );
        let inbound = Family::<KindLabel, Counter>::default();
        r.register(
            "inbound_messages",
            "Messages recorded by the inbound role and reported through the API, by kind: reply, \
             auto_reply, bounce, soft_bounce, complaint, unsubscribe, other",
            inbound.clone(),
        );
        let guardrail_trips = Family::<RuleLabel, Counter>::default();
        r.register(
            "guardrail_trips",
            "Sequences a guardrail paused, by rule (failures, repeats, overspeed)",
            guardrail_trips.clone(),
        );
        let webhooks_disabled = Counter::default();
        r.register(
            "webhook_endpoints_disabled",
            "Webhook endpoints disabled after failing for a day",
            webhooks_disabled.clone(),
        );
        let consumed = Counter::default();
        r.register(
            "sender_messages_consumed",
            "Due-send messages delivered to this sender",
            consumed.clone(),
        );
        let sends = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "sender_sends",
            "What became of each due-send message: sent, failed, retried, held_by_pause, \
             rate_limited, duplicate_suppressed, released, unknown, held_without_redis, skipped_late",
            sends.clone(),
        );
        let smtp_duration = latency();
        r.register_with_unit(
            "smtp_send_duration",
            "Time for the relay to answer one message (any answer)",
            Unit::Seconds,
            smtp_duration.clone(),
        );
        let claim_conflicts = Counter::default();
        r.register(
            "ledger_claim_conflicts",
            "Ledger claims refused because another worker holds the key or the run was no \
             longer queued",
            claim_conflicts.clone(),
        );
        let dead_lettered = Counter::default();
        r.register(
            "sender_dead_lettered",
            "Messages moved to the dead-letter queue",
            dead_lettered.clone(),
        );
        let queue_messages = Family::<QueueLabel, Gauge>::default();
        r.register(
            "queue_messages",
            "Messages ready in a RabbitMQ queue, as last seen by the scheduler",
            queue_messages.clone(),
        );
        let reconnects = Family::<PartLabel, Counter>::default();
        r.register(
            "reconnects",
            "Times a RabbitMQ session failed and was started again",
            reconnects.clone(),
        );
        let ready = Family::<PartLabel, Gauge>::default();
        r.register(
            "ready",
            "1 when a dependency or session is reachable, else 0 (the checks of /readyz)",
            ready.clone(),
        );
        let resident_memory = Gauge::default();
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of this process",
            Unit::Bytes,
            resident_memory.clone(),
        );
        let m = Metrics(Arc::new(Inner {
            registry: r,
            http_requests,
            http_duration,
            events,
            enrollment_outcomes,
            enrollments,
            claimed,
            published,
            requeued,
            not_queued,
            claim_duration,
            publish_confirm,
            stale,
            backlog,
            backlog_age,
            held,
            paused_sends,
            unknown_outstanding,
            consumed,
            sends,
            smtp_duration,
            claim_conflicts,
            dead_lettered,
            queue_messages,
            reconnects,
            ready,
            resident_memory,
            inbound,
            guardrail_trips,
            webhooks_disabled,
        }));
        // Every closed label set starts at zero, so a panel or a rate over it shows 0 before
        // the first event instead of "No data".
        for o in SendOutcome::ALL {
            m.0.sends
                .get_or_create(&OutcomeLabel {
                    outcome: o.as_str(),
                })
                .inc_by(0);
        }
        for kind in crate::feedback::Kind::ALL {
            m.0.inbound
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .inc_by(0);
        }
        for rule in crate::guardrails::RULES {
            m.0.guardrail_trips
                .get_or_create(&RuleLabel { rule })
                .inc_by(0);
        }
        for status in ["processed", "duplicate_event"] {
            m.0.events.get_or_create(&StatusLabel { status }).inc_by(0);
        }
        for state in ["unknown", "given_back", "requeued"] {
            m.0.stale.get_or_create(&StateLabel { state }).inc_by(0);
        }
        for reason in [
            "expired",
            "unrenderable",
            "enrollment_ended",
            "outside_window",
            "step_deleted",
        ] {
            m.0.not_queued
                .get_or_create(&ReasonLabel { reason })
                .inc_by(0);
        }
        m
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.0.resident_memory.set(rss);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.0.registry);
        out
    }

    pub fn http_request(&self, method: &str, route: Option<&str>, status: u16, secs: f64) {
        let method = http_method(method);
        let route = route.unwrap_or("unmatched").to_owned();
        self.0
            .http_duration
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(secs);
        self.0
            .http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
    }

    /// A message came back (`feedback::Kind::as_str`).
    pub fn guardrail_tripped(&self, rule: &'static str) {
        self.0
            .guardrail_trips
            .get_or_create(&RuleLabel { rule })
            .inc();
    }

    pub fn inbound(&self, kind: &'static str) {
        self.0.inbound.get_or_create(&KindLabel { kind }).inc();
    }

    /// An event was processed (`duplicate` when its id had been seen before).
    pub fn event(&self, duplicate: bool) {
        let status = if duplicate {
            "duplicate_event"
        } else {
            "processed"
        };
        self.0.events.get_or_create(&StatusLabel { status }).inc();
    }

    /// What an event did for one sequence (`crate::model::outcome`).
    pub fn enrollment_outcome(&self, outcome: &str) {
        use crate::model::outcome as o;
        let outcome = [
            o::CREATED,
            o::ALREADY_ACTIVE,
            o::ENDED_NOT_REENROLLED,
            o::SEQUENCE_PAUSED,
        ]
        .into_iter()
        .find(|known| *known == outcome)
        .unwrap_or("other");
        self.0
            .enrollment_outcomes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn claimed(&self, n: usize, secs: f64) {
        self.0.claimed.inc_by(n as u64);
        self.0.claim_duration.observe(secs);
    }

    /// `reason`: `expired`, `unrenderable` or `enrollment_ended`.
    pub fn not_queued(&self, reason: &'static str, n: usize) {
        if n > 0 {
            self.0
                .not_queued
                .get_or_create(&ReasonLabel { reason })
                .inc_by(n as u64);
        }
    }

    pub fn published(&self, n: usize, confirm_secs: f64) {
        self.0.published.inc_by(n as u64);
        self.0.publish_confirm.observe(confirm_secs);
    }

    pub fn requeued(&self, n: u64) {
        self.0.requeued.inc_by(n);
    }

    pub fn swept(&self, swept: &crate::ledger::Swept) {
        for (state, n) in [
            ("unknown", swept.unknown),
            ("given_back", swept.given_back),
            ("requeued", swept.requeued),
        ] {
            self.0.stale.get_or_create(&StateLabel { state }).inc_by(n);
        }
    }

    /// Enrollments by status, as just counted.
    pub fn set_enrollments(&self, counts: &[(crate::state::EnrollmentStatus, i64)]) {
        for status in crate::state::EnrollmentStatus::ALL {
            let n = counts
                .iter()
                .find(|(k, _)| k == status)
                .map_or(0, |(_, n)| *n);
            self.0
                .enrollments
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(n);
        }
    }

    pub fn set_backlog(&self, scheduled: i64, queued: i64, oldest_age_secs: f64, held: i64) {
        for (state, n) in [("scheduled", scheduled), ("queued", queued)] {
            self.0.backlog.get_or_create(&StateLabel { state }).set(n);
        }
        self.0.backlog_age.set(oldest_age_secs);
        self.0.held.set(held);
    }

    pub fn set_unknown_outstanding(&self, n: i64) {
        self.0.unknown_outstanding.set(n);
    }

    /// Brings the violations counter up to `total`, the number PostgreSQL keeps (it only grows).
    pub fn observe_paused_sends(&self, total: i64) {
        let total = u64::try_from(total).unwrap_or(0);
        let seen = self.0.paused_sends.get();
        if total > seen {
            self.0.paused_sends.inc_by(total - seen);
        }
    }

    pub fn consumed(&self) {
        self.0.consumed.inc();
    }

    pub fn send(&self, outcome: SendOutcome) {
        self.0
            .sends
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn smtp_answered(&self, secs: f64) {
        self.0.smtp_duration.observe(secs);
    }

    pub fn webhook_disabled(&self) {
        self.0.webhooks_disabled.inc();
    }

    pub fn claim_conflict(&self) {
        self.0.claim_conflicts.inc();
    }

    pub fn dead_lettered(&self) {
        self.0.dead_lettered.inc();
    }

    pub fn set_queue_messages(&self, queue: &str, n: u32) {
        self.0
            .queue_messages
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .set(i64::from(n));
    }

    pub fn reconnect(&self, part: &'static str) {
        self.0.reconnects.get_or_create(&PartLabel { part }).inc();
    }

    pub fn set_ready(&self, part: &'static str, ready: bool) {
        self.0
            .ready
            .get_or_create(&PartLabel { part })
            .set(i64::from(ready));
    }
}

fn http_method(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// This process's resident set size, from `/proc/self/statm` (Linux, 4 KiB pages); `None`
/// elsewhere.
fn resident_memory_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.http_request("GET", Some("/v1/sequences/{id}"), 200, 0.01);
        m.send(SendOutcome::Sent);
        let text = m.render();
        assert!(text.contains("pulse_sender_sends_total{outcome=\"sent\"} 1"));
        assert!(text.contains("pulse_sender_sends_total{outcome=\"unknown\"} 0"));
        assert!(text.contains("# TYPE pulse_smtp_send_duration_seconds histogram"));
        assert!(text.contains(
            "pulse_http_requests_total{method=\"GET\",route=\"/v1/sequences/{id}\",status=\"200\"} 1"
        ));
        assert!(text.contains("pulse_process_resident_memory_bytes "));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn names_lists_exactly_the_families_rendered() {
        let m = Metrics::new();
        m.http_request("GET", None, 200, 0.1);
        m.event(false);
        m.enrollment_outcome("created");
        m.set_enrollments(&[]);
        m.claimed(1, 0.1);
        m.not_queued("expired", 1);
        m.published(1, 0.1);
        m.requeued(1);
        m.swept(&crate::ledger::Swept {
            unknown: 1,
            given_back: 1,
            requeued: 1,
        });
        m.set_backlog(1, 1, 1.0, 1);
        m.observe_paused_sends(0);
        m.set_unknown_outstanding(0);
        m.consumed();
        m.send(SendOutcome::Sent);
        m.smtp_answered(0.1);
        m.claim_conflict();
        m.dead_lettered();
        m.set_queue_messages("q", 1);
        m.reconnect("sender");
        m.set_ready("postgres", true);
        m.inbound("reply");
        let mut rendered: Vec<&str> = Vec::new();
        let text = m.render();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                rendered.extend(rest.split(' ').next());
            }
        }
        rendered.sort_unstable();
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        assert_eq!(rendered, names);
    }

    #[test]
    fn unknown_values_collapse_into_one_label() {
        let m = Metrics::new();
        m.http_request("BREW", None, 404, 0.0);
        m.enrollment_outcome("something new");
        let text = m.render();
        assert!(text.contains("method=\"other\",route=\"unmatched\",status=\"404\""));
        assert!(text.contains("pulse_ingest_enrollments_total{outcome=\"other\"} 1"));
    }
}
