//! A real SMTP server for tests: listens on a loopback port, speaks enough ESMTP for lettre,
//! records every accepted message, and can be told to refuse chosen recipients with a given
//! reply code, a given number of times.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::either::Either;

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// One accepted message.
#[derive(Clone, Debug)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub at: Instant,
}

impl Received {
    /// The body after the header block.
    pub fn body(&self) -> &str {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

/// A rule for a recipient: reply `code` to RCPT TO, `times` times (None: always).
#[derive(Clone, Debug)]
struct Refusal {
    code: u16,
    times: Option<usize>,
}

/// What the server does once a message's DATA is complete, for a chosen recipient.
#[derive(Clone, Copy, Debug)]
pub enum AfterData {
    /// Refuse it with this code; nothing is accepted.
    Reply(u16),
    /// Close the connection without answering; nothing is accepted.
    Drop,
    /// Accept (record) it, then close the connection before answering: the relay has it, the
    /// client cannot know.
    AcceptThenDrop,
    /// Wait this long, then accept and answer (a stalled relay).
    Stall(Duration),
}

#[derive(Default)]
struct State {
    after_data: HashMap<String, (AfterData, Option<usize>)>,
    /// Wait this long before answering the end of DATA (a slow relay).
    data_delay: Duration,
    /// Wait this long before the 354 that lets the body come (a send mid-transaction, before
    /// its gate).
    go_ahead_delay: Duration,
    /// The same, for messages to one recipient (it wins over `go_ahead_delay`).
    go_ahead_delay_for: HashMap<String, Duration>,
    /// DATA blocks received, answered or not (a send in flight shows here first).
    data_started: usize,
    /// The Message-ID of every message whose body began to arrive (its Message-ID header was
    /// read), complete or not: what a relay's log names (Postfix logs it while receiving).
    body_seen: Vec<String>,
    received: Vec<Received>,
    refusals: HashMap<String, Refusal>,
    rcpt_attempts: HashMap<String, usize>,
    /// Connections accepted.
    connections: usize,
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// A server that requires STARTTLS, then AUTH PLAIN or LOGIN with `secured`'s credentials
    /// (530 to MAIL before it): a fast stand-in for a provider, for benchmarks.
    pub async fn start_secured(secured: Secured) -> anyhow::Result<Self> {
        Self::start_with(Some(Arc::new(secured))).await
    }

    async fn start_with(secured: Option<Arc<Secured>>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (st, secured) = (st.clone(), secured.clone());
                st.lock().unwrap_or_else(|p| p.into_inner()).connections += 1;
                tokio::spawn(async move {
                    let _ = session(socket, st, secured).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Replies `code` to RCPT TO for `rcpt`, `times` times (None: every time).
    pub fn refuse(&self, rcpt: &str, code: u16, times: Option<usize>) {
        self.lock()
            .refusals
            .insert(rcpt.to_lowercase(), Refusal { code, times });
    }

    /// Applies `rule` at the end of DATA for messages to `rcpt`, `times` times (None: always).
    pub fn after_data(&self, rcpt: &str, rule: AfterData, times: Option<usize>) {
        self.lock()
            .after_data
            .insert(rcpt.to_lowercase(), (rule, times));
    }

    /// Makes the server wait `delay` before answering each message's final dot.
    pub fn delay_data_reply(&self, delay: Duration) {
        self.lock().data_delay = delay;
    }

    /// Makes the server wait `delay` before its 354 to each DATA: the client is mid-transaction
    /// and its body not yet sent.
    pub fn delay_go_ahead(&self, delay: Duration) {
        self.lock().go_ahead_delay = delay;
    }

    /// Makes the server wait `delay` before its 354 to each DATA of a message to `rcpt`: a slow
    /// exchange for some sends only, so sends spaced when they set out reach the dot unevenly.
    pub fn delay_go_ahead_for(&self, rcpt: &str, delay: Duration) {
        self.lock()
            .go_ahead_delay_for
            .insert(rcpt.to_lowercase(), delay);
    }

    /// The Message-IDs of every message whose body began to arrive, complete or not.
    pub fn body_seen(&self) -> Vec<String> {
        self.lock().body_seen.clone()
    }

    /// Messages whose DATA has been fully received, including any not answered yet.
    pub fn data_started(&self) -> usize {
        self.lock().data_started
    }

    /// How many times RCPT TO named `rcpt`.
    pub fn rcpt_attempts(&self, rcpt: &str) -> usize {
        self.lock()
            .rcpt_attempts
            .get(&rcpt.to_lowercase())
            .copied()
            .unwrap_or(0)
    }

    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Forgets every message received so far.
    pub fn clear(&self) {
        self.lock().received.clear();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    pub fn count(&self) -> usize {
        self.lock().received.len()
    }

    /// Waits until at least `n` messages were accepted, or fails after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.count();
            if got >= n {
                return Ok(self.received());
            }
            if Instant::now() > deadline {
                anyhow::bail!("SMTP server received {got} of {n} messages within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a server that requires STARTTLS and AUTH PLAIN/LOGIN checks.
pub struct Secured {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub user: String,
    pub password: String,
}

impl Secured {
    fn accepts(&self, user: &[u8], password: &[u8]) -> bool {
        user == self.user.as_bytes() && password == self.password.as_bytes()
    }
}

type Stream = BufReader<Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>>;

async fn read_line(conn: &mut Stream, line: &mut String) -> std::io::Result<usize> {
    line.clear();
    conn.read_line(line).await
}

fn decode(b64: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap_or_default()
}

async fn session(
    socket: TcpStream,
    state: Arc<Mutex<State>>,
    secured: Option<Arc<Secured>>,
) -> std::io::Result<()> {
    let mut conn: Stream = BufReader::new(Either::Left(socket));
    let mut authenticated = secured.is_none();
    conn.write_all(b"220 pulse-test ESMTP\r\n").await?;
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        if read_line(&mut conn, &mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_uppercase();
        let encrypted = matches!(conn.get_ref(), Either::Right(_));
        let reply: String = if upper.starts_with("EHLO") {
            let extra = match &secured {
                Some(_) if !encrypted => "250-STARTTLS\r\n",
                Some(_) => "250-AUTH PLAIN LOGIN\r\n",
                None => "",
            };
            format!("250-pulse-test\r\n{extra}250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n")
        } else if upper == "STARTTLS" && secured.is_some() && !encrypted {
            conn.write_all(b"220 ready to start TLS\r\n").await?;
            let (Some(secured), Either::Left(tcp)) = (&secured, conn.into_inner()) else {
                return Ok(());
            };
            conn = BufReader::new(Either::Right(secured.acceptor.accept(tcp).await?));
            continue;
        } else if upper.starts_with("AUTH ") && secured.is_some() && encrypted {
            let secured = secured.as_deref().ok_or(std::io::ErrorKind::Other)?;
            let mut words = cmd.split_whitespace().skip(1);
            let (user, password) = match words.next().map(str::to_uppercase).as_deref() {
                Some("PLAIN") => {
                    let plain = decode(words.next().unwrap_or_default());
                    let mut parts = plain.split(|b| *b == 0).skip(1);
                    let user = parts.next().unwrap_or_default().to_vec();
                    (user, parts.next().unwrap_or_default().to_vec())
                }
                Some("LOGIN") => {
                    conn.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                    read_line(&mut conn, &mut line).await?;
                    let user = decode(&line);
                    conn.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                    read_line(&mut conn, &mut line).await?;
                    (user, decode(&line))
                }
                _ => (Vec::new(), Vec::new()),
            };
            authenticated = secured.accepts(&user, &password);
            if authenticated {
                "235 2.7.0 authenticated\r\n".into()
            } else {
                "535 5.7.8 credentials invalid\r\n".into()
            }
        } else if upper.starts_with("MAIL FROM:") && !authenticated {
            "530 5.7.0 authentication required\r\n".into()
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 OK\r\n".into()
        } else if upper.starts_with("RSET") {
            from.clear();
            rcpts.clear();
            "250 OK\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&cmd[10..]);
            rcpts.clear();
            "250 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&cmd[8..]).to_lowercase();
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            *st.rcpt_attempts.entry(rcpt.clone()).or_default() += 1;
            let refusal = st.refusals.get_mut(&rcpt).and_then(|r| match r.times {
                Some(0) => None,
                Some(ref mut n) => {
                    *n -= 1;
                    Some(r.code)
                }
                None => Some(r.code),
            });
            match refusal {
                Some(code) => format!("{code} {} refused by test rule\r\n", rcpt),
                None => {
                    rcpts.push(rcpt);
                    "250 OK\r\n".into()
                }
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "503 no valid recipients\r\n".into()
            } else {
                let wait = {
                    let st = state.lock().unwrap_or_else(|p| p.into_inner());
                    rcpts
                        .iter()
                        .find_map(|r| st.go_ahead_delay_for.get(r).copied())
                        .unwrap_or(st.go_ahead_delay)
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                conn.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    if read_line(&mut conn, &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    if let Some((name, value)) = l.split_once(':')
                        && name.eq_ignore_ascii_case("Message-ID")
                        && !data.contains("\r\n\r\n")
                    {
                        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                        st.body_seen.push(value.trim().to_owned());
                    }
                    data.push_str(l);
                }
                let header = |name: &str| {
                    data.split("\r\n\r\n").next().and_then(|h| {
                        h.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                    })
                };
                let message_id = header("Message-ID");
                let (delay, rule) = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    st.data_started += 1;
                    let rule = rcpts
                        .first()
                        .and_then(|r| st.after_data.get_mut(r))
                        .and_then(|(rule, times)| match times {
                            Some(0) => None,
                            Some(n) => {
                                *n -= 1;
                                Some(*rule)
                            }
                            None => Some(*rule),
                        });
                    (st.data_delay, rule)
                };
                tokio::time::sleep(delay).await;
                match rule {
                    Some(AfterData::Reply(code)) => {
                        rcpts.clear();
                        conn.write_all(
                            format!("{code} refused after DATA by test rule\r\n").as_bytes(),
                        )
                        .await?;
                        continue;
                    }
                    Some(AfterData::Drop) => return Ok(()),
                    Some(AfterData::Stall(d)) => tokio::time::sleep(d).await,
                    Some(AfterData::AcceptThenDrop) | None => {}
                }
                let received = Received {
                    mail_from: from.clone(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    message_id,
                    subject: header("Subject"),
                    data: data.clone(),
                    at: Instant::now(),
                };
                let queued = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    st.received.push(received);
                    st.received.len()
                };
                if matches!(rule, Some(AfterData::AcceptThenDrop)) {
                    return Ok(());
                }
                format!("250 2.0.0 queued as {queued}\r\n")
            }
        } else if upper.starts_with("QUIT") {
            conn.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 command not implemented\r\n".into()
        };
        conn.write_all(reply.as_bytes()).await?;
    }
}

fn address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg.split('>').next().unwrap_or(arg);
    inner.trim_start_matches('<').trim().to_owned()
}
