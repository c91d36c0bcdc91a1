//! The `failures` rule: more than `max_failed` of a sequence's last `of_last` sends refused for
//! good (a 5xx, or a transient failure until attempts ran out). Checked by the sender after each
//! failed send, never on the path of a send that went out.

use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{Guardrails, trip};
use crate::{db::StoreError, pause::PauseFlags, state::SequenceStatus};

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
    Ok(trip(db, Some(flags), sequence, "failures", evidence)
        .await?
        .then_some("failures"))
}
