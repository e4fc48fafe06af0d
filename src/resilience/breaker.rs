//! A circuit breaker per provider. Closed, it counts consecutive failures
//! and the error rate over a sliding window; past either threshold it opens
//! and answers for the provider without touching the network for `open_for`;
//! then half-open, it admits `half_open_probes` requests: all succeed and it
//! closes, one fails and it opens again.
//!
//! The hot path is atomics only: one load to admit in the closed state, a few
//! adds to record. The window is ten buckets; two requests that race to
//! recycle a bucket may lose one count, which a rate over a window tolerates.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::config::services::CircuitBreaker;
use crate::time::Clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl State {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::HalfOpen,
            2 => Self::Open,
            _ => Self::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    /// The `sidecar_circuit_state` gauge value.
    pub fn gauge(self) -> i64 {
        self as i64
    }
}

/// How a request got through, to be handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Closed,
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Until the breaker turns half-open (at least a second when half-open
    /// and every probe slot is taken).
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The client went away or the sidecar answered for itself: says
    /// nothing about the provider.
    Unknown,
}

const BUCKETS: u64 = 10;
const TOTAL_ONE: u64 = 1 << 32;

#[derive(Default)]
struct Bucket {
    /// Bucket index + 1 this bucket counts for; 0 when never used.
    stamp: AtomicU64,
    /// Requests in the high half, failures in the low half.
    counts: AtomicU64,
}

pub type TransitionObserver = Box<dyn Fn(State) + Send + Sync>;

pub struct Breaker {
    failure_threshold: u32,
    error_rate: f64,
    min_requests: u32,
    open_for_ms: u64,
    half_open_probes: u32,
    bucket_ms: u64,
    clock: Arc<dyn Clock>,
    on_transition: TransitionObserver,
    state: AtomicU8,
    opened_at: AtomicU64,
    consecutive_failures: AtomicU32,
    probes_admitted: AtomicU32,
    probes_succeeded: AtomicU32,
    buckets: [Bucket; BUCKETS as usize],
}

