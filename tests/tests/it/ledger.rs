//! The ledger protocol and pause flags, driven directly against PostgreSQL and Redis.

use std::time::Duration;

use pulse::Role;
use pulse_shared::{
    ledger::{self, Claim, Reply},
    pause::{Gate, PauseFlags},
};
use pulse_tests::{TestEnv, count, sequence_body};
use serde_json::json;
use uuid::Uuid;

/// A sequence with one enrolled lead; returns (sequence id, step run id, key).
async fn one_run(env: &TestEnv) -> anyhow::Result<(Uuid, Uuid, String)> {
    let seq = env
        .create_sequence(sequence_body(
            "L",
            &[
                ("Hi", "x", json!({"type": "immediately"})),
                ("Again", "y", json!({"type": "delay", "delay": "P1D"})),
            ],
            "t",
        ))
        .await?;
    let seq_id: Uuid = seq["id"].as_str().unwrap_or_default().parse()?;
    let (status, _) = env
        .post(
            &format!("/v1/sequences/{seq_id}/enrollments"),
            json!({"lead": {"email": "ada@example.com"}}),
        )
        .await?;
    assert_eq!(status, 201);
    let (run, enrollment, step, generation): (Uuid, Uuid, Uuid, i32) =
        sqlx::query_as("SELECT id, enrollment_id, step_id, generation FROM step_runs")
            .fetch_one(&env.db)
            .await?;
    Ok((
        seq_id,
        run,
        ledger::idempotency_key(enrollment, step, generation),
    ))
}

const QUEUE_IT: &str = "UPDATE step_runs SET state = 'QUEUED', subject = 's', body = 'b',
    from_addr = 'tests@example.com', to_addr = 'ada@example.com', message_id = '<m@example.com>'
    WHERE id = $1";

const LEASE: Duration = Duration::from_secs(600);

/// Leases for tests that settle stale claims by hand: nothing goes stale on its own.
const LEASES: ledger::Leases = ledger::Leases {
    sending: LEASE,
    unmarked: LEASE,
    owner: Some(Duration::from_secs(3600)),
    answer: Duration::from_secs(35),
    queued: LEASE,
};

/// The worker the tests' claims name (registered, heartbeating, by [`alive`]).
const WORKER: Uuid = Uuid::from_u128(0x5e4d);

