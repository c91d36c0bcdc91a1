//! Due times under a sequence's rules, and the step runs that carry them. Owns: which step comes
//! next (live steps in position order), when it is due (its timing from an anchor, moved into
//! the send window in the lead's time zone, else the sequence's), and what happens when that time
//! lies past the step's or the sequence's end date (the step is skipped and the enrollment ends
//! with that reason). Used by enrollment, by the sender after each send, by resume and by edits;
//! it never publishes or sends.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::{
    db::StoreError,
    domain::{
        timing::Timing,
        window::{self, SendWindow},
    },
    state::{EnrollmentStatus, StepRunState},
    transitions::{self, Replan},
};

/// The parts of a sequence that shape due times.
#[derive(Clone, Debug)]
pub struct Rules {
    pub timezone: Tz,
    pub window: Option<SendWindow>,
    pub end_date: Option<DateTime<Utc>>,
}

/// A live step of a sequence.
#[derive(Clone, Debug)]
pub struct StepSpec {
    pub id: Uuid,
    pub position: i32,
    pub timing: Timing,
    pub end_date: Option<DateTime<Utc>>,
}

/// When a step would go out, or why it never will.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned {
    At(DateTime<Utc>),
    /// An end date passes first: the run is skipped and the enrollment ends.
    Expired(String),
    /// Later than the step's `max_lateness` allows: the run is skipped and the enrollment
    /// moves on ([`skip_and_advance`]).
    Late(String),
}

/// Moves `due` into the window and checks it against the end dates.
pub fn plan(
    due: DateTime<Utc>,
    rules: &Rules,
    lead_tz: Option<Tz>,
    step_position: i32,
    step_end: Option<DateTime<Utc>>,
) -> Planned {
    let at = window::next_valid(
        due,
        rules.window.as_ref(),
        lead_tz.unwrap_or(rules.timezone),
    );
    if let Some(end) = step_end.filter(|end| at > *end) {
        return Planned::Expired(format!(
            "step {step_position} ends {} and could not be sent before then",
            end.to_rfc3339()
        ));
    }
    if let Some(end) = rules.end_date.filter(|end| at > *end) {
        return Planned::Expired(format!(
            "the sequence ends {} and step {step_position} could not be sent before then",
            end.to_rfc3339()
        ));
    }
    Planned::At(at)
}

/// What a new run of `step` stores when timed from `anchor`: its due time, and the reason it is
/// skipped when it expires before it could go out (it then keeps the due time it would have had).
/// `Err` when the step's timing cannot be applied to `anchor`.
pub fn plan_run(
    step: &StepSpec,
    anchor: DateTime<Utc>,
    rules: &Rules,
    lead_tz: Option<Tz>,
) -> Result<(DateTime<Utc>, Option<String>), String> {
    let due = step.timing.due_after(anchor)?;
    Ok(
        match plan(due, rules, lead_tz, step.position, step.end_date) {
            Planned::At(at) => (at, None),
            Planned::Expired(reason) | Planned::Late(reason) => (due, Some(reason)),
        },
    )
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn tz(name: &str) -> Result<Tz, StoreError> {
    name.parse::<Tz>().map_err(|e| corrupt("time zone", e))
}

/// The rules of `sequence` and the time zone of `lead`.
pub async fn load_rules(
    conn: &mut PgConnection,
    sequence: Uuid,
    lead: Uuid,
) -> Result<(Rules, Option<Tz>), StoreError> {
    let row = sqlx::query(
        "SELECT s.timezone, s.send_window, s.end_date, l.timezone AS lead_tz
         FROM sequences s, leads l WHERE s.id = $1 AND l.id = $2",
    )
    .bind(sequence)
    .bind(lead)
    .fetch_one(conn)
    .await?;
    let rules = rules_from_row(&row)?;
    let lead_tz = row
        .try_get::<Option<String>, _>("lead_tz")?
        .map(|t| tz(&t))
        .transpose()?;
    Ok((rules, lead_tz))
}

/// A lead's time zone as stored (`None`, or a name that no longer parses: the sequence's zone
/// applies).
pub fn lead_zone(name: Option<&str>) -> Option<Tz> {
    name.and_then(|t| t.parse::<Tz>().ok())
}

/// Reads `timezone`, `send_window` and `end_date` columns of a sequence row.
pub fn rules_from_row(row: &sqlx::postgres::PgRow) -> Result<Rules, StoreError> {
    let window: Option<serde_json::Value> = row.try_get("send_window")?;
    Ok(Rules {
        timezone: tz(row.try_get::<&str, _>("timezone")?)?,
        window: window
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt("send window", e))?,
        end_date: row.try_get("end_date")?,
    })
}

