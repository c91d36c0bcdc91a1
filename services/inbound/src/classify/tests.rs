use super::*;
use proptest::prelude::*;

const ID: &str = "<pulse.0123456789abcdef0123456789abcdef@sales.example.com>";
const HASH: &str = "0123456789abcdef0123456789abcdef";

/// The fixtures, each a real-world format with the send's Message-ID filled in.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let raw = match name {
        "postfix-dsn" => include_str!("../../fixtures/postfix-dsn.eml"),
        "exchange-dsn" => include_str!("../../fixtures/exchange-dsn.eml"),
        "delayed-dsn" => include_str!("../../fixtures/delayed-dsn.eml"),
        "arf-complaint" => include_str!("../../fixtures/arf-complaint.eml"),
        "out-of-office" => include_str!("../../fixtures/out-of-office.eml"),
        "reply" => include_str!("../../fixtures/reply.eml"),
        other => panic!("no fixture {other}"),
    };
    raw.replace("MESSAGE_ID", ID).into_bytes()
}

const ALL: [&str; 6] = [
    "postfix-dsn",
    "exchange-dsn",
    "delayed-dsn",
    "arf-complaint",
    "out-of-office",
    "reply",
];

#[test]
fn a_postfix_bounce_names_its_recipient_status_and_send() {
    let c = classify(&fixture("postfix-dsn"), None, None);
    assert_eq!(c.kind, Kind::Bounce);
    assert_eq!(c.address.as_deref(), Some("nobody@example.org"));
    assert_eq!(c.hashes, vec![HASH.to_owned()]);
    assert_eq!(c.detail["status"], "5.1.1");
    assert!(
        c.detail["diagnostic"]
            .as_str()
            .unwrap()
            .contains("unknown user")
    );
}

#[test]
fn an_exchange_bounce_is_read_from_its_report_not_its_auto_submitted_mark() {
    let c = classify(
        &fixture("exchange-dsn"),
        Some("postmaster@contoso.example"),
        None,
    );
    assert_eq!(c.kind, Kind::Bounce);
    assert_eq!(c.address.as_deref(), Some("ghost@contoso.example"));
    assert_eq!(c.detail["status"], "5.1.10");
    assert_eq!(c.hashes, vec![HASH.to_owned()]);
    assert!(
        c.detail["diagnostic"]
            .as_str()
            .unwrap()
            .contains("RecipientNotFound")
    );
}

#[test]
fn a_delay_notice_is_a_soft_bounce() {
    let c = classify(&fixture("delayed-dsn"), None, Some(HASH));
    assert_eq!(c.kind, Kind::SoftBounce);
    assert_eq!(c.address.as_deref(), Some("slow@example.org"));
    assert_eq!(c.hashes, vec![HASH.to_owned()]);
}

#[test]
fn an_arf_report_is_a_complaint_about_its_original_recipient() {
    let c = classify(
        &fixture("arf-complaint"),
        Some("staff@hotmail.example"),
        None,
    );
    assert_eq!(c.kind, Kind::Complaint);
    assert_eq!(c.address.as_deref(), Some("angry@hotmail.example"));
    assert_eq!(c.detail["feedback_type"], "abuse");
    assert_eq!(c.hashes, vec![HASH.to_owned()]);
}

#[test]
fn an_out_of_office_answer_is_an_auto_reply_that_still_names_the_send() {
    let c = classify(&fixture("out-of-office"), Some("ada@example.org"), None);
    assert_eq!(c.kind, Kind::AutoReply);
    assert_eq!(c.hashes, vec![HASH.to_owned()]);
    assert_eq!(c.detail["automatic"], "Auto-Submitted");
}

#[test]
fn a_reply_names_the_send_and_keeps_only_its_own_words() {
    let c = classify(&fixture("reply"), Some("ada@example.org"), None);
    assert_eq!(c.kind, Kind::Reply);
    assert_eq!(c.hashes, vec![HASH.to_owned()]);
    assert_eq!(c.address.as_deref(), Some("ada@example.org"));
    let excerpt = c.detail["excerpt"].as_str().unwrap();
    assert!(excerpt.starts_with("Thanks Sam"), "{excerpt}");
    assert!(!excerpt.contains("quick question"), "{excerpt}");
}

#[test]
fn out_of_office_subjects_count_without_headers() {
    let raw = format!(
        "From: a@example.org\r\nSubject: Out of Office: back Monday\r\nIn-Reply-To: {ID}\r\n\r\nAway.\r\n"
    );
    assert_eq!(
        classify(raw.as_bytes(), Some("a@example.org"), None).kind,
        Kind::AutoReply
    );
}

#[test]
fn a_message_about_nothing_pulse_sent_is_other() {
    let raw = b"From: a@example.org\r\nSubject: hello\r\nIn-Reply-To: <x@y>\r\n\r\nHi.\r\n";
    let c = classify(raw, Some("a@example.org"), None);
    assert_eq!(c.kind, Kind::Other);
    assert!(c.hashes.is_empty());
    // Sent to a bounce address by the null sender, a failure notice without a report.
    let notice = b"From: MAILER-DAEMON@x\r\nSubject: failure notice\r\n\r\nSorry.\r\n";
    let c = classify(notice, None, Some(HASH));
    assert_eq!((c.kind, c.hashes.len()), (Kind::Bounce, 1));
    assert_eq!(classify(b"", None, None).kind, Kind::Other);
}

/// One mutation of a corpus message: bytes flipped, cut, repeated or inserted.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..ALL.len(),
        proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 0..24),
    )
        .prop_map(|(which, edits)| {
            let mut raw = fixture(ALL[which]);
            for (at, byte, op) in edits {
                if raw.is_empty() {
                    break;
                }
                let i = usize::from(at) % raw.len();
                match op {
                    0 => raw[i] = byte,
                    1 => raw.truncate(i),
                    2 => {
                        let copy = raw[i..].to_vec();
                        raw.extend_from_slice(&copy[..copy.len().min(512)]);
                    }
                    _ => raw.insert(i, byte),
                }
            }
            raw
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    /// The parser entry point survives anything: mutated real formats and raw noise.
    #[test]
    fn classify_never_panics_on_mutated_mail(raw in mutated(), null in any::<bool>()) {
        let c = classify(&raw, (!null).then_some("x@example.org"), Some(HASH));
        prop_assert!(c.hashes.len() <= MAX_HASHES);
    }

    #[test]
    fn classify_never_panics_on_noise(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = classify(&raw, None, None);
    }
}
