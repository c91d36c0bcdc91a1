//! How long the Hub's pages take with a busy workspace behind them (`make bench-hub`): one
//! sequence of eleven steps with 100,000 enrollments and 1,000,000 sends spread over the last
//! seven days (a tenth of the enrollments still waiting on step 11), loaded straight into
//! PostgreSQL. Each page is fetched `--runs` times (default 5) through a signed-in Hub session
//! and its median and slowest times printed next to the sign-in page's, the reference: the same
//! server answering a page that reads nothing. Figures only; nothing here passes or fails on a
//! time. Options: `--enrollments N` (default 100000), `--runs N`, `--json PATH`, `--keep` (leave the
//! database for a look at the plans).

use std::time::{Duration, Instant};

use anyhow::Context;
use pulse::Role;
use pulse_shared::db::DEFAULT_WORKSPACE;
use pulse_tests::{TestEnv, sequence_body};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Steps of the sequence: every enrollment was sent the first ten.
const STEPS: usize = 11;
/// Enrollments loaded per statement.
const CHUNK: i64 = 10_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (mut enrollments, mut runs, mut json_path) = (100_000i64, 5usize, None::<String>);
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--enrollments" => enrollments = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            "--json" => json_path = Some(value()?),
            "--keep" => keep = true,
            other => anyhow::bail!("unknown option {other}; see the module docs"),
        }
    }
    anyhow::ensure!(enrollments > 0 && runs > 0, "counts must be positive");
    let env = TestEnv::start("hubpages", &[Role::Api], |_| {}).await?;
    let steps: Vec<(String, String, Value)> = (1..=STEPS)
        .map(|i| {
            (
                format!("Step {i} for {{{{ lead.first_name | default: \"you\" }}}}"),
                format!("Body {i}"),
                json!({"type": "delay", "delay": "P1D"}),
            )
        })
        .collect();
    let steps: Vec<(&str, &str, Value)> = steps
        .iter()
        .map(|(s, b, t)| (s.as_str(), b.as_str(), t.clone()))
        .collect();
    let seq = env
        .create_sequence(sequence_body("Busy", &steps, "busy"))
        .await?;
    let id: Uuid = seq["id"].as_str().unwrap_or_default().parse()?;
    let step_ids: Vec<Uuid> = seq["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str()?.parse().ok())
        .collect();
    let started = Instant::now();
    load(&env.db, id, &step_ids, enrollments).await?;
    let sends: i64 = sqlx::query_scalar("SELECT count(*) FROM send_ledger")
        .fetch_one(&env.db)
        .await?;
    sqlx::query("ANALYZE").execute(&env.db).await?;
    eprintln!(
        "loaded {enrollments} enrollments and {sends} sends in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let (http, cookie) = sign_in(&env).await?;
    let lead = "hub-000000000007@example.com";
    let pages = [
        ("sign-in page (reference)", "/hub/login".to_owned()),
        ("sequences", "/hub/sequences".to_owned()),
        ("sequence, activity 24 h", format!("/hub/sequences/{id}")),
        (
            "sequence, activity 7 d",
            format!("/hub/sequences/{id}?range=7d"),
        ),
        ("enrollments", format!("/hub/sequences/{id}/enrollments")),
        (
            "enrollments, active",
            format!("/hub/sequences/{id}/enrollments?status=ACTIVE"),
        ),
        ("edit", format!("/hub/sequences/{id}/edit")),
        ("send history", "/hub/sends".to_owned()),
        ("send history, one lead", format!("/hub/sends?lead={lead}")),
    ];
    let mut results = Vec::new();
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "page", "median ms", "max ms", "× ref"
    );
    let mut reference = None;
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let r = http
                .get(format!("{}{path}", env.base))
                .header(header::COOKIE, &cookie)
                .send()
                .await?;
            anyhow::ensure!(r.status() == StatusCode::OK, "{path}: {}", r.status());
            r.bytes().await?;
            times.push(t.elapsed());
        }
        times.sort();
        let (median, max) = (ms(times[times.len() / 2]), ms(times[times.len() - 1]));
        let base = *reference.get_or_insert(median);
        println!(
            "{name:<28} {median:>10.1} {max:>10.1} {:>10.1}",
            median / base.max(1e-3)
        );
        results.push(json!({"page": name, "path": path, "median_ms": median, "max_ms": max}));
    }
    // The edit preview of a re-timing that moves every waiting enrollment (a tenth of them).
    let mut timing = Vec::new();
    for _ in 0..runs {
        let mut steps = seq["steps"].clone();
        steps[STEPS - 1]["timing"] = json!({"type": "delay", "delay": "P2D"});
        let t = Instant::now();
        let (status, body) = env
            .post(
                &format!("/v1/sequences/{id}/edit-preview"),
                json!({"steps": steps}),
            )
            .await?;
        anyhow::ensure!(status == 200, "edit preview: {status} {body}");
        timing.push((t.elapsed(), body["retimed"]["count"].clone()));
    }
    timing.sort_by_key(|t| t.0);
    let median = ms(timing[timing.len() / 2].0);
    println!(
        "{:<28} {median:>10.1} {:>10.1} {:>10.1}   ({} runs re-timed)",
        "edit preview (API)",
        ms(timing[timing.len() - 1].0),
        median / reference.unwrap_or(1.0).max(1e-3),
        timing[0].1
    );
    results.push(json!({"page": "edit preview (API)", "median_ms": median}));
    // The edit itself, once (it changes the data): what the preview costs beside it.
    let mut steps = seq["steps"].clone();
    steps[STEPS - 1]["timing"] = json!({"type": "delay", "delay": "P2D"});
    let t = Instant::now();
    let (status, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{id}"),
            Some(json!({"steps": steps})),
        )
        .await?;
    anyhow::ensure!(status == 200, "edit: {status} {body}");
    let edit = ms(t.elapsed());
    println!(
        "{:<28} {edit:>10.1} {edit:>10.1} {:>10.1}   (once)",
        "the edit itself (API)",
        edit / reference.unwrap_or(1.0).max(1e-3),
    );
    results.push(json!({"page": "the edit itself (API)", "median_ms": edit}));
    if let Some(path) = json_path {
        let doc =
            json!({"enrollments": enrollments, "sends": sends, "runs": runs, "pages": results});
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
    }
    if keep {
        // Leave the server's database for a look at the plans; the process ends here.
        eprintln!("kept: {}", env.settings.database_url);
        std::process::exit(0);
    }
    env.stop().await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Loads `n` leads and enrollments of `seq`, each sent the first ten steps (a tenth still
/// waiting on step 11, the rest completed), with sends spread over the last seven days. Ids grow
/// with the row number so each chunk appends to the indexes.
async fn load(db: &PgPool, seq: Uuid, steps: &[Uuid], n: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let count = CHUNK.min(n - done);
        sqlx::query(
            "WITH r AS (SELECT i, lpad(to_hex(i), 12, '0') AS h FROM generate_series($4, $4 + $5 - 1) i),
             l AS (
                 INSERT INTO leads (id, workspace_id, email, email_given, first_name)
                 SELECT ('e1000000-0000-4000-8000-' || h)::uuid, $1, 'hub-' || h || '@example.com',
                        'hub-' || h || '@example.com', 'Lead ' || i FROM r),
             e AS (
                 INSERT INTO enrollments (id, workspace_id, sequence_id, lead_id, source, status,
                                          ended_at, created_at)
                 SELECT ('e2000000-0000-4000-8000-' || h)::uuid, $1, $2,
                        ('e1000000-0000-4000-8000-' || h)::uuid, 'bench',
                        CASE WHEN i % 10 = 0 THEN 'ACTIVE' ELSE 'COMPLETED' END,
                        CASE WHEN i % 10 = 0 THEN NULL ELSE now() END,
                        now() - interval '7 days' FROM r),
             s AS (SELECT r.i, r.h, p, $3[p] AS step,
                          ('e3000000-0000-4000-8' || lpad(to_hex(p), 3, '0') || '-' || r.h)::uuid AS run,
                          now() - make_interval(secs => ((r.i * 7919 + p * 104729) % 604000)::float8) AS at
                   FROM r CROSS JOIN generate_series(1, 10) p),
             runs AS (
                 INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position,
                                        generation, due_at, state, subject, body, message_id,
                                        queued_at, sent_at, created_at)
                 SELECT run, $1, $2, ('e2000000-0000-4000-8000-' || h)::uuid, step, p, 1, at, 'SENT',
                        'Step ' || p, 'Body', '<' || run || '@example.com>', at, at, at FROM s),
             waiting AS (
                 INSERT INTO step_runs (id, workspace_id, sequence_id, enrollment_id, step_id, position,
                                        generation, due_at)
                 SELECT ('e3000000-0000-4000-8' || lpad(to_hex(11), 3, '0') || '-' || h)::uuid, $1, $2,
                        ('e2000000-0000-4000-8000-' || h)::uuid, $3[11], 11, 1, now() + interval '1 day'
                 FROM r WHERE i % 10 = 0)
             INSERT INTO send_ledger (enrollment_id, step_id, generation, idempotency_key, workspace_id,
                                      sequence_id, lead_id, step_run_id, position, state, message_id,
                                      smtp_code, claimed_at, sent_at, created_at, updated_at)
             SELECT ('e2000000-0000-4000-8000-' || h)::uuid, step, 1,
                    ('e2000000-0000-4000-8000-' || h) || ':' || step || ':1', $1, $2,
                    ('e1000000-0000-4000-8000-' || h)::uuid, run, p, 'SENT',
                    '<' || run || '@example.com>', 250, at, at, at, at
             FROM s",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(seq)
        .bind(steps)
        .bind(done)
        .bind(count)
        .execute(db)
        .await?;
        done += count;
        eprint!(
            "\r  loading: {done}/{n} enrollments ({:.0}/s)   ",
            done as f64 / started.elapsed().as_secs_f64().max(1e-3)
        );
    }
    eprintln!();
    Ok(())
}

/// Signs in to the Hub with the environment's key; returns a client and the session cookie.
async fn sign_in(env: &TestEnv) -> anyhow::Result<(reqwest::Client, String)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let form = http.get(format!("{}/hub/login", env.base)).send().await?;
    let token = cookie(&form, "pulse_hub_login").context("the sign-in cookie")?;
    let resp = http
        .post(format!("{}/hub/login", env.base))
        .header(header::COOKIE, format!("pulse_hub_login={token}"))
        .form(&[
            ("csrf", token.as_str()),
            ("api_key", env.key.as_str()),
            ("next", "/hub/sequences"),
        ])
        .send()
        .await?;
    let session = cookie(&resp, "pulse_hub").context("the session cookie")?;
    Ok((http, format!("pulse_hub={session}")))
}

fn cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}
