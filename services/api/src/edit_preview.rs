//! `POST /v1/sequences/{id}/edit-preview`: what an edit would do to the enrollments in flight,
//! without doing it.
//!
//! The edit is made by the one edit path ([`crate::edit::make`]) in a transaction that is always
//! rolled back, between two reads of the sequence's pending step runs and active enrollments.
//! What the preview reports is what that code does, not a second model of it. This module never
//! commits, never waits for sends in flight and never logs or audits an edit. Like an edit, it
//! holds the sequence's row for its transaction, so the scheduler leaves the sequence's due
//! steps for its next claim while a preview runs.
//!
//! A preview is a read: a `read` key may ask for one (`keys::Scope::needed`).

use axum::{Json, extract::State};
use pulse_shared::{
    http::{ApiJson, ApiPath, ApiResult, Auth},
    model::{
        EditPreview, EditSequence, PREVIEW_ITEMS, PreviewEnded, PreviewEnding, PreviewRun,
        PreviewRuns, Sequence,
    },
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{ApiState, edit, sequences::lock_status};

/// Preview an edit: takes the body `PATCH /v1/sequences/{id}` takes and changes nothing. Answers
/// how many active enrollments get the new content, which sends are already queued with the old
/// content, which waiting steps are re-timed (old and new due time) or skipped, and which
/// enrollments end. Each list gives its exact `count` and its first 100 items, soonest first.
/// The same checks as the edit apply, with the same errors.
#[utoipa::path(
    post, operation_id = "preview_edit", path = "/v1/sequences/{id}/edit-preview", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = EditSequence,
    responses((status = 200, body = EditPreview), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted, or `version` is not the current one", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn preview(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    req: EditSequence,
) -> ApiResult<EditPreview> {
    let mut tx = state.db.begin().await?;
    // The row lock first, so the reads below see what the edit will start from.
    lock_status(&mut tx, auth.workspace, id).await?;
    snapshot(&mut tx, id).await?;
    let made = edit::make(&mut tx, auth, id, |_| Ok(req)).await?;
    let changed = changed_steps(&made.before, &made.after);
    let changed_positions: Vec<i32> = made
        .after
        .steps
        .iter()
        .filter(|s| changed.contains(&s.id))
        .map(|s| s.position)
        .collect();
    let mut old_content: Vec<Uuid> = changed.clone();
    old_content.extend(&made.deleted_steps);
    let preview = EditPreview {
        sequence_id: id,
        as_of: chrono::Utc::now(),
        version: made.before.version,
        new_content: new_content(&mut tx, id, changed_positions.iter().max().copied()).await?,
        changed_steps: changed_positions,
        queued_with_old_content: runs(&mut tx, Runs::QueuedWithOldContent(&old_content)).await?,
        retimed: runs(&mut tx, Runs::Retimed).await?,
        skipped: runs(&mut tx, Runs::Skipped).await?,
        ended: ended(&mut tx).await?,
        warnings: made.warnings,
        sequence: made.after,
    };
    tx.rollback().await?;
    Ok(preview)
}

/// Steps whose content (subject, body, HTML, threading) the edit changes, and steps it adds.
fn changed_steps(before: &Sequence, after: &Sequence) -> Vec<Uuid> {
    after
        .steps
        .iter()
        .filter(|new| {
            before
                .steps
                .iter()
                .find(|old| old.id == new.id)
                .is_none_or(|old| {
                    (&old.subject, &old.body, &old.html, old.thread)
                        != (&new.subject, &new.body, &new.html, new.thread)
                })
        })
        .map(|s| s.id)
        .collect()
}

/// Copies the sequence's pending runs and active enrollments into temporary tables that the
/// rollback drops.
async fn snapshot(tx: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TEMP TABLE preview_runs (id uuid PRIMARY KEY, state text, due_at timestamptz,
             position int) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO preview_runs
         SELECT sr.id, sr.state, sr.due_at, st.position
         FROM step_runs sr JOIN sequence_steps st ON st.id = sr.step_id
         WHERE sr.sequence_id = $1 AND sr.state IN ('SCHEDULED', 'QUEUED')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("CREATE TEMP TABLE preview_enrollments (id uuid PRIMARY KEY) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO preview_enrollments
         SELECT id FROM enrollments WHERE sequence_id = $1 AND status = 'ACTIVE'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Active enrollments that will still reach a step at or before `last_changed` (its new
/// position): one waiting on such a step, or queued on a step before it.
async fn new_content(
    tx: &mut PgConnection,
    id: Uuid,
    last_changed: Option<i32>,
) -> Result<i64, sqlx::Error> {
    let Some(last) = last_changed else {
        return Ok(0);
    };
    sqlx::query_scalar(
        "SELECT count(DISTINCT sr.enrollment_id) FROM step_runs sr
         JOIN enrollments e ON e.id = sr.enrollment_id AND e.status = 'ACTIVE'
         JOIN sequence_steps st ON st.id = sr.step_id
         WHERE sr.sequence_id = $1
           AND ((sr.state = 'SCHEDULED' AND st.position <= $2)
                OR (sr.state = 'QUEUED' AND st.position < $2))",
    )
    .bind(id)
    .bind(last)
    .fetch_one(&mut *tx)
    .await
}

/// Which runs of the snapshot a list names, as they are after the edit.
enum Runs<'a> {
    /// Still queued, of a step whose content changed or that was deleted.
    QueuedWithOldContent(&'a [Uuid]),
    /// Waiting before and after, at another time.
    Retimed,
    /// Pending before, skipped or cancelled after.
    Skipped,
}

async fn runs(tx: &mut PgConnection, which: Runs<'_>) -> Result<PreviewRuns, sqlx::Error> {
    let condition = match which {
        Runs::QueuedWithOldContent(_) => "sr.state = 'QUEUED' AND sr.step_id = ANY($2)",
        // A second or more: re-timing recomputes every waiting run from its anchor, and a run
        // whose timing did not change can move by the milliseconds between its enrollment's
        // time and the moment its due time was first written.
        Runs::Retimed => {
            "p.state = 'SCHEDULED' AND sr.state = 'SCHEDULED'
             AND abs(extract(epoch FROM sr.due_at - p.due_at)) >= 1"
        }
        Runs::Skipped => "sr.state IN ('SKIPPED', 'CANCELLED')",
    };
    let sql = format!(
        "SELECT sr.id AS step_run_id, sr.enrollment_id, l.email AS lead_email, sr.step_id,
                p.position AS step_position, p.due_at,
                CASE WHEN sr.due_at <> p.due_at THEN sr.due_at END AS new_due_at,
                CASE WHEN sr.state IN ('SKIPPED', 'CANCELLED') THEN sr.last_error END AS reason,
                count(*) OVER () AS total
         FROM preview_runs p
         JOIN step_runs sr ON sr.id = p.id
         JOIN enrollments e ON e.id = sr.enrollment_id
         JOIN leads l ON l.id = e.lead_id
         WHERE {condition}
         ORDER BY p.due_at, sr.id LIMIT $1"
    );
    let mut query = sqlx::query_as::<_, Counted<PreviewRun>>(&sql).bind(PREVIEW_ITEMS);
    if let Runs::QueuedWithOldContent(steps) = which {
        query = query.bind(steps);
    }
    let rows = query.fetch_all(&mut *tx).await?;
    Ok(PreviewRuns {
        count: rows.first().map_or(0, |r| r.total),
        items: rows.into_iter().map(|r| r.item).collect(),
    })
}

/// Enrollments active before the edit and ended after it.
async fn ended(tx: &mut PgConnection) -> Result<PreviewEnded, sqlx::Error> {
    let rows: Vec<Counted<PreviewEnding>> = sqlx::query_as(
        "SELECT e.id AS enrollment_id, l.email AS lead_email, e.status, e.end_reason AS reason,
                count(*) OVER () AS total
         FROM preview_enrollments p
         JOIN enrollments e ON e.id = p.id
         JOIN leads l ON l.id = e.lead_id
         WHERE e.status <> 'ACTIVE'
         ORDER BY l.email, e.id LIMIT $1",
    )
    .bind(PREVIEW_ITEMS)
    .fetch_all(&mut *tx)
    .await?;
    Ok(PreviewEnded {
        count: rows.first().map_or(0, |r| r.total),
        items: rows.into_iter().map(|r| r.item).collect(),
    })
}

/// A row of a list and the list's whole count (`count(*) OVER ()`).
#[derive(sqlx::FromRow)]
struct Counted<T> {
    #[sqlx(flatten)]
    item: T,
    total: i64,
}

/// The `/v1` handler: takes the request apart and calls [`preview`].
pub mod v1 {
    use super::*;

    pub async fn preview(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(req): ApiJson<EditSequence>,
    ) -> ApiResult<Json<EditPreview>> {
        super::preview(&state, &auth, id, req).await.map(Json)
    }
}
