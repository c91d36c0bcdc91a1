//! Step-level edits (`/v1/sequences/{id}/steps…`): one step changed, added, deleted or moved
//! without sending the whole list, on an idle sequence and while hundreds of leads are in
//! flight.

use std::{collections::HashMap, time::Duration};

use pulse::Role;
use pulse_tests::{SmtpServer, TestEnv, count, eventually, sequence_body};
use reqwest::Method;
use serde_json::{Value, json};

fn ids(seq: &Value) -> Vec<String> {
    seq["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}

fn subjects(seq: &Value) -> Vec<String> {
    seq["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["subject"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn one_step_is_changed_added_moved_or_deleted_and_bad_requests_say_why() -> anyhow::Result<()>
{
    let env = TestEnv::start("steps", &[Role::Api], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Steps",
            &[
                ("A", "a", json!({"type": "immediately"})),
                ("B", "b", json!({"type": "delay", "delay": "P1D"})),
                ("C", "c", json!({"type": "delay", "delay": "P2D"})),
            ],
            "t",
        ))
        .await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    let [a, b, c] = &ids(&seq)[..] else {
        anyhow::bail!("three steps expected: {seq}");
    };
    let base = format!("/v1/sequences/{id}/steps");

    // Change one step's subject and timing; the others stay as they were.
    let (status, body) = env
        .call(
            Method::PATCH,
            &format!("{base}/{b}"),
            Some(json!({"subject": "B2", "timing": {"type": "delay", "delay": "PT12H"}})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let after = &body["sequence"];
    assert_eq!(subjects(after), ["A", "B2", "C"]);
    assert_eq!(after["steps"][1]["timing"]["delay"], "PT12H");
    assert_eq!(after["steps"][0]["body"], "a");
    assert_eq!(after["steps"][2]["timing"]["delay"], "P2D");
    assert_eq!(
        ids(after),
        [a.clone(), b.clone(), c.clone()],
        "same steps, same ids"
    );

    // Add one in front.
    let (status, body) = env
        .post(
            &base,
            json!({"subject": "Z", "body": "z", "timing": {"type": "immediately"}, "position": 1}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(subjects(&body["sequence"]), ["Z", "A", "B2", "C"]);
    let z = ids(&body["sequence"])[0].clone();

    // Move them: every live step, once.
    let (status, body) = env
        .post(&format!("{base}/order"), json!({"step_ids": [c, b, a, z]}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(subjects(&body["sequence"]), ["C", "B2", "A", "Z"]);

    // Delete one: named in the answer, gone from the list, a second time 404.
    let (status, body) = env
        .call(Method::DELETE, &format!("{base}/{z}"), None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(subjects(&body["sequence"]), ["C", "B2", "A"]);
    assert!(
        body["warnings"].to_string().contains("deleted step"),
        "{body}"
    );
    let (status, _) = env
        .call(Method::DELETE, &format!("{base}/{z}"), None)
        .await?;
    assert_eq!(status, 404);

    // Bad requests say what is wrong, and change nothing.
    let version = body["sequence"]["version"].clone();
    let unknown = uuid::Uuid::new_v4();
    let cases = [
        (
            Method::PATCH,
            format!("{base}/{unknown}"),
            Some(json!({"subject": "x"})),
            404,
            None,
        ),
        (
            Method::PATCH,
            format!("{base}/{a}"),
            Some(json!({"colour": "red"})),
            400,
            None,
        ),
        (
            Method::PATCH,
            format!("{base}/{a}"),
            Some(json!({"subject": "{{ lead.nope }}"})),
            422,
            None,
        ),
        (
            Method::POST,
            base.clone(),
            Some(json!({"id": a, "subject": "x", "timing": {"type": "immediately"}})),
            422,
            Some("id"),
        ),
        (
            Method::POST,
            base.clone(),
            Some(json!({"subject": "x", "timing": {"type": "immediately"}, "position": 0})),
            422,
            Some("position"),
        ),
        (
            Method::POST,
            format!("{base}/order"),
            Some(json!({"step_ids": [a, b]})),
            409,
            None,
        ),
        (
            Method::POST,
            format!("{base}/order"),
            Some(json!({"step_ids": [a, a, b, c]})),
            422,
            Some("step_ids[1]"),
        ),
        (
            Method::POST,
            format!("{base}/order"),
            Some(json!({"step_ids": [a, b, c, unknown]})),
            409,
            None,
        ),
    ];
    for (method, path, body, want, field) in cases {
        let (status, answer) = env.call(method.clone(), &path, body.clone()).await?;
        assert_eq!(status, want, "{method} {path} {body:?}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{answer}");
        }
    }
    let (_, now) = env.get(&format!("/v1/sequences/{id}")).await?;
    assert_eq!(now["version"], version, "refused requests changed nothing");
    // A position past the end puts the step last.
    let (status, added) = env
        .post(
            &base,
            json!({"subject": "last", "timing": {"type": "immediately"}, "position": 99}),
        )
        .await?;
    assert_eq!(status, 201, "{added}");
    let steps = added["sequence"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        steps.last().map(|s| s["subject"].clone()),
        Some(json!("last")),
        "{added}"
    );
    env.stop().await
}

/// While 300 leads go through a sequence: one step's content changed, a step added at the end
/// and another deleted, each by its own call. Every lead gets every live step exactly once, in
/// order, none gets the deleted one, and every enrollment completes.
#[tokio::test]
async fn step_edits_under_traffic_never_send_twice_skip_a_step_or_stall_an_enrollment()
-> anyhow::Result<()> {
    const LEADS: usize = 300;
    let smtp = SmtpServer::start().await?;
    smtp.delay_data_reply(Duration::from_millis(60));
    let url = smtp.url();
    let env = TestEnv::start(
        "steps",
        &[Role::Api, Role::Ingest, Role::Scheduler, Role::Sender],
        |s| s.smtp_url = Some(url),
    )
    .await?;
    let seq = env
        .create_sequence(sequence_body(
            "Traffic",
            &[
                ("A", "a", json!({"type": "immediately"})),
                ("B", "b", json!({"type": "delay", "delay": "PT3S"})),
                ("C", "c", json!({"type": "delay", "delay": "PT1S"})),
            ],
            "t",
        ))
        .await?;
    let id = seq["id"].as_str().unwrap_or_default().to_owned();
    let [_, b, c] = &ids(&seq)[..] else {
        anyhow::bail!("three steps expected: {seq}");
    };
    let events: Vec<Value> = (0..LEADS)
        .map(|i| {
            json!({"id": format!("s-{i}"), "type": "tag_applied", "tag": "t",
                        "lead": {"email": format!("s{i}@example.com")}})
        })
        .collect();
    let (status, _) = env.post("/v1/events", json!({ "events": events })).await?;
    assert_eq!(status, 200);
    smtp.wait_for(40, Duration::from_secs(20)).await?;
    let a_at_edit = smtp.received().len();

    let base = format!("/v1/sequences/{id}/steps");
    let (status, body) = env
        .call(
            Method::PATCH,
            &format!("{base}/{b}"),
            Some(json!({"subject": "B2"})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env
        .post(
            &base,
            json!({"subject": "D", "body": "d", "timing": {"type": "delay", "delay": "PT1S"}}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = env
        .call(Method::DELETE, &format!("{base}/{c}"), None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        a_at_edit < LEADS,
        "the edits must land while A is still going out ({a_at_edit} sent)"
    );

    eventually(
        Duration::from_secs(90),
        "every enrollment completed",
        || async {
            let done = count(
                &env.db,
                "SELECT count(*) FROM enrollments WHERE status = 'COMPLETED'",
            )
            .await?;
            Ok((done == LEADS as i64).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for m in smtp.received() {
        got.entry(m.rcpt_to.join(","))
            .or_default()
            .push(m.subject.unwrap_or_default());
    }
    assert_eq!(got.len(), LEADS);
    for (lead, subjects) in got {
        // B went out with the content of the moment it was queued: the old or the new.
        let b = subjects.iter().filter(|s| *s == "B" || *s == "B2").count();
        assert!(
            subjects.len() == 3 && subjects[0] == "A" && b == 1 && subjects[2] == "D",
            "{lead} got {subjects:?}"
        );
    }
    env.stop().await
}
