//! Provider back-pressure: a provider that answers 429 or 503 with
//! `Retry-After` is left alone until that time has passed. Requests meanwhile
//! get 429 `provider_throttled` at once with the remaining time; none waits
//! for the cool-down, so a cool-down longer than a request's timeout fails
//! fast instead of holding the app. A pause never runs longer than the
//! service's `max_pause`, whoever asked for it: the provider's number comes
//! from the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::time::Clock;

pub struct Cooldown {
    clock: Arc<dyn Clock>,
    /// The longest pause honoured.
    max: Duration,
    /// Clock microseconds until which the provider is left alone; 0 = never.
    until: AtomicU64,
}

impl Cooldown {
    pub fn new(clock: Arc<dyn Clock>, max: Duration) -> Self {
        Self {
            clock,
            max,
            until: AtomicU64::new(0),
        }
    }

    /// `length` cut to the longest pause honoured.
    pub fn clamp(&self, length: Duration) -> Duration {
        length.min(self.max)
    }

    /// Milliseconds left, or None when the provider may be called.
    pub fn remaining_ms(&self) -> Option<u64> {
        let until = self.until.load(Ordering::Acquire);
        let now = self.clock.now_micros();
        (until > now).then(|| (until - now).div_ceil(1000))
    }

    /// Starts (or extends, never shortens) a cool-down of `length`, at
    /// most the longest honoured.
    pub fn start(&self, length: Duration) {
        let length = self.clamp(length);
        let until = self
            .clock
            .now_micros()
            .saturating_add(u64::try_from(length.as_micros()).unwrap_or(u64::MAX));
        self.until.fetch_max(until, Ordering::AcqRel);
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 10.2.3).
/// A date in the past means no wait; anything unreadable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Fri, 27 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 10:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        for garbage in ["", "soon", "-5", "1.5", "Friday"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage}");
        }
    }

    #[test]
    fn a_cooldown_runs_exactly_its_length_and_only_ever_extends() {
        let clock = Arc::new(ManualClock::default());
        let cooldown = Cooldown::new(clock.clone(), Duration::from_secs(900));
        assert_eq!(cooldown.remaining_ms(), None);
        cooldown.start(Duration::from_secs(10));
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(cooldown.remaining_ms(), Some(1));
        cooldown.start(Duration::from_secs(1));
        assert_eq!(
            cooldown.remaining_ms(),
            Some(1000),
            "a shorter one extends to its end"
        );
        clock.advance(Duration::from_millis(1000));
        assert_eq!(cooldown.remaining_ms(), None);
    }

    #[test]
    fn cooldowns_are_capped_at_the_longest_pause_honoured() {
        let clock = Arc::new(ManualClock::default());
        let cooldown = Cooldown::new(clock, Duration::from_secs(900));
        cooldown.start(Duration::from_secs(315_360_000));
        assert_eq!(cooldown.remaining_ms(), Some(900_000));
        cooldown.start(Duration::MAX);
        assert_eq!(cooldown.remaining_ms(), Some(900_000), "no overflow");
    }

    #[test]
    fn a_retry_after_of_any_size_parses_without_overflow() {
        let now = httpdate::parse_http_date("Fri, 27 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after("99999999999999999999999", now), None);
    }
}
