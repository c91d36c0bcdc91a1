//! Input checks shared by every entry point: email addresses and their canonical form, text
//! fields, attributes, sender mailboxes, time zones. Each returns a message meant for the API
//! caller; the caller attaches the field name.
//!
//! Addresses are parsed by lettre (`lettre::Address`, RFC 5321/6531 syntax); what is
//! hand-written here is only the canonical form that makes one mailbox one lead: the local part
//! in Unicode NFC with ASCII letters lower-cased (no other case folding: RFC 6531 leaves that to
//! the receiving domain), and the domain through IDNA/UTS-46 (`idna`), as lower-case ASCII
//! (punycode). Quoted local parts, IP-literal domains and domains without a dot are refused:
//! mail to them from a sequence is a mistake far more often than an internal relay. A workspace
//! that sends through an internal relay can allow dotless domains ([`AddressPolicy`]).

use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;

use super::limits;

/// An address as the caller gave it, and its canonical form (the lead's identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    pub given: String,
    pub canonical: String,
}

/// What a workspace accepts beyond the strict default (`workspaces.allow_dotless_domains`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Domains without a dot (`ops@mailhub`), for internal relays. Off by default.
    pub dotless_domains: bool,
}

impl AddressPolicy {
    /// What look-ups use: they never create a lead, so they accept whatever some workspace may
    /// have stored.
    pub const LOOKUP: Self = Self {
        dotless_domains: true,
    };
}

/// Checks an address under `policy` and computes its canonical form.
pub fn address(raw: &str, policy: AddressPolicy) -> Result<Email, String> {
    let given = raw.trim();
    if given.is_empty() {
        return Err("email is required".into());
    }
    no_control(given)?;
    if given.len() > limits::ADDRESS_BYTES {
        return Err(format!(
            "email is longer than {} bytes",
            limits::ADDRESS_BYTES
        ));
    }
    let (local, domain) = given
        .rsplit_once('@')
        .ok_or_else(|| format!("{given:?} is not a valid email address: no @"))?;
    if local.starts_with('"') {
        return Err(format!("{given:?}: quoted local parts are not accepted"));
    }
    if domain.starts_with('[') {
        return Err(format!(
            "{given:?}: IP-literal domains are not accepted; use a domain name"
        ));
    }
    let domain = idna::domain_to_ascii(domain)
        .map_err(|_| format!("{given:?} has a domain that is not a valid domain name"))?;
    if !domain.contains('.') && !policy.dotless_domains {
        return Err(format!(
            "{given:?} has no domain with a dot (a workspace can allow these for internal relays: allow_dotless_domains)"
        ));
    }
    // RFC 3696 §2: a top-level domain is not all-numeric (`1.2.3.4` is an IP address).
    if domain
        .rsplit('.')
        .next()
        .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{given:?} has a domain whose last label is a number, not a domain name"
        ));
    }
    let local: String = local.nfc().collect::<String>().to_ascii_lowercase();
    let canonical = format!("{local}@{domain}");
    if canonical.len() > limits::ADDRESS_BYTES {
        return Err(format!(
            "email is longer than {} bytes",
            limits::ADDRESS_BYTES
        ));
    }
    lettre::Address::from_str(&canonical)
        .map_err(|e| format!("{given:?} is not a valid email address: {e}"))?;
    Ok(Email {
        given: given.to_owned(),
        canonical,
    })
}

/// The canonical form of an address (see [`address`]): what leads are looked up by.
pub fn email(raw: &str) -> Result<String, String> {
    address(raw, AddressPolicy::LOOKUP).map(|e| e.canonical)
}

/// Refuses control characters (NUL included: PostgreSQL cannot store it in text).
pub fn no_control(text: &str) -> Result<(), String> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "contains a control character (U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// A short text field: at most `max` bytes, no control characters.
pub fn text(value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("is longer than {max} bytes"));
    }
    no_control(value)
}

