//! Creating and reading sequences, and the validation and storage of steps, triggers and
//! settings that creating and editing share.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use pulse_shared::{
    domain::{limits, template, validate, window::SendWindow},
    http::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth, Created},
    model::{
        CreateSequence, ExitOnReply, Guardrails, SenderIdentity, Sequence, SequenceList,
        SequenceStats, SequenceStatsList, SequenceStatus, Step, StepInput, Timing, TriggerSpec,
    },
};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::{ApiState, control::audit};

/// Most steps in one sequence.
pub(crate) const MAX_STEPS: usize = 50;

/// Create a sequence.
#[utoipa::path(
    post, operation_id = "create_sequence", path = "/v1/sequences", tag = "sequences",
    request_body = CreateSequence,
    responses(
        (status = 201, description = "Created, ACTIVE", body = Sequence,
         headers(("Location" = String, description = "The sequence: /v1/sequences/{id}"))),
        (status = 401, body = pulse_shared::http::ErrorBody),
        (status = 403, description = "A read key", body = pulse_shared::http::ErrorBody),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 404, description = "A mailbox `sender.mailbox_ids` names is not there", body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    state: &ApiState,
    auth: &Auth,
    req: CreateSequence,
) -> ApiResult<Created<Sequence>> {
    let name = check_name(&req.name)?;
    let timezone = check_timezone(req.timezone.as_deref().unwrap_or("UTC"))?;
    check_steps(&req.steps, false)?;
    check_triggers(&req.triggers)?;
    check_settings(req.send_window.as_ref(), req.max_sends_per_minute)?;
    let limits = pulse_shared::limits::to_store("limits", &req.limits)?;
    let guardrails = check_guardrails(req.guardrails.as_ref())?;
    let priority = check_priority(req.priority)?.unwrap_or(5);

    let id = Uuid::new_v4();
    let mut tx = state.db.begin().await?;
    let sender = check_sender(&mut tx, auth.workspace, &req.sender).await?;
    sqlx::query(
        "INSERT INTO sequences (id, workspace_id, name, timezone, sender_from, send_window,
                                end_date, max_sends_per_minute, sender_reply_to, sender_mailboxes,
                                exit_on_reply, limits, guardrails, priority)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(id)
    .bind(auth.workspace)
    .bind(&name)
    .bind(&timezone)
    .bind(&sender.from)
    .bind(req.send_window.as_ref().map(to_json).transpose()?)
    .bind(req.end_date)
    .bind(req.max_sends_per_minute)
    .bind(&sender.reply_to)
    .bind(&sender.mailboxes)
    .bind(req.exit_on_reply.unwrap_or_default().as_str())
    .bind(limits)
    .bind(guardrails)
    .bind(priority)
    .execute(&mut *tx)
    .await?;
    for (i, step) in req.steps.iter().enumerate() {
        insert_step(&mut tx, id, i as i32 + 1, step).await?;
    }
    replace_triggers(&mut tx, auth.workspace, id, &req.triggers).await?;
    let created = load_one(&mut tx, auth.workspace, id).await?;
    record_version(&mut tx, &created, &auth.actor).await?;
    audit(
        &mut tx,
        auth.workspace,
        id,
        None,
        &auth.actor,
        "created",
        None,
        Some(to_json(&created)?),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(sequence = %id, steps = req.steps.len(), "sequence created");
    Ok(Created(format!("/v1/sequences/{id}"), created))
}

/// Paging of the sequence list, newest first.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SequencePage {
    /// Most sequences (1–1000, default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Sequences older than this one (the `next` of the previous page).
    pub after: Option<Uuid>,
}

