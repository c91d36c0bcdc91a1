//! Taking control while leads are in flight: structural edits, send windows under a rate, and
//! pause and cancel against a slow relay. Every test here runs the real roles and relay, and
//! each reproduces a way the product once broke (issue "Taking control must be safe under
//! traffic").

use std::time::Duration;

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, count, eventually, sequence_body};
use serde_json::{Value, json};

async fn start(
    tweak: impl FnOnce(&mut pulse_shared::Settings),
) -> anyhow::Result<(TestEnv, SmtpServer)> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start(
        "trf",
        &[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender],
        |s| {
            s.smtp_url = Some(url);
            tweak(s);
        },
    )
    .await?;
    Ok((env, smtp))
}

fn events(prefix: &str, n: usize) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("{prefix}-{i}"), "type": "tag_applied",
                   "lead": {"email": format!("{prefix}{i}@example.com")}, "tag": "t"})
        })
        .collect();
    json!({ "events": events })
}

/// The steps of `seq`, as `PATCH` takes them, by subject.
fn keep(seq: &Value, subject: &str) -> Value {
    let steps = seq["steps"].as_array().cloned().unwrap_or_default();
    let s = steps
        .iter()
        .find(|s| s["subject"] == subject)
        .cloned()
        .unwrap_or(Value::Null);
    json!({"id": s["id"], "subject": s["subject"], "body": s["body"], "timing": s["timing"]})
}

async fn patch_steps(env: &TestEnv, seq: &Value, steps: Value) -> anyhow::Result<Value> {
    let (status, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{}", seq["id"].as_str().unwrap_or_default()),
            Some(json!({ "steps": steps, "delete_missing_steps": true })),
        )
        .await?;
    anyhow::ensure!(status == 200, "edit: {status} {body}");
    Ok(body)
}

fn subjects_to(smtp: &SmtpServer, rcpt: &str) -> Vec<String> {
    smtp.received()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == rcpt))
        .filter_map(|m| m.subject.clone())
        .collect()
}

fn subject_count(smtp: &SmtpServer, subject: &str) -> usize {
    smtp.received()
        .iter()
        .filter(|m| m.subject.as_deref() == Some(subject))
        .count()
}

async fn enrollment_of(env: &TestEnv, email: &str) -> anyhow::Result<(String, Option<String>)> {
    Ok(sqlx::query_as(
        "SELECT e.status, e.end_reason FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE l.email = $1",
    )
    .bind(email)
    .fetch_one(&env.db)
    .await?)
}

/// One lead goes through `steps` (tag "t", lead `{name}0@example.com`); once the relay has its
/// first `before` mails and they are recorded SENT, the steps are replaced by what `edit` makes of the sequence. Returns
/// the lead's subjects and its enrollment (status, end reason) once the enrollment ended.
async fn one_lead_through_an_edit(
    env: &TestEnv,
    smtp: &SmtpServer,
    name: &str,
    steps: &[(&str, &str, Value)],
    before: usize,
    edit: impl FnOnce(&Value) -> Value,
) -> anyhow::Result<(Vec<String>, (String, Option<String>))> {
    let seq = env.create_sequence(sequence_body(name, steps, "t")).await?;
    let (status, _) = env.post("/v1/events", events(name, 1)).await?;
    anyhow::ensure!(status == 200);
    let lead = format!("{name}0@example.com");
    smtp.wait_for(before, Duration::from_secs(15)).await?;
    // The relay's acceptance comes before the sender records it: the lead "got" those steps,
    // and waits on the next, once the records committed.
    eventually(Duration::from_secs(10), "the sends recorded", || async {
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM step_runs r JOIN enrollments e ON e.id = r.enrollment_id
             JOIN leads l ON l.id = e.lead_id WHERE l.email = $1 AND r.state = 'SENT'",
        )
        .bind(&lead)
        .fetch_one(&env.db)
        .await?;
        Ok((sent as usize >= before).then_some(()))
    })
    .await?;
    patch_steps(env, &seq, edit(&seq)).await?;
    eventually(Duration::from_secs(20), "the enrollment to end", || async {
        let (status, _) = enrollment_of(env, &lead).await?;
        Ok((status != "ACTIVE").then_some(()))
    })
    .await?;
    Ok((subjects_to(smtp, &lead), enrollment_of(env, &lead).await?))
}

