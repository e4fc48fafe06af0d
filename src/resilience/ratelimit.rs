//! Per-pod rate limits: GCRA (the generic cell rate algorithm, a token
//! bucket kept as one "theoretical arrival time" per key). `requests` per
//! `per` with `burst`: a full bucket lets `burst` requests through at once,
//! then one every `per / requests`.
//!
//! A limit keyed by `service` alone is one atomic. Keys with headers live in
//! sixteen mutex-guarded shards, each key kept as its 64-bit keyed hash
//! (the header value may be kilobytes long, and comes from the app). Buckets
//! that have refilled are pruned once a shard grows; at most [`MAX_KEYS`]
//! are kept, so unique header values cannot grow the limiter without bound:
//! past the cap the buckets nearest to refilled are forgotten first (a
//! forgotten bucket starts full again, the least harm a cap can do).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;

use crate::config::services::{LimitKey, OnLimit, RateLimit};
use crate::time::Clock;

/// The key of requests that lack a keyed header: they share one bucket.
pub const MISSING_KEY: &str = "-";
const SHARDS: usize = 16;
const PRUNE_ABOVE: usize = 4096;
/// Buckets kept per limiter at most.
pub const MAX_KEYS: usize = SHARDS * PRUNE_ABOVE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead. `remaining` requests could follow at once; the bucket is
    /// full again in `reset_ms`.
    Allow { remaining: u64, reset_ms: u64 },
    /// A slot is reserved `delay_ms` from now: wait, then go (`on_limit: wait`).
    Wait { delay_ms: u64, reset_ms: u64 },
    /// Over the limit: the next slot is `retry_after_ms` away.
    Reject { retry_after_ms: u64 },
}

/// The arithmetic of one bucket, in clock microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    /// Time between two requests at the sustained rate.
    pub interval: u64,
    /// How far ahead of now the arrival time may run: `burst` intervals.
    pub tolerance: u64,
    /// How much further it may run when requests wait for their slot.
    pub max_wait: u64,
}

impl Gcra {
    pub fn new(limit: &RateLimit) -> Self {
        let interval = (limit.per.as_micros() as u64 / u64::from(limit.requests)).max(1);
        let max_wait = match limit.on_limit {
            OnLimit::Reject => 0,
            OnLimit::Wait { max_wait } => max_wait.as_micros() as u64,
        };
        Self {
            interval,
            tolerance: interval * u64::from(limit.burst),
            max_wait,
        }
    }

    /// Decides for a request arriving at `now` on a bucket whose arrival
    /// time is `tat` (0 for a new bucket); returns the new arrival time. A
    /// request waits at most `max_wait`, and never past `wait_cap` (what is
    /// left of its timeout).
    pub fn decide(&self, tat: u64, now: u64, wait_cap: u64) -> (Decision, u64) {
        let new_tat = tat.max(now) + self.interval;
        let allowed_until = now + self.tolerance;
        let reset_ms = (new_tat - now).div_ceil(1000);
        if new_tat <= allowed_until {
            let remaining = (allowed_until - new_tat) / self.interval;
            (
                Decision::Allow {
                    remaining,
                    reset_ms,
                },
                new_tat,
            )
        } else if new_tat - allowed_until <= self.max_wait.min(wait_cap) {
            let delay_ms = (new_tat - allowed_until).div_ceil(1000);
            (Decision::Wait { delay_ms, reset_ms }, new_tat)
        } else {
            let retry_after_ms = (new_tat - allowed_until).div_ceil(1000);
            (Decision::Reject { retry_after_ms }, tat)
        }
    }
}

pub struct LocalLimiter {
    gcra: Gcra,
    keys: Vec<LimitKey>,
    clock: Arc<dyn Clock>,
    /// The bucket when the key is the service alone.
    service: AtomicU64,
    /// Per shard: the key's keyed hash -> its bucket's arrival time. The
    /// hasher's random key keeps an app from choosing colliding values.
    shards: Vec<Mutex<HashMap<u64, u64>>>,
    hasher: RandomState,
}

