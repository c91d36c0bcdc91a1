//! Applies a validated batch of trigger events in one transaction, with a fixed number of
//! set-based statements whatever the batch size (about ten, instead of about eight per event).
//!
//! The outcome is the one the events would have had one after another, in batch order: a
//! repeated event id gets the first one's outcome as `duplicate_event`; a lead named by several
//! events is upserted once with their fields merged (later values win); tags and lists are added
//! once each, in order; the last score wins; the first event that matches a sequence for a lead
//! enrolls it and later ones in the batch report `already_active` (or `ended_not_reenrolled`
//! when its first step expired at once). Rows are locked in a fixed order (event ids, emails,
//! sequences, then (sequence, lead) pairs, each sorted), so concurrent batches never deadlock.
//! It never sends and never schedules beyond an enrollment's first step.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::Utc;
use pulse_shared::{
    db::StoreError,
    domain::{timing::Timing, validate},
    model::{EnrollmentOutcome, EnrollmentStatus, EventResult, ScoreMode, SequenceStatus, outcome},
    schedule::{self, Rules},
};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::{Change, ValidEvent};

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Leads (by canonical address) whose attributes, merged with what they keep, would be over
    /// the per-lead bound, and why. Nothing was written: the caller rejects their events and
    /// applies the rest.
    #[error("{} leads would be over their attribute bound", .0.len())]
    Oversize(HashMap<String, String>),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// Processes `events` (validated, in request order) for `workspace`; one result per event.