impl Breaker {
    pub fn new(
        settings: &CircuitBreaker,
        clock: Arc<dyn Clock>,
        on_transition: TransitionObserver,
    ) -> Self {
        Self {
            failure_threshold: settings.failure_threshold,
            error_rate: settings.error_rate,
            min_requests: settings.min_requests,
            open_for_ms: settings.open_for.as_millis() as u64,
            half_open_probes: settings.half_open_probes,
            bucket_ms: (settings.window.as_millis() as u64 / BUCKETS).max(1),
            clock,
            on_transition,
            state: AtomicU8::new(State::Closed as u8),
            opened_at: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            probes_admitted: AtomicU32::new(0),
            probes_succeeded: AtomicU32::new(0),
            buckets: Default::default(),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Lets a request through or says how long the provider stays closed off.
    pub fn admit(&self) -> Result<Admission, Rejected> {
        match self.state() {
            State::Closed => Ok(Admission::Closed),
            State::Open => {
                let now = self.clock.now_millis();
                let reopens = self.opened_at.load(Ordering::Acquire) + self.open_for_ms;
                if now < reopens {
                    return Err(Rejected {
                        retry_after_ms: reopens - now,
                    });
                }
                if self.transition(State::Open, State::HalfOpen) {
                    self.probes_admitted.store(0, Ordering::Release);
                    self.probes_succeeded.store(0, Ordering::Release);
                }
                self.admit_probe()
            }
            State::HalfOpen => self.admit_probe(),
        }
    }

    fn admit_probe(&self) -> Result<Admission, Rejected> {
        if self.probes_admitted.fetch_add(1, Ordering::AcqRel) < self.half_open_probes {
            Ok(Admission::Probe)
        } else {
            self.probes_admitted.fetch_sub(1, Ordering::AcqRel);
            Err(Rejected {
                retry_after_ms: 1000,
            })
        }
    }

    /// Records how an admitted request went.
    pub fn record(&self, admission: Admission, outcome: Outcome) {
        match admission {
            Admission::Closed => self.record_closed(outcome),
            Admission::Probe => self.record_probe(outcome),
        }
    }

    fn record_closed(&self, outcome: Outcome) {
        let failed = match outcome {
            Outcome::Unknown => return,
            Outcome::Success => false,
            Outcome::Failure => true,
        };
        let now = self.clock.now_millis();
        let (total, failures) = self.count(now, failed);
        if !failed {
            self.consecutive_failures.store(0, Ordering::Release);
            return;
        }
        let consecutive = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let rate_tripped = total >= u64::from(self.min_requests)
            && failures as f64 >= self.error_rate * total as f64;
        if (consecutive >= self.failure_threshold || rate_tripped) && self.state() == State::Closed
        {
            self.open(State::Closed, now);
        }
    }

    fn record_probe(&self, outcome: Outcome) {
        match outcome {
            Outcome::Unknown => {
                // Free the slot for another probe.
                self.probes_admitted.fetch_sub(1, Ordering::AcqRel);
            }
            Outcome::Failure => self.open(State::HalfOpen, self.clock.now_millis()),
            Outcome::Success => {
                let succeeded = self.probes_succeeded.fetch_add(1, Ordering::AcqRel) + 1;
                if succeeded >= self.half_open_probes && self.state() == State::HalfOpen {
                    self.consecutive_failures.store(0, Ordering::Release);
                    for bucket in &self.buckets {
                        bucket.stamp.store(0, Ordering::Release);
                        bucket.counts.store(0, Ordering::Release);
                    }
                    self.transition(State::HalfOpen, State::Closed);
                }
            }
        }
    }

    fn open(&self, from: State, now: u64) {
        self.opened_at.store(now, Ordering::Release);
        self.transition(from, State::Open);
    }

    /// Moves `from` -> `to` if no other request did first; tells the observer
    /// once per transition.
    fn transition(&self, from: State, to: State) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            (self.on_transition)(to);
        }
        moved
    }

