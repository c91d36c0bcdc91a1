//! The suppression list: addresses and whole domains a workspace never mails again. Owns what an
//! entry is (its canonical value: the address as leads are stored, the domain in lower case and
//! IDNA), adding entries with the enrollments they end ([`add`], for the api and the inbound
//! role), and the one lookup enrollment makes before enrolling. The sender's re-check is in its
//! snapshot query (`ledger::snapshot`); waiting for sends already claimed is the api's
//! (`services/api/src/drain.rs`). Tokens for one-click unsubscribe are `unsubscribe`'s.

use std::collections::HashSet;

use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::{
    audit,
    db::StoreError,
    domain::validate,
    model::{EnrollmentStatus, SuppressionReason},
    transitions,
};

/// Most entries added in one call.
pub const MAX_PER_CALL: usize = 10_000;

/// Enrollments ended per transaction.
const CHUNK: i64 = 1000;

/// An address or a domain, canonical.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Email(String),
    Domain(String),
}

impl Entry {
    /// Reads `email` or `domain` (exactly one).
    pub fn parse(
        email: Option<&str>,
        domain: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        match (email, domain) {
            (Some(e), None) => validate::email(e)
                .map(Entry::Email)
                .map_err(|m| ("email", m)),
            (None, Some(d)) => validate::domain(d)
                .map(Entry::Domain)
                .map_err(|m| ("domain", m)),
            _ => Err(("email", "give either email or domain".into())),
        }
    }

    /// Reads a value that is an address when it has an `@`, else a domain.
    pub fn parse_value(value: &str) -> Result<Self, String> {
        if value.contains('@') {
            Self::parse(Some(value), None)
        } else {
            Self::parse(None, Some(value))
        }
        .map_err(|(_, m)| m)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Email(_) => "email",
            Entry::Domain(_) => "domain",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Entry::Email(v) | Entry::Domain(v) => v,
        }
    }
}

/// What [`add`] did.
#[derive(Clone, Debug, Default)]
pub struct Added {
    /// Entries new to the list.
    pub added: usize,
    /// Entries that were on it already.
    pub already: usize,
    /// ACTIVE enrollments of the suppressed leads, now CANCELLED with the entry's reason.
    pub ended: usize,
    /// Their leads, sorted, each once.
    pub leads: Vec<Uuid>,
}

/// Adds `entries` to `workspace`'s list (one already there is left as it is), then ends, in
/// chunks in id order, every ACTIVE enrollment of the leads they reach: CANCELLED, the reason
/// the entry's, audited as `actor`'s. `source` says where the entries came from. Sends already
/// claimed are not waited for: callers that promise "nothing more goes out" wait for `leads`.
pub async fn add(
    db: &PgPool,
    workspace: Uuid,
    actor: &str,
    source: &str,
    mut entries: Vec<(Entry, SuppressionReason)>,
) -> Result<Added, StoreError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let kinds: Vec<&str> = entries.iter().map(|(e, _)| e.kind()).collect();
    let values: Vec<&str> = entries.iter().map(|(e, _)| e.value()).collect();
    let reasons: Vec<&str> = entries.iter().map(|(_, r)| r.as_str()).collect();
    // Each new entry is a `lead.suppressed` webhook event, written by the same statement.
    let (added, _events): (i64, i64) = sqlx::query_as(
        "WITH added AS (
             INSERT INTO suppressions (workspace_id, kind, value, reason, source)
             SELECT $1, k, v, r, $5 FROM UNNEST($2::text[], $3::text[], $4::text[]) AS u(k, v, r)
             ON CONFLICT DO NOTHING RETURNING kind, value, reason),
         events AS (
             SELECT pulse_webhook_emit($1, 'lead.suppressed',
                        jsonb_build_object('workspace_id', $1::uuid, 'kind', a.kind,
                            'value', a.value, 'reason', a.reason, 'source', $5::text,
                            'actor', $6::text)) AS n
             FROM added a WHERE pulse_webhook_wanted($1, 'lead.suppressed'))
         SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM events)",
    )
    .bind(workspace)
    .bind(&kinds)
    .bind(&values)
    .bind(&reasons)
    .bind(source)
    .bind(actor)
    .fetch_one(db)
    .await?;
    let added = added as usize;
    let mut out = Added {
        added,
        already: entries.len() - added,
        ..Added::default()
    };
    // An address's own reason wins over its domain's: addresses first.
    for reason in SuppressionReason::ALL {
        let (emails, domains): (Vec<&Entry>, Vec<&Entry>) = entries
            .iter()
            .filter(|(_, r)| *r == reason)
            .map(|(e, _)| e)
            .partition(|e| matches!(e, Entry::Email(_)));
        for group in [emails, domains] {
            if !group.is_empty() {
                end_reached(db, workspace, actor, &group, reason, &mut out).await?;
            }
        }
    }
    out.leads.sort_unstable();
    out.leads.dedup();
    Ok(out)
}

