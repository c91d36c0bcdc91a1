//! `POST /v1/sequences/{id}/render-preview`: the sequence's steps (or the draft steps given)
//! rendered for one lead as the scheduler would freeze them, with the headers the lead would
//! see. The content comes from `domain::content::render`, the function the scheduler calls; the
//! steps are checked by `sequences::check_steps`, so a template the edit would refuse is
//! refused here with the same error. Nothing is written and nothing is sent.
//!
//! The lead is a real lead of the workspace (`lead_email`), typed values (`lead`), or a sample.
//! A threaded step later in the sequence is shown as the reply it would be (`Re:` the first
//! step's subject, `In-Reply-To` an earlier message). The one-click unsubscribe link is shown
//! as a placeholder: a real one works without a key, and a read key may ask for a preview.

use axum::{Json, extract::State};
use pulse_shared::{
    domain::{
        content::{self, StepTemplates, Thread},
        template::LeadFields,
        validate,
    },
    http::{ApiError, ApiJson, ApiPath, ApiResult, Auth},
    model::{SenderIdentity, StepInput},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{ApiState, sequences};

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderPreviewRequest {
    /// Draft steps to render instead of the saved ones (as `PATCH` takes them; checked the same
    /// way).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 50)]
    pub steps: Option<Vec<StepInput>>,
    /// A lead of the workspace to render for.
    #[serde(default)]
    #[schema(format = "address")]
    pub lead_email: Option<String>,
    /// Values to render with, when no `lead_email` is given (default: a sample lead).
    #[serde(default)]
    pub lead: Option<PreviewLead>,
}

/// Lead values typed for a preview.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[serde(deny_unknown_fields)]
pub struct PreviewLead {
    #[schema(format = "address")]
    pub email: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    /// Any JSON object, as a lead's `attributes`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
}

/// A lead of the workspace, as a preview reads it.
#[derive(sqlx::FromRow)]
struct LeadRow {
    id: Uuid,
    #[sqlx(flatten)]
    lead: PreviewLead,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RenderPreview {
    /// `null` for a sequence not saved yet (the Hub's "New sequence").
    pub sequence_id: Option<Uuid>,
    /// The lead rendered for.
    pub lead: PreviewLead,
    /// Its id when it is a lead of the workspace; `null` for typed or sample values.
    pub lead_id: Option<Uuid>,
    pub steps: Vec<RenderedStep>,
}

/// One step as the lead would get it, or why it could not be rendered.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RenderedStep {
    pub position: i32,
    pub subject: Option<String>,
    /// The text part.
    pub text: Option<String>,
    pub html: Option<String>,
    pub headers: Vec<PreviewHeader>,
    /// Why this step cannot be sent to this lead (it would fail when queued).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PreviewHeader {
    pub name: String,
    pub value: String,
}

/// Render a sequence's steps (saved, or the draft `steps` given) for one lead, with the headers
/// it would see. Changes nothing.
#[utoipa::path(
    post, operation_id = "preview_render", path = "/v1/sequences/{id}/render-preview", tag = "sequences",
    params(("id" = Uuid, Path, description = "Sequence id")),
    request_body = RenderPreviewRequest,
    responses((status = 200, body = RenderPreview), (status = 404, body = pulse_shared::http::ErrorBody),
              (status = 422, body = pulse_shared::http::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn render_preview(
    state: &ApiState,
    auth: &Auth,
    id: Uuid,
    req: RenderPreviewRequest,
) -> ApiResult<RenderPreview> {
    let seq = {
        let mut conn = state.db.acquire().await?;
        sequences::load_one(&mut conn, auth.workspace, id).await?
    };
    let steps: Vec<StepInput> = match req.steps {
        Some(steps) => steps,
        None => crate::steps::inputs(&seq),
    };
    render_draft(
        state,
        auth,
        Some(id),
        &seq.sender,
        &steps,
        (req.lead_email.as_deref(), req.lead),
    )
    .await
}

/// Renders `steps` (checked as an edit checks them) for a lead: `(lead_email, typed values)`,
/// else a sample. `sequence` is `None` for a sequence not saved yet. What the Hub's editor shows
/// for a draft, and the route's answer.
pub(crate) async fn render_draft(
    state: &ApiState,
    auth: &Auth,
    sequence: Option<Uuid>,
    sender: &SenderIdentity,
    steps: &[StepInput],
    (lead_email, typed): (Option<&str>, Option<PreviewLead>),
) -> ApiResult<RenderPreview> {
    sequences::check_steps(steps, true)?;
    let (lead, lead_id) = match (lead_email, typed) {
        (Some(email), _) => {
            let email = validate::email(email).map_err(|m| ApiError::invalid("lead_email", m))?;
            let (lead_id, mut lead): (Uuid, PreviewLead) = sqlx::query_as::<_, LeadRow>(
                "SELECT id, email, first_name, last_name, timezone, attributes FROM leads
                 WHERE workspace_id = $1 AND email = $2",
            )
            .bind(auth.workspace)
            .bind(&email)
            .fetch_optional(&state.db)
            .await?
            .map(|r| (r.id, r.lead))
            .ok_or(ApiError::NotFound("lead"))?;
            lead.email = email;
            (lead, Some(lead_id))
        }
        (None, Some(mut typed)) => {
            typed.email =
                validate::email(&typed.email).map_err(|m| ApiError::invalid("lead.email", m))?;
            if typed.attributes.as_ref().is_some_and(|a| !a.is_object()) {
                return Err(ApiError::invalid("lead.attributes", "must be an object"));
            }
            (typed, None)
        }
        (None, None) => (sample(), None),
    };
    let fields = LeadFields {
        email: &lead.email,
        first_name: lead.first_name.as_deref(),
        last_name: lead.last_name.as_deref(),
        timezone: lead.timezone.as_deref(),
        attributes: lead.attributes.as_ref(),
        unsubscribe_url: Some(PLACEHOLDER_LINK),
    };
    let from = sender
        .from
        .clone()
        .unwrap_or_else(|| "one of the sequence's mailboxes, per lead".to_owned());
    let first_subject = steps.first().map(|s| s.subject.as_str());
    let first_rendered = steps
        .first()
        .and_then(|s| pulse_shared::domain::template::render(&s.subject, &fields).ok());
    let rendered = steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            // A later threaded step answers what went before it.
            let thread = (step.thread && i > 0).then(|| Thread {
                first_subject: first_rendered.clone(),
                message_ids: vec![EARLIER_MESSAGE.to_owned()],
            });
            let templates = StepTemplates {
                subject: &step.subject,
                body: &step.body,
                html: step.html.as_deref(),
                thread: step.thread,
            };
            let position = i as i32 + 1;
            match content::render(templates, &fields, thread.as_ref(), first_subject) {
                Ok(c) => {
                    let mut headers = vec![
                        header("From", &from),
                        header("To", &lead.email),
                        header("Subject", &c.subject),
                    ];
                    if let Some(r) = &sender.reply_to {
                        headers.push(header("Reply-To", r));
                    }
                    if let Some(parent) = &c.in_reply_to {
                        headers.push(header("In-Reply-To", parent));
                    }
                    headers.push(header("List-Unsubscribe", &format!("<{PLACEHOLDER_LINK}>")));
                    RenderedStep {
                        position,
                        subject: Some(c.subject),
                        text: Some(c.text),
                        html: c.html,
                        headers,
                        error: None,
                    }
                }
                Err(e) => RenderedStep {
                    position,
                    subject: None,
                    text: None,
                    html: None,
                    headers: Vec::new(),
                    error: Some(e),
                },
            }
        })
        .collect();
    Ok(RenderPreview {
        sequence_id: sequence,
        lead,
        lead_id,
        steps: rendered,
    })
}

/// What `{{ unsubscribe_url }}` and `List-Unsubscribe` show. Each lead's real link is signed
/// and works without a key: a preview, which a read key may ask for, never hands one out.
const PLACEHOLDER_LINK: &str = "https://unsubscribe.example/each-lead-gets-its-own-link";

/// The Message-ID a later threaded step is shown answering.
const EARLIER_MESSAGE: &str = "<the-earlier-message@preview>";

fn header(name: &str, value: &str) -> PreviewHeader {
    PreviewHeader {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// The lead shown when none is named or typed.
fn sample() -> PreviewLead {
    PreviewLead {
        email: "ada@example.com".into(),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        timezone: Some("Europe/London".into()),
        attributes: Some(serde_json::json!({"company": "Analytical Engines"})),
    }
}

/// The `/v1` handler: takes the request apart and calls [`render_preview`].
pub mod v1 {
    use super::*;

    pub async fn render_preview(
        State(state): State<ApiState>,
        auth: Auth,
        ApiPath(id): ApiPath<Uuid>,
        ApiJson(req): ApiJson<RenderPreviewRequest>,
    ) -> ApiResult<Json<RenderPreview>> {
        super::render_preview(&state, &auth, id, req)
            .await
            .map(Json)
    }
}
