//! Leads and enrollments: the dedupe rules of `docs/architecture.md`. Owns lead upserts, enrolling a lead in
//! a sequence (one ACTIVE enrollment per sequence and lead, enforced by a partial unique index),
//! and scheduling an enrollment's first step. Used by ingest (triggers) and the api (manual).
//! It never decides *whether* a trigger matches; callers pass the sequence.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::{
    db::StoreError,
    domain::{limits, validate},
    model::{EnrollmentStatus, LeadInput, outcome},
    schedule::{self, Target},
};

/// A lead whose fields have been checked.
#[derive(Clone, Debug)]
pub struct ValidLead {
    /// The canonical address: the lead's identity (see `domain::validate::address`).
    pub email: String,
    /// The address as the caller gave it.
    pub email_given: String,
    /// For each of these: `None` keeps the stored value, `Some(None)` clears it, `Some(Some)`
    /// sets it.
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub timezone: Option<Option<String>>,
    pub attributes: Map<String, Value>,
}

/// A field of the request that is wrong, and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ValidLead {
    /// Checks `input` under the workspace's address `policy`; `at` is the JSON path of the lead
    /// in the request, for error messages.
    pub fn parse(
        input: &LeadInput,
        at: &str,
        policy: validate::AddressPolicy,
    ) -> Result<Self, FieldError> {
        let email = validate::address(&input.email, policy)
            .map_err(|m| FieldError::new(format!("{at}.email"), m))?;
        let timezone = match supplied(&input.timezone) {
            Some(Some(tz)) => Some(Some(
                validate::timezone(tz)
                    .map_err(|m| FieldError::new(format!("{at}.timezone"), m))?
                    .name()
                    .to_owned(),
            )),
            other => other.map(|_| None),
        };
        let clean = |v: &Option<Option<String>>,
                     name: &str|
         -> Result<Option<Option<String>>, FieldError> {
            let v = supplied(v);
            if let Some(Some(v)) = v {
                validate::text(v, limits::TEXT_BYTES)
                    .map_err(|m| FieldError::new(format!("{at}.{name}"), m))?;
            }
            Ok(v.map(|v| v.map(str::to_owned)))
        };
        let attributes = input.attributes.clone().unwrap_or_default();
        validate::attributes(&attributes).map_err(|(key, m)| {
            let field = match key {
                Some(k) => format!("{at}.attributes.{k}"),
                None => format!("{at}.attributes"),
            };
            FieldError::new(field, m)
        })?;
        Ok(ValidLead {
            email: email.canonical,
            email_given: email.given,
            first_name: clean(&input.first_name, "first_name")?,
            last_name: clean(&input.last_name, "last_name")?,
            timezone,
            attributes,
        })
    }
}

/// Left out: `None` (keep); `null` or blank: `Some(None)` (clear); else `Some(Some(value))`.
fn supplied(v: &Option<Option<String>>) -> Option<Option<&str>> {
    v.as_ref()
        .map(|v| v.as_deref().map(str::trim).filter(|s| !s.is_empty()))
}

