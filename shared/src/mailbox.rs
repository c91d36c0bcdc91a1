//! Sender mailboxes. Owns the rules of a mailbox's settings (checked when saved), the turn-taking
//! that gives each new enrollment of a mailbox sequence its mailbox, and the DKIM key format.
//! Secrets pass through here and are never logged or returned. The API stores mailboxes; the
//! scheduler freezes a run's mailbox; the sender opens its relay and signs with its key.

use std::collections::HashMap;

use lettre::message::dkim::{DkimSigningAlgorithm, DkimSigningKey};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{db::StoreError, smtp_url::SmtpUrl};

/// Most mailboxes one sequence sends from.
pub const MAX_PER_SEQUENCE: usize = 100;

/// A relay URL as stored: checked, with its password split off (stored apart, never shown).
#[derive(Debug, PartialEq, Eq)]
pub struct StoredRelay {
    pub url: String,
    pub password: Option<String>,
}

/// Checks a mailbox's relay URL and splits off its password. The error never contains it.
pub fn relay(raw: &str) -> Result<StoredRelay, String> {
    let parsed = SmtpUrl::parse(raw)?;
    let mut url = url::Url::parse(raw.trim()).map_err(|e| e.to_string())?;
    let password = parsed
        .credentials
        .as_ref()
        .map(|c| c.password.expose().to_owned())
        .filter(|p| !p.is_empty());
    url.set_password(None)
        .map_err(|()| "the URL cannot carry credentials".to_owned())?;
    Ok(StoredRelay {
        url: url.to_string(),
        password,
    })
}

/// The relay a mailbox sends through: its stored URL with its stored password.
pub fn relay_url(url: &str, password: Option<&str>) -> Result<SmtpUrl, String> {
    let relay = SmtpUrl::parse(url)?;
    match password {
        Some(p) => relay.with_password(crate::smtp_url::Secret::new(p)),
        None => Ok(relay),
    }
}

/// Reads a DKIM private key: RSA as PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`), or Ed25519
/// as the base64 of its 32-byte seed (what lettre signs with).
pub fn dkim_key(private_key: &str) -> Result<DkimSigningKey, String> {
    let key = private_key.trim();
    if key.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        DkimSigningKey::new(key, DkimSigningAlgorithm::Rsa)
            .map_err(|e| format!("not a valid RSA private key: {e}"))
    } else if key.starts_with("-----BEGIN") {
        Err(
            "expected an RSA key in PKCS#1 PEM (-----BEGIN RSA PRIVATE KEY-----) or an \
             Ed25519 seed in base64; convert a PKCS#8 key with `openssl rsa -traditional`"
                .into(),
        )
    } else {
        DkimSigningKey::new(key, DkimSigningAlgorithm::Ed25519)
            .map_err(|e| format!("not a valid Ed25519 seed (base64 of 32 bytes): {e}"))
    }
}

/// A DKIM selector: one DNS label.
pub fn dkim_selector(selector: &str) -> Result<String, String> {
    let s = selector.trim();
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if s.split('.').all(label) && s.len() <= 200 {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{selector:?} is not a DNS selector (letters, digits, '-', '_', '.')"
        ))
    }
}

/// Gives the new enrollments of mailbox sequences their mailboxes, in turn: for each sequence
/// (its mailbox list and how many enrollments it is about to create), the mailbox of each, in
/// order. The turn counter is taken in sequence-id order, one row per sequence, so concurrent
/// enrollments never deadlock on it; they wait for each other's commit on the same sequence.
pub async fn take_turns(
    conn: &mut PgConnection,
    mut wanted: Vec<(Uuid, &[Uuid], usize)>,
) -> Result<HashMap<Uuid, Vec<Uuid>>, StoreError> {
    wanted.sort_by_key(|w| w.0);
    let mut out = HashMap::with_capacity(wanted.len());
    for (sequence, mailboxes, n) in wanted {
        if mailboxes.is_empty() || n == 0 {
            continue;
        }
        let count = i64::try_from(n).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let start: i64 = sqlx::query_scalar(
            "INSERT INTO mailbox_turns AS t (sequence_id, turn) VALUES ($1, $2)
             ON CONFLICT (sequence_id) DO UPDATE SET turn = t.turn + EXCLUDED.turn
             RETURNING turn - $2",
        )
        .bind(sequence)
        .bind(count)
        .fetch_one(&mut *conn)
        .await?;
        let len = mailboxes.len() as i64;
        let picks = (0..count)
            .map(|i| mailboxes[((start + i).rem_euclid(len)) as usize])
            .collect();
        out.insert(sequence, picks);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_password_is_split_off_and_never_in_errors() {
        let r =
            relay("smtp://ada%40example.com:s%3Acret@smtp.example.com:587?tls=required").unwrap();
        assert_eq!(r.password.as_deref(), Some("s:cret"));
        assert!(!r.url.contains("cret"), "{}", r.url);
        let back = relay_url(&r.url, r.password.as_deref()).unwrap();
        let c = back.credentials.unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.expose()),
            ("ada@example.com", "s:cret")
        );
        let err = relay("ftp://u:hunter2@x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(relay("smtp://relay:25").unwrap().password, None);
    }

    #[test]
    fn dkim_keys_and_selectors_are_checked() {
        assert!(dkim_key("-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----").is_err());
        assert!(
            dkim_key("-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----")
                .is_err()
        );
        // 32 zero bytes, base64.
        assert!(dkim_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_ok());
        assert!(dkim_key("short").is_err());
        assert_eq!(dkim_selector(" s2026 ").unwrap(), "s2026");
        assert!(dkim_selector("a b").is_err());
        assert!(dkim_selector("").is_err());
    }
}
