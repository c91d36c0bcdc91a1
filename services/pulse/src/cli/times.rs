//! How the CLI shows a time: in a chosen zone (`--tz`, else the sequence's zone for a sequence's
//! views, else this machine's local time), to the minute with the zone's abbreviation, and how
//! far it is from now in words ("in 2 days", "3 hours ago"). Formatting only.

use chrono::{DateTime, Local, Utc};
use chrono_tz::Tz;
use serde_json::Value;

/// The zone times are shown in, and the moment "now" is for the relative words.
#[derive(Clone, Copy, Debug)]
pub(super) struct Times {
    zone: Option<Tz>,
    now: DateTime<Utc>,
}

impl Times {
    /// Times in `zone`, or local time without one.
    pub(super) fn new(zone: Option<Tz>) -> Self {
        Self {
            zone,
            now: Utc::now(),
        }
    }

    /// `value` (an RFC 3339 string) as `2026-11-30 09:00 CET (in 2 days)`; anything else as it
    /// is (`-` for none).
    pub(super) fn show(&self, value: &Value) -> String {
        let Some(text) = value.as_str() else {
            return if value.is_null() {
                "-".to_owned()
            } else {
                value.to_string()
            };
        };
        let Ok(at) = DateTime::parse_from_rfc3339(text) else {
            return text.to_owned();
        };
        let at = at.with_timezone(&Utc);
        let shown = match self.zone {
            Some(zone) => at
                .with_timezone(&zone)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string(),
            None => at
                .with_timezone(&Local)
                .format("%Y-%m-%d %H:%M %:z")
                .to_string(),
        };
        format!("{shown} ({})", words(at - self.now))
    }
}

/// A signed span as people say it: "in 2 days", "3 hours ago", "now".
fn words(span: chrono::TimeDelta) -> String {
    let secs = span.num_seconds();
    let abs = secs.unsigned_abs();
    let (n, unit) = match abs {
        0..=59 => return "now".to_owned(),
        60..=3_599 => (abs / 60, "minute"),
        3_600..=86_399 => (abs / 3_600, "hour"),
        _ => (abs / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if secs > 0 {
        format!("in {n} {unit}{plural}")
    } else {
        format!("{n} {unit}{plural} ago")
    }
}

/// The zone `--tz` names: a usage error when it is not an IANA zone.
pub(super) fn zone(name: &str) -> Result<Tz, super::Failure> {
    name.parse::<Tz>().map_err(|_| {
        super::fail(
            2,
            format!(
                "--tz {name:?} is not an IANA time zone (e.g. Europe/Paris, America/New_York, UTC)"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_say_them() {
        let d = chrono::TimeDelta::seconds;
        assert_eq!(words(d(30)), "now");
        assert_eq!(words(d(-90)), "1 minute ago");
        assert_eq!(words(d(2 * 3_600 + 5)), "in 2 hours");
        assert_eq!(words(d(2 * 86_400)), "in 2 days");
        assert_eq!(words(d(-86_400)), "1 day ago");
    }

    #[test]
    fn a_time_shows_in_the_chosen_zone() {
        let paris = zone("Europe/Paris").ok();
        let t = Times::new(paris);
        let shown = t.show(&Value::from("2026-11-30T08:00:00Z"));
        assert!(shown.starts_with("2026-11-30 09:00 CET ("), "{shown}");
        assert_eq!(t.show(&Value::Null), "-");
        assert!(zone("Mars/Olympus").is_err());
    }
}