pub async fn process(
    db: &PgPool,
    workspace: Uuid,
    events: &[ValidEvent],
) -> Result<Vec<EventResult>, BatchError> {
    let mut tx = db.begin().await?;

    // 1. Claim the event ids. A concurrent request holding one of them makes this wait for its
    //    commit, and then the id counts as processed before.
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let fresh: HashSet<String> = sqlx::query_scalar(
        "INSERT INTO processed_events (workspace_id, event_id, result)
         SELECT $1, id, 'null' FROM UNNEST($2::text[]) AS u(id)
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(workspace)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let earlier: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !fresh.contains(*id))
        .collect();
    let mut stored: HashMap<String, EventResult> = HashMap::new();
    if !earlier.is_empty() {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT event_id, result FROM processed_events
             WHERE workspace_id = $1 AND event_id = ANY($2)",
        )
        .bind(workspace)
        .bind(&earlier)
        .fetch_all(&mut *tx)
        .await?;
        for (id, result) in rows {
            let original: EventResult = serde_json::from_value(result)
                .map_err(|e| StoreError::Corrupt(format!("stored event result: {e}")))?;
            stored.insert(id, original);
        }
    }
    // The events this batch processes: the first occurrence of each fresh id, in full; and the
    // first occurrence of an id seen before while some of its sequences were paused, for those
    // sequences only (its id was not used up for them; its lead changes were applied then).
    let mut seen = HashSet::new();
    let mut retry: HashMap<&str, (Uuid, HashSet<Uuid>)> = HashMap::new();
    let todo: Vec<&ValidEvent> = events
        .iter()
        .filter(|e| {
            if fresh.contains(&e.id) {
                return seen.insert(e.id.as_str());
            }
            let Some(r) = stored.get(&e.id) else {
                return false;
            };
            let paused: HashSet<Uuid> = r
                .enrollments
                .iter()
                .filter(|o| o.outcome == outcome::SEQUENCE_PAUSED)
                .map(|o| o.sequence_id)
                .collect();
            match r.lead_id {
                Some(lead) if !paused.is_empty() && seen.insert(e.id.as_str()) => {
                    retry.insert(e.id.as_str(), (lead, paused));
                    true
                }
                _ => false,
            }
        })
        .collect();

    // 2. Upsert every lead once, with its fresh events' changes applied; the leads of retried
    //    events are read as they are.
    let changes: Vec<&ValidEvent> = todo
        .iter()
        .copied()
        .filter(|e| !retry.contains_key(e.id.as_str()))
        .collect();
    let mut leads = upsert_leads(&mut tx, workspace, &changes).await?;
    if !retry.is_empty() {
        let ids: Vec<Uuid> = retry.values().map(|(lead, _)| *lead).collect();
        let rows: Vec<(Uuid, String, Option<String>)> =
            sqlx::query_as("SELECT id, email, timezone FROM leads WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        for (id, email, zone) in rows {
            leads.entry(email).or_insert(Lead {
                id,
                timezone: schedule::lead_zone(zone.as_deref()),
                score_before: None,
            });
        }
    }

    // 3. The sequences any of these events can match, locked FOR SHARE (a pause committing
    //    meanwhile waits for this batch; one that committed first is seen).
    let sequences = matching_sequences(&mut tx, workspace, &todo).await?;
    // Suppressed leads are not enrolled (the sender checks again after its claim).
    let blocked = if sequences.is_empty() {
        HashSet::new()
    } else {
        let emails: Vec<&str> = leads.keys().map(String::as_str).collect();
        pulse_shared::suppression::suppressed(&mut tx, workspace, &emails).await?
    };

    // 4. Enroll: the first event of each (sequence, lead) pair decides; later ones follow it.
    let now = Utc::now();
    let mut per_event: Vec<Vec<(Uuid, Option<&'static str>)>> = Vec::with_capacity(todo.len());
    let mut pairs: BTreeSet<(Uuid, Uuid)> = BTreeSet::new();
    // Each lead's score as the events of this batch move it, in request order (for crossings).
    let mut scores: HashMap<Uuid, Option<i32>> =
        leads.values().map(|l| (l.id, l.score_before)).collect();
    for event in &todo {
        let lead = leads.get(&event.lead.email).map(|l| l.id);
        let only = retry.get(event.id.as_str()).map(|(_, paused)| paused);
        // A retried event crossed when it first came (it met a paused sequence then).
        let score_before = match (only, lead) {
            (None, Some(lead)) => scores.get(&lead).copied().flatten(),
            _ => None,
        };
        if let (None, Some(lead), Change::Score(now)) = (only, lead, &event.change) {
            scores.insert(lead, Some(*now));
        }
        let mut hits = Vec::new();
        for seq in &sequences {
            if !seq.matches(&event.change, score_before)
                || only.is_some_and(|o| !o.contains(&seq.id))
            {
                continue;
            }
            if blocked.contains(&event.lead.email) {
                hits.push((seq.id, Some(outcome::SUPPRESSED)));
            } else if seq.status == SequenceStatus::Paused {
                hits.push((seq.id, Some(outcome::SEQUENCE_PAUSED)));
            } else {
                hits.push((seq.id, None));
                if let Some(lead) = lead {
                    pairs.insert((seq.id, lead));
                }
            }
        }
        per_event.push(hits);
    }
    let enrolled = enroll_pairs(&mut tx, workspace, &sequences, &leads, &pairs, now).await?;

    // 5. Results, in request order, stored for repeats of these ids.
    let mut first_result: HashMap<&str, EventResult> = HashMap::new();
    let mut decided: HashSet<(Uuid, Uuid)> = HashSet::new();
    for (event, hits) in todo.iter().zip(per_event) {
        let lead = leads.get(&event.lead.email).map(|l| l.id).ok_or_else(|| {
            StoreError::Corrupt(format!("lead {} not upserted", event.lead.email))
        })?;
        let mut outcomes = Vec::with_capacity(hits.len());
        for (sequence, fixed) in hits {
            let (enrollment_id, what) = match fixed {
                Some(what) => (None, what),
                None => {
                    let e = enrolled.get(&(sequence, lead)).ok_or_else(|| {
                        StoreError::Corrupt(format!("no enrollment outcome for {sequence}"))
                    })?;
                    if decided.insert((sequence, lead)) {
                        (e.id, e.outcome)
                    } else {
                        // A later event of this batch, after the first one enrolled or not.
                        let later = if e.status == EnrollmentStatus::Active {
                            outcome::ALREADY_ACTIVE
                        } else {
                            outcome::ENDED_NOT_REENROLLED
                        };
                        (e.id, later)
                    }
                }
            };
            outcomes.push(EnrollmentOutcome {
                sequence_id: sequence,
                enrollment_id,
                outcome: what.into(),
            });
        }
        // A retried event keeps what it did before for the sequences that were not paused.
        if let Some(before) = stored
            .get(&event.id)
            .filter(|_| retry.contains_key(event.id.as_str()))
        {
            let redone: HashSet<Uuid> = outcomes.iter().map(|o| o.sequence_id).collect();
            let kept = before
                .enrollments
                .iter()
                .filter(|o| !redone.contains(&o.sequence_id))
                .cloned();
            outcomes = kept.chain(outcomes).collect();
        }
        first_result.insert(
            event.id.as_str(),
            EventResult {
                event_id: event.id.clone(),
                status: "processed".into(),
                lead_id: Some(lead),
                enrollments: outcomes,
                error: None,
                outcome: None,
                inbound_message: None,
            },
        );
    }
    let (done_ids, done_results): (Vec<&str>, Vec<Value>) = first_result
        .iter()
        .map(|(id, r)| {
            serde_json::to_value(r)
                .map(|v| (*id, v))
                .map_err(|e| StoreError::Corrupt(format!("encoding event result: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    if !done_ids.is_empty() {
        sqlx::query(
            "UPDATE processed_events p SET result = u.result
             FROM UNNEST($2::text[], $3::jsonb[]) AS u(id, result)
             WHERE p.workspace_id = $1 AND p.event_id = u.id",
        )
        .bind(workspace)
        .bind(&done_ids)
        .bind(&done_results)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;

    let mut answered = HashSet::new();
    events
        .iter()
        .map(|e| {
            let original = match first_result.get(e.id.as_str()) {
                Some(r) if answered.insert(e.id.as_str()) => return Ok(r.clone()),
                Some(r) => r,
                None => stored.get(&e.id).ok_or_else(|| {
                    StoreError::Corrupt(format!("event {} has no stored result", e.id))
                })?,
            };
            let mut repeat = original.clone();
            repeat.status = "duplicate_event".into();
            Ok(repeat)
        })
        .collect()
}

/// A lead after the upsert.
struct Lead {
    id: Uuid,
    timezone: Option<chrono_tz::Tz>,
    /// The score before this batch (`None` for a new lead, or one read for a retried event).
    score_before: Option<i32>,
}

/// Upserts each lead once: fields merged over its events (a later non-empty value wins,
/// attributes merged key by key), new tags and lists appended once each in event order, the last
/// score kept. Returns the leads by email.
async fn upsert_leads(
    conn: &mut PgConnection,
    workspace: Uuid,
    events: &[&ValidEvent],
) -> Result<HashMap<String, Lead>, BatchError> {
    #[derive(Default)]
    struct Merged {
        /// The address as first given in this batch (kept by an existing lead).
        given: String,
        // None: keep; Some(None): clear; Some(Some): set (the last event that says wins).
        first_name: Option<Option<String>>,
        last_name: Option<Option<String>>,
        timezone: Option<Option<String>>,
        attributes: Map<String, Value>,
        tags: Vec<String>,
        lists: Vec<String>,
        score: Option<i32>,
    }
    let mut by_email: BTreeMap<&str, Merged> = BTreeMap::new();
    for e in events {
        let m = by_email.entry(e.lead.email.as_str()).or_default();
        let l = &e.lead;
        if m.given.is_empty() {
            m.given.clone_from(&l.email_given);
        }
        for (into, from) in [
            (&mut m.first_name, &l.first_name),
            (&mut m.last_name, &l.last_name),
            (&mut m.timezone, &l.timezone),
        ] {
            if from.is_some() {
                into.clone_from(from);
            }
        }
        m.attributes
            .extend(l.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        match &e.change {
            Change::Tag(t) if !m.tags.contains(t) => m.tags.push(t.clone()),
            Change::List(l) if !m.lists.contains(l) => m.lists.push(l.clone()),
            Change::Score(s) => m.score = Some(*s),
            _ => {}
        }
    }
    if by_email.is_empty() {
        return Ok(HashMap::new());
    }
    // Zones, scores and attributes before this batch, with the rows locked (in email order, as
    // the upsert would): a lead whose zone changes has its scheduled steps re-planned, score
    // triggers fire on crossings from the score before, and what a lead keeps stays bounded.
    let emails: Vec<&str> = by_email.keys().copied().collect();
    let before: HashMap<String, (Option<String>, Option<i32>)> = {
        let rows: Vec<(String, Option<String>, Option<i32>, Value)> = sqlx::query_as(
            "SELECT email, timezone, score, attributes FROM leads
             WHERE workspace_id = $1 AND email = ANY($2) ORDER BY email FOR UPDATE",
        )
        .bind(workspace)
        .bind(&emails)
        .fetch_all(&mut *conn)
        .await?;
        let mut over = HashMap::new();
        let empty = Map::new();
        let stored: HashMap<&str, &Value> = rows.iter().map(|r| (r.0.as_str(), &r.3)).collect();
        for (email, m) in &by_email {
            let old = match stored.get(email) {
                Some(Value::Object(old)) => old,
                _ => &empty,
            };
            if let Err(message) = validate::merged_attributes(old, &m.attributes) {
                over.insert((*email).to_owned(), message);
            }
        }
        if !over.is_empty() {
            return Err(BatchError::Oversize(over));
        }
        rows.into_iter()
            .map(|(email, zone, score, _)| (email, (zone, score)))
            .collect()
    };
    let n = by_email.len();
    let mut givens = Vec::with_capacity(n);
    let mut supplied: [Vec<&str>; 3] = Default::default();
    let (mut ids, mut firsts, mut lasts, mut zones, mut attrs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut tags, mut lists, mut scores) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (email, m) in by_email {
        ids.push(Uuid::new_v4());
        givens.push(m.given);
        for (i, field) in [&m.first_name, &m.last_name, &m.timezone]
            .into_iter()
            .enumerate()
        {
            if field.is_some() {
                supplied[i].push(email);
            }
        }
        firsts.push(m.first_name.flatten());
        lasts.push(m.last_name.flatten());
        zones.push(m.timezone.flatten());
        attrs.push(Value::Object(m.attributes));
        tags.push(Value::from(m.tags));
        lists.push(Value::from(m.lists));
        scores.push(m.score);
    }
    let rows = sqlx::query(
        "INSERT INTO leads (id, workspace_id, email, first_name, last_name, timezone, attributes,
                            tags, lists, score, email_given)
         SELECT u.id, $1, u.email, u.first_name, u.last_name, u.timezone, u.attributes,
                ARRAY(SELECT jsonb_array_elements_text(u.tags)),
                ARRAY(SELECT jsonb_array_elements_text(u.lists)), u.score, u.given
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                     $8::jsonb[], $9::jsonb[], $10::int4[], $11::text[])
              AS u(id, email, first_name, last_name, timezone, attributes, tags, lists, score,
                   given)
         ORDER BY u.email
         ON CONFLICT (workspace_id, email) DO UPDATE SET
             first_name = CASE WHEN EXCLUDED.email = ANY($12) THEN EXCLUDED.first_name
                               ELSE leads.first_name END,
             last_name  = CASE WHEN EXCLUDED.email = ANY($13) THEN EXCLUDED.last_name
                               ELSE leads.last_name END,
             timezone   = CASE WHEN EXCLUDED.email = ANY($14) THEN EXCLUDED.timezone
                               ELSE leads.timezone END,
             attributes = leads.attributes || EXCLUDED.attributes,
             tags = leads.tags || ARRAY(SELECT t FROM unnest(EXCLUDED.tags) WITH ORDINALITY AS x(t, o)
                                        WHERE NOT (t = ANY(leads.tags)) ORDER BY o),
             lists = leads.lists || ARRAY(SELECT t FROM unnest(EXCLUDED.lists) WITH ORDINALITY AS x(t, o)
                                          WHERE NOT (t = ANY(leads.lists)) ORDER BY o),
             score = COALESCE(EXCLUDED.score, leads.score),
             updated_at = now()
         RETURNING id, email, timezone",
    )
    .bind(workspace)
    .bind(&ids)
    .bind(&emails)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&zones)
    .bind(&attrs)
    .bind(&tags)
    .bind(&lists)
    .bind(&scores)
    .bind(&givens)
    .bind(&supplied[0])
    .bind(&supplied[1])
    .bind(&supplied[2])
    .fetch_all(&mut *conn)
    .await?;
    let mut leads = HashMap::with_capacity(rows.len());
    for r in rows {
        let email: String = r.try_get("email")?;
        let zone: Option<String> = r.try_get("timezone")?;
        let id: Uuid = r.try_get("id")?;
        let (zone_before, score_before) = match before.get(&email) {
            Some((zone_before, score)) => (Some(zone_before), *score),
            None => (None, None),
        };
        if zone_before.is_some_and(|z| *z != zone) {
            schedule::replan_lead(conn, id).await?;
        }
        let timezone = schedule::lead_zone(zone.as_deref());
        leads.insert(
            email,
            Lead {
                id,
                timezone,
                score_before,
            },
        );
    }
    Ok(leads)
}

/// A sequence one of the batch's events can match, with what it needs to start an enrollment.
struct Sequence {
    id: Uuid,
    status: SequenceStatus,
    tags: Vec<String>,
    lists: Vec<String>,
    /// Lead-score triggers: minimum and mode.
    scores: Vec<(i32, ScoreMode)>,
    rules: Rules,
    /// The first live step: id, position, timing, end date.
    first: Option<schedule::StepSpec>,
    /// The mailboxes it sends from, one per lead in turn (`None`: its `from` address).
    mailboxes: Option<Vec<Uuid>>,
}

impl Sequence {
    /// Whether `change` fires one of its triggers; `score_before` is the lead's score before
    /// this event (for crossings).
    fn matches(&self, change: &Change, score_before: Option<i32>) -> bool {
        match change {
            // Tags and lists match whatever their case (`self`'s are lower-cased when loaded).
            Change::Tag(t) => self.tags.contains(&t.to_lowercase()),
            Change::List(l) => self.lists.contains(&l.to_lowercase()),
            Change::Score(s) => self
                .scores
                .iter()
                .any(|(min, mode)| mode.fires(*min, score_before, *s)),
        }
    }
}

/// ACTIVE and PAUSED sequences with a trigger any of `events` matches, locked `FOR SHARE` in id
/// order (which conflicts with an edit's `FOR UPDATE`), with their triggers, rules and first
/// live step as committed once the lock is held.
async fn matching_sequences(
    conn: &mut PgConnection,
    workspace: Uuid,
    events: &[&ValidEvent],
) -> Result<Vec<Sequence>, StoreError> {
    let (mut tags, mut lists, mut max_score) = (Vec::new(), Vec::new(), None::<i32>);
    for e in events {
        match &e.change {
            Change::Tag(t) => tags.push(t.to_lowercase()),
            Change::List(l) => lists.push(l.to_lowercase()),
            Change::Score(s) => max_score = Some(max_score.map_or(*s, |m| m.max(*s))),
        }
    }
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // The lock first, in its own statement; then the triggers, rules and first step are read
    // by a later statement, so they are the committed ones after any edit this waited for
    // (`schedule::lock_sequences`). A sequence whose triggers an edit changed meanwhile is
    // matched again below on what it has now.
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "WITH hit AS (
             SELECT DISTINCT t.sequence_id FROM triggers t
             WHERE t.workspace_id = $1
               AND ((t.kind = 'tag_applied' AND lower(t.tag) = ANY($2))
                 OR (t.kind = 'list_added' AND lower(t.list) = ANY($3))
                 OR (t.kind = 'lead_score' AND t.min_score <= $4)))
         SELECT s.id FROM sequences s
         WHERE s.workspace_id = $1 AND s.status IN ('ACTIVE', 'PAUSED')
           AND s.id IN (SELECT sequence_id FROM hit)
         ORDER BY s.id
         FOR SHARE OF s",
    )
    .bind(workspace)
    .bind(&tags)
    .bind(&lists)
    .bind(max_score)
    .fetch_all(&mut *conn)
    .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT s.id, s.status, s.timezone, s.send_window, s.end_date, s.sender_mailboxes,
                ARRAY(SELECT lower(t.tag) FROM triggers t WHERE t.sequence_id = s.id AND t.kind = 'tag_applied') AS tags,
                ARRAY(SELECT lower(t.list) FROM triggers t WHERE t.sequence_id = s.id AND t.kind = 'list_added') AS lists,
                ARRAY(SELECT t.min_score FROM triggers t WHERE t.sequence_id = s.id AND t.kind = 'lead_score' ORDER BY t.position) AS min_scores,
                ARRAY(SELECT t.score_mode FROM triggers t WHERE t.sequence_id = s.id AND t.kind = 'lead_score' ORDER BY t.position) AS score_modes,
                st.id AS step_id, st.position, st.timing, st.end_date AS step_end
         FROM sequences s
         LEFT JOIN LATERAL (
             SELECT id, position, timing, end_date FROM sequence_steps
             WHERE sequence_id = s.id AND deleted_at IS NULL ORDER BY position LIMIT 1) st ON true
         WHERE s.id = ANY($1) AND s.status IN ('ACTIVE', 'PAUSED')
         ORDER BY s.id",
    )
    .bind(&locked)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let first = match r.try_get::<Option<Uuid>, _>("step_id")? {
                None => None,
                Some(id) => Some(schedule::StepSpec {
                    id,
                    position: r.try_get("position")?,
                    timing: serde_json::from_value::<Timing>(r.try_get("timing")?)
                        .map_err(|e| StoreError::Corrupt(format!("step timing: {e}")))?,
                    end_date: r.try_get("step_end")?,
                }),
            };
            Ok(Sequence {
                id: r.try_get("id")?,
                status: r.try_get("status")?,
                tags: r.try_get("tags")?,
                lists: r.try_get("lists")?,
                scores: {
                    let mins: Vec<i32> = r.try_get("min_scores")?;
                    let modes: Vec<String> = r.try_get("score_modes")?;
                    mins.into_iter()
                        .zip(modes)
                        .map(|(min, mode)| (min, ScoreMode::from_stored(&mode)))
                        .collect()
                },
                rules: schedule::rules_from_row(r)?,
                first,
                mailboxes: r.try_get("sender_mailboxes")?,
            })
        })
        .collect()
}

