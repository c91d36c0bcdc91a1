//! A sequence's activity on its page, as pictures: sends over time stacked by outcome (and
//! the steps its pause holds), enrollments by status, and how far its leads got. The numbers
//! are the API's (`activity::activity`); this module only draws them (`hub::charts`).

use pulse_shared::model::{ActivityRange, SequenceActivity};

use super::super::charts::{self, Series};
use super::*;

const SERIES: [Series; 4] = [
    Series {
        name: "sent",
        class: "s-sent",
    },
    Series {
        name: "failed",
        class: "s-failed",
    },
    Series {
        name: "unknown",
        class: "s-unknown",
    },
    Series {
        name: "held by the pause",
        class: "s-held",
    },
];

/// The range a page asks for with `?range=`; anything else is the default (24 h).
pub(super) fn range(raw: Option<&str>) -> ActivityRange {
    serde_json::from_value(serde_json::Value::String(
        raw.unwrap_or_default().to_owned(),
    ))
    .unwrap_or_default()
}

pub(super) fn section(a: &SequenceActivity, here: &str) -> Markup {
    let labels: Vec<String> = a
        .buckets
        .iter()
        .map(|b| match a.range {
            ActivityRange::Week => b.start.format("%a %H:%M").to_string(),
            _ => b.start.format("%H:%M").to_string(),
        })
        .collect();
    let values: Vec<Vec<i64>> = a
        .buckets
        .iter()
        .map(|b| vec![b.sent, b.failed, b.unknown, b.held])
        .collect();
    let per = match a.range {
        ActivityRange::Hour => "per minute, the last hour",
        ActivityRange::Day => "per hour, the last 24 hours",
        ActivityRange::Week => "per 6 hours, the last 7 days",
    };
    let statuses: Vec<(String, i64)> = a
        .enrollments
        .iter()
        .map(|s| (s.status.clone(), s.count))
        .collect();
    let funnel: Vec<(String, i64)> = a
        .funnel
        .iter()
        .map(|f| {
            let name = match f.position {
                Some(p) => format!("Step {p}: {}", f.subject),
                None => format!("(deleted) {}", f.subject),
            };
            (name, f.leads)
        })
        .collect();
    html! {
        section #activity {
            h2 { "Activity" }
            nav.filters aria-label="Time range" {
                @for r in [ActivityRange::Hour, ActivityRange::Day, ActivityRange::Week] {
                    @if r == a.range {
                        a.current aria-current="true" href=(format!("{here}?range={}#activity", r.as_str())) { (r.as_str()) }
                    } @else {
                        a href=(format!("{here}?range={}#activity", r.as_str())) { (r.as_str()) }
                    }
                }
            }
            (charts::stacked_bars("sends", &format!("Sends {per} (UTC)"), &labels, &SERIES, &values))
            div.chart-pair {
                (charts::bars("enrollments", "Enrollments by status", &statuses))
                (charts::bars("funnel", "Leads each step was sent to", &funnel))
            }
        }
    }
}
