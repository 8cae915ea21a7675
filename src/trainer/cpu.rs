//! What the machine did during an epoch, from the kernel's own counters: this
//! process's CPU seconds (`getrusage`, every thread) and every core's busy and
//! total time (`/proc/stat`), so that an epoch slowed by another process says
//! so in its own row of `metrics.csv` (docs/grids.md, "Timings").

/// The counters at one moment; None off Linux or when `/proc/stat` cannot be read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSnapshot {
    /// This process's user + system seconds.
    pub own_s: f64,
    /// Every core's busy and total seconds since boot.
    pub busy_s: f64,
    pub total_s: f64,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuDelta {
    pub own_s: f64,
    /// Busy seconds of every core that were not this process's.
    pub others_s: f64,
    /// Seconds of every core, busy or idle.
    pub total_s: f64,
}

/// This process's user + system seconds.
fn own_seconds() -> Option<f64> {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

/// Busy and total seconds of every core from the first line of a `/proc/stat` text: user,
/// nice, system, idle, iowait, irq, softirq, steal (guest time is inside user); idle and
/// iowait are not busy.
pub fn machine_seconds(stat: &str, ticks_per_s: f64) -> Option<(f64, f64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line.split_whitespace().skip(1).take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: f64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some(((total - idle) / ticks_per_s, total / ticks_per_s))
}

/// The counters now.
pub fn snapshot() -> Option<CpuSnapshot> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let (busy_s, total_s) = machine_seconds(&stat, if ticks > 0 { ticks as f64 } else { 100.0 })?;
    Some(CpuSnapshot { own_s: own_seconds()?, busy_s, total_s })
}

impl CpuSnapshot {
    /// What happened since `earlier`.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuDelta {
        let own_s = (self.own_s - earlier.own_s).max(0.0);
        CpuDelta { own_s, others_s: ((self.busy_s - earlier.busy_s) - own_s).max(0.0), total_s: (self.total_s - earlier.total_s).max(0.0) }
    }
}

/// The median and the interquartile range (linear interpolation between order statistics)
/// of `v`; None when empty.
pub fn median_iqr(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let x = p * (s.len() - 1) as f64;
        let (i, f) = (x.floor() as usize, x - x.floor());
        s[i] + f * (s[(i + 1).min(s.len() - 1)] - s[i])
    };
    Some((q(0.5), q(0.75) - q(0.25)))
}
