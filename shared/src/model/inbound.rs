//! The wire types of what came back (`/v1/inbound`): replies, auto-replies, bounces,
//! complaints and reported opt-outs, as the inbound role and `POST /v1/events` recorded them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// One message or report that came back.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct InboundMessage {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    /// `smtp` (the inbound listener) or `api` (`POST /v1/events`).
    pub source: String,
    /// `reply`, `auto_reply`, `bounce`, `soft_bounce`, `complaint`, `unsubscribe`, `other`.
    pub kind: String,
    /// The envelope sender; absent for the null sender and API reports.
    pub mail_from: Option<String>,
    /// The send it answers, when matched.
    pub idempotency_key: Option<String>,
    pub enrollment_id: Option<Uuid>,
    pub sequence_id: Option<Uuid>,
    pub lead_id: Option<Uuid>,
    /// The address it is about.
    pub address: Option<String>,
    /// Subject, sender, status code, diagnostic, a reply's own words.
    #[schema(value_type = Object)]
    pub detail: Value,
    /// When it was acted on; absent while it waits (at most a few seconds).
    pub processed_at: Option<DateTime<Utc>>,
    /// What it did: `replied; ended 1 enrollment(s)`, `bounce; address suppressed`, …
    pub outcome: Option<String>,
    /// SHA-256 of what was received.
    pub digest: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InboundList {
    pub messages: Vec<InboundMessage>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}
