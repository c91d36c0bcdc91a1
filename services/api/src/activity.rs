//! `GET /v1/sequences/{id}/activity`: a sequence's sending over time (sends claimed per bucket
//! by outcome, and steps held by its pause by when they fell due), its enrollments by status,
//! and the funnel of how many enrollments each step was sent to. The Hub draws its charts from
//! this answer. Read-only; aggregate statements bounded by the sequence's indexes
//! (`send_ledger_by_sequence`, `enrollments_by_sequence`, `step_runs_pending`), run side by
//! side. The funnel counts sent ledger entries per step: an enrollment is sent a step once (a
//! step sent "again" after an UNKNOWN has one entry SENT at most), and a plain count is a
//! quarter of the time of a distinct one over a million sends (`make bench-hub`).

use std::collections::HashMap;

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use pulse_shared::{
    http::{ApiPath, ApiQuery, ApiResult, Auth},
    model::{
        ActivityBucket, ActivityRange, FunnelStep, SequenceActivity, SequenceStatus, StatusCount,
    },
    state::EnrollmentStatus,
};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ApiState;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActivityQuery {
    /// `1h` (by minute), `24h` (by hour, the default) or `7d` (by 6 hours).
    pub range: Option<ActivityRange>,
}

/// A sequence's activity: sends per bucket by outcome (sent, failed, unknown) and steps held by
/// a pause, enrollments by status, and how many enrollments each step was sent to.
#[utoipa::path(
    get, operation_id = "sequence_activity", path = "/v1/sequences/{id}/activity", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id"), ActivityQuery),
    responses((status = 200, body = SequenceActivity), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn activity(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    query: ActivityQuery,
) -> ApiResult<SequenceActivity> {
    let status: Option<SequenceStatus> =
        sqlx::query_scalar("SELECT status FROM sequences WHERE id = $1 AND workspace_id = $2")
            .bind(id)
            .bind(auth.workspace)
            .fetch_optional(&state.db)
            .await?;
    let status = status.ok_or(pulse_shared::http::ApiError::NotFound("sequence"))?;
    let range = query.range.unwrap_or_default();
    let (span, width) = range.seconds();
    let until = Utc::now();
    let first = bucket_of(until - chrono::Duration::seconds(span - width), width);
    let db = &state.db;
    let paused = status == SequenceStatus::Paused;
    let (sends, held, by_status, funnel) = tokio::try_join!(
        sends_by_bucket(db, id, width, first),
        held_by_bucket(db, id, width, first, paused),
        enrollments_by_status(db, id),
        funnel(db, id),
    )?;
    let mut buckets: Vec<ActivityBucket> = (0..span / width)
        .map(|i| ActivityBucket {
            start: first + chrono::Duration::seconds(i * width),
            ..Default::default()
        })
        .collect();
    let index = |at: DateTime<Utc>| ((at - first).num_seconds() / width) as usize;
    for (at, sent, failed, unknown) in sends {
        if let Some(b) = buckets.get_mut(index(at)) {
            (b.sent, b.failed, b.unknown) = (sent, failed, unknown);
        }
    }
    for (at, n) in held {
        if let Some(b) = buckets.get_mut(index(at)) {
            b.held = n;
        }
    }

    let enrollments = EnrollmentStatus::ALL
        .iter()
        .map(|s| StatusCount {
            status: s.as_str().to_owned(),
            count: by_status.get(s.as_str()).copied().unwrap_or(0),
        })
        .collect();

    Ok(SequenceActivity {
        sequence_id: id,
        range,
        bucket_seconds: width,
        since: first,
        until,
        buckets,
        enrollments,
        funnel: funnel
            .into_iter()
            .map(|(step_id, position, subject, leads)| FunnelStep {
                step_id,
                position,
                subject,
                leads,
            })
            .collect(),
    })
}

/// Sends claimed per bucket from `first`: (bucket, sent, failed, unknown).
async fn sends_by_bucket(
    db: &PgPool,
    id: Uuid,
    width: i64,
    first: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, i64, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_bin(make_interval(secs => $2), created_at, TIMESTAMPTZ '2000-01-01') AS b,
                count(*) FILTER (WHERE state IN ('SENT', 'BOUNCED', 'COMPLAINED')),
                count(*) FILTER (WHERE state = 'FAILED'),
                count(*) FILTER (WHERE state = 'UNKNOWN')
         FROM send_ledger WHERE sequence_id = $1 AND created_at >= $3
         GROUP BY b",
    )
    .bind(id)
    .bind(width as f64)
    .bind(first)
    .fetch_all(db)
    .await
}

/// Steps of a paused sequence that fell due in each bucket from `first` (none when active).
async fn held_by_bucket(
    db: &PgPool,
    id: Uuid,
    width: i64,
    first: DateTime<Utc>,
    paused: bool,
) -> Result<Vec<(DateTime<Utc>, i64)>, sqlx::Error> {
    if !paused {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT date_bin(make_interval(secs => $2), due_at, TIMESTAMPTZ '2000-01-01') AS b, count(*)
         FROM step_runs
         WHERE sequence_id = $1 AND state = 'SCHEDULED' AND due_at >= $3 AND due_at <= now()
         GROUP BY b",
    )
    .bind(id)
    .bind(width as f64)
    .bind(first)
    .fetch_all(db)
    .await
}

async fn enrollments_by_status(db: &PgPool, id: Uuid) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM enrollments WHERE sequence_id = $1 GROUP BY status",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Sent entries per step: live steps in order, then deleted steps that were sent.
async fn funnel(
    db: &PgPool,
    id: Uuid,
) -> Result<Vec<(Uuid, Option<i32>, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT st.id, CASE WHEN st.deleted_at IS NULL THEN st.position END, st.subject,
                COALESCE(f.leads, 0)
         FROM sequence_steps st
         LEFT JOIN (SELECT step_id, count(*) AS leads FROM send_ledger
                    WHERE sequence_id = $1 AND state IN ('SENT', 'BOUNCED', 'COMPLAINED')
                    GROUP BY step_id) f ON f.step_id = st.id
         WHERE st.sequence_id = $1 AND (st.deleted_at IS NULL OR f.leads > 0)
         ORDER BY st.deleted_at IS NOT NULL, st.position, st.deleted_at",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// The start of the bucket `at` falls in (buckets are aligned on 2000-01-01, as `date_bin`).
fn bucket_of(at: DateTime<Utc>, width: i64) -> DateTime<Utc> {
    let secs = at.timestamp();
    let origin = 946_684_800; // 2000-01-01T00:00:00Z
    let start = origin + (secs - origin).div_euclid(width) * width;
    DateTime::from_timestamp(start, 0).unwrap_or(at)
}

/// The `/v1` handler: takes the request apart and calls [`activity`].
pub mod v1 {
    use super::*;

    pub async fn activity(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiQuery(query): ApiQuery<ActivityQuery>,
    ) -> ApiResult<Json<SequenceActivity>> {
        super::activity(&state, &auth, id, query).await.map(Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_like_date_bin() {
        let at = DateTime::parse_from_rfc3339("2026-11-28T15:47:12Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            bucket_of(at, 3_600).to_rfc3339(),
            "2026-11-28T15:00:00+00:00"
        );
        assert_eq!(bucket_of(at, 60).to_rfc3339(), "2026-11-28T15:47:00+00:00");
        assert_eq!(
            bucket_of(at, 21_600).to_rfc3339(),
            "2026-11-28T12:00:00+00:00"
        );
    }
}
