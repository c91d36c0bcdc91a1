//! A model-based test of taking control under traffic. proptest generates sequences of
//! operations — enroll, time passing, pause, resume, cancel, re-enroll, and edits (insert,
//! delete, reorder, retime, change content, close and reopen the send window) — and runs each
//! against the real roles, relay, PostgreSQL, RabbitMQ and Redis. After every operation the
//! system is let settle, and every lead's received mail (subjects, in order, and bodies) and
//! every enrollment's status are compared with a small reference model.
//!
//! Time: steps are `immediately` or a one-day delay, and "a day passes" moves every stored
//! time of the sequence (due times, send times, enrollment times) back by a day, as if the
//! clock had moved. The window is either none or one that stays closed for days.
//!
//! `make test` runs `PULSE_MODEL_CASES` cases (default 6) with a fixed seed
//! (`PULSE_MODEL_SEED`, default 7); `make chaos` runs many more.

use std::time::Duration;

use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv};
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Clone, Debug)]
enum Op {
    Enroll(usize),
    DayPasses,
    Pause,
    Resume,
    Cancel(usize),
    Reenroll(usize),
    Insert { at: usize, immediate: bool },
    Delete(usize),
    Move { from: usize, to: usize },
    Retime(usize),
    Content(usize),
    Window { closed: bool },
}

const LEADS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..LEADS).prop_map(Op::Enroll),
        6 => Just(Op::DayPasses),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        1 => (0..LEADS).prop_map(Op::Cancel),
        1 => (0..LEADS).prop_map(Op::Reenroll),
        2 => (0..8usize, any::<bool>()).prop_map(|(at, immediate)| Op::Insert { at, immediate }),
        2 => (0..8usize).prop_map(Op::Delete),
        2 => (0..8usize, 0..8usize).prop_map(|(from, to)| Op::Move { from, to }),
        1 => (0..8usize).prop_map(Op::Retime),
        1 => (0..8usize).prop_map(Op::Content),
        1 => prop::bool::weighted(0.3).prop_map(|closed| Op::Window { closed }),
    ]
}

#[derive(Clone, Debug)]
struct Step {
    label: u32,
    immediate: bool,
    version: u32,
}

impl Step {
    fn subject(&self) -> String {
        format!("S{}", self.label)
    }
    fn body(&self) -> String {
        format!("body {} v{}", self.label, self.version)
    }
}

#[derive(Clone, Debug)]
struct Enrollment {
    active: bool,
    completed: bool,
    /// The step whose run is SCHEDULED.
    waiting: Option<u32>,
    /// Days since the anchor of the waiting step (the last send, or the enrollment).
    age: u32,
    /// Steps with a run in this generation (sent or skipped).
    ran: Vec<u32>,
}