/// List the workspace's sequences, newest first (deleted ones included, for audit), a page at
/// a time: `next` names the last one when there are more.
#[utoipa::path(
    get, operation_id = "list_sequences", path = "/v1/sequences", tag = "sequences", params(SequencePage),
    responses((status = 200, body = SequenceList), (status = 401, body = pulse_shared::http::ErrorBody),
              (status = 404, description = "`after` names no sequence of this workspace", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(state: &ApiState, auth: &Auth, page: SequencePage) -> ApiResult<SequenceList> {
    let limit = match page.limit {
        None => 1000,
        Some(n @ 1..=1000) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be 1 to 1000")),
    };
    // A cursor naming no sequence of this workspace is a 404, as its id in a path would be.
    if let Some(after) = page.after {
        exists(&state.db, auth.workspace, after)
            .await
            .map_err(|e| match e {
                ApiError::NotFound(_) => ApiError::NotFound("sequence (the `after` cursor)"),
                other => other,
            })?;
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sequences WHERE workspace_id = $1
           AND ($2::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM sequences
                                                        WHERE id = $2))
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(auth.workspace)
    .bind(page.after)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let (ids, next) = crate::page_of(ids, limit, |id| *id);
    let mut conn = state.db.acquire().await?;
    Ok(SequenceList {
        sequences: load(&mut conn, auth.workspace, &ids).await?,
        next,
    })
}

/// Enrollment counts (with those a reply, a bounce or a complaint ended) and today's sends of
/// each of the workspace's sequences, newest first.
#[utoipa::path(
    get, path = "/v1/sequences/stats", tag = "sequences",
    responses((status = 200, body = SequenceStatsList)),
    security(("bearer" = []))
)]
pub async fn stats(state: &ApiState, auth: &Auth) -> ApiResult<SequenceStatsList> {
    stats_of(state, auth, None).await
}

/// [`stats`] of every sequence, or of `only` (a sequence's own page need not count the others).
pub(crate) async fn stats_of(
    state: &ApiState,
    auth: &Auth,
    only: Option<Uuid>,
) -> ApiResult<SequenceStatsList> {
    // Enrollments by the (sequence_id, status, created_at) index; today's sends by the ledger's
    // (sequence_id, created_at) index, from a day before midnight (a send recorded today was
    // first claimed at most a few hours earlier: retries back off to an hour, 8 attempts).
    let sequences: Vec<SequenceStats> = sqlx::query_as(
        "SELECT s.id AS sequence_id, s.status,
                e.enrolled, e.active, e.completed, e.cancelled, t.sends_today,
                e.replied, e.bounced, e.complained
         FROM sequences s
         CROSS JOIN LATERAL (
             SELECT date_trunc('day', now() AT TIME ZONE s.timezone) AT TIME ZONE s.timezone
                 AS midnight) d
         CROSS JOIN LATERAL (
             SELECT count(*) AS enrolled,
                    count(*) FILTER (WHERE status = 'ACTIVE') AS active,
                    count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
                    count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
                    count(*) FILTER (WHERE end_reason = 'replied') AS replied,
                    count(*) FILTER (WHERE end_reason = 'bounced') AS bounced,
                    count(*) FILTER (WHERE end_reason = 'complained') AS complained
             FROM enrollments WHERE sequence_id = s.id) e
         CROSS JOIN LATERAL (
             SELECT count(*) AS sends_today FROM send_ledger l
             WHERE l.sequence_id = s.id AND l.created_at >= d.midnight - interval '1 day'
               AND l.state IN ('SENT', 'BOUNCED', 'COMPLAINED') AND l.sent_at >= d.midnight) t
         WHERE s.workspace_id = $1 AND ($2::uuid IS NULL OR s.id = $2)
         ORDER BY s.created_at DESC, s.id LIMIT 1000",
    )
    .bind(auth.workspace)
    .bind(only)
    .fetch_all(&state.db)
    .await?;
    Ok(SequenceStatsList { sequences })
}

/// Read one sequence with its steps, triggers and settings.
#[utoipa::path(
    get, operation_id = "get_sequence", path = "/v1/sequences/{id}", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    responses((status = 200, body = Sequence), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_one(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<Sequence> {
    let mut conn = state.db.acquire().await?;
    load_one(&mut conn, auth.workspace, id).await
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(Box::new(e)))
}

pub(crate) fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    Ok(name.to_owned())
}

pub(crate) fn check_timezone(tz: &str) -> Result<String, ApiError> {
    Ok(validate::timezone(tz)
        .map_err(|m| ApiError::invalid("timezone", m))?
        .name()
        .to_owned())
}

/// A sender as stored: `sender_from` or `sender_mailboxes`, and `sender_reply_to`.
pub(crate) struct SenderColumns {
    pub from: Option<String>,
    pub mailboxes: Option<Vec<Uuid>>,
    pub reply_to: Option<String>,
}

