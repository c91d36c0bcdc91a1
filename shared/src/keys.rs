//! API keys and their scopes: owns the `api_keys` table (create, list, revoke, look up) and the
//! rule saying which scope a request needs ([`Scope::needed`]). A key is shown once, when it is
//! made, and stored as its SHA-256. A revoked key stays in the table (its label is in the audit
//! trail) and opens nothing: every request looks its key up in PostgreSQL, with no cache, so a
//! revocation holds on every API instance from the next request. This module never decides what
//! a workspace may do beyond its key's scope.

use axum::http::Method;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{StoreError, key_hash};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET` only.
    Read,
    /// Everything but key management.
    Write,
    /// Everything, including keys (and webhooks).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// The scope a request needs: `admin` for key management and webhooks, `read` for any
    /// other `GET` or `HEAD` and for the edit and render previews, `write` for the rest.
    pub fn needed(method: &Method, path: &str) -> Self {
        let under = |prefix: &str| {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        if under("/v1/keys") || under("/v1/webhooks") {
            Scope::Admin
        } else if method == Method::GET
            || method == Method::HEAD
            // A preview changes nothing (an edit preview's edit is rolled back).
            || (method == Method::POST
                && (path.ends_with("/edit-preview") || path.ends_with("/render-preview")))
        {
            Scope::Read
        } else {
            Scope::Write
        }
    }
}

/// A key as listed: never the key itself.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    pub id: Uuid,
    pub label: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    /// Who made it (the actor of the request), when a request did.
    pub created_by: Option<String>,
    /// The last request it opened, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just made: the only time the key is shown.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct NewKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The key: `Authorization: Bearer <key>`. Shown once; only its hash is kept.
    pub key: String,
}

/// A fresh key: `pulse_` and 244 random bits (two v4 UUIDs from the OS's CSPRNG), hex.
pub fn generate() -> String {
    format!(
        "pulse_{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

fn info_from_row(row: &sqlx::postgres::PgRow) -> Result<KeyInfo, StoreError> {
    let scope: String = row.try_get("scope")?;
    Ok(KeyInfo {
        id: row.try_get("id")?,
        label: row.try_get("label")?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("key scope {scope:?}")))?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const COLUMNS: &str = "id, label, scope, created_at, created_by, last_used_at, revoked_at";

/// Makes a key for `workspace`, in the caller's transaction.
pub async fn create(
    conn: &mut PgConnection,
    workspace: Uuid,
    label: &str,
    scope: Scope,
    created_by: &str,
) -> Result<NewKey, StoreError> {
    let key = generate();
    let row = sqlx::query(&format!(
        "INSERT INTO api_keys (id, workspace_id, key_sha256, label, scope, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(workspace)
    .bind(key_hash(&key))
    .bind(label)
    .bind(scope.as_str())
    .bind(created_by)
    .fetch_one(conn)
    .await?;
    Ok(NewKey {
        info: info_from_row(&row)?,
        key,
    })
}

/// The workspace's keys, newest first, revoked ones included (with `revoked_at`).
pub async fn list(db: &PgPool, workspace: Uuid) -> Result<Vec<KeyInfo>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE workspace_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(workspace)
    .fetch_all(db)
    .await?
    .iter()
    .map(info_from_row)
    .collect()
}

/// Revokes a key of `workspace`, in the caller's transaction. `None`: no such key; a key
/// revoked already keeps its first revocation time.
pub async fn revoke(
    conn: &mut PgConnection,
    workspace: Uuid,
    id: Uuid,
) -> Result<Option<KeyInfo>, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
         WHERE workspace_id = $1 AND id = $2 RETURNING {COLUMNS}"
    ))
    .bind(workspace)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(info_from_row).transpose()
}

/// Who a key belongs to.
#[derive(Clone, Debug)]
pub struct KeyOwner {
    pub id: Uuid,
    pub workspace: Uuid,
    /// The key's label (what the audit trail names when no actor is given).
    pub label: String,
    pub scope: Scope,
    /// The workspace's address policy.
    pub addresses: crate::domain::validate::AddressPolicy,
}

/// The workspace a live (not revoked) key opens, if any. Notes the key's use at most once a
/// minute (a write only then).
pub async fn owner(pool: &PgPool, key: &str) -> Result<Option<KeyOwner>, StoreError> {
    let row = sqlx::query(
        "SELECT k.id, k.workspace_id, k.label, k.scope, w.allow_dotless_domains,
                k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' AS stale
         FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
         WHERE k.key_sha256 = $1 AND k.revoked_at IS NULL",
    )
    .bind(key_hash(key))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id: Uuid = row.try_get("id")?;
    if row.try_get::<bool, _>("stale")? {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    }
    let scope: String = row.try_get("scope")?;
    Ok(Some(KeyOwner {
        id,
        workspace: row.try_get("workspace_id")?,
        label: row.try_get("label")?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("key scope {scope:?}")))?,
        addresses: crate::domain::validate::AddressPolicy {
            dotless_domains: row.try_get("allow_dotless_domains")?,
        },
    }))
}

/// A new workspace and its first admin key (the platform admin's `POST /v1/admin/workspaces`).
pub async fn create_workspace(
    pool: &PgPool,
    name: &str,
    created_by: &str,
) -> Result<(Uuid, DateTime<Utc>, NewKey), StoreError> {
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    let created: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO workspaces (id, name) VALUES ($1, $2) RETURNING created_at",
    )
    .bind(id)
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let key = create(&mut tx, id, "first admin key", Scope::Admin, created_by).await?;
    crate::audit::record_workspace(
        &mut tx,
        id,
        created_by,
        "key_created",
        serde_json::json!({"id": key.info.id, "label": key.info.label, "scope": Scope::Admin}),
    )
    .await?;
    tx.commit().await?;
    Ok((id, created, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_a_request_needs() {
        use axum::http::Method;
        assert_eq!(Scope::needed(&Method::GET, "/v1/sequences"), Scope::Read);
        assert_eq!(
            Scope::needed(&Method::POST, "/v1/sequences/x/pause"),
            Scope::Write
        );
        assert_eq!(Scope::needed(&Method::GET, "/v1/keys"), Scope::Admin);
        assert_eq!(Scope::needed(&Method::DELETE, "/v1/keys/x"), Scope::Admin);
        assert_eq!(
            Scope::needed(&Method::GET, "/v1/webhooks/x/deliveries"),
            Scope::Admin
        );
        assert_eq!(Scope::needed(&Method::GET, "/v1/keysmith"), Scope::Read);
        assert_eq!(
            Scope::needed(&Method::POST, "/v1/sequences/x/edit-preview"),
            Scope::Read
        );
        assert_eq!(
            Scope::needed(&Method::POST, "/v1/sequences/x/resume"),
            Scope::Write
        );
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
        assert_eq!(generate().len(), 6 + 64);
    }
}