async fn alive(db: &sqlx::PgPool) -> Result<(), pulse_shared::db::StoreError> {
    sqlx::query(
        "INSERT INTO workers (id, role, host, pid) VALUES ($1, 'sender', 'test', 0)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(WORKER)
    .execute(db)
    .await?;
    Ok(())
}

/// `ledger::claim` as worker [`WORKER`].
async fn claim(
    db: &sqlx::PgPool,
    run: Uuid,
    key: &str,
) -> Result<Claim, pulse_shared::db::StoreError> {
    alive(db).await?;
    ledger::claim(db, run, key, &LEASES, WORKER).await
}

/// `ledger::claim_many` as worker [`WORKER`].
async fn claim_many(
    db: &sqlx::PgPool,
    batch: &[ledger::ClaimRequest],
) -> Result<Vec<Result<Claim, pulse_shared::db::StoreError>>, pulse_shared::db::StoreError> {
    alive(db).await?;
    ledger::claim_many(db, batch, &LEASES, WORKER).await
}

/// A claim without its id, to compare outcomes.
fn plain(c: Claim) -> Claim {
    match c {
        Claim::Claimed { attempts, .. } => claimed(attempts),
        other => other,
    }
}

fn claimed(attempts: i32) -> Claim {
    Claim::Claimed {
        attempts,
        claim: Uuid::nil(),
    }
}

/// The fence of the claim that holds `key` now.
async fn fence_of(db: &sqlx::PgPool, key: &str) -> anyhow::Result<ledger::Fence> {
    let claim: Uuid =
        sqlx::query_scalar("SELECT claim_id FROM send_ledger WHERE idempotency_key = $1")
            .bind(key)
            .fetch_one(db)
            .await?;
    Ok(ledger::Fence {
        key: key.to_owned(),
        claim,
    })
}

#[tokio::test]
async fn claim_waits_for_the_scheduler_commit() -> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let (_, run, key) = one_run(&env).await?;

    // The scheduler has published and not yet committed QUEUED: the claim must wait, then win.
    let mut scheduler = env.db.begin().await?;
    sqlx::query(QUEUE_IT)
        .bind(run)
        .execute(&mut *scheduler)
        .await?;
    let (db, k) = (env.db.clone(), key.clone());
    let claiming = tokio::spawn(async move { claim(&db, run, &k).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !claiming.is_finished(),
        "the claim must wait for the scheduler's transaction"
    );
    scheduler.commit().await?;
    assert_eq!(plain(claiming.await??), claimed(1));

    // A scheduler that crashed before committing: the claim sees SCHEDULED and takes nothing.
    let (db2, run2) = (env.db.clone(), run);
    sqlx::query("DELETE FROM send_ledger")
        .execute(&env.db)
        .await?;
    sqlx::query("UPDATE step_runs SET state = 'SCHEDULED' WHERE id = $1")
        .bind(run)
        .execute(&env.db)
        .await?;
    let mut crashed = env.db.begin().await?;
    sqlx::query(QUEUE_IT)
        .bind(run)
        .execute(&mut *crashed)
        .await?;
    let claiming = tokio::spawn(async move { claim(&db2, run2, &key).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    crashed.rollback().await?;
    assert_eq!(claiming.await??, Claim::StaleMessage);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM send_ledger")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(rows, 0);
    env.stop().await
}

#[tokio::test]
async fn hold_waits_for_the_scheduler_commit() -> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let (_, run, _) = one_run(&env).await?;
    // A paused (or rate-limited) sequence's message arrives before the scheduler committed
    // QUEUED: the hold must wait and then put the run back to SCHEDULED, not leave it QUEUED.
    let mut scheduler = env.db.begin().await?;
    sqlx::query(QUEUE_IT)
        .bind(run)
        .execute(&mut *scheduler)
        .await?;
    let db = env.db.clone();
    let later = chrono::Utc::now() + chrono::Duration::minutes(5);
    let hold = tokio::spawn(async move { ledger::hold(&db, run, Some(later)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !hold.is_finished(),
        "the hold must wait for the scheduler's transaction"
    );
    scheduler.commit().await?;
    hold.await??;
    let (state, due): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT state, due_at FROM step_runs WHERE id = $1")
            .bind(run)
            .fetch_one(&env.db)
            .await?;
    assert_eq!(state, "SCHEDULED");
    assert!((due - later).num_milliseconds().abs() < 5);
    env.stop().await
}

#[tokio::test]
async fn a_key_is_claimed_once_and_settles() -> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let (_, run, key) = one_run(&env).await?;
    sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;

    // Many workers race for the same key: exactly one wins.
    let mut racers = Vec::new();
    for _ in 0..16 {
        let (db, k) = (env.db.clone(), key.clone());
        racers.push(tokio::spawn(async move { claim(&db, run, &k).await }));
    }
    let mut won = 0;
    for r in racers {
        match r.await?? {
            Claim::Claimed { .. } => won += 1,
            Claim::InFlight => {}
            other => anyhow::bail!("unexpected claim outcome {other:?}"),
        }
    }
    assert_eq!(won, 1);

    let reply = Reply {
        code: Some(250),
        text: "ok".into(),
    };
    let fence = fence_of(&env.db, &key).await?;
    let settled =
        ledger::record_sent(&env.db, &fence, run, &reply, chrono::Utc::now(), None).await?;
    assert_eq!(settled, ledger::Settled::Recorded);
    assert_eq!(
        claim(&env.db, run, &key).await?,
        Claim::Settled {
            state: pulse_shared::state::LedgerState::Sent
        }
    );
    // Even if the step run looked QUEUED again (a redelivery), the key stays settled.
    sqlx::query("UPDATE step_runs SET state = 'QUEUED' WHERE id = $1")
        .bind(run)
        .execute(&env.db)
        .await?;
    assert_eq!(
        claim(&env.db, run, &key).await?,
        Claim::Settled {
            state: pulse_shared::state::LedgerState::Sent
        }
    );
    // Recording the send scheduled step 2, once.
    let next: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM step_runs WHERE position = 2 AND state = 'SCHEDULED'",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(next, 1);
    env.stop().await
}

#[tokio::test]
async fn a_stale_claim_goes_back_or_becomes_unknown_and_a_deferred_one_is_retaken()
-> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let (_, run, key) = one_run(&env).await?;
    sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;
    assert_eq!(plain(claim(&env.db, run, &key).await?), claimed(1));

    // A transient failure: DEFERRED, step run due again later; the next claim takes it over.
    let reply = Reply {
        code: Some(451),
        text: "try later".into(),
    };
    let fence = fence_of(&env.db, &key).await?;
    let settled = ledger::record_deferred(&env.db, &fence, run, &reply, chrono::Utc::now()).await?;
    assert_eq!(settled, ledger::Settled::Recorded);
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM step_runs WHERE id = $1")
            .bind(run)
            .fetch_one(&env.db)
            .await?;
    assert_eq!((state.as_str(), attempts), ("SCHEDULED", 1));
    sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;
    assert_eq!(plain(claim(&env.db, run, &key).await?), claimed(2));

    // A claim of an earlier version (made before connecting, so with no wire mark) whose worker
    // stalled: after the lease it is given back (DEFERRED as before it, this non-attempt not
    // counted) and its step is due again.
    sqlx::query("UPDATE send_ledger SET claimed_at = now() - interval '1 hour', wire_at = NULL")
        .execute(&env.db)
        .await?;
    assert_eq!(claim(&env.db, run, &key).await?, Claim::StaleMessage);
    let (ledger_state, attempts, run_state): (String, i32, String) = sqlx::query_as(
        "SELECT l.state, l.attempts, r.state FROM send_ledger l
         JOIN step_runs r ON r.id = l.step_run_id",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(
        (ledger_state.as_str(), attempts, run_state.as_str()),
        ("DEFERRED", 1, "SCHEDULED")
    );

    // The worker dies mid-send: its claim (made at the gate, so on the wire) becomes UNKNOWN
    // after the lease, never resent.
    sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;
    assert_eq!(plain(claim(&env.db, run, &key).await?), claimed(2));
    sqlx::query("UPDATE send_ledger SET claimed_at = now() - interval '1 hour'")
        .execute(&env.db)
        .await?;
    assert_eq!(claim(&env.db, run, &key).await?, Claim::BecameUnknown);
    let (ledger_state, run_state): (String, String) = sqlx::query_as(
        "SELECT l.state, r.state FROM send_ledger l JOIN step_runs r ON r.id = l.step_run_id",
    )
    .fetch_one(&env.db)
    .await?;
    assert_eq!(
        (ledger_state.as_str(), run_state.as_str()),
        ("UNKNOWN", "UNKNOWN")
    );
    sqlx::query("UPDATE step_runs SET state = 'QUEUED' WHERE id = $1")
        .bind(run)
        .execute(&env.db)
        .await?;
    assert_eq!(
        claim(&env.db, run, &key).await?,
        Claim::Settled {
            state: pulse_shared::state::LedgerState::Unknown
        }
    );
    env.stop().await
}

#[tokio::test]
async fn pause_flags_fail_closed_when_redis_loses_them() -> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let (seq, _, _) = one_run(&env).await?;
    let flags = PauseFlags::connect(
        &env.settings.redis_url,
        &env.settings.redis_prefix,
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(flags.gate(&env.db, seq).await?, Gate::Open);

    // The writer's order: PostgreSQL first, then the flag.
    sqlx::query("UPDATE sequences SET status = 'PAUSED' WHERE id = $1")
        .bind(seq)
        .execute(&env.db)
        .await?;
    flags
        .set(seq, pulse_shared::state::SequenceStatus::Paused)
        .await?;
    assert_eq!(flags.gate(&env.db, seq).await?, Gate::Paused);

    // Redis restarts empty: the flag is gone, and the gate must still say paused.
    let client = redis::Client::open(env.settings.redis_url.as_str())?;
    let mut r = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", env.settings.redis_prefix))
        .query_async(&mut r)
        .await?;
    assert!(!keys.is_empty());
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<()>(&mut r)
        .await?;
    assert_eq!(flags.gate(&env.db, seq).await?, Gate::Paused);

    // A refill never overwrites a newer writer: resume lands first, the refill's SET NX loses.
    sqlx::query("UPDATE sequences SET status = 'ACTIVE' WHERE id = $1")
        .bind(seq)
        .execute(&env.db)
        .await?;
    flags
        .set(seq, pulse_shared::state::SequenceStatus::Active)
        .await?;
    assert_eq!(flags.gate(&env.db, seq).await?, Gate::Open);
    // A resume whose flag write failed (Redis was restarting) leaves a stale PAUSED flag:
    // PostgreSQL wins, and the stale flag is removed rather than holding sends for its lifetime.
    flags
        .set(seq, pulse_shared::state::SequenceStatus::Paused)
        .await?;
    assert_eq!(
        flags.gate(&env.db, seq).await?,
        Gate::Open,
        "PostgreSQL says ACTIVE"
    );
    let left: Option<String> = redis::cmd("GET")
        .arg(format!(
            "{}:sequence:{seq}:status",
            env.settings.redis_prefix
        ))
        .query_async(&mut r)
        .await?;
    assert_eq!(left, None, "the stale flag is gone");
    assert_eq!(flags.gate(&env.db, seq).await?, Gate::Open);
    sqlx::query("UPDATE sequences SET status = 'DELETED' WHERE id = $1")
        .bind(seq)
        .execute(&env.db)
        .await?;
    flags
        .set(seq, pulse_shared::state::SequenceStatus::Deleted)
        .await?;
    assert_eq!(flags.gate(&env.db, seq).await?, Gate::Closed);
    assert_eq!(
        flags.gate(&env.db, Uuid::new_v4()).await?,
        Gate::Closed,
        "unknown sequence"
    );
    env.stop().await
}

#[tokio::test]
async fn recording_a_send_follows_an_edit_made_while_it_was_in_flight() -> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Edit",
            &[
                ("A", "a", json!({"type": "immediately"})),
                ("B", "b", json!({"type": "immediately"})),
                ("C", "c", json!({"type": "delay", "delay": "P1D"})),
            ],
            "t",
        ))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let steps = seq["steps"].as_array().cloned().unwrap_or_default();
    let reply = Reply {
        code: Some(250),
        text: "ok".into(),
    };
    let next_after_first = |lead: &'static str| {
        let db = env.db.clone();
        async move {
            let row: (i32, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
                "SELECT sr.position, sr.state, sr.due_at FROM step_runs sr
                 JOIN enrollments e ON e.id = sr.enrollment_id JOIN leads l ON l.id = e.lead_id
                 WHERE l.email = $1 AND sr.position > 1",
            )
            .bind(lead)
            .fetch_one(&db)
            .await?;
            anyhow::Ok(row)
        }
    };
    for lead in ["fast@example.com", "edited@example.com"] {
        env.post(
            &format!("/v1/sequences/{sid}/enrollments"),
            json!({"lead": {"email": lead}}),
        )
        .await?;
    }
    let runs: Vec<(Uuid, Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT sr.id, sr.enrollment_id, sr.step_id, l.email FROM step_runs sr
         JOIN enrollments e ON e.id = sr.enrollment_id JOIN leads l ON l.id = e.lead_id ORDER BY l.email",
    )
    .fetch_all(&env.db)
    .await?;
    let mut snaps = Vec::new();
    for (run, enrollment, step, _) in &runs {
        sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;
        let key = ledger::idempotency_key(*enrollment, *step, 1);
        assert_eq!(plain(claim(&env.db, *run, &key).await?), claimed(1));
        snaps.push((*run, key, ledger::snapshot(&env.db, *run).await?));
    }
    // runs are ordered edited@, fast@.
    let (run, key, snap) = &snaps[1];
    let fence = fence_of(&env.db, key).await?;
    let _recorded = ledger::record_sent(
        &env.db,
        &fence,
        *run,
        &reply,
        chrono::Utc::now(),
        Some(&snap.followup),
    )
    .await?;
    let (position, state, due) = next_after_first("fast@example.com").await?;
    assert_eq!(
        (position, state.as_str()),
        (2, "SCHEDULED"),
        "unchanged sequence: B, at once"
    );
    assert!(due <= chrono::Utc::now());

    // While the other send is in flight, step B is deleted: recording must not schedule it.
    let keep = |s: &serde_json::Value| json!({"id": s["id"], "subject": s["subject"], "body": s["body"], "timing": s["timing"]});
    let (status, _) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(
                json!({"steps": [keep(&steps[0]), keep(&steps[2])], "delete_missing_steps": true}),
            ),
        )
        .await?;
    assert_eq!(status, 200);
    let (run, key, snap) = &snaps[0];
    let fence = fence_of(&env.db, key).await?;
    let _recorded = ledger::record_sent(
        &env.db,
        &fence,
        *run,
        &reply,
        chrono::Utc::now(),
        Some(&snap.followup),
    )
    .await?;
    let (position, state, due) = next_after_first("edited@example.com").await?;
    assert_eq!(
        (position, state.as_str()),
        (2, "SCHEDULED"),
        "C, now at position 2"
    );
    assert!(
        due > chrono::Utc::now() + chrono::Duration::hours(23),
        "timed as C (a day), not B"
    );
    env.stop().await
}

