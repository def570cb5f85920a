//! The host signals read from this machine, for when Prometheus is not configured or does
//! not answer.
//!
//! In: the watched mount points, then one call to [`HostCollector::sample`] per monitor cycle.
//! Out: a [`HostSample`] computed the way the default `[prometheus]` queries compute it from
//! node-exporter, so the two sources agree:
//!
//! - memory: `100 × (1 − MemAvailable / MemTotal)` from `/proc/meminfo`;
//! - CPU: `100 × (1 − Δidle / Δtotal)` between two readings of `/proc/stat` (iowait counts as
//!   busy, as in `1 − rate(node_cpu_seconds_total{mode="idle"})`);
//! - disks: `used / (used + avail)` from statvfs, as `df`'s Use% shows it (blocks reserved
//!   for root count as neither used nor available).
//! - network: bytes and errors, in and out, all interfaces but `lo`, per second between two
//!   readings of `/proc/net/dev`.
//!
//! The rates need a previous reading: [`HostCollector::new`] takes one, and the first
//! `sample` waits until it is [`MIN_RATE_WINDOW`] old, so the first cycle already has them.
//!
//! It is synchronous and blocks (file reads, statvfs, that first short wait): callers run it
//! in `spawn_blocking`. It must stay cheap (it runs every cycle: three small procfs files and
//! one statvfs per mount) and must never panic on what procfs says: an unreadable or odd
//! file makes its fields `None`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::runtime::HostSample;

/// The shortest interval a rate is computed over; shorter ones are too noisy.
pub const MIN_RATE_WINDOW: Duration = Duration::from_millis(200);

/// Reads this machine's host signals; keeps the previous counters for the rates.
pub struct HostCollector {
    mounts: Vec<String>,
    /// The mounted filesystems, refreshed on every sample (mounts come and go).
    previous_cpu: Option<CpuTimes>,
    previous_network: Option<(Instant, BTreeMap<String, NetCounters>)>,
    /// When the previous counters were read, to make the first sample wait for a usable rate.
    previous_at: Instant,
}

impl HostCollector {
    /// A collector for the given mount points; reads the first counters now.
    pub fn new(mounts: Vec<String>) -> Self {
        let now = Instant::now();
        Self {
            mounts,
            previous_cpu: read_cpu_times(),
            previous_network: read_network().map(|counters| (now, counters)),
            previous_at: now,
        }
    }

    /// The host signals now. CPU and network are rates since the previous call (or since
    /// `new`, waiting up to [`MIN_RATE_WINDOW`] first).
    pub fn sample(&mut self) -> HostSample {
        let since_previous = self.previous_at.elapsed();
        if since_previous < MIN_RATE_WINDOW {
            std::thread::sleep(MIN_RATE_WINDOW - since_previous);
        }
        let now = Instant::now();
        self.previous_at = now;

        let cpu = read_cpu_times();
        let cpu_percent = match (&self.previous_cpu, &cpu) {
            (Some(before), Some(after)) => cpu_busy_percent(before, after),
            _ => None,
        };
        if cpu.is_some() {
            self.previous_cpu = cpu;
        }

        let network = read_network();
        let rates = match (&self.previous_network, &network) {
            (Some((then, before)), Some(after)) => {
                network_rates(before, after, now.duration_since(*then))
            }
            _ => None,
        };
        if let Some(counters) = network {
            self.previous_network = Some((now, counters));
        }

        HostSample {
            cpu_percent,
            memory_percent: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| memory_percent(&text)),
            disks: self.disk_percents(),
            network_mb_per_s: rates.map(|(bytes, _)| bytes / 1e6),
            network_errors_per_s: rates.map(|(_, errors)| errors),
            // This machine measures no latency; the monitor estimates it from the traffic.
            network_latency_ms: None,
        }
    }

    /// Percent used of each watched mount point, as `df` shows it:
    /// `used / (used + available to users)`, so blocks reserved for root count as neither.
    fn disk_percents(&mut self) -> BTreeMap<String, f64> {
        let mut percents = BTreeMap::new();
        for mount in &self.mounts {
            let Ok(stat) = rustix::fs::statvfs(mount.as_str()) else {
                continue;
            };
            if let Some(percent) = disk_percent(stat.f_blocks, stat.f_bfree, stat.f_bavail) {
                percents.insert(mount.clone(), percent);
            }
        }
        percents
    }
}

