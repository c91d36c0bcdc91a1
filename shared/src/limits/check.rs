//! The check at send time: one Lua script in Redis that looks at every limit a send needs and
//! either takes a slot under all of them or none (atomic, so concurrent senders can never share
//! a slot). Hand-written because it is the algorithm itself: GCRA for sliding windows, a counter
//! per local day for `P1D`; no maintained crate does several limits atomically in one round trip.
//!
//! Keys (with the role's Redis prefix): `limit:{workspace}:{scope}:{ms}ms` holds a sliding
//! window's theoretical arrival time (µs, Redis clock) or a day's count (`…:day:{date}`),
//! `…:{ms}ms:gate` the same time for the final dots ([`SendLimits::pass_gate`]), and
//! `…:waits` (a hash by priority, 0–9) the slot handed to the last send of each priority that
//! had to wait. A refused send is given the slot after the last one handed out to a send of its
//! priority or higher, so a backlog over a limit comes back spread one interval apart, not all at
//! once, and a higher-priority send is not queued behind lower-priority ones: it takes the next
//! free slot, and the lower-priority send that was promised that slot finds it taken and waits
//! again behind its own level (one extra deferral per displaced send). Redis may lose these keys:
//! the limits then start afresh, which can let at most one more window's worth through (the
//! `overspeed` guardrail counts that from the ledger); it never blocks for good.

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};

use super::{Applicable, Period, SendLimits, Spacing, day_bounds};
use crate::pause::{PauseError, PauseFlags};

/// What the check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// A slot was taken under every limit: send now.
    Go,
    /// No slot was taken: the send's slot frees in `after`; `binding` is the index (in
    /// [`SendLimits::list`]) of the limit that set the time.
    Wait { after: Duration, binding: usize },
}

/// Times are microseconds on Redis's clock. Numbers go to Redis through `%d`: Lua's default
/// conversion keeps 14 digits, too few for a time in microseconds.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function int(x) return string.format('%d', x) end
local n = tonumber(ARGV[1])
local free = now
local binding = 0
local blocked = {}
for i = 1, n do
  local kind = ARGV[3 * i - 1]
  local a = tonumber(ARGV[3 * i])
  local b = tonumber(ARGV[3 * i + 1])
  local v = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local at = nil
  if kind == 's' then
    if v - now > b then at = v - b end
  elseif v >= a then
    at = math.max(b, now + 1)
  end
  if at then
    blocked[i] = true
    if binding == 0 or at > free then free = at; binding = i end
  end
end
if binding == 0 then
  for i = 1, n do
    local a = tonumber(ARGV[3 * i])
    local b = tonumber(ARGV[3 * i + 1])
    if ARGV[3 * i - 1] == 's' then
      local v = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
      local tat = math.max(v, now) + a
      redis.call('SET', KEYS[2 * i - 1], int(tat), 'PX', int(math.ceil((tat - now + b) / 1000) + 1000))
    else
      redis.call('INCR', KEYS[2 * i - 1])
      redis.call('PEXPIREAT', KEYS[2 * i - 1], int(math.floor(b / 1000) + 86400000))
    end
  end
  return {'0', 0}
end
local p = tonumber(ARGV[3 * n + 2])
local levels = {}
for l = p, 9 do levels[#levels + 1] = tostring(l) end
for i = 1, n do
  if blocked[i] and ARGV[3 * i - 1] == 's' then
    for _, h in ipairs(redis.call('HMGET', KEYS[2 * i], unpack(levels))) do
      if h and tonumber(h) > free then free = tonumber(h); binding = i end
    end
  end
end
for i = 1, n do
  if blocked[i] and ARGV[3 * i - 1] == 's' then
    local h = free + tonumber(ARGV[3 * i])
    local ttl = math.ceil((h - now) / 1000) + 1000
    redis.call('HSET', KEYS[2 * i], tostring(p), int(h))
    if redis.call('PTTL', KEYS[2 * i]) < ttl then redis.call('PEXPIRE', KEYS[2 * i], int(ttl)) end
  end
end
return {int(free - now), binding}
";

/// The spacing again at the gate, just before the final dot (see [`SendLimits::pass_gate`]):
/// the same GCRA over keys of its own (`…:{ms}ms:gate`), every window or none.
const GATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function int(x) return string.format('%d', x) end
local free = now
for i = 1, #KEYS do
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local b = tonumber(ARGV[2 * i])
  if v - b > free then free = v - b end
end
if free > now then return int(free - now) end
for i = 1, #KEYS do
  local a = tonumber(ARGV[2 * i - 1])
  local b = tonumber(ARGV[2 * i])
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local tat = math.max(v, now) + a
  redis.call('SET', KEYS[i], int(tat), 'PX', int(math.ceil((tat - now + b) / 1000) + 1000))
end
return '0'
";

/// The scripts, hashed once (each call sends the hash; Redis loads a script it lacks).
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));
static GATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GATE_SCRIPT));

