//! The memory budget (`limits.memory`), kept the way Envoy's overload
//! manager keeps its heap: the process's resident memory is read as the
//! requests that bring new data arrive (webhooks, published events), and
//! once it nears the budget they are answered `503 overloaded` with
//! `Retry-After` until it falls back. The egress proxy is not refused: it
//! holds no more than its connections' buffers, and the app's calls to its
//! providers must not fail because a burst of events came in.
//!
//! Shedding starts at [`SHED_AT`] of the budget, not at the budget itself:
//! RSS is read at most every [`SAMPLE_EVERY`], and what is admitted
//! between two readings (bodies held, an event being written) must still
//! fit. It stops below [`RESUME_AT`], so that a level near the mark does
//! not flap the gate with every reading. What grows with the data (the
//! embedded store's page cache) is sized from the budget at start, so that
//! a long burst levels off below the mark instead of reaching it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Where shedding starts and stops, as shares of the budget.
pub const SHED_AT: f64 = 0.90;
pub const RESUME_AT: f64 = 0.80;

/// The longest RSS goes unread while events arrive: at 10,000 events a
/// second of 2 KiB, 20 ms is 400 KiB of bodies.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The budget without a container limit to take it from.
pub const DEFAULT_BUDGET: u64 = 100 << 20;

/// The share of the container's limit the budget takes by default: the
/// rest is headroom for what the budget does not see coming (a thread's
/// stack, the kernel's socket buffers charged to the cgroup).
const SHARE_OF_CONTAINER: f64 = 0.8;

/// The budget in bytes, and where it comes from (for the start-up log):
/// `configured`, else 80% of the container's memory limit, else
/// [`DEFAULT_BUDGET`].
pub fn budget(configured: Option<u64>, container_limit: Option<u64>) -> (u64, &'static str) {
    match (configured, container_limit) {
        (Some(bytes), _) => (bytes, "limits.memory"),
        (None, Some(limit)) => (
            (limit as f64 * SHARE_OF_CONTAINER) as u64,
            "80% of the container's memory limit",
        ),
        (None, None) => (
            DEFAULT_BUDGET,
            "the default, without a container memory limit",
        ),
    }
}

/// The memory limit of the cgroup this process runs in: the tightest on
/// the way from its own cgroup (`/proc/self/cgroup`) up to the root of the
/// hierarchy mounted at `/sys/fs/cgroup`, v2 or v1; None without one. In a
/// container with its own cgroup namespace the path is `/` and the root
/// is the container's.
pub fn container_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_limit(&cgroups, |path| std::fs::read_to_string(path).ok())
}

/// `cgroups` is `/proc/self/cgroup`'s text; `read` reads a file. Neither
/// is trusted: a line that does not parse, or a path that climbs (`..`),
/// is passed over.
fn cgroup_limit(cgroups: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut tightest: Option<u64> = None;
    for line in cgroups.lines().take(64) {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        if !path.starts_with('/') || path.split('/').any(|part| part == "..") || path.len() > 4096 {
            continue;
        }
        let mut dir = path.trim_end_matches('/');
        loop {
            if let Some(limit) = read(&format!("{base}{dir}/{file}")).and_then(|t| parse_limit(&t))
            {
                tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
            }
            match dir.rfind('/') {
                Some(at) => dir = &dir[..at],
                None => break,
            }
        }
    }
    tightest
}

/// `max` (v2) and v1's "unlimited" (a page-rounded `i64::MAX`) are no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.len() > 20 {
        return None;
    }
    text.parse::<u64>().ok().filter(|&bytes| bytes < 1 << 60)
}

/// The process's resident memory, from `/proc/self/statm` (the cheapest of
/// the files that have it); None where there is no procfs.
pub fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(rustix::param::page_size() as u64))
}

/// Whether new data may come in; shared by the ingress and the publishing
/// path. `read` gives the resident bytes (the process's own in production).
pub struct MemoryGuard {
    budget: u64,
    shedding: AtomicBool,
    last_rss: AtomicU64,
    /// When RSS was last read; the lock also makes one caller read it
    /// while the others go on with the last verdict.
    sampled: Mutex<Option<Instant>>,
    read: fn() -> Option<u64>,
}

impl MemoryGuard {
    pub fn new(budget: u64) -> Self {
        Self::with_reader(budget, resident_bytes)
    }

