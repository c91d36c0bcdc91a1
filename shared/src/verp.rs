//! VERP bounce addresses: the envelope sender (`MAIL FROM`, the Return-Path) of every send when
//! `PULSE_BOUNCE_DOMAIN` is set, `bounce+TOKEN@DOMAIN`, so a bounce names the send it is about
//! even when the reporting MTA quotes nothing of the original message. The same kind of address,
//! `unsubscribe+TOKEN@DOMAIN`, is the `mailto:` of `List-Unsubscribe`: mail to it unsubscribes
//! the lead the send went to. The purpose is part of what is signed, so one token is never good
//! for the other.
//!
//! TOKEN is base64url (no padding) of the 16-byte hash in the send's Message-ID
//! (`<pulse.HASH@…>`, `ledger::message_id`) and the first 8 bytes of an HMAC-SHA256 over it,
//! keyed like unsubscribe tokens (`unsubscribe`, so rotation works the same). 32 characters: the
//! address stays well inside SMTP's 64-octet local part. A token that does not verify names
//! nothing. Matching the hash to its send is `feedback`'s.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::unsubscribe::Unsubscribe;

const HASH: usize = 16;
const TAG: usize = 8;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a tagged address is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `bounce+TOKEN`: the envelope sender; what comes to it is a bounce or an auto-reply.
    Bounce,
    /// `unsubscribe+TOKEN`: the `mailto:` of `List-Unsubscribe`.
    Unsubscribe,
}

impl Purpose {
    const ALL: [Purpose; 2] = [Purpose::Bounce, Purpose::Unsubscribe];

    /// The local part's prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Purpose::Bounce => "bounce+",
            Purpose::Unsubscribe => "unsubscribe+",
        }
    }

    /// Keeps these MACs apart from each other and from unsubscribe links made with the keys.
    fn context(self) -> &'static [u8] {
        match self {
            Purpose::Bounce => b"pulse-verp-v1",
            Purpose::Unsubscribe => b"pulse-unsubscribe-mailto-v1",
        }
    }
}

/// A verified tagged address: what it is for, and the send (its Message-ID hash, hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub purpose: Purpose,
    pub hash: String,
}

/// The bounce address's prefix.
pub const PREFIX: &str = "bounce+";