/// What the first event of a (sequence, lead) pair found or did.
struct Enrolled {
    id: Option<Uuid>,
    outcome: &'static str,
    /// The enrollment's status afterwards (a new one whose first step expired is COMPLETED).
    status: EnrollmentStatus,
}

/// Enrolls every pair that has no enrollment yet (with its first step run, in one statement)
/// and reports the latest enrollment of every other pair.
async fn enroll_pairs(
    conn: &mut PgConnection,
    workspace: Uuid,
    sequences: &[Sequence],
    leads: &HashMap<String, Lead>,
    pairs: &BTreeSet<(Uuid, Uuid)>,
    now: chrono::DateTime<Utc>,
) -> Result<HashMap<(Uuid, Uuid), Enrolled>, StoreError> {
    let mut out = HashMap::with_capacity(pairs.len());
    if pairs.is_empty() {
        return Ok(out);
    }
    let (seq_ids, lead_ids): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
    let existing = latest_enrollments(conn, &seq_ids, &lead_ids).await?;
    let by_seq: HashMap<Uuid, &Sequence> = sequences.iter().map(|s| (s.id, s)).collect();
    let zone_of: HashMap<Uuid, Option<chrono_tz::Tz>> =
        leads.values().map(|l| (l.id, l.timezone)).collect();

    // Plan the first step of every new pair.
    struct New {
        sequence: Uuid,
        lead: Uuid,
        enrollment: Uuid,
        step: Uuid,
        position: i32,
        due: chrono::DateTime<Utc>,
        expired: Option<String>,
        mailbox: Option<Uuid>,
    }
    let mut new = Vec::new();
    for &(sequence, lead) in pairs {
        if let Some(e) = existing.get(&(sequence, lead)) {
            out.insert((sequence, lead), e.found());
            continue;
        }
        let seq = by_seq
            .get(&sequence)
            .ok_or_else(|| StoreError::Corrupt(format!("sequence {sequence} not loaded")))?;
        let first = seq
            .first
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt(format!("sequence {sequence} has no steps")))?;
        let lead_tz = zone_of.get(&lead).copied().flatten();
        let (due, expired) =
            schedule::plan_run(first, now, &seq.rules, lead_tz).map_err(StoreError::Corrupt)?;
        new.push(New {
            sequence,
            lead,
            enrollment: Uuid::new_v4(),
            step: first.id,
            position: first.position,
            due,
            expired,
            mailbox: None,
        });
    }
    if new.is_empty() {
        return Ok(out);
    }
    // Each new enrollment of a mailbox sequence is given its mailbox, in turn.
    let mut wanted: HashMap<Uuid, (&[Uuid], usize)> = HashMap::new();
    for n in &new {
        if let Some(list) = by_seq.get(&n.sequence).and_then(|s| s.mailboxes.as_deref()) {
            wanted.entry(n.sequence).or_insert((list, 0)).1 += 1;
        }
    }
    if !wanted.is_empty() {
        let wanted = wanted.into_iter().map(|(s, (l, n))| (s, l, n)).collect();
        let mut turns = pulse_shared::mailbox::take_turns(conn, wanted).await?;
        for n in new.iter_mut() {
            if let Some(picks) = turns.get_mut(&n.sequence) {
                n.mailbox = picks.pop();
            }
        }
    }
    let col = |f: fn(&New) -> Uuid| new.iter().map(f).collect::<Vec<_>>();
    let inserted: HashSet<Uuid> = sqlx::query_scalar(
        // No conflict arbiter: the partial unique index (one ACTIVE per pair) and the generation
        // key both make a concurrent enrollment's insert do nothing here.
        "WITH u AS (
             SELECT * FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[],
                                  $7::int4[], $8::timestamptz[], $9::text[], $11::uuid[])
                 AS u(enrollment, sequence, lead, run, step, position, due, expired, mailbox)),
         ins AS (
             INSERT INTO enrollments (id, workspace_id, sequence_id, lead_id, source, generation,
                                      current_step, status, end_reason, ended_at, mailbox_id)
             SELECT u.enrollment, $1, u.sequence, u.lead, 'trigger', 1, u.position,
                    CASE WHEN u.expired IS NULL THEN 'ACTIVE' ELSE 'COMPLETED' END, u.expired,
                    CASE WHEN u.expired IS NULL THEN NULL ELSE now() END, u.mailbox
             FROM u ORDER BY u.sequence, u.lead
             ON CONFLICT DO NOTHING
             RETURNING id),
         runs AS (
             INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position,
                                    generation, due_at, state, last_error, trace_parent)
             SELECT u.run, $1, u.sequence, u.enrollment, u.step, u.position, 1, u.due,
                    CASE WHEN u.expired IS NULL THEN 'SCHEDULED' ELSE 'SKIPPED' END, u.expired,
                    $10
             FROM u JOIN ins ON ins.id = u.enrollment)
         SELECT id FROM ins",
    )
    .bind(workspace)
    .bind(col(|n| n.enrollment))
    .bind(col(|n| n.sequence))
    .bind(col(|n| n.lead))
    .bind(new.iter().map(|_| Uuid::new_v4()).collect::<Vec<_>>())
    .bind(col(|n| n.step))
    .bind(new.iter().map(|n| n.position).collect::<Vec<_>>())
    .bind(new.iter().map(|n| n.due).collect::<Vec<_>>())
    .bind(new.iter().map(|n| n.expired.clone()).collect::<Vec<_>>())
    .bind(pulse_shared::telemetry::traceparent(
        &tracing::Span::current(),
    ))
    .bind(new.iter().map(|n| n.mailbox).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let mut lost = (Vec::new(), Vec::new());
    for n in &new {
        if inserted.contains(&n.enrollment) {
            let status = if n.expired.is_some() {
                EnrollmentStatus::Completed
            } else {
                EnrollmentStatus::Active
            };
            out.insert(
                (n.sequence, n.lead),
                Enrolled {
                    id: Some(n.enrollment),
                    outcome: outcome::CREATED,
                    status,
                },
            );
        } else {
            lost.0.push(n.sequence);
            lost.1.push(n.lead);
        }
    }
    // A concurrent request enrolled these pairs first: report its enrollment.
    if !lost.0.is_empty() {
        for (pair, e) in latest_enrollments(conn, &lost.0, &lost.1).await? {
            out.insert(pair, e.found());
        }
    }
    Ok(out)
}

