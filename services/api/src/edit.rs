//! Editing a live sequence (`PATCH /v1/sequences/{id}`) and its version history.
//!
//! What an edit does to enrollments in flight:
//! * **Content** (subject, body): steps not yet queued render with the new content; queued and
//!   sent steps keep the snapshot they were queued with. Every send records its version.
//! * **Timing, end dates, send window, time zone**: every SCHEDULED step run of the sequence is
//!   recomputed from its anchor (the previous send, or the enrollment for step 1) under the new
//!   rules; one whose new time passes an end date is skipped and its enrollment ends. Step runs
//!   waiting on a retry keep their retry time.
//! * **Deleted step**: its runs not yet claimed by a sender (SCHEDULED, or QUEUED and still in
//!   RabbitMQ) are SKIPPED and each of those enrollments moves on to the live step that now
//!   follows the deleted one (or completes). Sends of it already claimed are waited for before
//!   the call returns, so none goes out afterwards. A deleted step keeps its place among the
//!   live steps (just after the step that preceded it), so an enrollment whose send of it was
//!   in flight continues with the step that followed it.
//! * **Reorder**: an enrollment waiting on a step keeps waiting on it; after it, it continues
//!   with whatever step follows in the new order. Steps moved before it are not sent to it, nor
//!   is a step it already went through.
//! * **Added step**: enrollments reach it when they get to its position; completed enrollments
//!   do not (re-enroll them if they should).
//! * **Triggers**: future events only.
//!
//! Steps are identified by id, never by position: a step run names its step, and what follows
//! a step is read from the order at the moment an enrollment advances (`schedule::advance`).
//! The edit holds the sequence row `FOR UPDATE` for its whole transaction; everything that
//! reads steps, triggers or rules to build work takes `schedule::lock_sequences` first, so once
//! the edit returns nothing built from the old steps can be created.
//!
//! Edits are refused on a deleted sequence. On an ACTIVE sequence the response warns about steps
//! already queued with the old content, and about edits the help page says to make paused.

use axum::{Json, extract::State};
use pulse_shared::{
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth},
    model::{EditSequence, Sequence, SequenceChange, SequenceStatus, SequenceVersion, VersionList},
    schedule::{self, Target},
};
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::{
    ApiState,
    control::audit,
    sequences::{
        check_name, check_sender, check_settings, check_steps, check_timezone, check_triggers,
        insert_step, load_one, lock_status, record_version, replace_triggers, to_json,
    },
};

