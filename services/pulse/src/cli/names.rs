//! Sequences and enrollments as operators name them. A sequence is given by its id or its exact
//! name; an enrollment by its id, or by its sequence and the lead's email (`--lead`). A name that
//! matches nothing, or more than one sequence, is an error that lists what exists; a value that
//! can only be an id and is not one is a usage error (exit 2) before any request, with a hint.
//! It only reads, through the same API routes as every other command.

use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

use super::{Client, Failure, call, encode, fail};

/// The id of the sequence `given` names: itself when it is an id, else the one live sequence
/// (not DELETED) with exactly that name.
pub(super) async fn sequence(client: &Client, given: &str) -> Result<String, Failure> {
    if Uuid::parse_str(given).is_ok() {
        return Ok(given.to_owned());
    }
    let list = super::every_page(client, "/v1/sequences", "sequences").await?;
    let live: Vec<&Value> = list["sequences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] != "DELETED")
        .collect();
    let named: Vec<&&Value> = live.iter().filter(|s| s["name"] == given).collect();
    match named[..] {
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
        [] => {
            let names: Vec<&str> = live.iter().filter_map(|s| s["name"].as_str()).collect();
            Err(fail(
                1,
                format!(
                    "no sequence is named {given:?}; there are: {}",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ))
        }
        _ => {
            let ids: Vec<&str> = named.iter().filter_map(|s| s["id"].as_str()).collect();
            Err(fail(
                1,
                format!(
                    "{} sequences are named {given:?}; give one of their ids: {}",
                    ids.len(),
                    ids.join(", ")
                ),
            ))
        }
    }
}

/// Which of a lead's enrollments in a sequence `--lead` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Which {
    /// The ACTIVE one (to act on it).
    Active,
    /// The latest: the ACTIVE one, else the highest generation (to read it).
    Latest,
}

/// The id of the enrollment `given` names: itself when it is an id; with `lead`, `given` is the
/// sequence (id or name) and the enrollment is that lead's there, as `which` says.
pub(super) async fn enrollment(
    client: &Client,
    given: &str,
    lead: Option<&str>,
    which: Which,
) -> Result<String, Failure> {
    let Some(lead) = lead else {
        if Uuid::parse_str(given).is_ok() {
            return Ok(given.to_owned());
        }
        return Err(fail(
            2,
            format!(
                "{given:?} is not an enrollment id. To name it by the lead's email: \
                 pulse enrollments cancel|show SEQUENCE --lead EMAIL \
                 ('pulse enrollments list SEQUENCE --lead EMAIL' shows its enrollments)"
            ),
        ));
    };
    let sequence = sequence(client, given).await?;
    let path = format!(
        "/v1/sequences/{}/enrollments?lead={}{}",
        encode(&sequence),
        encode(lead),
        if which == Which::Active {
            "&status=ACTIVE"
        } else {
            ""
        }
    );
    let list = call(client, Method::GET, &path, None).await?;
    let found = list["enrollments"].as_array().and_then(|all| {
        all.iter()
            .find(|e| e["status"] == "ACTIVE")
            .or_else(|| all.iter().max_by_key(|e| e["generation"].as_i64()))
    });
    match found {
        Some(one) => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
        None if which == Which::Active => Err(fail(
            1,
            format!(
                "{lead} has no ACTIVE enrollment in {given:?} \
                 ('pulse enrollments list {given:?} --lead {lead}' shows its history)"
            ),
        )),
        None => Err(fail(1, format!("{lead} was never enrolled in {given:?}"))),
    }
}
