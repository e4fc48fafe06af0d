//! Safe retries: which requests may be sent twice, how long to wait between
//! attempts, and a budget so that a dead provider never sees a retry storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};

use crate::config::services::Backoff;
use crate::time::Clock;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Retries allowed per second whatever the traffic, so that a quiet
/// service can still retry at all.
const FLOOR_PER_SECOND: u64 = 3;
const WINDOW_SECONDS: u64 = 10;

/// A request may be sent again when doing so cannot repeat an effect: an
/// idempotent method, or a provider-side deduplication key.
pub fn is_safe_to_repeat(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

/// The wait before retry number `retry` (1 for the first retry): full
/// jitter, a uniform draw below `initial * 2^(retry-1)` capped at `max`, and
/// at least `initial / 2` so that a retry never follows at once.
pub fn backoff_delay(backoff: &Backoff, retry: u32, unit_random: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(20);
    let ceiling = backoff
        .initial
        .saturating_mul(1 << exponent)
        .min(backoff.max);
    let floor = backoff.initial / 2;
    floor
        + ceiling
            .saturating_sub(floor)
            .mul_f64(unit_random.clamp(0.0, 1.0))
}

/// A uniform number in [0, 1) from the OS generator.
pub fn unit_random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// Retries at most `budget` of the requests of the last ten seconds, plus
/// three per second.
pub struct RetryBudget {
    budget: f64,
    clock: Arc<dyn Clock>,
    /// Per second of the window: (second + 1) << 40 | retries << 20 | requests.
    slots: [AtomicU64; WINDOW_SECONDS as usize],
}

const COUNT_BITS: u64 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl RetryBudget {
    pub fn new(budget: f64, clock: Arc<dyn Clock>) -> Self {
        Self {
            budget,
            clock,
            slots: Default::default(),
        }
    }

    /// Counts a first attempt.
    pub fn record_request(&self) {
        self.add(1);
    }

    /// Takes a retry from the budget if one is left.
    pub fn try_retry(&self) -> bool {
        let (requests, retries) = self.totals();
        let allowed = (self.budget * requests as f64) as u64 + FLOOR_PER_SECOND * WINDOW_SECONDS;
        if retries >= allowed {
            return false;
        }
        self.add(1 << COUNT_BITS);
        true
    }

    fn add(&self, amount: u64) {
        let second = self.clock.now_millis() / 1000;
        let stamp = (second + 1) << (2 * COUNT_BITS);
        let slot = &self.slots[(second % WINDOW_SECONDS) as usize];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let base = if current >> (2 * COUNT_BITS) == second + 1 {
                current
            } else {
                stamp
            };
            // Counts saturate rather than spill into the neighbouring field.
            let requests = ((base & COUNT_MASK) + (amount & COUNT_MASK)).min(COUNT_MASK);
            let retries =
                (((base >> COUNT_BITS) & COUNT_MASK) + (amount >> COUNT_BITS)).min(COUNT_MASK);
            let next = stamp | retries << COUNT_BITS | requests;
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// (requests, retries) over the last ten seconds.
    fn totals(&self) -> (u64, u64) {
        let second = self.clock.now_millis() / 1000;
        let oldest = second.saturating_sub(WINDOW_SECONDS - 1) + 1;
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|value| value >> (2 * COUNT_BITS) >= oldest)
            .fold((0, 0), |(requests, retries), value| {
                (
                    requests + (value & COUNT_MASK),
                    retries + ((value >> COUNT_BITS) & COUNT_MASK),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    #[test]
    fn only_idempotent_methods_or_keyed_requests_are_repeated() {
        let none = HeaderMap::new();
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_safe_to_repeat(&method, &none), "{method}");
        }
        assert!(!is_safe_to_repeat(&Method::POST, &none));
        assert!(!is_safe_to_repeat(&Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        assert!(is_safe_to_repeat(&Method::POST, &keyed));
    }

    #[test]
    fn backoff_grows_exponentially_within_its_bounds() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        assert_eq!(backoff_delay(&backoff, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(&backoff, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&backoff, 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(&backoff, 3, 0.5), Duration::from_millis(225));
        assert_eq!(
            backoff_delay(&backoff, 10, 1.0),
            Duration::from_millis(1000)
        );
        assert_eq!(
            backoff_delay(&backoff, 60, 1.0),
            Duration::from_millis(1000)
        );
        let random = unit_random();
        assert!((0.0..1.0).contains(&random));
    }

    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_floor() {
        let clock = Arc::new(ManualClock::default());
        clock.advance(Duration::from_secs(100));
        let budget = RetryBudget::new(0.2, clock.clone());
        // No traffic: the floor of 3 per second over 10 s.
        assert_eq!((0..100).filter(|_| budget.try_retry()).count(), 30);
        clock.advance(Duration::from_secs(10));
        for _ in 0..1000 {
            budget.record_request();
        }
        assert_eq!((0..1000).filter(|_| budget.try_retry()).count(), 230);
    }

    #[test]
    fn the_budget_window_slides() {
        let clock = Arc::new(ManualClock::default());
        let budget = RetryBudget::new(0.0, clock.clone());
        assert_eq!((0..100).filter(|_| budget.try_retry()).count(), 30);
        clock.advance(Duration::from_secs(9));
        assert!(!budget.try_retry(), "still within the window");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            (0..100).filter(|_| budget.try_retry()).count(),
            30,
            "the first second's retries have left the window"
        );
    }
}