/// Text that may span lines (a body, an attribute value): at most `max` bytes, no control
/// character but tab, newline and carriage return.
pub fn multiline(value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("is longer than {max} bytes"));
    }
    match value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(format!(
            "contains a control character (U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Checks a lead's attributes: at most [`limits::ATTRIBUTES`] of them and
/// [`limits::ATTRIBUTES_BYTES`] in all, each value at most [`limits::ATTRIBUTE_VALUE_BYTES`]
/// as JSON, and no control character in any key or string (tabs and newlines are allowed in
/// values). The error names the attribute.
pub fn attributes(
    attrs: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), (Option<String>, String)> {
    if attrs.len() > limits::ATTRIBUTES {
        return Err((
            None,
            format!("at most {} attributes per lead", limits::ATTRIBUTES),
        ));
    }
    let mut total = 0;
    for (key, value) in attrs {
        text(key, limits::TEXT_BYTES).map_err(|m| (Some(key.clone()), format!("name {m}")))?;
        let size = serde_json::to_string(value)
            .map(|j| j.len())
            .unwrap_or(usize::MAX);
        if size > limits::ATTRIBUTE_VALUE_BYTES {
            return Err((
                Some(key.clone()),
                format!(
                    "is longer than {} bytes as JSON",
                    limits::ATTRIBUTE_VALUE_BYTES
                ),
            ));
        }
        strings_in(value).map_err(|m| (Some(key.clone()), m))?;
        total += key.len() + size;
    }
    if total > limits::ATTRIBUTES_BYTES {
        return Err((
            None,
            format!(
                "attributes are longer than {} bytes in all",
                limits::ATTRIBUTES_BYTES
            ),
        ));
    }
    Ok(())
}

/// Checks what a lead would keep after `new` is merged over its `stored` attributes (a key in
/// both takes the new value): at most [`limits::ATTRIBUTES`] attributes and
/// [`limits::ATTRIBUTES_BYTES`] in all, measured as [`attributes`] measures one event's. Each
/// event is bounded by [`attributes`]; this bounds the lead, which events grow one at a time.
pub fn merged_attributes(
    stored: &serde_json::Map<String, serde_json::Value>,
    new: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let kept = stored.iter().filter(|(k, _)| !new.contains_key(*k));
    let count = kept.clone().count() + new.len();
    if count > limits::ATTRIBUTES {
        return Err(format!(
            "the lead would have {count} attributes with the ones it has; at most {} per lead",
            limits::ATTRIBUTES
        ));
    }
    let total: usize = kept
        .chain(new.iter())
        .map(|(k, v)| k.len() + serde_json::to_string(v).map_or(usize::MAX / 2, |j| j.len()))
        .sum();
    if total > limits::ATTRIBUTES_BYTES {
        return Err(format!(
            "the lead's attributes would be {total} bytes with the ones it has; at most {} per lead",
            limits::ATTRIBUTES_BYTES
        ));
    }
    Ok(())
}

/// [`multiline`] for every string of a JSON value, keys included.
fn strings_in(value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let check = |s: &str| multiline(s, usize::MAX);
    match value {
        Value::String(s) => check(s),
        Value::Array(items) => items.iter().try_for_each(strings_in),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check(k)?;
            strings_in(v)
        }),
        _ => Ok(()),
    }
}

/// A sender identity such as `Ada Lovelace <ada@example.com>` or a bare address.
pub fn mailbox(raw: &str) -> Result<lettre::message::Mailbox, String> {
    lettre::message::Mailbox::from_str(raw.trim())
        .map_err(|e| format!("{raw:?} is not a valid sender (\"Name <address>\"): {e}"))
}

/// A domain name, canonical as an address's domain is (lower case, IDNA): what suppressions
/// and DKIM keys are stored by.
pub fn domain(raw: &str) -> Result<String, String> {
    // The shortest local part: every domain an address can have passes.
    let email = address(&format!("a@{}", raw.trim()), AddressPolicy::default())
        .map_err(|_| format!("{raw:?} is not a domain name"))?;
    Ok(email
        .canonical
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default())
}

/// A host name as a URL names a relay or an endpoint: labels of ASCII letters, digits, `-` and
/// `_`, 1 to 63 characters each, 253 in all. A single label (`localhost`, `mailhog`) passes:
/// whether one is allowed is the caller's rule.
pub fn host(name: &str) -> Result<(), String> {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() <= 253 && name.split('.').all(label) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a host name"))
    }
}

