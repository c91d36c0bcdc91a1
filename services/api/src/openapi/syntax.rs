//! The syntax the document states for the fields the API checks: the formats of our own that
//! fields are marked with (`#[schema(format = "address")]`) and the pattern, enum or lengths
//! each stands for, the `TimeZone` and attribute components, and closed tagged variants. Each
//! pattern describes values the API accepts (a subset where the API takes more, as named).
//! It states; it never checks a value (the validators in `pulse_shared` do).

use serde_json::{Value, json};

/// A domain name as the API takes it: ASCII labels of letters, digits and inner hyphens, at
/// most 63 characters each, ending in an alphabetic top-level label (an internationalized name
/// in its `xn--` form is accepted by the API too, but not described here).
const DOMAIN: &str = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}";
/// A host in a URL: a domain name of at most 223 characters (6 labels of 32 and a top-level
/// label), so that the pattern cannot describe one longer than DNS allows.
const HOST: &str = r"[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?){0,5}\.[A-Za-z]{2,24}";
/// A host name of one label (`localhost`), starting with a letter (a number is an IPv4 address).
const LABEL: &str = r"[A-Za-z]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?";
/// A display name as described here: letters, digits and inner spaces.
const NAME: &str = "[A-Za-z0-9]([A-Za-z0-9 ]{0,62}[A-Za-z0-9])?";
/// An address's local part as described here: a dot-atom of at most 64 characters (the API
/// takes every dot-atom, and UTF-8 ones).
const LOCAL: &str = r"[A-Za-z0-9_%+-]{1,32}(\.[A-Za-z0-9_%+-]{1,31})?";

/// `validate::text`: no control character.
const TEXT: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
/// `validate::multiline`: no control character but tab, newline and carriage return.
pub(super) const MULTILINE: &str = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$";

