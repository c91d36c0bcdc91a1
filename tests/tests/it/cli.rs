//! The operator CLI against a running Pulse: long lists say there is more and page on, and an
//! unknown id is an error, not an empty answer.

use pulse::{
    Role,
    cli::{self, Client, Enrollments, Request, SendsFilter},
};
use pulse_tests::{TestEnv, sequence_body};
use serde_json::{Value, json};

#[tokio::test]
async fn lists_say_when_there_is_more_and_an_unknown_sequence_is_an_error() -> anyhow::Result<()> {
    let env = TestEnv::start("cli", &[Role::Api, Role::Ingest], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Paged",
            &[("Hi", "B", json!({"type": "delay", "delay": "P1D"}))],
            "go",
        ))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let events: Vec<Value> = (0..3)
        .map(|i| {
            json!({"id": format!("e{i}"), "type": "tag_applied", "tag": "go",
                        "lead": {"email": format!("lead{i}@example.com")}})
        })
        .collect();
    env.post("/v1/events", json!({"events": events})).await?;
    let client = Client {
        url: env.base.clone(),
        key: Some(env.key.clone()),
        json: false,
        tz: None,
    };
    let pages = |after: Option<String>, all: bool| Enrollments::List {
        sequence: sid.clone(),
        status: None,
        step: None,
        lead: None,
        limit: Some(2),
        after,
        all,
    };
    let list = |after: Option<String>| pages(after, false);
    let first = cli::run(&client, Request::Enrollments(list(None)))
        .await
        .map_err(|f| anyhow::anyhow!(f.message))?;
    let next = first
        .lines()
        .find_map(|l| l.strip_prefix("more: --after "))
        .map(str::to_owned);
    assert!(next.is_some(), "{first}");
    assert!(
        first.contains("GEN") && first.contains("ENDED BECAUSE"),
        "{first}"
    );
    let second = cli::run(&client, Request::Enrollments(list(next)))
        .await
        .map_err(|f| anyhow::anyhow!(f.message))?;
    assert!(!second.contains("more:"), "{second}");
    let leads = |out: &str| out.matches("@example.com").count();
    assert_eq!(leads(&first) + leads(&second), 3);
    // --all follows every page: all three, in pages of two, and no "more".
    let every = cli::run(&client, Request::Enrollments(pages(None, true)))
        .await
        .map_err(|f| anyhow::anyhow!(f.message))?;
    assert_eq!(leads(&every), 3, "{every}");
    assert!(!every.contains("more:"), "{every}");

    let unknown = cli::run(
        &client,
        Request::Sends(SendsFilter {
            sequence: Some(uuid::Uuid::new_v4().to_string()),
            lead: None,
            state: None,
            since: None,
            until: None,
            limit: None,
            after: None,
            message_ids: false,
            all: false,
        }),
    )
    .await;
    match unknown {
        Err(f) => assert!(f.code == 1 && f.message.contains("404"), "{}", f.message),
        Ok(out) => panic!("an unknown sequence printed {out:?}"),
    }
    env.stop().await
}
