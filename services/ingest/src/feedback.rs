//! Feedback events on `POST /v1/events`: `replied`, `bounced`, `complained`, `unsubscribed`,
//! what a CRM, a shared inbox or a provider saw that Pulse could not. Each is recorded and
//! processed like a message the inbound role reads (`pulse_shared::feedback`), so a reported
//! reply ends the same enrollments and a reported bounce suppresses the same way. An event id is
//! processed once per workspace (a repeat is answered `duplicate_event` with the original
//! outcome); processing is idempotent, so a retry after a failure changes nothing twice. It
//! never upserts the lead: a report about an address Pulse does not know is only recorded.

use pulse_shared::{
    domain::validate,
    enroll::FieldError,
    feedback::{self, Kind, Report},
    http::ApiError,
    model::{EventResult, EventType, TriggerEvent},
    verp,
};
use serde_json::json;
use uuid::Uuid;

use crate::IngestState;

/// The event, checked: its kind, the lead's address and the send it names.
pub(crate) struct Valid {
    id: String,
    kind: Kind,
    email: String,
    hash: Option<String>,
    reason: Option<String>,
}

/// Checks a feedback event (`at` names it in errors).
pub(crate) fn parse(e: &TriggerEvent, at: &str) -> Result<Valid, FieldError> {
    let id = crate::event_id(e, at)?;
    let kind = match e.kind {
        EventType::Replied => Kind::Reply,
        EventType::Bounced => Kind::Bounce,
        EventType::Complained => Kind::Complaint,
        EventType::Unsubscribed => Kind::Unsubscribe,
        other => {
            return Err(FieldError::new(
                format!("{at}.type"),
                format!("{other:?} is a trigger, not feedback"),
            ));
        }
    };
    for (present, name) in [
        (e.tag.is_some(), "tag"),
        (e.list.is_some(), "list"),
        (e.score.is_some(), "score"),
    ] {
        if present {
            return Err(FieldError::new(
                format!("{at}.{name}"),
                format!("{name} does not belong to a {:?} event", e.kind),
            ));
        }
    }
    let email = validate::email(&e.lead.email)
        .map_err(|m| FieldError::new(format!("{at}.lead.email"), m))?;
    let hash = match e.message_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(id) => Some(
            verp::message_hash(id)
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| {
                    FieldError::new(
                        format!("{at}.message_id"),
                        format!("{id:?} is not a Message-ID Pulse sent (<pulse.HASH@domain>)"),
                    )
                })?,
        ),
    };
    let reason = match e.reason.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) if r.len() > 1000 => {
            return Err(FieldError::new(
                format!("{at}.reason"),
                "must be at most 1000 characters",
            ));
        }
        Some(r) => Some(r.to_owned()),
    };
    Ok(Valid {
        id,
        kind,
        email,
        hash,
        reason,
    })
}

/// Records and processes one checked feedback event for `workspace`.
pub(crate) async fn report(
    state: &IngestState,
    workspace: Uuid,
    v: Valid,
) -> Result<EventResult, ApiError> {
    let seen: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT result FROM processed_events WHERE workspace_id = $1 AND event_id = $2",
    )
    .bind(workspace)
    .bind(&v.id)
    .fetch_optional(&state.db)
    .await?;
    if let Some(seen) = seen {
        let mut original: EventResult = serde_json::from_value(seen)
            .map_err(|e| ApiError::Internal(format!("a stored event result: {e}").into()))?;
        original.status = "duplicate_event".into();
        return Ok(original);
    }
    let detail = json!({"event_id": v.id, "reason": v.reason});
    let report = Report {
        source: "api",
        kind: v.kind,
        mail_from: None,
        rcpt_to: Vec::new(),
        raw: None,
        payload: detail.to_string().into_bytes(),
        workspace: Some(workspace),
        hashes: v.hash.into_iter().collect(),
        address: Some(v.email),
        detail,
        matched: None,
    };
    let (message, matched, done) =
        feedback::record_and_process(&state.db, &report, state.soft_bounce_limit).await?;
    state.metrics.inbound(v.kind.as_str());
    let outcome = done.map(|p| p.outcome);
    let result = EventResult {
        event_id: v.id.clone(),
        status: "processed".into(),
        lead_id: matched.lead,
        enrollments: Vec::new(),
        error: None,
        outcome,
        inbound_message: Some(message),
    };
    let stored = serde_json::to_value(&result)
        .map_err(|e| ApiError::Internal(format!("an event result: {e}").into()))?;
    sqlx::query(
        "INSERT INTO processed_events (workspace_id, event_id, result) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(workspace)
    .bind(&v.id)
    .bind(stored)
    .execute(&state.db)
    .await?;
    Ok(result)
}