#[tokio::test]
async fn batched_claims_snapshots_and_records_answer_like_single_ones() -> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let seq = env
        .create_sequence(sequence_body(
            "Batch",
            &[
                ("A", "a", json!({"type": "immediately"})),
                ("B", "b", json!({"type": "delay", "delay": "P1D"})),
            ],
            "t",
        ))
        .await?;
    let sid = seq["id"].as_str().unwrap_or_default().to_owned();
    let steps = seq["steps"].as_array().cloned().unwrap_or_default();
    let leads = ["a", "b", "c", "d", "e"];
    for lead in leads {
        let (status, _) = env
            .post(
                &format!("/v1/sequences/{sid}/enrollments"),
                json!({"lead": {"email": format!("{lead}@example.com")}}),
            )
            .await?;
        assert_eq!(status, 201);
    }
    let runs: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "SELECT sr.id, sr.enrollment_id, sr.step_id FROM step_runs sr
         JOIN enrollments e ON e.id = sr.enrollment_id JOIN leads l ON l.id = e.lead_id
         ORDER BY l.email",
    )
    .fetch_all(&env.db)
    .await?;
    let req = |i: usize| ledger::ClaimRequest {
        step_run: runs[i].0,
        key: ledger::idempotency_key(runs[i].1, runs[i].2, 1),
    };
    for (run, ..) in &runs[..3] {
        sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;
    }

    // a, b, a again (a redelivery in the same batch), c, and d (not queued).
    let claims = claim_many(&env.db, &[req(0), req(1), req(0), req(2), req(3)])
        .await?
        .into_iter()
        .map(|c| c.map(plain))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(
        claims,
        [
            claimed(1),
            claimed(1),
            Claim::InFlight,
            claimed(1),
            Claim::StaleMessage,
        ]
    );

    // d's message outran the scheduler's commit: the batch waits for it, then claims it.
    sqlx::query(QUEUE_IT)
        .bind(runs[4].0)
        .execute(&env.db)
        .await?;
    let mut scheduler = env.db.begin().await?;
    sqlx::query(QUEUE_IT)
        .bind(runs[3].0)
        .execute(&mut *scheduler)
        .await?;
    let (db, batch) = (env.db.clone(), [req(3), req(4)]);
    let claim = tokio::spawn(async move { claim_many(&db, &batch).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!claim.is_finished(), "the batch must wait for the commit");
    scheduler.commit().await?;
    for c in claim.await?? {
        assert_eq!(plain(c?), claimed(1));
    }

    // Snapshots come back in the order asked, and a missing run is an error of its own.
    sqlx::query(
        "UPDATE step_runs sr SET to_addr = l.email FROM enrollments e JOIN leads l ON l.id = e.lead_id
         WHERE e.id = sr.enrollment_id",
    )
    .execute(&env.db)
    .await?;
    let ids: Vec<Uuid> = runs
        .iter()
        .rev()
        .map(|r| r.0)
        .chain([Uuid::new_v4()])
        .collect();
    let mut snaps = ledger::snapshot_many(&env.db, &ids).await?;
    for (snap, lead) in snaps.iter().zip(leads.iter().rev()) {
        let snap = snap.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(snap.to_addr, format!("{lead}@example.com"));
        assert!(snap.followup.next.is_some());
    }
    assert!(snaps.pop().is_some_and(|s| s.is_err()));
    snaps.reverse();
    let snaps: Vec<_> = snaps.into_iter().collect::<Result<_, _>>()?;

    // Step B's delay is edited after a..d were snapshotted; e is snapshotted after the edit.
    let keep = |s: &serde_json::Value| json!({"id": s["id"], "subject": s["subject"], "body": s["body"], "timing": s["timing"]});
    let mut b = keep(&steps[1]);
    b["timing"] = json!({"type": "delay", "delay": "P3D"});
    let (status, _) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/sequences/{sid}"),
            Some(json!({"steps": [keep(&steps[0]), b]})),
        )
        .await?;
    assert_eq!(status, 200);
    let fresh_e = ledger::snapshot(&env.db, runs[4].0).await?;
    let now = chrono::Utc::now();
    let mut fences = Vec::new();
    for i in 0..5 {
        fences.push(fence_of(&env.db, &req(i).key).await?);
    }
    let records: Vec<_> = (0..5)
        .map(|i| ledger::SentRecord {
            fence: fences[i].clone(),
            step_run: runs[i].0,
            reply: Reply {
                code: Some(250),
                text: "ok".into(),
            },
            at: now,
            followup: if i == 4 {
                fresh_e.followup.clone()
            } else {
                snaps[i].followup.clone()
            },
        })
        .collect();
    for r in ledger::record_sent_many(&env.db, &records).await? {
        assert_eq!(r?, ledger::Settled::Recorded);
    }
    // Every send is SENT, and each lead's step B is scheduled once, timed by the edit (3 days)
    // whether it went through the one-statement path (e) or the recomputing one (a..d).
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM send_ledger WHERE state = 'SENT'")
        .fetch_one(&env.db)
        .await?;
    assert_eq!(sent, 5);
    let next: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT sr.state, sr.due_at FROM step_runs sr WHERE sr.position = 2 ORDER BY sr.due_at",
    )
    .fetch_all(&env.db)
    .await?;
    assert_eq!(next.len(), 5);
    for (state, due) in next {
        assert_eq!(state, "SCHEDULED");
        assert!(
            due > now + chrono::Duration::days(2),
            "due {due}: not timed by the edit"
        );
    }
    env.stop().await
}

