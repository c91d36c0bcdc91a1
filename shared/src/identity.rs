//! Lead identity after the fact: bringing stored addresses to their canonical form
//! ([`canonicalize_leads`], run by `pulse migrate`), and merging two leads that turn out to be
//! one mailbox ([`merge_leads`]). New input is canonicalized where it enters
//! (`domain::validate::address`); this module only repairs what was stored before that rule.
//!
//! A merge must keep the promises the two leads had: nothing sent twice (one ACTIVE enrollment
//! per sequence survives), nothing lost (every enrollment, step run and send moves to the lead
//! that is kept) and an opt-out or bounce of either survives. It never sends and never touches
//! the ledger's keys: what went out went out under the key it had.

use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::{db::StoreError, schedule, state::EnrollmentStatus};

/// Who the audit trail names for a merge.
const ACTOR: &str = "pulse migrate";

/// What [`canonicalize_leads`] found and did.
#[derive(Debug, Default)]
pub struct Canonicalized {
    /// Leads whose stored address was rewritten to its canonical form.
    pub rewritten: u64,
    /// (the lead that has the canonical address, a lead whose address canonicalizes to it): the
    /// second was merged into the first.
    pub merged: Vec<(Uuid, Uuid)>,
    /// Stored addresses that no longer pass validation: left as they are.
    pub invalid: u64,
}

