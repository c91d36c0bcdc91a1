//! `pulse keys create|list|revoke` (an admin key of the workspace) and `pulse admin workspaces
//! create|list` (the platform key, `PULSE_ADMIN_KEY`): API keys and workspaces from the command
//! line. A new key is printed once, on its own line, so a script can take it.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Client, Failure, call, encode, render::table};

#[derive(Subcommand, Debug)]
pub enum Keys {
    /// Make a key in this workspace (read: GET only; write: everything but keys; admin:
    /// everything). The key is printed once.
    Create {
        /// What the key is for; the audit trail names it.
        #[arg(long)]
        label: String,
        #[arg(long, value_parser = ["read", "write", "admin"])]
        scope: String,
    },
    /// The workspace's keys: label, scope, created, last used, revoked. Never the keys.
    List,
    /// Revoke a key: it opens nothing from the next request on.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum Admin {
    /// Workspaces (with `--key` or `PULSE_ADMIN_KEY` as the platform key).
    #[command(subcommand)]
    Workspaces(Workspaces),
}

#[derive(Subcommand, Debug)]
pub enum Workspaces {
    /// Make a workspace; prints it and its first admin key, once.
    Create { name: String },
    /// Every workspace.
    List,
}

fn key_rows(keys: &[Value]) -> Vec<Vec<String>> {
    keys.iter()
        .map(|k| {
            [
                "id",
                "label",
                "scope",
                "created_at",
                "last_used_at",
                "revoked_at",
            ]
            .iter()
            .map(|f| k[*f].as_str().unwrap_or("-").to_owned())
            .collect()
        })
        .collect()
}

const KEY_HEADERS: [&str; 6] = ["ID", "LABEL", "SCOPE", "CREATED", "LAST USED", "REVOKED"];

pub(super) async fn run(client: &Client, action: &Keys) -> Result<String, Failure> {
    let v = match action {
        Keys::Create { label, scope } => {
            call(
                client,
                Method::POST,
                "/v1/keys",
                Some(json!({"label": label, "scope": scope})),
            )
            .await?
        }
        Keys::List => call(client, Method::GET, "/v1/keys", None).await?,
        Keys::Revoke { id } => {
            call(
                client,
                Method::DELETE,
                &format!("/v1/keys/{}", encode(id)),
                None,
            )
            .await?
        }
    };
    if client.json {
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    Ok(match action {
        Keys::Create { .. } => format!(
            "{}\nkey (shown once; only its hash is kept):\n{}",
            table(&KEY_HEADERS, key_rows(std::slice::from_ref(&v))),
            v["key"].as_str().unwrap_or_default()
        ),
        Keys::List => table(
            &KEY_HEADERS,
            key_rows(v["keys"].as_array().map(Vec::as_slice).unwrap_or_default()),
        ),
        Keys::Revoke { .. } => format!(
            "revoked {} ({})",
            v["label"].as_str().unwrap_or_default(),
            v["id"].as_str().unwrap_or_default()
        ),
    })
}

pub(super) async fn run_admin(client: &Client, action: &Admin) -> Result<String, Failure> {
    let Admin::Workspaces(action) = action;
    let v = match action {
        Workspaces::Create { name } => {
            call(
                client,
                Method::POST,
                "/v1/admin/workspaces",
                Some(json!({"name": name})),
            )
            .await?
        }
        Workspaces::List => call(client, Method::GET, "/v1/admin/workspaces", None).await?,
    };
    if client.json {
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let row = |w: &Value| -> Vec<String> {
        ["id", "name", "created_at"]
            .iter()
            .map(|f| w[*f].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    Ok(match action {
        Workspaces::Create { .. } => format!(
            "{}\nfirst admin key (shown once; only its hash is kept):\n{}",
            table(&["ID", "NAME", "CREATED"], vec![row(&v["workspace"])]),
            v["key"]["key"].as_str().unwrap_or_default()
        ),
        Workspaces::List => table(
            &["ID", "NAME", "CREATED"],
            v["workspaces"]
                .as_array()
                .into_iter()
                .flatten()
                .map(row)
                .collect(),
        ),
    })
}
