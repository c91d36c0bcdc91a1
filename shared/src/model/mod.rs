//! The API's wire types: requests and responses (the state vocabularies they carry are
//! `crate::state`'s).
//! Owns their JSON shape and OpenAPI schema; it never touches a connection.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

mod activity;
mod events;
mod inbound;
mod mailbox;
mod preview;
mod suppression;
pub use activity::{ActivityBucket, ActivityRange, FunnelStep, SequenceActivity, StatusCount};
pub use events::{
    EnrollmentOutcome, EventBatch, EventBatchResult, EventError, EventResult, EventType, LeadInput,
    ManualEnrollment, TriggerEvent, outcome,
};
pub use inbound::{InboundList, InboundMessage};
pub use mailbox::{CreateMailbox, DkimInput, EditMailbox, Mailbox, MailboxList};
pub use preview::{
    EditPreview, PREVIEW_ITEMS, PreviewEnded, PreviewEnding, PreviewRun, PreviewRuns,
};
pub use suppression::{
    AddSuppressions, Suppression, SuppressionInput, SuppressionList, SuppressionReason,
    SuppressionsAdded,
};

pub use crate::{
    domain::{timing::Timing, window::SendWindow},
    guardrails::Guardrails,
    limits::Limit,
    state::{EnrollmentStatus, LedgerState, SequenceStatus, StepRunState},
};

// ---------------------------------------------------------------- sequences

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSequence {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// IANA time zone; defaults to UTC.
    #[serde(default)]
    #[schema(format = "timezone")]
    pub timezone: Option<String>,
    #[schema(min_items = 1, max_items = 50)]
    pub steps: Vec<StepInput>,
    #[serde(default)]
    pub triggers: Vec<TriggerSpec>,
    pub sender: SenderIdentity,
    /// Days and hours sends may go out, in the lead's time zone (else the sequence's).
    #[serde(default)]
    pub send_window: Option<SendWindow>,
    /// No step is sent after this time; enrollments that reach it end.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date: Option<DateTime<Utc>>,
    /// Most sends of this sequence per minute, enforced when sending (also paces a resume).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_sends_per_minute: Option<i32>,
    /// Sending limits of this sequence (`docs/sending-rules.md`); `P1D` counts the day in the
    /// sequence's time zone.
    #[serde(default)]
    #[schema(max_items = 5)]
    pub limits: Vec<Limit>,
    /// When the sequence pauses itself (`docs/sending-rules.md`); left out: the defaults.
    #[serde(default)]
    pub guardrails: Option<Guardrails>,
    /// 0–9, default 5: when sends collide on a limit (a shared mailbox), due steps of a higher
    /// priority are claimed first; a step waiting longer gains a level as it ages.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i32>,
    /// What a reply from a lead ends; default `enrollment`.
    #[serde(default)]
    pub exit_on_reply: Option<ExitOnReply>,
}

/// What a lead's reply to one of a sequence's messages ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitOnReply {
    /// The enrollment the reply answers (`COMPLETED`, `replied`).
    #[default]
    Enrollment,
    /// Every ACTIVE enrollment of the lead, in every sequence of the workspace.
    AllSequences,
    /// Nothing: the reply is only recorded.
    None,
}

impl ExitOnReply {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrollment => "enrollment",
            Self::AllSequences => "all_sequences",
            Self::None => "none",
        }
    }

    /// The stored value; anything unknown reads as the default.
    pub fn from_stored(raw: &str) -> Self {
        match raw {
            "all_sequences" => Self::AllSequences,
            "none" => Self::None,
            _ => Self::Enrollment,
        }
    }
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepInput {
    /// Keep and edit this existing step (edits only; omit for a new step).
    #[serde(default)]
    pub id: Option<Uuid>,
    /// In `steps`, ignored: a step's place is its place in the list (accepted so that steps
    /// read with `GET /v1/sequences/{id}` can be sent back as they are). In
    /// `POST /v1/sequences/{id}/steps`, where to put the new step (past the end: last).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub position: Option<i32>,
    /// Template, e.g. `Hello {{ lead.first_name }}`. May be empty on a threaded step after the
    /// first: it then goes out as `Re: ` and the thread's first subject. At most 998 bytes.
    #[schema(format = "text")]
    pub subject: String,
    /// The text part, a template, e.g. `Hi {{ lead.first_name | default: "there" }}, …`. May be
    /// empty when `html` is given: the text part is then derived from the HTML.
    #[serde(default)]
    #[schema(format = "multiline")]
    pub body: String,
    /// An HTML part, a template whose lead values are HTML-escaped when rendered. With it the
    /// message is `multipart/alternative` (text and HTML).
    #[serde(default)]
    #[schema(format = "html")]
    pub html: Option<String>,
    /// Send this step as a reply in the lead's thread: `In-Reply-To` and `References` name the
    /// enrollment's earlier messages, and an empty subject becomes `Re: <first subject>`.
    #[serde(default)]
    pub thread: bool,
    pub timing: Timing,
    /// This step is not sent after this time; an enrollment that reaches it later ends.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date: Option<DateTime<Utc>>,
    /// The staleness guard, an ISO-8601 duration (e.g. `P2D`): a step that cannot go out within
    /// this time after it first came due (a pause, a limit, a closed window) is skipped with the
    /// reason, and the enrollment moves on to the next step.
    #[serde(default)]
    #[schema(example = "P2D", format = "lateness")]
    pub max_lateness: Option<String>,
}

