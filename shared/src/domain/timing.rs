//! When a step is due. Owns the timing rules of `docs/send-path.md` ("Timing"): `immediately`,
//! `delay` counted from the previous send, and absolute `on_date`. Pure functions only: this
//! module never reads the clock or the database; callers pass the times in.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How long after the previous step (or the enrollment, for step 1) a step is due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Timing {
    /// Due at enrollment (step 1) or right after the previous send. (A struct variant: serde
    /// denies unknown fields on those only.)
    Immediately {},
    /// Due this long after the previous send (or the enrollment, for step 1).
    Delay {
        /// ISO-8601 duration in weeks, days, hours, minutes and seconds, e.g. `P2D`, `PT5S`.
        #[schema(format = "duration")]
        delay: String,
    },
    /// Due at an absolute time; if that time has passed the step is due at once.
    OnDate {
        #[schema(value_type = String, format = DateTime)]
        at: DateTime<Utc>,
    },
}

impl Timing {
    /// Checks the timing and returns a message for the caller when it is unusable.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Timing::Delay { delay } => parse_iso_duration(delay).map(|_| ()),
            Timing::Immediately {} | Timing::OnDate { .. } => Ok(()),
        }
    }

    /// The due time of a step whose predecessor (or enrollment) happened at `anchor`.
    pub fn due_after(&self, anchor: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        match self {
            Timing::Immediately {} => Ok(anchor),
            Timing::Delay { delay } => {
                let d = parse_iso_duration(delay)?;
                anchor
                    .checked_add_signed(d)
                    .ok_or_else(|| "delay overflows the calendar".into())
            }
            Timing::OnDate { at } => Ok(*at),
        }
    }
}

/// Parses an ISO-8601 duration made of weeks, days, hours, minutes and seconds
/// (`P1W`, `P2D`, `PT36H`, `P1DT12H30M`, `PT5S`). Years and months are refused: their length
/// depends on the calendar, and a sequence step must mean the same thing every time.
pub fn parse_iso_duration(input: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("{input:?} is not a usable ISO-8601 duration: {why}");
    let rest = input
        .strip_prefix('P')
        .ok_or_else(|| bad("it must start with P"))?;
    if rest.is_empty() {
        return Err(bad("it has no parts"));
    }
    let mut in_time = false;
    let mut number = String::new();
    let mut total = Duration::zero();
    let mut parts = 0;
    for c in rest.chars() {
        match c {
            'T' if !in_time && number.is_empty() => in_time = true,
            '0'..='9' => number.push(c),
            _ => {
                if number.is_empty() {
                    return Err(bad(&format!("unit {c:?} has no number")));
                }
                let n: i64 = number.parse().map_err(|_| bad("number too large"))?;
                number.clear();
                let secs_per_unit = match (in_time, c) {
                    (false, 'W') => 7 * 86_400,
                    (false, 'D') => 86_400,
                    (true, 'H') => 3_600,
                    (true, 'M') => 60,
                    (true, 'S') => 1,
                    (false, 'Y') | (false, 'M') => {
                        return Err(bad("years and months are not supported; use weeks or days"));
                    }
                    _ => return Err(bad(&format!("unexpected {c:?}"))),
                };
                let secs = n
                    .checked_mul(secs_per_unit)
                    .ok_or_else(|| bad("too long"))?;
                total = total
                    .checked_add(&Duration::try_seconds(secs).ok_or_else(|| bad("too long"))?)
                    .ok_or_else(|| bad("too long"))?;
                parts += 1;
            }
        }
    }
    if !number.is_empty() {
        return Err(bad("a number has no unit"));
    }
    if parts == 0 {
        return Err(bad("it has no parts"));
    }
    // Ten years is far beyond any sequence and keeps every due time representable.
    if total > Duration::days(3650) {
        return Err(bad("longer than ten years"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn durations() {
        assert_eq!(parse_iso_duration("P2D").unwrap(), Duration::days(2));
        assert_eq!(parse_iso_duration("PT5S").unwrap(), Duration::seconds(5));
        assert_eq!(parse_iso_duration("P1W").unwrap(), Duration::days(7));
        assert_eq!(
            parse_iso_duration("P1DT12H30M15S").unwrap(),
            Duration::seconds(86_400 + 12 * 3600 + 30 * 60 + 15)
        );
        assert_eq!(parse_iso_duration("PT0S").unwrap(), Duration::zero());
        for bad in [
            "", "P", "PT", "2D", "P1M", "P1Y", "PT5", "P5H", "PTS", "P1D2", "PT1.5S", "pt5s",
        ] {
            assert!(parse_iso_duration(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_iso_duration("P99999999999999999999D").is_err());
        assert!(parse_iso_duration("P4000D").is_err());
    }

    #[test]
    fn due_times() {
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
        assert_eq!(Timing::Immediately {}.due_after(t).unwrap(), t);
        let d = Timing::Delay {
            delay: "P2D".into(),
        };
        assert_eq!(d.due_after(t).unwrap(), t + Duration::days(2));
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(Timing::OnDate { at }.due_after(t).unwrap(), at);
    }

    #[test]
    fn timing_json_shape() {
        let t: Timing = serde_json::from_str(r#"{"type":"delay","delay":"PT5S"}"#).unwrap();
        assert_eq!(
            t,
            Timing::Delay {
                delay: "PT5S".into()
            }
        );
        assert!(serde_json::from_str::<Timing>(r#"{"type":"later"}"#).is_err());
        let t: Timing =
            serde_json::from_str(r#"{"type":"on_date","at":"2026-12-01T09:00:00Z"}"#).unwrap();
        assert!(matches!(t, Timing::OnDate { .. }));
    }
}
