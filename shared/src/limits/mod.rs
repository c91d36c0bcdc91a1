//! Sending limits (`docs/sending-rules.md`): what a limit is ([`Limit`], as the API takes and
//! stores it), which limits apply to one send ([`SendLimits`], built from the sender's
//! snapshot), and the check at send time ([`SendLimits::take`]: one Lua script in Redis, atomic
//! across every limit that applies).
//!
//! Two kinds of period:
//! * **`P1D`** is the calendar day in the zone of what the limit is set on (the mailbox's, the
//!   workspace's, the sequence's; UTC for a domain): a count that rolls over at local midnight,
//!   across DST changes too.
//! * **any other duration** (`PT10S`, `PT1M`, `PT24H`, up to `P7D`) is a sliding window,
//!   enforced smoothly with GCRA: sends are spaced, never bursted at a window's start, so no
//!   window of that length ever holds more than `max` (see [`Spacing`] for the margin that keeps
//!   this true at the receiving end too).
//!
//! A send needs a slot under every limit that applies; a refused send takes none. This module
//! never holds or sends anything: the sender puts a refused step back to SCHEDULED at the time
//! the check says its slot frees.

mod check;
mod pace;

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{domain::timing::parse_iso_duration, http::ApiError};

pub use check::Taken;
pub use pace::Pacer;

/// Most limits on one mailbox, domain, workspace or sequence.
pub const MAX_PER_LIST: usize = 5;
/// The largest `max` of a limit.
pub const MAX_COUNT: u32 = 10_000_000;
/// The longest sliding window.
const LONGEST_WINDOW_SECS: i64 = 7 * 86_400;

/// A sending limit: at most `max` sends per `per`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max": 2000, "per": "P1D"}))]
pub struct Limit {
    /// Most sends in one period (1 to 10,000,000).
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub max: u32,
    /// The period, as an ISO-8601 duration: `P1D` is the calendar day (rolling over at local
    /// midnight); any other duration from `PT1S` to `P7D` is a sliding window.
    #[schema(example = "PT1M", format = "limit-period")]
    pub per: String,
}

/// How a limit's period is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// A sliding window of this many milliseconds, enforced by spacing (GCRA).
    Sliding { ms: i64 },
    /// The calendar day in a zone.
    Day,
}

/// A checked [`Limit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub max: u32,
    pub period: Period,
    /// As given (`PT1M`), for messages.
    pub per: String,
}

impl Limit {
    /// Checks the limit; the message says what is wrong.
    pub fn rule(&self) -> Result<Rule, String> {
        if self.max == 0 || self.max > MAX_COUNT {
            return Err(format!("max must be 1 to {MAX_COUNT}"));
        }
        let per = self.per.trim();
        let period = if per == "P1D" {
            Period::Day
        } else {
            let d = parse_iso_duration(per)?;
            let secs = d.num_seconds();
            if !(1..=LONGEST_WINDOW_SECS).contains(&secs) {
                return Err(format!(
                    "{per:?}: a sliding window is 1 second to 7 days; P1D is the calendar day"
                ));
            }
            Period::Sliding {
                ms: d.num_milliseconds(),
            }
        };
        Ok(Rule {
            max: self.max,
            period,
            per: per.to_owned(),
        })
    }
}

/// Checks a step's `max_lateness`: an ISO-8601 duration from one minute to a year, which
/// PostgreSQL reads as an interval too.
pub fn check_lateness(raw: &str) -> Result<chrono::Duration, String> {
    let d = parse_iso_duration(raw.trim())?;
    if d < chrono::Duration::minutes(1) || d > chrono::Duration::days(366) {
        return Err(format!("{raw:?}: give one minute to a year"));
    }
    Ok(d)
}

