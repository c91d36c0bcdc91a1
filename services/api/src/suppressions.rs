//! `/v1/suppressions`: the workspace's suppression list. Owns adding entries (and ending, in
//! batches, every ACTIVE enrollment of the leads they reach, returning only once nothing more can
//! go out to them: the guarantee pause gives), listing them and lifting one (recorded with who
//! and why). What an entry is, and the check at enrollment, are `pulse_shared::suppression`'s.

use axum::{Json, extract::State, http::StatusCode};
use pulse_shared::{
    domain::validate,
    http::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Auth},
    model::{
        AddSuppressions, EnrollmentStatus, Suppression, SuppressionList, SuppressionReason,
        SuppressionsAdded,
    },
    suppression::{self, Entry},
    transitions,
};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::{
    ApiState,
    control::audit,
    drain::{Scope, in_flight_warning, wait_in_flight},
};

/// Enrollments ended per transaction.
const CHUNK: i64 = 1000;

/// Add addresses or domains to the suppression list; ends every ACTIVE enrollment of the leads
/// they reach.
#[utoipa::path(
    post, path = "/v1/suppressions", tag = "suppressions",
    request_body = AddSuppressions,
    responses(
        (status = 200, body = SuppressionsAdded),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 401, body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn add(
    State(state): State<ApiState>,
    auth: Auth,
    ApiJson(req): ApiJson<AddSuppressions>,
) -> ApiResult<Json<SuppressionsAdded>> {
    if req.entries.is_empty() || req.entries.len() > suppression::MAX_PER_CALL {
        return Err(ApiError::invalid(
            "entries",
            format!("must have 1 to {} entries", suppression::MAX_PER_CALL),
        ));
    }
    let mut entries = Vec::with_capacity(req.entries.len());
    for (i, e) in req.entries.iter().enumerate() {
        let entry = Entry::parse(e.email.as_deref(), e.domain.as_deref())
            .map_err(|(field, m)| ApiError::invalid(format!("entries[{i}].{field}"), m))?;
        entries.push((entry, e.reason.unwrap_or(SuppressionReason::Manual)));
    }
    let source = format!("api:{}", auth.actor);
    Ok(Json(
        suppress(&state, auth.workspace, &auth.actor, &source, entries).await?,
    ))
}

/// Adds `entries` (idempotent), then ends the ACTIVE enrollments they reach and waits for sends
/// already claimed. Shared by the API and the one-click endpoint.
pub(crate) async fn suppress(
    state: &ApiState,
    workspace: Uuid,
    actor: &str,
    source: &str,
    mut entries: Vec<(Entry, SuppressionReason)>,
) -> Result<SuppressionsAdded, ApiError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let kinds: Vec<&str> = entries.iter().map(|(e, _)| e.kind()).collect();
    let values: Vec<&str> = entries.iter().map(|(e, _)| e.value()).collect();
    let reasons: Vec<&str> = entries.iter().map(|(_, r)| r.as_str()).collect();
    let added = sqlx::query(
        "INSERT INTO suppressions (workspace_id, kind, value, reason, source)
         SELECT $1, k, v, r, $5 FROM UNNEST($2::text[], $3::text[], $4::text[]) AS u(k, v, r)
         ON CONFLICT DO NOTHING",
    )
    .bind(workspace)
    .bind(&kinds)
    .bind(&values)
    .bind(&reasons)
    .bind(source)
    .execute(&state.db)
    .await?
    .rows_affected() as usize;
    let mut out = SuppressionsAdded {
        added,
        already: entries.len() - added,
        enrollments_cancelled: 0,
        warnings: Vec::new(),
    };
    let mut leads = Vec::new();
    // An address's own reason wins over its domain's: addresses first.
    for reason in SuppressionReason::ALL {
        let (emails, domains): (Vec<&Entry>, Vec<&Entry>) = entries
            .iter()
            .filter(|(_, r)| *r == reason)
            .map(|(e, _)| e)
            .partition(|e| matches!(e, Entry::Email(_)));
        for group in [emails, domains] {
            if group.is_empty() {
                continue;
            }
            let (n, mut hit) = end_enrollments(state, workspace, actor, &group, reason).await?;
            out.enrollments_cancelled += n;
            leads.append(&mut hit);
        }
    }
    leads.sort_unstable();
    leads.dedup();
    if !leads.is_empty() {
        let left = wait_in_flight(&state.db, Scope::Leads(leads), state.drain_timeout).await?;
        out.warnings
            .extend(in_flight_warning(left, state.drain_timeout));
    }
    tracing::info!(%workspace, %actor, added = out.added, cancelled = out.enrollments_cancelled, "suppressions added");
    Ok(out)
}