#[tokio::test]
async fn a_late_writer_after_a_lease_expiry_changes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    let (_, run, key) = one_run(&env).await?;
    let workspace = pulse_shared::db::DEFAULT_WORKSPACE;
    sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;
    let Claim::Claimed { claim: first, .. } = claim(&env.db, run, &key).await? else {
        anyhow::bail!("the first worker must claim");
    };
    let late = ledger::Fence {
        key: key.clone(),
        claim: first,
    };
    // The first worker stalls past the lease: its claim becomes UNKNOWN, an operator resends,
    // and a second worker claims the key again.
    sqlx::query("UPDATE send_ledger SET claimed_at = now() - interval '1 hour'")
        .execute(&env.db)
        .await?;
    // Its claim was made at the gate: the relay may have the message.
    let swept = ledger::sweep(&env.db, &LEASES).await?;
    assert_eq!(swept.unknown, 1);
    let resolved = ledger::resolve(
        &env.db,
        workspace,
        &key,
        ledger::Resolution::Resend,
        "operator: resend",
    )
    .await?;
    assert!(resolved.is_some());
    sqlx::query(QUEUE_IT).bind(run).execute(&env.db).await?;
    let Claim::Claimed {
        claim: second,
        attempts: 2,
    } = claim(&env.db, run, &key).await?
    else {
        anyhow::bail!("the second worker must claim");
    };
    assert_ne!(first, second);
    let state = || async {
        let row: (String, Option<Uuid>, String) = sqlx::query_as(
            "SELECT sl.state, sl.claim_id, sr.state FROM send_ledger sl
             JOIN step_runs sr ON sr.id = sl.step_run_id WHERE sl.idempotency_key = $1",
        )
        .bind(&key)
        .fetch_one(&env.db)
        .await?;
        anyhow::Ok(row)
    };
    let before = state().await?;
    assert_eq!(
        before,
        ("SENDING".to_owned(), Some(second), "QUEUED".to_owned())
    );

    // Every write the late first worker could make is refused, and changes nothing.
    let reply = Reply {
        code: Some(250),
        text: "late".into(),
    };
    let now = chrono::Utc::now();
    use ledger::Settled::ClaimLost;
    assert_eq!(
        ledger::record_sent(&env.db, &late, run, &reply, now, None).await?,
        ClaimLost
    );
    let snap = ledger::snapshot(&env.db, run).await?;
    assert_eq!(
        ledger::record_sent(&env.db, &late, run, &reply, now, Some(&snap.followup)).await?,
        ClaimLost
    );
    assert_eq!(
        ledger::record_deferred(&env.db, &late, run, &reply, now).await?,
        ClaimLost
    );
    assert_eq!(
        ledger::record_failed(&env.db, &late, run, &reply).await?,
        ClaimLost
    );
    assert_eq!(
        ledger::record_unknown(&env.db, &late, run, &reply).await?,
        ClaimLost
    );
    assert_eq!(
        ledger::release(&env.db, &late, run, ledger::Release::Cancel, "late").await?,
        ClaimLost
    );
    assert_eq!(ledger::unclaim(&env.db, &late).await?, ClaimLost);
    assert_eq!(state().await?, before, "the late writer changed nothing");
    assert_eq!(
        count(
            &env.db,
            "SELECT count(*) FROM step_runs WHERE state = 'SCHEDULED'"
        )
        .await?,
        0,
        "no next step was scheduled by the late writer"
    );

    // The owner's record applies.
    let owner = ledger::Fence {
        key: key.clone(),
        claim: second,
    };
    assert_eq!(
        ledger::record_sent(&env.db, &owner, run, &reply, now, Some(&snap.followup)).await?,
        ledger::Settled::Recorded
    );
    assert_eq!(state().await?.0, "SENT");
    env.stop().await
}

