//! The wire types of sender mailboxes (`/v1/mailboxes`). Secrets go in and never come out: a
//! [`Mailbox`] says whether a password or a DKIM key is set, never what it is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Limit, present};

/// `POST /v1/mailboxes`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMailbox {
    /// The bare address mail goes out from, e.g. `ada@example.com`.
    #[schema(format = "address")]
    pub address: String,
    /// The name shown with it, e.g. `Ada Lovelace`.
    #[serde(default)]
    #[schema(format = "display-name")]
    pub display_name: Option<String>,
    /// Where replies go (`Reply-To`), when not to `address`.
    #[serde(default)]
    #[schema(format = "mailbox")]
    pub reply_to: Option<String>,
    /// This mailbox's relay, e.g. `smtp://ada%40example.com:PASSWORD@smtp.example.com:587?tls=required`;
    /// left out: the global `PULSE_SMTP_URL`. A password in it is stored apart and never shown.
    #[serde(default)]
    #[schema(format = "smtp-url")]
    pub smtp_url: Option<String>,
    /// The relay's AUTH password, when not in `smtp_url` (write-only).
    #[serde(default)]
    pub smtp_password: Option<String>,
    /// Sign this mailbox's mail with DKIM (the key is write-only).
    #[serde(default)]
    pub dkim: Option<DkimInput>,
    /// How much this mailbox may send (`docs/sending-rules.md`), e.g.
    /// `[{"max": 2000, "per": "P1D"}, {"max": 30, "per": "PT1M"}]`.
    #[serde(default)]
    #[schema(max_items = 5)]
    pub limits: Vec<Limit>,
    /// The IANA zone its `P1D` limit rolls over in, at midnight; default UTC.
    #[serde(default)]
    #[schema(format = "timezone")]
    pub timezone: Option<String>,
}

/// A DKIM key: the selector (`<selector>._domainkey.<domain>` holds the public key) and the
/// private key: RSA in PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`), or an Ed25519 seed in
/// base64.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DkimInput {
    #[schema(format = "dkim-selector")]
    pub selector: String,
    #[schema(format = "dkim-key")]
    pub private_key: String,
}

/// `PATCH /v1/mailboxes/{id}`: a field left out keeps its value, `null` clears it.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMailbox {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "display-name")]
    pub display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "mailbox")]
    pub reply_to: Option<Option<String>>,
    /// A new relay (clears the stored password unless the URL or `smtp_password` gives one).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "smtp-url")]
    pub smtp_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub smtp_password: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DkimInput>)]
    pub dkim: Option<Option<DkimInput>>,
    /// The mailbox's sending limits, replaced as a whole (`[]` removes them).
    #[serde(default)]
    #[schema(max_items = 5)]
    pub limits: Option<Vec<Limit>>,
    #[serde(default)]
    #[schema(format = "timezone")]
    pub timezone: Option<String>,
}

/// A sender mailbox, without its secrets.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Mailbox {
    pub id: Uuid,
    pub address: String,
    pub display_name: Option<String>,
    pub reply_to: Option<String>,
    /// The relay, without its password; `null`: the global relay.
    pub smtp_url: Option<String>,
    pub has_smtp_password: bool,
    /// Set when mail from this mailbox is DKIM-signed.
    pub dkim_selector: Option<String>,
    #[sqlx(json)]
    pub limits: Vec<Limit>,
    /// The zone its `P1D` limit rolls over in.
    pub timezone: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MailboxList {
    pub mailboxes: Vec<Mailbox>,
}
