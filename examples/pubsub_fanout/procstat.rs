//! CPU and memory of processes, from /proc.

use std::time::Instant;

use crate::Config;

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (busy, steal) ticks of the whole machine: user+nice+system, steal.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((f.first()? + f.get(1)? + f.get(2)?, *f.get(7)?))
}

pub struct CpuSnap {
    pub watched: Vec<Option<u64>>,
    pub own: Option<u64>,
    pub machine: Option<(u64, u64)>,
    pub at: Instant,
}

pub fn snapshot(cfg: &Config) -> CpuSnap {
    CpuSnap {
        watched: cfg
            .watch
            .iter()
            .map(|(_, pid)| cpu_ticks(&pid.to_string()))
            .collect(),
        own: cpu_ticks("self"),
        machine: machine_ticks(),
        at: Instant::now(),
    }
}
