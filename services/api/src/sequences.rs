//! Creating and reading sequences, their steps and triggers.

use axum::{Json, extract::State, http::StatusCode};
use pulse_shared::{
    domain::{template, validate},
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth},
    model::{CreateSequence, SenderIdentity, Sequence, SequenceList, Step, Timing, TriggerSpec},
};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::ApiState;

/// Most steps in one sequence.
const MAX_STEPS: usize = 50;

/// Create a sequence.
#[utoipa::path(
    post, path = "/v1/sequences", tag = "sequences",
    request_body = CreateSequence,
    responses(
        (status = 201, description = "Created, ACTIVE", body = Sequence),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<ApiState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateSequence>,
) -> ApiResult<(StatusCode, Json<Sequence>)> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    let timezone = match req.timezone.as_deref() {
        None => "UTC".to_owned(),
        Some(tz) => validate::timezone(tz)
            .map_err(|m| ApiError::invalid("timezone", m))?
            .name()
            .to_owned(),
    };
    let sender =
        validate::mailbox(&req.sender.from).map_err(|m| ApiError::invalid("sender.from", m))?;
    if req.steps.is_empty() || req.steps.len() > MAX_STEPS {
        return Err(ApiError::invalid(
            "steps",
            format!("must have 1 to {MAX_STEPS} steps"),
        ));
    }
    for (i, step) in req.steps.iter().enumerate() {
        if step.subject.trim().is_empty() {
            return Err(ApiError::invalid(
                format!("steps[{i}].subject"),
                "must not be empty",
            ));
        }
        template::validate(&step.subject)
            .map_err(|m| ApiError::invalid(format!("steps[{i}].subject"), m))?;
        template::validate(&step.body)
            .map_err(|m| ApiError::invalid(format!("steps[{i}].body"), m))?;
        step.timing
            .validate()
            .map_err(|m| ApiError::invalid(format!("steps[{i}].timing"), m))?;
    }
    for (i, trigger) in req.triggers.iter().enumerate() {
        let blank = match trigger {
            TriggerSpec::TagApplied { tag } => tag.trim().is_empty().then_some("tag"),
            TriggerSpec::ListAdded { list } => list.trim().is_empty().then_some("list"),
            TriggerSpec::LeadScore { .. } => None,
        };
        if let Some(field) = blank {
            return Err(ApiError::invalid(
                format!("triggers[{i}].{field}"),
                "must not be empty",
            ));
        }
    }

    let id = Uuid::new_v4();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO sequences (id, workspace_id, name, timezone, sender_from) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(auth.workspace)
    .bind(name)
    .bind(&timezone)
    .bind(sender.to_string())
    .execute(&mut *tx)
    .await?;
    for (i, step) in req.steps.iter().enumerate() {
        let timing =
            serde_json::to_value(&step.timing).map_err(|e| ApiError::Internal(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO sequence_steps (id, sequence_id, position, timing, subject, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(id)
        .bind(i as i32 + 1)
        .bind(timing)
        .bind(&step.subject)
        .bind(&step.body)
        .execute(&mut *tx)
        .await?;
    }
    for (position, trigger) in req.triggers.iter().enumerate() {
        let (kind, tag, list, min_score) = match trigger {
            TriggerSpec::TagApplied { tag } => ("tag_applied", Some(tag.trim()), None, None),
            TriggerSpec::ListAdded { list } => ("list_added", None, Some(list.trim()), None),
            TriggerSpec::LeadScore { min_score } => ("lead_score", None, None, Some(*min_score)),
        };
        sqlx::query(
            "INSERT INTO triggers (id, workspace_id, sequence_id, position, kind, tag, list, min_score)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::new_v4())
        .bind(auth.workspace)
        .bind(id)
        .bind(position as i32 + 1)
        .bind(kind)
        .bind(tag)
        .bind(list)
        .bind(min_score)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(sequence = %id, steps = req.steps.len(), "sequence created");
    let created = load(&state.db, auth.workspace, &[id])
        .await?
        .pop()
        .ok_or(ApiError::NotFound("sequence"))?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List the workspace's sequences, newest first.
#[utoipa::path(
    get, path = "/v1/sequences", tag = "sequences",
    responses((status = 200, body = SequenceList)),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<ApiState>, auth: Auth) -> ApiResult<Json<SequenceList>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sequences WHERE workspace_id = $1 ORDER BY created_at DESC, id LIMIT 1000",
    )
    .bind(auth.workspace)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(SequenceList {
        sequences: load(&state.db, auth.workspace, &ids).await?,
    }))
}

/// Read one sequence with its steps and triggers.
#[utoipa::path(
    get, path = "/v1/sequences/{id}", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    responses((status = 200, body = Sequence), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(state): State<ApiState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Sequence>> {
    load(&state.db, auth.workspace, &[id])
        .await?
        .pop()
        .map(Json)
        .ok_or(ApiError::NotFound("sequence"))
}

/// Loads sequences of `workspace` with their steps and triggers, in the order of `ids`.
async fn load(db: &PgPool, workspace: Uuid, ids: &[Uuid]) -> Result<Vec<Sequence>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, name, status, timezone, sender_from, version, created_at, updated_at
         FROM sequences WHERE workspace_id = $1 AND id = ANY($2)",
    )
    .bind(workspace)
    .bind(ids)
    .fetch_all(db)
    .await?;
    let steps = sqlx::query(
        "SELECT id, sequence_id, position, subject, body, timing FROM sequence_steps
         WHERE sequence_id = ANY($1) ORDER BY position",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let triggers = sqlx::query(
        "SELECT sequence_id, kind, tag, list, min_score FROM triggers
         WHERE sequence_id = ANY($1) ORDER BY position",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let corrupt = |what: String| ApiError::Internal(what.into());
    let mut out = Vec::with_capacity(rows.len());
    for id in ids {
        let Some(row) = rows.iter().find(|r| r.get::<Uuid, _>("id") == *id) else {
            continue;
        };
        let mut seq_steps = Vec::new();
        for s in steps
            .iter()
            .filter(|s| s.get::<Uuid, _>("sequence_id") == *id)
        {
            let timing: Timing = serde_json::from_value(s.get("timing"))
                .map_err(|e| corrupt(format!("step timing: {e}")))?;
            seq_steps.push(Step {
                id: s.get("id"),
                position: s.get("position"),
                subject: s.get("subject"),
                body: s.get("body"),
                timing,
            });
        }
        let mut seq_triggers = Vec::new();
        for t in triggers
            .iter()
            .filter(|t| t.get::<Uuid, _>("sequence_id") == *id)
        {
            let kind: String = t.get("kind");
            seq_triggers.push(match kind.as_str() {
                "tag_applied" => TriggerSpec::TagApplied {
                    tag: t.get::<Option<String>, _>("tag").unwrap_or_default(),
                },
                "list_added" => TriggerSpec::ListAdded {
                    list: t.get::<Option<String>, _>("list").unwrap_or_default(),
                },
                "lead_score" => TriggerSpec::LeadScore {
                    min_score: t.get::<Option<i32>, _>("min_score").unwrap_or_default(),
                },
                other => return Err(corrupt(format!("unknown trigger kind {other}"))),
            });
        }
        out.push(Sequence {
            id: *id,
            name: row.get("name"),
            status: row.get("status"),
            timezone: row.get("timezone"),
            sender: SenderIdentity {
                from: row.get("sender_from"),
            },
            version: row.get("version"),
            steps: seq_steps,
            triggers: seq_triggers,
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        });
    }
    Ok(out)
}
