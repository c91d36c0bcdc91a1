//! How a sequence's settings read in words on the Hub's pages: timing, triggers, sending
//! limits, guardrails. Formatting only.

use pulse_shared::{
    domain::timing::Timing,
    guardrails::Guardrails,
    model::{Sequence, TriggerSpec},
};

use super::when;

pub(super) fn timing_text(t: &Timing) -> String {
    match t {
        Timing::Immediately {} => "immediately".to_owned(),
        Timing::Delay { delay } => format!("{delay} after the previous step"),
        Timing::OnDate { at } => format!("on {}", when(at)),
    }
}

/// A sequence's sending limits in words: its `limits`, then `max_sends_per_minute`.
pub(super) fn limits_text(s: &Sequence) -> String {
    let mut parts: Vec<String> = s
        .limits
        .iter()
        .map(|l| match l.per.as_str() {
            "P1D" => format!("{} a day (midnight, {})", l.max, s.timezone),
            per => format!("{} per {per}", l.max),
        })
        .collect();
    if let Some(r) = s.max_sends_per_minute {
        parts.push(format!("{r} sends per minute"));
    }
    if parts.is_empty() {
        "none (mailbox, domain and workspace limits still apply)".to_owned()
    } else {
        parts.join(", ")
    }
}

pub(super) fn guardrails_text(g: &Guardrails) -> String {
    let mut parts = Vec::new();
    if let Some(f) = g.failures {
        parts.push(format!(
            "more than {} of its last {} sends failed",
            f.max_failed, f.of_last
        ));
    }
    if let Some(r) = &g.repeats {
        parts.push(format!(
            "a step would go to a lead again within {} (not by re-enroll)",
            r.within
        ));
    }
    if let Some(o) = g.overspeed {
        parts.push(format!(
            "sends exceed {} % of a sending limit",
            o.max_percent
        ));
    }
    if parts.is_empty() {
        "off".to_owned()
    } else {
        format!("pauses itself when {}", parts.join("; or "))
    }
}

pub(super) fn trigger_text(t: &TriggerSpec) -> String {
    match t {
        TriggerSpec::TagApplied { tag } => format!("tag “{tag}” applied"),
        TriggerSpec::ListAdded { list } => format!("added to list “{list}”"),
        TriggerSpec::LeadScore { min_score, mode } => match mode {
            pulse_shared::model::ScoreMode::Crossing => format!("lead score reaches {min_score}"),
            pulse_shared::model::ScoreMode::Level => {
                format!("any score event at {min_score} or above")
            }
        },
    }
}
