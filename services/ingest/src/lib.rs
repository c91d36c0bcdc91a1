//! The ingest role: `POST /v1/events` turns trigger events (tag applied, list added, lead score
//! changed) into enrollments.
//!
//! Rules it owns: an event id is processed once per workspace (a repeat gets the original
//! outcome back); the lead is upserted and the event applied to it; the lead is enrolled in every
//! ACTIVE sequence whose trigger matches, at most one ACTIVE enrollment per (sequence, lead);
//! PAUSED sequences enroll nobody (the event's id is not used up for them: resent after the
//! resume, it enrolls), and an ended enrollment is not restarted by a trigger. Each
//! event is validated on its own: an invalid one is answered `rejected` with the field and the
//! reason, and writes nothing (its id is not used up). The valid events of a batch are applied
//! in one transaction (`batch`): all of them commit or none does, and a retried batch is
//! answered from the event ids.
//! It never sends or schedules beyond an enrollment's first step.

mod batch;
mod feedback;

use axum::{Json, Router, extract::FromRef, extract::State, routing::post};
use pulse_shared::{
    domain::validate,
    enroll::{FieldError, ValidLead},
    http::{ApiError, ApiJson, ApiResult, Auth},
    metrics::Metrics,
    model::{EventBatch, EventBatchResult, EventError, EventResult, EventType, TriggerEvent},
};
use sqlx::PgPool;
use tracing::Instrument;

/// Most events accepted in one batch.
pub const MAX_BATCH: usize = 1000;

#[derive(Clone)]
pub struct IngestState {
    pub db: PgPool,
    pub metrics: Metrics,
    /// Transient bounces in a row that suppress an address (`PULSE_SOFT_BOUNCE_LIMIT`).
    pub soft_bounce_limit: i32,
}

impl FromRef<IngestState> for PgPool {
    fn from_ref(s: &IngestState) -> PgPool {
        s.db.clone()
    }
}

/// The ingest routes, ready to merge into a server.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest_events))
        .with_state(state)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(ingest_events))]
pub struct IngestApi;

/// Ingest a batch of trigger events.
///
/// Each event upserts its lead and enrolls it in every ACTIVE sequence whose trigger matches.
/// The response says, per event and sequence, whether an enrollment was created or why not.
/// An invalid event (a bad address, a control character, a field over its limit) is answered
/// `rejected` with the field and the reason; the other events of the batch are applied.
#[utoipa::path(
    post, path = "/v1/events", tag = "ingest",
    request_body = EventBatch,
    responses(
        (status = 200, description = "Outcome per event", body = EventBatchResult),
        (status = 400, description = "Malformed JSON", body = pulse_shared::http::ErrorBody),
        (status = 422, description = "The batch itself is invalid (empty or too large)", body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ingest_events(
    State(state): State<IngestState>,
    auth: Auth,
    ApiJson(batch): ApiJson<EventBatch>,
) -> ApiResult<Json<EventBatchResult>> {
    if batch.events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "at least one event is required",
        ));
    }
    if batch.events.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "events",
            format!(
                "{} events in one batch; the limit is {MAX_BATCH}",
                batch.events.len()
            ),
        ));
    }
    let mut valid = Vec::with_capacity(batch.events.len());
    // Where each valid event's answer goes.
    let mut valid_at = Vec::with_capacity(batch.events.len());
    let mut answers: Vec<Option<EventResult>> = Vec::with_capacity(batch.events.len());
    for (i, e) in batch.events.iter().enumerate() {
        let at = format!("events[{i}]");
        // What came back after a send: recorded and acted on now; it enrolls nobody.
        if e.kind.is_feedback() {
            answers.push(Some(match feedback::parse(e, &at) {
                Ok(v) => feedback::report(&state, auth.workspace, v).await?,
                Err(err) => rejected(e, err),
            }));
            continue;
        }
        match ValidEvent::parse(e, &at, auth.addresses) {
            Ok(v) => {
                valid.push(v);
                valid_at.push(i);
                answers.push(None);
            }
            Err(err) => answers.push(Some(rejected(e, err))),
        }
    }
    // The step runs created here carry this span's trace context to their publish and send.
    let span = tracing::info_span!("enroll", events = valid.len());
    let mut processed = loop {
        if valid.is_empty() {
            break Vec::new();
        }
        match batch::process(&state.db, auth.workspace, &valid)
            .instrument(span.clone())
            .await
        {
            Ok(done) => break done,
            // Leads that these events would grow past the per-lead bound: their events are
            // rejected (nothing was written) and the rest applied. Each round removes at least
            // one event, so this ends.
            Err(batch::BatchError::Oversize(over)) => {
                let valid_at_len = valid_at.len();
                let mut kept = Vec::with_capacity(valid.len());
                let mut kept_at = Vec::with_capacity(valid.len());
                for (event, i) in valid.into_iter().zip(valid_at) {
                    match over.get(&event.lead.email) {
                        Some(message) => {
                            let field = format!("events[{i}].lead.attributes");
                            answers[i] = Some(rejected(
                                &batch.events[i],
                                FieldError::new(field, message.clone()),
                            ));
                        }
                        None => {
                            kept.push(event);
                            kept_at.push(i);
                        }
                    }
                }
                if kept.len() == valid_at_len {
                    return Err(ApiError::Internal(
                        "an oversize report that names no event's lead".into(),
                    ));
                }
                valid = kept;
                valid_at = kept_at;
            }
            Err(batch::BatchError::Store(e)) => return Err(e.into()),
        }
    }
    .into_iter();
    let mut results = Vec::with_capacity(answers.len());
    for answer in answers {
        let r = match answer {
            Some(r) => r,
            None => processed
                .next()
                .ok_or_else(|| ApiError::Internal("an event result is missing".into()))?,
        };
        match r.status.as_str() {
            "processed" => {
                state.metrics.event(false);
                for e in &r.enrollments {
                    state.metrics.enrollment_outcome(&e.outcome);
                }
            }
            "duplicate_event" => state.metrics.event(true),
            _ => {}
        }
        results.push(r);
    }
    Ok(Json(EventBatchResult { results }))
}