/// An IANA time zone name such as `Europe/Paris`.
pub fn timezone(raw: &str) -> Result<chrono_tz::Tz, String> {
    text(raw, limits::TEXT_BYTES)?;
    chrono_tz::Tz::from_str(raw.trim())
        .map_err(|_| format!("{raw:?} is not an IANA time zone name (e.g. \"Europe/Paris\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(raw: &str) -> Result<String, String> {
        address(raw, AddressPolicy::default()).map(|e| e.canonical)
    }

    #[test]
    fn emails() {
        assert_eq!(strict(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a b@example.com",
            "ada@example",
            "\"a b\"@example.com",
            "ada@[127.0.0.1]",
            "ada\u{0}@example.com",
            "ada@exa\u{1}mple.com",
        ] {
            assert!(strict(bad).is_err(), "{bad:?} accepted");
        }
        assert!(strict(&format!("{}@example.com", "a".repeat(260))).is_err());
        // An all-numeric last label is an address, not a name (RFC 3696 §2).
        assert!(strict("ada@10.0.0.1").is_err());
        assert!(domain("0.5").is_err());
    }

    #[test]
    fn a_domain_is_as_long_as_an_address_at_it_can_be() {
        // 3 labels of 62, one of 60 and `aa`: 252 bytes, and `a@` makes 254.
        let long = format!(
            "{}.{}.aa",
            vec!["0".repeat(62); 3].join("."),
            "0".repeat(60)
        );
        assert_eq!(long.len(), 252);
        assert_eq!(domain(&long).unwrap(), long);
        assert!(domain(&format!("0{long}")).is_err());
    }

    #[test]
    fn dotless_domains_only_where_allowed() {
        let relay = AddressPolicy {
            dotless_domains: true,
        };
        assert!(strict("ops@mailhub").is_err());
        assert_eq!(
            address("Ops@MailHub", relay).unwrap().canonical,
            "ops@mailhub"
        );
        // Look-ups accept them (they never create a lead); IP literals stay refused.
        assert_eq!(email("ops@mailhub").unwrap(), "ops@mailhub");
        assert!(address("ops@[10.0.0.1]", relay).is_err());
    }

    #[test]
    fn what_a_lead_keeps_is_bounded() {
        let map =
            |n: usize, from: usize, size: usize| -> serde_json::Map<String, serde_json::Value> {
                (from..from + n)
                    .map(|i| (format!("k{i}"), serde_json::json!("v".repeat(size))))
                    .collect()
            };
        // 60 stored plus 60 new: 120 > 100; the same 60 again replaces, not adds.
        assert!(merged_attributes(&map(60, 0, 1), &map(60, 100, 1)).is_err());
        assert!(merged_attributes(&map(60, 0, 1), &map(60, 0, 1)).is_ok());
        // 10 × 4000 bytes stored plus 10 × 4000 new: over 64 KiB in all.
        assert!(merged_attributes(&map(10, 0, 4000), &map(10, 100, 4000)).is_err());
        // A new value replacing a large one frees its room.
        assert!(merged_attributes(&map(16, 0, 4000), &map(16, 0, 10)).is_ok());
    }

    #[test]
    fn one_mailbox_one_canonical_address() {
        // NFC and NFD spellings of the same local part.
        let nfc = email("jos\u{e9}@example.com").unwrap();
        assert_eq!(email("jose\u{301}@example.com").unwrap(), nfc);
        // A Unicode domain and its punycode.
        let unicode = email("ada@ex\u{e4}mple.com").unwrap();
        assert_eq!(unicode, "ada@xn--exmple-cua.com");
        assert_eq!(email("ada@XN--EXMPLE-CUA.com").unwrap(), unicode);
        // Only ASCII letters are lower-cased in the local part.
        let turkish = address("\u{130}STANBUL@Example.com", AddressPolicy::default()).unwrap();
        assert_eq!(turkish.canonical, "\u{130}stanbul@example.com");
        assert_eq!(turkish.given, "\u{130}STANBUL@Example.com");
    }

    #[test]
    fn text_and_attributes() {
        assert!(text("Ada", 10).is_ok());
        assert!(text("Ad\u{0}a", 10).is_err());
        assert!(text("Ada Lovelace", 5).is_err());
        let attrs = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert!(
            attributes(&attrs(
                serde_json::json!({"plan": "pro", "note": "a\tb\nc"})
            ))
            .is_ok()
        );
        assert!(attributes(&attrs(serde_json::json!({"plan": "p\u{0}ro"}))).is_err());
        assert!(attributes(&attrs(serde_json::json!({"p\u{0}": 1}))).is_err());
        assert!(attributes(&attrs(serde_json::json!({"deep": [{"x": "\u{7}"}]}))).is_err());
        let big = "x".repeat(limits::ATTRIBUTE_VALUE_BYTES);
        assert_eq!(
            attributes(&attrs(serde_json::json!({"big": big})))
                .unwrap_err()
                .0,
            Some("big".to_owned())
        );
        let many: serde_json::Map<_, _> = (0..=limits::ATTRIBUTES)
            .map(|i| (format!("k{i}"), serde_json::json!(i)))
            .collect();
        assert!(attributes(&many).is_err());
        let wide: serde_json::Map<_, _> = (0..20)
            .map(|i| (format!("k{i}"), serde_json::json!("y".repeat(4000))))
            .collect();
        assert!(attributes(&wide).is_err(), "over 64 KiB in all");
    }

    #[test]
    fn senders_and_zones() {
        let m = mailbox("Pulse Team <team@example.com>").unwrap();
        assert_eq!(m.email.to_string(), "team@example.com");
        assert!(mailbox("not an address").is_err());
        assert!(timezone("Europe/Paris").is_ok());
        assert!(timezone("Mars/Olympus").is_err());
    }
}
