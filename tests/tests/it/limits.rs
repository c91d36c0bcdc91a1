//! Sending limits, from outside: mailbox limits hold on the relay's own clock while a backlog
//! drains, and when the exchange before the final dot takes longer for some sends than others;
//! a recipient domain's limit spreads its waiting sends and says why they wait; a daily
//! limit waits for midnight in the mailbox's zone; with Redis gone nothing is sent, and
//! everything goes out once it is back. Limits are checked when each send is about to go out.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, eventually, proxy::TcpProxy, sequence_body};
use serde_json::{Value, json};
use sqlx::Row;

/// Enrolls `emails` through one tag event each.
async fn enroll(env: &TestEnv, tag: &str, emails: &[String]) -> anyhow::Result<()> {
    let events: Vec<Value> = emails
        .iter()
        .map(|e| {
            json!({"id": format!("{tag}-{e}"), "type": "tag_applied", "tag": tag,
                        "lead": {"email": e}})
        })
        .collect();
    let (status, body) = env.post("/v1/events", json!({"events": events})).await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(())
}

fn immediately(name: &str, tag: &str) -> Value {
    sequence_body(
        name,
        &[("Hi {{ lead.email }}", "One", json!({"type": "immediately"}))],
        tag,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mailboxes_limited_to_5_per_10s_send_all_60_and_no_window_holds_more_than_5()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("limits-mailboxes", &[Role::All], |s| {
        s.smtp_url = Some(url);
    })
    .await?;
    let mut ids = Vec::new();
    for rep in ["a", "b", "c"] {
        let (status, m) = env
            .post(
                "/v1/mailboxes",
                json!({"address": format!("rep-{rep}@example.com"),
                       "limits": [{"max": 5, "per": "PT10S"}]}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {m}");
        assert_eq!(m["limits"], json!([{"max": 5, "per": "PT10S"}]));
        ids.push(m["id"].as_str().unwrap_or_default().to_owned());
    }
    let mut body = immediately("Limited", "go");
    body["sender"] = json!({"mailbox_ids": ids});
    env.create_sequence(body).await?;
    let leads: Vec<String> = (0..60).map(|i| format!("lead{i}@example.com")).collect();
    enroll(&env, "go", &leads).await?;

    let received = smtp.wait_for(60, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.count(), 60, "all 60 sent, none twice");
    let most = most_in_a_window(&received, Duration::from_secs(10));
    assert_eq!(most.len(), 3, "{most:?}");
    for (mailbox, most) in most {
        assert!(most <= 5, "{mailbox}: {most} sends in one 10 s window");
    }
    env.stop().await
}

/// The most sends of each sender address within any `window` on the relay's clock.
fn most_in_a_window(
    received: &[pulse_tests::smtp::Received],
    window: Duration,
) -> HashMap<String, usize> {
    let mut by_mailbox: HashMap<String, Vec<std::time::Instant>> = HashMap::new();
    for m in received {
        by_mailbox
            .entry(m.mail_from.clone())
            .or_default()
            .push(m.at);
    }
    by_mailbox
        .into_iter()
        .map(|(mailbox, mut times)| {
            times.sort();
            let most = (0..times.len())
                .map(|i| {
                    times[i..]
                        .iter()
                        .take_while(|t| t.duration_since(times[i]) < window)
                        .count()
                })
                .max()
                .unwrap_or(0);
            (mailbox, most)
        })
        .collect()
}

/// Slots spaced when taken do not make dots spaced at the relay when the exchange before the
/// dot takes longer for some sends: here half the leads' relay waits 900 ms before its 354.
/// Without the spacing at the gate, slow sends' dots land among later fast ones' and a 1-second
/// window holds more than the limit; with it, the early dot is withheld and sent later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_at_the_relay_when_the_exchange_before_the_dot_varies() -> anyhow::Result<()>
{
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("limits-uneven", &[Role::All], |s| {
        s.smtp_url = Some(url);
    })
    .await?;
    let (status, m) = env
        .post(
            "/v1/mailboxes",
            json!({"address": "rep@example.com", "limits": [{"max": 5, "per": "PT1S"}]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {m}");
    let mut body = immediately("Uneven", "go");
    body["sender"] = json!({"mailbox_ids": [m["id"]]});
    env.create_sequence(body).await?;
    let leads: Vec<String> = (0..60).map(|i| format!("lead{i}@example.com")).collect();
    for lead in leads.iter().step_by(2) {
        smtp.delay_go_ahead_for(lead, Duration::from_millis(900));
    }
    enroll(&env, "go", &leads).await?;

    let received = smtp.wait_for(60, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.count(), 60, "all 60 sent, none twice");
    let most = most_in_a_window(&received, Duration::from_secs(1));
    assert_eq!(most.len(), 1, "{most:?}");
    for (mailbox, most) in most {
        assert!(
            most <= 5,
            "{mailbox}: {most} sends in one second at the relay"
        );
    }
    env.stop().await
}

#[tokio::test]
async fn a_domain_limit_spreads_its_waiting_sends_and_says_why_they_wait() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("limits-domain", &[Role::All], |s| {
        s.smtp_url = Some(url);
    })
    .await?;
    let (status, set) = env
        .call(
            reqwest::Method::PUT,
            "/v1/domain-limits/Slow.Example",
            Some(json!({"limits": [{"max": 2, "per": "PT1H"}]})),
        )
        .await?;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["domain"], "slow.example");
    let (status, bad) = env
        .call(
            reqwest::Method::PUT,
            "/v1/domain-limits/slow.example",
            Some(json!({"limits": [{"max": 2, "per": "soon"}]})),
        )
        .await?;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"]["field"], "limits[0].per", "{bad}");

    let seq = env.create_sequence(immediately("Domains", "go")).await?;
    let mut leads: Vec<String> = (0..3).map(|i| format!("s{i}@slow.example")).collect();
    leads.extend((0..5).map(|i| format!("f{i}@fast.example")));
    enroll(&env, "go", &leads).await?;

    // Every fast one, and one slow one: 2 per hour are spaced half an hour apart.
    smtp.wait_for(6, Duration::from_secs(30)).await?;
    let waiting = eventually(Duration::from_secs(20), "two held sends", || async {
        let rows = sqlx::query(
            "SELECT sr.due_at, sr.last_error FROM step_runs sr
             JOIN enrollments e ON e.id = sr.enrollment_id JOIN leads l ON l.id = e.lead_id
             WHERE sr.state = 'SCHEDULED' AND l.email LIKE '%@slow.example' ORDER BY sr.due_at",
        )
        .fetch_all(&env.db)
        .await?;
        Ok((rows.len() == 2).then_some(rows))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.count(), 6);
    let slow_sent = smtp
        .received()
        .iter()
        .filter(|m| m.rcpt_to.join(",").ends_with("@slow.example"))
        .count();
    assert_eq!(slow_sent, 1);
    let due: Vec<DateTime<Utc>> = waiting.iter().map(|r| r.get("due_at")).collect();
    let now = Utc::now();
    let minutes = |d: DateTime<Utc>| (d - now).num_seconds() as f64 / 60.0;
    assert!((28.0..32.0).contains(&minutes(due[0])), "{due:?}");
    assert!((58.0..62.0).contains(&minutes(due[1])), "{due:?}");
    let note: String = waiting[0].get("last_error");
    assert!(
        note.starts_with("domain slow.example limit (2 per PT1H) until ") && note.ends_with(" UTC"),
        "{note}"
    );
    // The enrollments view says it too.
    let (_, enrollments) = env
        .get(&format!(
            "/v1/sequences/{}/enrollments?status=active",
            seq["id"].as_str().unwrap_or_default()
        ))
        .await?;
    let notes = enrollments.to_string();
    assert!(notes.contains("domain slow.example limit"), "{notes}");

    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            "/v1/domain-limits/slow.example",
            None,
        )
        .await?;
    assert_eq!(status, 204);
    env.stop().await
}

#[tokio::test]
async fn a_daily_mailbox_limit_waits_for_midnight_in_the_mailbox_zone() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("limits-daily", &[Role::All], |s| {
        s.smtp_url = Some(url);
    })
    .await?;
    let (status, bad) = env
        .post(
            "/v1/mailboxes",
            json!({"address": "rep@example.com", "timezone": "Mars/Olympus"}),
        )
        .await?;
    assert_eq!(status, 422, "{bad}");
    let (status, m) = env
        .post(
            "/v1/mailboxes",
            json!({"address": "rep@example.com", "timezone": "Europe/Paris",
                   "limits": [{"max": 2, "per": "P1D"}]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {m}");
    let mut body = immediately("Daily", "go");
    body["sender"] = json!({"mailbox_ids": [m["id"]]});
    env.create_sequence(body).await?;
    let leads: Vec<String> = (0..4).map(|i| format!("d{i}@example.com")).collect();
    enroll(&env, "go", &leads).await?;

    smtp.wait_for(2, Duration::from_secs(30)).await?;
    let waiting = eventually(Duration::from_secs(20), "two held sends", || async {
        let rows =
            sqlx::query("SELECT due_at, last_error FROM step_runs WHERE state = 'SCHEDULED'")
                .fetch_all(&env.db)
                .await?;
        Ok((rows.len() == 2).then_some(rows))
    })
    .await?;
    assert_eq!(smtp.count(), 2);
    let paris: chrono_tz::Tz = "Europe/Paris".parse()?;
    let (_, midnight) = pulse_shared::limits::day_bounds(Utc::now(), paris);
    for row in &waiting {
        let due: DateTime<Utc> = row.get("due_at");
        let after = (due - midnight).num_milliseconds();
        assert!(
            (0..60_000).contains(&after),
            "due {due}, midnight in Paris {midnight}"
        );
        let note: String = row.get("last_error");
        assert!(
            note.starts_with("mailbox rep@example.com daily limit (2) until ")
                && note.ends_with(" Europe/Paris"),
            "{note}"
        );
    }
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_nothing_is_sent_and_everything_goes_once_it_is_back() -> anyhow::Result<()>
{
    let redis = TcpProxy::start("127.0.0.1:6379".parse()?).await?;
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let redis_url = format!("redis://{}/", redis.addr);
    let env = TestEnv::start("limits-redis", &[Role::All], |s| {
        s.smtp_url = Some(url);
        s.redis_url = redis_url;
    })
    .await?;
    let mut body = immediately("Without Redis", "go");
    body["limits"] = json!([{"max": 100, "per": "PT1S"}]);
    env.create_sequence(body).await?;

    redis.cut().await;
    let leads: Vec<String> = (0..20).map(|i| format!("r{i}@example.com")).collect();
    enroll(&env, "go", &leads).await?;
    eventually(Duration::from_secs(60), "sends held for Redis", || async {
        let held = pulse_tests::count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE last_error LIKE 'Redis unreachable%'",
        )
        .await?;
        Ok((held >= 20).then_some(()))
    })
    .await?;
    assert_eq!(smtp.count(), 0, "nothing is sent while Redis is gone");

    redis.restore();
    smtp.wait_for(20, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.count(), 20, "each once");
    env.stop().await
}

/// A step with `max_lateness` that a pause kept past it is skipped at resume, and the lead
/// moves on to the next step, which goes out.
#[tokio::test]
async fn max_lateness_skips_a_step_held_past_it_by_a_pause_and_the_lead_moves_on()
-> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("limits-late", &[Role::All], |s| {
        s.smtp_url = Some(url);
    })
    .await?;
    let (status, bad) = env
        .post(
            "/v1/sequences",
            json!({"name": "Bad", "sender": {"from": "a@example.com"},
                   "steps": [{"subject": "A", "body": "a", "timing": {"type": "immediately"},
                              "max_lateness": "PT1S"}]}),
        )
        .await?;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"]["field"], "steps[0].max_lateness");
    let mut body = sequence_body(
        "Happy Monday",
        &[
            // Not due yet, so the leads enroll before the pause.
            (
                "Happy Monday",
                "a",
                json!({"type": "on_date", "at": "2099-01-01T00:00:00Z"}),
            ),
            ("Later", "b", json!({"type": "delay", "delay": "PT1S"})),
        ],
        "go",
    );
    body["steps"][0]["max_lateness"] = json!("PT1M");
    let seq = env.create_sequence(body).await?;
    assert_eq!(seq["steps"][0]["max_lateness"], "PT1M");
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let leads: Vec<String> = (0..5).map(|i| format!("m{i}@example.com")).collect();
    enroll(&env, "go", &leads).await?;
    eventually(Duration::from_secs(20), "five enrollments", || async {
        let n = pulse_tests::count(&env.db, "SELECT count(*) FROM step_runs").await?;
        Ok((n == 5).then_some(()))
    })
    .await?;
    env.post(&format!("/v1/sequences/{sid}/pause"), json!({}))
        .await?;
    // The step came due two minutes into the pause.
    sqlx::query("UPDATE step_runs SET due_at = now() - interval '2 minutes'")
        .execute(&env.db)
        .await?;
    let (_, preview) = env
        .get(&format!("/v1/sequences/{sid}/resume-preview"))
        .await?;
    assert_eq!(preview["skips"], 5, "{preview}");
    for item in preview["items"].as_array().into_iter().flatten() {
        assert_eq!(item["outcome"], "late", "{item}");
        assert!(
            item["reason"]
                .as_str()
                .is_some_and(|r| r.contains("max_lateness PT1M")),
            "{item}"
        );
    }
    let (status, _) = env
        .post(&format!("/v1/sequences/{sid}/resume"), json!({}))
        .await?;
    assert_eq!(status, 200);
    let got = smtp.wait_for(5, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.count(), 5);
    assert!(
        got.iter().all(|m| m.subject.as_deref() == Some("Later")),
        "only the next step goes out"
    );
    let skipped = pulse_tests::count(
        &env.db,
        "SELECT count(*) FROM step_runs WHERE state = 'SKIPPED' AND position = 1
           AND last_error LIKE 'skipped: could not go out within its max_lateness PT1M%'",
    )
    .await?;
    assert_eq!(skipped, 5);
    env.stop().await
}

/// A step a sending limit would hold past its `max_lateness` is skipped at send time instead,
/// and the lead moves on.
#[tokio::test]
async fn a_limit_wait_past_max_lateness_skips_the_step_at_send_time() -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("limits-late-send", &[Role::All], |s| {
        s.smtp_url = Some(url);
    })
    .await?;
    let mut body = sequence_body(
        "Slow",
        &[
            ("First", "a", json!({"type": "immediately"})),
            ("Second", "b", json!({"type": "delay", "delay": "P1D"})),
        ],
        "go",
    );
    body["steps"][0]["max_lateness"] = json!("PT5M");
    body["limits"] = json!([{"max": 1, "per": "PT1H"}]);
    env.create_sequence(body).await?;
    let leads: Vec<String> = (0..3).map(|i| format!("w{i}@example.com")).collect();
    enroll(&env, "go", &leads).await?;
    smtp.wait_for(1, Duration::from_secs(20)).await?;
    eventually(
        Duration::from_secs(20),
        "two late steps skipped",
        || async {
            let n = pulse_tests::count(
                &env.db,
                "SELECT count(*) FROM step_runs WHERE position = 1 AND state = 'SKIPPED'
               AND last_error LIKE 'skipped: could not go out within its max_lateness PT5M%'",
            )
            .await?;
            Ok((n == 2).then_some(()))
        },
    )
    .await?;
    // Every lead moved on to step 2, due a day from its step 1 (sent or skipped). The sent one
    // moves on when its send is recorded, which may come after the relay has it.
    eventually(Duration::from_secs(20), "every lead at step 2", || async {
        let second = pulse_tests::count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE position = 2 AND state = 'SCHEDULED'
               AND due_at > now() + interval '23 hours'",
        )
        .await?;
        Ok((second == 3).then_some(()))
    })
    .await?;
    assert_eq!(smtp.count(), 1);
    env.stop().await
}

/// Changing a sequence's limits, priority and guardrails while 300 leads are in flight loses
/// and doubles nothing, and the new limit holds from the next check on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_tightened_under_traffic_holds_from_then_on_and_nothing_is_lost_or_doubled()
-> anyhow::Result<()> {
    const LEADS: usize = 300;
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let env = TestEnv::start("limits-race", &[Role::All], |s| {
        s.smtp_url = Some(url);
    })
    .await?;
    let mut body = immediately("Racing", "go");
    body["limits"] = json!([{"max": 50, "per": "PT1S"}]);
    let seq = env.create_sequence(body).await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let leads: Vec<String> = (0..LEADS).map(|i| format!("race{i}@example.com")).collect();
    enroll(&env, "go", &leads).await?;
    eventually(Duration::from_secs(20), "the first sends", || async {
        Ok((smtp.count() >= 20).then_some(()))
    })
    .await?;
    let (status, edited) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(
                json!({"limits": [{"max": 10, "per": "PT1S"}], "priority": 2,
                        "guardrails": {"failures": {"max_failed": 5, "of_last": 10}}}),
            ),
        )
        .await?;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(
        edited["sequence"]["limits"],
        json!([{"max": 10, "per": "PT1S"}])
    );
    assert_eq!(edited["sequence"]["priority"], 2);
    let tightened = std::time::Instant::now();

    let got = smtp.wait_for(LEADS, Duration::from_secs(150)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.count(), LEADS, "nothing doubled");
    let distinct: std::collections::HashSet<String> =
        got.iter().map(|m| m.rcpt_to.join(",")).collect();
    assert_eq!(distinct.len(), LEADS, "nothing lost");
    // Sends checked before the edit may still be on their way for a moment; from 2 s after it
    // returned, no second holds more than 10.
    let mut after: Vec<std::time::Instant> = got
        .iter()
        .map(|m| m.at)
        .filter(|t| t.saturating_duration_since(tightened) >= Duration::from_secs(2))
        .collect();
    after.sort();
    assert!(after.len() > 100, "the tightened limit spread the rest out");
    for (i, start) in after.iter().enumerate() {
        let in_second = after[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(
            in_second <= 10,
            "{in_second} sends in one second after the edit"
        );
    }
    env.stop().await
}
