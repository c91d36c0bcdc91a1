//! What a received message is: a reply, an auto-reply, a bounce (permanent or transient), a
//! complaint, or something else; which Pulse sends it names; the address it is about; and what
//! the operator is shown. A pure function of the bytes (and the VERP token the listener already
//! verified), so it is fuzzed directly: `classify/tests.rs` runs proptest over mutations of the
//! real-world messages in `fixtures/` (the corpus) and over random bytes, in every `make test`.
//!
//! MIME is `mail-parser`'s. The field blocks of a delivery-status report (RFC 3464) and of a
//! feedback report (ARF, RFC 5965) have header syntax, so each block is read with
//! `mail-parser`'s header parser too; this module only splits a report's body at its blank
//! lines and reads named fields. (`mail-auth` parses ARF as well, but it pulls in a DNS resolver
//! and a second crypto stack, and its current releases need a newer compiler than ours.)

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use pulse_shared::{domain::validate, feedback::Kind, verp};
use serde_json::{Map, Value, json};

/// The longest excerpt of a reply's text kept for the operator.
const EXCERPT: usize = 1000;
/// Most Message-ID hashes taken from one message (a long `References` names old sends too).
pub const MAX_HASHES: usize = 20;

/// What a message is and what it names.
#[derive(Clone, Debug, PartialEq)]
pub struct Classified {
    pub kind: Kind,
    /// Hashes of the Pulse Message-IDs it names, the most telling first.
    pub hashes: Vec<String>,
    /// The address it is about, canonical when it parses.
    pub address: Option<String>,
    pub detail: Value,
}

/// Classifies `raw`, received with envelope sender `mail_from` (`None`: the null sender `<>`)
/// and, when it came to a VERP bounce address, that address's verified hash.
pub fn classify(raw: &[u8], mail_from: Option<&str>, verp_hash: Option<&str>) -> Classified {
    let mut hashes: Vec<String> = verp_hash.map(str::to_owned).into_iter().collect();
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Classified {
            kind: Kind::Other,
            hashes,
            address: None,
            detail: json!({"note": "not a mail message"}),
        };
    };
    let mut detail = Map::new();
    if let Some(subject) = msg.subject() {
        detail.insert("subject".into(), clip(subject, 300).into());
    }
    let from = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_owned);
    if let Some(f) = &from {
        detail.insert("from".into(), clip(f, 320).into());
    }

    if let Some(report) = report(&msg) {
        let (kind, address, original) = match report {
            Report::Delivery(d) => {
                detail.insert("status".into(), d.status.clone().unwrap_or_default().into());
                detail.insert("action".into(), d.action.clone().into());
                if let Some(diag) = &d.diagnostic {
                    detail.insert("diagnostic".into(), clip(diag, 500).into());
                }
                (d.kind, d.recipient, d.original)
            }
            Report::Feedback(f) => {
                detail.insert("feedback_type".into(), f.feedback_type.into());
                (Kind::Complaint, f.recipient, f.original)
            }
        };
        for id in original {
            push_hash(&mut hashes, &id);
        }
        return Classified {
            kind,
            hashes,
            address: address.and_then(|a| validate::email(&a).ok()),
            detail: detail.into(),
        };
    }

    let threaded = ids(msg.in_reply_to())
        .chain(ids(msg.references()).rev())
        .collect::<Vec<_>>();
    for id in &threaded {
        push_hash(&mut hashes, id);
    }
    let address = from.as_deref().and_then(|a| validate::email(a).ok());
    if let Some(why) = automatic(&msg) {
        detail.insert("automatic".into(), why.into());
        return Classified {
            kind: Kind::AutoReply,
            hashes,
            address,
            detail: detail.into(),
        };
    }
    // A failure notice in no standard format, sent to a bounce address by the null sender.
    if verp_hash.is_some() && mail_from.is_none() && failure_subject(msg.subject()) {
        detail.insert("status".into(), "5.0.0".into());
        detail.insert("note".into(), "a failure notice that is not a DSN".into());
        return Classified {
            kind: Kind::Bounce,
            hashes,
            address: None,
            detail: detail.into(),
        };
    }
    // A reply's own words, or those of a message that may turn out to be one (a lead writing
    // anew, matched by address by the listener).
    if let Some(text) = msg.body_text(0) {
        detail.insert("excerpt".into(), excerpt(&text).into());
    }
    Classified {
        kind: if hashes.is_empty() {
            Kind::Other
        } else {
            Kind::Reply
        },
        hashes,
        address,
        detail: detail.into(),
    }
}

fn push_hash(hashes: &mut Vec<String>, id: &str) {
    if hashes.len() >= MAX_HASHES {
        return;
    }
    if let Some(h) = verp::message_hash(id) {
        let h = h.to_ascii_lowercase();
        if !hashes.contains(&h) {
            hashes.push(h);
        }
    }
}

/// The message ids of an `In-Reply-To` or `References` header.
fn ids<'a>(value: &'a HeaderValue<'a>) -> impl DoubleEndedIterator<Item = &'a str> {
    value
        .as_text_list()
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_ref())
}

