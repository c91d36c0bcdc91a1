//! `pulse sequences create|apply -f FILE`: a sequence kept in a file (JSON or YAML: the body
//! `POST /v1/sequences` takes). `apply` creates it when no live sequence has its name; else it
//! edits that one to match the file: every field the file gives, and its steps matched to the
//! sequence's in order (a step with an `id` keeps that step). It first prints what would change;
//! a structural change (steps added, deleted or moved, a timing, the triggers, the window or
//! the time zone) is made only with `--yes`, content changes at once.

use std::path::Path;

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Client, Failure, call, encode, fail};

/// The fields of a sequence file that an edit takes, besides `steps`.
const FIELDS: [&str; 11] = [
    "name",
    "timezone",
    "sender",
    "triggers",
    "send_window",
    "end_date",
    "max_sends_per_minute",
    "limits",
    "guardrails",
    "priority",
    "exit_on_reply",
];

/// Changing these can move or end enrollments in flight: `apply` asks for `--yes`.
const STRUCTURAL: [&str; 4] = ["triggers", "send_window", "timezone", "end_date"];

/// A JSON or YAML file (`-`: standard input; YAML when it ends in `.yaml` or `.yml`, else JSON,
/// else YAML); a usage error when unreadable.
pub(super) fn read(path: &Path) -> Result<Value, Failure> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| fail(2, format!("cannot read {}: {e}", path.display())))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let parsed = if yaml {
        serde_norway::from_str::<Value>(&text).map_err(|e| e.to_string())
    } else {
        serde_json::from_str::<Value>(&text)
            .or_else(|json| serde_norway::from_str::<Value>(&text).map_err(|_| json.to_string()))
            .map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        fail(
            2,
            format!("{} is neither JSON nor YAML: {e}", path.display()),
        )
    })
}

/// What `apply` found to change, and the edit that makes it.
struct Plan {
    lines: Vec<String>,
    structural: bool,
    edit: Map<String, Value>,
}

/// Whether the sequence already says what the file says: every key the file gives has the same
/// value (objects compared key by key, so a key the file leaves out, or `null` where the API
/// fills one in, is no difference).
fn says(current: &Value, wanted: &Value) -> bool {
    match (current, wanted) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, w)| says(have.get(k).unwrap_or(&Value::Null), w)),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| says(h, w))
        }
        (have, Value::Null) => have.is_null() || *have == json!(false) || *have == json!(""),
        (have, want) => have == want,
    }
}

