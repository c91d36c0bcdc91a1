//! Provider webhooks: what a sending provider saw come back, mapped onto the same path as mail
//! the inbound role reads (`pulse_shared::feedback`).
//!
//! * `POST /v1/inbound/ses`: Amazon SES notifications delivered by SNS. The SNS signature
//!   (SignatureVersion 2, RSA with SHA-256) is verified against the configured certificate
//!   (`PULSE_SES_SNS_CERT_FILE`), never one fetched from the message's URL; a topic outside
//!   `PULSE_SES_TOPIC_ARNS` is refused. A `SubscriptionConfirmation` is confirmed by visiting its
//!   `SubscribeURL`, only once its signature verifies.
//! * `POST /v1/inbound/sendgrid`: the Event Webhook, its ECDSA P-256 signature over the
//!   timestamp and the body verified with the configured key (`PULSE_SENDGRID_WEBHOOK_KEY`);
//!   a timestamp more than 10 minutes off is refused, so a captured request cannot be replayed
//!   later.
//!
//! Signatures are checked by `rustls-webpki` (the certificate's or the key's SPKI); nothing here
//! parses ASN.1. A bad signature answers 401 and changes nothing; a route that is not configured
//! answers 404. Events are matched to their send by the original Message-ID (SES's
//! `commonHeaders.messageId`, SendGrid's `smtp-id`), which names the workspace; a provider call
//! carries no API key. Deliveries and opens are not recorded.

use std::time::Duration;

use axum::{Json, body::Bytes, extract::State, http::HeaderMap};
use base64::Engine as _;
use pulse_shared::{
    config::InboundSettings,
    domain::validate,
    feedback::{self, Kind, Report},
    http::{ApiError, ApiResult},
    verp,
};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, pem::PemObject};
use serde::Deserialize;
use serde_json::{Value, json};
use webpki::{EndEntityCert, RawPublicKeyEntity};

use crate::ApiState;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The farthest a SendGrid timestamp may be from now.
const SENDGRID_SKEW: i64 = 600;
/// The most events taken from one webhook call.
const MAX_EVENTS: usize = 1000;

/// The configured provider keys.
#[derive(Default)]
pub struct Providers {
    ses: Option<Ses>,
    sendgrid: Option<Vec<u8>>,
    soft_bounce_limit: i32,
}

struct Ses {
    cert: CertificateDer<'static>,
    topics: Vec<String>,
}

impl Providers {
    /// Reads the keys `settings` name; a key that cannot be read or parsed is a startup error.
    pub fn load(settings: &InboundSettings) -> Result<Self, String> {
        let ses = match &settings.ses_sns_cert_file {
            None => None,
            Some(path) => {
                let cert = CertificateDer::from_pem_file(path)
                    .map_err(|e| format!("PULSE_SES_SNS_CERT_FILE {}: {e}", path.display()))?;
                EndEntityCert::try_from(&cert).map_err(|e| {
                    format!(
                        "PULSE_SES_SNS_CERT_FILE {}: not a usable certificate: {e}",
                        path.display()
                    )
                })?;
                Some(Ses {
                    cert,
                    topics: settings.ses_topic_arns.clone(),
                })
            }
        };
        let sendgrid = match &settings.sendgrid_webhook_key {
            None => None,
            Some(key) => {
                let der = B64
                    .decode(key.trim())
                    .map_err(|e| format!("PULSE_SENDGRID_WEBHOOK_KEY: not base64: {e}"))?;
                let spki = SubjectPublicKeyInfoDer::from(der.as_slice());
                RawPublicKeyEntity::try_from(&spki)
                    .map_err(|e| format!("PULSE_SENDGRID_WEBHOOK_KEY: not a public key: {e}"))?;
                Some(der)
            }
        };
        Ok(Self {
            ses,
            sendgrid,
            soft_bounce_limit: settings.soft_bounce_limit,
        })
    }
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::Unverified(why.to_owned())
}

fn malformed(message: String) -> ApiError {
    ApiError::Malformed {
        field: None,
        message,
    }
}

/// One SNS message (its fields as SNS names them).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Sns {
    #[serde(rename = "Type")]
    kind: String,
    message_id: String,
    #[serde(default)]
    token: Option<String>,
    topic_arn: String,
    #[serde(default)]
    subject: Option<String>,
    message: String,
    timestamp: String,
    signature_version: String,
    signature: String,
    #[serde(rename = "SubscribeURL", default)]
    subscribe_url: Option<String>,
}