/// `PATCH /v1/sequences/{id}`: every field is optional; `null` clears a setting. `steps`, when
/// given, is the whole new list in order: steps with an `id` are kept (and edited), steps without
/// one are added. Existing steps left out are deleted only with `delete_missing_steps: true`
/// (else 422 naming them); the answer names each deleted step.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditSequence {
    /// Read-only, accepted so that what `GET /v1/sequences/{id}` answered can be sent back
    /// whole: when given, it must be this sequence's id.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Read-only, as `id`: when given, it must be the sequence's current version, else 409 (it
    /// changed since it was read; read it again). Leave it out to edit whatever the version.
    #[serde(default)]
    pub version: Option<i32>,
    /// Read-only, accepted and ignored (pause and resume change the status).
    #[serde(default)]
    pub status: Option<String>,
    /// Read-only, accepted and ignored.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<DateTime<Utc>>,
    /// Read-only, accepted and ignored.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(format = "timezone")]
    pub timezone: Option<String>,
    #[serde(default)]
    pub sender: Option<SenderIdentity>,
    #[serde(default)]
    #[schema(min_items = 1, max_items = 50)]
    pub steps: Option<Vec<StepInput>>,
    /// Delete the existing steps `steps` leaves out (refused otherwise).
    #[serde(default)]
    pub delete_missing_steps: bool,
    #[serde(default)]
    pub triggers: Option<Vec<TriggerSpec>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SendWindow>)]
    pub send_window: Option<Option<SendWindow>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    pub max_sends_per_minute: Option<Option<i32>>,
    /// The sequence's sending limits, replaced as a whole (`[]` removes them).
    #[serde(default)]
    #[schema(max_items = 5)]
    pub limits: Option<Vec<Limit>>,
    #[serde(default)]
    pub guardrails: Option<Guardrails>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub exit_on_reply: Option<ExitOnReply>,
}

/// `PATCH /v1/sequences/{id}/steps/{step_id}`: the fields of one step to change; those left
/// out stay as they are, and `null` clears `html` or `end_date`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepPatch {
    #[serde(default)]
    #[schema(format = "text")]
    pub subject: Option<String>,
    #[serde(default)]
    #[schema(format = "multiline")]
    pub body: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "html")]
    pub html: Option<Option<String>>,
    #[serde(default)]
    pub thread: Option<bool>,
    #[serde(default)]
    pub timing: Option<Timing>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "lateness")]
    pub max_lateness: Option<Option<String>>,
}

/// `POST /v1/sequences/{id}/steps/order`: every live step's id, once each, in the new order.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepOrder {
    #[schema(min_items = 1)]
    pub step_ids: Vec<Uuid>,
}

/// Tells a field given as `null` (`Some(None)`) from a field left out (`None`).
pub fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A sequence after a control action, with anything the operator should know.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SequenceChange {
    pub sequence: Sequence,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Recorded as the enrollment's end reason.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/sequences/{id}/enrollments/cancel`: either `enrollment_ids` or `all_active: true`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelManyRequest {
    /// These enrollments of the sequence (at most 10,000).
    #[serde(default)]
    pub enrollment_ids: Option<Vec<Uuid>>,
    /// Every enrollment of the sequence that is ACTIVE now (the emergency stop for its leads).
    #[serde(default)]
    pub all_active: Option<bool>,
    /// Recorded as each enrollment's end reason.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelManyResponse {
    /// Enrollments that were ACTIVE and are now CANCELLED.
    pub cancelled: usize,
    /// Named enrollments that had already ended (left as they were).
    pub already_ended: usize,
    /// Named ids that are not enrollments of this sequence.
    pub not_found: usize,
    pub warnings: Vec<String>,
}

