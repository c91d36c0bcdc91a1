//! How a sequence's settings read in words on the Hub's pages: timing, triggers, sending
//! limits, guardrails. Formatting only.

use pulse_shared::{
    domain::{timing::Timing, window::SendWindow},
    guardrails::Guardrails,
    model::{Sequence, TriggerSpec},
};

use super::when;

pub(super) fn timing_text(t: &Timing) -> String {
    match t {
        Timing::Immediately {} => "immediately".to_owned(),
        Timing::Delay { delay } => format!("{} after the previous step", duration_text(delay)),
        Timing::OnDate { at } => format!("on {}", when(at)),
    }
}

/// An ISO-8601 duration in words: `P2D` is "2 days", `P1DT12H` "1 day 12 hours", `PT10S`
/// "10 seconds"; one the API would refuse is shown as written.
pub(super) fn duration_text(iso: &str) -> String {
    let Ok(d) = pulse_shared::domain::timing::parse_iso_duration(iso) else {
        return iso.to_owned();
    };
    let mut left = d.num_seconds();
    let mut parts = Vec::new();
    for (unit, len) in [
        ("week", 604_800),
        ("day", 86_400),
        ("hour", 3_600),
        ("minute", 60),
        ("second", 1),
    ] {
        let n = left / len;
        left %= len;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        "no time".to_owned()
    } else {
        parts.join(" ")
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

/// A send window in words: "Mon–Fri, 09:00–17:00 (Europe/Paris)"; none is "any time".
pub(super) fn window_text(w: Option<&SendWindow>, timezone: &str) -> String {
    let Some(w) = w else {
        return "any time".to_owned();
    };
    let days = if w.days.len() == 5
        && ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .all(|d| w.days.iter().any(|x| x == d))
    {
        "Mon–Fri".to_owned()
    } else if w.days.len() == 7 {
        "every day".to_owned()
    } else {
        w.days
            .iter()
            .map(|d| {
                let mut c = d.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let hours = if w.start == w.end {
        "all day".to_owned()
    } else {
        format!("{}–{}", w.start, w.end)
    };
    format!("{days}, {hours} ({timezone})")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_words() {
        assert_eq!(duration_text("P2D"), "2 days");
        assert_eq!(duration_text("P1DT12H"), "1 day 12 hours");
        assert_eq!(duration_text("PT10S"), "10 seconds");
        assert_eq!(duration_text("PT90M"), "1 hour 30 minutes");
        assert_eq!(duration_text("P3W"), "3 weeks");
        assert_eq!(duration_text("PT0S"), "no time");
        assert_eq!(duration_text("P1M"), "P1M");
        assert_eq!(
            timing_text(&Timing::Delay {
                delay: "P2D".into()
            }),
            "2 days after the previous step"
        );
    }
}
