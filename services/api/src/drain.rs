//! What a control action waits for before it answers: the sends claimed before it took effect
//! (pause, cancel, delete, a deleted step, a suppression). Owns the wait and the warning when a
//! send is still with the mail server at the end; it changes nothing.

use std::time::Duration;

use pulse_shared::http::ApiError;
use sqlx::PgPool;
use uuid::Uuid;

/// Which in-flight sends to wait for.
pub(crate) enum Scope {
    Sequence(Uuid),
    Enrollment(Uuid),
    /// Some steps of one sequence.
    Steps(Uuid, Vec<Uuid>),
    /// Every send to these leads.
    Leads(Vec<Uuid>),
}

/// Waits until no recent SENDING claim remains in `scope`, for at most `timeout`. Returns how
/// many were still in flight at the end (claims older than `timeout` belong to dead workers and
/// are not waited for). `claimed_at` is when the claim row was written (`clock_timestamp()`),
/// after any lock wait of the claim, so a claim that waited behind this action is counted.
pub(crate) async fn wait_in_flight(
    db: &PgPool,
    scope: Scope,
    timeout: Duration,
) -> Result<i64, ApiError> {
    let (filter, one, many) = match scope {
        Scope::Sequence(id) => ("sequence_id = $1", Some(id), Vec::new()),
        Scope::Enrollment(id) => ("enrollment_id = $1", Some(id), Vec::new()),
        Scope::Steps(sequence, ids) => (
            "sequence_id = $1 AND step_id = ANY($2)",
            Some(sequence),
            ids,
        ),
        // Through the partial index of SENDING claims (few at any time), whatever the sequence.
        Scope::Leads(ids) => ("$1::uuid IS NULL AND lead_id = ANY($2)", None, ids),
    };
    let sql = format!(
        "SELECT count(*) FROM send_ledger WHERE {filter} AND state = 'SENDING'
           AND claimed_at > now() - make_interval(secs => $3)"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(one)
            .bind(&many)
            .bind(timeout.as_secs_f64())
            .fetch_one(db)
            .await?;
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) fn in_flight_warning(n: i64, timeout: Duration) -> Option<String> {
    (n > 0).then(|| {
        format!(
            "{n} send(s) claimed before this call were still waiting for the mail server after \
             {}s; check the send history for their outcome",
            timeout.as_secs()
        )
    })
}
