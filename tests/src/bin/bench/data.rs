//! The bench's data, loaded straight into PostgreSQL: one-step sequences (from a fixed sender or
//! from mailboxes), leads enrolled and due at a chosen rate, and the schedule table grown to a
//! size. Fast bulk statements only; nothing here goes through Pulse's API.

use std::time::Instant;

use pulse_shared::db::DEFAULT_WORKSPACE;
use sqlx::PgPool;
use uuid::Uuid;

use crate::progress;

/// Creates a one-step sequence whose subject carries the lead's email, and returns its ids.
pub(crate) async fn sequence(db: &PgPool) -> anyhow::Result<(Uuid, Uuid)> {
    sequence_in(db, DEFAULT_WORKSPACE, None).await
}

/// [`sequence`] in `workspace`, sending from `mailboxes` when given.
pub(crate) async fn sequence_in(
    db: &PgPool,
    workspace: Uuid,
    mailboxes: Option<&[Uuid]>,
) -> anyhow::Result<(Uuid, Uuid)> {
    let (seq, step) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO sequences (id, workspace_id, name, sender_from, sender_mailboxes)
         VALUES ($1, $2, 'bench', CASE WHEN $3::uuid[] IS NULL THEN 'Bench <bench@example.com>' END, $3)",
    )
    .bind(seq)
    .bind(workspace)
    .bind(mailboxes)
    .execute(db)
    .await?;
    sqlx::query(
        "INSERT INTO sequence_steps (id, sequence_id, position, timing, subject, body)
         VALUES ($1, $2, 1, '{\"type\":\"immediately\"}', 'b {{ lead.email }}', 'benchmark')",
    )
    .bind(step)
    .bind(seq)
    .execute(db)
    .await?;
    Ok((seq, step))
}

/// Inserts `n` leads, enrollments and step runs of `seq`, due from `t0` at `per_second`
/// (all at `t0` when None). Returns the emails in due order.
pub(crate) async fn bulk_enroll(
    db: &PgPool,
    seq: (Uuid, Uuid),
    tag: &str,
    n: usize,
    t0: chrono::DateTime<chrono::Utc>,
    per_second: Option<usize>,
) -> anyhow::Result<()> {
    bulk_enroll_in(db, DEFAULT_WORKSPACE, seq, tag, n, t0, per_second).await
}

/// [`bulk_enroll`] in `workspace`.
pub(crate) async fn bulk_enroll_in(
    db: &PgPool,
    workspace: Uuid,
    seq: (Uuid, Uuid),
    tag: &str,
    n: usize,
    t0: chrono::DateTime<chrono::Utc>,
    per_second: Option<usize>,
) -> anyhow::Result<()> {
    sqlx::query(
        "WITH l AS (
             INSERT INTO leads (id, workspace_id, email, email_given)
             SELECT gen_random_uuid(), $1, $4 || '-' || i || '@example.com', $4 || '-' || i || '@example.com'
             FROM generate_series(0, $5 - 1) i
             RETURNING id, email),
         e AS (
             INSERT INTO enrollments (id, workspace_id, sequence_id, lead_id, source)
             SELECT gen_random_uuid(), $1, $2, id, 'bench' FROM l RETURNING id, lead_id)
         INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position, generation, due_at)
         SELECT gen_random_uuid(), $1, $2, e.id, $3, 1, 1,
                $6 + make_interval(secs => CASE WHEN $7 > 0
                    THEN split_part(split_part(l.email, '@', 1), '-', 2)::float8 / $7 ELSE 0 END)
         FROM e JOIN l ON l.id = e.lead_id",
    )
    .bind(workspace)
    .bind(seq.0)
    .bind(seq.1)
    .bind(tag)
    .bind(n as i64)
    .bind(t0)
    .bind(per_second.unwrap_or(0) as f64)
    .execute(db)
    .await?;
    Ok(())
}

/// Rows loaded per statement by [`fill`].
const FILL_CHUNK: i64 = 250_000;

/// Grows the schedule table by `n` leads, enrollments and step runs of `seq`, due `at` (in the
/// future, so no claim ever takes them), numbered from `from`. Loads in chunks of
/// [`FILL_CHUNK`] rows with ids that grow with the row number (a UUID whose last 12 hex digits
/// are the number), so each chunk appends to the indexes instead of writing all over them: the
/// one-statement random-UUID load took over 37 minutes for 9 million rows here.
pub(crate) async fn fill(
    db: &PgPool,
    seq: (Uuid, Uuid),
    from: i64,
    n: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = 0i64;
    while done < n {
        let (lo, count) = (from + done, FILL_CHUNK.min(n - done));
        sqlx::query(
            "WITH r AS (SELECT i, lpad(to_hex(i), 12, '0') AS h FROM generate_series($4, $4 + $5 - 1) i),
             l AS (
                 INSERT INTO leads (id, workspace_id, email, email_given)
                 SELECT ('f1000000-0000-4000-8000-' || h)::uuid, $1, 'fill-' || h || '@example.com',
                        'fill-' || h || '@example.com' FROM r),
             e AS (
                 INSERT INTO enrollments (id, workspace_id, sequence_id, lead_id, source)
                 SELECT ('f2000000-0000-4000-8000-' || h)::uuid, $1, $2, ('f1000000-0000-4000-8000-' || h)::uuid,
                        'bench' FROM r)
             INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position,
                                    generation, due_at)
             SELECT ('f3000000-0000-4000-8000-' || h)::uuid, $1, $2, ('f2000000-0000-4000-8000-' || h)::uuid,
                    $3, 1, 1, $6 FROM r",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(seq.0)
        .bind(seq.1)
        .bind(lo)
        .bind(count)
        .bind(at)
        .execute(db)
        .await?;
        done += count;
        progress("loading schedule rows", done as usize, n as usize, started);
    }
    eprintln!();
    Ok(())
}