/// Edit a sequence: rename, edit steps (content, timing, end date), add, delete and reorder
/// steps, change triggers and settings. `null` clears a setting. See the module docs (and
/// `docs/control.md`) for what each kind of edit does to enrollments in flight.
#[utoipa::path(
    patch, operation_id = "edit_sequence", path = "/v1/sequences/{id}", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = EditSequence,
    responses((status = 200, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted, or `version` is not the current one", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn edit(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    req: EditSequence,
) -> ApiResult<SequenceChange> {
    apply(state, auth, id, |_| Ok(req)).await
}

/// The one way a sequence is edited: `build` turns the sequence as it is, read with its row
/// locked for the whole transaction, into the edit to make (the step-level routes in `steps`
/// edit one step of the list they are given, so a concurrent edit is never overwritten).
pub(crate) async fn apply(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    build: impl FnOnce(&Sequence) -> Result<EditSequence, ApiError>,
) -> ApiResult<SequenceChange> {
    let mut tx = state.db.begin().await?;
    let Made {
        before,
        after,
        deleted_steps,
        mut warnings,
    } = make(&mut tx, auth, id, build).await?;
    tx.commit().await?;
    // Sends of deleted steps claimed before the commit: the call returns once they settled, so
    // no deleted step goes out afterwards (any later claim finds its run SKIPPED).
    if !deleted_steps.is_empty() {
        let left = crate::drain::wait_in_flight(
            &state.db,
            crate::drain::Scope::Steps(id, deleted_steps.clone()),
            state.drain_timeout,
        )
        .await?;
        warnings.extend(crate::drain::in_flight_warning(left, state.drain_timeout));
    }
    tracing::info!(sequence = %id, from = before.version, version = after.version, actor = %auth.actor, "sequence edited");
    Ok(SequenceChange {
        sequence: after,
        warnings,
    })
}

/// An edit made inside a transaction not yet committed.
pub(crate) struct Made {
    pub before: Sequence,
    pub after: Sequence,
    /// Steps the edit deleted (their claimed sends are still to be waited for).
    pub deleted_steps: Vec<Uuid>,
    pub warnings: Vec<String>,
}

/// Makes the edit in `tx` (every check, every write, the version and the audit) and leaves the
/// commit, or the rollback of a preview, to the caller.
pub(crate) async fn make(
    tx: &mut PgConnection,
    auth: &Auth,
    id: Uuid,
    build: impl FnOnce(&Sequence) -> Result<EditSequence, ApiError>,
) -> Result<Made, ApiError> {
    let status = lock_status(&mut *tx, auth.workspace, id).await?;
    if status == SequenceStatus::Deleted {
        return Err(ApiError::Conflict("the sequence is deleted".into()));
    }
    let before = load_one(&mut *tx, auth.workspace, id).await?;
    let req = build(&before)?;
    if req.id.is_some_and(|given| given != id) {
        // Another sequence's body sent to this one: it does not match what is here.
        return Err(ApiError::Conflict(
            "id is another sequence's: this body was read from another sequence".into(),
        ));
    }
    if let Some(read) = req.version
        && read != before.version
    {
        return Err(ApiError::Conflict(format!(
            "the sequence changed since it was read (version {read}; it is at {} now): read it again",
            before.version
        )));
    }
    let name = req.name.as_deref().map(check_name).transpose()?;
    let timezone = req.timezone.as_deref().map(check_timezone).transpose()?;
    if let Some(steps) = &req.steps {
        check_steps(steps, true)?;
    }
    if let Some(triggers) = &req.triggers {
        check_triggers(triggers)?;
    }
    check_settings(
        req.send_window.as_ref().and_then(Option::as_ref),
        req.max_sends_per_minute.flatten(),
    )?;
    let sender = match &req.sender {
        Some(s) => Some(check_sender(&mut *tx, auth.workspace, s).await?),
        None => None,
    };
    let limits = req
        .limits
        .as_deref()
        .map(|l| pulse_shared::limits::to_store("limits", l))
        .transpose()?;
    let guardrails = crate::sequences::check_guardrails(req.guardrails.as_ref())?;
    let priority = crate::sequences::check_priority(req.priority)?;

    sqlx::query(
        "UPDATE sequences SET
             name = COALESCE($2, name),
             timezone = COALESCE($3, timezone),
             sender_from = CASE WHEN $12 THEN $4 ELSE sender_from END,
             sender_mailboxes = CASE WHEN $12 THEN $13 ELSE sender_mailboxes END,
             send_window = CASE WHEN $5 THEN $6 ELSE send_window END,
             end_date = CASE WHEN $7 THEN $8 ELSE end_date END,
             max_sends_per_minute = CASE WHEN $9 THEN $10 ELSE max_sends_per_minute END,
             sender_reply_to = CASE WHEN $12 THEN $11 ELSE sender_reply_to END,
             exit_on_reply = COALESCE($14, exit_on_reply),
             limits = CASE WHEN $15 THEN $16 ELSE limits END,
             guardrails = COALESCE($17, guardrails),
             priority = COALESCE($18, priority),
             version = version + 1, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&name)
    .bind(&timezone)
    .bind(sender.as_ref().and_then(|s| s.from.as_ref()))
    .bind(req.send_window.is_some())
    .bind(
        req.send_window
            .clone()
            .flatten()
            .as_ref()
            .map(to_json)
            .transpose()?,
    )
    .bind(req.end_date.is_some())
    .bind(req.end_date.flatten())
    .bind(req.max_sends_per_minute.is_some())
    .bind(req.max_sends_per_minute.flatten())
    .bind(sender.as_ref().and_then(|s| s.reply_to.as_ref()))
    .bind(sender.is_some())
    .bind(sender.as_ref().and_then(|s| s.mailboxes.as_ref()))
    .bind(req.exit_on_reply.map(|e| e.as_str()))
    .bind(limits.is_some())
    .bind(limits.flatten())
    .bind(guardrails)
    .bind(priority)
    .execute(&mut *tx)
    .await?;

    let mut deleted_steps = Vec::new();
    let mut timing_changed = false;
    if let Some(steps) = &req.steps {
        let live: Vec<Uuid> = before.steps.iter().map(|s| s.id).collect();
        let mut kept = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            if let Some(sid) = step.id {
                // A well-formed id that is not one of the live steps: the list was read
                // from another sequence, or before a step was deleted.
                if !live.contains(&sid) {
                    return Err(ApiError::Conflict(format!(
                        "steps[{i}].id is not a live step of this sequence"
                    )));
                }
                if kept.contains(&sid) {
                    return Err(ApiError::invalid(format!("steps[{i}].id"), "listed twice"));
                }
                kept.push(sid);
            }
        }
        deleted_steps = live.iter().copied().filter(|s| !kept.contains(s)).collect();
        // A list that leaves steps out deletes them only when it says so: a client that sends
        // back just the step it edited must not delete the others.
        if !deleted_steps.is_empty() && !req.delete_missing_steps {
            let named: Vec<String> = before
                .steps
                .iter()
                .filter(|s| deleted_steps.contains(&s.id))
                .map(|s| format!("step {} (“{}”, id {})", s.position, s.subject, s.id))
                .collect();
            // The list is fine on its own; it no longer matches the sequence's steps.
            return Err(ApiError::Conflict(format!(
                "steps: {} missing from the list; send them back to keep them, or set \
                 \"delete_missing_steps\": true to delete them",
                named.join(", ")
            )));
        }
        // A deleted step keeps its place: just after the kept step that preceded it (0 when
        // none did), so "the step after it" is the one that followed it.
        let mut place = 0;
        let mut deleted_places = Vec::new();
        for old in &before.steps {
            match steps.iter().position(|n| n.id == Some(old.id)) {
                Some(i) => place = i as i32 + 1,
                None => deleted_places.push(place),
            }
        }
        // Free every position (moving live steps far up, out of the way of the unique index),
        // then lay the steps out in their new order.
        sqlx::query(
            "UPDATE sequence_steps SET position = position + 100000
             WHERE sequence_id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sequence_steps st SET deleted_at = now(), position = d.place
             FROM UNNEST($1::uuid[], $2::int4[]) AS d(id, place) WHERE st.id = d.id",
        )
        .bind(&deleted_steps)
        .bind(&deleted_places)
        .execute(&mut *tx)
        .await?;
        for (i, step) in steps.iter().enumerate() {
            let position = i as i32 + 1;
            match step.id {
                Some(sid) => {
                    let old = before.steps.iter().find(|s| s.id == sid);
                    timing_changed |=
                        old.is_some_and(|o| o.timing != step.timing || o.end_date != step.end_date);
                    sqlx::query(
                        "UPDATE sequence_steps SET position = $2, subject = $3, body = $4, timing = $5,
                             end_date = $6, html = $7, thread = $8, max_lateness = $9,
                             version = version + CASE WHEN subject <> $3 OR body <> $4
                                 OR timing <> $5 OR end_date IS DISTINCT FROM $6
                                 OR html IS DISTINCT FROM $7 OR thread <> $8 THEN 1 ELSE 0 END
                         WHERE id = $1",
                    )
                    .bind(sid)
                    .bind(position)
                    .bind(&step.subject)
                    .bind(&step.body)
                    .bind(to_json(&step.timing)?)
                    .bind(step.end_date)
                    .bind(&step.html)
                    .bind(step.thread)
                    .bind(step.max_lateness.as_deref().map(str::trim))
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    insert_step(&mut *tx, id, position, step).await?;
                }
            }
        }
    }
    if let Some(triggers) = &req.triggers {
        replace_triggers(&mut *tx, auth.workspace, id, triggers).await?;
    }

    let skipped = skip_deleted(&mut *tx, id, &deleted_steps).await?;
    // A setting sent back as it was (a client writing back what it read) changes nothing:
    // no re-timing, no warning.
    let rules_changed = timing_changed
        || timezone.as_ref().is_some_and(|t| *t != before.timezone)
        || req
            .send_window
            .as_ref()
            .is_some_and(|w| *w != before.send_window)
        || req.end_date.is_some_and(|d| d != before.end_date);
    let retimed = if rules_changed {
        schedule::retime(&mut *tx, schedule::Retime::Sequence(id)).await?
    } else {
        0
    };

    let after = load_one(&mut *tx, auth.workspace, id).await?;
    record_version(&mut *tx, &after, &auth.actor).await?;
    audit(&mut *tx, auth.workspace, id, None, &auth.actor, "edited",
        Some(to_json(&before)?),
        Some(json!({"sequence": to_json(&after)?, "steps_skipped": skipped, "steps_retimed": retimed}))).await?;

    let mut warnings = Vec::new();
    if status == SequenceStatus::Active {
        let queued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM step_runs WHERE sequence_id = $1 AND state = 'QUEUED'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if queued > 0 && req.steps.is_some() {
            warnings.push(format!(
                "{queued} step(s) were already queued and go out with the previous content; \
                 pause before editing if you need certainty"
            ));
        }
        let structural = req.triggers.as_ref().is_some_and(|t| *t != before.triggers)
            || timing_changed
            || !deleted_steps.is_empty()
            || req.steps.as_ref().is_some_and(|s| {
                s.len() != before.steps.len()
                    || s.iter().zip(&before.steps).any(|(n, o)| n.id != Some(o.id))
            });
        if structural {
            warnings.push(
                "timing, step order, added or deleted steps and trigger changes are safer made \
                 while the sequence is paused"
                    .to_owned(),
            );
        }
    }
    for step in before
        .steps
        .iter()
        .filter(|s| deleted_steps.contains(&s.id))
    {
        warnings.push(format!(
            "deleted step {} (“{}”, id {}); its runs not yet claimed were skipped",
            step.position, step.subject, step.id
        ));
    }
    if req.steps.is_some() {
        warnings.extend(crate::sequences::unsubscribe_link_note(&after.steps));
    }
    Ok(Made {
        before,
        after,
        deleted_steps,
        warnings,
    })
}

