use std::sync::Mutex;

use super::*;
use proptest::prelude::*;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

/// Takes mail for `@here.example` (and `bounce+…` as VERP), keeps what it is given.
#[derive(Default)]
struct Room {
    delivered: Mutex<Vec<(Envelope, Vec<u8>)>>,
    fail: bool,
}

impl Mailroom for Room {
    async fn accepts(&self, rcpt: &str) -> Result<Option<Option<Token>>, String> {
        if self.fail {
            return Err("down".into());
        }
        Ok(rcpt.ends_with("@here.example").then(|| {
            rcpt.strip_prefix("bounce+").map(|t| Token {
                purpose: pulse_shared::verp::Purpose::Bounce,
                hash: t.split('@').next().unwrap_or_default().to_owned(),
            })
        }))
    }

    async fn deliver(&self, envelope: Envelope, raw: Vec<u8>) -> Result<i64, String> {
        let mut d = self.delivered.lock().unwrap();
        d.push((envelope, raw));
        Ok(d.len() as i64)
    }
}

fn limits(max_bytes: usize) -> Limits {
    Limits {
        max_bytes,
        command_timeout: Duration::from_millis(300),
        session_timeout: Duration::from_secs(5),
        hostname: "mx.here.example".into(),
        starttls: false,
    }
}

/// A client end: sends lines, reads replies.
struct Client {
    io: BufReader<DuplexStream>,
}

impl Client {
    async fn send(&mut self, raw: &[u8]) {
        self.io.get_mut().write_all(raw).await.unwrap();
    }

    /// One reply (its last line, for a multi-line one); empty once the server has closed.
    async fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await.unwrap() == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }
}

async fn session(room: &Room, limits: Limits, script: impl AsyncFnOnce(&mut Client)) {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let mut client = Client {
        io: BufReader::new(client),
    };
    let served = serve(server, room, &limits, false);
    let talk = async {
        assert!(client.reply().await.starts_with("220 mx.here.example"));
        script(&mut client).await;
    };
    let (served, ()) = tokio::join!(served, talk);
    assert!(matches!(served.unwrap(), Ended::Closed));
}