impl Enrollment {
    fn new(first: Option<u32>) -> Self {
        Self {
            active: first.is_some(),
            completed: first.is_none(),
            waiting: first,
            age: 0,
            ran: Vec::new(),
        }
    }
    fn status(&self) -> &'static str {
        match (self.active, self.completed) {
            (true, _) => "ACTIVE",
            (false, true) => "COMPLETED",
            (false, false) => "CANCELLED",
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Model {
    steps: Vec<Step>,
    paused: bool,
    closed: bool,
    next_label: u32,
    /// Per lead: its enrollments by generation, and the mail it received (subject, body).
    enrollments: Vec<Vec<Enrollment>>,
    received: Vec<Vec<(String, String)>>,
}

impl Model {
    fn new(immediacy: &[bool]) -> Self {
        let mut m = Model {
            enrollments: vec![Vec::new(); LEADS],
            received: vec![Vec::new(); LEADS],
            ..Default::default()
        };
        for &immediate in immediacy {
            m.add_step(m.steps.len(), immediate);
        }
        m
    }

    fn add_step(&mut self, at: usize, immediate: bool) {
        let label = self.next_label;
        self.next_label += 1;
        self.steps.insert(
            at.min(self.steps.len()),
            Step {
                label,
                immediate,
                version: 1,
            },
        );
    }

    /// The first live step at index `from` or later that `ran` does not hold.
    fn next_from(&self, from: usize, ran: &[u32]) -> Option<u32> {
        self.steps
            .iter()
            .skip(from)
            .find(|s| !ran.contains(&s.label))
            .map(|s| s.label)
    }

    fn index(&self, label: u32) -> Option<usize> {
        self.steps.iter().position(|s| s.label == label)
    }

    /// What the senders do while nothing else happens: every due step of an active enrollment
    /// goes out, and an `immediately` step right after it.
    fn settle(&mut self) {
        if self.paused || self.closed {
            return;
        }
        for lead in 0..LEADS {
            let Some(mut e) = self.enrollments[lead].last().cloned() else {
                continue;
            };
            while e.active {
                let Some(x) = e.waiting else { break };
                let Some(i) = self.index(x) else { break };
                let step = &self.steps[i];
                if !(step.immediate || e.age >= 1) {
                    break;
                }
                self.received[lead].push((step.subject(), step.body()));
                e.ran.push(x);
                e.age = 0;
                e.waiting = self.next_from(i + 1, &e.ran);
                if e.waiting.is_none() {
                    e.active = false;
                    e.completed = true;
                }
            }
            if let Some(last) = self.enrollments[lead].last_mut() {
                *last = e;
            }
        }
    }

    /// Applies `op`; `false` when it is not applicable here (nothing is called).
    fn apply(&mut self, op: &Op) -> bool {
        let n = self.steps.len();
        match *op {
            Op::Enroll(lead) => {
                // Paused: `sequence_paused`; enrolled before: `already_active` or
                // `ended_not_reenrolled`. Either way nothing changes.
                if !self.paused && self.enrollments[lead].is_empty() {
                    let first = self.next_from(0, &[]);
                    self.enrollments[lead].push(Enrollment::new(first));
                }
            }
            Op::DayPasses => {
                for list in &mut self.enrollments {
                    for e in list.iter_mut().filter(|e| e.active) {
                        e.age += 1;
                    }
                }
            }
            Op::Pause => self.paused = true,
            Op::Resume => self.paused = false,
            Op::Cancel(lead) => match self.enrollments[lead].last_mut() {
                Some(e) if e.active => {
                    e.active = false;
                    e.waiting = None;
                }
                _ => return false,
            },
            Op::Reenroll(lead) => {
                if self.paused {
                    return false;
                }
                match self.enrollments[lead].last() {
                    Some(e) if !e.active => {
                        let first = self.next_from(0, &[]);
                        self.enrollments[lead].push(Enrollment::new(first));
                    }
                    _ => return false,
                }
            }
            Op::Insert { at, immediate } => {
                if n >= 6 {
                    return false;
                }
                self.add_step(at % (n + 1), immediate);
            }
            Op::Delete(i) => {
                if n <= 1 {
                    return false;
                }
                let i = i % n;
                let gone = self.steps.remove(i).label;
                // Enrollments waiting on it move on to what now follows its place.
                for lead in 0..LEADS {
                    let Some(mut e) = self.enrollments[lead].last().cloned() else {
                        continue;
                    };
                    if e.active && e.waiting == Some(gone) {
                        e.ran.push(gone);
                        e.waiting = self.next_from(i, &e.ran);
                        if e.waiting.is_none() {
                            e.active = false;
                            e.completed = true;
                        }
                    }
                    if let Some(last) = self.enrollments[lead].last_mut() {
                        *last = e;
                    }
                }
            }
            Op::Move { from, to } => {
                if n < 2 {
                    return false;
                }
                let step = self.steps.remove(from % n);
                self.steps.insert(to % n, step);
            }
            Op::Retime(i) => {
                let step = &mut self.steps[i % n];
                step.immediate = !step.immediate;
            }
            Op::Content(i) => self.steps[i % n].version += 1,
            Op::Window { closed } => {
                if closed == self.closed {
                    return false;
                }
                self.closed = closed;
            }
        }
        true
    }
}

/// One case against the real services: its own sequence, tag and leads.
struct Case<'a> {
    env: &'a TestEnv,
    smtp: &'a SmtpServer,
    name: String,
    sequence: String,
    ids: std::collections::HashMap<u32, String>,
    events: u32,
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

fn err(e: impl std::fmt::Display) -> TestCaseError {
    fail(e.to_string())
}

impl Case<'_> {
    fn email(&self, lead: usize) -> String {
        format!("{}-l{lead}@example.com", self.name)
    }

    fn step_json(&self, s: &Step) -> Value {
        let timing = if s.immediate {
            json!({"type": "immediately"})
        } else {
            json!({"type": "delay", "delay": "P1D"})
        };
        let mut v = json!({"subject": s.subject(), "body": s.body(), "timing": timing});
        if let Some(id) = self.ids.get(&s.label) {
            v["id"] = json!(id);
        }
        v
    }

    fn learn_ids(&mut self, sequence: &Value) {
        for s in sequence["steps"].as_array().into_iter().flatten() {
            let label = s["subject"]
                .as_str()
                .and_then(|x| x.strip_prefix('S'))
                .and_then(|x| x.parse::<u32>().ok());
            if let (Some(label), Some(id)) = (label, s["id"].as_str()) {
                self.ids.insert(label, id.to_owned());
            }
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<(u16, Value), TestCaseError> {
        self.env.call(method, path, Some(body)).await.map_err(err)
    }

    async fn edit(&mut self, body: Value) -> Result<(), TestCaseError> {
        let path = format!("/v1/sequences/{}", self.sequence);
        let (status, v) = self.call(reqwest::Method::PATCH, &path, body).await?;
        if status != 200 {
            return Err(fail(format!("edit: {status} {v}")));
        }
        self.learn_ids(&v["sequence"]);
        Ok(())
    }

    async fn run(&mut self, model: &Model, op: &Op) -> Result<(), TestCaseError> {
        let post = reqwest::Method::POST;
        match *op {
            Op::Enroll(lead) => {
                self.events += 1;
                let event = json!({"events": [{"id": format!("{}-e{}", self.name, self.events),
                    "type": "tag_applied", "tag": self.name, "lead": {"email": self.email(lead)}}]});
                let (status, v) = self.call(post, "/v1/events", event).await?;
                if status != 200 {
                    return Err(fail(format!("event: {status} {v}")));
                }
            }
            Op::DayPasses => {
                let seq: Uuid = self.sequence.parse().map_err(err)?;
                for sql in [
                    "UPDATE step_runs SET due_at = due_at - interval '1 day 1 minute',
                         sent_at = sent_at - interval '1 day 1 minute' WHERE sequence_id = $1",
                    "UPDATE enrollments SET created_at = created_at - interval '1 day 1 minute'
                     WHERE sequence_id = $1",
                ] {
                    sqlx::query(sql)
                        .bind(seq)
                        .execute(&self.env.db)
                        .await
                        .map_err(err)?;
                }
            }
            Op::Pause | Op::Resume => {
                let what = if matches!(op, Op::Pause) {
                    "pause"
                } else {
                    "resume"
                };
                let path = format!("/v1/sequences/{}/{what}", self.sequence);
                let (status, v) = self.call(post, &path, json!({})).await?;
                if status != 200 {
                    return Err(fail(format!("{what}: {status} {v}")));
                }
            }
            Op::Cancel(lead) => {
                let id: Uuid = sqlx::query_scalar(
                    "SELECT e.id FROM enrollments e JOIN leads l ON l.id = e.lead_id
                     WHERE l.email = $1 AND e.status = 'ACTIVE'",
                )
                .bind(self.email(lead))
                .fetch_one(&self.env.db)
                .await
                .map_err(err)?;
                let (status, v) = self
                    .call(post, &format!("/v1/enrollments/{id}/cancel"), json!({}))
                    .await?;
                if status != 200 {
                    return Err(fail(format!("cancel: {status} {v}")));
                }
            }
            Op::Reenroll(lead) => {
                let path = format!("/v1/sequences/{}/re-enroll", self.sequence);
                let (status, v) = self
                    .call(post, &path, json!({"lead_emails": [self.email(lead)]}))
                    .await?;
                if status != 200 || v["reenrolled"] != 1 {
                    return Err(fail(format!("re-enroll: {status} {v}")));
                }
            }
            Op::Window { closed } => {
                let window = if closed {
                    // Open only three days from now: closed for the whole case.
                    let day = (chrono::Utc::now() + chrono::Duration::days(3))
                        .format("%a")
                        .to_string()
                        .to_lowercase();
                    json!({"days": [day], "start": "00:00", "end": "23:59"})
                } else {
                    Value::Null
                };
                self.edit(json!({ "send_window": window })).await?;
            }
            // Every structural edit sends the model's new step list.
            _ => {
                let steps: Vec<Value> = model.steps.iter().map(|s| self.step_json(s)).collect();
                self.edit(json!({ "steps": steps, "delete_missing_steps": true }))
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits until nothing is due, queued or being sent, and the relay has what the ledger
    /// says was sent; twice in a row.
    async fn settle(&self) -> Result<(), TestCaseError> {
        let seq: Uuid = self.sequence.parse().map_err(err)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut quiet = 0;
        while quiet < 2 {
            if tokio::time::Instant::now() > deadline {
                return Err(fail("the system did not settle within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(120)).await;
            let (busy, sent): (i64, i64) = sqlx::query_as(
                "SELECT
                   (SELECT count(*) FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
                      JOIN sequences s ON s.id = sr.sequence_id
                    WHERE sr.sequence_id = $1 AND (sr.state = 'QUEUED'
                       OR (sr.state = 'SCHEDULED' AND sr.due_at <= now() AND e.status = 'ACTIVE'
                           AND s.status = 'ACTIVE')))
                 + (SELECT count(*) FROM send_ledger WHERE sequence_id = $1 AND state = 'SENDING'),
                   (SELECT count(*) FROM send_ledger WHERE sequence_id = $1 AND state = 'SENT')",
            )
            .bind(seq)
            .fetch_one(&self.env.db)
            .await
            .map_err(err)?;
            let received = (0..LEADS).map(|l| self.received(l).len()).sum::<usize>() as i64;
            quiet = if busy == 0 && received == sent {
                quiet + 1
            } else {
                0
            };
        }
        Ok(())
    }

    fn received(&self, lead: usize) -> Vec<(String, String)> {
        let email = self.email(lead);
        self.smtp
            .received()
            .iter()
            .filter(|m| m.rcpt_to.contains(&email))
            .map(|m| {
                (
                    m.subject.clone().unwrap_or_default(),
                    m.body().trim().to_owned(),
                )
            })
            .collect()
    }

    async fn compare(&self, model: &Model, step: usize, ops: &[Op]) -> Result<(), TestCaseError> {
        let seq: Uuid = self.sequence.parse().map_err(err)?;
        for lead in 0..LEADS {
            let got = self.received(lead);
            if got != model.received[lead] {
                return Err(fail(format!(
                    "lead {lead} after op {step} ({:?}): received {got:?}, the model says {:?}; ops {ops:?}",
                    ops[step], model.received[lead]
                )));
            }
            let statuses: Vec<String> = sqlx::query_scalar(
                "SELECT e.status FROM enrollments e JOIN leads l ON l.id = e.lead_id
                 WHERE e.sequence_id = $1 AND l.email = $2 ORDER BY e.generation",
            )
            .bind(seq)
            .bind(self.email(lead))
            .fetch_all(&self.env.db)
            .await
            .map_err(err)?;
            let want: Vec<&str> = model.enrollments[lead].iter().map(|e| e.status()).collect();
            if statuses != want {
                return Err(fail(format!(
                    "lead {lead} after op {step} ({:?}): enrollments {statuses:?}, the model says {want:?}; ops {ops:?}",
                    ops[step]
                )));
            }
        }
        Ok(())
    }
}

async fn run_case(
    env: &TestEnv,
    smtp: &SmtpServer,
    immediacy: &[bool],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let name = format!("m{}", &Uuid::new_v4().simple().to_string()[..10]);
    let mut model = Model::new(immediacy);
    let mut case = Case {
        env,
        smtp,
        name: name.clone(),
        sequence: String::new(),
        ids: Default::default(),
        events: 0,
    };
    let steps: Vec<Value> = model.steps.iter().map(|s| case.step_json(s)).collect();
    let body = json!({"name": name, "steps": steps,
        "triggers": [{"type": "tag_applied", "tag": name}],
        "sender": {"from": "Model <model@example.com>"}});
    let seq = env.create_sequence(body).await.map_err(err)?;
    case.sequence = seq["id"].as_str().unwrap_or_default().to_owned();
    case.learn_ids(&seq);
    let mut applied = 0;
    for (i, op) in ops.iter().enumerate() {
        if !model.apply(op) {
            continue;
        }
        applied += 1;
        case.run(&model, op).await?;
        model.settle();
        case.settle().await?;
        case.compare(&model, i, ops).await?;
    }
    let mails: usize = model.received.iter().map(Vec::len).sum();
    eprintln!(
        "model case {name}: {applied} of {} operations applied, {mails} mails",
        ops.len()
    );
    Ok(())
}

/// Interleavings that once broke Pulse, run before the generated ones.
fn known_cases() -> Vec<(Vec<bool>, Vec<Op>)> {
    use Op::*;
    vec![
        // An earlier step deleted while a lead waits on a later one: every later step still
        // goes out.
        (
            vec![true, true, false, false],
            vec![Enroll(0), Delete(0), DayPasses, DayPasses],
        ),
        // A step added in front of where a lead waits: it completes instead of stalling.
        (
            vec![true, false],
            vec![
                Enroll(0),
                Insert {
                    at: 0,
                    immediate: false,
                },
                DayPasses,
            ],
        ),
        // Reordered behind a lead: a step it already had is not sent again.
        (
            vec![true, false, false],
            vec![Enroll(1), Move { from: 0, to: 2 }, DayPasses, DayPasses],
        ),
        // Paused, edited, window closed, resumed: nothing until it reopens.
        (
            vec![true, false],
            vec![
                Enroll(2),
                Pause,
                Window { closed: true },
                DayPasses,
                Resume,
                Retime(1),
                Window { closed: false },
                Cancel(2),
                Reenroll(2),
            ],
        ),
    ]
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_system_behaves_like_the_model_under_random_control_operations() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let smtp = rt.block_on(SmtpServer::start())?;
    let url = smtp.url();
    let env = rt.block_on(TestEnv::start(
        "model",
        &[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender],
        |s| s.smtp_url = Some(url),
    ))?;
    let config = Config {
        cases: env_number("PULSE_MODEL_CASES", 6),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let seed = env_number("PULSE_MODEL_SEED", 7);
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let known = known_cases()
        .into_iter()
        .try_for_each(|(immediacy, ops)| rt.block_on(run_case(&env, &smtp, &immediacy, &ops)));
    // Steps (immediately or a day), a few leads enrolled first, then anything.
    let strategy = (
        prop::collection::vec(any::<bool>(), 1..5),
        1..=LEADS,
        prop::collection::vec(op(), 6..24),
    )
        .prop_map(|(immediacy, first, rest)| {
            let ops: Vec<Op> = (0..first).map(Op::Enroll).chain(rest).collect();
            (immediacy, ops)
        });
    let result = known.map_err(|e| anyhow::anyhow!("a known case failed: {e}"));
    let result = result.and_then(|()| {
        runner
            .run(&strategy, |(immediacy, ops)| {
                rt.block_on(run_case(&env, &smtp, &immediacy, &ops))
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
    });
    rt.block_on(env.stop())?;
    result
}
