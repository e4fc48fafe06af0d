//! What one delivery attempt's answer means: delivered, retry at a time,
//! or dead letter. Plain functions of the answer, the job's attempt count,
//! the webhook's delivery policy and the time, so tests drive them exactly.

use std::time::Duration;

use crate::config::webhooks::WebhookDelivery;
pub use crate::metrics::DeadLetterReason;
use crate::resilience::breaker::Outcome;
use crate::resilience::retry::backoff_delay;

/// How the target answered one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Status {
        status: u16,
        /// The target's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// No answer: connect error, reset, timeout.
    Failed(String),
    /// Every backend of the group is unhealthy, unchecked or broken.
    NoBackend,
    /// The sidecar could not make the attempt (a bug, not the target's
    /// fault): trying again would fail the same way.
    Internal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    Retry {
        due_ms: u64,
    },
    DeadLetter(DeadLetterReason),
    /// Nothing recorded: the store could not be read, and the job's lease
    /// runs out by itself.
    LeftToLease,
}

impl Answer {
    /// 408, 429, 5xx and no answer at all are worth another try; any other
    /// status below 200 or from 300 up would fail the same way again.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Failed(_) | Self::NoBackend => true,
            Self::Internal(_) => false,
        }
    }

    /// What it says about the backend, for its passive breaker: a 5xx or
    /// no answer counts against it; 408 and 429 say it is busy, not broken.
    pub fn breaker_outcome(&self) -> Outcome {
        match self {
            Self::Status { status, .. } if (500..=599).contains(status) => Outcome::Failure,
            Self::Status {
                status: 408 | 429, ..
            } => Outcome::Unknown,
            Self::Status { .. } => Outcome::Success,
            Self::Failed(_) => Outcome::Failure,
            Self::NoBackend | Self::Internal(_) => Outcome::Unknown,
        }
    }

    /// The error text an attempt keeps (None for a plain status).
    pub fn error(&self, group: &str) -> Option<String> {
        match self {
            Self::Status { .. } => None,
            Self::Failed(error) | Self::Internal(error) => Some(error.clone()),
            Self::NoBackend => Some(format!("no healthy backend in upstream {group}")),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `attempts` counts this attempt too; `unit_random` in [0, 1) draws the
/// jitter.
pub fn decide(
    answer: &Answer,
    attempts: u32,
    policy: &WebhookDelivery,
    received_at_ms: u64,
    now_ms: u64,
    unit_random: f64,
) -> Decision {
    if let Answer::Status {
        status: 200..=299, ..
    } = answer
    {
        return Decision::Delivered;
    }
    if let Answer::Internal(_) = answer {
        return Decision::DeadLetter(DeadLetterReason::InternalError);
    }
    if !answer.is_retryable() {
        return Decision::DeadLetter(DeadLetterReason::Rejected);
    }
    if attempts >= policy.max_attempts {
        return Decision::DeadLetter(DeadLetterReason::MaxAttempts);
    }
    let mut delay = backoff_delay(&policy.backoff, attempts, unit_random);
    if let Answer::Status {
        retry_after: Some(asked),
        ..
    } = answer
    {
        // The target's number is honoured up to the longest backoff; past
        // that, `max_age` decides, as for any other retry.
        delay = delay.max((*asked).min(policy.backoff.max));
    }
    let due_ms = now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    if due_ms.saturating_sub(received_at_ms) > policy.max_age.as_millis() as u64 {
        return Decision::DeadLetter(DeadLetterReason::MaxAge);
    }
    Decision::Retry { due_ms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::services::Backoff;

    fn policy() -> WebhookDelivery {
        WebhookDelivery {
            path: http::uri::PathAndQuery::from_static("/events"),
            timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            max_age: Duration::from_secs(3600),
        }
    }

    fn status(status: u16) -> Answer {
        Answer::Status {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn success_is_2xx_and_other_4xx_dead_letter_at_once() {
        assert_eq!(
            decide(&status(204), 1, &policy(), 0, 0, 0.5),
            Decision::Delivered
        );
        for code in [400, 401, 404, 410, 422, 301] {
            assert_eq!(
                decide(&status(code), 1, &policy(), 0, 0, 0.5),
                Decision::DeadLetter(DeadLetterReason::Rejected),
                "{code}"
            );
        }
    }

    #[test]
    fn retryable_answers_back_off_exponentially_with_full_jitter() {
        for answer in [
            status(500),
            status(503),
            status(408),
            status(429),
            Answer::Failed("connection refused".into()),
            Answer::NoBackend,
        ] {
            // The ceiling doubles from 1 s; the draw is between half the
            // initial delay and the ceiling.
            for (attempt, ceiling_ms) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000)] {
                let low = decide(&answer, attempt, &policy(), 0, 10_000, 0.0);
                let high = decide(&answer, attempt, &policy(), 0, 10_000, 0.999_999);
                assert_eq!(
                    low,
                    Decision::Retry { due_ms: 10_500 },
                    "{answer:?} {attempt}"
                );
                let Decision::Retry { due_ms } = high else {
                    panic!()
                };
                assert!(
                    (10_000 + ceiling_ms - 1..=10_000 + ceiling_ms).contains(&due_ms),
                    "{due_ms}"
                );
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_backoff() {
        let answer = Answer::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            decide(&answer, 1, &policy(), 0, 1_000, 0.5),
            Decision::Retry { due_ms: 31_000 }
        );
    }

    #[test]
    fn a_huge_retry_after_waits_the_longest_backoff_and_never_wraps() {
        let answer = Answer::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(u64::MAX)),
        };
        assert_eq!(
            decide(&answer, 1, &policy(), 0, 1_000, 0.5),
            Decision::Retry { due_ms: 61_000 },
            "backoff.max is 60s"
        );
        assert_eq!(
            decide(
                &status(503),
                1,
                &policy(),
                u64::MAX - 10,
                u64::MAX - 10,
                0.5
            ),
            Decision::Retry { due_ms: u64::MAX },
            "a clock at the end of time saturates"
        );
    }

    #[test]
    fn attempts_and_age_are_bounded() {
        assert_eq!(
            decide(&status(503), 5, &policy(), 0, 0, 0.5),
            Decision::DeadLetter(DeadLetterReason::MaxAttempts)
        );
        assert_eq!(
            decide(&status(503), 1, &policy(), 0, 3_599_800, 0.5),
            Decision::DeadLetter(DeadLetterReason::MaxAge),
            "the retry would fall after max_age"
        );
    }

    #[test]
    fn the_breaker_hears_about_broken_backends_only() {
        assert_eq!(status(502).breaker_outcome(), Outcome::Failure);
        assert_eq!(
            Answer::Failed("timeout".into()).breaker_outcome(),
            Outcome::Failure
        );
        assert_eq!(status(429).breaker_outcome(), Outcome::Unknown);
        assert_eq!(status(400).breaker_outcome(), Outcome::Success);
        assert_eq!(Answer::NoBackend.breaker_outcome(), Outcome::Unknown);
    }
}
