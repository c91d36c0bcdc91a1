//! Email addresses out of text that leaves the process (stored SMTP replies, log lines, span
//! events). An address becomes `addr:HASH8`, the first 8 hex digits of its SHA-256, so two
//! mentions of one address still match and none can be read back. Pure; hand-written because the
//! rule is one scan (an `@` with an address's characters on both sides; dotless domains count,
//! as workspaces may mail `ops@mailhub`) and a regex crate would be a dependency for this alone.

use sha2::{Digest, Sha256};

fn local(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-'".contains(c)
}

fn host(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// `text` with every email address replaced by its hash.
pub fn addresses(text: &str) -> String {
    if !text.contains('@') {
        return text.to_owned();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '@' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The local part is what was pushed just before the `@`.
        let mut start = i;
        while start > 0 && local(chars[start - 1]) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < chars.len() && host(chars[end]) {
            end += 1;
        }
        // A trailing dot ends the sentence, not the domain.
        while end > i + 1 && chars[end - 1] == '.' {
            end -= 1;
        }
        let domain: String = chars[i + 1..end].iter().collect();
        if start < i && !domain.is_empty() {
            let address: String = chars[start..end].iter().collect();
            let hash = Sha256::digest(address.to_ascii_lowercase().as_bytes());
            let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
            for _ in start..i {
                out.pop();
            }
            out.push_str(&format!("addr:{hex}"));
            i = end;
        } else {
            out.push('@');
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_replaced_by_a_stable_hash_and_the_rest_is_kept() {
        let text = "5.1.1 <Ada.Lovelace+x@Example.com>: Recipient address rejected: ada.lovelace+x@example.com.";
        let r = addresses(text);
        assert!(
            !r.to_lowercase().contains("lovelace") && !r.contains("example.com"),
            "{r}"
        );
        assert!(
            r.starts_with("5.1.1 <addr:") && r.contains(">: Recipient address rejected: addr:"),
            "{r}"
        );
        assert!(r.ends_with('.'), "{r}");
        let hashes: Vec<&str> = r.matches("addr:").collect();
        assert_eq!(hashes.len(), 2);
        // The same address, however cased, hashes the same.
        let a = addresses("<Ada@Example.com>");
        assert_eq!(a, addresses("<ada@example.com>"));
        // No address, nothing changes.
        for plain in ["250 2.0.0 Ok: queued as 4F2A", "a @ b", "@x.com", "x@ y"] {
            assert_eq!(addresses(plain), plain);
        }
        // A dotless domain is an address too (internal relays).
        assert!(!addresses("ops@mailhub refused").contains("ops@"));
    }
}