#[tokio::test]
async fn deleting_an_earlier_step_keeps_every_later_one() -> anyhow::Result<()> {
    let (env, smtp) = start(|_| {}).await?;
    let steps = [
        ("A", "a", json!({"type": "immediately"})),
        ("B", "b", json!({"type": "delay", "delay": "PT1S"})),
        ("C", "c", json!({"type": "delay", "delay": "PT3S"})),
        ("D", "d", json!({"type": "delay", "delay": "PT1S"})),
    ];
    // The lead got A and B and waits on C: delete A.
    let (got, (status, reason)) = one_lead_through_an_edit(&env, &smtp, "del", &steps, 2, |seq| {
        json!([keep(seq, "B"), keep(seq, "C"), keep(seq, "D")])
    })
    .await?;
    assert_eq!(got, ["A", "B", "C", "D"]);
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("COMPLETED", Some("all steps sent"))
    );
    env.stop().await
}

#[tokio::test]
async fn adding_a_step_in_front_never_stalls_an_enrollment() -> anyhow::Result<()> {
    let (env, smtp) = start(|_| {}).await?;
    let steps = [
        ("A", "a", json!({"type": "immediately"})),
        ("B", "b", json!({"type": "delay", "delay": "PT2S"})),
    ];
    let (got, (status, _)) = one_lead_through_an_edit(&env, &smtp, "add", &steps, 1, |seq| {
        json!([{"subject": "Z", "body": "z", "timing": {"type": "immediately"}},
               keep(seq, "A"), keep(seq, "B")])
    })
    .await?;
    // Z was placed before where the lead was: it is not sent to it; nothing stalls.
    assert_eq!(got, ["A", "B"]);
    assert_eq!(status, "COMPLETED");
    // A lead enrolled now starts with Z.
    env.post("/v1/events", events("new", 1)).await?;
    smtp.wait_for(3, Duration::from_secs(15)).await?;
    assert_eq!(
        subjects_to(&smtp, "new0@example.com")
            .first()
            .map(String::as_str),
        Some("Z")
    );
    env.stop().await
}

#[tokio::test]
async fn a_reorder_never_sends_a_step_twice_nor_skips_one_still_ahead() -> anyhow::Result<()> {
    let (env, smtp) = start(|_| {}).await?;
    let steps = [
        ("A", "a", json!({"type": "immediately"})),
        ("B", "b", json!({"type": "delay", "delay": "PT2S"})),
        ("C", "c", json!({"type": "delay", "delay": "PT1S"})),
    ];
    // Waiting on B: move A after B. After B comes A (already sent: not again), then C.
    let (got, _) = one_lead_through_an_edit(&env, &smtp, "ord", &steps, 1, |seq| {
        json!([keep(seq, "B"), keep(seq, "A"), keep(seq, "C")])
    })
    .await?;
    assert_eq!(got, ["A", "B", "C"]);
    env.stop().await
}

/// Deletes `subject` (keeping `rest`, in that order) and returns how many mails of it the relay
/// had accepted when the edit returned: the most it may ever accept.
async fn delete_under_traffic(
    env: &TestEnv,
    smtp: &SmtpServer,
    seq: &Value,
    subject: &str,
    rest: &[&str],
) -> anyhow::Result<usize> {
    let steps: Vec<Value> = rest.iter().map(|s| keep(seq, s)).collect();
    patch_steps(env, seq, Value::Array(steps)).await?;
    Ok(subject_count(smtp, subject))
}