impl Sns {
    /// The string SNS signs: name and value lines of the fields its type signs, in order.
    fn string_to_sign(&self) -> String {
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        if self.kind == "Notification" {
            if let Some(subject) = &self.subject {
                fields.push(("Subject", subject));
            }
        } else {
            fields.push((
                "SubscribeURL",
                self.subscribe_url.as_deref().unwrap_or_default(),
            ));
        }
        fields.push(("Timestamp", &self.timestamp));
        if self.kind != "Notification" {
            fields.push(("Token", self.token.as_deref().unwrap_or_default()));
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", &self.kind));
        fields.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect()
    }
}

/// Amazon SES bounce and complaint notifications, through SNS.
#[utoipa::path(
    post, path = "/v1/inbound/ses", tag = "inbound",
    request_body(content = Object, description = "An SNS message: JSON (SNS sends it as `text/plain`, which is read the same)", content_type = "application/json"),
    responses(
        (status = 200, description = "Verified; what it recorded"),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 401, description = "The signature does not verify", body = pulse_shared::http::ErrorBody),
        (status = 404, description = "PULSE_SES_SNS_CERT_FILE is not set", body = pulse_shared::http::ErrorBody),
    )
)]
pub async fn ses(State(state): State<ApiState>, body: Bytes) -> ApiResult<Json<Value>> {
    let Some(ses) = &state.providers.ses else {
        return Err(ApiError::NotFound(
            "SES webhook (PULSE_SES_SNS_CERT_FILE is not set)",
        ));
    };
    let sns: Sns =
        serde_json::from_slice(&body).map_err(|e| malformed(format!("not an SNS message: {e}")))?;
    if sns.signature_version != "2" {
        return Err(unauthorized(
            "only SignatureVersion 2 (SHA-256) is accepted: set it on the SNS topic",
        ));
    }
    let signature = B64
        .decode(sns.signature.trim())
        .map_err(|_| unauthorized("the signature is not base64"))?;
    let cert = EndEntityCert::try_from(&ses.cert)
        .map_err(|e| ApiError::Internal(format!("the SNS certificate: {e}").into()))?;
    cert.verify_signature(
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        sns.string_to_sign().as_bytes(),
        &signature,
    )
    .map_err(|_| unauthorized("the SNS signature does not verify"))?;
    if !ses.topics.is_empty() && !ses.topics.contains(&sns.topic_arn) {
        return Err(ApiError::Forbidden(format!(
            "topic {} is not in PULSE_SES_TOPIC_ARNS",
            sns.topic_arn
        )));
    }
    match sns.kind.as_str() {
        "SubscriptionConfirmation" => {
            let url = sns.subscribe_url.as_deref().unwrap_or_default();
            confirm(url).await?;
            tracing::info!(topic = %sns.topic_arn, "SNS subscription confirmed");
            Ok(Json(json!({"confirmed": true})))
        }
        "Notification" => {
            let note: Value = serde_json::from_str(&sns.message)
                .map_err(|e| malformed(format!("the SES notification: {e}")))?;
            let reports = ses_reports(&note, &body);
            let recorded = record(&state, &reports).await?;
            Ok(Json(json!({"recorded": recorded})))
        }
        _ => Ok(Json(json!({"recorded": 0}))),
    }
}

/// Visits an SNS `SubscribeURL` (after its message verified).
async fn confirm(url: &str) -> Result<(), ApiError> {
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| malformed(format!("SubscribeURL {url:?} is not an http(s) URL")))?;
    let answer = reqwest::Client::new()
        .get(parsed)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ApiError::Upstream(format!("confirming the subscription: {e}")))?;
    if !answer.status().is_success() {
        return Err(ApiError::Upstream(format!(
            "confirming the subscription: SNS answered {}",
            answer.status()
        )));
    }
    Ok(())
}

/// The reports of one SES notification: one per bounced or complaining recipient.
fn ses_reports(note: &Value, payload: &[u8]) -> Vec<Report> {
    let hash = note["mail"]["commonHeaders"]["messageId"]
        .as_str()
        .or_else(|| {
            note["mail"]["headers"].as_array()?.iter().find_map(|h| {
                h["name"]
                    .as_str()
                    .filter(|n| n.eq_ignore_ascii_case("Message-ID"))
                    .and(h["value"].as_str())
            })
        })
        .and_then(verp::message_hash)
        .map(str::to_ascii_lowercase);
    let (kind, recipients, detail) = match note["notificationType"].as_str() {
        Some("Bounce") => {
            let b = &note["bounce"];
            let kind = match b["bounceType"].as_str() {
                Some("Permanent") => Kind::Bounce,
                _ => Kind::SoftBounce,
            };
            (
                kind,
                &b["bouncedRecipients"],
                json!({"bounce_type": b["bounceType"], "bounce_subtype": b["bounceSubType"]}),
            )
        }
        Some("Complaint") => {
            let c = &note["complaint"];
            (
                Kind::Complaint,
                &c["complainedRecipients"],
                json!({"feedback_type": c["complaintFeedbackType"]}),
            )
        }
        _ => return Vec::new(),
    };
    recipients
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .take(MAX_EVENTS)
        .map(|r| {
            let mut detail = detail.clone();
            detail["status"] = r["status"].clone();
            detail["diagnostic"] = r["diagnosticCode"].clone();
            provider_report(
                "ses",
                kind,
                r["emailAddress"].as_str(),
                hash.clone(),
                detail,
                payload,
            )
        })
        .collect()
}

