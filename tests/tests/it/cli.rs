//! The operator CLI against a running Pulse: long lists say there is more and page on, and an
//! unknown id is an error, not an empty answer.

use pulse::{
    Role,
    cli::{self, Client, Enrollments, Paging, Request, SendsFilter},
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
        paging: Paging {
            limit: Some(2),
            after,
            all,
        },
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
            paging: Paging::default(),
            message_ids: false,
        }),
    )
    .await;
    match unknown {
        Err(f) => assert!(f.code == 1 && f.message.contains("404"), "{}", f.message),
        Ok(out) => panic!("an unknown sequence printed {out:?}"),
    }
    env.stop().await
}

#[tokio::test]
async fn keys_and_workspaces_from_the_command_line() -> anyhow::Result<()> {
    use cli::{Admin, Keys, Workspaces};
    let env = TestEnv::start("cli-keys", &[Role::Api], |s| {
        s.admin_key = Some(pulse_shared::smtp_url::Secret::new("cli-platform-key"));
    })
    .await?;
    let run = |client: Client, request: Request| async move {
        cli::run(&client, request)
            .await
            .map_err(|f| anyhow::anyhow!("exit {}: {}", f.code, f.message))
    };
    let client = |key: &str| Client {
        url: env.base.clone(),
        key: Some(key.to_owned()),
        json: false,
        tz: None,
    };
    let made = run(
        client("cli-platform-key"),
        Request::Admin(Admin::Workspaces(Workspaces::Create {
            name: "Globex".into(),
        })),
    )
    .await?;
    let admin = made.lines().last().unwrap_or_default().to_owned();
    assert!(admin.starts_with("pulse_"), "{made}");
    let listed = run(
        client("cli-platform-key"),
        Request::Admin(Admin::Workspaces(Workspaces::List)),
    )
    .await?;
    assert!(listed.contains("Globex"), "{listed}");

    let made = run(
        client(&admin),
        Request::Keys(Keys::Create {
            label: "board".into(),
            scope: "read".into(),
        }),
    )
    .await?;
    let read = made.lines().last().unwrap_or_default().to_owned();
    assert!(
        read.starts_with("pulse_") && made.contains("board"),
        "{made}"
    );
    let listed = run(client(&admin), Request::Keys(Keys::List)).await?;
    assert!(
        listed.contains("board") && !listed.contains(&read),
        "{listed}"
    );
    // A read key cannot manage keys: the error says which scope it needs.
    let refused = run(client(&read), Request::Keys(Keys::List)).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("admin"), "{message}");
    let id = listed
        .lines()
        .find(|l| l.contains("board"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let revoked = run(client(&admin), Request::Keys(Keys::Revoke { id })).await?;
    assert!(revoked.starts_with("revoked board"), "{revoked}");
    let refused = run(
        client(&read),
        Request::Sequences(cli::Sequences::List {
            paging: Paging::default(),
        }),
    )
    .await;
    assert!(refused.is_err(), "a revoked key opens nothing");
    env.stop().await
}