/// Rewrites stored addresses that are not in canonical form (only non-ASCII ones can differ:
/// ASCII addresses were always stored lower-cased), and merges a lead whose canonical address
/// another lead already has into that one. Idempotent and cheap once done: it reads only
/// addresses with a non-ASCII character.
pub async fn canonicalize_leads(pool: &PgPool) -> Result<Canonicalized, StoreError> {
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT id, workspace_id, email FROM leads WHERE email ~ '[^\x01-\x7f]' ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?;
    let mut found = Canonicalized::default();
    for (id, workspace, email) in rows {
        let Ok(canonical) = crate::domain::validate::email(&email) else {
            found.invalid += 1;
            continue;
        };
        if canonical == email {
            continue;
        }
        let mut tx = pool.begin().await?;
        let holder: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM leads WHERE workspace_id = $1 AND email = $2")
                .bind(workspace)
                .bind(&canonical)
                .fetch_optional(&mut *tx)
                .await?;
        match holder {
            Some(kept) => {
                let moved = merge_leads(&mut tx, kept, id).await?;
                tracing::warn!(%kept, merged = %id, enrollments = moved.enrollments, cancelled = moved.cancelled, "two leads shared one canonical address; the second was merged into the first");
                found.merged.push((kept, id));
            }
            None => {
                sqlx::query("UPDATE leads SET email = $2, updated_at = now() WHERE id = $1")
                    .bind(id)
                    .bind(&canonical)
                    .execute(&mut *tx)
                    .await?;
                found.rewritten += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(found)
}

/// What [`merge_leads`] moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Enrollments moved to the kept lead.
    pub enrollments: u64,
    /// ACTIVE enrollments of the merged lead cancelled because the kept lead was ACTIVE in the
    /// same sequence.
    pub cancelled: u64,
}

/// Merges lead `other` into lead `kept` (same workspace) inside the caller's transaction, and
/// deletes `other`:
///
/// * fields: `kept`'s where it has one, else `other`'s; attributes merged with `kept`'s values
///   winning; tags and lists unioned; the earliest opt-out, bounce and creation time kept;
/// * enrollments: all move to `kept`. Where both were ACTIVE in one sequence, `other`'s is
///   cancelled (audited as `enrollment_cancelled` by `pulse migrate`): its pending steps are
///   cancelled and a step already queued is dropped by the sender's re-check. An ended
///   enrollment whose generation `kept` already uses is renumbered after the pair's highest
///   (an ACTIVE one never is; the pair's latest is its ACTIVE enrollment, else its highest
///   generation);
/// * sends: the ledger's rows name `kept` (their keys are unchanged).
pub async fn merge_leads(
    conn: &mut PgConnection,
    kept: Uuid,
    other: Uuid,
) -> Result<Merged, StoreError> {
    let locked: Vec<(Uuid, Uuid, Option<String>)> = sqlx::query_as(
        "SELECT id, workspace_id, timezone FROM leads WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind([kept, other])
    .fetch_all(&mut *conn)
    .await?;
    let [a, b] = locked.as_slice() else {
        return Err(StoreError::Corrupt(format!(
            "merging leads {kept} and {other}: {} of them found",
            locked.len()
        )));
    };
    if a.1 != b.1 {
        return Err(StoreError::Corrupt(format!(
            "leads {kept} and {other} are in different workspaces"
        )));
    }
    let workspace = a.1;
    let zone_before = if a.0 == kept { &a.2 } else { &b.2 };
    let zone_after: Option<String> = sqlx::query_scalar(
        "UPDATE leads k SET
             first_name = COALESCE(k.first_name, o.first_name),
             last_name = COALESCE(k.last_name, o.last_name),
             timezone = COALESCE(k.timezone, o.timezone),
             attributes = o.attributes || k.attributes,
             tags = k.tags || ARRAY(SELECT t FROM unnest(o.tags) WITH ORDINALITY AS x(t, n)
                                    WHERE NOT (t = ANY(k.tags)) ORDER BY n),
             lists = k.lists || ARRAY(SELECT t FROM unnest(o.lists) WITH ORDINALITY AS x(t, n)
                                      WHERE NOT (t = ANY(k.lists)) ORDER BY n),
             score = COALESCE(k.score, o.score),
             unsubscribed_at = LEAST(k.unsubscribed_at, o.unsubscribed_at),
             bounced_at = LEAST(k.bounced_at, o.bounced_at),
             created_at = LEAST(k.created_at, o.created_at),
             updated_at = now()
         FROM leads o WHERE k.id = $1 AND o.id = $2
         RETURNING k.timezone",
    )
    .bind(kept)
    .bind(other)
    .fetch_one(&mut *conn)
    .await?;

    // Both leads' enrollments, locked, sequence by sequence.
    let rows = sqlx::query(
        "SELECT id, sequence_id, lead_id, status, generation FROM enrollments
         WHERE lead_id = ANY($1) ORDER BY sequence_id, generation, id FOR UPDATE",
    )
    .bind([kept, other])
    .fetch_all(&mut *conn)
    .await?;
    struct Row {
        id: Uuid,
        sequence: Uuid,
        mine: bool,
        active: bool,
        generation: i32,
    }
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            Ok(Row {
                id: r.try_get("id")?,
                sequence: r.try_get("sequence_id")?,
                mine: r.try_get::<Uuid, _>("lead_id")? == kept,
                active: r.try_get::<EnrollmentStatus, _>("status")? == EnrollmentStatus::Active,
                generation: r.try_get("generation")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let mut merged = Merged::default();
    // (enrollment, new generation)
    let mut renumber: Vec<(Uuid, i32)> = Vec::new();
    for group in rows.chunk_by(|x, y| x.sequence == y.sequence) {
        let sequence = group[0].sequence;
        if group.iter().all(|r| r.mine) {
            continue;
        }
        let kept_active = group.iter().any(|r| r.mine && r.active);
        let mut ended_here = Vec::new();
        for r in group.iter().filter(|r| !r.mine && r.active && kept_active) {
            let reason = format!("lead merged into {kept}: one mailbox, one lead");
            let end = [(r.id, reason.clone())];
            crate::transitions::end_enrollments(conn, EnrollmentStatus::Cancelled, &end).await?;
            sqlx::query(
                "INSERT INTO audit_events (workspace_id, sequence_id, enrollment_id, actor, action, before, after)
                 VALUES ($1, $2, $3, $4, 'enrollment_cancelled', $5, $6)",
            )
            .bind(workspace)
            .bind(sequence)
            .bind(r.id)
            .bind(ACTOR)
            .bind(json!({"status": EnrollmentStatus::Active, "lead_id": other}))
            .bind(json!({"status": EnrollmentStatus::Cancelled, "reason": reason}))
            .execute(&mut *conn)
            .await?;
            ended_here.push(r.id);
            merged.cancelled += 1;
        }
        // Generations that clash once both leads' enrollments are one pair's: the ended one of
        // the two moves after the pair's highest (`other`'s when both ended).
        let mut next = group.iter().map(|r| r.generation).max().unwrap_or(0);
        for theirs in group.iter().filter(|r| !r.mine) {
            let Some(mine) = group
                .iter()
                .find(|r| r.mine && r.generation == theirs.generation)
            else {
                continue;
            };
            let theirs_active = theirs.active && !ended_here.contains(&theirs.id);
            next += 1;
            let moved = if theirs_active { mine.id } else { theirs.id };
            renumber.push((moved, next));
        }
    }
    if !renumber.is_empty() {
        let (ids, generations): (Vec<Uuid>, Vec<i32>) = renumber.into_iter().unzip();
        sqlx::query(
            "UPDATE enrollments e SET generation = u.generation, updated_at = now()
             FROM UNNEST($1::uuid[], $2::int4[]) AS u(id, generation) WHERE e.id = u.id",
        )
        .bind(&ids)
        .bind(&generations)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE step_runs r SET generation = u.generation
             FROM UNNEST($1::uuid[], $2::int4[]) AS u(id, generation) WHERE r.enrollment_id = u.id",
        )
        .bind(&ids)
        .bind(&generations)
        .execute(&mut *conn)
        .await?;
    }
    merged.enrollments =
        sqlx::query("UPDATE enrollments SET lead_id = $1, updated_at = now() WHERE lead_id = $2")
            .bind(kept)
            .bind(other)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    sqlx::query("UPDATE send_ledger SET lead_id = $1 WHERE lead_id = $2")
        .bind(kept)
        .bind(other)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM leads WHERE id = $1")
        .bind(other)
        .execute(&mut *conn)
        .await?;
    if *zone_before != zone_after {
        schedule::replan_lead(conn, kept).await?;
    }
    Ok(merged)
}
