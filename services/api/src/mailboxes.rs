//! `/v1/mailboxes`: the workspace's sender mailboxes. Owns the `mailboxes` rows (create, read,
//! edit, delete). Secrets are write-only: they are stored, never returned and never logged. A
//! mailbox a live sequence sends from cannot be deleted. What a mailbox's settings mean is
//! `pulse_shared::mailbox`'s.

use axum::{Json, extract::State, http::StatusCode};
use pulse_shared::{
    domain::{limits as sizes, validate},
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth, Created},
    limits, mailbox,
    model::{CreateMailbox, DkimInput, EditMailbox, Mailbox, MailboxList},
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{ApiState, sequences::check_timezone};

const COLUMNS: &str = "id, address, display_name, reply_to, smtp_url,
    smtp_password IS NOT NULL AS has_smtp_password, dkim_selector,
    COALESCE(limits, '[]'::jsonb) AS limits, timezone, created_at, updated_at";

/// Create a sender mailbox.
#[utoipa::path(
    post, operation_id = "create_mailbox", path = "/v1/mailboxes", tag = "mailboxes",
    request_body = CreateMailbox,
    responses(
        (status = 201, body = Mailbox),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 409, description = "A live mailbox has this address", body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    state: &ApiState,
    auth: &Auth,
    req: CreateMailbox,
) -> ApiResult<Created<Mailbox>> {
    let address = check_address(&req.address)?;
    let display_name = req.display_name.as_deref().map(check_name).transpose()?;
    let reply_to = req.reply_to.as_deref().map(check_reply_to).transpose()?;
    let (smtp_url, smtp_password) = check_relay(req.smtp_url.as_deref(), req.smtp_password)?;
    let dkim = req.dkim.as_ref().map(check_dkim).transpose()?;
    let limits = limits::to_store("limits", &req.limits)?;
    let timezone = req.timezone.as_deref().map(check_timezone).transpose()?;
    let id = Uuid::new_v4();
    let created = sqlx::query_as::<_, Mailbox>(&format!(
        "INSERT INTO mailboxes (id, workspace_id, address, display_name, reply_to, smtp_url,
                                smtp_password, dkim_selector, dkim_private_key, limits, timezone)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, COALESCE($11, 'UTC'))
         ON CONFLICT DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(auth.workspace)
    .bind(&address)
    .bind(display_name)
    .bind(reply_to)
    .bind(smtp_url)
    .bind(smtp_password)
    .bind(dkim.as_ref().map(|d| &d.0))
    .bind(dkim.as_ref().map(|d| &d.1))
    .bind(limits)
    .bind(timezone)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::Conflict(format!("a mailbox for {address} exists already")))?;
    tracing::info!(workspace = %auth.workspace, actor = %auth.actor, mailbox = %id, %address, "mailbox created");
    Ok(Created(format!("/v1/mailboxes/{id}"), created))
}

/// The workspace's live mailboxes, by address.
#[utoipa::path(
    get, operation_id = "list_mailboxes", path = "/v1/mailboxes", tag = "mailboxes",
    responses((status = 200, body = MailboxList), (status = 401, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(state: &ApiState, auth: &Auth) -> ApiResult<MailboxList> {
    let mailboxes = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM mailboxes WHERE workspace_id = $1 AND deleted_at IS NULL
         ORDER BY lower(address) LIMIT 1000"
    ))
    .bind(auth.workspace)
    .fetch_all(&state.db)
    .await?;
    Ok(MailboxList { mailboxes })
}