/// The hash of a Pulse Message-ID (`<pulse.HEX@domain>`), as hex; `None` for any other id.
pub fn message_hash(message_id: &str) -> Option<&str> {
    let id = message_id.trim().trim_start_matches('<');
    let hex = id.strip_prefix("pulse.")?.split('@').next()?;
    (hex.len() == HASH * 2 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The bounce address of the send with `message_id`, at `domain`; `None` if the id is not
/// Pulse's.
pub fn address(keys: &Unsubscribe, message_id: &str, domain: &str) -> Option<String> {
    tagged(keys, Purpose::Bounce, message_id, domain)
}

/// The address `purpose` gives the send with `message_id`, at `domain`.
pub fn tagged(
    keys: &Unsubscribe,
    purpose: Purpose,
    message_id: &str,
    domain: &str,
) -> Option<String> {
    let hash = decode_hex(message_hash(message_id)?)?;
    let mut raw = hash.to_vec();
    raw.extend_from_slice(&tag(keys.keys().next()?, purpose, &hash));
    Some(format!("{}{}@{domain}", purpose.prefix(), B64.encode(raw)))
}

/// The Message-ID hash (hex) a bounce address names, if one of the keys signed it.
pub fn verify(keys: &Unsubscribe, address: &str) -> Option<String> {
    verify_token(keys, address)
        .filter(|t| t.purpose == Purpose::Bounce)
        .map(|t| t.hash)
}

/// What a tagged address is for and the send it names, if one of the keys signed it for that
/// purpose. Takes the whole address or its local part; the prefix is matched without regard
/// to case.
pub fn verify_token(keys: &Unsubscribe, address: &str) -> Option<Token> {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let (purpose, token) = Purpose::ALL.into_iter().find_map(|p| {
        let prefix = p.prefix();
        local
            .get(..prefix.len())
            .filter(|x| x.eq_ignore_ascii_case(prefix))
            .and_then(|_| local.get(prefix.len()..))
            .map(|t| (p, t))
    })?;
    let raw = B64.decode(token).ok()?;
    if raw.len() != HASH + TAG {
        return None;
    }
    let (hash, given) = raw.split_at(HASH);
    let signed = keys.keys().any(|k| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(k) else {
            return false;
        };
        mac.update(purpose.context());
        mac.update(hash);
        mac.verify_truncated_left(given).is_ok()
    });
    signed.then(|| Token {
        purpose,
        hash: hash.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

fn tag(key: &[u8; 32], purpose: Purpose, hash: &[u8]) -> [u8; TAG] {
    let mut out = [0u8; TAG];
    // HMAC takes a key of any length: this cannot fail.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
        mac.update(purpose.context());
        mac.update(hash);
        out.copy_from_slice(&mac.finalize().into_bytes()[..TAG]);
    }
    out
}

fn decode_hex(hex: &str) -> Option<[u8; HASH]> {
    let mut out = [0u8; HASH];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::message_id;

    #[test]
    fn a_bounce_address_names_its_send_under_its_key_only() {
        let id = message_id("e:s:1", "example.com");
        let hash = message_hash(&id).unwrap().to_owned();
        let keys = Unsubscribe::with_key("k", None, "http://x");
        let addr = address(&keys, &id, "bounces.example.com").unwrap();
        let local = addr.split('@').next().unwrap();
        assert!(local.len() <= 64, "{local}");
        assert_eq!(verify(&keys, &addr).as_deref(), Some(hash.as_str()));
        let shouted = addr.replacen(PREFIX, "BOUNCE+", 1);
        assert_eq!(verify(&keys, &shouted).as_deref(), Some(hash.as_str()));
        assert_eq!(verify(&keys, local).as_deref(), Some(hash.as_str()));
        // Rotation: the old key still verifies; another key does not.
        let rotated = Unsubscribe::with_key("k2", Some("k"), "http://x");
        assert_eq!(verify(&rotated, &addr).as_deref(), Some(hash.as_str()));
        assert_eq!(verify(&Unsubscribe::with_key("k2", None, "x"), &addr), None);
        // Tampered, cut or foreign.
        let mut bad = addr.clone().into_bytes();
        bad[9] = if bad[9] == b'A' { b'B' } else { b'A' };
        assert_eq!(verify(&keys, &String::from_utf8(bad).unwrap()), None);
        assert_eq!(verify(&keys, "bounce+abc@x"), None);
        assert_eq!(verify(&keys, "ada@example.com"), None);
        assert_eq!(address(&keys, "<other@example.com>", "b.example"), None);
        assert_eq!(message_hash("<pulse.zz@x>"), None);
    }

    #[test]
    fn an_unsubscribe_address_is_good_for_that_only() {
        let id = message_id("e:s:2", "example.com");
        let keys = Unsubscribe::with_key("k", None, "http://x");
        let unsub = tagged(&keys, Purpose::Unsubscribe, &id, "b.example").unwrap();
        assert!(unsub.starts_with("unsubscribe+"));
        assert!(unsub.split('@').next().unwrap().len() <= 64);
        let token = verify_token(&keys, &unsub).unwrap();
        assert_eq!(token.purpose, Purpose::Unsubscribe);
        assert_eq!(Some(token.hash.as_str()), message_hash(&id));
        // Not a bounce address; and a bounce token moved under the other prefix verifies as
        // neither.
        assert_eq!(verify(&keys, &unsub), None);
        let bounce = address(&keys, &id, "b.example").unwrap();
        let moved = bounce.replacen("bounce+", "unsubscribe+", 1);
        assert_eq!(verify_token(&keys, &moved), None);
        let moved = unsub.replacen("unsubscribe+", "bounce+", 1);
        assert_eq!(verify_token(&keys, &moved), None);
    }
}
