//! Time as the resilience code sees it: microseconds on a monotonic clock,
//! injected so that breakers, limiters and cool-downs are tested exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    /// Microseconds since an arbitrary fixed start; never goes back.
    fn now_micros(&self) -> u64;

    fn now_millis(&self) -> u64 {
        self.now_micros() / 1000
    }
}

/// The real clock: milliseconds since it was made.
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(Self {
            start: Instant::now(),
        })
    }
}

impl Clock for MonotonicClock {
    fn now_micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// Wall-clock time since the Unix epoch, for timestamps shared with other
/// hosts (signatures, stored events); never for measuring intervals.
pub fn unix_time() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whole seconds, rounded up, as `Retry-After` wants them (at least 1).
pub fn retry_after_seconds(millis: u64) -> u64 {
    millis.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(1), 1);
        assert_eq!(retry_after_seconds(1000), 1);
        assert_eq!(retry_after_seconds(1001), 2);
        assert_eq!(retry_after_seconds(0), 1);
    }
}