/// The typed states (`pulse_shared::state`) and the CHECK constraints of their columns list the
/// same names: a state added on one side only fails here, not in production.
#[tokio::test]
async fn the_state_types_and_the_database_accept_the_same_states() -> anyhow::Result<()> {
    use pulse_shared::state::{EnrollmentStatus, LedgerState, SequenceStatus, StepRunState};
    fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<String> {
        let mut v: Vec<String> = all.iter().map(|s| name(*s).to_owned()).collect();
        v.sort();
        v
    }
    let env = TestEnv::start("ledger", &[Role::Api], |_| {}).await?;
    for (table, column, typed) in [
        (
            "sequences",
            "status",
            names(SequenceStatus::ALL, SequenceStatus::as_str),
        ),
        (
            "enrollments",
            "status",
            names(EnrollmentStatus::ALL, EnrollmentStatus::as_str),
        ),
        (
            "step_runs",
            "state",
            names(StepRunState::ALL, StepRunState::as_str),
        ),
        (
            "send_ledger",
            "state",
            names(LedgerState::ALL, LedgerState::as_str),
        ),
    ] {
        let def: String = sqlx::query_scalar(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
             JOIN pg_class t ON t.oid = c.conrelid
             WHERE t.relname = $1 AND c.contype = 'c'
               AND pg_get_constraintdef(c.oid) LIKE '%(' || $2 || ' = ANY%'",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&env.db)
        .await?;
        let mut in_db: Vec<String> = def
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        in_db.sort();
        assert_eq!(in_db, typed, "{table}.{column}: {def}");
    }
    env.stop().await
}
