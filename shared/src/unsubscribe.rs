//! One-click unsubscribe (RFC 8058): the signed token that names a (workspace, lead, sequence),
//! the URL and the headers every message carries. Its keys also sign the VERP bounce addresses
//! (`verp`). Owns the token format and its keys: HMAC-SHA256
//! keyed by `PULSE_UNSUBSCRIBE_SECRET` (the previous key still verifies, for rotation) or, when
//! it is unset, by a random key made once and kept in `unsubscribe_keys`. Tokens never expire.
//! Acting on a token (suppressing the address) is the api's (`services/api/src/unsubscribe.rs`).
//!
//! Token: base64url (no padding) of workspace ‖ lead ‖ sequence (16 bytes each) ‖ the first 16
//! bytes of the HMAC over those 48 bytes.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Settings, db::StoreError};

type HmacSha256 = Hmac<Sha256>;

const IDS: usize = 48;
const TAG: usize = 16;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Who a token unsubscribes, and from which sequence's mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    pub workspace: Uuid,
    pub lead: Uuid,
    pub sequence: Uuid,
}

/// The keys, the public base URL and the optional mailto: everything a role needs to put the
/// unsubscribe URL in a message or to check a token.
#[derive(Clone)]
pub struct Unsubscribe {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    base: String,
    mailto: Option<String>,
}

impl std::fmt::Debug for Unsubscribe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsubscribe")
            .field("base", &self.base)
            .field("keys", &"<redacted>")
            .finish()
    }
}

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Unsubscribe {
    /// From the settings, or the key kept in PostgreSQL (made now, at random, if there is none).
    pub async fn load(db: &PgPool, settings: &Settings) -> Result<Self, StoreError> {
        let current = match &settings.unsubscribe_secret {
            Some(secret) => key(secret.expose()),
            None => {
                let random: Vec<u8> = Uuid::new_v4()
                    .as_bytes()
                    .iter()
                    .chain(Uuid::new_v4().as_bytes())
                    .copied()
                    .collect();
                sqlx::query(
                    "INSERT INTO unsubscribe_keys (id, secret) VALUES (1, $1) ON CONFLICT DO NOTHING",
                )
                .bind(&random)
                .execute(db)
                .await?;
                let stored: Vec<u8> =
                    sqlx::query_scalar("SELECT secret FROM unsubscribe_keys WHERE id = 1")
                        .fetch_one(db)
                        .await?;
                Sha256::digest(&stored).into()
            }
        };
        Ok(Self {
            current,
            previous: settings
                .unsubscribe_secret_previous
                .as_ref()
                .map(|s| key(s.expose())),
            base: settings.public_url.clone(),
            mailto: settings.unsubscribe_mailto.clone(),
        })
    }

    /// A fixed key, for tests and benchmarks.
    pub fn with_key(secret: &str, previous: Option<&str>, base: &str) -> Self {
        Self {
            current: key(secret),
            previous: previous.map(key),
            base: base.trim_end_matches('/').to_owned(),
            mailto: None,
        }
    }

    pub fn token(&self, s: Subject) -> String {
        let mut raw = ids(s).to_vec();
        raw.extend_from_slice(&tag(&self.current, &raw[..IDS]));
        B64.encode(raw)
    }

    /// The one-click URL: `PULSE_PUBLIC_URL/u/TOKEN`.
    pub fn url(&self, s: Subject) -> String {
        format!("{}/u/{}", self.base, self.token(s))
    }

    /// `List-Unsubscribe`'s value: the URL, and a `mailto:`: the configured one
    /// (`PULSE_UNSUBSCRIBE_MAILTO`), else `read` (the send's `unsubscribe+TOKEN@` address at the
    /// bounce domain, which the inbound role reads), else none.
    pub fn list_unsubscribe(&self, s: Subject, read: Option<&str>) -> String {
        match self.mailto.as_deref().or(read) {
            Some(to) => format!("<{}>, <mailto:{to}?subject=unsubscribe>", self.url(s)),
            None => format!("<{}>", self.url(s)),
        }
    }

    /// Who `token` names, if one of the keys signed it.
    pub fn verify(&self, token: &str) -> Option<Subject> {
        let raw = B64.decode(token.trim()).ok()?;
        if raw.len() != IDS + TAG {
            return None;
        }
        let (ids, given) = raw.split_at(IDS);
        let signed_by = |k: &[u8; 32]| {
            let mut mac = HmacSha256::new_from_slice(k).ok()?;
            mac.update(ids);
            mac.verify_truncated_left(given).ok()
        };
        signed_by(&self.current).or_else(|| self.previous.as_ref().and_then(signed_by))?;
        let id = |i: usize| Uuid::from_slice(&ids[i * 16..(i + 1) * 16]).ok();
        Some(Subject {
            workspace: id(0)?,
            lead: id(1)?,
            sequence: id(2)?,
        })
    }
}

impl Unsubscribe {
    /// The keys, current first: the VERP bounce addresses (`verp`) are signed with them too.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }
}

fn ids(s: Subject) -> [u8; IDS] {
    let mut out = [0u8; IDS];
    out[..16].copy_from_slice(s.workspace.as_bytes());
    out[16..32].copy_from_slice(s.lead.as_bytes());
    out[32..].copy_from_slice(s.sequence.as_bytes());
    out
}

fn tag(key: &[u8; 32], ids: &[u8]) -> [u8; TAG] {
    let mut out = [0u8; TAG];
    // HMAC takes a key of any length: this cannot fail.
    if let Ok(mut mac) = HmacSha256::new_from_slice(key) {
        mac.update(ids);
        out.copy_from_slice(&mac.finalize().into_bytes()[..TAG]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            workspace: Uuid::new_v4(),
            lead: Uuid::new_v4(),
            sequence: Uuid::new_v4(),
        }
    }

    #[test]
    fn a_token_verifies_under_its_key_and_the_next_one_and_nothing_else() {
        let s = subject();
        let old = Unsubscribe::with_key("old", None, "https://p.example/");
        let token = old.token(s);
        assert_eq!(old.verify(&token), Some(s));
        assert_eq!(old.url(s), format!("https://p.example/u/{token}"));
        // Rotated: the old key still verifies as the previous one.
        let rotated = Unsubscribe::with_key("new", Some("old"), "https://p.example");
        assert_eq!(rotated.verify(&token), Some(s));
        assert_eq!(rotated.verify(&rotated.token(s)), Some(s));
        // Another key, a changed byte, a cut token: nothing.
        assert_eq!(Unsubscribe::with_key("new", None, "x").verify(&token), None);
        let mut raw = B64.decode(&token).unwrap();
        raw[20] ^= 1;
        assert_eq!(old.verify(&B64.encode(&raw)), None);
        assert_eq!(old.verify(&token[..40]), None);
        assert_eq!(old.verify("not base64 !"), None);
    }
}