/// Why the message is an automatic answer (RFC 3834 and the common vendor marks), if it is.
fn automatic(msg: &Message<'_>) -> Option<&'static str> {
    let header = |name: &str| msg.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    if header("Auto-Submitted").is_some_and(|v| !v.is_empty() && !v.starts_with("no")) {
        return Some("Auto-Submitted");
    }
    if header("X-Autoreply").is_some() || header("X-Autorespond").is_some() {
        return Some("X-Autoreply");
    }
    if header("Precedence")
        .is_some_and(|v| matches!(v.as_str(), "auto_reply" | "bulk" | "junk" | "list"))
    {
        return Some("Precedence");
    }
    if header("X-Auto-Response-Suppress").is_some_and(|v| v.contains("oof") || v == "all") {
        return Some("X-Auto-Response-Suppress");
    }
    let subject = msg.subject().unwrap_or_default().to_lowercase();
    const AWAY: [&str; 12] = [
        "out of office",
        "out of the office",
        "automatic reply",
        "auto reply",
        "auto-reply",
        "autoreply",
        "auto:",
        "abwesenheit",
        "réponse automatique",
        "respuesta automática",
        "risposta automatica",
        "afwezig",
    ];
    AWAY.iter()
        .any(|m| subject.contains(m))
        .then_some("subject")
}

fn failure_subject(subject: Option<&str>) -> bool {
    let s = subject.unwrap_or_default().to_lowercase();
    [
        "undeliver",
        "delivery status",
        "delivery failure",
        "failure notice",
        "returned mail",
        "not delivered",
        "delivery has failed",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// A reply's own words: its text up to the quoted message, clipped.
fn excerpt(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('>')
            || (t.starts_with("On ") && t.ends_with("wrote:"))
            || t.starts_with("-----Original Message-----")
            || t.starts_with("________________________________")
        {
            break;
        }
        out.push_str(line);
        out.push('\n');
        if out.len() > EXCERPT {
            break;
        }
    }
    clip(out.trim(), EXCERPT)
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A machine-readable report found in a message.
enum Report {
    Delivery(Delivery),
    Feedback(Feedback),
}

/// The first recipient of a delivery-status report that did not get the message.
struct Delivery {
    kind: Kind,
    action: String,
    status: Option<String>,
    diagnostic: Option<String>,
    recipient: Option<String>,
    original: Vec<String>,
}

struct Feedback {
    feedback_type: String,
    recipient: Option<String>,
    original: Vec<String>,
}

/// The delivery-status or feedback report of a `multipart/report`, if the message is one (or
/// carries one, whatever its top type says: some MTAs wrap them).
fn report(msg: &Message<'_>) -> Option<Report> {
    let mut delivery = None;
    let mut feedback = None;
    let mut original = Vec::new();
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let (ctype, subtype) = (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase(),
        );
        match (ctype.as_str(), subtype.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") if delivery.is_none() => {
                delivery = Some(part.contents());
            }
            ("message", "feedback-report") if feedback.is_none() => {
                feedback = Some(part.contents());
            }
            ("message", "rfc822" | "global") | ("text", "rfc822-headers") => {
                let id = match &part.body {
                    PartType::Message(inner) => inner.message_id().map(str::to_owned),
                    _ => MessageParser::default()
                        .parse_headers(part.contents())
                        .and_then(|h| h.message_id().map(str::to_owned)),
                };
                original.extend(id);
            }
            _ => {}
        }
    }
    if let Some(body) = feedback {
        let fields = blocks(body).into_iter().next();
        let field = |name: &str| fields.as_ref().and_then(|f| field(f, name));
        return Some(Report::Feedback(Feedback {
            feedback_type: field("Feedback-Type")
                .unwrap_or_else(|| "abuse".into())
                .to_ascii_lowercase(),
            recipient: field("Original-Rcpt-To").map(|r| address_of(&r)),
            original,
        }));
    }
    let body = delivery?;
    // The first block is about the message; each later one about one recipient.
    let recipients = blocks(body).into_iter().skip(1).collect::<Vec<_>>();
    let failed = recipients.iter().find_map(|r| {
        let action = field(r, "Action")?.to_ascii_lowercase();
        let status =
            field(r, "Status").map(|s| s.split_whitespace().next().unwrap_or_default().to_owned());
        let kind = match (
            action.as_str(),
            status.as_deref().and_then(|s| s.chars().next()),
        ) {
            ("failed", Some('4')) | ("delayed", _) => Kind::SoftBounce,
            ("failed", _) => Kind::Bounce,
            _ => return None,
        };
        Some(Delivery {
            kind,
            action,
            status,
            diagnostic: field(r, "Diagnostic-Code"),
            recipient: field(r, "Final-Recipient")
                .or_else(|| field(r, "Original-Recipient"))
                .map(|v| address_of(&v)),
            original: Vec::new(),
        })
    });
    Some(Report::Delivery(match failed {
        Some(mut d) => {
            d.original = original;
            d
        }
        // Delivered, relayed, expanded: a notice, not a failure.
        None => Delivery {
            kind: Kind::Other,
            action: "delivered".into(),
            status: None,
            diagnostic: None,
            recipient: None,
            original,
        },
    }))
}

/// The field blocks of a report body (separated by blank lines), each parsed as headers.
fn blocks(body: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        // A blank line: "\n\n" or "\n\r\n".
        let blank = match body.get(i..) {
            Some([b'\n', b'\n', ..]) => Some(2),
            Some([b'\n', b'\r', b'\n', ..]) => Some(3),
            _ => None,
        };
        if let Some(len) = blank {
            push_block(&mut out, &body[start..i + 1]);
            start = i + len;
            i = start;
        } else {
            i += 1;
        }
    }
    push_block(&mut out, &body[start.min(body.len())..]);
    out
}

fn push_block<'a>(out: &mut Vec<Message<'a>>, block: &'a [u8]) {
    if block.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    if let Some(m) = MessageParser::default().parse_headers(block) {
        out.push(m);
    }
}

fn field(block: &Message<'_>, name: &str) -> Option<String> {
    block
        .header_raw(name)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|v| !v.is_empty())
}

/// The address of an `rfc822; user@example.com` field (the type is optional).
fn address_of(value: &str) -> String {
    let v = value.split_once(';').map_or(value, |(_, a)| a);
    v.trim().trim_matches(|c| c == '<' || c == '>').to_owned()
}

#[cfg(test)]
mod tests;
