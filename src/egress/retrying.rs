//! Whether a failed attempt is tried again, decided in one place for the
//! three points where Pingora reports a failure (connect, a provider status,
//! a broken exchange). A retry must be configured for that failure, safe to
//! repeat, within `attempts`, within the service timeout, within the retry
//! budget, and admitted like a new request by the breaker and the rate limit
//! (retries count toward both).

use std::sync::Arc;
use std::time::Duration;

use crate::config::services::{Retry, RetryOn};
use crate::resilience::breaker::Outcome;
use crate::resilience::retry::{backoff_delay, unit_random, RetryBudget};
use crate::time::Clock;

use super::guard::{Guard, Pass, Verdict};

pub struct ServiceRetry {
    policy: Retry,
    budget: RetryBudget,
}

/// What the proxy knows about the attempt that just failed.
pub struct Attempt<'a> {
    /// 1 for the first try.
    pub number: u32,
    pub reason: RetryOn,
    /// Idempotent method or Idempotency-Key, and a body that can be replayed.
    pub safe_to_repeat: bool,
    pub time_left: Duration,
    pub headers: &'a http::HeaderMap,
}

/// A retry that was granted: wait `delay`, then go with `pass`.
#[derive(Debug)]
pub struct Granted {
    pub delay: Duration,
    pub pass: Pass,
}

impl ServiceRetry {
    pub fn new(policy: &Retry, clock: Arc<dyn Clock>) -> Self {
        Self {
            budget: RetryBudget::new(policy.budget, clock),
            policy: policy.clone(),
        }
    }

    /// Counts a first attempt toward the budget.
    pub fn record_request(&self) {
        self.budget.record_request();
    }

    /// Decides on a retry; records the failed attempt with the breaker
    /// either way (`admission` is the failed attempt's).
    pub fn decide(
        &self,
        guard: &Guard,
        failed: &mut Pass,
        attempt: &Attempt<'_>,
    ) -> Option<Granted> {
        if !self.wants(attempt) {
            return None;
        }
        // This attempt failed; the breaker hears of it now, before the next.
        guard.finish(failed.admission.take(), Outcome::Failure);
        let backoff = backoff_delay(&self.policy.backoff, attempt.number, unit_random());
        if backoff >= attempt.time_left || !self.budget.try_retry() {
            return None;
        }
        match guard.admit_in_pod(attempt.headers, attempt.time_left - backoff) {
            Verdict::Go(pass) => Some(Granted {
                delay: backoff,
                pass,
            }),
            Verdict::WaitThenGo(wait, pass) if wait.max(backoff) < attempt.time_left => {
                Some(Granted {
                    delay: wait.max(backoff),
                    pass,
                })
            }
            Verdict::WaitThenGo(..) | Verdict::Refuse(_) => None,
        }
    }

    fn wants(&self, attempt: &Attempt<'_>) -> bool {
        let configured = self
            .policy
            .retry_on
            .iter()
            .any(|on| match (on, attempt.reason) {
                (RetryOn::Status(a), RetryOn::Status(b)) => *a == b,
                (a, b) => *a == b,
            });
        // Nothing reached the provider when the connection failed: that is
        // safe to repeat whatever the request.
        let safe = attempt.safe_to_repeat || attempt.reason == RetryOn::ConnectError;
        configured && safe && attempt.number < self.policy.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::time::ManualClock;

    fn setup(extra: &str) -> (ServiceRetry, Guard) {
        let service = super::super::guard::stripe_service(&format!(
            "    retry: {{ attempts: 3, retry_on: [connect_error, 503], backoff: {{ initial: 10ms, max: 40ms }} }}\n{extra}"
        ));
        let clock = Arc::new(ManualClock::default());
        let retry = ServiceRetry::new(service.retry.as_ref().unwrap(), clock.clone());
        let guard = Guard::new(&service, &Metrics::new(), clock, None);
        (retry, guard)
    }

    fn attempt(headers: &http::HeaderMap, number: u32, reason: RetryOn, safe: bool) -> Attempt<'_> {
        Attempt {
            number,
            reason,
            safe_to_repeat: safe,
            time_left: Duration::from_secs(10),
            headers,
        }
    }

    #[test]
    fn retries_only_configured_failures_of_safe_requests_within_attempts() {
        let (retry, guard) = setup("");
        let none = http::HeaderMap::new();
        let mut pass = Pass::default();
        let mut retried = |number, reason, safe| {
            retry
                .decide(&guard, &mut pass, &attempt(&none, number, reason, safe))
                .map(|granted| granted.delay)
        };
        let delay = retried(1, RetryOn::Status(503), true).unwrap();
        assert!(delay >= Duration::from_millis(5) && delay <= Duration::from_millis(10));
        for (number, reason, safe, expected, why) in [
            (2, RetryOn::Status(503), true, true, "a second retry"),
            (
                3,
                RetryOn::Status(503),
                true,
                false,
                "attempts counts the first try",
            ),
            (
                1,
                RetryOn::Status(502),
                true,
                false,
                "502 is not in retry_on",
            ),
            (
                1,
                RetryOn::Timeout,
                true,
                false,
                "timeout is not in retry_on",
            ),
            (
                1,
                RetryOn::Status(503),
                false,
                false,
                "a POST without a key is not repeated",
            ),
            (
                1,
                RetryOn::ConnectError,
                false,
                true,
                "a connect failure sent nothing",
            ),
        ] {
            assert_eq!(retried(number, reason, safe).is_some(), expected, "{why}");
        }
    }

    #[test]
    fn no_retry_past_the_service_timeout_or_the_rate_limit() {
        let (retry, guard) = setup("    rate_limit: { requests: 1, per: 1h }\n");
        let none = http::HeaderMap::new();
        let mut pass = Pass::default();
        let mut late = attempt(&none, 1, RetryOn::Status(503), true);
        late.time_left = Duration::from_millis(4);
        assert!(retry.decide(&guard, &mut pass, &late).is_none());
        assert!(retry
            .decide(
                &guard,
                &mut pass,
                &attempt(&none, 1, RetryOn::Status(503), true)
            )
            .is_some());
        assert!(
            retry
                .decide(
                    &guard,
                    &mut pass,
                    &attempt(&none, 1, RetryOn::Status(503), true)
                )
                .is_none(),
            "the second retry finds the one-per-hour limit used"
        );
    }

    #[test]
    fn failed_attempts_count_toward_the_breaker_which_can_stop_the_retries() {
        let (retry, guard) = setup("    circuit_breaker: { failure_threshold: 2 }\n");
        let none = http::HeaderMap::new();
        let Verdict::Go(mut pass) = guard.admit_in_pod(&none, Duration::from_secs(10)) else {
            panic!("the first attempt goes")
        };
        let granted = retry
            .decide(
                &guard,
                &mut pass,
                &attempt(&none, 1, RetryOn::Status(503), true),
            )
            .expect("one failure: retried");
        let mut pass = granted.pass;
        assert!(
            retry
                .decide(
                    &guard,
                    &mut pass,
                    &attempt(&none, 2, RetryOn::Status(503), true)
                )
                .is_none(),
            "the second failure opens the breaker, which refuses the retry"
        );
        assert_eq!(
            guard.breaker_state(),
            Some(crate::resilience::breaker::State::Open)
        );
    }
}
