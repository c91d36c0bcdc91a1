//! Where the CPU went during a bench phase: each process's CPU time from `/proc`, each
//! command's share of all cores between two readings, and that share as milliseconds per send
//! by process class. Linux only (empty elsewhere); it measures, it never loads anything.

use std::collections::BTreeMap;

/// CPU time (clock ticks) each process on the machine has used so far, with its command name
/// (kernel workers, whose names change with their work, all as `kworker`), from
/// `/proc/*/stat`. Linux only; empty elsewhere.
pub(crate) fn cpu_ticks() -> BTreeMap<u32, (String, u64)> {
    let mut by = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return by;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the command: state first, then utime and stime as the 12th and 13th fields.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut command = stat[open + 1..close].to_owned();
        if command.starts_with("kworker") {
            command = "kworker".into();
        }
        by.insert(pid, (command, ticks(11) + ticks(12)));
    }
    by
}

/// Each command's share of all CPU between two [`cpu_ticks`] readings `secs` apart (USER_HZ is
/// 100 on Linux), largest first, with what was left idle. A process started in between counts
/// whole; one that ended in between is missed.
pub(crate) fn cpu_split(
    before: &BTreeMap<u32, (String, u64)>,
    after: &BTreeMap<u32, (String, u64)>,
    secs: f64,
) -> Vec<(String, f64)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = secs * cores * 100.0;
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for (pid, (command, t)) in after {
        let earlier = before.get(pid).map_or(0, |(_, t0)| *t0);
        *by.entry(command.clone()).or_insert(0) += t.saturating_sub(earlier);
    }
    let mut split: Vec<(String, f64)> = by
        .into_iter()
        .map(|(command, t)| (command, t as f64 / total))
        .filter(|(_, share)| *share >= 0.005)
        .collect();
    split.sort_by(|a, b| b.1.total_cmp(&a.1));
    let used: f64 = split.iter().map(|(_, s)| s).sum();
    split.push(("idle".into(), (1.0 - used).max(0.0)));
    split
}

/// The CPU time each process class spent per send over a phase: PostgreSQL, Pulse, RabbitMQ,
/// Redis, this harness (its SMTP sink included) and the rest, in milliseconds, from a
/// [`cpu_split`] of `secs` in which `sends` went out.
pub(crate) fn cpu_ms_per_send(
    split: &[(String, f64)],
    secs: f64,
    sends: usize,
) -> Vec<(&'static str, f64)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut by: Vec<(&'static str, f64)> =
        ["postgres", "pulse", "rabbitmq", "redis", "bench", "other"]
            .into_iter()
            .map(|c| (c, 0.0))
            .collect();
    for (command, share) in split {
        let class = match command.as_str() {
            "idle" => continue,
            c if c.starts_with("postgres") => "postgres",
            "pulse" => "pulse",
            "beam.smp" | "erl_child_setup" | "epmd" => "rabbitmq",
            c if c.starts_with("redis") => "redis",
            "bench" => "bench",
            _ => "other",
        };
        if let Some(slot) = by.iter_mut().find(|(c, _)| *c == class) {
            slot.1 += share * secs * cores * 1000.0 / sends.max(1) as f64;
        }
    }
    by
}

/// The goal, end to end at half the bare broker loop, as a CPU budget: on this
/// machine's cores, every process together may spend this many CPU-ms per send (the broker,
/// PostgreSQL, Pulse, the harness and its SMTP sink all share them here).
pub(crate) fn goal_budget_ms(broker_per_s: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    cores * 1000.0 / (GOAL_OF_BROKER * broker_per_s)
}

/// The goal: end to end at this share of the bare broker loop.
pub(crate) const GOAL_OF_BROKER: f64 = 0.5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_shares_become_milliseconds_per_send_by_process_class() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Over 10 s, 1,000 sends: a share of 0.5 of all cores is 5·cores ms of CPU per send.
        let split = vec![
            ("postgres".to_owned(), 0.5),
            ("beam.smp".to_owned(), 0.1),
            ("pulse".to_owned(), 0.2),
            ("kworker".to_owned(), 0.05),
            ("idle".to_owned(), 0.15),
        ];
        let per_send: BTreeMap<_, _> = cpu_ms_per_send(&split, 10.0, 1_000).into_iter().collect();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(per_send["postgres"], 5.0 * cores));
        assert!(near(per_send["rabbitmq"], 1.0 * cores));
        assert!(near(per_send["pulse"], 2.0 * cores));
        assert!(near(per_send["other"], 0.5 * cores));
        assert!(near(per_send["redis"], 0.0));
    }
}