/// Creates the lead or updates the fields the caller supplied (a cleared field becomes null);
/// returns its id. A changed time zone re-plans the lead's scheduled steps
/// ([`schedule::replan_lead`]).
pub async fn upsert_lead(
    conn: &mut PgConnection,
    workspace: Uuid,
    lead: &ValidLead,
) -> Result<Uuid, UpsertError> {
    let stored: Option<Value> = sqlx::query_scalar(
        "SELECT attributes FROM leads WHERE workspace_id = $1 AND email = $2 FOR UPDATE",
    )
    .bind(workspace)
    .bind(&lead.email)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(Value::Object(stored)) = &stored {
        validate::merged_attributes(stored, &lead.attributes)
            .map_err(|m| FieldError::new("lead.attributes", m))?;
    }
    let row = sqlx::query(
        "WITH old AS (
             SELECT id, timezone FROM leads WHERE workspace_id = $2 AND email = $3 FOR UPDATE)
         INSERT INTO leads (id, workspace_id, email, first_name, last_name, timezone, attributes,
                            email_given)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (workspace_id, email) DO UPDATE SET
             first_name = CASE WHEN $9 THEN EXCLUDED.first_name ELSE leads.first_name END,
             last_name  = CASE WHEN $10 THEN EXCLUDED.last_name ELSE leads.last_name END,
             timezone   = CASE WHEN $11 THEN EXCLUDED.timezone ELSE leads.timezone END,
             attributes = leads.attributes || EXCLUDED.attributes,
             updated_at = now()
         RETURNING id, EXISTS (SELECT 1 FROM old WHERE old.timezone IS DISTINCT FROM leads.timezone)
                   AS zone_changed",
    )
    .bind(Uuid::new_v4())
    .bind(workspace)
    .bind(&lead.email)
    .bind(lead.first_name.clone().flatten())
    .bind(lead.last_name.clone().flatten())
    .bind(lead.timezone.clone().flatten())
    .bind(Value::Object(lead.attributes.clone()))
    .bind(&lead.email_given)
    .bind(lead.first_name.is_some())
    .bind(lead.last_name.is_some())
    .bind(lead.timezone.is_some())
    .fetch_one(&mut *conn)
    .await?;
    let id: Uuid = row.try_get("id")?;
    if row.try_get::<bool, _>("zone_changed")? {
        schedule::replan_lead(conn, id).await?;
    }
    Ok(id)
}

/// Why a lead was not upserted.
#[derive(Debug, thiserror::Error)]
pub enum UpsertError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The lead would keep more attributes than its bound ([`validate::merged_attributes`]).
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

impl From<sqlx::Error> for UpsertError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<UpsertError> for crate::http::ApiError {
    fn from(e: UpsertError) -> Self {
        match e {
            UpsertError::Store(e) => e.into(),
            UpsertError::Invalid(e) => e.into(),
        }
    }
}

/// What `enroll` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    pub enrollment_id: Option<Uuid>,
    /// One of [`crate::model::outcome`].
    pub outcome: &'static str,
}

/// Enrolls `lead` in `sequence` unless it already has an enrollment there. An ACTIVE one is
/// reported as `already_active`; an ended one as `ended_not_reenrolled` (re-enrollment is an
/// explicit action). The caller has checked that the sequence is ACTIVE, inside `conn`'s
/// transaction.
pub async fn enroll(
    conn: &mut PgConnection,
    workspace: Uuid,
    sequence: Uuid,
    lead: Uuid,
    source: &str,
    now: DateTime<Utc>,
) -> Result<Enrolled, StoreError> {
    if let Some(found) = latest_enrollment(conn, sequence, lead).await? {
        return Ok(found);
    }
    if is_suppressed(conn, workspace, lead).await? {
        return Ok(Enrolled {
            enrollment_id: None,
            outcome: outcome::SUPPRESSED,
        });
    }
    let id = Uuid::new_v4();
    let target = Target {
        workspace,
        sequence,
        enrollment: id,
        lead,
        generation: 1,
    };
    if !insert_and_start(conn, target, source, now).await? {
        return latest_enrollment(conn, sequence, lead)
            .await?
            .ok_or_else(|| StoreError::Corrupt("enrollment conflict without a row".into()));
    }
    Ok(Enrolled {
        enrollment_id: Some(id),
        outcome: outcome::CREATED,
    })
}

/// Whether the lead's address or domain is on the workspace's suppression list.
async fn is_suppressed(
    conn: &mut PgConnection,
    workspace: Uuid,
    lead: Uuid,
) -> Result<bool, StoreError> {
    let email: String = sqlx::query_scalar("SELECT email FROM leads WHERE id = $1")
        .bind(lead)
        .fetch_one(&mut *conn)
        .await?;
    Ok(
        !crate::suppression::suppressed(conn, workspace, &[email.as_str()])
            .await?
            .is_empty(),
    )
}

