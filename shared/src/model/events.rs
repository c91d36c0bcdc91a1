//! The wire types of leads and trigger events: a lead as `POST /v1/events` and a manual
//! enrollment take it, the events, and what each event did.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::present;

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeadInput {
    #[schema(format = "address")]
    pub email: String,
    /// Left out: kept as it is; `null` or empty: cleared. At most 1,024 bytes.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "text")]
    pub first_name: Option<Option<String>>,
    /// Left out: kept as it is; `null` or empty: cleared. At most 1,024 bytes.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "text")]
    pub last_name: Option<Option<String>>,
    /// IANA time zone of the lead. Left out: kept as it is; `null` or empty: cleared (the
    /// sequence's zone applies). A change re-plans the lead's scheduled steps.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "timezone-or-empty")]
    pub timezone: Option<Option<String>>,
    /// Free-form attributes, readable in templates as `lead.attributes.<name>`: at most 100,
    /// each name a line of text, each value at most 4 KiB as JSON, 64 KiB in all.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    TagApplied,
    ListAdded,
    LeadScoreChanged,
    /// The lead answered (seen by a CRM or a shared inbox): like a reply the inbound role reads.
    Replied,
    /// The lead's address bounced for good: it is suppressed.
    Bounced,
    /// The lead reported a message as spam: the address is suppressed.
    Complained,
    /// The lead asked to hear no more: the address is suppressed.
    Unsubscribed,
}

impl EventType {
    /// What comes back after a send, rather than a trigger: it enrolls nobody.
    pub fn is_feedback(self) -> bool {
        matches!(
            self,
            Self::Replied | Self::Bounced | Self::Complained | Self::Unsubscribed
        )
    }
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
    /// For `replied`, `bounced`, `complained`: the Message-ID of the send it answers
    /// (`<pulse.…@…>`); without it a reply ends the lead's enrollments in every sequence whose
    /// `exit_on_reply` is not `none`.
    #[serde(default)]
    pub message_id: Option<String>,
    /// For the feedback types: why, kept with the record (e.g. the bounce's diagnostic).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<TriggerEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventBatchResult {
    pub results: Vec<EventResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventResult {
    pub event_id: String,
    /// `processed`; `duplicate_event` when this id was processed before (the original outcome
    /// is repeated in `enrollments`); or `rejected`: the event is invalid (see `error`),
    /// nothing of it was written and its id is not used up. An id that met a paused sequence
    /// is not used up for that sequence: sent again, it is `processed` again for the
    /// sequences that were paused (and enrolls where they are active now).
    pub status: String,
    /// The lead; `null` for a rejected event.
    pub lead_id: Option<Uuid>,
    pub enrollments: Vec<EnrollmentOutcome>,
    /// Why a `rejected` event was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    /// For a feedback event: what it did (`replied; ended 1 enrollment(s)`, `bounce; address
    /// suppressed`) and the inbound message that records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_message: Option<i64>,
}

/// The field of a rejected event that is wrong, and why (the same as a 422's `error`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventError {
    /// Always 422.
    pub status: u16,
    pub field: String,
    pub message: String,
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
    pub const REENROLLED: &str = "reenrolled";
    pub const NEVER_ENROLLED: &str = "never_enrolled";
    /// The lead's address or domain is on the workspace's suppression list.
    pub const SUPPRESSED: &str = "suppressed";
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualEnrollment {
    pub lead: LeadInput,
}
