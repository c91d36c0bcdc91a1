//! Planning send times under the sending limits, where many due times are set at once (a
//! resume and its preview): the same spacing and day counts the check at send time keeps
//! ([`super::Spacing`], [`super::day_bounds`]), so "when will this go" is answered before
//! sending rather than discovered by deferrals. It plans from a clean slate: sends already
//! counted in Redis are not seen, so a plan can only be early by what went out just before.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};

use super::{Applicable, Period, SendLimits, Spacing, day_bounds};

/// Places sends one after another under their limits. `n` sends cost O(n × limits): a full
/// window or day is skipped in one step, never probed minute by minute.
#[derive(Debug, Default)]
pub struct Pacer {
    /// A sliding limit → the earliest time its next send may go.
    next: HashMap<String, DateTime<Utc>>,
    /// A daily limit and a local day → sends placed in it.
    days: HashMap<(String, NaiveDate), u32>,
}

/// Identifies a limit's state, as the Redis keys do: what it is set on and its period.
fn key(limits: &SendLimits, a: &Applicable) -> String {
    let period = match a.rule.period {
        Period::Sliding { ms } => format!("{ms}ms"),
        Period::Day => "day".to_owned(),
    };
    format!("{}:{}:{period}", limits.workspace, a.scope.key())
}

impl Pacer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The send time for one more send that may go at `earliest`, under `limits`: the first
    /// time `valid` accepts (the lead's send window) with a slot under every limit. The slot is
    /// taken.
    pub fn place(
        &mut self,
        earliest: DateTime<Utc>,
        valid: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
        limits: &SendLimits,
    ) -> DateTime<Utc> {
        let at = self.first_slot(earliest, valid, limits);
        self.take(at, limits);
        at
    }

    /// As [`Pacer::place`], but only when the slot comes by `deadline`: a send that would be
    /// later takes no slot (`None`).
    pub fn place_by(
        &mut self,
        earliest: DateTime<Utc>,
        valid: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
        limits: &SendLimits,
        deadline: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let at = self.first_slot(earliest, valid, limits);
        if deadline.is_some_and(|d| at > d) {
            return None;
        }
        self.take(at, limits);
        Some(at)
    }

    fn first_slot(
        &self,
        earliest: DateTime<Utc>,
        valid: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
        limits: &SendLimits,
    ) -> DateTime<Utc> {
        let mut at = valid(earliest);
        // Every pass that does not return moves `at` strictly later; the bound only guards
        // against a `valid` that does not.
        for _ in 0..10_000 {
            let later = limits.list.iter().find_map(|a| {
                let key = key(limits, a);
                match a.rule.period {
                    Period::Sliding { .. } => self.next.get(&key).copied().filter(|t| *t > at),
                    Period::Day => {
                        let (day, ends) = day_bounds(at, a.zone);
                        let used = self.days.get(&(key, day)).copied().unwrap_or(0);
                        (used >= a.rule.max).then_some(ends)
                    }
                }
            });
            match later {
                Some(t) => at = valid(t).max(t),
                None => break,
            }
        }
        at
    }

    fn take(&mut self, at: DateTime<Utc>, limits: &SendLimits) {
        for a in &limits.list {
            let key = key(limits, a);
            match a.rule.period {
                Period::Sliding { ms } => {
                    let step = Spacing::of(ms, a.rule.max).interval_us;
                    self.next
                        .insert(key, at + chrono::Duration::microseconds(step));
                }
                Period::Day => {
                    let (day, _) = day_bounds(at, a.zone);
                    *self.days.entry((key, day)).or_default() += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use chrono_tz::Tz;
    use uuid::Uuid;

    use super::*;
    use crate::limits::{Limit, Scope};

    fn limits(list: &[(u32, &str)]) -> SendLimits {
        let mut l = SendLimits::new(Uuid::nil());
        for (max, per) in list {
            let rule = Limit {
                max: *max,
                per: (*per).to_owned(),
            }
            .rule()
            .unwrap();
            l.add(
                Scope::Workspace,
                rule,
                "Europe/Paris".parse::<Tz>().unwrap(),
            );
        }
        l
    }

    #[test]
    fn spaces_sends_as_the_check_does_and_skips_full_days() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
        let l = limits(&[(10, "PT1M"), (25, "P1D")]);
        let mut pacer = Pacer::new();
        let times: Vec<_> = (0..30).map(|_| pacer.place(now, |t| t, &l)).collect();
        assert_eq!(times[0], now);
        // 10 a minute: (60 s + 3 s guard) / 10 apart.
        assert_eq!(times[1] - times[0], chrono::Duration::milliseconds(6_300));
        for w in times.windows(11) {
            assert!(w[10] - w[0] > chrono::Duration::minutes(1), "{w:?}");
        }
        // The 26th waits for midnight in Paris.
        let midnight = Utc.with_ymd_and_hms(2026, 11, 28, 23, 0, 0).unwrap();
        assert_eq!(times[25], midnight);
        assert!(times[24] < midnight);
    }

    #[test]
    fn without_limits_every_send_goes_when_valid() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
        let mut pacer = Pacer::new();
        let later = now + chrono::Duration::hours(1);
        assert_eq!(pacer.place(now, |_| later, &limits(&[])), later);
        assert_eq!(pacer.place(now, |_| later, &limits(&[])), later);
    }
}
