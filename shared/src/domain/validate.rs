//! Input checks shared by every entry point: email addresses, sender mailboxes, time zones.
//! Each returns a message meant for the API caller; the caller attaches the field name.

use std::str::FromStr;

/// A lower-cased, syntactically valid email address.
pub fn email(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("email is required".into());
    }
    if trimmed.len() > 254 {
        return Err("email is longer than 254 characters".into());
    }
    let addr = lettre::Address::from_str(trimmed)
        .map_err(|e| format!("{trimmed:?} is not a valid email address: {e}"))?;
    if !addr.domain().contains('.') && addr.domain() != "localhost" {
        return Err(format!("{trimmed:?} has no domain with a dot"));
    }
    Ok(trimmed.to_lowercase())
}

/// A sender identity such as `Ada Lovelace <ada@example.com>` or a bare address.
pub fn mailbox(raw: &str) -> Result<lettre::message::Mailbox, String> {
    lettre::message::Mailbox::from_str(raw.trim())
        .map_err(|e| format!("{raw:?} is not a valid sender (\"Name <address>\"): {e}"))
}

/// An IANA time zone name such as `Europe/Paris`.
pub fn timezone(raw: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(raw.trim())
        .map_err(|_| format!("{raw:?} is not an IANA time zone name (e.g. \"Europe/Paris\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a b@example.com",
            "ada@example",
        ] {
            assert!(email(bad).is_err(), "{bad} accepted");
        }
        assert!(email(&format!("{}@example.com", "a".repeat(260))).is_err());
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
