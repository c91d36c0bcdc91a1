//! The API's wire types: requests, responses and the status vocabularies stored in PostgreSQL.
//! Owns their JSON shape and OpenAPI schema; it never touches a connection.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

pub use crate::domain::timing::Timing;

/// Sequence lifecycle states.
pub mod sequence_status {
    pub const ACTIVE: &str = "ACTIVE";
    pub const PAUSED: &str = "PAUSED";
    pub const DELETED: &str = "DELETED";
}

/// Enrollment lifecycle states.
pub mod enrollment_status {
    pub const ACTIVE: &str = "ACTIVE";
    pub const COMPLETED: &str = "COMPLETED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const INELIGIBLE: &str = "INELIGIBLE";
    pub const FAILED: &str = "FAILED";
    pub const ALL: [&str; 5] = [ACTIVE, COMPLETED, CANCELLED, INELIGIBLE, FAILED];
}

// ---------------------------------------------------------------- sequences

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSequence {
    pub name: String,
    /// IANA time zone; defaults to UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    pub steps: Vec<StepInput>,
    #[serde(default)]
    pub triggers: Vec<TriggerSpec>,
    pub sender: SenderIdentity,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepInput {
    /// Template, e.g. `Hello {{ lead.first_name }}`.
    pub subject: String,
    /// Template, e.g. `Hi {{ lead.first_name | default: "there" }}, …`.
    pub body: String,
    pub timing: Timing,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SenderIdentity {
    /// `Name <address>` or a bare address.
    pub from: String,
}

/// What enrolls a lead automatically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerSpec {
    TagApplied { tag: String },
    ListAdded { list: String },
    LeadScore { min_score: i32 },
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Sequence {
    pub id: Uuid,
    pub name: String,
    /// `ACTIVE`, `PAUSED` or `DELETED`.
    pub status: String,
    pub timezone: String,
    pub sender: SenderIdentity,
    pub version: i32,
    pub steps: Vec<Step>,
    pub triggers: Vec<TriggerSpec>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Step {
    pub id: Uuid,
    pub position: i32,
    pub subject: String,
    pub body: String,
    pub timing: Timing,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SequenceList {
    pub sequences: Vec<Sequence>,
}

// ---------------------------------------------------------------- leads and events

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeadInput {
    pub email: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    /// IANA time zone of the lead.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Free-form attributes, readable in templates as `lead.attributes.<name>`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Option<Map<String, Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    TagApplied,
    ListAdded,
    LeadScoreChanged,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerEvent {
    /// Caller-chosen id; an id seen before is not processed again.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub lead: LeadInput,
    /// For `tag_applied`.
    #[serde(default)]
    pub tag: Option<String>,
    /// For `list_added`.
    #[serde(default)]
    pub list: Option<String>,
    /// For `lead_score_changed`.
    #[serde(default)]
    pub score: Option<i32>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    pub events: Vec<TriggerEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventBatchResult {
    pub results: Vec<EventResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventResult {
    pub event_id: String,
    /// `processed`, or `duplicate_event` when this id was processed before (the original
    /// outcome is repeated in `enrollments`).
    pub status: String,
    pub lead_id: Uuid,
    pub enrollments: Vec<EnrollmentOutcome>,
}

/// What an event or a manual enrollment did for one sequence.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentOutcome {
    pub sequence_id: Uuid,
    pub enrollment_id: Option<Uuid>,
    /// `created`; `already_active` (deduplicated); `ended_not_reenrolled` (the lead's
    /// enrollment ended, re-enrollment is an explicit action); `sequence_paused` (no new
    /// enrollments while paused).
    pub outcome: String,
}

/// Enrollment outcomes.
pub mod outcome {
    pub const CREATED: &str = "created";
    pub const ALREADY_ACTIVE: &str = "already_active";
    pub const ENDED_NOT_REENROLLED: &str = "ended_not_reenrolled";
    pub const SEQUENCE_PAUSED: &str = "sequence_paused";
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualEnrollment {
    pub lead: LeadInput,
}

// ---------------------------------------------------------------- read side

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Enrollment {
    pub id: Uuid,
    pub sequence_id: Uuid,
    pub lead_id: Uuid,
    pub lead_email: String,
    pub status: String,
    pub end_reason: Option<String>,
    /// Position of the step the enrollment is on (the last one once it has ended).
    pub current_step: i32,
    pub generation: i32,
    /// When the next pending step is due, if any.
    pub next_due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentList {
    pub enrollments: Vec<Enrollment>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<Uuid>,
}

/// One entry of the send ledger: what was attempted or went out, and what the relay said.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Send {
    pub idempotency_key: String,
    pub enrollment_id: Uuid,
    pub sequence_id: Uuid,
    pub lead_email: String,
    pub step_id: Uuid,
    pub step_position: i32,
    pub generation: i32,
    /// `SENDING`, `SENT`, `DEFERRED` (transient failure, will retry), `FAILED`, `UNKNOWN`.
    pub state: String,
    pub message_id: String,
    pub smtp_code: Option<i32>,
    pub smtp_reply: Option<String>,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SendList {
    pub sends: Vec<Send>,
}

/// A message captured by the built-in outbox (no SMTP relay configured).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct OutboxMessage {
    pub id: i64,
    pub message_id: String,
    pub mail_from: String,
    pub rcpt_to: String,
    pub subject: String,
    pub body: String,
    /// The full RFC 5322 message as it would have gone to a relay.
    pub raw: String,
    pub accepted_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OutboxList {
    pub messages: Vec<OutboxMessage>,
}
