//! The send history: the ledger — what actually went out (or was attempted), per sequence, per
//! enrollment, or across the workspace by lead, state and time range. It survives a sequence's
//! deletion. The only writes here are an operator's resolutions of UNKNOWN sends, one key or
//! many at once, each through `ledger::resolve` and audited.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use pulse_shared::{
    domain::validate,
    http::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth},
    ledger::{self, Resolution},
    model::{LedgerState, ResolveSend, Send, SendList},
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{ApiState, Page};

const SEND_COLUMNS: &str = "sl.idempotency_key, sl.enrollment_id, sl.sequence_id,
        l.email AS lead_email, sl.step_id, sl.position AS step_position, sl.generation, sl.state,
        sl.message_id, sl.smtp_code, sl.smtp_reply, sl.attempts, sr.sequence_version, sl.sent_at,
        sl.updated_at, sr.from_addr, sr.mailbox_id, sl.feedback_at, sl.feedback";

/// The ledger entries' joins (`sl` stands for a ledger row: the table itself, or a subquery).
const SEND_JOINS: &str =
    "JOIN leads l ON l.id = sl.lead_id JOIN step_runs sr ON sr.id = sl.step_run_id";

/// Filters of the send history.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SendFilter {
    /// Only this sequence's sends.
    pub sequence_id: Option<Uuid>,
    /// Only sends to this lead (email).
    #[param(format = "address")]
    pub lead: Option<String>,
    /// Only sends in this ledger state (upper or lower case).
    #[param(
        pattern = "^(SENDING|SENT|DEFERRED|FAILED|UNKNOWN|BOUNCED|COMPLAINED|sending|sent|deferred|failed|unknown|bounced|complained)$"
    )]
    pub state: Option<String>,
    /// Only sends of the step at this position.
    pub step: Option<i32>,
    /// Only entries first attempted at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only entries first attempted before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Most items returned (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Continue after this idempotency key (from the previous page's `next`).
    #[param(format = "text")]
    pub after: Option<String>,
}

async fn query(state: &ApiState, workspace: Uuid, f: SendFilter) -> Result<SendList, ApiError> {
    let limit = Page { limit: f.limit }.limit()?;
    if let Some(after) = &f.after {
        validate::no_control(after).map_err(|m| ApiError::invalid("after", m))?;
    }
    // A sequence id that names nothing is a mistake, not "nothing was sent".
    if let Some(id) = f.sequence_id {
        crate::sequences::exists(&state.db, workspace, id).await?;
    }
    let lead = f
        .lead
        .as_deref()
        .map(|l| validate::email(l).map_err(|m| ApiError::invalid("lead", m)))
        .transpose()?;
    let st = f
        .state
        .as_deref()
        .map(|s| s.to_uppercase().parse::<LedgerState>())
        .transpose()
        .map_err(|e| ApiError::invalid("state", e.to_string()))?;
    // The ledger's own filters, on `sl`; the cursor's time bounds the index range too.
    let filters = "($4::text IS NULL OR sl.state = $4)
           AND ($5::timestamptz IS NULL OR sl.created_at >= $5)
           AND ($6::timestamptz IS NULL OR sl.created_at < $6)
           AND ($7::text IS NULL OR (sl.created_at >=
                    (SELECT created_at FROM send_ledger WHERE idempotency_key = $7)
                AND (sl.created_at, sl.idempotency_key) >
                    (SELECT created_at, idempotency_key FROM send_ledger WHERE idempotency_key = $7)))
           AND ($9::int IS NULL OR sl.position = $9)";
    let order = "ORDER BY sl.created_at, sl.idempotency_key LIMIT $8";
    // Across the workspace, unfiltered by sequence or lead: the first page of each sequence by
    // its (sequence_id, created_at) index, then merged. One statement over the whole ledger
    // took a second at a million sends (`make bench-hub`); this reads a page per sequence.
    let sql = if f.sequence_id.is_none() && lead.is_none() {
        format!(
            "SELECT {SEND_COLUMNS} FROM sequences s
             CROSS JOIN LATERAL (
                 SELECT * FROM send_ledger sl
                 WHERE sl.sequence_id = s.id AND {filters} {order}) sl
             {SEND_JOINS}
             WHERE s.workspace_id = $1 AND $2::uuid IS NULL AND $3::text IS NULL {order}"
        )
    } else {
        format!(
            "SELECT {SEND_COLUMNS} FROM send_ledger sl {SEND_JOINS}
             WHERE sl.workspace_id = $1
               AND ($2::uuid IS NULL OR sl.sequence_id = $2)
               AND ($3::text IS NULL OR l.email = $3)
               AND {filters} {order}"
        )
    };
    let sends: Vec<Send> = sqlx::query_as(&sql)
        .bind(workspace)
        .bind(f.sequence_id)
        .bind(lead)
        .bind(st)
        .bind(f.since)
        .bind(f.until)
        .bind(f.after)
        .bind(limit)
        .bind(f.step)
        .fetch_all(&state.db)
        .await?;
    let next = (sends.len() as i64 == limit)
        .then(|| sends.last().map(|s| s.idempotency_key.clone()))
        .flatten();
    Ok(SendList { sends, next })
}