/// An enrollment found before this batch enrolled anything.
struct Existing {
    id: Uuid,
    status: EnrollmentStatus,
}

impl Existing {
    fn found(&self) -> Enrolled {
        Enrolled {
            id: Some(self.id),
            outcome: if self.status == EnrollmentStatus::Active {
                outcome::ALREADY_ACTIVE
            } else {
                outcome::ENDED_NOT_REENROLLED
            },
            status: self.status,
        }
    }
}

/// The latest enrollment of each (sequence, lead) pair that has one: its ACTIVE one, else its
/// highest generation (a merge of two leads can leave an ended one numbered above the ACTIVE
/// one: `identity::merge_leads`).
async fn latest_enrollments(
    conn: &mut PgConnection,
    sequences: &[Uuid],
    leads: &[Uuid],
) -> Result<HashMap<(Uuid, Uuid), Existing>, StoreError> {
    let rows: Vec<(Uuid, Uuid, Uuid, EnrollmentStatus)> = sqlx::query_as(
        "SELECT DISTINCT ON (e.sequence_id, e.lead_id) e.sequence_id, e.lead_id, e.id, e.status
         FROM enrollments e
         JOIN UNNEST($1::uuid[], $2::uuid[]) AS p(sequence, lead)
           ON e.sequence_id = p.sequence AND e.lead_id = p.lead
         ORDER BY e.sequence_id, e.lead_id, e.status = 'ACTIVE' DESC, e.generation DESC",
    )
    .bind(sequences)
    .bind(leads)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(s, l, id, status)| ((s, l), Existing { id, status }))
        .collect())
}