#[tokio::test]
async fn a_step_deleted_under_load_never_goes_out_after_the_edit_returns() -> anyhow::Result<()> {
    let (env, smtp) = start(|_| {}).await?;
    // Slow enough that the 400 A's are still going out when B is deleted.
    smtp.delay_data_reply(Duration::from_millis(60));
    let seq = env
        .create_sequence(sequence_body(
            "Load",
            &[
                ("A", "a", json!({"type": "immediately"})),
                ("B", "b", json!({"type": "delay", "delay": "PT4S"})),
                ("C", "c", json!({"type": "delay", "delay": "PT1S"})),
            ],
            "t",
        ))
        .await?;
    let (status, _) = env.post("/v1/events", events("load", 400)).await?;
    assert_eq!(status, 200);
    smtp.wait_for(60, Duration::from_secs(20)).await?;
    let a_at_edit = subject_count(&smtp, "A");
    let b_before = delete_under_traffic(&env, &smtp, &seq, "B", &["A", "C"]).await?;
    assert!(
        a_at_edit < 400,
        "the edit must land while A is still sending ({a_at_edit} sent)"
    );
    smtp.wait_for(800, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(b_before, 0, "B was never due before the edit");
    assert_eq!(subject_count(&smtp, "B"), 0, "no B after the edit returned");
    assert_eq!(subject_count(&smtp, "A"), 400);
    assert_eq!(subject_count(&smtp, "C"), 400, "every lead moved on to C");
    assert_eq!(
        count(
            &env.db,
            "SELECT count(*) FROM enrollments WHERE status = 'COMPLETED'"
        )
        .await?,
        400
    );
    env.stop().await
}

#[tokio::test]
async fn events_during_an_edit_never_enroll_on_a_deleted_step() -> anyhow::Result<()> {
    let (env, smtp) = start(|_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Ing",
            &[
                ("A", "a", json!({"type": "immediately"})),
                ("B", "b", json!({"type": "delay", "delay": "PT1S"})),
            ],
            "t",
        ))
        .await?;
    // Batches of events keep arriving while A is deleted.
    let mut posts = Vec::new();
    for b in 0..16 {
        let (base, key, http) = (env.base.clone(), env.key.clone(), env.http.clone());
        posts.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25 * b)).await;
            http.post(format!("{base}/v1/events"))
                .bearer_auth(key)
                .json(&events(&format!("ing{b}x"), 25))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let a_at_return = delete_under_traffic(&env, &smtp, &seq, "A", &["B"]).await?;
    for p in posts {
        assert_eq!(p.await??, 200);
    }
    eventually(Duration::from_secs(60), "every lead's B", || async {
        Ok((subject_count(&smtp, "B") >= 400).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        subject_count(&smtp, "A"),
        a_at_return,
        "no A accepted after the edit returned"
    );
    assert_eq!(subject_count(&smtp, "B"), 400, "every lead got B once");
    assert_eq!(
        count(
            &env.db,
            "SELECT count(*) FROM enrollments WHERE status = 'COMPLETED'"
        )
        .await?,
        400
    );
    env.stop().await
}

#[tokio::test]
async fn a_send_window_holds_under_a_rate() -> anyhow::Result<()> {
    let (env, smtp) = start(|_| {}).await?;
    // A window that closes at the end of the current minute (UTC, every day).
    // At least 30 s of it left, so a loaded machine still sends the first one inside it.
    let mut now = chrono::Utc::now();
    let second = now.timestamp() % 60;
    if second > 30 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
        now = chrono::Utc::now();
    }
    let open = now.format("%H:%M").to_string();
    let close = (now + chrono::Duration::minutes(1))
        .format("%H:%M")
        .to_string();
    // At 23:59 the window runs past midnight, to 00:00: the same one minute.
    let mut body = sequence_body("Win", &[("A", "a", json!({"type": "immediately"}))], "t");
    body["send_window"] = json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                 "start": open, "end": close});
    body["max_sends_per_minute"] = json!(1);
    env.create_sequence(body).await?;
    env.post("/v1/events", events("win", 6)).await?;
    // One goes out this minute; the other five cannot before the close: each is due at the
    // next opening (tomorrow), not at the close or after it.
    let next_opening = eventually(Duration::from_secs(15), "five held to tomorrow", || async {
        let far: i64 = count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED' AND due_at > now() + interval '23 hours'",
        )
        .await?;
        // The one that took the minute's slot may still be on its way to the relay.
        Ok((far == 5 && smtp.count() >= 1).then_some(far))
    })
    .await;
    assert_eq!(smtp.count(), 1, "one send in the window's minute");
    next_opening?;
    let dues: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT due_at FROM step_runs WHERE state = 'SCHEDULED'")
            .fetch_all(&env.db)
            .await?;
    for due in dues {
        assert_eq!(
            due.format("%H:%M").to_string(),
            open,
            "due at an opening: {due}"
        );
    }
    env.stop().await
}