/// Checks a sender (`from` or `mailbox_ids`, and `reply_to`) and returns it as stored. The
/// mailboxes are checked, and locked until `conn`'s transaction ends, in `conn`.
pub(crate) async fn check_sender(
    conn: &mut PgConnection,
    workspace: Uuid,
    sender: &SenderIdentity,
) -> Result<SenderColumns, ApiError> {
    let reply_to = sender
        .reply_to
        .as_deref()
        .map(|r| validate::mailbox(r).map_err(|m| ApiError::invalid("sender.reply_to", m)))
        .transpose()?
        .map(|m| m.to_string());
    match (&sender.from, &sender.mailbox_ids) {
        (Some(from), None) => Ok(SenderColumns {
            from: Some(
                validate::mailbox(from)
                    .map_err(|m| ApiError::invalid("sender.from", m))?
                    .to_string(),
            ),
            mailboxes: None,
            reply_to,
        }),
        (None, Some(ids)) => Ok(SenderColumns {
            from: None,
            mailboxes: Some(
                crate::mailboxes::check_sequence_mailboxes(conn, workspace, ids).await?,
            ),
            reply_to,
        }),
        _ => Err(ApiError::invalid(
            "sender",
            "give either \"from\" (an address) or \"mailbox_ids\" (mailboxes of /v1/mailboxes)",
        )),
    }
}

/// Checks a step list; `editing` allows step ids (kept steps).
pub(crate) fn check_steps(steps: &[StepInput], editing: bool) -> Result<(), ApiError> {
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err(ApiError::invalid(
            "steps",
            format!("must have 1 to {MAX_STEPS} steps"),
        ));
    }
    for (i, step) in steps.iter().enumerate() {
        if step.id.is_some() && !editing {
            return Err(ApiError::invalid(
                format!("steps[{i}].id"),
                "a new sequence's steps have no id",
            ));
        }
        if step.position.is_some_and(|p| p < 1) {
            return Err(ApiError::invalid(
                format!("steps[{i}].position"),
                "must be at least 1",
            ));
        }
        // A threaded follow-up may leave its subject empty: it goes out as `Re: <first>`.
        if step.subject.trim().is_empty() && !(step.thread && i > 0) {
            return Err(ApiError::invalid(
                format!("steps[{i}].subject"),
                if step.thread {
                    "must not be empty on the first step (a later threaded step may leave it empty)"
                } else {
                    "must not be empty (unless the step is threaded: \"thread\": true)"
                },
            ));
        }
        template::validate(&step.subject)
            .map_err(|m| ApiError::invalid(format!("steps[{i}].subject"), m))?;
        template::validate(&step.body)
            .map_err(|m| ApiError::invalid(format!("steps[{i}].body"), m))?;
        // Templates over the rendered limits can never render under them.
        validate::text(&step.subject, limits::SUBJECT_BYTES)
            .map_err(|m| ApiError::invalid(format!("steps[{i}].subject"), m))?;
        validate::multiline(&step.body, limits::BODY_BYTES)
            .map_err(|m| ApiError::invalid(format!("steps[{i}].body"), m))?;
        if let Some(lateness) = &step.max_lateness {
            pulse_shared::limits::check_lateness(lateness)
                .map_err(|m| ApiError::invalid(format!("steps[{i}].max_lateness"), m))?;
        }
        if let Some(html) = &step.html {
            if html.trim().is_empty() {
                return Err(ApiError::invalid(
                    format!("steps[{i}].html"),
                    "must not be empty (leave it out for a text-only step)",
                ));
            }
            template::validate(html)
                .map_err(|m| ApiError::invalid(format!("steps[{i}].html"), m))?;
            validate::multiline(html, limits::BODY_BYTES)
                .map_err(|m| ApiError::invalid(format!("steps[{i}].html"), m))?;
        }
        step.timing
            .validate()
            .map_err(|m| ApiError::invalid(format!("steps[{i}].timing"), m))?;
    }
    Ok(())
}

/// A note when no step shows the lead's unsubscribe link (`{{ unsubscribe_url }}`): the
/// `List-Unsubscribe` header still gives mail clients their button.
pub(crate) fn unsubscribe_link_note(steps: &[Step]) -> Option<String> {
    let shows = |t: &str| t.contains("unsubscribe_url");
    let any = steps
        .iter()
        .any(|s| shows(&s.body) || s.html.as_deref().is_some_and(shows));
    (!any).then(|| {
        "no step shows {{ unsubscribe_url }}: recipients can unsubscribe only through their mail \
         client's button (the List-Unsubscribe header every message carries)"
            .to_owned()
    })
}

