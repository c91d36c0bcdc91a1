//! Outbound webhooks: owns the `webhooks` and `webhook_messages` tables' rules: which events
//! exist, writing an event for every subscribed endpoint in the caller's transaction
//! ([`emit`], the outbox), the Standard Webhooks signature ([`sign`]), and the guard against
//! endpoints on private networks ([`check_address`]). Delivery is the webhooks role's
//! (`services/pulse/src/webhooks.rs`); the routes are the api's (`services/api/src/webhooks.rs`).
//!
//! Signing is hand-written because it is three lines over `hmac` and the spec is that small
//! (<https://www.standardwebhooks.com>): `v1,` and the base64 HMAC-SHA256, keyed with the
//! secret's bytes, of `{webhook-id}.{webhook-timestamp}.{body}`. The test verifies it with the
//! `standardwebhooks` PyPI package.

use std::net::IpAddr;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{db::StoreError, domain::validate};

/// Every event an endpoint can subscribe to, and who writes it (`webhook.test` is sent by
/// `POST …/test` only):
/// * `sequence.*`: [`crate::audit::record`], through [`emit`];
/// * `lead.suppressed`: the suppression insert's own statement (`crate::suppression::add`);
/// * `send.*`, `enrollment.*`, `lead.replied`, `lead.bounced`: triggers on `send_ledger`,
///   `enrollments` and `inbound_messages` (migrations `0026_webhook_events.sql` and
///   `0028_statement_webhook_triggers.sql`), which fire in whichever statement makes the change,
///   batched or not, so every path writes its event. Updates of `send_ledger` and every change
///   of `enrollments` are seen once per statement (transition tables): with no endpoint enabled
///   the cost is one probe of `webhooks` per statement; a ledger row inserted already settled
///   and a processed inbound message fire a row trigger whose `WHEN` clause is judged in C.
///
/// All of them are wrapped by the database function `pulse_webhook_envelope` (through
/// `pulse_webhook_emit`, or directly in the statement triggers): one envelope.
pub const EVENTS: [&str; 13] = [
    "send.sent",
    "send.failed",
    "send.unknown",
    "enrollment.created",
    "enrollment.ended",
    "sequence.paused",
    "sequence.resumed",
    "sequence.edited",
    "sequence.deleted",
    "lead.suppressed",
    "lead.replied",
    "lead.bounced",
    "webhook.test",
];

/// Writes `event` with `data` for every enabled endpoint of `workspace` subscribed to it, in the
/// caller's transaction: it is delivered if and only if the change commits. Returns how many.
pub async fn emit(
    conn: &mut PgConnection,
    workspace: Uuid,
    event: &str,
    data: Value,
) -> Result<u64, StoreError> {
    let n: i32 = sqlx::query_scalar("SELECT pulse_webhook_emit($1, $2, $3)")
        .bind(workspace)
        .bind(event)
        .bind(data)
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The data of a `sequence.*` event.
pub fn sequence_data(workspace: Uuid, sequence: Uuid, actor: &str, more: Value) -> Value {
    let mut data = json!({"workspace_id": workspace, "sequence_id": sequence, "actor": actor});
    if let (Some(d), Value::Object(more)) = (data.as_object_mut(), more) {
        d.extend(more);
    }
    data
}

/// A new signing secret: `whsec_` and the base64 of 32 random bytes (two v4 UUIDs).
pub fn new_secret() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(Uuid::new_v4().as_bytes());
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header for a message: `v1,<base64 HMAC-SHA256>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("the secret: {e}"))?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Refuses an address on a private network: loopback, private, link-local, unique-local,
/// unspecified, multicast, documentation and shared ranges. `allow_private`
/// (`PULSE_WEBHOOKS_ALLOW_PRIVATE`, for development and tests) lets them through.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let private = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| check_address(IpAddr::V4(v4), false).is_err())
        }
    };
    if private {
        Err(format!("{ip} is on a private network"))
    } else {
        Ok(())
    }
}

/// Checks an endpoint URL as given: `https://` or `http://`, with a host; a literal address must
/// pass [`check_address`]. A name is a host name (`validate::host`), and a domain name when it
/// has a dot; it is resolved, and checked, at each delivery (`localhost` is saved, and refused
/// there).
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    if raw.chars().count() > 2000 {
        return Err("longer than 2000 characters".into());
    }
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err("must be https:// (or http://)".into());
    }
    match url.host() {
        None => Err("has no host".into()),
        Some(url::Host::Ipv4(ip)) => check_address(IpAddr::V4(ip), allow_private).map(|_| url),
        Some(url::Host::Ipv6(ip)) => check_address(IpAddr::V6(ip), allow_private).map(|_| url),
        Some(url::Host::Domain(name)) => {
            validate::host(name)?;
            if name.contains('.') {
                validate::domain(name)?;
            }
            Ok(url)
        }
    }
}

/// How long before the next try after `attempts` failed ones: `base` doubled each time, at most
/// an hour.
pub fn backoff(base: std::time::Duration, attempts: i32) -> std::time::Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    base.saturating_mul(1 << exp)
        .min(std::time::Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example of the Standard Webhooks spec's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(new_secret().starts_with("whsec_"));
    }

    #[test]
    fn private_addresses_are_refused_unless_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(check_address(ip, false).is_err(), "{ip}");
            assert!(check_address(ip, true).is_ok());
        }
        assert!(check_address("93.184.216.34".parse().unwrap(), false).is_ok());
        assert!(check_url("ftp://example.com", false).is_err());
        assert!(check_url("http://127.0.0.1:9/x", false).is_err());
        assert!(check_url("https://hooks.example.com/pulse", false).is_ok());
        // A host is a domain name: no `*`, no numeric last label; a single label only where
        // private endpoints are allowed.
        assert!(check_url("http://hooks.example.co*", false).is_err());
        assert!(check_url("http://hooks.example.5", false).is_err());
        assert!(check_url("http://localhost:8080/x", false).is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let s = std::time::Duration::from_secs;
        assert_eq!(backoff(s(5), 1), s(5));
        assert_eq!(backoff(s(5), 3), s(20));
        assert_eq!(backoff(s(5), 30), s(3600));
    }
}