/// Checks a list of limits as given for `field` (e.g. `limits`): each valid, at most
/// [`MAX_PER_LIST`]. A period given twice (`PT1M` and `PT60S`) is kept once, with the lower
/// max: the stricter limit is the one both entries allow. Errors name the entry
/// (`limits[1].per`).
pub fn check_list(field: &str, limits: &[Limit]) -> Result<Vec<Rule>, ApiError> {
    if limits.len() > MAX_PER_LIST {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_PER_LIST} limits"),
        ));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(limits.len());
    for (i, limit) in limits.iter().enumerate() {
        let rule = limit.rule().map_err(|m| {
            let part = if m.starts_with("max") { "max" } else { "per" };
            ApiError::invalid(format!("{field}[{i}].{part}"), m)
        })?;
        match rules.iter_mut().find(|r| r.period == rule.period) {
            Some(kept) => kept.max = kept.max.min(rule.max),
            None => rules.push(rule),
        }
    }
    Ok(rules)
}

/// Checks `limits` as [`check_list`] does and returns what to store: `None` for no limits (the
/// column stays NULL, so the sender's snapshot parses nothing), else the list as JSON with each
/// period trimmed.
pub fn to_store(field: &str, limits: &[Limit]) -> Result<Option<serde_json::Value>, ApiError> {
    let rules = check_list(field, limits)?;
    if rules.is_empty() {
        return Ok(None);
    }
    let list: Vec<Limit> = rules
        .into_iter()
        .map(|r| Limit {
            max: r.max,
            per: r.per,
        })
        .collect();
    serde_json::to_value(list)
        .map(Some)
        .map_err(|e| ApiError::Internal(Box::new(e)))
}

/// What a limit is set on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A sender mailbox, by id, with its address (for messages).
    Mailbox { id: Uuid, address: String },
    /// A recipient domain of the workspace.
    Domain(String),
    /// The workspace as a whole.
    Workspace,
    /// One sequence (its `limits` and `max_sends_per_minute`).
    Sequence(Uuid),
}

impl Scope {
    /// The part of the Redis key naming the scope (within the workspace).
    fn key(&self) -> String {
        match self {
            Scope::Mailbox { id, .. } => format!("mailbox:{id}"),
            Scope::Domain(domain) => format!("domain:{domain}"),
            Scope::Workspace => "workspace".to_owned(),
            Scope::Sequence(id) => format!("sequence:{id}"),
        }
    }

    /// How messages name the scope: `mailbox ada@example.com`, `domain gmail.com`.
    pub fn label(&self) -> String {
        match self {
            Scope::Mailbox { address, .. } => format!("mailbox {address}"),
            Scope::Domain(domain) => format!("domain {domain}"),
            Scope::Workspace => "workspace".to_owned(),
            Scope::Sequence(_) => "sequence".to_owned(),
        }
    }
}

/// One limit that applies to a send: what it is set on, the rule, and the zone its day is
/// counted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applicable {
    pub scope: Scope,
    pub rule: Rule,
    pub zone: Tz,
}

impl Applicable {
    /// Why a send waits on this limit until `until`: e.g. `mailbox ada@example.com daily limit
    /// (2000) until 2026-11-29 00:00 Europe/Paris`.
    pub fn reason(&self, until: DateTime<Utc>) -> String {
        let local = until.with_timezone(&self.zone);
        match self.rule.period {
            Period::Day => format!(
                "{} daily limit ({}) until {} {}",
                self.scope.label(),
                self.rule.max,
                local.format("%Y-%m-%d %H:%M"),
                self.zone
            ),
            Period::Sliding { .. } => format!(
                "{} limit ({} per {}) until {} {}",
                self.scope.label(),
                self.rule.max,
                self.rule.per,
                local.format("%H:%M:%S"),
                self.zone
            ),
        }
    }
}

/// Every limit that applies to one send, in the workspace it is counted in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendLimits {
    pub workspace: Uuid,
    pub list: Vec<Applicable>,
}

impl SendLimits {
    pub fn new(workspace: Uuid) -> Self {
        Self {
            workspace,
            list: Vec::new(),
        }
    }