    /// Adds one request to the current bucket; returns (requests, failures)
    /// over the window.
    fn count(&self, now: u64, failed: bool) -> (u64, u64) {
        let index = now / self.bucket_ms;
        let bucket = &self.buckets[(index % BUCKETS) as usize];
        let stamp = bucket.stamp.load(Ordering::Acquire);
        if stamp != index + 1
            && bucket
                .stamp
                .compare_exchange(stamp, index + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.counts.store(0, Ordering::Release);
        }
        bucket
            .counts
            .fetch_add(TOTAL_ONE + u64::from(failed), Ordering::AcqRel);
        let oldest = (index + 1).saturating_sub(BUCKETS - 1);
        self.buckets
            .iter()
            .filter(|b| b.stamp.load(Ordering::Acquire) >= oldest.max(1))
            .map(|b| b.counts.load(Ordering::Acquire))
            .fold((0, 0), |(total, failures), counts| {
                (total + (counts >> 32), failures + (counts & 0xffff_ffff))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::time::ManualClock;

    fn settings() -> CircuitBreaker {
        CircuitBreaker {
            failure_threshold: 3,
            error_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(30),
            half_open_probes: 2,
            failure_statuses: vec![500, 502, 503, 504],
        }
    }

    fn breaker(settings: CircuitBreaker) -> (Breaker, Arc<ManualClock>, Arc<Mutex<Vec<State>>>) {
        let clock = Arc::new(ManualClock::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let breaker = Breaker::new(
            &settings,
            clock.clone(),
            Box::new(move |to| log.lock().unwrap().push(to)),
        );
        (breaker, clock, seen)
    }

    fn request(breaker: &Breaker, outcome: Outcome) -> Result<Admission, Rejected> {
        let admission = breaker.admit()?;
        breaker.record(admission, outcome);
        Ok(admission)
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let (breaker, _, seen) = breaker(settings());
        for _ in 0..2 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        request(&breaker, Outcome::Success).unwrap();
        for _ in 0..2 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        assert_eq!(breaker.state(), State::Closed);
        request(&breaker, Outcome::Failure).unwrap();
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(*seen.lock().unwrap(), vec![State::Open]);
    }

    #[test]
    fn open_rejects_until_open_for_has_passed_then_probes() {
        let (breaker, clock, _) = breaker(settings());
        for _ in 0..3 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        clock.advance(Duration::from_millis(29_400));
        assert_eq!(
            breaker.admit(),
            Err(Rejected {
                retry_after_ms: 600
            })
        );
        clock.advance(Duration::from_millis(600));
        assert_eq!(breaker.admit(), Ok(Admission::Probe));
        assert_eq!(breaker.state(), State::HalfOpen);
        assert_eq!(breaker.admit(), Ok(Admission::Probe));
        assert_eq!(
            breaker.admit(),
            Err(Rejected {
                retry_after_ms: 1000
            }),
            "only half_open_probes requests go through"
        );
    }

    #[test]
    fn all_probes_succeeding_closes_and_one_failing_reopens() {
        let (breaker, clock, seen) = breaker(settings());
        for _ in 0..3 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        clock.advance(Duration::from_secs(30));
        let first = breaker.admit().unwrap();
        let second = breaker.admit().unwrap();
        breaker.record(first, Outcome::Success);
        assert_eq!(
            breaker.state(),
            State::HalfOpen,
            "one probe of two is not enough"
        );
        breaker.record(second, Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);

        for _ in 0..3 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        clock.advance(Duration::from_secs(30));
        let probe = breaker.admit().unwrap();
        breaker.record(probe, Outcome::Failure);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(
            breaker.admit(),
            Err(Rejected {
                retry_after_ms: 30_000
            }),
            "a failed probe opens for a full open_for again"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                State::Open,
                State::HalfOpen,
                State::Closed,
                State::Open,
                State::HalfOpen,
                State::Open
            ]
        );
    }

    #[test]
    fn a_probe_whose_client_left_frees_its_slot() {
        let (breaker, clock, _) = breaker(settings());
        for _ in 0..3 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        clock.advance(Duration::from_secs(30));
        let (a, b) = (breaker.admit().unwrap(), breaker.admit().unwrap());
        assert!(breaker.admit().is_err());
        breaker.record(a, Outcome::Unknown);
        let c = breaker.admit().unwrap();
        breaker.record(b, Outcome::Success);
        breaker.record(c, Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn opens_on_the_error_rate_once_min_requests_are_seen() {
        let mut settings = settings();
        settings.failure_threshold = 1000;
        let (breaker, clock, _) = breaker(settings);
        // Alternating: 50% failures, never 2 in a row.
        for i in 0..9 {
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            request(&breaker, outcome).unwrap();
            clock.advance(Duration::from_millis(100));
        }
        assert_eq!(breaker.state(), State::Closed, "9 requests < min_requests");
        request(&breaker, Outcome::Failure).unwrap(); // 6 of 10 failed
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn the_window_forgets_old_requests() {
        let mut settings = settings();
        settings.failure_threshold = 1000;
        let (breaker, clock, _) = breaker(settings);
        for _ in 0..9 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        clock.advance(Duration::from_secs(11));
        for _ in 0..9 {
            request(&breaker, Outcome::Success).unwrap();
        }
        request(&breaker, Outcome::Failure).unwrap();
        assert_eq!(
            breaker.state(),
            State::Closed,
            "1 failure in 10 requests of the last 10 s"
        );
    }

    #[test]
    fn unknown_outcomes_count_for_nothing() {
        let (breaker, _, _) = breaker(settings());
        for _ in 0..2 {
            request(&breaker, Outcome::Failure).unwrap();
        }
        request(&breaker, Outcome::Unknown).unwrap();
        request(&breaker, Outcome::Failure).unwrap();
        assert_eq!(breaker.state(), State::Open);
    }
}