/// Ends, in chunks of [`CHUNK`] in id order, the ACTIVE enrollments of the leads `entries`
/// (all addresses or all domains) reach, counting them and their leads into `out`.
async fn end_reached(
    db: &PgPool,
    workspace: Uuid,
    actor: &str,
    entries: &[&Entry],
    reason: SuppressionReason,
    out: &mut Added,
) -> Result<(), StoreError> {
    let values: Vec<&str> = entries.iter().map(|e| e.value()).collect();
    // Addresses by the (workspace, email) index; domains by the lead's address's domain.
    let matches = match entries.first() {
        Some(Entry::Domain(_)) => "split_part(l.email, '@', 2) = ANY($2)",
        _ => "l.email = ANY($2)",
    };
    let mut last = None::<Uuid>;
    loop {
        let mut tx = db.begin().await?;
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
                out.ended += 1;
                out.leads.push(lead);
                audit::record(
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
    Ok(())
}

/// The domain of a canonical address.
pub fn domain_of(email: &str) -> &str {
    email.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Which of these canonical lead addresses are suppressed in `workspace`, by address or domain.
pub async fn suppressed(
    conn: &mut PgConnection,
    workspace: Uuid,
    emails: &[&str],
) -> Result<HashSet<String>, StoreError> {
    if emails.is_empty() {
        return Ok(HashSet::new());
    }
    let mut domains: Vec<&str> = emails.iter().map(|e| domain_of(e)).collect();
    domains.sort_unstable();
    domains.dedup();
    let hits: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, value FROM suppressions WHERE workspace_id = $1
           AND ((kind = 'email' AND value = ANY($2)) OR (kind = 'domain' AND value = ANY($3)))",
    )
    .bind(workspace)
    .bind(emails)
    .bind(&domains)
    .fetch_all(conn)
    .await?;
    let (mut by_email, mut by_domain) = (HashSet::new(), HashSet::new());
    for (kind, value) in hits {
        if kind == "email" {
            by_email.insert(value);
        } else {
            by_domain.insert(value);
        }
    }
    Ok(emails
        .iter()
        .filter(|e| by_email.contains(**e) || by_domain.contains(domain_of(e)))
        .map(|e| (*e).to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_canonical() {
        assert_eq!(
            Entry::parse(Some(" Ada@Example.COM "), None).unwrap(),
            Entry::Email("ada@example.com".into())
        );
        assert_eq!(
            Entry::parse(None, Some("Example.COM")).unwrap(),
            Entry::Domain("example.com".into())
        );
        assert_eq!(Entry::parse_value("x.example").unwrap().kind(), "domain");
        assert!(Entry::parse(Some("a@b.co"), Some("b.co")).is_err());
        assert!(Entry::parse(None, Some("not a domain")).is_err());
        assert_eq!(domain_of("a@b.example"), "b.example");
    }
}