impl LocalLimiter {
    pub fn new(limit: &RateLimit, clock: Arc<dyn Clock>) -> Self {
        Self {
            gcra: Gcra::new(limit),
            keys: limit.key.clone(),
            clock,
            service: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// `wait_cap`: the longest this request may wait for its slot.
    pub fn decide(&self, headers: &HeaderMap, wait_cap: Duration) -> Decision {
        let now = self.clock.now_micros();
        let cap = micros(wait_cap);
        match self.keys.as_slice() {
            [LimitKey::Service] => self.decide_service(now, cap),
            [LimitKey::Header(name)] => self.decide_keyed(header_key(headers, name), now, cap),
            keys => self.decide_keyed(&composite_key(keys, headers), now, cap),
        }
    }

    /// Requests the service's bucket would still let through at once (of
    /// `burst`), without taking one; None when requests are keyed by a
    /// header (a bucket per key, none of them the service's).
    pub fn service_remaining(&self) -> Option<u64> {
        if !matches!(self.keys.as_slice(), [LimitKey::Service]) {
            return None;
        }
        let now = self.clock.now_micros();
        let tat = self.service.load(Ordering::Acquire).max(now);
        let allowed_until = now + self.gcra.tolerance;
        Some(allowed_until.saturating_sub(tat) / self.gcra.interval)
    }

    fn decide_service(&self, now: u64, cap: u64) -> Decision {
        let mut tat = self.service.load(Ordering::Acquire);
        loop {
            let (decision, new_tat) = self.gcra.decide(tat, now, cap);
            if new_tat == tat {
                return decision;
            }
            match self.service.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return decision,
                Err(current) => tat = current,
            }
        }
    }

    fn decide_keyed(&self, key: &str, now: u64, cap: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[hash as usize % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = buckets.get(&hash).copied().unwrap_or(0);
        let (decision, new_tat) = self.gcra.decide(tat, now, cap);
        if new_tat != tat {
            match buckets.get_mut(&hash) {
                Some(slot) => *slot = new_tat,
                None => {
                    if buckets.len() >= PRUNE_ABOVE {
                        make_room(&mut buckets, now);
                    }
                    buckets.insert(hash, new_tat);
                }
            }
        }
        decision
    }

    /// Buckets held for header keys (for tests and `/admin/services`).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// Frees room in a full shard: a bucket whose arrival time has passed is
/// full, the same as no bucket at all; if every bucket is still draining,
/// the eighth nearest to full goes (one scan frees room for many inserts).
fn make_room(buckets: &mut HashMap<u64, u64>, now: u64) {
    buckets.retain(|_, tat| *tat > now);
    if buckets.len() < PRUNE_ABOVE {
        return;
    }
    let mut arrival_times: Vec<u64> = buckets.values().copied().collect();
    let cut = PRUNE_ABOVE / 8;
    let (_, threshold, _) = arrival_times.select_nth_unstable(cut);
    let threshold = *threshold;
    buckets.retain(|_, tat| *tat > threshold);
}

pub fn micros(duration: Duration) -> u64 {
    duration.as_micros().min(u128::from(u64::MAX)) as u64
}

/// The bucket key of a request under a list of keys ("" for `service`).
pub fn composite_key(keys: &[LimitKey], headers: &HeaderMap) -> String {
    let parts: Vec<&str> = keys
        .iter()
        .map(|key| match key {
            LimitKey::Service => "",
            LimitKey::Header(name) => header_key(headers, name),
        })
        .collect();
    parts.join("\u{1f}")
}

fn header_key<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(MISSING_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::services::{LimitScope, OnStoreError};
    use crate::time::ManualClock;

    fn limit(requests: u32, per: Duration, burst: u32) -> RateLimit {
        RateLimit {
            requests,
            per,
            burst,
            scope: LimitScope::Local,
            key: vec![LimitKey::Service],
            on_limit: OnLimit::Reject,
            on_store_error: OnStoreError::Local,
        }
    }

    fn limiter(limit: RateLimit) -> (LocalLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (LocalLimiter::new(&limit, clock.clone()), clock)
    }

    fn allowed(decision: Decision) -> bool {
        matches!(decision, Decision::Allow { .. })
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_one_per_interval() {
        // 60/min: one per second, burst 5.
        let (limiter, clock) = limiter(limit(60, Duration::from_secs(60), 5));
        let none = HeaderMap::new();
        clock.advance(Duration::from_secs(100));
        for expected_remaining in (0..5).rev() {
            assert_eq!(
                limiter.decide(&none, Duration::MAX),
                Decision::Allow {
                    remaining: expected_remaining,
                    reset_ms: (5 - expected_remaining) * 1000
                }
            );
        }
        assert_eq!(
            limiter.decide(&none, Duration::MAX),
            Decision::Reject {
                retry_after_ms: 1000
            }
        );
        clock.advance(Duration::from_millis(999));
        assert_eq!(
            limiter.decide(&none, Duration::MAX),
            Decision::Reject { retry_after_ms: 1 },
            "exact to the millisecond"
        );
        clock.advance(Duration::from_millis(1));
        assert!(allowed(limiter.decide(&none, Duration::MAX)));
        assert!(!allowed(limiter.decide(&none, Duration::MAX)));
    }

    #[test]
    fn what_the_service_bucket_has_left_is_read_without_taking_any() {
        let (limiter, clock) = limiter(limit(60, Duration::from_secs(60), 5));
        let none = HeaderMap::new();
        clock.advance(Duration::from_secs(100));
        assert_eq!(limiter.service_remaining(), Some(5));
        assert_eq!(limiter.service_remaining(), Some(5), "reading takes none");
        for _ in 0..3 {
            assert!(allowed(limiter.decide(&none, Duration::MAX)));
        }
        assert_eq!(limiter.service_remaining(), Some(2));
        clock.advance(Duration::from_secs(2));
        assert_eq!(limiter.service_remaining(), Some(4));
        let mut keyed = limit(60, Duration::from_secs(60), 5);
        keyed.key = vec![LimitKey::Header("x-tenant".into())];
        assert_eq!(self::limiter(keyed).0.service_remaining(), None);
    }

    #[test]
    fn an_idle_bucket_refills_to_the_burst_and_no_further() {
        let (limiter, clock) = limiter(limit(10, Duration::from_secs(1), 3));
        let none = HeaderMap::new();
        clock.advance(Duration::from_secs(5));
        for _ in 0..3 {
            assert!(allowed(limiter.decide(&none, Duration::MAX)));
        }
        assert!(!allowed(limiter.decide(&none, Duration::MAX)));
        clock.advance(Duration::from_millis(200));
        assert!(
            allowed(limiter.decide(&none, Duration::MAX)),
            "100 ms per request"
        );
        assert!(allowed(limiter.decide(&none, Duration::MAX)));
        assert!(!allowed(limiter.decide(&none, Duration::MAX)));
        clock.advance(Duration::from_secs(60));
        let passed = (0..10)
            .filter(|_| allowed(limiter.decide(&none, Duration::MAX)))
            .count();
        assert_eq!(passed, 3);
    }

    #[test]
    fn wait_mode_reserves_slots_up_to_max_wait() {
        let mut settings = limit(10, Duration::from_secs(1), 2);
        settings.on_limit = OnLimit::Wait {
            max_wait: Duration::from_millis(250),
        };
        let (limiter, clock) = limiter(settings);
        let none = HeaderMap::new();
        clock.advance(Duration::from_secs(1));
        assert!(allowed(limiter.decide(&none, Duration::MAX)));
        assert!(allowed(limiter.decide(&none, Duration::MAX)));
        assert_eq!(
            limiter.decide(&none, Duration::MAX),
            Decision::Wait {
                delay_ms: 100,
                reset_ms: 300
            }
        );
        assert_eq!(
            limiter.decide(&none, Duration::MAX),
            Decision::Wait {
                delay_ms: 200,
                reset_ms: 400
            }
        );
        assert_eq!(
            limiter.decide(&none, Duration::MAX),
            Decision::Reject {
                retry_after_ms: 300
            },
            "a wait past max_wait is refused and reserves nothing"
        );
        assert_eq!(
            limiter.decide(&none, Duration::from_millis(299)),
            Decision::Reject {
                retry_after_ms: 300
            },
            "nor past what is left of the request's timeout"
        );
        clock.advance(Duration::from_millis(100));
        assert_eq!(
            limiter.decide(&none, Duration::MAX),
            Decision::Wait {
                delay_ms: 200,
                reset_ms: 400
            }
        );
    }

    #[test]
    fn header_keys_get_their_own_buckets_and_a_missing_header_shares_one() {
        let mut settings = limit(1, Duration::from_secs(1), 1);
        settings.key = vec![LimitKey::Header("x-client".into())];
        let (limiter, clock) = limiter(settings);
        clock.advance(Duration::from_secs(1));
        let client = |id: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-client", id.parse().unwrap());
            headers
        };
        assert!(allowed(limiter.decide(&client("a"), Duration::MAX)));
        assert!(!allowed(limiter.decide(&client("a"), Duration::MAX)));
        assert!(allowed(limiter.decide(&client("b"), Duration::MAX)));
        assert!(allowed(limiter.decide(&HeaderMap::new(), Duration::MAX)));
        assert!(
            !allowed(limiter.decide(&client(""), Duration::MAX)),
            "an empty header counts as missing"
        );
        assert_eq!(limiter.tracked_keys(), 3);
    }

    #[test]
    fn several_keys_combine() {
        let mut settings = limit(1, Duration::from_secs(1), 1);
        settings.key = vec![
            LimitKey::Service,
            LimitKey::Header("x-client".into()),
            LimitKey::Header("x-region".into()),
        ];
        let (limiter, clock) = limiter(settings);
        clock.advance(Duration::from_secs(1));
        let request = |client: &str, region: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-client", client.parse().unwrap());
            headers.insert("x-region", region.parse().unwrap());
            headers
        };
        assert!(allowed(limiter.decide(&request("a", "eu"), Duration::MAX)));
        assert!(allowed(limiter.decide(&request("a", "us"), Duration::MAX)));
        assert!(!allowed(limiter.decide(&request("a", "eu"), Duration::MAX)));
    }

    #[test]
    fn refilled_buckets_are_pruned_when_a_shard_grows() {
        let mut settings = limit(1000, Duration::from_secs(1), 1);
        settings.key = vec![LimitKey::Header("x-client".into())];
        let (limiter, clock) = limiter(settings);
        let mut headers = HeaderMap::new();
        for i in 0..(PRUNE_ABOVE * SHARDS * 2) {
            headers.insert("x-client", i.to_string().parse().unwrap());
            limiter.decide(&headers, Duration::MAX);
            clock.advance(Duration::from_millis(1));
        }
        assert!(
            limiter.tracked_keys() <= PRUNE_ABOVE * SHARDS,
            "{} buckets kept",
            limiter.tracked_keys()
        );
    }

    #[test]
    fn unique_keys_that_never_refill_stay_under_the_cap() {
        // One request per hour: no bucket refills while the test runs.
        let mut settings = limit(1, Duration::from_secs(3600), 1);
        settings.key = vec![LimitKey::Header("x-client".into())];
        let (limiter, _clock) = limiter(settings);
        let mut headers = HeaderMap::new();
        let count = MAX_KEYS + MAX_KEYS / 2;
        for i in 0..count {
            headers.insert("x-client", format!("client-{i}").parse().unwrap());
            assert!(allowed(limiter.decide(&headers, Duration::MAX)));
        }
        assert!(
            limiter.tracked_keys() <= MAX_KEYS,
            "{}",
            limiter.tracked_keys()
        );
        // A key that is still tracked is still limited.
        headers.insert("x-client", format!("client-{}", count - 1).parse().unwrap());
        assert!(!allowed(limiter.decide(&headers, Duration::MAX)));
    }
}
