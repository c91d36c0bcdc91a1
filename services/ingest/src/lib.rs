//! The ingest role: `POST /v1/events` turns trigger events (tag applied, list added, lead score
//! changed) into enrollments.
//!
//! Rules it owns: an event id is processed once per workspace (a repeat gets the original
//! outcome back); the lead is upserted and the event applied to it; the lead is enrolled in every
//! ACTIVE sequence whose trigger matches, at most one ACTIVE enrollment per (sequence, lead);
//! PAUSED sequences enroll nobody, and an ended enrollment is not restarted by a trigger. A batch
//! is validated whole before anything is written; each event then commits on its own.
//! It never sends or schedules beyond an enrollment's first step.

use axum::{Json, Router, extract::FromRef, extract::State, routing::post};
use chrono::Utc;
use pulse_shared::{
    db::StoreError,
    enroll::{self, FieldError, ValidLead},
    http::{ApiError, ApiJson, ApiResult, Auth},
    model::{
        EnrollmentOutcome, EventBatch, EventBatchResult, EventResult, EventType, TriggerEvent,
        outcome, sequence_status,
    },
};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// Most events accepted in one batch.
pub const MAX_BATCH: usize = 1000;

#[derive(Clone)]
pub struct IngestState {
    pub db: PgPool,
}

impl FromRef<IngestState> for PgPool {
    fn from_ref(s: &IngestState) -> PgPool {
        s.db.clone()
    }
}

/// The ingest routes, ready to merge into a server.
pub fn router(db: PgPool) -> Router {
    Router::new()
        .route("/v1/events", post(ingest_events))
        .with_state(IngestState { db })
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(ingest_events))]
pub struct IngestApi;

