//! What the benchmarks read from `/proc`: a process's resident memory and
//! CPU time, and the CPU time the whole machine was busy.

use std::sync::OnceLock;

/// Resident memory (`VmRSS`) of `pid` in KiB; `None` once it has exited.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory since the process started (`VmHWM`) in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User plus system CPU seconds of `pid` (all its threads; not its
/// children), from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// User plus system CPU seconds of this process.
pub fn self_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/self/stat")
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; the
    // fields after it start with field 3 (state): utime is 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// CPU seconds the machine spent busy, all CPUs together, since boot (user,
/// nice, system, irq, softirq and steal from `/proc/stat`, as
/// `benches/webhook.sh` counts them).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Some(busy as f64 / clock_ticks() as f64)
}

/// `sysconf(_SC_CLK_TCK)`, read from the auxiliary vector (`AT_CLKTCK`);
/// 100 if it cannot be read.
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        const AT_CLKTCK: u64 = 17;
        let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
            return 100;
        };
        let word = std::mem::size_of::<usize>();
        let value = |b: &[u8]| -> u64 {
            let mut v = [0u8; 8];
            v[..word].copy_from_slice(&b[..word]);
            u64::from_ne_bytes(v)
        };
        auxv.chunks_exact(2 * word)
            .find(|pair| value(&pair[..word]) == AT_CLKTCK)
            .map(|pair| value(&pair[word..]))
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(hwm_kib(pid).unwrap() >= rss_kib(pid).unwrap() / 2);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(self_cpu_seconds().is_some());
        assert!(machine_busy_seconds().unwrap() > 0.0);
        assert_eq!(clock_ticks(), 100);
    }
}