/// `POST /v1/sequences/{id}/re-enroll`: either `lead_emails` or `all_not_active: true`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReenrollRequest {
    #[serde(default)]
    pub lead_emails: Option<Vec<String>>,
    #[serde(default)]
    pub all_not_active: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReenrollResult {
    pub lead_email: String,
    pub enrollment_id: Option<Uuid>,
    /// `reenrolled`, `already_active`, `never_enrolled` or `unknown_lead`.
    pub outcome: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReenrollResponse {
    pub reenrolled: usize,
    pub already_active: usize,
    pub never_enrolled: usize,
    pub unknown_lead: usize,
    /// Leads on the suppression list: not re-enrolled.
    pub suppressed: usize,
    pub results: Vec<ReenrollResult>,
}

/// What resuming a paused sequence now would do with one pending step.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ResumeItem {
    pub step_run_id: Uuid,
    pub enrollment_id: Uuid,
    pub lead_email: String,
    pub step_position: i32,
    pub due_at: DateTime<Utc>,
    /// `send` (at `send_at`), `skip` (an end date passes first; the enrollment ends) or `late`
    /// (later than the step's `max_lateness`: skipped, and the enrollment moves on).
    pub outcome: String,
    pub send_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ResumePreview {
    pub sequence_id: Uuid,
    pub as_of: DateTime<Utc>,
    pub sends: usize,
    pub skips: usize,
    /// Steps already in RabbitMQ when the sequence was paused: a sender holds them on arrival
    /// (they appear in `items` once held) or sends them right after a resume.
    pub queued: i64,
    pub items: Vec<ResumeItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: i64,
    pub sequence_id: Uuid,
    pub enrollment_id: Option<Uuid>,
    pub actor: String,
    /// `created`, `edited`, `paused`, `resumed`, `deleted`, `enrollment_cancelled`, `re_enrolled`.
    pub action: String,
    /// The state before the action (any JSON), `null` when there was none.
    #[schema(value_type = Option<Value>)]
    pub before: Option<Value>,
    /// The state after it, `null` when there is none (a delete).
    #[schema(value_type = Option<Value>)]
    pub after: Option<Value>,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub events: Vec<AuditEvent>,
    /// Pass as `before` for the next (older) page; `null` when this is the last.
    pub next: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct SequenceVersion {
    pub version: i32,
    pub actor: String,
    #[schema(value_type = Object)]
    pub snapshot: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<SequenceVersion>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SenderIdentity {
    /// `Name <address>` or a bare address. Either this or `mailbox_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Send from these mailboxes of the workspace (`/v1/mailboxes`): each lead is given one at
    /// enrollment, in turn, and keeps it for all its steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_ids: Option<Vec<Uuid>>,
    /// Where replies go (`Reply-To`), when not to the sender (a mailbox's own `reply_to` wins).
    #[serde(default)]
    #[schema(format = "mailbox")]
    pub reply_to: Option<String>,
}

/// What enrolls a lead automatically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerSpec {
    TagApplied {
        #[schema(format = "label")]
        tag: String,
    },
    ListAdded {
        #[schema(format = "label")]
        list: String,
    },
    /// Fires when a lead's score crosses `min_score`: from below it (or from no score) to it or
    /// above. With `"mode": "level"`, fires on every event whose score is at or above it.
    /// (`lead_score_changed`, the event's name, is accepted too.)
    #[serde(alias = "lead_score_changed")]
    LeadScore {
        min_score: i32,
        #[serde(default, skip_serializing_if = "ScoreMode::is_crossing")]
        mode: ScoreMode,
    },
}

/// How a lead-score trigger reads a score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMode {
    /// The score went from below the minimum (or none) to the minimum or above.
    #[default]
    Crossing,
    /// The score is at or above the minimum.
    Level,
}

impl ScoreMode {
    pub fn is_crossing(&self) -> bool {
        *self == ScoreMode::Crossing
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScoreMode::Crossing => "crossing",
            ScoreMode::Level => "level",
        }
    }

    /// The mode stored in `triggers.score_mode` (anything but `level` is a crossing).
    pub fn from_stored(value: &str) -> Self {
        if value == ScoreMode::Level.as_str() {
            ScoreMode::Level
        } else {
            ScoreMode::Crossing
        }
    }

    /// Whether a score going from `before` to `now` fires a trigger at `min`.
    pub fn fires(self, min: i32, before: Option<i32>, now: i32) -> bool {
        now >= min
            && match self {
                ScoreMode::Level => true,
                ScoreMode::Crossing => before.is_none_or(|b| b < min),
            }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Sequence {
    pub id: Uuid,
    pub name: String,
    pub status: SequenceStatus,
    pub timezone: String,
    pub sender: SenderIdentity,
    pub version: i32,
    pub steps: Vec<Step>,
    pub triggers: Vec<TriggerSpec>,
    pub send_window: Option<SendWindow>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date: Option<DateTime<Utc>>,
    pub max_sends_per_minute: Option<i32>,
    pub limits: Vec<Limit>,
    pub guardrails: Guardrails,
    pub priority: i32,
    pub exit_on_reply: ExitOnReply,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub id: Uuid,
    pub position: i32,
    pub subject: String,
    pub body: String,
    pub html: Option<String>,
    pub thread: bool,
    pub timing: Timing,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date: Option<DateTime<Utc>>,
    pub max_lateness: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SequenceList {
    /// Newest first.
    pub sequences: Vec<Sequence>,
    /// Pass as `after` for the next page; `null` when this is the last.
    pub next: Option<Uuid>,
}

/// How far a sequence has got: its enrollments by status and what it sent today.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct SequenceStats {
    pub sequence_id: Uuid,
    pub status: SequenceStatus,
    /// Enrollments ever made, every generation counted.
    pub enrolled: i64,
    pub active: i64,
    pub completed: i64,
    pub cancelled: i64,
    /// Sends the relay accepted since midnight in the sequence's time zone.
    pub sends_today: i64,
    /// Enrollments a reply ended (`end_reason` `replied`): over `enrolled`, the reply rate.
    pub replied: i64,
    /// Enrollments ended because the lead's address bounced or complained.
    pub bounced: i64,
    pub complained: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SequenceStatsList {
    pub sequences: Vec<SequenceStats>,
}

// ---------------------------------------------------------------- read side

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Enrollment {
    pub id: Uuid,
    pub sequence_id: Uuid,
    pub lead_id: Uuid,
    pub lead_email: String,
    pub status: EnrollmentStatus,
    pub end_reason: Option<String>,
    /// Position of the step the enrollment is on (the last one once it has ended).
    pub current_step: i32,
    pub generation: i32,
    /// The mailbox this enrollment sends from, when its sequence sends from mailboxes.
    pub mailbox_id: Option<Uuid>,
    /// When the next pending step is due, if any.
    pub next_due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Each step this enrollment has reached: who got what, and when.
    #[sqlx(skip)]
    pub steps: Vec<EnrollmentStep>,
}

/// One step of one enrollment.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct EnrollmentStep {
    #[serde(skip)]
    pub enrollment_id: Uuid,
    pub step_id: Uuid,
    pub position: i32,
    pub state: StepRunState,
    pub due_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The sequence version whose content was sent.
    pub sequence_version: Option<i32>,
    /// Why the step was skipped, cancelled, deferred or failed, or, while it is SCHEDULED, why
    /// it waits (a sending limit: which one, until when).
    pub note: Option<String>,
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
    /// `DEFERRED`: a transient failure, tried again when due. `BOUNCED`, `COMPLAINED`: sent,
    /// then a bounce or a complaint came back.
    pub state: LedgerState,
    pub message_id: String,
    pub smtp_code: Option<i32>,
    pub smtp_reply: Option<String>,
    pub attempts: i32,
    /// The sequence version whose content went out.
    pub sequence_version: Option<i32>,
    pub sent_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The sender it went out from (`From`).
    pub from_addr: Option<String>,
    /// The mailbox it went out from, when its sequence sends from mailboxes.
    pub mailbox_id: Option<Uuid>,
    /// When a bounce or complaint came back for it (it is then `BOUNCED` or `COMPLAINED`;
    /// `sent_at` and the relay's reply are kept).
    #[serde(default)]
    pub feedback_at: Option<DateTime<Utc>>,
    /// What came back, naming the inbound message (`GET /v1/inbound/{id}`).
    #[serde(default)]
    pub feedback: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SendList {
    pub sends: Vec<Send>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /v1/sends/{key}/resolve`: how an operator settles an UNKNOWN send.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveSend {
    /// `sent` (the relay's logs show it went out: record it and move the enrollment on) or
    /// `resend` (it did not: send it again under the same key).
    #[schema(pattern = "^(sent|resend)$")]
    pub outcome: String,
    /// Recorded with the resolution (e.g. what the relay's log said).
    #[serde(default)]
    pub note: Option<String>,
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
