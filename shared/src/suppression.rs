//! The suppression list: addresses and whole domains a workspace never mails again. Owns what an
//! entry is (its canonical value: the address as leads are stored, the domain in lower case and
//! IDNA), and the one lookup enrollment makes before enrolling. The sender's re-check is in its
//! snapshot query (`ledger::snapshot`); ending the enrollments a new entry reaches is the api's
//! (`services/api/src/suppressions.rs`). Tokens for one-click unsubscribe are `unsubscribe`'s.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{db::StoreError, domain::validate};

/// Most entries added in one call.
pub const MAX_PER_CALL: usize = 10_000;

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
