//! Step-level edits: change, add, delete or reorder one step without sending the whole list
//! (`/v1/sequences/{id}/steps…`). Each turns the sequence as it is, read under the edit's lock,
//! into a whole-list edit and goes through the one edit path (`edit::apply`): what it does to
//! enrollments in flight is exactly what `PATCH /v1/sequences/{id}` does, its answer carries the
//! same warnings (queued steps that keep the old content, deleted steps named), and an edit
//! committed meanwhile is never overwritten. It owns no SQL.

use axum::{Json, extract::State, http::StatusCode};
use pulse_shared::{
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth},
    model::{EditSequence, Sequence, SequenceChange, StepInput, StepOrder, StepPatch},
};
use uuid::Uuid;

use crate::{ApiState, edit};

/// The sequence's live steps as the whole-list edit takes them, in order.
pub(crate) fn inputs(seq: &Sequence) -> Vec<StepInput> {
    seq.steps
        .iter()
        .map(|s| StepInput {
            id: Some(s.id),
            position: None,
            subject: s.subject.clone(),
            body: s.body.clone(),
            html: s.html.clone(),
            thread: s.thread,
            timing: s.timing.clone(),
            end_date: s.end_date,
            max_lateness: s.max_lateness.clone(),
        })
        .collect()
}

fn index_of(seq: &Sequence, step: Uuid) -> Result<usize, ApiError> {
    seq.steps
        .iter()
        .position(|s| s.id == step)
        .ok_or(ApiError::NotFound("step"))
}

/// A threaded step after the first may have an empty subject; moved first (by a delete or a new
/// order), it cannot: the request is fine, the steps it meets make it a conflict.
fn first_has_a_subject(steps: &[StepInput]) -> Result<(), ApiError> {
    match steps.first() {
        Some(first) if first.subject.trim().is_empty() => Err(ApiError::Conflict(
            "this would make a step with an empty subject the first; give it a subject first"
                .into(),
        )),
        _ => Ok(()),
    }
}

fn with_steps(steps: Vec<StepInput>, delete_missing_steps: bool) -> EditSequence {
    EditSequence {
        steps: Some(steps),
        delete_missing_steps,
        ..Default::default()
    }
}