/// One mailbox.
#[utoipa::path(
    get, operation_id = "get_mailbox", path = "/v1/mailboxes/{id}", tag = "mailboxes",
    params(("id" = Uuid, Path, description = "Mailbox id")),
    responses((status = 200, body = Mailbox), (status = 404, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_one(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<Mailbox> {
    let mut conn = state.db.acquire().await?;
    fetch(&mut conn, auth.workspace, id).await
}

/// Change a mailbox. Sends already queued keep the sender they were frozen with; the relay and
/// DKIM settings apply from the next send.
#[utoipa::path(
    patch, operation_id = "edit_mailbox", path = "/v1/mailboxes/{id}", tag = "mailboxes",
    params(("id" = Uuid, Path, description = "Mailbox id")),
    request_body = EditMailbox,
    responses(
        (status = 200, body = Mailbox),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 404, body = pulse_shared::http::ErrorBody),
        (status = 409, description = "A password alone, for a mailbox on the global relay or one whose URL names no user", body = pulse_shared::http::ErrorBody),
        (status = 422, body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn edit(state: &ApiState, auth: &Auth, id: Uuid, req: EditMailbox) -> ApiResult<Mailbox> {
    let display_name = req
        .display_name
        .map(|d| d.as_deref().map(check_name).transpose())
        .transpose()?;
    let reply_to = req
        .reply_to
        .map(|r| r.as_deref().map(check_reply_to).transpose())
        .transpose()?;
    // A new URL replaces the password too: the old one belonged to the old relay.
    let relay = match req.smtp_url {
        Some(url) => Some(check_relay(
            url.as_deref(),
            req.smtp_password.clone().flatten(),
        )?),
        None => None,
    };
    let dkim = req
        .dkim
        .map(|d| d.as_ref().map(check_dkim).transpose())
        .transpose()?;
    let new_limits = req
        .limits
        .as_deref()
        .map(|l| limits::to_store("limits", l))
        .transpose()?;
    let timezone = req.timezone.as_deref().map(check_timezone).transpose()?;
    let mut tx = state.db.begin().await?;
    let before = fetch(&mut tx, auth.workspace, id).await?;
    // A password alone goes with the relay the mailbox has: a conflict with its state, not a
    // wrong value, when it has none or its URL names no user.
    if relay.is_none()
        && let Some(Some(password)) = &req.smtp_password
    {
        let Some(url) = &before.smtp_url else {
            return Err(ApiError::Conflict(
                "this mailbox uses the global relay; give an smtp_url with the password".into(),
            ));
        };
        mailbox::relay_url(url, Some(password)).map_err(|m| {
            ApiError::Conflict(format!(
                "the mailbox's smtp_url cannot take this password: {m}"
            ))
        })?;
    }
    sqlx::query(
        "UPDATE mailboxes SET
             display_name = CASE WHEN $3 THEN $4 ELSE display_name END,
             reply_to = CASE WHEN $5 THEN $6 ELSE reply_to END,
             smtp_url = CASE WHEN $7 THEN $8 ELSE smtp_url END,
             smtp_password = CASE WHEN $7 THEN $9 WHEN $10 THEN $11 ELSE smtp_password END,
             dkim_selector = CASE WHEN $12 THEN $13 ELSE dkim_selector END,
             dkim_private_key = CASE WHEN $12 THEN $14 ELSE dkim_private_key END,
             limits = CASE WHEN $15 THEN $16 ELSE limits END,
             timezone = COALESCE($17, timezone),
             updated_at = now()
         WHERE id = $1 AND workspace_id = $2",
    )
    .bind(id)
    .bind(auth.workspace)
    .bind(display_name.is_some())
    .bind(display_name.flatten())
    .bind(reply_to.is_some())
    .bind(reply_to.flatten())
    .bind(relay.is_some())
    .bind(relay.as_ref().and_then(|r| r.0.clone()))
    .bind(relay.as_ref().and_then(|r| r.1.clone()))
    .bind(req.smtp_password.is_some())
    .bind(req.smtp_password.flatten())
    .bind(dkim.is_some())
    .bind(dkim.as_ref().and_then(|d| d.as_ref().map(|d| d.0.clone())))
    .bind(dkim.as_ref().and_then(|d| d.as_ref().map(|d| d.1.clone())))
    .bind(new_limits.is_some())
    .bind(new_limits.flatten())
    .bind(timezone)
    .execute(&mut *tx)
    .await?;
    let after = fetch(&mut tx, auth.workspace, id).await?;
    tx.commit().await?;
    tracing::info!(workspace = %auth.workspace, actor = %auth.actor, mailbox = %id, "mailbox changed");
    Ok(after)
}

/// Delete a mailbox. Refused (409) while a sequence that is not deleted sends from it; the
/// enrollments and sends that used it keep naming it.
#[utoipa::path(
    delete, operation_id = "delete_mailbox", path = "/v1/mailboxes/{id}", tag = "mailboxes",
    params(("id" = Uuid, Path, description = "Mailbox id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = pulse_shared::http::ErrorBody),
        (status = 409, description = "A sequence sends from it", body = pulse_shared::http::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(state: &ApiState, auth: &Auth, id: Uuid) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    let row: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM mailboxes WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
         FOR UPDATE",
    )
    .bind(id)
    .bind(auth.workspace)
    .fetch_optional(&mut *tx)
    .await?;
    if row.is_none() {
        return Err(ApiError::NotFound("mailbox"));
    }
    // Sequences naming it lock the mailbox row (`FOR KEY SHARE`, in `sequences`' checks), so a
    // sequence saved concurrently either is seen here or sees the mailbox deleted.
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sequences WHERE workspace_id = $1 AND status <> 'DELETED'
           AND $2 = ANY(sender_mailboxes) ORDER BY name LIMIT 5",
    )
    .bind(auth.workspace)
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "sequences send from this mailbox ({}); change their sender first",
            users.join(", ")
        )));
    }
    sqlx::query("UPDATE mailboxes SET deleted_at = now(), updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(workspace = %auth.workspace, actor = %auth.actor, mailbox = %id, "mailbox deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a sequence's `sender.mailbox_ids`: live mailboxes of `workspace`, each once, locked
/// `FOR KEY SHARE` until the caller commits (a concurrent delete waits, then sees the sequence).
pub(crate) async fn check_sequence_mailboxes(
    conn: &mut PgConnection,
    workspace: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, ApiError> {
    if ids.is_empty() || ids.len() > mailbox::MAX_PER_SEQUENCE {
        return Err(ApiError::invalid(
            "sender.mailbox_ids",
            format!("must list 1 to {} mailboxes", mailbox::MAX_PER_SEQUENCE),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(ApiError::invalid(
                format!("sender.mailbox_ids[{i}]"),
                "listed twice",
            ));
        }
    }
    let live: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM mailboxes WHERE workspace_id = $1 AND id = ANY($2) AND deleted_at IS NULL
         ORDER BY id FOR KEY SHARE",
    )
    .bind(workspace)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    // A mailbox named that is not there: like an id in a path, 404.
    if ids.iter().any(|id| !live.contains(id)) {
        return Err(ApiError::NotFound("mailbox"));
    }
    Ok(ids.to_vec())
}

async fn fetch(conn: &mut PgConnection, workspace: Uuid, id: Uuid) -> Result<Mailbox, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM mailboxes WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(workspace)
    .fetch_optional(conn)
    .await?
    .ok_or(ApiError::NotFound("mailbox"))
}

fn check_address(raw: &str) -> Result<String, ApiError> {
    let parsed = validate::mailbox(raw).map_err(|m| ApiError::invalid("address", m))?;
    if parsed.name.is_some() {
        return Err(ApiError::invalid(
            "address",
            "the bare address only; the name goes in display_name",
        ));
    }
    Ok(parsed.email.to_string())
}

fn check_name(name: &str) -> Result<String, ApiError> {
    validate::text(name, sizes::TEXT_BYTES).map_err(|m| ApiError::invalid("display_name", m))?;
    let name = name.trim();
    // It becomes part of a From header: a name lettre cannot put there is refused now.
    validate::mailbox(&format!("\"{}\" <a@example.com>", name.replace('"', "")))
        .map_err(|m| ApiError::invalid("display_name", m))?;
    Ok(name.to_owned())
}

fn check_reply_to(raw: &str) -> Result<String, ApiError> {
    Ok(validate::mailbox(raw)
        .map_err(|m| ApiError::invalid("reply_to", m))?
        .to_string())
}

/// The URL to store and the password to store with it.
fn check_relay(
    url: Option<&str>,
    password: Option<String>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(url) = url else {
        if password.is_some() {
            return Err(ApiError::invalid(
                "smtp_password",
                "a password needs an smtp_url naming the user",
            ));
        }
        return Ok((None, None));
    };
    if url.chars().count() > 2000 {
        return Err(ApiError::invalid("smtp_url", "longer than 2000 characters"));
    }
    let stored = mailbox::relay(url).map_err(|m| ApiError::invalid("smtp_url", m))?;
    let password = password.or(stored.password);
    // The URL with its password must make a relay: a password needs a user.
    if password.is_some() && url::Url::parse(&stored.url).is_ok_and(|u| u.username().is_empty()) {
        return Err(ApiError::invalid(
            "smtp_password",
            "a password needs an smtp_url naming the user (smtp://USER@host)",
        ));
    }
    mailbox::relay_url(&stored.url, password.as_deref())
        .map_err(|m| ApiError::invalid("smtp_password", m))?;
    Ok((Some(stored.url), password))
}

fn check_dkim(dkim: &DkimInput) -> Result<(String, String), ApiError> {
    let selector = mailbox::dkim_selector(&dkim.selector)
        .map_err(|m| ApiError::invalid("dkim.selector", m))?;
    mailbox::dkim_key(&dkim.private_key).map_err(|m| ApiError::invalid("dkim.private_key", m))?;
    Ok((selector, dkim.private_key.trim().to_owned()))
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn create(
        State(state): State<ApiState>,
        auth: Auth,
        ApiJson(req): ApiJson<CreateMailbox>,
    ) -> ApiResult<Created<Mailbox>> {
        super::create(&state, &auth, req).await
    }

    pub async fn list(State(state): State<ApiState>, auth: Auth) -> ApiResult<Json<MailboxList>> {
        super::list(&state, &auth).await.map(Json)
    }

    pub async fn get_one(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<Json<Mailbox>> {
        super::get_one(&state, &auth, id).await.map(Json)
    }

    pub async fn edit(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(req): ApiJson<EditMailbox>,
    ) -> ApiResult<Json<Mailbox>> {
        super::edit(&state, &auth, id, req).await.map(Json)
    }

    pub async fn delete(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
    ) -> ApiResult<StatusCode> {
        super::delete(&state, &auth, id).await
    }
}