/// Ends, in chunks of [`CHUNK`] in id order, the ACTIVE enrollments of the leads `entries`
/// (all addresses or all domains) reach. Returns how many, and their leads.
async fn end_enrollments(
    state: &ApiState,
    workspace: Uuid,
    actor: &str,
    entries: &[&Entry],
    reason: SuppressionReason,
) -> Result<(usize, Vec<Uuid>), ApiError> {
    let values: Vec<&str> = entries.iter().map(|e| e.value()).collect();
    // Addresses by the (workspace, email) index; domains by the lead's address's domain.
    let matches = match entries.first() {
        Some(Entry::Domain(_)) => "split_part(l.email, '@', 2) = ANY($2)",
        _ => "l.email = ANY($2)",
    };
    let (mut ended, mut leads, mut last) = (0, Vec::new(), None::<Uuid>);
    loop {
        let mut tx = state.db.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT e.id, e.sequence_id, e.lead_id FROM enrollments e
             JOIN leads l ON l.id = e.lead_id
             WHERE l.workspace_id = $1 AND {matches} AND e.status = 'ACTIVE'
               AND ($3::uuid IS NULL OR e.id > $3)
             ORDER BY e.id LIMIT $4
             FOR UPDATE OF e"
        ))
        .bind(workspace)
        .bind(&values)
        .bind(last)
        .bind(CHUNK)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        last = rows.last().map(|r| r.get("id"));
        let ends: Vec<(Uuid, String)> = rows
            .iter()
            .map(|r| (r.get("id"), reason.as_str().to_owned()))
            .collect();
        let done =
            transitions::end_enrollments(&mut tx, EnrollmentStatus::Cancelled, &ends).await?;
        for row in &rows {
            let (id, sequence, lead): (Uuid, Uuid, Uuid) =
                (row.get("id"), row.get("sequence_id"), row.get("lead_id"));
            if done.binary_search(&id).is_ok() {
                ended += 1;
                leads.push(lead);
                audit(
                    &mut tx,
                    workspace,
                    sequence,
                    Some(id),
                    actor,
                    "enrollment_cancelled",
                    Some(json!({"status": EnrollmentStatus::Active})),
                    Some(json!({"status": EnrollmentStatus::Cancelled, "reason": reason.as_str()})),
                )
                .await?;
            }
        }
        tx.commit().await?;
    }
    Ok((ended, leads))
}

/// Filters and cursor of the suppression list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuppressionFilter {
    /// This address (and, when its domain is suppressed, that entry).
    pub email: Option<String>,
    /// Entries of this domain: the domain itself and its addresses.
    pub domain: Option<String>,
    pub reason: Option<SuppressionReason>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1 to 1000; default 100.
    pub limit: Option<i64>,
}