impl SendLimits {
    /// Takes a slot under every limit, or none and says when to come back: after the slots
    /// already handed to waiting sends of `priority` (0–9) or higher. `now` (this machine's
    /// clock) only picks the local day of `P1D` limits; sliding windows run on Redis's clock,
    /// which every sender shares. A Redis failure is an error: the caller holds the send (fail
    /// closed).
    pub async fn take(
        &self,
        flags: &PauseFlags,
        now: DateTime<Utc>,
        priority: u8,
    ) -> Result<Taken, PauseError> {
        if self.list.is_empty() {
            return Ok(Taken::Go);
        }
        let mut call = TAKE.prepare_invoke();
        call.arg(self.list.len());
        for limit in &self.list {
            let base = self.key_base(flags, limit);
            match limit.rule.period {
                Period::Sliding { ms } => {
                    let s = Spacing::of(ms, limit.rule.max);
                    call.key(format!("{base}:{ms}ms"))
                        .key(format!("{base}:{ms}ms:waits"))
                        .arg("s")
                        .arg(s.interval_us)
                        .arg(s.tolerance_us);
                }
                Period::Day => {
                    let (day, ends) = day_bounds(now, limit.zone);
                    let key = format!("{base}:day:{day}");
                    call.key(&key)
                        .key(format!("{key}:waiting"))
                        .arg("d")
                        .arg(limit.rule.max)
                        .arg(ends.timestamp_micros());
                }
            }
        }
        call.arg(priority.min(9));
        let (wait_us, binding): (String, usize) = flags.invoke(&call).await?;
        if binding == 0 {
            return Ok(Taken::Go);
        }
        Ok(Taken::Wait {
            after: Duration::from_micros(wait_us.parse().unwrap_or(0)),
            binding: binding - 1,
        })
    }

    /// Where `limit`'s keys start in Redis: `{prefix}:limit:{workspace}:{scope}`.
    fn key_base(&self, flags: &PauseFlags, limit: &Applicable) -> String {
        format!(
            "{}:limit:{}:{}",
            flags.prefix(),
            self.workspace,
            limit.scope.key()
        )
    }

    /// The sliding windows' spacing once more, at the gate, with the body out and the final dot
    /// held: `None` lets the dot follow (and counts it), `Some(after)` says it would come too
    /// soon after the last dots.
    ///
    /// [`SendLimits::take`] spaces the slots, but the time from a slot to its dot varies (the
    /// SMTP exchange, the relay, the host's load), and sends whose slots were spaced can reach
    /// the relay bunched: a burst measured 1.08 × a mailbox's limit on the relay's clock with
    /// the slot alone. Spacing the dots too bounds what the relay sees by the time from the gate
    /// to the dot (the claim), whatever happened before it. Slots still decide who goes: a send
    /// refused here is one whose dot came early against the others', which is rare unless the
    /// delays vary by more than a window's guard. Day counts are exact at the slot and are not
    /// counted again.
    pub async fn pass_gate(&self, flags: &PauseFlags) -> Result<Option<Duration>, PauseError> {
        let mut call = None::<redis::ScriptInvocation<'_>>;
        for limit in &self.list {
            if let Period::Sliding { ms } = limit.rule.period {
                let s = Spacing::of(ms, limit.rule.max);
                call.get_or_insert_with(|| GATE.prepare_invoke())
                    .key(format!("{}:{ms}ms:gate", self.key_base(flags, limit)))
                    .arg(s.interval_us)
                    .arg(s.tolerance_us);
            }
        }
        let Some(call) = call else {
            return Ok(None);
        };
        let wait_us: String = flags.invoke(&call).await?;
        Ok(match wait_us.parse::<u64>().unwrap_or(0) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        })
    }
}
