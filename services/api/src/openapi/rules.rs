//! The rules the handlers check by hand, stated in the document: cases a component refuses
//! (either/or bodies, a relay password without a user, a blank subject), the step shapes
//! (`NewStep`, `FirstStep`, `AddStep`), and the events' lead that states no syntax. Each names
//! the component it changes and fails when the derive no longer has it.

use serde_json::{Value, json};

use super::syntax::syntax;

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
pub(super) fn either_or(schemas: &mut serde_json::Map<String, Value>) -> Result<(), String> {
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
pub(super) fn event_lead(schemas: &mut serde_json::Map<String, Value>) -> Result<(), String> {
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
pub(super) fn new_step(doc: &mut Value) -> Result<(), String> {
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
        ("RenderPreviewRequest", "StepInput", "FirstStepInput"),
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