/// The answer to an invalid event.
fn rejected(e: &TriggerEvent, err: FieldError) -> EventResult {
    EventResult {
        event_id: e.id.clone(),
        status: "rejected".into(),
        lead_id: None,
        enrollments: Vec::new(),
        error: Some(EventError {
            status: 422,
            field: err.field,
            message: err.message,
        }),
        outcome: None,
        inbound_message: None,
    }
}

/// What an event does to its lead.
#[derive(Clone, Debug)]
enum Change {
    Tag(String),
    List(String),
    Score(i32),
}

#[derive(Clone, Debug)]
struct ValidEvent {
    id: String,
    lead: ValidLead,
    change: Change,
}

impl ValidEvent {
    fn parse(
        e: &TriggerEvent,
        at: &str,
        addresses: validate::AddressPolicy,
    ) -> Result<Self, FieldError> {
        let id = event_id(e, at)?;
        let lead = ValidLead::parse(&e.lead, &format!("{at}.lead"), addresses)?;
        let text = |v: &Option<String>, name: &str| -> Result<String, FieldError> {
            match v.as_deref().map(str::trim) {
                Some(t) if !t.is_empty() && t.len() <= 200 => validate::no_control(t)
                    .map(|()| t.to_owned())
                    .map_err(|m| FieldError::new(format!("{at}.{name}"), m)),
                _ => Err(FieldError::new(
                    format!("{at}.{name}"),
                    format!("a non-empty {name} of at most 200 characters is required"),
                )),
            }
        };
        let stray = |present: bool, name: &str| {
            if present {
                Err(FieldError::new(
                    format!("{at}.{name}"),
                    format!("{name} does not belong to a {:?} event", e.kind),
                ))
            } else {
                Ok(())
            }
        };
        let change =
            match e.kind {
                EventType::TagApplied => {
                    stray(e.list.is_some(), "list")?;
                    stray(e.score.is_some(), "score")?;
                    Change::Tag(text(&e.tag, "tag")?)
                }
                EventType::ListAdded => {
                    stray(e.tag.is_some(), "tag")?;
                    stray(e.score.is_some(), "score")?;
                    Change::List(text(&e.list, "list")?)
                }
                EventType::LeadScoreChanged => {
                    stray(e.tag.is_some(), "tag")?;
                    stray(e.list.is_some(), "list")?;
                    Change::Score(e.score.ok_or_else(|| {
                        FieldError::new(format!("{at}.score"), "score is required")
                    })?)
                }
                // Answered by `feedback` before this parse is reached.
                EventType::Replied
                | EventType::Bounced
                | EventType::Complained
                | EventType::Unsubscribed => {
                    return Err(FieldError::new(
                        format!("{at}.type"),
                        "a feedback event is not a trigger",
                    ));
                }
            };
        stray(e.message_id.is_some(), "message_id")?;
        stray(e.reason.is_some(), "reason")?;
        Ok(ValidEvent { id, lead, change })
    }
}

/// An event's id, checked: 1 to 200 characters, no control character.
fn event_id(e: &TriggerEvent, at: &str) -> Result<String, FieldError> {
    let id = e.id.trim();
    if id.is_empty() || id.len() > 200 {
        return Err(FieldError::new(
            format!("{at}.id"),
            "must be 1 to 200 characters",
        ));
    }
    validate::no_control(id).map_err(|m| FieldError::new(format!("{at}.id"), m))?;
    Ok(id.to_owned())
}