fn brief(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// Compares the file with the sequence as it is.
fn plan(current: &Value, file: &Value) -> Plan {
    let mut lines = Vec::new();
    let mut structural = false;
    let mut edit = Map::new();
    for field in FIELDS {
        let Some(wanted) = file.get(field) else {
            continue;
        };
        if !says(current.get(field).unwrap_or(&Value::Null), wanted) {
            lines.push(format!(
                "{field}: {} → {}",
                brief(current.get(field).unwrap_or(&Value::Null)),
                brief(wanted)
            ));
            structural |= STRUCTURAL.contains(&field);
            edit.insert(field.to_owned(), wanted.clone());
        }
    }
    if let Some(wanted) = file.get("steps").and_then(Value::as_array) {
        let have = current["steps"].as_array().cloned().unwrap_or_default();
        let mut steps = Vec::with_capacity(wanted.len());
        let mut changed = false;
        for (i, step) in wanted.iter().enumerate() {
            let mut step = step.clone();
            let matched = match step.get("id") {
                Some(id) => have.iter().position(|h| &h["id"] == id),
                None => (i < have.len()).then_some(i),
            };
            match matched {
                Some(at) => {
                    let old = &have[at];
                    step["id"] = old["id"].clone();
                    if at != i {
                        lines.push(format!("step {}: moved to {}", at + 1, i + 1));
                        structural = true;
                        changed = true;
                    }
                    for key in [
                        "subject",
                        "body",
                        "html",
                        "thread",
                        "timing",
                        "end_date",
                        "max_lateness",
                    ] {
                        let new = step.get(key).cloned().unwrap_or(Value::Null);
                        let was = old.get(key).cloned().unwrap_or(Value::Null);
                        if !says(&was, &new) {
                            lines.push(format!(
                                "step {}: {key}: {} → {}",
                                i + 1,
                                brief(&was),
                                brief(&new)
                            ));
                            structural |= key == "timing" || key == "end_date";
                            changed = true;
                        }
                    }
                }
                None => {
                    lines.push(format!(
                        "step {}: added: {}",
                        i + 1,
                        brief(step.get("subject").unwrap_or(&Value::Null))
                    ));
                    structural = true;
                    changed = true;
                }
            }
            steps.push(step);
        }
        let kept: Vec<&Value> = steps.iter().filter_map(|s| s.get("id")).collect();
        for (i, old) in have.iter().enumerate() {
            if !kept.contains(&&old["id"]) {
                lines.push(format!(
                    "step {}: deleted: {}",
                    i + 1,
                    brief(&old["subject"])
                ));
                structural = true;
                changed = true;
            }
        }
        if changed {
            edit.insert("steps".into(), Value::Array(steps));
            edit.insert("delete_missing_steps".into(), json!(true));
        }
    }
    Plan {
        lines,
        structural,
        edit,
    }
}

/// `pulse sequences apply`: what it did, or why it did not.
pub(super) async fn run(client: &Client, path: &Path, yes: bool) -> Result<String, Failure> {
    let file = read(path)?;
    let Some(name) = file["name"].as_str().map(str::to_owned) else {
        return Err(fail(2, format!("{} has no \"name\"", path.display())));
    };
    let list = super::every_page(client, "/v1/sequences", "sequences").await?;
    let named: Vec<&Value> = list["sequences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] != "DELETED" && s["name"] == name)
        .collect();
    let current = match named[..] {
        [] => {
            let created = call(client, Method::POST, "/v1/sequences", Some(file)).await?;
            return Ok(format!(
                "created {} {} ({} steps)",
                created["id"].as_str().unwrap_or_default(),
                name,
                created["steps"].as_array().map_or(0, Vec::len)
            ));
        }
        [one] => one,
        _ => {
            return Err(fail(
                1,
                format!(
                    "{} live sequences are named {name:?}; rename one first",
                    named.len()
                ),
            ));
        }
    };
    let id = current["id"].as_str().unwrap_or_default().to_owned();
    let plan = plan(current, &file);
    if plan.lines.is_empty() {
        return Ok(format!("{id} {name}: no changes"));
    }
    let mut out = format!("{id} {name}:\n  {}", plan.lines.join("\n  "));
    if plan.structural && !yes {
        return Err(fail(
            2,
            format!(
                "{out}\nthese changes move or end enrollments in flight (pause first if they must \
                 not go out meanwhile); pass --yes to apply them"
            ),
        ));
    }
    let change = call(
        client,
        Method::PATCH,
        &format!("/v1/sequences/{}", encode(&id)),
        Some(Value::Object(plan.edit)),
    )
    .await?;
    out.push_str(&format!(
        "\napplied: version {}",
        change["sequence"]["version"]
    ));
    for w in change["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("\nwarning: {}", w.as_str().unwrap_or_default()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(steps: Value) -> Value {
        json!({"id": "s", "name": "N", "timezone": "UTC", "steps": steps})
    }

    #[test]
    fn content_changes_are_not_structural_and_steps_match_in_order() {
        let current = seq(json!([
            {"id": "a", "subject": "A", "body": "a", "timing": {"type": "immediately"}, "html": null, "thread": false},
            {"id": "b", "subject": "B", "body": "b", "timing": {"type": "delay", "delay": "P1D"}, "html": null, "thread": false}
        ]));
        let file = json!({"name": "N", "steps": [
            {"subject": "A2", "body": "a", "timing": {"type": "immediately"}},
            {"subject": "B", "body": "b", "timing": {"type": "delay", "delay": "P1D"}}
        ]});
        let p = plan(&current, &file);
        assert_eq!(p.lines, ["step 1: subject: A → A2"]);
        assert!(!p.structural);
        assert_eq!(p.edit["steps"][0]["id"], "a");
        assert_eq!(p.edit["steps"][1]["id"], "b");
    }

    #[test]
    fn added_deleted_retimed_steps_and_triggers_are_structural() {
        let current = seq(json!([
            {"id": "a", "subject": "A", "body": "a", "timing": {"type": "immediately"}},
            {"id": "b", "subject": "B", "body": "b", "timing": {"type": "delay", "delay": "P1D"}}
        ]));
        let file = json!({"name": "N", "steps": [
            {"subject": "A", "body": "a", "timing": {"type": "delay", "delay": "PT1H"}}
        ], "triggers": [{"type": "tag", "tag": "x"}]});
        let p = plan(&current, &file);
        assert!(p.structural);
        assert!(
            p.lines.iter().any(|l| l == "step 2: deleted: B"),
            "{:?}",
            p.lines
        );
        assert!(
            p.lines.iter().any(|l| l.starts_with("step 1: timing")),
            "{:?}",
            p.lines
        );
        assert!(
            p.lines.iter().any(|l| l.starts_with("triggers")),
            "{:?}",
            p.lines
        );
        assert_eq!(p.edit["delete_missing_steps"], true);
        let same = plan(&current, &json!({"name": "N"}));
        assert!(same.lines.is_empty() && same.edit.is_empty());
    }
}
