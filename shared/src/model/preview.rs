//! `POST /v1/sequences/{id}/edit-preview`: what an edit would do to the enrollments in flight.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Sequence;

/// How many items each list of an edit preview shows; its `count` is always exact.
pub const PREVIEW_ITEMS: i64 = 100;

/// What an edit would do, made in a transaction that is rolled back: nothing changes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EditPreview {
    pub sequence_id: Uuid,
    pub as_of: DateTime<Utc>,
    /// The version the edit applies to (send it back as `version` with the `PATCH`, so the
    /// edit is refused if the sequence changed since this preview).
    pub version: i32,
    /// The sequence as it would be after the edit.
    pub sequence: Sequence,
    /// What the edit would answer with (besides waiting for in-flight sends of deleted steps).
    pub warnings: Vec<String>,
    /// Steps whose subject, body, HTML or threading the edit changes, by their new position.
    pub changed_steps: Vec<i32>,
    /// Active enrollments that will still reach a changed step: they get the new content.
    pub new_content: i64,
    /// Sends of a changed or deleted step already in RabbitMQ or being sent: they go out with
    /// the old content.
    pub queued_with_old_content: PreviewRuns,
    /// Waiting steps whose due time moves by a second or more (a timing, window, time zone or
    /// end date changed).
    pub retimed: PreviewRuns,
    /// Waiting steps that would not be sent: of a deleted step (the enrollment moves on to the
    /// step that now follows), or past an end date (the enrollment ends).
    pub skipped: PreviewRuns,
    /// Enrollments that would end, with why.
    pub ended: PreviewEnded,
}

/// One step run an edit preview names.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct PreviewRun {
    pub step_run_id: Uuid,
    pub enrollment_id: Uuid,
    pub lead_email: String,
    pub step_id: Uuid,
    /// The step's position before the edit.
    pub step_position: i32,
    /// When it is due now.
    pub due_at: DateTime<Utc>,
    /// When it would be due after the edit (retimed runs only).
    pub new_due_at: Option<DateTime<Utc>>,
    /// Why it would be skipped (skipped runs only).
    pub reason: Option<String>,
}

/// A count and the first [`PREVIEW_ITEMS`] runs, soonest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PreviewRuns {
    pub count: i64,
    pub items: Vec<PreviewRun>,
}

/// An enrollment an edit would end.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct PreviewEnding {
    pub enrollment_id: Uuid,
    pub lead_email: String,
    pub status: String,
    pub reason: Option<String>,
}

/// A count and the first [`PREVIEW_ITEMS`] enrollments.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PreviewEnded {
    pub count: i64,
    pub items: Vec<PreviewEnding>,
}
