//! The OpenAPI document `/openapi.json` serves: which operations it lists, the error answers
//! every route shares, the links a stateful client (schemathesis) follows from a created
//! object to the operations on it, and the constraints the derive cannot state. It never
//! handles a request beyond serving the document.
//!
//! Why a pass over the JSON after the derive: utoipa's attributes take string literals only and
//! cannot say "either this field or that one" or "no other key" inside a tagged enum's variant.
//! So the code marks a field with a format of our own (`#[schema(format = "address")]`) and
//! [`SYNTAX`] turns each into the one pattern it stands for; [`either_or`] and [`new_step`]
//! state what the handlers check by hand. Each patch names the component it changes, and a unit
//! test holds that every one of them still exists.

use std::sync::LazyLock;

use axum::{http::header, response::IntoResponse};
use serde_json::{Value, json};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{
    audit, control, domain_limits, edit, enrollments, inbound, keys, mailboxes, outbox, providers,
    sends, sequences, steps, suppressions, unsubscribe, webhooks, workspace,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Pulse", description = "Multi-step email sequences you can take control of."),
    paths(
        sequences::create, sequences::list, sequences::stats, sequences::get_one, edit::edit, edit::versions,
        steps::patch, steps::add, steps::delete, steps::order,
        control::pause, control::resume, control::resume_preview, control::delete,
        control::cancel, control::cancel_many, control::reenroll, audit::audit_list,
        enrollments::create, enrollments::list, enrollments::get_one,
        sends::search, sends::resolve, sends::resolve_many, sends::for_sequence, sends::for_enrollment,
        workspace::get_one, workspace::patch, outbox::list,
        mailboxes::create, mailboxes::list, mailboxes::get_one, mailboxes::edit, mailboxes::delete,
        domain_limits::list, domain_limits::set, domain_limits::remove,
        suppressions::add, suppressions::list, suppressions::lift,
        inbound::list, inbound::get_one, providers::ses, providers::sendgrid,
        unsubscribe::confirm_page, unsubscribe::one_click,
        keys::create, keys::list, keys::revoke, audit::audit_log, keys::create_workspace,
        keys::list_workspaces,
        webhooks::create, webhooks::list, webhooks::get_one, webhooks::patch, webhooks::delete,
        webhooks::test, webhooks::deliveries, webhooks::replay,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

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
const MULTILINE: &str = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$";

/// The formats of our own that fields are marked with, and what each stands for. Each pattern
/// describes values the API accepts (a subset where the API takes more, as named above).
fn syntax(format: &str) -> Option<Value> {
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
fn expand_formats(v: &mut Value) {
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
fn close_tagged_variants(v: &mut Value) {
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

/// A string that is empty or only white space.
const BLANK: &str = r"^\s*$";

/// Adds `extra`'s keywords to the schema of `component`'s `property`.
fn constrain(
    schemas: &mut serde_json::Map<String, Value>,
    component: &str,
    property: &str,
    extra: Value,
) -> Result<(), String> {
    let schema = schemas
        .get_mut(component)
        .and_then(|s| s.pointer_mut(&format!("/properties/{property}")))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{component} has no {property}"))?;
    if let Value::Object(extra) = extra {
        schema.extend(extra);
    }
    Ok(())
}

/// Adds a case `component` refuses: its `not` is `anyOf` the refused cases. Stated so (rather
/// than as `oneOf` branches) because client generators read a component's properties and skip
/// `not`, while a validator or a fuzzer reads both.
fn refuse(
    schemas: &mut serde_json::Map<String, Value>,
    component: &str,
    case: Value,
) -> Result<(), String> {
    let schema = schemas
        .get_mut(component)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("no component {component}"))?;
    let cases = schema
        .entry("not")
        .or_insert_with(|| json!({"anyOf": []}))
        .pointer_mut("/anyOf")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("{component}'s not is not anyOf"))?;
    cases.push(case);
    Ok(())
}

/// What the handlers check by hand on some bodies: one of two fields, a `true` that confirms.
fn either_or(schemas: &mut serde_json::Map<String, Value>) -> Result<(), String> {
    // Exactly one of `a` (an array or string) and `b`: refused when neither is given (`a` null
    // or absent, `b` not `true`) and when both are.
    let one_of =
        |schemas: &mut serde_json::Map<String, Value>, name, a: &str, a_type, b: &str, b_given| {
            refuse(
                schemas,
                name,
                json!({"properties": {a: {"type": "null"}, b: {"not": b_given}}}),
            )?;
            refuse(
                schemas,
                name,
                json!({"required": [a, b], "properties": {a: {"type": a_type}, b: b_given}}),
            )
        };
    constrain(
        schemas,
        "ReenrollRequest",
        "lead_emails",
        json!({"minItems": 1, "maxItems": 10_000,
        "items": {"type": "string", "format": "address"}}),
    )?;
    one_of(
        schemas,
        "ReenrollRequest",
        "lead_emails",
        "array",
        "all_not_active",
        json!({"const": true}),
    )?;
    constrain(
        schemas,
        "CancelManyRequest",
        "enrollment_ids",
        json!({"minItems": 1, "maxItems": 10_000}),
    )?;
    one_of(
        schemas,
        "CancelManyRequest",
        "enrollment_ids",
        "array",
        "all_active",
        json!({"const": true}),
    )?;
    constrain(
        schemas,
        "SenderIdentity",
        "from",
        json!({"format": "mailbox"}),
    )?;
    constrain(
        schemas,
        "SenderIdentity",
        "mailbox_ids",
        json!({"minItems": 1, "uniqueItems": true}),
    )?;
    one_of(
        schemas,
        "SenderIdentity",
        "from",
        "string",
        "mailbox_ids",
        json!({"type": "array"}),
    )?;
    constrain(
        schemas,
        "SuppressionInput",
        "email",
        json!({"format": "address"}),
    )?;
    constrain(
        schemas,
        "SuppressionInput",
        "domain",
        json!({"format": "domain"}),
    )?;
    one_of(
        schemas,
        "SuppressionInput",
        "email",
        "string",
        "domain",
        json!({"type": "string"}),
    )?;
    // A step's subject may be blank only on a threaded step (it is then `Re: ` and the first);
    // an edit of one step meets the stored `thread` (a conflict, `409`, when it does not fit).
    refuse(
        schemas,
        "StepInput",
        json!({"required": ["subject"],
        "properties": {"subject": {"pattern": BLANK}, "thread": {"not": {"const": true}}}}),
    )?;
    // A step is listed once in a new order (the derive has no `uniqueItems`).
    schemas
        .get_mut("StepOrder")
        .and_then(|s| s.pointer_mut("/properties/step_ids"))
        .and_then(Value::as_object_mut)
        .ok_or("StepOrder has no step_ids")?
        .insert("uniqueItems".into(), Value::Bool(true));
    // A lead's attributes (the derive drops a format on an object).
    let attributes = schemas
        .get_mut("LeadInput")
        .and_then(|s| s.pointer_mut("/properties/attributes"))
        .and_then(Value::as_object_mut)
        .ok_or("LeadInput has no attributes")?;
    if let Some(Value::Object(constraints)) = syntax("attributes") {
        attributes.extend(constraints);
    }
    // A relay password needs a relay URL naming the user it is for: refused with none (in a new
    // mailbox) or `null` (an edit clearing the URL), and with a URL that names no user. A
    // password alone in an edit goes with the stored URL (`409` when there is none).
    let password = json!({"type": "string"});
    let no_user = json!({"type": "string", "not": {"pattern": "@"}});
    refuse(
        schemas,
        "CreateMailbox",
        json!({"required": ["smtp_password"],
        "properties": {"smtp_password": password, "smtp_url": {"type": "null"}}}),
    )?;
    for name in ["CreateMailbox", "EditMailbox"] {
        refuse(
            schemas,
            name,
            json!({"required": ["smtp_password", "smtp_url"],
            "properties": {"smtp_password": password, "smtp_url": no_user}}),
        )?;
    }
    refuse(
        schemas,
        "EditMailbox",
        json!({"required": ["smtp_password", "smtp_url"],
        "properties": {"smtp_password": password, "smtp_url": {"type": "null"}}}),
    )?;
    // A bulk resolution names a sequence, a range or both, and is confirmed with
    // `"confirm": true`.
    refuse(
        schemas,
        "ResolveMany",
        json!({"properties": {
        "sequence_id": {"type": "null"}, "since": {"type": "null"}, "until": {"type": "null"}}}),
    )?;
    let resolve = schemas
        .get_mut("ResolveMany")
        .ok_or("no component ResolveMany")?;
    resolve["properties"]["confirm"] =
        json!({"type": "boolean", "const": true, "description": "Must be `true`."});
    match resolve.get_mut("required").and_then(Value::as_array_mut) {
        Some(required) => required.push(json!("confirm")),
        None => resolve["required"] = json!(["confirm"]),
    }
    Ok(())
}

/// `/v1/events` answers a bad lead per event, with `200`: its lead (`EventLead`) is `LeadInput`
/// with no syntax stated, so that a lead the document calls invalid is not a request the
/// document calls invalid. `POST /v1/sequences/{id}/enrollments` refuses it with `422`.
fn event_lead(schemas: &mut serde_json::Map<String, Value>) -> Result<(), String> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map
                    .get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f.starts_with("timezone") || syntax(f).is_some())
                {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut lead = schemas.get("LeadInput").cloned().ok_or("no LeadInput")?;
    strip(&mut lead);
    lead["description"] = json!("A lead in an event: checked per event (see `EventResult`).");
    schemas.insert("EventLead".into(), lead);
    let event = schemas
        .get_mut("TriggerEvent")
        .and_then(|s| s.pointer_mut("/properties/lead"))
        .ok_or("TriggerEvent has no lead")?;
    *event = json!({"$ref": "#/components/schemas/EventLead"});
    Ok(())
}

/// A step being made has no `id` yet (one is given to it): `NewStep` is `StepInput` without it,
/// the body of `POST /v1/sequences/{id}/steps` and the steps of `POST /v1/sequences`.
fn new_step(doc: &mut Value) -> Result<(), String> {
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or("no components")?;
    let mut step = schemas.get("StepInput").cloned().ok_or("no StepInput")?;
    step["properties"]
        .as_object_mut()
        .and_then(|p| p.remove("id"))
        .ok_or("StepInput has no id")?;
    step["description"] = json!("A new step: a `StepInput` without `id`.");
    schemas.insert("NewStep".into(), step.clone());
    // The first step's subject is never blank, threaded or not; a step added at position 1 is
    // the first.
    let blank = json!({"required": ["subject"], "properties": {"subject": {"pattern": BLANK}}});
    let mut first = step.clone();
    first["description"] = json!("The first step: its subject is never blank.");
    schemas.insert("FirstStep".into(), first);
    refuse(schemas, "FirstStep", blank.clone())?;
    let mut first_kept = schemas.get("StepInput").cloned().ok_or("no StepInput")?;
    first_kept["description"] = json!("The first step of an edit: its subject is never blank.");
    schemas.insert("FirstStepInput".into(), first_kept);
    refuse(schemas, "FirstStepInput", blank)?;
    step["description"] = json!("A step to add: a `NewStep`; at `position` 1 it is the first.");
    schemas.insert("AddStep".into(), step);
    refuse(
        schemas,
        "AddStep",
        json!({"required": ["position", "subject"],
        "properties": {"position": {"const": 1}, "subject": {"pattern": BLANK}}}),
    )?;
    let schema_ref = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    for (component, items, first) in [
        ("CreateSequence", "NewStep", "FirstStep"),
        ("EditSequence", "StepInput", "FirstStepInput"),
    ] {
        let steps = schemas
            .get_mut(component)
            .and_then(|s| s.pointer_mut("/properties/steps"))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{component} has no steps"))?;
        steps.insert("items".into(), schema_ref(items));
        steps.insert("prefixItems".into(), json!([schema_ref(first)]));
    }
    let add = doc
        .pointer_mut(
            "/paths/~1v1~1sequences~1{id}~1steps/post/requestBody/content/application~1json/schema",
        )
        .ok_or("POST /v1/sequences/{id}/steps has no body")?;
    *add = schema_ref("AddStep");
    Ok(())
}

/// One answer's links: from `method from`'s `status` answer to every operation whose path starts
/// with `under`, each parameter it takes given by its expression.
struct Link {
    from: &'static str,
    method: &'static str,
    status: &'static str,
    under: &'static str,
    params: &'static [(&'static str, &'static str)],
}

/// The OpenAPI links: from an answer that names an object (a created sequence, a listed
/// suppression) to the operations that take it, so a stateful client acts on real objects.
fn links(doc: &mut Value) -> Result<(), String> {
    let table = [
        Link {
            from: "/v1/sequences",
            method: "post",
            status: "201",
            under: "/v1/sequences/{id}",
            params: &[
                ("id", "$response.body#/id"),
                ("step_id", "$response.body#/steps/0/id"),
            ],
        },
        Link {
            from: "/v1/sequences/{id}/enrollments",
            method: "post",
            status: "201",
            under: "/v1/enrollments/{id}",
            params: &[("id", "$response.body#/id")],
        },
        Link {
            from: "/v1/webhooks",
            method: "post",
            status: "201",
            under: "/v1/webhooks/{id}",
            params: &[("id", "$response.body#/id")],
        },
        Link {
            from: "/v1/webhooks/{id}/test",
            method: "post",
            status: "202",
            under: "/v1/webhooks/{id}/deliveries/",
            params: &[
                ("id", "$request.path.id"),
                ("delivery", "$response.body#/id"),
            ],
        },
        Link {
            from: "/v1/mailboxes",
            method: "post",
            status: "201",
            under: "/v1/mailboxes/{id}",
            params: &[("id", "$response.body#/id")],
        },
        Link {
            from: "/v1/keys",
            method: "post",
            status: "201",
            under: "/v1/keys/{id}",
            params: &[("id", "$response.body#/id")],
        },
        Link {
            from: "/v1/suppressions",
            method: "get",
            status: "200",
            under: "/v1/suppressions/{value}",
            params: &[("value", "$response.body#/suppressions/0/value")],
        },
        Link {
            from: "/v1/inbound",
            method: "get",
            status: "200",
            under: "/v1/inbound/{id}",
            params: &[("id", "$response.body#/messages/0/id")],
        },
        Link {
            from: "/v1/sends",
            method: "get",
            status: "200",
            under: "/v1/sends/{key}",
            params: &[("key", "$response.body#/sends/0/idempotency_key")],
        },
    ];
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("no paths")?;
    let mut found = Vec::new();
    for Link {
        from,
        method,
        status,
        under: prefix,
        params,
    } in table
    {
        let mut links = serde_json::Map::new();
        for (path, item) in paths.iter().filter(|(p, _)| p.starts_with(prefix)) {
            for (target, op) in item.as_object().into_iter().flatten() {
                let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                    continue;
                };
                let takes: serde_json::Map<String, Value> = params
                    .iter()
                    .filter(|(name, _)| path.contains(&format!("{{{name}}}")))
                    .map(|(name, expr)| ((*name).to_owned(), json!(expr)))
                    .collect();
                let pointer = path.replace('~', "~0").replace('/', "~1");
                links.insert(
                    id.to_owned(),
                    json!({"operationRef": format!("#/paths/{pointer}/{target}"), "parameters": takes}),
                );
            }
        }
        if links.is_empty() {
            return Err(format!("no operation under {prefix} to link to"));
        }
        found.push((from, method, status, links));
    }
    for (from, method, status, links) in found {
        let answer = doc
            .get_mut("paths")
            .and_then(|p| p.get_mut(from))
            .and_then(|i| i.get_mut(method))
            .and_then(|o| o.pointer_mut(&format!("/responses/{status}")))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{method} {from} has no {status} answer"))?;
        answer.insert("links".into(), Value::Object(links));
    }
    Ok(())
}

/// Adds the error answers every route can give, where a route's own annotation left them out:
/// 400 (a body or parameter that cannot be read), 422 (a value that is wrong) where the route
/// takes input, 401 and 403 (no key, or outside its scope) where it needs a key, 404 where its
/// path names something. Each is the one error body.
fn standard_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        ContentBuilder, Ref, RefOr, ResponseBuilder, path::Operation, path::ParameterIn,
    };
    let error = |why: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(why)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    let add = |op: &mut Operation| {
        let params = op.parameters.as_deref().unwrap_or_default();
        let in_path = params
            .iter()
            .any(|p| matches!(p.parameter_in, ParameterIn::Path));
        let takes_input = op.request_body.is_some() || !params.is_empty();
        let keyed = op.security.as_ref().is_some_and(|s| !s.is_empty());
        let mut wanted = vec![("400", "The body or a parameter could not be read")];
        if takes_input {
            wanted.push(("422", "A value is wrong; `field` names it"));
        }
        if keyed {
            wanted.push(("401", "No API key, or an unknown or revoked one"));
            wanted.push(("403", "Outside the key's scope"));
        }
        // A path's id, or a query parameter naming one (`sequence_id`), may name nothing.
        if in_path || params.iter().any(|p| p.name.ends_with("_id")) {
            wanted.push(("404", "Not found"));
        }
        for (code, why) in wanted {
            op.responses
                .responses
                .entry(code.to_owned())
                .or_insert_with(|| error(why));
        }
    };
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add(op);
        }
    }
}

