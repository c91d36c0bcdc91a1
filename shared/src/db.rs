//! PostgreSQL access shared by every role: the pool, migrations, API-key provisioning and the
//! workspace of a key. Owns the connection settings; it never holds business rules.

use sha2::{Digest, Sha256};
use sqlx::{PgPool, postgres::PgPoolOptions};
use std::time::Duration;
use uuid::Uuid;

/// The workspace `PULSE_API_KEY` belongs to.
pub const DEFAULT_WORKSPACE: Uuid = Uuid::from_u128(1);

/// A failure talking to PostgreSQL, or a row that breaks the schema's promises.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// Opens a pool. Connecting is lazy, so a role starts (and reports not ready) while PostgreSQL
/// is down instead of failing.
pub fn pool(database_url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(database_url)?)
}

/// Creates the database named in `database_url` when it does not exist yet.
pub async fn ensure_database(database_url: &str) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateDatabase;
    if !sqlx::Postgres::database_exists(database_url).await? {
        sqlx::Postgres::create_database(database_url).await?;
        tracing::info!("database created");
    }
    Ok(())
}

/// Applies every pending migration in `migrations/`, then brings stored lead addresses to
/// their canonical form ([`canonicalize_leads`]).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("../migrations").run(pool).await?;
    let found = canonicalize_leads(pool).await?;
    if found.rewritten > 0 || !found.duplicates.is_empty() || found.invalid > 0 {
        tracing::warn!(
            rewritten = found.rewritten,
            duplicates = found.duplicates.len(),
            invalid = found.invalid,
            "lead addresses brought to their canonical form"
        );
    }
    for (kept, other) in &found.duplicates {
        tracing::warn!(%kept, %other, "two leads share one canonical address; both are kept, the second under its old address");
    }
    Ok(())
}

/// What [`canonicalize_leads`] found.
#[derive(Debug, Default)]
pub struct Canonicalized {
    /// Leads whose stored address was rewritten to its canonical form.
    pub rewritten: u64,
    /// (the lead that has the canonical address, a lead whose address canonicalizes to it):
    /// left as they are and reported.
    pub duplicates: Vec<(Uuid, Uuid)>,
    /// Stored addresses that no longer pass validation: left as they are.
    pub invalid: u64,
}

/// Rewrites stored addresses that are not in canonical form (only non-ASCII ones can differ:
/// ASCII addresses were always stored lower-cased). Idempotent and cheap once done: it reads
/// only addresses with a non-ASCII character.
pub async fn canonicalize_leads(pool: &PgPool) -> Result<Canonicalized, StoreError> {
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT id, workspace_id, email FROM leads WHERE email ~ '[^\x01-\x7f]' ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?;
    let mut found = Canonicalized::default();
    for (id, workspace, email) in rows {
        let Ok(canonical) = crate::domain::validate::email(&email) else {
            found.invalid += 1;
            continue;
        };
        if canonical == email {
            continue;
        }
        let holder: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM leads WHERE workspace_id = $1 AND email = $2")
                .bind(workspace)
                .bind(&canonical)
                .fetch_optional(pool)
                .await?;
        if let Some(kept) = holder {
            found.duplicates.push((kept, id));
            continue;
        }
        sqlx::query("UPDATE leads SET email = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(&canonical)
            .execute(pool)
            .await?;
        found.rewritten += 1;
    }
    Ok(found)
}

/// The SHA-256 of an API key; only the hash is stored.
pub fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Makes sure `workspace` exists and `key` opens it. Idempotent.
pub async fn provision_key(
    pool: &PgPool,
    workspace: Uuid,
    workspace_name: &str,
    key: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO workspaces (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(workspace)
        .bind(workspace_name)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO api_keys (id, workspace_id, key_sha256, label) VALUES ($1, $2, $3, 'provisioned')
         ON CONFLICT (key_sha256) DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(workspace)
    .bind(key_hash(key))
    .execute(&mut *tx)
    .await?;
    let owner: Uuid = sqlx::query_scalar("SELECT workspace_id FROM api_keys WHERE key_sha256 = $1")
        .bind(key_hash(key))
        .fetch_one(&mut *tx)
        .await?;
    if owner != workspace {
        return Err(StoreError::Corrupt(
            "that API key already belongs to another workspace".into(),
        ));
    }
    tx.commit().await?;
    Ok(())
}

/// The workspace an API key opens and the key's label, if the key exists.
pub async fn workspace_for_key(
    pool: &PgPool,
    key: &str,
) -> Result<Option<(Uuid, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT workspace_id, label FROM api_keys WHERE key_sha256 = $1")
            .bind(key_hash(key))
            .fetch_optional(pool)
            .await?,
    )
}