fn provider_report(
    source: &'static str,
    kind: Kind,
    address: Option<&str>,
    hash: Option<String>,
    detail: Value,
    payload: &[u8],
) -> Report {
    Report {
        source,
        kind,
        mail_from: None,
        rcpt_to: Vec::new(),
        raw: None,
        payload: payload.to_vec(),
        workspace: None,
        hashes: hash.into_iter().collect(),
        address: address.and_then(|a| validate::email(a).ok()),
        detail,
        matched: None,
    }
}

/// SendGrid's Event Webhook.
#[utoipa::path(
    post, path = "/v1/inbound/sendgrid", tag = "inbound",
    request_body(content = Vec<Object>, description = "SendGrid events"),
    responses(
        (status = 200, description = "Verified; what it recorded"),
        (status = 400, body = pulse_shared::http::ErrorBody),
        (status = 401, description = "The signature does not verify", body = pulse_shared::http::ErrorBody),
        (status = 404, description = "PULSE_SENDGRID_WEBHOOK_KEY is not set", body = pulse_shared::http::ErrorBody),
    )
)]
pub async fn sendgrid(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let Some(key) = &state.providers.sendgrid else {
        return Err(ApiError::NotFound(
            "SendGrid webhook (PULSE_SENDGRID_WEBHOOK_KEY is not set)",
        ));
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or_else(|| unauthorized(&format!("{name} is missing")))
    };
    let timestamp = header("X-Twilio-Email-Event-Webhook-Timestamp")?;
    let signature = B64
        .decode(header("X-Twilio-Email-Event-Webhook-Signature")?)
        .map_err(|_| unauthorized("the signature is not base64"))?;
    let at: i64 = timestamp
        .parse()
        .map_err(|_| unauthorized("the timestamp is not a number"))?;
    if (chrono::Utc::now().timestamp() - at).abs() > SENDGRID_SKEW {
        return Err(unauthorized("the timestamp is more than 10 minutes off"));
    }
    let spki = SubjectPublicKeyInfoDer::from(key.as_slice());
    let verifier = RawPublicKeyEntity::try_from(&spki)
        .map_err(|e| ApiError::Internal(format!("the SendGrid key: {e}").into()))?;
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(&body);
    verifier
        .verify_signature(webpki::ring::ECDSA_P256_SHA256, &signed, &signature)
        .map_err(|_| unauthorized("the SendGrid signature does not verify"))?;
    let events: Vec<Value> = serde_json::from_slice(&body)
        .map_err(|e| malformed(format!("not a list of SendGrid events: {e}")))?;
    let reports: Vec<Report> = events
        .iter()
        .take(MAX_EVENTS)
        .filter_map(|e| {
            let kind = match (e["event"].as_str()?, e["type"].as_str()) {
                ("bounce", Some("blocked")) => Kind::SoftBounce,
                ("bounce", _) => Kind::Bounce,
                ("spamreport", _) => Kind::Complaint,
                ("unsubscribe" | "group_unsubscribe", _) => Kind::Unsubscribe,
                _ => return None,
            };
            let hash = e["smtp-id"]
                .as_str()
                .and_then(verp::message_hash)
                .map(str::to_ascii_lowercase);
            let detail = json!({"event": e["event"], "type": e["type"], "status": e["status"],
                                "diagnostic": e["reason"], "sg_event_id": e["sg_event_id"]});
            Some(provider_report(
                "sendgrid",
                kind,
                e["email"].as_str(),
                hash,
                detail,
                &body,
            ))
        })
        .collect();
    let recorded = record(&state, &reports).await?;
    Ok(Json(json!({"recorded": recorded})))
}

/// Records and processes each report; how many there were.
async fn record(state: &ApiState, reports: &[Report]) -> Result<usize, ApiError> {
    for report in reports {
        let (id, matched, _) =
            feedback::record_and_process(&state.db, report, state.providers.soft_bounce_limit)
                .await?;
        state.metrics.inbound(report.kind.as_str());
        tracing::info!(
            id,
            source = report.source,
            kind = report.kind.as_str(),
            matched = matched.key.is_some(),
            "provider report recorded"
        );
    }
    Ok(reports.len())
}
