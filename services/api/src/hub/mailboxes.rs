//! The Hub's Mailboxes page: the workspace's sender mailboxes with what governs their sending
//! (relay, DKIM, sending limits in words and the zone a daily limit rolls over in). Read-only:
//! mailboxes are made and changed through `/v1/mailboxes` (or `pulse mailboxes`), which this page
//! reads through (`crate::mailboxes::list`).

use axum::{extract::State, response::Response};
use maud::html;
use pulse_shared::{limits::Limit, model::Mailbox};

use super::{Flash, HubResult, HubState, layout, page, session::HubUser};

/// A mailbox's limits in words: `2000 a day (midnight, Europe/Paris), 30 per PT1M`.
pub(super) fn mailbox_limits_text(limits: &[Limit], timezone: &str) -> String {
    if limits.is_empty() {
        return "none".to_owned();
    }
    limits
        .iter()
        .map(|l| match l.per.as_str() {
            "P1D" => format!("{} a day (midnight, {timezone})", l.max),
            per => format!("{} per {per}", l.max),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn relay(m: &Mailbox) -> String {
    match &m.smtp_url {
        None => "the global relay".to_owned(),
        Some(url) => url.clone(),
    }
}

pub async fn list(
    State(state): State<HubState>,
    user: HubUser,
    flash: Flash,
) -> HubResult<Response> {
    let found = crate::mailboxes::list(&state.api, &user.auth)
        .await?
        .mailboxes;
    let body = html! {
        h1 { "Mailboxes" }
        p.muted { "The addresses sequences send from, one per lead, and the limits each mailbox sends under. Add or change them with " code { "POST /v1/mailboxes" } " or " code { "pulse mailboxes" } "." }
        @if found.is_empty() {
            p.empty { "No mailboxes: sequences send from their own sender address." }
        } @else {
            table.list.mailboxes {
                thead { tr { th { "Address" } th { "Name" } th { "Relay" } th { "DKIM" } th { "Sending limits" } } }
                tbody { @for m in &found { tr data-mailbox=(m.id) {
                    td { (m.address) }
                    td { (m.display_name.clone().unwrap_or_else(|| "–".to_owned())) }
                    td { (relay(m)) }
                    td { @match &m.dkim_selector { Some(s) => { "signed (" (s) ")" }, None => { "not signed" } } }
                    td { (mailbox_limits_text(&m.limits, &m.timezone)) }
                } } }
            }
        }
    };
    Ok(page(
        &flash,
        layout("Mailboxes", Some(&user), Some(&flash), body),
    ))
}