#[tokio::test]
async fn starttls_hands_the_stream_back_and_drops_what_was_pipelined_after_it() {
    let room = Room::default();
    let mut limits = limits(1000);
    limits.starttls = true;
    let (server, client) = tokio::io::duplex(64 * 1024);
    let mut c = Client {
        io: BufReader::new(client),
    };
    let talk = async {
        c.reply().await;
        c.send(b"EHLO c\r\n").await;
        let mut ehlo = Vec::new();
        loop {
            let mut line = String::new();
            c.io.read_line(&mut line).await.unwrap();
            ehlo.push(line.trim_end().to_owned());
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
        assert!(ehlo.iter().any(|l| l == "250-STARTTLS"), "{ehlo:?}");
        // An injected command rides along with STARTTLS.
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
            .await;
        assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    };
    let (served, ()) = tokio::join!(serve(server, &room, &limits, false), talk);
    let Ok(Ended::StartTls(stream)) = served else {
        panic!("STARTTLS did not hand the stream back");
    };
    // "Over TLS" (the same stream, in this test): no greeting, no STARTTLS offered again, and
    // the injected MAIL was never taken.
    let talk = async {
        c.send(b"EHLO c\r\nRCPT TO:<x@here.example>\r\nSTARTTLS\r\nQUIT\r\n")
            .await;
        assert!(c.reply().await.starts_with("250 ENHANCEDSTATUSCODES"));
        assert!(c.reply().await.starts_with("503 5.5.1 MAIL first"));
        assert!(
            c.reply()
                .await
                .starts_with("503 5.5.1 TLS is already active")
        );
        assert_eq!(c.reply().await, "221 2.0.0 Bye");
    };
    let (served, ()) = tokio::join!(serve(stream, &room, &limits, true), talk);
    assert!(matches!(served.unwrap(), Ended::Closed));
}

#[tokio::test]
async fn a_pipelined_transaction_is_recorded_with_its_dots_unstuffed() {
    let room = Room::default();
    session(&room, limits(10_000), async |c| {
        c.send(b"EHLO client.example\r\n").await;
        assert!(c.reply().await.starts_with("250 ENHANCEDSTATUSCODES"));
        c.send(b"MAIL FROM:<>\r\nRCPT TO:<bounce+abc@here.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n")
            .await;
        assert_eq!(c.reply().await, "250 2.1.0 OK");
        assert_eq!(c.reply().await, "250 2.1.5 OK");
        assert!(c.reply().await.starts_with("550 5.1.1"));
        assert!(c.reply().await.starts_with("354"));
        c.send(b"Subject: hi\r\n\r\n..dotted\r\nline\r\n.\r\nQUIT\r\n")
            .await;
        assert_eq!(c.reply().await, "250 2.0.0 OK: recorded as 1");
        assert_eq!(c.reply().await, "221 2.0.0 Bye");
    })
    .await;
    let d = room.delivered.lock().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0.mail_from, None);
    assert_eq!(d[0].0.rcpt_to, vec!["bounce+abc@here.example"]);
    assert_eq!(d[0].0.verp.as_ref().map(|t| t.hash.as_str()), Some("abc"));
    assert_eq!(d[0].1, b"Subject: hi\r\n\r\n.dotted\r\nline\r\n".to_vec());
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_and_the_session_goes_on() {
    let room = Room::default();
    session(&room, limits(1000), async |c| {
        c.send(b"EHLO c\r\n").await;
        c.reply().await;
        c.send(b"MAIL FROM:<a@b.example> SIZE=1001\r\n").await;
        assert!(c.reply().await.starts_with("552 5.3.4"), "declared size");
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@here.example>\r\nDATA\r\n")
            .await;
        for _ in 0..3 {
            c.reply().await;
        }
        // 1001 bytes of body: one over.
        let mut body = vec![b'a'; 997];
        body.extend_from_slice(b"\r\nab\r\n.\r\n");
        c.send(&body).await;
        assert!(c.reply().await.starts_with("552 5.3.4"), "actual size");
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@here.example>\r\nDATA\r\n")
            .await;
        for _ in 0..3 {
            c.reply().await;
        }
        c.send(b"small\r\n.\r\nQUIT\r\n").await;
        assert!(c.reply().await.starts_with("250 2.0.0"));
        c.reply().await;
    })
    .await;
    assert_eq!(room.delivered.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn order_is_enforced_and_a_silent_client_is_dropped() {
    let room = Room::default();
    session(&room, limits(1000), async |c| {
        c.send(b"MAIL FROM:<a@b.example>\r\n").await;
        assert!(c.reply().await.starts_with("503"));
        c.send(b"HELO c\r\nRCPT TO:<x@here.example>\r\nDATA\r\nBDAT 10\r\n")
            .await;
        assert!(c.reply().await.starts_with("250"));
        assert!(c.reply().await.starts_with("503 5.5.1 MAIL first"));
        assert!(c.reply().await.starts_with("503 5.5.1 RCPT first"));
        assert!(c.reply().await.starts_with("502"));
        assert_eq!(c.reply().await, "", "BDAT ends the session");
    })
    .await;
    session(&room, limits(1000), async |c| {
        assert!(c.reply().await.starts_with("421 4.4.2"));
    })
    .await;
}

#[tokio::test]
async fn a_recipient_that_cannot_be_checked_is_deferred_not_refused() {
    let room = Room {
        fail: true,
        ..Room::default()
    };
    session(&room, limits(1000), async |c| {
        c.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@here.example>\r\nQUIT\r\n")
            .await;
        c.reply().await;
        c.reply().await;
        assert!(c.reply().await.starts_with("451 4.3.0"));
        c.reply().await;
    })
    .await;
}

#[tokio::test]
async fn too_many_bad_commands_close_the_session() {
    let room = Room::default();
    session(&room, limits(1000), async |c| {
        c.send(&b"BOGUS\r\n".repeat(25)).await;
        let mut last = String::new();
        for _ in 0..21 {
            last = c.reply().await;
        }
        assert!(last.starts_with("421 4.7.0"), "{last}");
        assert_eq!(c.reply().await, "");
    })
    .await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a client sends, in whatever pieces, the session answers and ends by itself.
    #[test]
    fn any_byte_stream_ends_the_session_without_a_panic(
        pieces in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                Just(b"EHLO x\r\n".to_vec()),
                Just(b"MAIL FROM:<a@b.example>\r\n".to_vec()),
                Just(b"RCPT TO:<x@here.example>\r\n".to_vec()),
                Just(b"DATA\r\n".to_vec()),
                Just(b"\r\n.\r\n".to_vec()),
            ],
            0..30,
        )
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let room = Room::default();
            let (server, mut client) = tokio::io::duplex(1 << 20);
            let mut limits = limits(2000);
            limits.command_timeout = Duration::from_millis(20);
            let talk = async move {
                for p in pieces {
                    if client.write_all(&p).await.is_err() {
                        break;
                    }
                }
                // The client never closes its half: the session must end by itself.
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            };
            let (served, ()) = tokio::join!(serve(server, &room, &limits, false), talk);
            let _ = served;
        });
    }
}