pub(crate) fn check_triggers(triggers: &[TriggerSpec]) -> Result<(), ApiError> {
    for (i, trigger) in triggers.iter().enumerate() {
        let (field, name) = match trigger {
            TriggerSpec::TagApplied { tag } => ("tag", tag),
            TriggerSpec::ListAdded { list } => ("list", list),
            TriggerSpec::LeadScore { .. } => continue,
        };
        let field = format!("triggers[{i}].{field}");
        if name.trim().is_empty() {
            return Err(ApiError::invalid(field, "must not be empty"));
        }
        validate::text(name, limits::TEXT_BYTES).map_err(|m| ApiError::invalid(field, m))?;
    }
    Ok(())
}

/// Checks a sequence's priority (0–9) and returns it as stored.
pub(crate) fn check_priority(priority: Option<i32>) -> Result<Option<i16>, ApiError> {
    match priority {
        None => Ok(None),
        Some(p @ 0..=9) => Ok(Some(p as i16)),
        Some(_) => Err(ApiError::invalid("priority", "must be 0 to 9")),
    }
}

/// Checks guardrail settings and returns what to store (`None`: the defaults).
pub(crate) fn check_guardrails(
    guardrails: Option<&Guardrails>,
) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(g) = guardrails else {
        return Ok(None);
    };
    g.check()
        .map_err(|(field, m)| ApiError::invalid(field, m))?;
    Ok(Some(to_json(g)?))
}

pub(crate) fn check_settings(
    window: Option<&SendWindow>,
    rate: Option<i32>,
) -> Result<(), ApiError> {
    if let Some(w) = window {
        w.validate()
            .map_err(|(field, m)| ApiError::invalid(format!("send_window.{field}"), m))?;
    }
    if rate.is_some_and(|r| r < 1) {
        return Err(ApiError::invalid(
            "max_sends_per_minute",
            "must be at least 1",
        ));
    }
    Ok(())
}

pub(crate) async fn insert_step(
    conn: &mut PgConnection,
    sequence: Uuid,
    position: i32,
    step: &StepInput,
) -> Result<Uuid, ApiError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO sequence_steps (id, sequence_id, position, timing, subject, body, end_date,
                                     html, thread, max_lateness)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(sequence)
    .bind(position)
    .bind(to_json(&step.timing)?)
    .bind(&step.subject)
    .bind(&step.body)
    .bind(step.end_date)
    .bind(&step.html)
    .bind(step.thread)
    .bind(step.max_lateness.as_deref().map(str::trim))
    .execute(conn)
    .await?;
    Ok(id)
}