/// Builds the document: the derive, then the passes above.
fn build() -> Result<Value, String> {
    let mut typed = ApiDoc::openapi();
    typed.merge(pulse_ingest::IngestApi::openapi());
    standard_errors(&mut typed);
    let mut doc = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or("no components")?;
    event_lead(schemas)?;
    either_or(schemas)?;
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
    // After `either_or`: a new step keeps `StepInput`'s rule on an empty subject.
    new_step(&mut doc)?;
    close_tagged_variants(&mut doc);
    expand_formats(&mut doc);
    links(&mut doc)?;
    Ok(doc)
}

/// The OpenAPI document of every route Pulse serves, built once. A patch that no longer fits
/// the derived document is a programming error the unit test below catches; served, it answers
/// the derived document with the error logged rather than no document.
pub fn openapi() -> &'static Value {
    static DOC: LazyLock<Value> = LazyLock::new(|| {
        build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document's patches do not fit; serving it unpatched");
            let mut typed = ApiDoc::openapi();
            typed.merge(pulse_ingest::IngestApi::openapi());
            serde_json::to_value(&typed).unwrap_or_default()
        })
    });
    &DOC
}

pub(crate) async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(openapi()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_patch_fits_the_derived_document() {
        let doc = build().expect("every patch finds its component");
        let text = doc.to_string();
        for ours in [
            "\"address\"",
            "\"domain\"",
            "\"address-or-domain\"",
            "\"dkim-key\"",
            "\"endpoint-url\"",
            "\"dkim-selector\"",
            "\"label\"",
            "\"clock\"",
            "\"weekday\"",
            "\"html\"",
            "\"window\"",
            "\"text\"",
            "\"multiline\"",
            "\"timezone\"",
            "\"timezone-or-empty\"",
            "\"webhook-event\"",
        ] {
            assert!(
                !text.contains(&format!("\"format\":{ours}")),
                "{ours} left unexpanded"
            );
        }
        assert!(
            doc.pointer("/components/schemas/NewStep/properties/id")
                .is_none()
        );
        assert_eq!(
            doc.pointer(
                "/paths/~1v1~1sequences/post/responses/201/links/get_sequence/parameters/id"
            ),
            Some(&json!("$response.body#/id"))
        );
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = build().expect("document");
        let mut ids = std::collections::HashSet::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("item").values() {
                let id = op["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            }
        }
    }
}
