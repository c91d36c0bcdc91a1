//! `GET /v1/sequences/{id}/activity`: how a sequence's sending went over time, its enrollments
//! by status and how far its leads got.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Which stretch of time the activity covers, and so how wide each bucket is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ActivityRange {
    /// The last hour, by minute.
    #[serde(rename = "1h")]
    Hour,
    /// The last 24 hours, by hour.
    #[default]
    #[serde(rename = "24h")]
    Day,
    /// The last 7 days, by 6 hours.
    #[serde(rename = "7d")]
    Week,
}

impl ActivityRange {
    /// (the whole range, one bucket), in seconds.
    pub fn seconds(self) -> (i64, i64) {
        match self {
            Self::Hour => (3_600, 60),
            Self::Day => (86_400, 3_600),
            Self::Week => (7 * 86_400, 6 * 3_600),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Week => "7d",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SequenceActivity {
    pub sequence_id: Uuid,
    pub range: ActivityRange,
    /// How wide each bucket is.
    pub bucket_seconds: i64,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Every bucket of the range, oldest first (empty ones included).
    pub buckets: Vec<ActivityBucket>,
    /// Enrollments by status, every status listed.
    pub enrollments: Vec<StatusCount>,
    /// How many enrollments were sent each step, live steps in order, then deleted ones.
    pub funnel: Vec<FunnelStep>,
}

/// The sends claimed in one bucket, by outcome, and the steps held by a pause that fell due in
/// it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ActivityBucket {
    pub start: DateTime<Utc>,
    /// Sent (including those a bounce or complaint came back for later).
    pub sent: i64,
    pub failed: i64,
    pub unknown: i64,
    /// Steps of the paused sequence that fell due in this bucket and wait for the resume.
    pub held: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FunnelStep {
    pub step_id: Uuid,
    /// Its position; `null` for a deleted step.
    pub position: Option<i32>,
    pub subject: String,
    /// Enrollments this step was sent to.
    pub leads: i64,
}
