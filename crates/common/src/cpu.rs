//! How many CPU cores this process may use: the cgroup quota when there is one (a container's
//! `--cpus`), else the host's available parallelism (which already honours CPU pinning).

use std::path::Path;

/// The CPU limit in cores, possibly fractional (`1.5` for `--cpus 1.5`).
pub fn cpu_limit_cores() -> f64 {
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let quota = read_cgroup_v2(Path::new("/sys/fs/cgroup/cpu.max")).or_else(|| {
        read_cgroup_v1(
            Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
            Path::new("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
        )
    });
    match quota {
        Some(cores) => cores.min(parallelism),
        None => parallelism,
    }
}

/// Threads for a CPU-bound pool under a limit of `cores`: at least one, rounded up.
pub fn pool_threads(cores: f64) -> usize {
    (cores.ceil() as usize).max(1)
}

fn read_cgroup_v2(path: &Path) -> Option<f64> {
    parse_cpu_max(&std::fs::read_to_string(path).ok()?)
}

fn read_cgroup_v1(quota: &Path, period: &Path) -> Option<f64> {
    let quota: i64 = std::fs::read_to_string(quota).ok()?.trim().parse().ok()?;
    let period: i64 = std::fs::read_to_string(period).ok()?.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Parses cgroup v2 `cpu.max` (`"<quota> <period>"` or `"max <period>"`); `None` = no limit.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_is_parsed() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn pool_threads_round_up_to_at_least_one() {
        assert_eq!(pool_threads(0.5), 1);
        assert_eq!(pool_threads(1.5), 2);
        assert_eq!(pool_threads(4.0), 4);
    }

    #[test]
    fn this_machine_has_a_positive_limit() {
        assert!(cpu_limit_cores() > 0.0);
    }
}
