//! Helpers of the benchmarks that run providers as processes against a local control plane:
//! their CPU and memory from /proc, and their API requests from the API server's audit log.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// A number from the environment, or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every process under `pid`, with the binary it runs.
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let mut found = Vec::new();
    let mut queue = children(pid);
    while let Some(pid) = queue.pop() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|exe| exe.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push((pid, exe));
        queue.extend(children(pid));
    }
    found
}

/// The component under a lifeline: its descendant that runs `binary` (not the lifeline's own
/// shell watcher, nor a profiler wrapping it), once the lifeline has started it.
pub async fn component_pid(lifeline: u32, binary: &str) -> u32 {
    let find = || {
        descendants(lifeline)
            .into_iter()
            .find(|(_, exe)| exe.ends_with(binary))
            .map(|(pid, _)| pid)
    };
    crate::eventually_explained(
        &format!("a {binary} process under lifeline {lifeline}"),
        Duration::from_secs(60),
        async || find(),
        async || format!("only {:?}", descendants(lifeline)),
    )
    .await
}

/// (CPU seconds, peak RSS in MiB) of a running process.
pub fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0; // utime + stime, USER_HZ = 100
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kib / 1024.0)
}

/// The audit events (parsed) from line `from_line` on of requests whose user agent starts with
/// `agent_prefix`.
pub fn audit_events(audit: &Path, from_line: usize, agent_prefix: &str) -> Vec<Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .skip(from_line)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["userAgent"]
                .as_str()
                .is_some_and(|a| a.starts_with(agent_prefix))
        })
        .collect()
}

/// How many requests [`audit_events`] finds.
pub fn count_requests(audit: &Path, from_line: usize, agent_prefix: &str) -> usize {
    audit_events(audit, from_line, agent_prefix).len()
}

pub fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}
