//! Guardrails: a sequence pauses itself when its sending looks like the help page's emergency.
//! Owns each sequence's guardrail settings (`sequences.guardrails`, NULL: the defaults), the
//! checks, and the trip: the same lossless pause an operator makes (PostgreSQL first, then the
//! Redis flag; in-flight sends are held at their gate), recorded in the audit log with actor
//! `guardrail` and the evidence, and counted in `pulse_guardrail_trips_total`. An operator
//! resumes as usual.
//!
//! One rule today, `failures`: more than `max_failed` of the sequence's last `of_last` sends
//! refused for good (a 5xx, or a transient failure until attempts ran out); by default more
//! than 10 of the last 20. It is checked by the sender after each failed send, never on the
//! path of a send that went out.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{db::StoreError, pause::PauseFlags, state::SequenceStatus};

/// Every rule's name, as the audit log and the metric label give it.
pub const RULES: [&str; 1] = ["failures"];

/// A sequence's guardrails. Left out on create: the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Pause when too many recent sends failed for good; `null` turns it off.
    #[serde(default = "default_failures")]
    pub failures: Option<FailureGuard>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            failures: default_failures(),
        }
    }
}

/// More than `max_failed` of the last `of_last` sends failed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureGuard {
    #[schema(minimum = 0, example = 10)]
    pub max_failed: u32,
    #[schema(minimum = 1, maximum = 1000, example = 20)]
    pub of_last: u32,
}

fn default_failures() -> Option<FailureGuard> {
    Some(FailureGuard {
        max_failed: 10,
        of_last: 20,
    })
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

/// After a send of `sequence` failed for good: pauses the sequence if its `failures` rule is
/// tripped. Returns the rule that tripped, if one did and the sequence was ACTIVE.
pub async fn after_failure(
    db: &PgPool,
    flags: &PauseFlags,
    sequence: Uuid,
) -> Result<Option<&'static str>, StoreError> {
    let Some(row) = sqlx::query("SELECT status, guardrails FROM sequences WHERE id = $1")
        .bind(sequence)
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    if row.try_get::<SequenceStatus, _>("status")? != SequenceStatus::Active {
        return Ok(None);
    }
    let Some(rule) = Guardrails::from_stored(row.try_get("guardrails")?)?.failures else {
        return Ok(None);
    };
    let recent = sqlx::query(
        "SELECT sl.idempotency_key, sl.state, sl.smtp_reply, l.email
         FROM send_ledger sl JOIN leads l ON l.id = sl.lead_id
         WHERE sl.sequence_id = $1 AND sl.state IN ('SENT', 'FAILED')
         ORDER BY sl.created_at DESC LIMIT $2",
    )
    .bind(sequence)
    .bind(i64::from(rule.of_last))
    .fetch_all(db)
    .await?;
    let failed: Vec<&sqlx::postgres::PgRow> = recent
        .iter()
        .filter(|r| r.try_get::<&str, _>("state").ok() == Some("FAILED"))
        .collect();
    if recent.len() < rule.of_last as usize || failed.len() <= rule.max_failed as usize {
        return Ok(None);
    }
    let examples: Vec<serde_json::Value> = failed
        .iter()
        .take(5)
        .map(|r| {
            json!({
                "key": r.try_get::<String, _>("idempotency_key").unwrap_or_default(),
                "lead": r.try_get::<String, _>("email").unwrap_or_default(),
                "reply": r.try_get::<Option<String>, _>("smtp_reply").unwrap_or_default(),
            })
        })
        .collect();
    let evidence = json!({
        "failed": failed.len(),
        "of_last": recent.len(),
        "max_failed": rule.max_failed,
        "examples": examples,
    });
    Ok(trip(db, flags, sequence, "failures", evidence)
        .await?
        .then_some("failures"))
}

/// Pauses `sequence` for `rule` if it is still ACTIVE, with the evidence in the audit log.
/// Returns whether this call paused it.
async fn trip(
    db: &PgPool,
    flags: &PauseFlags,
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
    if let Err(e) = flags.set(sequence, SequenceStatus::Paused).await {
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
        let off = Guardrails::from_stored(Some(json!({"failures": null}))).unwrap();
        assert_eq!(off.failures, None);
        let bad = Guardrails {
            failures: Some(FailureGuard {
                max_failed: 20,
                of_last: 20,
            }),
        };
        assert_eq!(bad.check().unwrap_err().0, "guardrails.failures.max_failed");
    }
}
