//! The document's OpenAPI links: from an answer that names an object to the operations that
//! take it, so schemathesis's stateful phase acts on real objects.

use serde_json::{Value, json};

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
pub(super) fn links(doc: &mut Value) -> Result<(), String> {
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