/// What went out: the ledger across the workspace, oldest first, filtered by sequence, lead,
/// state and time range.
#[utoipa::path(
    get, path = "/v1/sends", tag = "sends",
    params(SendFilter),
    responses((status = 200, body = SendList), (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn search(state: &ApiState, auth: &Auth, filter: SendFilter) -> ApiResult<SendList> {
    query(state, auth.workspace, filter).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SequenceSends {
    /// Most items returned (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Continue after this idempotency key (from the previous page's `next`).
    #[param(format = "text")]
    pub after: Option<String>,
}

/// What went out (or was attempted) for a sequence, oldest first.
#[utoipa::path(
    get, path = "/v1/sequences/{id}/sends", tag = "sends",
    params(("id" = Uuid, Path, description = "Sequence id"), SequenceSends),
    responses((status = 200, body = SendList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn for_sequence(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    page: SequenceSends,
) -> ApiResult<SendList> {
    crate::sequences::exists(&state.db, auth.workspace, id).await?;
    let filter = SendFilter {
        sequence_id: Some(id),
        limit: page.limit,
        after: page.after,
        ..Default::default()
    };
    query(state, auth.workspace, filter).await
}

/// What went out (or was attempted) for one enrollment, in step order.
#[utoipa::path(
    get, path = "/v1/enrollments/{id}/sends", tag = "sends",
    params(("id" = Uuid, Path, description = "Enrollment id")),
    responses((status = 200, body = SendList), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn for_enrollment(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<SendList> {
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM enrollments WHERE id = $1 AND workspace_id = $2")
            .bind(id)
            .bind(auth.workspace)
            .fetch_optional(&state.db)
            .await?;
    found.ok_or(ApiError::NotFound("enrollment"))?;
    let sends: Vec<Send> = sqlx::query_as(&format!(
        "SELECT {SEND_COLUMNS} FROM send_ledger sl {SEND_JOINS}
         WHERE sl.workspace_id = $1 AND sl.enrollment_id = $2 ORDER BY sl.position, sl.created_at"
    ))
    .bind(auth.workspace)
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(SendList { sends, next: None })
}

/// Settle an UNKNOWN send (a worker died after claiming it, so the relay may or may not have
/// accepted it): `sent` records it SENT and moves the enrollment on; `resend` sends it again
/// under the same key. Check the relay's logs for the Message-ID first.
#[utoipa::path(
    post, path = "/v1/sends/{key}/resolve", tag = "sends",
    params(("key" = String, Path, description = "Idempotency key")),
    request_body = ResolveSend,
    responses((status = 200, body = SendList, description = "The send after resolution"),
              (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 409, description = "Not UNKNOWN", body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn resolve(
    state: &ApiState,
    auth: &Auth,
    key: String,
    req: ResolveSend,
) -> ApiResult<SendList> {
    let how = resolution(&req.outcome)?;
    let note = resolution_note("resolved", &req.outcome, auth, req.note.as_deref());
    let current: Option<String> = sqlx::query_scalar(
        "SELECT state FROM send_ledger WHERE idempotency_key = $1 AND workspace_id = $2",
    )
    .bind(&key)
    .bind(auth.workspace)
    .fetch_optional(&state.db)
    .await?;
    let current = current.ok_or(ApiError::NotFound("send"))?;
    if !resolve_one(state, auth, &key, how, &req.outcome, &note).await? {
        return Err(ApiError::Conflict(format!(
            "the send is {current}, not UNKNOWN"
        )));
    }
    let sends: Vec<Send> = sqlx::query_as(&format!(
        "SELECT {SEND_COLUMNS} FROM send_ledger sl {SEND_JOINS}
         WHERE sl.workspace_id = $1 AND sl.idempotency_key = $2"
    ))
    .bind(auth.workspace)
    .bind(&key)
    .fetch_all(&state.db)
    .await?;
    Ok(SendList { sends, next: None })
}

/// What the ledger records with a resolution: how, by whom, and the operator's note.
fn resolution_note(what: &str, outcome: &str, auth: &Auth, note: Option<&str>) -> String {
    let note = note.map(|n| format!(": {n}")).unwrap_or_default();
    format!("{what} as {outcome} by {}{note}", auth.actor)
}

fn resolution(outcome: &str) -> Result<Resolution, ApiError> {
    match outcome {
        "sent" => Ok(Resolution::Sent),
        "resend" => Ok(Resolution::Resend),
        other => Err(ApiError::invalid(
            "outcome",
            format!("{other:?} is not \"sent\" or \"resend\""),
        )),
    }
}

/// Resolves one UNKNOWN key and audits it; `false` when the key is not UNKNOWN (any more).
async fn resolve_one(
    state: &ApiState,
    auth: &Auth,
    key: &str,
    how: Resolution,
    outcome: &str,
    note: &str,
) -> Result<bool, ApiError> {
    let Some((enrollment, sequence)) =
        ledger::resolve(&state.db, auth.workspace, key, how, note).await?
    else {
        return Ok(false);
    };
    let mut conn = state.db.acquire().await?;
    crate::control::audit(
        &mut conn,
        auth.workspace,
        sequence,
        Some(enrollment),
        &auth.actor,
        "send_resolved",
        Some(json!({"key": key, "state": LedgerState::Unknown})),
        Some(json!({"outcome": outcome, "note": note})),
    )
    .await?;
    Ok(true)
}

/// Most UNKNOWN sends one bulk resolution settles; run it again for more.
pub const BULK_RESOLVE_MAX: i64 = 10_000;

/// Settle many UNKNOWN sends at once: those of one sequence and/or first attempted in a time
/// range, all as `sent` or all as `resend`. Each is resolved and audited exactly as the
/// single resolution would. `confirm: true` is required, and at least one filter: check the
/// relay's logs for their Message-IDs first (`GET /v1/sends?state=UNKNOWN`).
#[utoipa::path(
    post, path = "/v1/sends/resolve", tag = "sends",
    request_body = ResolveMany,
    responses((status = 200, body = ResolvedMany, description = "What was settled"),
              (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn resolve_many(
    state: &ApiState,
    auth: &Auth,
    req: ResolveMany,
) -> ApiResult<ResolvedMany> {
    let how = resolution(&req.outcome)?;
    if req.sequence_id.is_none() && req.since.is_none() && req.until.is_none() {
        return Err(ApiError::invalid(
            "sequence_id",
            "name a sequence_id, a since/until range, or both",
        ));
    }
    if req.confirm != Some(true) {
        return Err(ApiError::invalid(
            "confirm",
            "settling sends in bulk needs \"confirm\": true",
        ));
    }
    if let Some(sequence) = req.sequence_id {
        crate::sequences::exists(&state.db, auth.workspace, sequence).await?;
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM send_ledger
         WHERE workspace_id = $1 AND state = 'UNKNOWN'
           AND ($2::uuid IS NULL OR sequence_id = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)
         ORDER BY created_at, idempotency_key LIMIT $5",
    )
    .bind(auth.workspace)
    .bind(req.sequence_id)
    .bind(req.since)
    .bind(req.until)
    .bind(BULK_RESOLVE_MAX)
    .fetch_all(&state.db)
    .await?;
    let note = resolution_note("resolved in bulk", &req.outcome, auth, req.note.as_deref());
    let mut resolved = Vec::with_capacity(keys.len());
    for key in keys {
        // A key settled meanwhile (by another operator) is skipped, not an error.
        if resolve_one(state, auth, &key, how, &req.outcome, &note).await? {
            resolved.push(key);
        }
    }
    let remaining: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM send_ledger
         WHERE workspace_id = $1 AND state = 'UNKNOWN'
           AND ($2::uuid IS NULL OR sequence_id = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)",
    )
    .bind(auth.workspace)
    .bind(req.sequence_id)
    .bind(req.since)
    .bind(req.until)
    .fetch_one(&state.db)
    .await?;
    tracing::info!(actor = %auth.actor, outcome = %req.outcome, resolved = resolved.len(), remaining, "UNKNOWN sends resolved in bulk");
    Ok(ResolvedMany {
        outcome: req.outcome,
        resolved: resolved.len(),
        keys: resolved,
        remaining,
    })
}

/// `POST /v1/sends/resolve`: which UNKNOWN sends to settle, and how.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveMany {
    /// `sent` or `resend`, for all of them.
    #[schema(pattern = "^(sent|resend)$")]
    pub outcome: String,
    /// Only this sequence's.
    pub sequence_id: Option<Uuid>,
    /// Only those first attempted at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only those first attempted before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Recorded with each resolution.
    pub note: Option<String>,
    /// Must be `true`.
    pub confirm: Option<bool>,
}

/// What a bulk resolution settled.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ResolvedMany {
    pub outcome: String,
    pub resolved: usize,
    /// The idempotency keys settled.
    pub keys: Vec<String>,
    /// UNKNOWN sends still matching the filters (more than one call settles at once).
    pub remaining: i64,
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn search(
        State(state): State<ApiState>,
        auth: Auth,
        ApiQuery(filter): ApiQuery<SendFilter>,
    ) -> ApiResult<Json<SendList>> {
        super::search(&state, &auth, filter).await.map(Json)
    }

    pub async fn for_sequence(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiQuery(page): ApiQuery<SequenceSends>,
    ) -> ApiResult<Json<SendList>> {
        super::for_sequence(&state, &auth, id, page).await.map(Json)
    }

    pub async fn for_enrollment(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<SendList>> {
        super::for_enrollment(&state, &auth, id).await.map(Json)
    }

    pub async fn resolve(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(key): ApiPath<String>,
        ApiJson(req): ApiJson<ResolveSend>,
    ) -> ApiResult<Json<SendList>> {
        super::resolve(&state, &auth, key, req).await.map(Json)
    }

    pub async fn resolve_many(
        State(state): State<ApiState>,
        auth: Auth,
        ApiJson(req): ApiJson<ResolveMany>,
    ) -> ApiResult<Json<ResolvedMany>> {
        super::resolve_many(&state, &auth, req).await.map(Json)
    }
}