    /// Adds the limits stored for `scope` (a JSON list as [`check_list`] accepted it).
    pub fn add_stored(
        &mut self,
        scope: Scope,
        stored: Option<serde_json::Value>,
        zone: Tz,
    ) -> Result<(), String> {
        let Some(stored) = stored else {
            return Ok(());
        };
        let limits: Vec<Limit> =
            serde_json::from_value(stored).map_err(|e| format!("stored limits: {e}"))?;
        for limit in limits {
            self.list.push(Applicable {
                scope: scope.clone(),
                rule: limit.rule()?,
                zone,
            });
        }
        Ok(())
    }

    /// Adds one limit.
    pub fn add(&mut self, scope: Scope, rule: Rule, zone: Tz) {
        self.list.push(Applicable { scope, rule, zone });
    }

    /// Adds a sequence's `max_sends_per_minute`: the limit `{"max": N, "per": "PT1M"}`, or, when
    /// the sequence's `limits` have a `PT1M` one too, the lower of the two.
    pub fn per_minute(&mut self, sequence: Uuid, max: i32, zone: Tz) {
        let max = u32::try_from(max).unwrap_or(1).clamp(1, MAX_COUNT);
        let scope = Scope::Sequence(sequence);
        let minute = Period::Sliding { ms: 60_000 };
        if let Some(same) = self
            .list
            .iter_mut()
            .find(|a| a.scope == scope && a.rule.period == minute)
        {
            same.rule.max = same.rule.max.min(max);
            return;
        }
        self.add(
            scope,
            Rule {
                max,
                period: minute,
                per: "PT1M".to_owned(),
            },
            zone,
        );
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The columns [`from_row`] reads, for a query over `sequences s`, `workspaces w`, the
/// mailbox the send goes from as `mb` and `domain_limits dl` of the lead's domain (both left
/// joins), besides `workspace_id`, `sequence_id` and the sequence's `timezone`.
pub const LIMIT_COLUMNS: &str = "mb.id AS mb_id, mb.address AS mb_address,
    mb.limits AS mb_limits, mb.timezone AS mb_timezone, w.limits AS ws_limits,
    w.timezone AS ws_timezone, s.limits AS seq_limits, s.max_sends_per_minute,
    dl.domain AS dl_domain, dl.limits AS dl_limits";

/// The limits that apply to one send, from a row with [`LIMIT_COLUMNS`]: the mailbox's, the
/// recipient domain's, the workspace's and the sequence's (`limits`, then
/// `max_sends_per_minute`).
pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<SendLimits, crate::db::StoreError> {
    use crate::db::StoreError;
    use sqlx::Row;
    // On the send path: nothing is parsed or copied for a scope without limits.
    let zone = |col: &str| -> Result<Tz, StoreError> {
        Ok(row
            .try_get::<Option<&str>, _>(col)?
            .and_then(|z| z.parse().ok())
            .unwrap_or(Tz::UTC))
    };
    let mut limits = SendLimits::new(row.try_get("workspace_id")?);
    let mut add = |scope: &dyn Fn() -> Result<Scope, StoreError>,
                   col: &str,
                   zone_col: Option<&str>|
     -> Result<(), StoreError> {
        let Some(stored) = row.try_get::<Option<serde_json::Value>, _>(col)? else {
            return Ok(());
        };
        let tz = match zone_col {
            Some(c) => zone(c)?,
            None => Tz::UTC,
        };
        limits
            .add_stored(scope()?, Some(stored), tz)
            .map_err(StoreError::Corrupt)
    };
    let sequence: Uuid = row.try_get("sequence_id")?;
    if let Some(id) = row.try_get::<Option<Uuid>, _>("mb_id")? {
        let mailbox = || {
            Ok(Scope::Mailbox {
                id,
                address: row.try_get("mb_address")?,
            })
        };
        add(&mailbox, "mb_limits", Some("mb_timezone"))?;
    }
    let domain = || Ok(Scope::Domain(row.try_get("dl_domain")?));
    add(&domain, "dl_limits", None)?;
    add(&|| Ok(Scope::Workspace), "ws_limits", Some("ws_timezone"))?;
    add(
        &|| Ok(Scope::Sequence(sequence)),
        "seq_limits",
        Some("timezone"),
    )?;
    if let Some(per_minute) = row.try_get::<Option<i32>, _>("max_sends_per_minute")? {
        limits.per_minute(sequence, per_minute, zone("timezone")?);
    }
    Ok(limits)
}

/// The spacing GCRA keeps for a sliding window of `ms` with `max` sends, and how early a send
/// may come before its ideal time.
///
/// Spaced exactly `ms / max` apart, sends counted at the sender could still show `max + 1` in a
/// window at the relay: the time from the check to the relay's acceptance varies. So each window
/// keeps a guard `g` (5 % of the window, at most one second): sends are spaced
/// `(ms + 3g) / max` apart with a tolerance of `g`. Any `max + 1` checked sends then span at
/// least `ms + 2g`, so `max + 1` fall within one window at the relay only if their delays differ
/// by more than `g`. The cost is at most 13 % of the rate for a 10-second window, 5 % for a
/// minute, 0.1 % for an hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spacing {
    pub interval_us: i64,
    pub tolerance_us: i64,
}

impl Spacing {
    pub fn of(ms: i64, max: u32) -> Self {
        let us = ms * 1000;
        let guard = (us / 20).clamp(1, 1_000_000);
        let max = i64::from(max.max(1));
        Self {
            // Rounded up: never closer than the window allows.
            interval_us: ((us + 3 * guard + max - 1) / max).max(1),
            tolerance_us: guard,
        }
    }
}

/// A send's priority in the limits' waiting order: its sequence's `priority`, plus one level per
/// `aging` it has waited since it first came due (as the scheduler's claim ages it), at most 9.
pub fn aged_priority(priority: i16, waited: chrono::Duration, aging: std::time::Duration) -> u8 {
    let aging_ms = i64::try_from(aging.as_millis()).unwrap_or(i64::MAX).max(1);
    let gained = (waited.num_milliseconds().max(0) / aging_ms).min(9);
    (i64::from(priority.clamp(0, 9)) + gained).min(9) as u8
}

/// The local day `now` falls in within `zone` (the key a day's count is kept under) and the
/// instant that day ends: the next local midnight (or, where a DST change skips midnight, the
/// first instant of the next day).
pub fn day_bounds(now: DateTime<Utc>, zone: Tz) -> (chrono::NaiveDate, DateTime<Utc>) {
    let today = now.with_timezone(&zone).date_naive();
    let tomorrow = today.succ_opt().unwrap_or(today);
    let end = first_instant(tomorrow, zone).unwrap_or(now + chrono::Duration::days(1));
    (today, end)
}

/// The instant the local day `now` falls in within `zone` began.
pub fn day_start(now: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
    let today = now.with_timezone(&zone).date_naive();
    first_instant(today, zone).unwrap_or(now - chrono::Duration::days(1))
}

/// The first instant of local `date` in `zone`: midnight, or, where a zone skips local midnight
/// (a DST change at 00:00), the first local time that exists.
fn first_instant(date: chrono::NaiveDate, zone: Tz) -> Option<DateTime<Utc>> {
    let mut at = date.and_time(NaiveTime::MIN);
    for _ in 0..48 {
        if let Some(start) = zone.from_local_datetime(&at).earliest() {
            return Some(start.with_timezone(&Utc));
        }
        at += chrono::Duration::minutes(30);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u32, per: &str) -> Limit {
        Limit {
            max,
            per: per.to_owned(),
        }
    }

    #[test]
    fn a_waiting_send_gains_a_level_per_aging_period_up_to_nine() {
        let aging = std::time::Duration::from_secs(600);
        let min = chrono::Duration::minutes;
        assert_eq!(aged_priority(5, min(0), aging), 5);
        assert_eq!(aged_priority(5, min(9), aging), 5);
        assert_eq!(aged_priority(5, min(10), aging), 6);
        assert_eq!(aged_priority(1, min(35), aging), 4);
        assert_eq!(aged_priority(5, min(600), aging), 9);
        assert_eq!(aged_priority(0, min(-5), aging), 0);
    }

    #[test]
    fn periods() {
        assert_eq!(limit(2000, "P1D").rule().unwrap().period, Period::Day);
        assert_eq!(
            limit(30, "PT1M").rule().unwrap().period,
            Period::Sliding { ms: 60_000 }
        );
        assert_eq!(
            limit(30, "PT24H").rule().unwrap().period,
            Period::Sliding { ms: 86_400_000 }
        );
        for bad in ["P8D", "P1Y", "PT0S", "1 minute", ""] {
            assert!(limit(5, bad).rule().is_err(), "{bad}");
        }
        assert!(limit(0, "PT1M").rule().is_err());
    }

    #[test]
    fn lists_name_the_entry_at_fault() {
        // One period twice (as written two ways) is kept once, with the lower max.
        let rules = check_list(
            "limits",
            &[limit(5, "PT1M"), limit(3, "PT60S"), limit(9, "P1D")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rules.iter().map(|r| r.max).collect::<Vec<_>>(), [3, 9]);
        let err = check_list("limits", &[limit(5, "PT1M"), limit(5, "soon")]).unwrap_err();
        let ApiError::Invalid(f) = err else {
            panic!("not a field error")
        };
        assert_eq!(f.field, "limits[1].per");
        assert!(check_list("limits", &vec![limit(1, "PT1S"); 6]).is_err());
    }

    #[test]
    fn spacing_keeps_any_window_at_max_with_a_guard() {
        let s = Spacing::of(10_000, 5);
        assert_eq!(
            s,
            Spacing {
                interval_us: 2_300_000,
                tolerance_us: 500_000
            }
        );
        // max + 1 sends, each as early as the tolerance lets it, span more than the window.
        for (ms, max) in [
            (10_000, 5),
            (60_000, 30),
            (3_600_000, 100),
            (1_000, 1000),
            (1_000, 7_000_000),
        ] {
            let s = Spacing::of(ms, max);
            assert!(
                i64::from(max) * s.interval_us - s.tolerance_us > ms * 1000,
                "{ms} {max}"
            );
        }
    }

    #[test]
    fn days_roll_over_at_local_midnight_across_dst() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // The night summer time ends (2026-10-25): the day is 25 hours long.
        let now = Utc.with_ymd_and_hms(2026, 10, 24, 22, 30, 0).unwrap(); // 00:30 local, the 25th
        let (day, ends) = day_bounds(now, paris);
        assert_eq!(day.to_string(), "2026-10-25");
        assert_eq!(ends, Utc.with_ymd_and_hms(2026, 10, 25, 23, 0, 0).unwrap());
        // The night summer time starts (2026-03-29): 23 hours.
        let now = Utc.with_ymd_and_hms(2026, 3, 28, 23, 0, 0).unwrap(); // 00:00 local
        let (day, ends) = day_bounds(now, paris);
        assert_eq!(day.to_string(), "2026-03-29");
        assert_eq!(ends, Utc.with_ymd_and_hms(2026, 3, 29, 22, 0, 0).unwrap());
        // A zone whose DST change skips midnight (America/Santiago, September 2026).
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 9, 5, 12, 0, 0).unwrap();
        let (_, ends) = day_bounds(now, santiago);
        assert_eq!(
            ends.with_timezone(&santiago).format("%H:%M").to_string(),
            "01:00"
        );
    }

    #[test]
    fn reasons_say_when_in_the_zone() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let a = Applicable {
            scope: Scope::Mailbox {
                id: Uuid::nil(),
                address: "ada@example.com".into(),
            },
            rule: limit(2000, "P1D").rule().unwrap(),
            zone: paris,
        };
        let until = Utc.with_ymd_and_hms(2026, 11, 29, 8, 0, 0).unwrap();
        assert_eq!(
            a.reason(until),
            "mailbox ada@example.com daily limit (2000) until 2026-11-29 09:00 Europe/Paris"
        );
    }
}