/// The suppression list, by value.
#[utoipa::path(
    get, path = "/v1/suppressions", tag = "suppressions",
    params(SuppressionFilter),
    responses((status = 200, body = SuppressionList), (status = 400, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<ApiState>,
    auth: Auth,
    ApiQuery(f): ApiQuery<SuppressionFilter>,
) -> ApiResult<Json<SuppressionList>> {
    let limit = f.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 1000"));
    }
    let email = f
        .email
        .as_deref()
        .map(|e| Entry::parse(Some(e), None).map_err(|(_, m)| ApiError::invalid("email", m)))
        .transpose()?;
    let domain = f
        .domain
        .as_deref()
        .map(|d| validate::domain(d).map_err(|m| ApiError::invalid("domain", m)))
        .transpose()?;
    let email_domain = email
        .as_ref()
        .map(|e| suppression::domain_of(e.value()).to_owned());
    let rows = sqlx::query(
        "SELECT kind, value, reason, source, created_at FROM suppressions
         WHERE workspace_id = $1
           AND ($2::text IS NULL OR (kind = 'email' AND value = $2) OR (kind = 'domain' AND value = $3))
           AND ($4::text IS NULL OR value = $4 OR value LIKE '%@' || $4)
           AND ($5::text IS NULL OR reason = $5)
           AND ($6::text IS NULL OR value > $6)
         ORDER BY value, kind LIMIT $7",
    )
    .bind(auth.workspace)
    .bind(email.as_ref().map(Entry::value))
    .bind(email_domain)
    .bind(domain)
    .bind(f.reason.map(SuppressionReason::as_str))
    .bind(f.after)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let mut suppressions = Vec::with_capacity(rows.len());
    for r in rows {
        let reason: String = r.get("reason");
        suppressions.push(Suppression {
            kind: r.get("kind"),
            value: r.get("value"),
            reason: SuppressionReason::parse(&reason)
                .ok_or_else(|| ApiError::Internal(format!("stored reason {reason}").into()))?,
            source: r.get("source"),
            created_at: r.get("created_at"),
        });
    }
    let next = (suppressions.len() as i64 > limit).then(|| {
        suppressions.truncate(limit as usize);
        suppressions.last().map(|s| s.value.clone())
    });
    Ok(Json(SuppressionList {
        suppressions,
        next: next.flatten(),
    }))
}

/// Why a suppression is lifted.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiftQuery {
    /// Recorded with who lifted it.
    pub reason: Option<String>,
}

/// Lift a suppression (an address or a domain): the lead can be enrolled again. Recorded with
/// who lifted it and why. Enrollments it ended stay ended (re-enroll them).
#[utoipa::path(
    delete, path = "/v1/suppressions/{value}", tag = "suppressions",
    params(("value" = String, Path, description = "An address or a domain"), LiftQuery),
    responses((status = 204, description = "Lifted"), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn lift(
    State(state): State<ApiState>,
    auth: Auth,
    ApiPath(value): ApiPath<String>,
    ApiQuery(q): ApiQuery<LiftQuery>,
) -> ApiResult<StatusCode> {
    let entry = Entry::parse_value(&value).map_err(|m| ApiError::invalid("value", m))?;
    let why = q
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| format!("lifted by {}", auth.actor));
    if why.chars().count() > 500 {
        return Err(ApiError::invalid("reason", "at most 500 characters"));
    }
    let mut tx = state.db.begin().await?;
    let was: Option<String> = sqlx::query_scalar(
        "DELETE FROM suppressions WHERE workspace_id = $1 AND kind = $2 AND value = $3
         RETURNING reason",
    )
    .bind(auth.workspace)
    .bind(entry.kind())
    .bind(entry.value())
    .fetch_optional(&mut *tx)
    .await?;
    let was = was.ok_or(ApiError::NotFound("suppression"))?;
    sqlx::query(
        "INSERT INTO suppression_lifts (workspace_id, kind, value, reason, was_reason, actor)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(auth.workspace)
    .bind(entry.kind())
    .bind(entry.value())
    .bind(&why)
    .bind(&was)
    .bind(&auth.actor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(workspace = %auth.workspace, actor = %auth.actor, kind = entry.kind(), reason = %why, "suppression lifted");
    Ok(StatusCode::NO_CONTENT)
}
