//! The audit trail (`audit_events`): who did what to a sequence or an enrollment, with the
//! before and after. Every role that changes one on someone's behalf (the api for an operator,
//! the inbound role for a reply or a bounce, a guardrail) records it here, in the transaction of
//! the change. A sequence paused, resumed, edited or deleted is also its `sequence.*` webhook
//! event, written here in the same transaction, so no path that records the change can forget
//! the event.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::StoreError;

/// Records `action` by `actor` on `sequence` (and `enrollment`), in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    conn: &mut PgConnection,
    workspace: Uuid,
    sequence: Uuid,
    enrollment: Option<Uuid>,
    actor: &str,
    action: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (workspace_id, sequence_id, enrollment_id, actor, action, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(workspace)
    .bind(sequence)
    .bind(enrollment)
    .bind(actor)
    .bind(action)
    .bind(before)
    .bind(&after)
    .execute(&mut *conn)
    .await?;
    if enrollment.is_none()
        && let Some(event) = match action {
            "paused" => Some("sequence.paused"),
            "resumed" => Some("sequence.resumed"),
            "edited" => Some("sequence.edited"),
            "deleted" => Some("sequence.deleted"),
            _ => None,
        }
    {
        let data = crate::webhooks::sequence_data(
            workspace,
            sequence,
            actor,
            serde_json::json!({"after": after}),
        );
        crate::webhooks::emit(conn, workspace, event, data).await?;
    }
    Ok(())
}

/// Records a workspace-level `action` by `actor` (a key made or revoked, a webhook changed),
/// with what it concerned, in the caller's transaction.
pub async fn record_workspace(
    conn: &mut PgConnection,
    workspace: Uuid,
    actor: &str,
    action: &str,
    detail: Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (workspace_id, actor, action, after) VALUES ($1, $2, $3, $4)",
    )
    .bind(workspace)
    .bind(actor)
    .bind(action)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}