pub(crate) async fn replace_triggers(
    conn: &mut PgConnection,
    workspace: Uuid,
    sequence: Uuid,
    triggers: &[TriggerSpec],
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM triggers WHERE sequence_id = $1")
        .bind(sequence)
        .execute(&mut *conn)
        .await?;
    for (position, trigger) in triggers.iter().enumerate() {
        let (kind, tag, list, min_score, mode) = match trigger {
            TriggerSpec::TagApplied { tag } => ("tag_applied", Some(tag.trim()), None, None, None),
            TriggerSpec::ListAdded { list } => ("list_added", None, Some(list.trim()), None, None),
            TriggerSpec::LeadScore { min_score, mode } => {
                ("lead_score", None, None, Some(*min_score), Some(*mode))
            }
        };
        sqlx::query(
            "INSERT INTO triggers (id, workspace_id, sequence_id, position, kind, tag, list, min_score,
                                   score_mode)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(Uuid::new_v4())
        .bind(workspace)
        .bind(sequence)
        .bind(position as i32 + 1)
        .bind(kind)
        .bind(tag)
        .bind(list)
        .bind(min_score)
        .bind(mode.unwrap_or_default().as_str())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Stores `sequence` as its current version in the edit history.
pub(crate) async fn record_version(
    conn: &mut PgConnection,
    sequence: &Sequence,
    actor: &str,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO sequence_versions (sequence_id, version, snapshot, actor) VALUES ($1, $2, $3, $4)",
    )
    .bind(sequence.id)
    .bind(sequence.version)
    .bind(to_json(sequence)?)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(())
}

/// One sequence of `workspace`, or 404.
pub(crate) async fn load_one(
    conn: &mut PgConnection,
    workspace: Uuid,
    id: Uuid,
) -> Result<Sequence, ApiError> {
    load(conn, workspace, &[id])
        .await?
        .pop()
        .ok_or(ApiError::NotFound("sequence"))
}

/// Loads sequences of `workspace` with their live steps and triggers, in the order of `ids`.
pub(crate) async fn load(
    conn: &mut PgConnection,
    workspace: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Sequence>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, name, status, timezone, sender_from, sender_reply_to, sender_mailboxes,
                version, send_window,
                end_date,
                max_sends_per_minute, COALESCE(limits, '[]'::jsonb) AS limits, guardrails,
                priority::int4 AS priority,
                exit_on_reply,
                created_at, updated_at
         FROM sequences WHERE workspace_id = $1 AND id = ANY($2)",
    )
    .bind(workspace)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let steps = sqlx::query(
        "SELECT id, sequence_id, position, subject, body, html, thread, timing, end_date,
                max_lateness
         FROM sequence_steps
         WHERE sequence_id = ANY($1) AND deleted_at IS NULL ORDER BY position",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let triggers = sqlx::query(
        "SELECT sequence_id, kind, tag, list, min_score, score_mode FROM triggers
         WHERE sequence_id = ANY($1) ORDER BY position",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
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
                html: s.get("html"),
                thread: s.get("thread"),
                timing,
                end_date: s.get::<Option<DateTime<Utc>>, _>("end_date"),
                max_lateness: s.get("max_lateness"),
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
                    mode: pulse_shared::model::ScoreMode::from_stored(t.get("score_mode")),
                },
                other => return Err(corrupt(format!("unknown trigger kind {other}"))),
            });
        }
        let window: Option<serde_json::Value> = row.get("send_window");
        out.push(Sequence {
            id: *id,
            name: row.get("name"),
            status: row.get("status"),
            timezone: row.get("timezone"),
            sender: SenderIdentity {
                from: row.get("sender_from"),
                mailbox_ids: row.get("sender_mailboxes"),
                reply_to: row.get("sender_reply_to"),
            },
            version: row.get("version"),
            steps: seq_steps,
            triggers: seq_triggers,
            send_window: window
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| corrupt(format!("send window: {e}")))?,
            end_date: row.get("end_date"),
            max_sends_per_minute: row.get("max_sends_per_minute"),
            limits: serde_json::from_value(row.get("limits"))
                .map_err(|e| corrupt(format!("limits: {e}")))?,
            guardrails: Guardrails::from_stored(row.get("guardrails"))?,
            priority: row.get("priority"),
            exit_on_reply: ExitOnReply::from_stored(row.get("exit_on_reply")),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        });
    }
    Ok(out)
}

/// The status of a sequence of `workspace`, locked for the rest of the transaction
/// (`FOR UPDATE` for control actions, so they serialize with each other and with enrollments).
pub(crate) async fn lock_status(
    conn: &mut PgConnection,
    workspace: Uuid,
    id: Uuid,
) -> Result<SequenceStatus, ApiError> {
    let status: Option<SequenceStatus> = sqlx::query_scalar(
        "SELECT status FROM sequences WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(workspace)
    .fetch_optional(conn)
    .await?;
    status.ok_or(ApiError::NotFound("sequence"))
}

/// For read-only helpers that only have a pool.
pub(crate) async fn exists(db: &PgPool, workspace: Uuid, id: Uuid) -> Result<(), ApiError> {
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM sequences WHERE id = $1 AND workspace_id = $2")
            .bind(id)
            .bind(workspace)
            .fetch_optional(db)
            .await?;
    found.map(|_| ()).ok_or(ApiError::NotFound("sequence"))
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn create(
        State(state): State<ApiState>,
        auth: Auth,
        ApiJson(req): ApiJson<CreateSequence>,
    ) -> ApiResult<Created<Sequence>> {
        super::create(&state, &auth, req).await
    }

    pub async fn list(
        State(state): State<ApiState>,
        auth: Auth,
        ApiQuery(page): ApiQuery<SequencePage>,
    ) -> ApiResult<Json<SequenceList>> {
        super::list(&state, &auth, page).await.map(Json)
    }

    pub async fn stats(
        State(state): State<ApiState>,
        auth: Auth,
    ) -> ApiResult<Json<SequenceStatsList>> {
        super::stats(&state, &auth).await.map(Json)
    }

    pub async fn get_one(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<Sequence>> {
        super::get_one(&state, &auth, id).await.map(Json)
    }
}
