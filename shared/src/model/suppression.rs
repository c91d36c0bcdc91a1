//! The wire types of the suppression list (`/v1/suppressions`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why an address or domain is suppressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    Unsubscribed,
    Bounced,
    Complained,
    Manual,
    Imported,
}

impl SuppressionReason {
    pub const ALL: [SuppressionReason; 5] = [
        Self::Unsubscribed,
        Self::Bounced,
        Self::Complained,
        Self::Manual,
        Self::Imported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsubscribed => "unsubscribed",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
            Self::Manual => "manual",
            Self::Imported => "imported",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == raw)
    }
}

/// One entry to add: an `email` or a `domain`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionInput {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    /// Default `manual`.
    #[serde(default)]
    pub reason: Option<SuppressionReason>,
}

/// `POST /v1/suppressions`: up to 10,000 entries; adding one that exists changes nothing.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppressions {
    #[schema(min_items = 1, max_items = 10_000)]
    pub entries: Vec<SuppressionInput>,
}

/// What adding suppressions did.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SuppressionsAdded {
    /// Entries new to the list.
    pub added: usize,
    /// Entries that were on it already.
    pub already: usize,
    /// ACTIVE enrollments of the suppressed leads, now CANCELLED.
    pub enrollments_cancelled: usize,
    pub warnings: Vec<String>,
}

/// An address or domain the workspace never mails.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Suppression {
    /// `email` or `domain`.
    pub kind: String,
    pub value: String,
    pub reason: SuppressionReason,
    /// Who or what added it: the API caller, `one-click`, `import`.
    pub source: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SuppressionList {
    pub suppressions: Vec<Suppression>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}