/// Ingest a batch of trigger events.
///
/// Each event upserts its lead and enrolls it in every ACTIVE sequence whose trigger matches.
/// The response says, per event and sequence, whether an enrollment was created or why not.
#[utoipa::path(
    post, path = "/v1/events", tag = "ingest",
    request_body = EventBatch,
    responses(
        (status = 200, description = "Outcome per event", body = EventBatchResult),
        (status = 400, description = "Malformed JSON", body = pulse_shared::http::ErrorBody),
        (status = 422, description = "An event is invalid; nothing was written", body = pulse_shared::http::ErrorBody),
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
    let valid = batch
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| ValidEvent::parse(e, &format!("events[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(valid.len());
    for event in &valid {
        results.push(process(&state.db, auth.workspace, event).await?);
    }
    Ok(Json(EventBatchResult { results }))
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
    fn parse(e: &TriggerEvent, at: &str) -> Result<Self, FieldError> {
        let id = e.id.trim();
        if id.is_empty() || id.len() > 200 {
            return Err(FieldError::new(
                format!("{at}.id"),
                "must be 1 to 200 characters",
            ));
        }
        let lead = ValidLead::parse(&e.lead, &format!("{at}.lead"))?;
        let text = |v: &Option<String>, name: &str| -> Result<String, FieldError> {
            match v.as_deref().map(str::trim) {
                Some(t) if !t.is_empty() && t.len() <= 200 => Ok(t.to_owned()),
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
            };
        Ok(ValidEvent {
            id: id.to_owned(),
            lead,
            change,
        })
    }
}

async fn process(
    db: &PgPool,
    workspace: Uuid,
    event: &ValidEvent,
) -> Result<EventResult, StoreError> {
    let mut tx = db.begin().await?;
    // Claim the event id; a concurrent duplicate waits here for this transaction.
    let fresh = sqlx::query(
        "INSERT INTO processed_events (workspace_id, event_id, result) VALUES ($1, $2, 'null')
         ON CONFLICT DO NOTHING",
    )
    .bind(workspace)
    .bind(&event.id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !fresh {
        let stored: serde_json::Value = sqlx::query_scalar(
            "SELECT result FROM processed_events WHERE workspace_id = $1 AND event_id = $2",
        )
        .bind(workspace)
        .bind(&event.id)
        .fetch_one(&mut *tx)
        .await?;
        let mut original: EventResult = serde_json::from_value(stored)
            .map_err(|e| StoreError::Corrupt(format!("stored event result: {e}")))?;
        original.status = "duplicate_event".into();
        return Ok(original);
    }

    let lead = enroll::upsert_lead(&mut tx, workspace, &event.lead).await?;
    apply(&mut tx, lead, &event.change).await?;
    let now = Utc::now();
    let mut enrollments = Vec::new();
    for (sequence, status) in matching_sequences(&mut tx, workspace, &event.change).await? {
        if status == sequence_status::PAUSED {
            enrollments.push(EnrollmentOutcome {
                sequence_id: sequence,
                enrollment_id: None,
                outcome: outcome::SEQUENCE_PAUSED.into(),
            });
            continue;
        }
        let done = enroll::enroll(&mut tx, workspace, sequence, lead, "trigger", now).await?;
        enrollments.push(EnrollmentOutcome {
            sequence_id: sequence,
            enrollment_id: done.enrollment_id,
            outcome: done.outcome.into(),
        });
    }
    let result = EventResult {
        event_id: event.id.clone(),
        status: "processed".into(),
        lead_id: lead,
        enrollments,
    };
    let stored = serde_json::to_value(&result)
        .map_err(|e| StoreError::Corrupt(format!("encoding event result: {e}")))?;
    sqlx::query(
        "UPDATE processed_events SET result = $3 WHERE workspace_id = $1 AND event_id = $2",
    )
    .bind(workspace)
    .bind(&event.id)
    .bind(stored)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(result)
}

/// Records the event on the lead: the tag or list is added once; the score is replaced.
async fn apply(conn: &mut PgConnection, lead: Uuid, change: &Change) -> Result<(), StoreError> {
    let query = match change {
        Change::Tag(tag) => sqlx::query(
            "UPDATE leads SET tags = array_append(tags, $2), updated_at = now()
             WHERE id = $1 AND NOT ($2 = ANY(tags))",
        )
        .bind(lead)
        .bind(tag),
        Change::List(list) => sqlx::query(
            "UPDATE leads SET lists = array_append(lists, $2), updated_at = now()
             WHERE id = $1 AND NOT ($2 = ANY(lists))",
        )
        .bind(lead)
        .bind(list),
        Change::Score(score) => {
            sqlx::query("UPDATE leads SET score = $2, updated_at = now() WHERE id = $1")
                .bind(lead)
                .bind(score)
        }
    };
    query.execute(conn).await?;
    Ok(())
}

/// ACTIVE and PAUSED sequences with a trigger that matches, locked `FOR SHARE` so that a pause
/// committing meanwhile waits for this enrollment (and one that committed first is seen), in a
/// stable order so concurrent events take locks in the same order.
async fn matching_sequences(
    conn: &mut PgConnection,
    workspace: Uuid,
    change: &Change,
) -> Result<Vec<(Uuid, String)>, StoreError> {
    let (kind, tag, list, score) = match change {
        Change::Tag(t) => ("tag_applied", Some(t.as_str()), None, None),
        Change::List(l) => ("list_added", None, Some(l.as_str()), None),
        Change::Score(s) => ("lead_score", None, None, Some(*s)),
    };
    let rows = sqlx::query(
        "SELECT s.id, s.status FROM sequences s
         WHERE s.workspace_id = $1 AND s.status IN ('ACTIVE', 'PAUSED')
           AND s.id IN (SELECT t.sequence_id FROM triggers t
                        WHERE t.workspace_id = $1 AND t.kind = $2
                          AND (t.tag = $3 OR t.list = $4 OR t.min_score <= $5))
         ORDER BY s.id
         FOR SHARE OF s",
    )
    .bind(workspace)
    .bind(kind)
    .bind(tag)
    .bind(list)
    .bind(score)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get("id"), r.get("status")))
        .collect())
}