/// `df`'s Use%: `used / (used + available)`, with `used = blocks − free`.
fn disk_percent(blocks: u64, free: u64, available: u64) -> Option<f64> {
    let used = blocks.saturating_sub(free) as f64;
    let usable = used + available as f64;
    (usable > 0.0).then(|| 100.0 * used / usable)
}

/// `100 × (1 − MemAvailable / MemTotal)` from the text of `/proc/meminfo`.
fn memory_percent(meminfo: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        meminfo
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .map(|kb| kb as f64)
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    (total > 0.0).then(|| 100.0 * (1.0 - available / total))
}

/// The all-CPUs line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    idle: u64,
    /// user + nice + system + idle + iowait + irq + softirq + steal. Guest time is already
    /// inside user and nice, so it is not added again.
    total: u64,
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // Kernels before 2.6.11 have fewer columns; the four first always exist.
    if fields.len() < 4 {
        return None;
    }
    Some(CpuTimes {
        idle: fields[3],
        total: fields.iter().sum(),
    })
}

/// Percent busy between two readings, or `None` when no time passed.
fn cpu_busy_percent(before: &CpuTimes, after: &CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    // The idle counter can step back on some kernels; that interval counts as fully busy.
    let idle = after.idle.saturating_sub(before.idle).min(total);
    Some(100.0 * (1.0 - idle as f64 / total as f64))
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct NetCounters {
    bytes: u64,
    errors: u64,
}

fn read_network() -> Option<BTreeMap<String, NetCounters>> {
    parse_net_dev(&std::fs::read_to_string("/proc/net/dev").ok()?)
}

/// Bytes and errors, received plus transmitted, per interface but `lo`. `None` when the
/// text is not `/proc/net/dev`'s; lines that cannot be read are left out.
fn parse_net_dev(text: &str) -> Option<BTreeMap<String, NetCounters>> {
    let mut lines = text.lines();
    // Two header lines: "Inter-|   Receive …" and " face |bytes    packets errs …".
    if !lines.next()?.contains('|') || !lines.next()?.contains('|') {
        return None;
    }
    let mut interfaces = BTreeMap::new();
    for line in lines {
        // The name and the first number may touch ("eth0:123"), so split at the colon.
        let Some((name, numbers)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let Ok(fields) = numbers
            .split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit:
        // bytes packets errs …
        if fields.len() < 11 {
            continue;
        }
        interfaces.insert(
            name.to_owned(),
            NetCounters {
                bytes: fields[0] + fields[8],
                errors: fields[2] + fields[10],
            },
        );
    }
    Some(interfaces)
}

/// Bytes and errors per second between two readings, over the interfaces present in both
/// (an interface that appeared or vanished in between has no rate). A counter that went back
/// was reset, and counts from zero, as in PromQL's `rate`.
fn network_rates(
    before: &BTreeMap<String, NetCounters>,
    after: &BTreeMap<String, NetCounters>,
    elapsed: Duration,
) -> Option<(f64, f64)> {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let increase = |old: u64, new: u64| if new >= old { new - old } else { new };
    let (mut bytes, mut errors) = (0u64, 0u64);
    for (name, new) in after {
        if let Some(old) = before.get(name) {
            bytes = bytes.saturating_add(increase(old.bytes, new.bytes));
            errors = errors.saturating_add(increase(old.errors, new.errors));
        }
    }
    Some((bytes as f64 / seconds, errors as f64 / seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_percent_is_what_df_shows() {
        // 100 blocks, 40 free of which 10 are reserved: 60 used, 30 available → 66.7 %.
        let percent = disk_percent(100, 40, 30).unwrap();
        assert!((percent - 66.666).abs() < 0.01, "{percent}");
        assert_eq!(disk_percent(0, 0, 0), None);
    }

    const MEMINFO: &str = "MemTotal:       24684084 kB\nMemFree:        21416084 kB\n\
                           MemAvailable:   18513063 kB\nBuffers:            8392 kB\n";

    #[test]
    fn memory_is_the_share_not_available() {
        let percent = memory_percent(MEMINFO).unwrap();
        assert!((percent - 25.0).abs() < 0.001, "{percent}");
        assert_eq!(
            memory_percent("MemTotal: 100 kB\nMemFree: 50 kB\n"),
            None,
            "no MemAvailable"
        );
        assert_eq!(memory_percent("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
        assert_eq!(memory_percent(""), None);
        assert_eq!(
            memory_percent("MemTotalX: 1 kB\nMemTotal: 200 kB\nMemAvailable: 50 kB\n"),
            Some(75.0),
            "a longer name with the same start is not the field"
        );
    }

    #[test]
    fn cpu_times_come_from_the_all_cpus_line() {
        let stat = "cpu  100 5 50 800 20 3 2 10 7 1\ncpu0 50 2 25 400 10 1 1 5 3 0\nintr 1 2 3\n";
        assert_eq!(
            parse_cpu_times(stat),
            Some(CpuTimes {
                idle: 800,
                total: 990
            }),
            "guest and guest_nice are not added twice"
        );
        assert_eq!(
            parse_cpu_times("cpu  1 2 3 4\n"),
            Some(CpuTimes { idle: 4, total: 10 })
        );
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4\n"), None, "no all-CPUs line");
        assert_eq!(parse_cpu_times("cpu  1 2 x 4\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 2\n"), None);
    }

    #[test]
    fn cpu_busy_is_one_minus_the_idle_share() {
        let before = CpuTimes {
            idle: 1000,
            total: 2000,
        };
        let after = CpuTimes {
            idle: 1150,
            total: 2200,
        };
        assert_eq!(cpu_busy_percent(&before, &after), Some(25.0));
        assert_eq!(cpu_busy_percent(&before, &before), None, "no time passed");
        let idle_went_back = CpuTimes {
            idle: 900,
            total: 2100,
        };
        assert_eq!(cpu_busy_percent(&before, &idle_went_back), Some(100.0));
        let all_idle_and_more = CpuTimes {
            idle: 1500,
            total: 2100,
        };
        assert_eq!(cpu_busy_percent(&before, &all_idle_and_more), Some(0.0));
        assert_eq!(cpu_busy_percent(&after, &before), None, "total went back");
    }

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 289383690  543291    0    0    0     0          0         0 289383690  543291    0    0    0     0       0          0
  eth0: 229374681    6179    3    0    0     0          0         0   314768    3264    4    0    0     0       0          0
docker0:12345678 10 1 0 0 0 0 0 1000 5 2 0 0 0 0 0
  bad0: 1 2 3
";

    #[test]
    fn net_dev_sums_in_and_out_without_loopback() {
        let interfaces = parse_net_dev(NET_DEV).unwrap();
        assert_eq!(
            interfaces,
            BTreeMap::from([
                (
                    "docker0".to_owned(),
                    NetCounters {
                        bytes: 12_346_678,
                        errors: 3
                    }
                ),
                (
                    "eth0".to_owned(),
                    NetCounters {
                        bytes: 229_689_449,
                        errors: 7
                    }
                ),
            ])
        );
        assert_eq!(parse_net_dev("garbage\n"), None);
        assert_eq!(parse_net_dev(""), None);
    }

    #[test]
    fn network_rates_use_interfaces_present_in_both_readings() {
        let before = BTreeMap::from([
            (
                "eth0".to_owned(),
                NetCounters {
                    bytes: 1_000,
                    errors: 1,
                },
            ),
            (
                "veth1".to_owned(),
                NetCounters {
                    bytes: 9_000_000,
                    errors: 0,
                },
            ),
        ]);
        let after = BTreeMap::from([
            (
                "eth0".to_owned(),
                NetCounters {
                    bytes: 3_001_000,
                    errors: 5,
                },
            ),
            (
                "veth2".to_owned(),
                NetCounters {
                    bytes: 7_000_000,
                    errors: 9,
                },
            ),
        ]);
        assert_eq!(
            network_rates(&before, &after, Duration::from_secs(2)),
            Some((1_500_000.0, 2.0))
        );
        let reset = BTreeMap::from([(
            "eth0".to_owned(),
            NetCounters {
                bytes: 400,
                errors: 0,
            },
        )]);
        assert_eq!(
            network_rates(&before, &reset, Duration::from_secs(1)),
            Some((400.0, 0.0)),
            "a reset counts from zero"
        );
        assert_eq!(network_rates(&before, &after, Duration::ZERO), None);
    }
}