/// Change one step: its content, timing or end date. Fields left out stay as they are.
#[utoipa::path(
    patch, operation_id = "patch_step", path = "/v1/sequences/{id}/steps/{step_id}", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id"), ("step_id" = Uuid, Path, description = "Step id")),
    request_body = StepPatch,
    responses((status = 200, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted, or the step it meets leaves it an empty subject it cannot have", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn patch(
    state: &ApiState,
    auth: &Auth,
    (id, step): (Uuid, Uuid),
    change: StepPatch,
) -> ApiResult<SequenceChange> {
    edit::apply(state, auth, id, |seq| {
        let i = index_of(seq, step)?;
        let mut steps = inputs(seq);
        let s = &mut steps[i];
        if let Some(subject) = change.subject {
            s.subject = subject;
        }
        if let Some(body) = change.body {
            s.body = body;
        }
        if let Some(html) = change.html {
            s.html = html;
        }
        if let Some(thread) = change.thread {
            s.thread = thread;
        }
        if let Some(timing) = change.timing {
            s.timing = timing;
        }
        if let Some(end_date) = change.end_date {
            s.end_date = end_date;
        }
        if let Some(max_lateness) = change.max_lateness {
            s.max_lateness = max_lateness;
        }
        // An empty subject is allowed on a threaded step after the first. Where the patch is
        // fine on its own and the step it meets makes it wrong (the step is the first, or its
        // stored subject is empty), that is a conflict with the sequence as it is.
        if s.subject.trim().is_empty() && (i == 0 || !s.thread) {
            return Err(ApiError::Conflict(if i == 0 {
                "the first step's subject cannot be empty".into()
            } else {
                "this step's subject is empty: give one to send it outside the thread".into()
            }));
        }
        Ok(with_steps(steps, false))
    })
    .await
}

/// Add a step at `position` (1 = first; left out, or past the end: after the last). The body is
/// a step as `steps` takes it, without an `id`.
#[utoipa::path(
    post, operation_id = "add_step", path = "/v1/sequences/{id}/steps", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = StepInput,
    responses((status = 201, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn add(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    step: StepInput,
) -> ApiResult<(StatusCode, Json<SequenceChange>)> {
    if step.id.is_some() {
        return Err(ApiError::invalid(
            "id",
            "a new step has no id; to change a step, PATCH /v1/sequences/{id}/steps/{step_id}",
        ));
    }
    let change = edit::apply(state, auth, id, |seq| {
        let mut steps = inputs(seq);
        if steps.len() >= crate::sequences::MAX_STEPS {
            return Err(ApiError::Conflict(format!(
                "the sequence has {} steps, the most it can have",
                crate::sequences::MAX_STEPS
            )));
        }
        let place = match step.position {
            None => steps.len(),
            Some(p) if p >= 1 => (p as usize - 1).min(steps.len()),
            Some(_) => return Err(ApiError::invalid("position", "must be at least 1")),
        };
        steps.insert(place, step);
        Ok(with_steps(steps, false))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(change)))
}

/// Delete one step. Its runs no sender has claimed are skipped and their enrollments move on
/// to the step that now follows; the answer returns once its sends already claimed settled.
#[utoipa::path(
    delete, operation_id = "delete_step", path = "/v1/sequences/{id}/steps/{step_id}", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id"), ("step_id" = Uuid, Path, description = "Step id")),
    responses((status = 200, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted, or the sequence's only step", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn delete(
    state: &ApiState,
    auth: &Auth,
    (id, step): (Uuid, Uuid),
) -> ApiResult<SequenceChange> {
    edit::apply(state, auth, id, |seq| {
        let i = index_of(seq, step)?;
        let mut steps = inputs(seq);
        if steps.len() == 1 {
            return Err(ApiError::Conflict(
                "this is the sequence's only step: delete the sequence instead".into(),
            ));
        }
        steps.remove(i);
        first_has_a_subject(&steps)?;
        Ok(with_steps(steps, true))
    })
    .await
}

/// Reorder the steps: `step_ids` lists every live step once, in the new order. A list that does
/// not match the live steps (one missing, one that is not live) is `409`: the sequence changed
/// since it was read.
#[utoipa::path(
    post, path = "/v1/sequences/{id}/steps/order", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = StepOrder,
    responses((status = 200, body = SequenceChange), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Deleted, or the list does not match the live steps", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn order(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    order: StepOrder,
) -> ApiResult<SequenceChange> {
    if let Some(i) =
        (1..order.step_ids.len()).find(|&i| order.step_ids[..i].contains(&order.step_ids[i]))
    {
        return Err(ApiError::invalid(format!("step_ids[{i}]"), "listed twice"));
    }
    edit::apply(state, auth, id, |seq| {
        let mut steps: Vec<Option<StepInput>> = inputs(seq).into_iter().map(Some).collect();
        let mut ordered = Vec::with_capacity(steps.len());
        for (i, step) in order.step_ids.iter().enumerate() {
            let taken = seq
                .steps
                .iter()
                .position(|s| s.id == *step)
                .and_then(|at| steps[at].take());
            match taken {
                Some(s) => ordered.push(s),
                None => {
                    return Err(ApiError::Conflict(format!(
                        "step_ids[{i}] is not a live step of this sequence"
                    )));
                }
            }
        }
        if ordered.len() != steps.len() {
            let missing: Vec<String> = seq
                .steps
                .iter()
                .zip(&steps)
                .filter(|(_, left)| left.is_some())
                .map(|(s, _)| s.id.to_string())
                .collect();
            return Err(ApiError::Conflict(format!(
                "step_ids must list every live step once; missing: {}",
                missing.join(", ")
            )));
        }
        first_has_a_subject(&ordered)?;
        Ok(with_steps(ordered, false))
    })
    .await
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn add(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(step): ApiJson<StepInput>,
    ) -> ApiResult<(StatusCode, Json<SequenceChange>)> {
        super::add(&state, &auth, id, step).await
    }

    pub async fn order(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(order): ApiJson<StepOrder>,
    ) -> ApiResult<Json<SequenceChange>> {
        super::order(&state, &auth, id, order).await.map(Json)
    }

    pub async fn patch(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath((id, step)): ApiPath<(Uuid, Uuid)>,
        ApiJson(change): ApiJson<StepPatch>,
    ) -> ApiResult<Json<SequenceChange>> {
        super::patch(&state, &auth, (id, step), change)
            .await
            .map(Json)
    }

    pub async fn delete(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath((id, step)): ApiPath<(Uuid, Uuid)>,
    ) -> ApiResult<Json<SequenceChange>> {
        super::delete(&state, &auth, (id, step)).await.map(Json)
    }
}