fn step_from_row(row: &sqlx::postgres::PgRow) -> Result<StepSpec, StoreError> {
    Ok(StepSpec {
        id: row.try_get("id")?,
        position: row.try_get("position")?,
        timing: serde_json::from_value(row.try_get("timing")?)
            .map_err(|e| corrupt("step timing", e))?,
        end_date: row.try_get("end_date")?,
    })
}

/// The next live step, in the sequence's order *now*: the first live step placed after `after`
/// (the first step of all for `None`) that `target`'s generation has no run of yet. Steps are
/// identified by id; positions only order them. A deleted step keeps the place it had among
/// the live steps when it was deleted (see the edit), so what followed it still follows it.
pub async fn step_after(
    conn: &mut PgConnection,
    target: &Target,
    after: Option<Uuid>,
) -> Result<Option<StepSpec>, StoreError> {
    let row = sqlx::query(
        "SELECT st.id, st.position, st.timing, st.end_date FROM sequence_steps st
         WHERE st.sequence_id = $1 AND st.deleted_at IS NULL
           AND st.position > COALESCE((SELECT position FROM sequence_steps WHERE id = $2), 0)
           AND NOT EXISTS (SELECT 1 FROM step_runs r WHERE r.enrollment_id = $3
                           AND r.generation = $4 AND r.step_id = st.id)
         ORDER BY st.position LIMIT 1",
    )
    .bind(target.sequence)
    .bind(after)
    .bind(target.enrollment)
    .bind(target.generation)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(step_from_row).transpose()
}

/// The serialization rule for everything built from a sequence's steps, triggers or rules.
///
/// Readers (the scheduler's claim, the sender's record, ingest, enrollment, the sweep) take this
/// `FOR KEY SHARE` lock on the sequence rows *before* reading steps, in its own statement, so
/// what they read afterwards is the committed state. Writers (edit, resume, pause, delete)
/// take `FOR UPDATE` on the row (`lock_status` in the api) for their whole transaction. The two
/// conflict, so a reader either finished before the edit began, or starts after it committed
/// and sees it: once an edit returns, nothing built from the old steps can be created.
/// `FOR KEY SHARE` does not conflict with plain `UPDATE`s of the row, nor with other readers.
/// Locks are taken in id order; returns the ids that exist.
pub async fn lock_sequences(
    conn: &mut PgConnection,
    sequences: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM sequences WHERE id = ANY($1) ORDER BY id FOR KEY SHARE")
            .bind(sequences)
            .fetch_all(conn)
            .await?,
    )
}

/// Takes [`lock_sequences`] on the sequence of `step_run`, read first without a lock (a run
/// never changes sequence); `None` when there is no such run.
pub async fn lock_sequence_of(
    conn: &mut PgConnection,
    step_run: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    let sequence: Option<Uuid> =
        sqlx::query_scalar("SELECT sequence_id FROM step_runs WHERE id = $1")
            .bind(step_run)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(sequence) = sequence {
        lock_sequences(conn, &[sequence]).await?;
    }
    Ok(sequence)
}

/// Which SCHEDULED runs [`retime`] re-plans.
#[derive(Clone, Copy, Debug)]
pub enum Retime {
    /// Every one of a sequence (its timing, window, zone or end dates changed).
    Sequence(Uuid),
    /// Every one of a lead, in every sequence (its time zone changed).
    Lead(Uuid),
}

