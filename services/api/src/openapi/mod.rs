//! The OpenAPI document `/openapi.json` serves: which operations it lists, the error answers
//! every route shares, the links a stateful client (schemathesis) follows from a created
//! object to the operations on it, and the constraints the derive cannot state. It never
//! handles a request beyond serving the document.
//!
//! Why a pass over the JSON after the derive: utoipa's attributes take string literals only and
//! cannot say "either this field or that one" or "no other key" inside a tagged enum's variant.
//! So the code marks a field with a format of our own (`#[schema(format = "address")]`) and
//! `syntax` turns each into the one pattern it stands for; `rules` states what the handlers
//! check by hand; `links` adds the links. Each patch names the component it changes, and a unit
//! test holds that every one of them still exists.

mod links;
mod rules;
mod syntax;

use std::sync::LazyLock;

use axum::{http::header, response::IntoResponse};
use serde_json::Value;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{
    activity, audit, control, domain_limits, edit, edit_preview, enrollments, inbound, keys,
    mailboxes, outbox, providers, render_preview, sends, sequences, steps, suppressions,
    unsubscribe, webhooks, workspace,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Pulse", description = "Multi-step email sequences you can take control of."),
    paths(
        sequences::create, sequences::list, sequences::stats, sequences::get_one, edit::edit, edit::versions,
        edit_preview::preview, activity::activity, render_preview::render_preview,
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
    rules::event_lead(schemas)?;
    rules::either_or(schemas)?;
    syntax::components(schemas);
    // After `either_or`: a new step keeps `StepInput`'s rule on an empty subject.
    rules::new_step(&mut doc)?;
    syntax::close_tagged_variants(&mut doc);
    syntax::expand_formats(&mut doc);
    links::links(&mut doc)?;
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
    use serde_json::json;

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
