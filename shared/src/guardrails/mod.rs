//! Guardrails: a sequence pauses itself when its sending looks like the help page's emergency,
//! "a lead receiving the same email several times, or sends going out faster than configured".
//! Owns each sequence's guardrail settings (`sequences.guardrails`, NULL: the defaults), the
//! checks, and the trip: the same lossless pause an operator makes (PostgreSQL first, then the
//! Redis flag; in-flight sends are held at their gate), recorded in the audit log with actor
//! `guardrail` and the evidence, and counted in `pulse_guardrail_trips_total`. An operator
//! resumes as usual.
//!
//! Three rules, each on by default and turned off with `null`:
//! * `failures` ([`failures`]): more than `max_failed` of the sequence's last `of_last` sends
//!   refused for good; checked by the sender after each failed send.
//! * `repeats` ([`repeats`]): the same step about to go to one lead again within `within` of
//!   a send of it under another enrollment, outside an operator's re-enroll; checked by the
//!   sender before the send, so the repeat itself is held, not sent.
//! * `overspeed` ([`overspeed`]): more sends in a limit's period than `max_percent` % of any
//!   sending limit that applies, counted from the ledger; checked by the scheduler's sweep.
//!
//! A guardrail never sends, never drops a step and never changes a limit.

mod failures;
pub mod overspeed;
pub mod repeats;

pub use failures::after_failure;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{db::StoreError, pause::PauseFlags, state::SequenceStatus};

/// Every rule's name, as the audit log and the metric label give it.
pub const RULES: [&str; 3] = ["failures", "repeats", "overspeed"];

/// A sequence's guardrails. Left out on create: the defaults; a rule left out of a given
/// object: its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Pause when too many recent sends failed for good; `null` turns it off.
    #[serde(default = "default_failures")]
    pub failures: Option<FailureGuard>,
    /// Pause instead of sending a step to a lead again soon after it was sent to that lead
    /// (outside an operator's re-enroll); `null` turns it off.
    #[serde(default = "default_repeats")]
    pub repeats: Option<RepeatGuard>,
    /// Pause when sends outrun a sending limit that applies; `null` turns it off.
    #[serde(default = "default_overspeed")]
    pub overspeed: Option<OverspeedGuard>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            repeats: default_repeats(),
            overspeed: default_overspeed(),
        }
    }
}

/// More than `max_failed` of the last `of_last` sends failed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureGuard {
    /// Below `of_last` (else the guard could never trip, and is refused).
    #[schema(minimum = 0, example = 10)]
    pub max_failed: u32,
    #[schema(minimum = 1, maximum = 1000, example = 20)]
    pub of_last: u32,
}

/// The same step to the same lead twice within `within`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepeatGuard {
    /// An ISO-8601 duration from one minute to 30 days.
    #[schema(example = "PT24H", format = "window")]
    pub within: String,
}

/// More sends in a limit's period than `max_percent` % of the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverspeedGuard {
    #[schema(minimum = 101, maximum = 1000, example = 120)]
    pub max_percent: u32,
}

fn default_failures() -> Option<FailureGuard> {
    Some(FailureGuard {
        max_failed: 10,
        of_last: 20,
    })
}

fn default_repeats() -> Option<RepeatGuard> {
    Some(RepeatGuard {
        within: "PT24H".to_owned(),
    })
}

fn default_overspeed() -> Option<OverspeedGuard> {
    Some(OverspeedGuard { max_percent: 120 })
}

impl Guardrails {
    /// Checks settings as given; the message names the field at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(f) = self.failures {
            if !(1..=1000).contains(&f.of_last) {
                return Err(("guardrails.failures.of_last", "must be 1 to 1000".into()));
            }
            if f.max_failed >= f.of_last {
                return Err((
                    "guardrails.failures.max_failed",
                    "must be below of_last (it would never trip)".into(),
                ));
            }
        }
        if let Some(r) = &self.repeats {
            let d = crate::domain::timing::parse_iso_duration(r.within.trim())
                .map_err(|m| ("guardrails.repeats.within", m))?;
            if d < chrono::Duration::minutes(1) || d > chrono::Duration::days(30) {
                return Err((
                    "guardrails.repeats.within",
                    "give one minute to 30 days".into(),
                ));
            }
        }
        if let Some(o) = self.overspeed
            && !(101..=1000).contains(&o.max_percent)
        {
            return Err((
                "guardrails.overspeed.max_percent",
                "must be 101 to 1000".into(),
            ));
        }
        Ok(())
    }

    /// The settings stored for a sequence (NULL: the defaults).
    pub fn from_stored(stored: Option<serde_json::Value>) -> Result<Self, StoreError> {
        stored
            .map(serde_json::from_value)
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| StoreError::Corrupt(format!("guardrails: {e}")))
    }
}

/// Pauses `sequence` for `rule` if it is still ACTIVE, with the evidence in the audit log.
/// Returns whether this call paused it.
pub(crate) async fn trip(
    db: &PgPool,
    flags: Option<&PauseFlags>,
    sequence: Uuid,
    rule: &'static str,
    evidence: serde_json::Value,
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query("SELECT workspace_id, status FROM sequences WHERE id = $1 FOR UPDATE")
        .bind(sequence)
        .fetch_one(&mut *tx)
        .await?;
    if row.try_get::<SequenceStatus, _>("status")? != SequenceStatus::Active {
        return Ok(false);
    }
    sqlx::query("UPDATE sequences SET status = 'PAUSED', updated_at = now() WHERE id = $1")
        .bind(sequence)
        .execute(&mut *tx)
        .await?;
    crate::audit::record(
        &mut tx,
        row.try_get("workspace_id")?,
        sequence,
        None,
        "guardrail",
        "paused",
        Some(json!({"status": SequenceStatus::Active})),
        Some(json!({"status": SequenceStatus::Paused, "guardrail": rule, "evidence": evidence})),
    )
    .await?;
    tx.commit().await?;
    // PostgreSQL is the truth: a flag that cannot be written is refilled from it, and every
    // send re-checks PostgreSQL at its gate.
    if let Some(flags) = flags
        && let Err(e) = flags.set(sequence, SequenceStatus::Paused).await
    {
        tracing::warn!(%sequence, error = %e, "guardrail pause: the Redis flag was not written");
    }
    tracing::warn!(%sequence, %rule, %evidence, "guardrail tripped; sequence paused");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_stored_and_null_turns_a_rule_off() {
        assert_eq!(
            Guardrails::from_stored(None).unwrap(),
            Guardrails::default()
        );
        // Stored before a rule existed: the rule takes its default.
        let old = Guardrails::from_stored(Some(json!({"failures": null}))).unwrap();
        assert_eq!(old.failures, None);
        assert_eq!(old.repeats, default_repeats());
        assert_eq!(old.overspeed, default_overspeed());
        let bad = Guardrails {
            failures: Some(FailureGuard {
                max_failed: 20,
                of_last: 20,
            }),
            ..Guardrails::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "guardrails.failures.max_failed");
        let bad = Guardrails {
            repeats: Some(RepeatGuard {
                within: "PT10S".into(),
            }),
            ..Guardrails::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "guardrails.repeats.within");
        let bad = Guardrails {
            overspeed: Some(OverspeedGuard { max_percent: 100 }),
            ..Guardrails::default()
        };
        assert_eq!(
            bad.check().unwrap_err().0,
            "guardrails.overspeed.max_percent"
        );
        assert_eq!(Guardrails::default().check(), Ok(()));
    }
}
