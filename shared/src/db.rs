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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Opens a pool. Connecting is lazy, so a role starts (and reports not ready) while PostgreSQL
/// is down instead of failing.
pub fn pool(database_url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(database_url)?)
}

/// Opens the pool a role uses: `PULSE_DATABASE_URL` (its `sslmode` and `sslrootcert` as libpq
/// reads them), trusting `PULSE_TLS_CA_FILE` too when set and the URL names no root of its own.
pub fn pool_for(settings: &crate::Settings, max_connections: u32) -> Result<PgPool, StoreError> {
    pool_with(settings, max_connections, Plans::Custom)
}

/// How PostgreSQL plans a pool's prepared statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plans {
    /// PostgreSQL's default: a statement is planned again for its parameters until a generic
    /// plan looks as cheap. Right for queries whose best plan depends on their arguments (the
    /// API's filters).
    Custom,
    /// One generic plan per prepared statement, planned once per connection
    /// (`plan_cache_mode = force_generic_plan`). For the send path's batched statements: their
    /// parameters are arrays (`UNNEST($1::uuid[])`), which a generic plan estimates at 100
    /// rows and a custom plan at their real few, so PostgreSQL never found the generic plan
    /// cheap enough and planned every execution again. That planning was a third of
    /// PostgreSQL's CPU per send (`docs/BENCHMARKS.md`, "Where a send's CPU goes"). Every
    /// statement of the send path looks its rows up by key, so a generic plan serves it (read
    /// with `auto_explain` during the bench; the one plan worth a better index is named there).
    Generic,
}

/// [`pool_for`], with the planning of `plans`.
pub fn pool_with(
    settings: &crate::Settings,
    max_connections: u32,
    plans: Plans,
) -> Result<PgPool, StoreError> {
    let mut options: sqlx::postgres::PgConnectOptions = settings.database_url.parse()?;
    if plans == Plans::Generic {
        options = options.options([("plan_cache_mode", "force_generic_plan")]);
    }
    if let Some(ca) = settings.tls_ca()?
        && !settings.database_url.contains("sslrootcert=")
    {
        options = options.ssl_root_cert_from_pem(ca);
    }
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
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
/// their canonical form, merging leads that turn out to be one mailbox
/// ([`crate::identity::canonicalize_leads`]).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("../migrations").run(pool).await?;
    let found = crate::identity::canonicalize_leads(pool).await?;
    if found.rewritten > 0 || !found.merged.is_empty() || found.invalid > 0 {
        tracing::warn!(
            rewritten = found.rewritten,
            merged = found.merged.len(),
            invalid = found.invalid,
            "lead addresses brought to their canonical form"
        );
    }
    Ok(())
}

/// The SHA-256 of an API key; only the hash is stored.
pub fn key_hash(key: &str) -> Vec<u8> {
    key_hash_bytes(key.as_bytes())
}

/// SHA-256 of any bytes (a request body an `Idempotency-Key` names).
pub fn key_hash_bytes(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
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
