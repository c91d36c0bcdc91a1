//! The dev outbox: mail captured when no SMTP relay is configured (`PULSE_SMTP_URL` unset).

use axum::{Json, extract::State};
use pulse_shared::{
    http::{ApiQuery, ApiResult, Auth},
    model::{OutboxList, OutboxMessage},
};

use crate::{ApiState, Page};

/// Captured messages of the workspace, newest first.
#[utoipa::path(
    get, operation_id = "list_outbox", path = "/v1/dev/outbox", tag = "dev",
    params(Page),
    responses((status = 200, body = OutboxList)),
    security(("bearer" = []))
)]
pub async fn list(state: &ApiState, auth: &Auth, page: Page) -> ApiResult<OutboxList> {
    let messages: Vec<OutboxMessage> = sqlx::query_as(
        "SELECT id, message_id, mail_from, rcpt_to, subject, body, raw, accepted_at
         FROM dev_outbox WHERE workspace_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(auth.workspace)
    .bind(page.limit()?)
    .fetch_all(&state.db)
    .await?;
    Ok(OutboxList { messages })
}

/// The `/v1` handlers: each takes the request apart and calls the plain function of the same
/// name above, which the OpenAPI document describes and the Hub calls directly.
pub mod v1 {
    use super::*;

    pub async fn list(
        State(state): State<ApiState>,
        auth: Auth,
        ApiQuery(page): ApiQuery<Page>,
    ) -> ApiResult<Json<OutboxList>> {
        super::list(&state, &auth, page).await.map(Json)
    }
}
