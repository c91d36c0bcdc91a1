//! The `repeats` rule: a step about to go to a lead that was sent the same step (same step id)
//! under another enrollment of the sequence within `within` (default `PT24H`). That is the help
//! page's "a lead receiving the same email several times", across generations.
//!
//! An operator's re-enroll is exempt: the new generation it makes (`source = 're-enroll'`, from
//! the API or the Hub, audited with its actor) is asked for by name. Every other way to the
//! same step twice is not: a trigger-made generation, or two leads merged into one with both
//! enrollments (`identity::merge_leads`).
//!
//! The sender's snapshot reads the earlier send ([`REPEAT_JOIN`]) before anything is claimed, so
//! the repeat itself is never sent: the sequence pauses and the step is held with the other
//! paused steps. A resume with the repeat still due pauses again; the operator cancels that
//! enrollment, or turns the rule off for the sequence, to let it go.
//!
//! The lookup costs one probe of `enrollments (sequence_id, lead_id, generation)` per send,
//! which finds only the send's own enrollment unless the lead has had another.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::trip;
use crate::{db::StoreError, pause::PauseFlags};

/// The columns the snapshot reads from [`REPEAT_JOIN`]: the key and time of the earlier send.
pub const REPEAT_COLUMNS: &str = "rp.idempotency_key AS repeat_key, rp.sent_at AS repeat_sent_at";

/// A lateral join over `step_runs sr`, `enrollments e` and `sequences s`: the latest send of the
/// same step to the same lead under another enrollment within the rule's window, when the rule
/// is on (stored NULL, or the key absent: the default) and the enrollment is not an operator's
/// re-enroll.
pub const REPEAT_JOIN: &str = "LEFT JOIN LATERAL (
         SELECT pl.idempotency_key, pl.sent_at FROM enrollments pe
         JOIN send_ledger pl ON pl.enrollment_id = pe.id AND pl.step_id = sr.step_id
         WHERE e.source <> 're-enroll'
           AND jsonb_typeof(s.guardrails -> 'repeats') IS DISTINCT FROM 'null'
           AND pe.sequence_id = sr.sequence_id AND pe.lead_id = e.lead_id AND pe.id <> e.id
           AND pl.sent_at > now() - COALESCE((s.guardrails -> 'repeats' ->> 'within')::interval,
                                             interval '24 hours')
         ORDER BY pl.sent_at DESC LIMIT 1) rp ON true";

/// An earlier send of the same step to the same lead, as the snapshot found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repeat {
    pub key: String,
    pub sent_at: DateTime<Utc>,
}

/// What the sender knows about the send that would repeat `earlier`.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub sequence: Uuid,
    pub key: &'a str,
    pub lead: &'a str,
    pub earlier: &'a Repeat,
}

/// Pauses the sequence for a repeat, with the evidence. Returns whether this call paused it
/// (`false`: it was no longer ACTIVE). The caller holds the step either way.
pub async fn tripped(
    db: &PgPool,
    flags: &PauseFlags,
    attempt: &Attempt<'_>,
) -> Result<bool, StoreError> {
    let evidence = json!({
        "lead": attempt.lead,
        "key": attempt.key,
        "earlier_key": attempt.earlier.key,
        "earlier_sent_at": attempt.earlier.sent_at,
    });
    trip(db, Some(flags), attempt.sequence, "repeats", evidence).await
}