#[tokio::test]
async fn pause_and_cancel_hold_against_a_relay_taking_four_seconds_a_message() -> anyhow::Result<()>
{
    // Two relay connections, sixteen sends at once: most sends wait for a connection. The
    // pause's wait is bounded by the SMTP timeout + 5 s = 10 s, less than the queue for the pool.
    let (env, smtp) = start(|s| {
        s.sender.smtp_pool_size = 2;
        s.sender.concurrency = 16;
        s.sender.smtp_timeout = Duration::from_secs(5);
    })
    .await?;
    smtp.delay_data_reply(Duration::from_secs(4));
    let seq = env
        .create_sequence(sequence_body(
            "Slow",
            &[("A", "a", json!({"type": "immediately"}))],
            "t",
        ))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    env.post("/v1/events", events("slow", 16)).await?;
    eventually(Duration::from_secs(10), "two sends on the wire", || async {
        Ok((smtp.data_started() >= 2).then_some(()))
    })
    .await?;
    // Cancel a lead that is not on the wire yet.
    let waiting = (0..16)
        .map(|i| format!("slow{i}@example.com"))
        .find(|e| smtp.rcpt_attempts(e) == 0)
        .ok_or_else(|| anyhow::anyhow!("every lead already on the wire"))?;
    let enrollment: uuid::Uuid = sqlx::query_scalar(
        "SELECT e.id FROM enrollments e JOIN leads l ON l.id = e.lead_id WHERE l.email = $1",
    )
    .bind(&waiting)
    .fetch_one(&env.db)
    .await?;
    let (status, _) = env
        .post(&format!("/v1/enrollments/{enrollment}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 200);
    // A send of that lead claimed before the cancel may have gone out while the call waited
    // for it; nothing may after the call returned.
    let cancelled_at_return = smtp.rcpt_attempts(&waiting);
    let (status, paused) = env
        .post(&format!("/v1/sequences/{sid}/pause"), json!({}))
        .await?;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(
        paused["warnings"],
        json!([]),
        "the pause waited for every send claimed before it"
    );
    let started_at_pause = smtp.data_started();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        smtp.data_started(),
        started_at_pause,
        "nothing reached the relay after the pause returned"
    );
    assert_eq!(
        smtp.rcpt_attempts(&waiting),
        cancelled_at_return,
        "nothing reached the cancelled lead after the cancel returned"
    );
    assert!(
        started_at_pause < 16,
        "the pause must land with sends waiting"
    );
    // The cancelled lead's queued step is put back by the pause hold and cancelled by the
    // scheduler later; it is not counted as held.
    let held = count(
        &env.db,
        "SELECT count(*) FROM step_runs sr JOIN enrollments e ON e.id = sr.enrollment_id
         WHERE sr.state = 'SCHEDULED' AND e.status = 'ACTIVE'",
    )
    .await?;
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT sr.state, e.status, count(*) FROM step_runs sr
         JOIN enrollments e ON e.id = sr.enrollment_id GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&env.db)
    .await?;
    let cancelled_unsent = usize::from(cancelled_at_return == 0);
    assert_eq!(
        held as usize + started_at_pause + cancelled_unsent,
        16,
        "held, not lost: {states:?}, {started_at_pause} started"
    );
    env.stop().await
}

#[tokio::test]
async fn a_subject_over_its_limit_once_rendered_fails_that_step_alone() -> anyhow::Result<()> {
    let (env, smtp) = start(|_| {}).await?;
    env.create_sequence(sequence_body(
        "Long",
        &[(
            "Re: {{ lead.attributes.topic }}",
            "b",
            json!({"type": "immediately"}),
        )],
        "t",
    ))
    .await?;
    let events = json!({"events": [
        {"id": "short", "type": "tag_applied", "tag": "t",
         "lead": {"email": "short@example.com", "attributes": {"topic": "pricing"}}},
        {"id": "long", "type": "tag_applied", "tag": "t",
         "lead": {"email": "long@example.com", "attributes": {"topic": "x".repeat(2000)}}}
    ]});
    let (status, res) = env.post("/v1/events", events).await?;
    assert_eq!(status, 200, "{res}");
    smtp.wait_for(1, Duration::from_secs(15)).await?;
    let failed: (String, Option<String>) = eventually(
        Duration::from_secs(15),
        "the long subject's step to fail",
        || async {
            let row: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT sr.state, sr.last_error FROM step_runs sr
                 JOIN enrollments e ON e.id = sr.enrollment_id JOIN leads l ON l.id = e.lead_id
                 WHERE l.email = 'long@example.com' AND sr.state = 'FAILED'",
            )
            .fetch_optional(&env.db)
            .await?;
            Ok(row)
        },
    )
    .await?;
    assert!(
        failed.1.as_deref().is_some_and(|e| e.contains("998")),
        "{failed:?}"
    );
    assert_eq!(subjects_to(&smtp, "short@example.com"), ["Re: pricing"]);
    assert!(subjects_to(&smtp, "long@example.com").is_empty());
    env.stop().await
}