async fn latest_enrollment(
    conn: &mut PgConnection,
    sequence: Uuid,
    lead: Uuid,
) -> Result<Option<Enrolled>, StoreError> {
    let row = sqlx::query(
        "SELECT id, status FROM enrollments WHERE sequence_id = $1 AND lead_id = $2
         ORDER BY status = 'ACTIVE' DESC, generation DESC LIMIT 1",
    )
    .bind(sequence)
    .bind(lead)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| {
        let status: EnrollmentStatus = r.get("status");
        Enrolled {
            enrollment_id: Some(r.get("id")),
            outcome: if status == EnrollmentStatus::Active {
                outcome::ALREADY_ACTIVE
            } else {
                outcome::ENDED_NOT_REENROLLED
            },
        }
    }))
}

/// Inserts the enrollment `target` names and schedules its first live step. `false`: a concurrent
/// enrollment of the same lead won (the partial unique index, or the generation key) and nothing
/// was written. No conflict arbiter, so either index makes the insert do nothing.
async fn insert_and_start(
    conn: &mut PgConnection,
    target: Target,
    source: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    // A mailbox sequence gives the enrollment its mailbox, in turn.
    let mailboxes: Option<Vec<Uuid>> =
        sqlx::query_scalar("SELECT sender_mailboxes FROM sequences WHERE id = $1")
            .bind(target.sequence)
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    let mailbox = match &mailboxes {
        Some(list) => crate::mailbox::take_turns(conn, vec![(target.sequence, list, 1)])
            .await?
            .remove(&target.sequence)
            .and_then(|mut picks| picks.pop()),
        None => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO enrollments (id, workspace_id, sequence_id, lead_id, source, generation,
                                  mailbox_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(target.enrollment)
    .bind(target.workspace)
    .bind(target.sequence)
    .bind(target.lead)
    .bind(source)
    .bind(target.generation)
    .bind(mailbox)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    let first = schedule::step_after(conn, &target, None)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("sequence {} has no steps", target.sequence)))?;
    let trace = crate::telemetry::traceparent(&tracing::Span::current());
    schedule::schedule_step(conn, target, &first, now, trace.as_deref()).await?;
    Ok(true)
}

/// Starts `lead` again from step 1 as a new enrollment generation, unless it is ACTIVE already
/// (`already_active`) or was never enrolled (`never_enrolled`). The old generation's step runs
/// and ledger entries are untouched; the new generation's idempotency keys differ from them.
/// The caller has checked that the sequence is ACTIVE, inside `conn`'s transaction.
pub async fn reenroll(
    conn: &mut PgConnection,
    workspace: Uuid,
    sequence: Uuid,
    lead: Uuid,
    now: DateTime<Utc>,
) -> Result<Enrolled, StoreError> {
    let latest = sqlx::query(
        "SELECT id, status, generation FROM enrollments WHERE sequence_id = $1 AND lead_id = $2
         ORDER BY status = 'ACTIVE' DESC, generation DESC LIMIT 1 FOR UPDATE",
    )
    .bind(sequence)
    .bind(lead)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(latest) = latest else {
        return Ok(Enrolled {
            enrollment_id: None,
            outcome: outcome::NEVER_ENROLLED,
        });
    };
    if latest.get::<EnrollmentStatus, _>("status") == EnrollmentStatus::Active {
        return Ok(Enrolled {
            enrollment_id: Some(latest.get("id")),
            outcome: outcome::ALREADY_ACTIVE,
        });
    }
    if is_suppressed(conn, workspace, lead).await? {
        return Ok(Enrolled {
            enrollment_id: None,
            outcome: outcome::SUPPRESSED,
        });
    }
    let generation = latest.get::<i32, _>("generation") + 1;
    let id = Uuid::new_v4();
    let target = Target {
        workspace,
        sequence,
        enrollment: id,
        lead,
        generation,
    };
    if !insert_and_start(conn, target, "re-enroll", now).await? {
        return Ok(Enrolled {
            enrollment_id: None,
            outcome: outcome::ALREADY_ACTIVE,
        });
    }
    Ok(Enrolled {
        enrollment_id: Some(id),
        outcome: outcome::REENROLLED,
    })
}