/// Skips the runs of deleted steps that no sender has claimed (SCHEDULED, or QUEUED with the
/// message still on its way: its claim will find the run SKIPPED and drop it), and moves each
/// enrollment on to the step that now follows. Returns how many.
///
/// The runs are locked first, in their own statement: a claim in progress commits before the
/// lock is granted, and the update, a later statement, sees its ledger row and leaves that run
/// to its sender (the edit then waits for it).
async fn skip_deleted(
    conn: &mut PgConnection,
    sequence: Uuid,
    deleted: &[Uuid],
) -> Result<u64, ApiError> {
    if deleted.is_empty() {
        return Ok(0);
    }
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM step_runs WHERE step_id = ANY($1) AND state IN ('SCHEDULED', 'QUEUED')
         ORDER BY id FOR UPDATE",
    )
    .bind(deleted)
    .fetch_all(&mut *conn)
    .await?;
    let runs = sqlx::query(
        "UPDATE step_runs sr SET state = 'SKIPPED', last_error = 'step deleted', updated_at = now()
         FROM enrollments e
         WHERE sr.id = ANY($1) AND e.id = sr.enrollment_id AND e.status = 'ACTIVE'
           AND (sr.state = 'SCHEDULED'
                OR (sr.state = 'QUEUED' AND NOT EXISTS (
                        SELECT 1 FROM send_ledger sl
                        WHERE sl.sequence_id = sr.sequence_id AND sl.step_run_id = sr.id
                          AND sl.state = 'SENDING')))
         RETURNING sr.workspace_id, sr.enrollment_id, sr.generation, sr.step_id, e.lead_id",
    )
    .bind(&locked)
    .fetch_all(&mut *conn)
    .await?;
    for run in &runs {
        let target = Target {
            workspace: run.get("workspace_id"),
            sequence,
            enrollment: run.get("enrollment_id"),
            lead: run.get("lead_id"),
            generation: run.get("generation"),
        };
        schedule::move_past_deleted(conn, target, run.get("step_id")).await?;
    }
    Ok(runs.len() as u64)
}

/// The sequence's edit history, oldest first: every version as it was saved, and by whom.
#[utoipa::path(
    get, path = "/v1/sequences/{id}/versions", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    responses((status = 200, body = VersionList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn versions(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<VersionList> {
    crate::sequences::exists(&state.db, auth.workspace, id).await?;
    let versions: Vec<SequenceVersion> = sqlx::query_as(
        "SELECT version, actor, snapshot, created_at FROM sequence_versions
         WHERE sequence_id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(VersionList { versions })
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn edit(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(req): ApiJson<EditSequence>,
    ) -> ApiResult<Json<SequenceChange>> {
        super::edit(&state, &auth, id, req).await.map(Json)
    }

    pub async fn versions(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<VersionList>> {
        super::versions(&state, &auth, id).await.map(Json)
    }
}