/// Re-plans SCHEDULED first-attempt runs of ACTIVE enrollments under the current steps and
/// rules, each from its anchor (the enrollment's last send, else the enrollment), through
/// [`plan`]: a run that can no longer go out before an end date is skipped and its enrollment
/// ends. Runs waiting on a retry keep their retry time. The caller holds the sequence lock
/// (an edit) or takes [`lock_sequences`] first (a lead's zone change). Returns how many runs
/// were looked at.
pub async fn retime(conn: &mut PgConnection, scope: Retime) -> Result<u64, StoreError> {
    let (filter, id) = match scope {
        Retime::Sequence(id) => ("sr.sequence_id = $1", id),
        Retime::Lead(id) => ("e.lead_id = $1", id),
    };
    let runs = sqlx::query(&format!(
        "SELECT sr.id, sr.enrollment_id, sr.sequence_id, st.position, st.timing, st.end_date,
                e.lead_id, e.created_at,
                (SELECT max(p.sent_at) FROM step_runs p
                  WHERE p.enrollment_id = sr.enrollment_id AND p.generation = sr.generation
                    AND p.state = 'SENT') AS last_sent
         FROM step_runs sr
         JOIN sequence_steps st ON st.id = sr.step_id
         JOIN enrollments e ON e.id = sr.enrollment_id
         WHERE {filter} AND sr.state = 'SCHEDULED' AND sr.attempts = 0 AND e.status = 'ACTIVE'
         ORDER BY sr.id FOR UPDATE OF sr"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut plans = Vec::with_capacity(runs.len());
    for run in &runs {
        let timing: Timing = serde_json::from_value(run.try_get("timing")?)
            .map_err(|e| corrupt("step timing", e))?;
        let anchor: DateTime<Utc> = match run.try_get::<Option<DateTime<Utc>>, _>("last_sent")? {
            Some(sent) => sent,
            None => run.try_get("created_at")?,
        };
        let (rules, lead_tz) =
            load_rules(conn, run.try_get("sequence_id")?, run.try_get("lead_id")?).await?;
        let due = timing.due_after(anchor).map_err(StoreError::Corrupt)?;
        plans.push(Replan {
            run: run.try_get("id")?,
            enrollment: run.try_get("enrollment_id")?,
            plan: plan(
                due,
                &rules,
                lead_tz,
                run.try_get("position")?,
                run.try_get("end_date")?,
            ),
        });
    }
    transitions::apply_plans(conn, &plans).await?;
    Ok(runs.len() as u64)
}

/// Re-plans a lead's scheduled steps after its time zone changed: the sequences of its ACTIVE
/// enrollments are locked ([`lock_sequences`]), then [`retime`]. Returns how many runs were
/// looked at.
pub async fn replan_lead(conn: &mut PgConnection, lead: Uuid) -> Result<u64, StoreError> {
    let sequences: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT sequence_id FROM enrollments WHERE lead_id = $1 AND status = 'ACTIVE'",
    )
    .bind(lead)
    .fetch_all(&mut *conn)
    .await?;
    if sequences.is_empty() {
        return Ok(0);
    }
    lock_sequences(conn, &sequences).await?;
    retime(conn, Retime::Lead(lead)).await
}

/// Whose step run to create.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub workspace: Uuid,
    pub sequence: Uuid,
    pub enrollment: Uuid,
    pub lead: Uuid,
    pub generation: i32,
}