    pub fn with_reader(budget: u64, read: fn() -> Option<u64>) -> Self {
        Self {
            budget,
            shedding: AtomicBool::new(false),
            last_rss: AtomicU64::new(0),
            sampled: Mutex::new(None),
            read,
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The resident bytes last read.
    pub fn last_rss(&self) -> u64 {
        self.last_rss.load(Ordering::Relaxed)
    }

    /// Whether a request bringing new data is to be refused now. Reads RSS
    /// when the last reading is older than [`SAMPLE_EVERY`].
    pub fn overloaded(&self) -> bool {
        self.sample_if_due(Instant::now());
        self.shedding.load(Ordering::Relaxed)
    }

    fn sample_if_due(&self, now: Instant) {
        // Another caller reading it now: its verdict is as fresh.
        let Ok(mut sampled) = self.sampled.try_lock() else {
            return;
        };
        if sampled.is_some_and(|at| now.duration_since(at) < SAMPLE_EVERY) {
            return;
        }
        *sampled = Some(now);
        if let Some(rss) = (self.read)() {
            self.observe(rss);
        }
    }

    /// Moves the gate for a reading of `rss` bytes.
    fn observe(&self, rss: u64) {
        self.last_rss.store(rss, Ordering::Relaxed);
        let share = rss as f64 / self.budget as f64;
        let was = self.shedding.load(Ordering::Relaxed);
        let now = if was {
            share >= RESUME_AT
        } else {
            share >= SHED_AT
        };
        if now != was {
            self.shedding.store(now, Ordering::Relaxed);
            let (rss_mib, budget_mib) = (rss >> 20, self.budget >> 20);
            if now {
                tracing::warn!(
                    rss_mib,
                    budget_mib,
                    "memory near limits.memory: webhooks and published events are answered 503 overloaded until it falls"
                );
            } else {
                tracing::info!(
                    rss_mib,
                    budget_mib,
                    "memory back under limits.memory: taking events again"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn the_budget_is_the_configured_one_or_80_percent_of_the_container_or_100_mib() {
        assert_eq!(budget(Some(64 << 20), Some(1 << 30)).0, 64 << 20);
        assert_eq!(budget(None, Some(128 << 20)).0, 107_374_182);
        assert_eq!(budget(None, None).0, 100 << 20);
    }

    #[test]
    fn a_cgroup_limit_is_a_plain_number_of_bytes_and_anything_else_is_none() {
        assert_eq!(parse_limit("134217728\n"), Some(128 << 20));
        assert_eq!(parse_limit("max\n"), None);
        // cgroup v1's "unlimited".
        assert_eq!(parse_limit("9223372036854771712"), None);
        for hostile in ["", "-1", "12 34", "0x100", "1e9", &"9".repeat(4096)] {
            assert_eq!(parse_limit(hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn the_container_limit_is_the_tightest_from_the_process_cgroup_up() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |path: &str| {
                entries
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, text)| text.to_string())
            }
        };
        // cgroup v2 in its own namespace: the root is the container's.
        let v2 = files(&[("/sys/fs/cgroup/memory.max", "134217728\n")]);
        assert_eq!(cgroup_limit("0::/\n", v2), Some(128 << 20));
        // v2 without a namespace: the pod's limit is on a parent.
        let nested = files(&[
            ("/sys/fs/cgroup/kubepods/pod1/memory.max", "268435456"),
            ("/sys/fs/cgroup/kubepods/pod1/app/memory.max", "max"),
        ]);
        assert_eq!(
            cgroup_limit("0::/kubepods/pod1/app\n", nested),
            Some(256 << 20)
        );
        // v1, the memory controller among others.
        let v1 = files(&[
            (
                "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "67108864",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712",
            ),
        ]);
        let lines = "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_limit(lines, v1), Some(64 << 20));
        // No limit anywhere, and hostile lines.
        let none = files(&[("/sys/fs/cgroup/memory.max", "max")]);
        assert_eq!(cgroup_limit("0::/\n", none), None);
        let anything = |_: &str| Some("1048576".to_string());
        for hostile in ["", "garbage", "0::relative", "0::/../../etc", "3:memory"] {
            assert_eq!(cgroup_limit(hostile, anything), None, "{hostile:?}");
        }
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let rss = resident_bytes().expect("procfs");
        assert!(rss > 1 << 20, "{rss}");
    }

    static RSS: AtomicU64 = AtomicU64::new(0);
    fn fake_rss() -> Option<u64> {
        Some(RSS.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn shedding_starts_at_90_percent_and_stops_under_80_reading_at_most_every_20_ms() {
        let guard = MemoryGuard::with_reader(100 << 20, fake_rss);
        let mib = |n: u64| RSS.store(n << 20, Ordering::Relaxed);
        mib(89);
        assert!(!guard.overloaded());
        mib(95);
        // Read 20 ms ago at the earliest: the last verdict stands until then.
        assert!(!guard.overloaded());
        tokio::time::advance(SAMPLE_EVERY).await;
        assert!(guard.overloaded());
        assert_eq!(guard.last_rss(), 95 << 20);
        // Between the marks the gate stays as it is, either way.
        mib(85);
        tokio::time::advance(SAMPLE_EVERY).await;
        assert!(guard.overloaded());
        mib(79);
        tokio::time::advance(SAMPLE_EVERY).await;
        assert!(!guard.overloaded());
        mib(85);
        tokio::time::advance(SAMPLE_EVERY).await;
        assert!(!guard.overloaded());
    }
}
