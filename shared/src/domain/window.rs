//! Send windows: the days and hours a sequence may send, in the lead's time zone (else the
//! sequence's). Owns "next valid time": `at` itself when it falls inside the window, else the
//! window's next opening. DST-correct: openings are computed in local time and converted with
//! the zone's rules for that date; an opening inside a DST gap moves to the end of the gap.
//! Pure functions; never reads the clock.

use chrono::{DateTime, Datelike, Days, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// When a sequence may send: `days` of the week, between `start` and `end` local time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendWindow {
    /// Lower-case three-letter days: `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`: the
    /// days the window opens on.
    #[schema(min_items = 1, format = "weekday")]
    pub days: Vec<String>,
    /// Local opening time, `HH:MM`.
    #[schema(format = "clock")]
    pub start: String,
    /// Local closing time, `HH:MM`. At or before `start`, the window runs past midnight and
    /// closes the next day (`22:00`–`06:00`); equal to `start`, it is open the whole day.
    #[schema(format = "clock")]
    pub end: String,
}

fn weekday(day: &str) -> Option<Weekday> {
    Some(match day {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

/// `HH:MM`, two digits each, `00:00` to `23:59`.
fn clock(value: &str) -> Result<NaiveTime, String> {
    let bad = || format!("{value:?} is not a time of day HH:MM");
    let (h, m) = value.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    NaiveTime::parse_from_str(value, "%H:%M").map_err(|_| bad())
}

impl SendWindow {
    /// Checks the window; the message names the offending part.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.days.is_empty() {
            return Err(("days", "at least one day is required".into()));
        }
        for d in &self.days {
            weekday(d).ok_or((
                "days",
                format!("{d:?} is not one of mon, tue, wed, thu, fri, sat, sun"),
            ))?;
        }
        clock(&self.start).map_err(|m| ("start", m))?;
        clock(&self.end).map_err(|m| ("end", m))?;
        Ok(())
    }

    fn allows(&self, day: Weekday) -> bool {
        self.days.iter().any(|d| weekday(d) == Some(day))
    }
}

/// The first moment at or after `at` inside `window` in zone `tz`; `at` when there is no window.
/// Each allowed day's window opens at `start` that day and closes at `end` that day, or the next
/// day when `end` is at or before `start`: windows are visited in order from yesterday's (which
/// may still be open past midnight), and the first not yet closed gives the answer.
pub fn next_valid(at: DateTime<Utc>, window: Option<&SendWindow>, tz: Tz) -> DateTime<Utc> {
    let Some(w) = window else {
        return at;
    };
    let (Ok(start), Ok(end)) = (clock(&w.start), clock(&w.end)) else {
        return at;
    };
    let Some(yesterday) = at.with_timezone(&tz).date_naive().pred_opt() else {
        return at;
    };
    for offset in 0..=8 {
        let Some(date) = yesterday.checked_add_days(Days::new(offset)) else {
            break;
        };
        if !w.allows(date.weekday()) {
            continue;
        }
        let closes_on = if end > start {
            Some(date)
        } else {
            date.succ_opt()
        };
        let Some(closes_on) = closes_on else {
            break;
        };
        let (open, close) = (local(tz, date, start), local(tz, closes_on, end));
        if at < close {
            return open.max(at);
        }
    }
    at
}

/// `date` at `time` in `tz`: the earlier instant when the time repeats, the end of the gap
/// when it does not exist.
fn local(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    for minutes in 0..=180 {
        if let Some(t) = tz
            .from_local_datetime(&(naive + Duration::minutes(minutes)))
            .earliest()
        {
            return t.with_timezone(&Utc);
        }
    }
    Utc.from_utc_datetime(&naive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weekdays_9_to_5() -> SendWindow {
        SendWindow {
            days: ["mon", "tue", "wed", "thu", "fri"]
                .map(String::from)
                .to_vec(),
            start: "09:00".into(),
            end: "17:00".into(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn inside_stays_outside_moves_to_the_next_opening() {
        let w = weekdays_9_to_5();
        let paris = chrono_tz::Europe::Paris;
        // Wednesday 2026-01-14, Paris is UTC+1.
        assert_eq!(
            next_valid(utc("2026-01-14T11:00:00Z"), Some(&w), paris),
            utc("2026-01-14T11:00:00Z")
        );
        assert_eq!(
            next_valid(utc("2026-01-14T06:00:00Z"), Some(&w), paris),
            utc("2026-01-14T08:00:00Z")
        );
        assert_eq!(
            next_valid(utc("2026-01-14T16:00:00Z"), Some(&w), paris),
            utc("2026-01-15T08:00:00Z")
        );
        // Friday evening → Monday morning.
        assert_eq!(
            next_valid(utc("2026-01-16T17:30:00Z"), Some(&w), paris),
            utc("2026-01-19T08:00:00Z")
        );
        assert_eq!(
            next_valid(utc("2026-01-17T12:00:00Z"), None, paris),
            utc("2026-01-17T12:00:00Z")
        );
    }

    #[test]
    fn openings_follow_daylight_saving_time() {
        let w = weekdays_9_to_5();
        let paris = chrono_tz::Europe::Paris;
        // Clocks go forward on Sunday 2026-03-29: Friday's opening is 08:00 UTC, Monday's 07:00 UTC.
        assert_eq!(
            next_valid(utc("2026-03-27T05:00:00Z"), Some(&w), paris),
            utc("2026-03-27T08:00:00Z")
        );
        assert_eq!(
            next_valid(utc("2026-03-27T17:00:00Z"), Some(&w), paris),
            utc("2026-03-30T07:00:00Z")
        );
        // And back on 2026-10-25: Monday 26th opens at 08:00 UTC again.
        assert_eq!(
            next_valid(utc("2026-10-23T16:00:00Z"), Some(&w), paris),
            utc("2026-10-26T08:00:00Z")
        );
        // A window that opens inside the spring-forward gap opens when the gap ends.
        let night = SendWindow {
            days: vec!["sun".into()],
            start: "02:30".into(),
            end: "04:00".into(),
        };
        assert_eq!(
            next_valid(utc("2026-03-28T12:00:00Z"), Some(&night), paris),
            utc("2026-03-29T01:00:00Z")
        );
    }

    #[test]
    fn windows_are_validated() {
        assert!(weekdays_9_to_5().validate().is_ok());
        let bad = |days: &[&str], start: &str, end: &str| {
            SendWindow {
                days: days.iter().map(|d| d.to_string()).collect(),
                start: start.into(),
                end: end.into(),
            }
            .validate()
            .map_err(|(field, _)| field)
        };
        assert_eq!(bad(&[], "09:00", "17:00"), Err("days"));
        assert_eq!(bad(&["monday"], "09:00", "17:00"), Err("days"));
        assert_eq!(bad(&["mon"], "9am", "17:00"), Err("start"));
        assert_eq!(bad(&["mon"], "9:00", "17:00"), Err("start"));
        assert_eq!(bad(&["mon"], "09:00", "24:00"), Err("end"));
        // Past midnight, and the whole day, are windows too.
        assert_eq!(bad(&["mon"], "17:00", "09:00"), Ok(()));
        assert_eq!(bad(&["mon"], "09:00", "09:00"), Ok(()));
    }

    #[test]
    fn a_window_may_run_past_midnight_or_all_day() {
        let night = |days: &[&str], start: &str, end: &str| SendWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
        };
        let w = night(&["mon"], "22:00", "06:00");
        let utc_zone = chrono_tz::UTC;
        // Monday 2026-01-12, 23:00: open. Tuesday 03:00: still Monday's window.
        assert_eq!(
            next_valid(utc("2026-01-12T23:00:00Z"), Some(&w), utc_zone),
            utc("2026-01-12T23:00:00Z")
        );
        assert_eq!(
            next_valid(utc("2026-01-13T03:00:00Z"), Some(&w), utc_zone),
            utc("2026-01-13T03:00:00Z")
        );
        // Tuesday 07:00: closed until next Monday 22:00.
        assert_eq!(
            next_valid(utc("2026-01-13T07:00:00Z"), Some(&w), utc_zone),
            utc("2026-01-19T22:00:00Z")
        );
        // Monday 03:00 belongs to Sunday's window, which is not open: Monday 22:00.
        assert_eq!(
            next_valid(utc("2026-01-12T03:00:00Z"), Some(&w), utc_zone),
            utc("2026-01-12T22:00:00Z")
        );
        // Equal ends: Wednesday all day, from 09:00 to Thursday 09:00.
        let day = night(&["wed"], "09:00", "09:00");
        assert_eq!(
            next_valid(utc("2026-01-15T08:59:00Z"), Some(&day), utc_zone),
            utc("2026-01-15T08:59:00Z")
        );
        assert_eq!(
            next_valid(utc("2026-01-15T09:00:00Z"), Some(&day), utc_zone),
            utc("2026-01-21T09:00:00Z")
        );
    }
}