/// Schedules `step` for `target`, due by its timing from `anchor` under the sequence's rules.
/// An expired step is recorded SKIPPED and ends the enrollment. `trace_parent` is the W3C
/// context of the request that asked for it (see `telemetry`), carried to the publish and send.
pub async fn schedule_step(
    conn: &mut PgConnection,
    target: Target,
    step: &StepSpec,
    anchor: DateTime<Utc>,
    trace_parent: Option<&str>,
) -> Result<(), StoreError> {
    let (rules, lead_tz) = load_rules(conn, target.sequence, target.lead).await?;
    let (due_at, skipped) = plan_run(step, anchor, &rules, lead_tz).map_err(StoreError::Corrupt)?;
    let state = if skipped.is_some() {
        StepRunState::Skipped
    } else {
        StepRunState::Scheduled
    };
    sqlx::query(
        "INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position,
                                generation, due_at, state, last_error, trace_parent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (enrollment_id, step_id, generation) DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(target.workspace)
    .bind(target.sequence)
    .bind(target.enrollment)
    .bind(step.id)
    .bind(step.position)
    .bind(target.generation)
    .bind(due_at)
    .bind(state)
    .bind(&skipped)
    .bind(trace_parent)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE enrollments SET current_step = $2, updated_at = now() WHERE id = $1")
        .bind(target.enrollment)
        .bind(step.position)
        .execute(&mut *conn)
        .await?;
    if let Some(reason) = &skipped {
        let end = [(target.enrollment, reason.clone())];
        transitions::end_enrollments(conn, EnrollmentStatus::Completed, &end).await?;
    }
    Ok(())
}

/// Schedules the live step that now follows `after` (see [`step_after`]), or completes the
/// enrollment when there is none. The caller holds [`lock_sequences`] (or the writer's lock).
pub async fn advance(
    conn: &mut PgConnection,
    target: Target,
    after: Uuid,
    anchor: DateTime<Utc>,
) -> Result<(), StoreError> {
    match step_after(conn, &target, Some(after)).await? {
        Some(step) => {
            schedule_step(conn, target, &step, anchor, None).await?;
        }
        None => {
            let end = [(target.enrollment, "all steps sent".to_owned())];
            transitions::end_enrollments(conn, EnrollmentStatus::Completed, &end).await?;
        }
    }
    Ok(())
}

/// Skips a run that could not go out in time (its step's `max_lateness`) and moves its
/// enrollment on: the step that follows is scheduled from `at`, or the enrollment completes.
/// Only a run still SCHEDULED or QUEUED changes; returns whether it did. The caller holds
/// [`lock_sequences`] (or the writer's lock) and, for a QUEUED run, knows no claim holds it.
pub async fn skip_and_advance(
    conn: &mut PgConnection,
    run: Uuid,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "UPDATE step_runs sr SET state = 'SKIPPED', last_error = $2, updated_at = now()
         FROM enrollments e
         WHERE sr.id = $1 AND e.id = sr.enrollment_id AND sr.state IN ('SCHEDULED', 'QUEUED')
         RETURNING sr.workspace_id, sr.sequence_id, sr.enrollment_id, sr.step_id, sr.generation,
                   e.lead_id",
    )
    .bind(run)
    .bind(reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    advance_if_active(conn, &row, at).await?;
    Ok(true)
}

/// Moves on the enrollment of a run that just ended (sent, or skipped as too late), while the
/// enrollment is ACTIVE: locked here, so a concurrent cancel either came first, and nothing
/// follows, or waits. `run` has the run's `workspace_id`, `sequence_id`, `enrollment_id`,
/// `step_id`, `generation` and its enrollment's `lead_id`; the next step is timed from `at`.
pub async fn advance_if_active(
    conn: &mut PgConnection,
    run: &sqlx::postgres::PgRow,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let enrollment: Uuid = run.try_get("enrollment_id")?;
    let status: EnrollmentStatus =
        sqlx::query_scalar("SELECT status FROM enrollments WHERE id = $1 FOR UPDATE")
            .bind(enrollment)
            .fetch_one(&mut *conn)
            .await?;
    if status == EnrollmentStatus::Active {
        let target = Target {
            workspace: run.try_get("workspace_id")?,
            sequence: run.try_get("sequence_id")?,
            enrollment,
            lead: run.try_get("lead_id")?,
            generation: run.try_get("generation")?,
        };
        advance(conn, target, run.try_get("step_id")?, at).await?;
    }
    Ok(())
}

/// Why a step is skipped by its staleness guard.
pub fn late_reason(max_lateness: &str, by: DateTime<Utc>) -> String {
    format!(
        "skipped: could not go out within its max_lateness {max_lateness} (by {} UTC)",
        by.format("%Y-%m-%d %H:%M")
    )
}

/// Moves an enrollment past a step that was deleted while it waited on it (the caller has
/// marked that run SKIPPED): the step that now follows it is scheduled, timed from the
/// enrollment's anchor as a retime would (its last send, else the enrollment), or the
/// enrollment completes.
pub async fn move_past_deleted(
    conn: &mut PgConnection,
    target: Target,
    deleted_step: Uuid,
) -> Result<(), StoreError> {
    let anchor: DateTime<Utc> = sqlx::query_scalar(
        "SELECT COALESCE(
             (SELECT max(sent_at) FROM step_runs WHERE enrollment_id = $1 AND generation = $2),
             (SELECT created_at FROM enrollments WHERE id = $1))",
    )
    .bind(target.enrollment)
    .bind(target.generation)
    .fetch_one(&mut *conn)
    .await?;
    advance(conn, target, deleted_step, anchor).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(end: Option<&str>) -> Rules {
        Rules {
            timezone: chrono_tz::UTC,
            window: Some(SendWindow {
                days: vec!["mon".into()],
                start: "09:00".into(),
                end: "10:00".into(),
            }),
            end_date: end.map(|e| e.parse().unwrap()),
        }
    }

    #[test]
    fn the_pacer_spaces_sends_by_the_rate_and_continues_at_the_next_opening() {
        use crate::limits::{Pacer, SendLimits};
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let per_minute = |n| {
            let mut l = SendLimits::new(uuid::Uuid::nil());
            l.per_minute(uuid::Uuid::nil(), n, chrono_tz::UTC);
            l
        };
        // Monday 09:00–10:00 UTC only; resumed on Sunday: everything starts at Monday 09:00.
        let r = rules(None);
        let valid = |at| window::next_valid(at, r.window.as_ref(), chrono_tz::UTC);
        let mut pacer = Pacer::new();
        let ten = per_minute(10);
        let placed: Vec<_> = (0..25)
            .map(|_| pacer.place(t("2026-01-18T12:00:00Z"), valid, &ten))
            .collect();
        assert_eq!(placed[0], t("2026-01-19T09:00:00Z"));
        // (60 s + a 3 s guard) / 10 apart.
        assert_eq!(placed[10], t("2026-01-19T09:01:03Z"));
        // A backlog bigger than the window: 115 fit 31.5 s apart, the rest go a week later.
        let mut pacer = Pacer::new();
        let two = per_minute(2);
        let placed: Vec<_> = (0..125)
            .map(|_| pacer.place(t("2026-01-19T09:00:00Z"), valid, &two))
            .collect();
        assert!(placed[..115].iter().all(|p| *p < t("2026-01-19T10:00:00Z")));
        assert_eq!(placed[115], t("2026-01-26T09:00:00Z"));
        assert_eq!(placed[116], t("2026-01-26T09:00:31.500Z"));
        // No limits: only the window moves a time.
        let mut pacer = Pacer::new();
        assert_eq!(
            pacer.place(
                t("2026-01-19T09:30:10Z"),
                valid,
                &SendLimits::new(uuid::Uuid::nil())
            ),
            t("2026-01-19T09:30:10Z")
        );
    }

    #[test]
    fn planning_honours_window_and_end_dates() {
        let sunday = "2026-01-18T12:00:00Z".parse().unwrap();
        let monday_9 = "2026-01-19T09:00:00Z".parse().unwrap();
        assert_eq!(
            plan(sunday, &rules(None), None, 1, None),
            Planned::At(monday_9)
        );
        // The lead's zone wins over the sequence's.
        let paris_9 = "2026-01-19T08:00:00Z".parse().unwrap();
        assert_eq!(
            plan(
                sunday,
                &rules(None),
                Some(chrono_tz::Europe::Paris),
                1,
                None
            ),
            Planned::At(paris_9)
        );
        // The next valid time is past an end date: expired, with the reason.
        let step_end = Some("2026-01-18T23:00:00Z".parse().unwrap());
        assert!(
            matches!(plan(sunday, &rules(None), None, 2, step_end), Planned::Expired(r) if r.contains("step 2 ends"))
        );
        assert!(matches!(
            plan(sunday, &rules(Some("2026-01-19T08:59:00Z")), None, 1, None),
            Planned::Expired(r) if r.contains("the sequence ends")
        ));
        assert_eq!(
            plan(sunday, &rules(Some("2026-01-19T09:00:00Z")), None, 1, None),
            Planned::At(monday_9)
        );
    }
}