/// The formats of our own that fields are marked with, and what each stands for. Each pattern
/// describes values the API accepts (a subset where the API takes more, as named above).
pub(super) fn syntax(format: &str) -> Option<Value> {
    Some(match format {
        "address" => json!({"pattern": format!("^{LOCAL}@{DOMAIN}$"), "maxLength": 254}),
        // `validate::domain`: an address at it must fit in 254 bytes.
        "domain" => json!({"pattern": format!("^{DOMAIN}$"), "maxLength": 252}),
        "address-or-domain" => {
            json!({"pattern": format!("^({LOCAL}@)?{DOMAIN}$"), "maxLength": 252})
        }
        // `Name <address>` or a bare address (`validate::mailbox` takes any RFC 5322 mailbox;
        // the API answers the name quoted, as lettre writes it).
        "mailbox" => json!({
            "pattern": format!("^({LOCAL}@{DOMAIN}|(\"{NAME}\"|{NAME}) <{LOCAL}@{DOMAIN}>)$"),
            "maxLength": 254,
        }),
        // `validate::text` and `validate::multiline`: no control character (a line of text), or
        // none but tab, newline and carriage return. Their limits in bytes are in the
        // descriptions: a JSON Schema length counts characters.
        // `mailboxes::check_name`: text that lettre can put in a From header as a quoted name.
        "display-name" => json!({"pattern": r"^[^\x00-\x1f\x7f-\x9f\\]*$"}),
        // `limits::Limit::per`: `P1D`, or a sliding window from `PT1S` to `P7D` (a subset of
        // the ISO-8601 forms the API reads).
        "limit-period" => json!({"pattern": "^P([1-7]D|T[1-9][0-9]{0,2}[SM]|T[1-9][0-9]?H)$"}),
        // `timing::parse_iso_duration`: weeks, days, hours, minutes and seconds, at most ten
        // years (a subset of the forms it reads).
        "duration" => json!({
            "pattern": "^P([1-9][0-9]?W|[1-9][0-9]{0,2}D|T[1-9][0-9]{0,3}[HMS]|[1-9][0-9]?DT[1-9][0-9]?H)$"
        }),
        // `limits::check_lateness`: one minute to a year.
        "lateness" => json!({"pattern": "^P([1-9][0-9]?D|T[1-9][0-9]{0,2}[MH])$"}),
        // `mailbox::relay`: `smtp://` or `smtps://`, a host, an optional port and user (a
        // subset: the API also reads a password and `?tls=` in the URL).
        "smtp-url" => json!({
            "pattern": format!("^smtps?://([A-Za-z0-9._-]{{1,64}}@)?{HOST}(:[1-9][0-9]{{0,3}})?$"),
            "maxLength": 2000,
        }),
        // `validate::attributes`: names are lines of text, every string in a value is text
        // that may span lines (their sizes are in the description).
        "attributes" => json!({
            "maxProperties": 100,
            "propertyNames": {"pattern": TEXT},
            "additionalProperties": {"$ref": "#/components/schemas/AttributeValue"},
        }),
        "text" => json!({"pattern": TEXT}),
        // `window::SendWindow`: a time of day and a day of the week.
        "clock" => json!({"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}),
        "weekday" => json!({"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}),
        // A line of text that is not blank (a trigger's tag or list).
        "label" => {
            json!({"pattern": r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"})
        }
        "multiline" => json!({"pattern": MULTILINE}),
        // An HTML part: text that may span lines and is not blank.
        "html" => {
            json!({"pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"})
        }
        // `guardrails::RepeatGuard::within`: one minute to 30 days.
        "window" => {
            json!({"pattern": "^P([1-9]|[12][0-9]|30)D$|^PT([1-9][0-9]{0,2}M|[1-9][0-9]{0,1}H)$"})
        }
        "dkim-selector" => {
            json!({"pattern": r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*$", "maxLength": 200})
        }
        // The base64 of an Ed25519 seed (32 bytes: the last character before `=` carries 4
        // bits, so it is one of 16), or an RSA key in PKCS#1 PEM, whose validity no pattern
        // can state: the contract run sends a real key for it (deploy/local/contract_hooks.py).
        "dkim-key" => json!({
            "pattern": r"^([A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=|-----BEGIN RSA PRIVATE KEY-----\n[A-Za-z0-9+/=\n]{64,8000}\n-----END RSA PRIVATE KEY-----\n?)$"
        }),
        // `webhooks::check_url`: http(s), a host; literal addresses are checked against the
        // private ranges, so the document describes names only.
        "endpoint-url" => json!({
            "pattern": format!(r"^https?://({HOST}|{LABEL})(:[1-9][0-9]{{0,3}})?(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?$"),
            "maxLength": 2000,
        }),
        "webhook-event" => json!({"enum": pulse_shared::webhooks::EVENTS}),
        _ => return None,
    })
}

/// Replaces each format of ours with its constraints, wherever a schema carries one. A time
/// zone becomes a reference to `TimeZone`, the names `validate::timezone` accepts.
pub(super) fn expand_formats(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let format = map.get("format").and_then(Value::as_str).map(str::to_owned);
            if let Some(zone @ ("timezone" | "timezone-or-empty")) = format.as_deref() {
                map.remove("format");
                let nullable = map
                    .remove("type")
                    .is_some_and(|t| t.as_array().is_some_and(|t| t.contains(&json!("null"))));
                let mut any = vec![json!({"$ref": "#/components/schemas/TimeZone"})];
                // A lead's zone given empty clears it, as `null` does.
                if zone == "timezone-or-empty" {
                    any.push(json!({"type": "string", "const": ""}));
                }
                if nullable {
                    any.push(json!({"type": "null"}));
                }
                if any.len() > 1 {
                    map.insert("anyOf".into(), Value::Array(any));
                } else {
                    map.insert("allOf".into(), Value::Array(any));
                }
            } else if let Some(Value::Object(constraints)) = format.as_deref().and_then(syntax) {
                map.remove("format");
                map.extend(constraints);
            }
            map.values_mut().for_each(expand_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(expand_formats),
        _ => {}
    }
}

/// The variants of an internally tagged enum (`{"type": "delay", "delay": "P2D"}`) take no other
/// key: serde denies unknown fields there, but the derive leaves `additionalProperties` open.
pub(super) fn close_tagged_variants(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(variants)) = map.get_mut("oneOf") {
                for variant in variants {
                    let tagged = variant
                        .pointer("/properties/type/enum")
                        .and_then(Value::as_array)
                        .is_some_and(|e| e.len() == 1);
                    if let (true, Some(obj)) = (tagged, variant.as_object_mut()) {
                        obj.insert("additionalProperties".into(), Value::Bool(false));
                    }
                }
            }
            map.values_mut().for_each(close_tagged_variants);
        }
        Value::Array(items) => items.iter_mut().for_each(close_tagged_variants),
        _ => {}
    }
}

/// The components the formats refer to: `TimeZone`, and a lead attribute's value.
pub(super) fn components(schemas: &mut serde_json::Map<String, Value>) {
    // The names as one pattern, not an enum: client generators make an identifier of each
    // member, and `GMT0`, `GMT+0` and `GMT-0` make the same one.
    let zones: Vec<String> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|z| z.name().replace('+', r"\+").replace('.', r"\."))
        .collect();
    schemas.insert(
        "TimeZone".into(),
        json!({"type": "string", "description": "An IANA time zone name, e.g. `Europe/Paris`.",
               "pattern": format!("^({})$", zones.join("|"))}),
    );
    // Two levels deep, not recursive: client generators cannot build a recursive union. The
    // API takes any depth; deeper values are not described here.
    let scalar = json!([
        {"type": "string", "pattern": MULTILINE},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]);
    schemas.insert(
        "AttributeScalar".into(),
        json!({"description": "A string with no control character but tab, newline and carriage return, a number, a boolean or null.",
               "anyOf": scalar}),
    );
    let scalar_ref = json!({"$ref": "#/components/schemas/AttributeScalar"});
    let mut value = scalar.as_array().cloned().unwrap_or_default();
    value.push(json!({"type": "array", "items": scalar_ref}));
    value.push(
        json!({"type": "object", "propertyNames": {"pattern": MULTILINE},
                      "additionalProperties": scalar_ref}),
    );
    schemas.insert(
        "AttributeValue".into(),
        json!({"description": "A lead attribute's value: a scalar, or a list or an object of them.",
               "anyOf": value}),
    );
}
