//! Peak-EWMA latency of one backend, as Finagle and Linkerd balance on it:
//! a slower answer than the estimate takes over at once (the peak), a
//! faster one is blended in, and the estimate decays towards zero while no
//! answer comes, so a backend that was slow is tried again after a while
//! and wins its share back once it answers fast. A failure counts as a
//! slow answer ([`FAILURE_PENALTY`]).
//!
//! Times are microseconds of the group's [`Clock`](crate::time::Clock), so
//! the balancer is tested on virtual time.

/// How fast the estimate forgets: after one `DECAY` without answers it is
/// down to 1/e. A 150 ms backend falls to a 1 ms one's cost in
/// ln(150) × 1.5 s ≈ 7.5 s, inside the 10 s a recovered backend has to
/// win its share back; Linkerd's 10 s would take 50 s.
pub const DECAY_MICROS: f64 = 1_500_000.0;

/// The latency a failed call counts as.
pub const FAILURE_PENALTY_MICROS: f64 = 500_000.0;

/// The estimate of a backend never tried: zero, so a new backend is tried
/// at once (its in-flight count then spreads the first burst).
#[derive(Debug, Default, Clone, Copy)]
pub struct PeakEwma {
    estimate: f64,
    stamp: u64,
}

impl PeakEwma {
    /// The estimate at `now`, decayed for the time since the last answer.
    pub fn cost(&self, now: u64) -> f64 {
        self.estimate * decay(now.saturating_sub(self.stamp))
    }

    /// Folds in an answer that took `latency` micros, seen at `now`.
    pub fn observe(&mut self, latency: f64, now: u64) {
        let current = self.cost(now);
        self.estimate = if latency > current {
            latency
        } else {
            // Blend by the time since the last answer: many answers in a
            // short time move the estimate as much as one after a long wait.
            let w = decay(now.saturating_sub(self.stamp));
            current * w + latency * (1.0 - w)
        };
        self.stamp = now.max(self.stamp);
    }
}

fn decay(elapsed: u64) -> f64 {
    (-(elapsed as f64) / DECAY_MICROS).exp()
}

/// What power of two choices compares: the latency estimate weighted by
/// the calls waiting on the backend (one more, for the call being placed).
/// A backend with no estimate yet still pays for its calls in flight, at a
/// nominal 1 µs, so the first burst spreads instead of piling onto it.
pub fn score(ewma: &PeakEwma, in_flight: usize, now: u64) -> f64 {
    ewma.cost(now).max(1.0) * (in_flight as f64 + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    #[test]
    fn a_slow_answer_takes_over_at_once_and_fast_ones_blend_in() {
        let mut e = PeakEwma::default();
        e.observe(1_000.0, 0);
        e.observe(150_000.0, 10 * MS);
        assert!((e.cost(10 * MS) - 150_000.0).abs() < 1.0);
        e.observe(1_000.0, 20 * MS);
        let after = e.cost(20 * MS);
        assert!(after < 150_000.0 && after > 100_000.0, "{after}");
    }

    #[test]
    fn the_estimate_decays_while_no_answer_comes() {
        let mut e = PeakEwma::default();
        e.observe(150_000.0, 0);
        assert!(e.cost(1_500 * MS) < 150_000.0 / 2.7);
        assert!(
            e.cost(7_600 * MS) < 1_000.0,
            "a 1 ms backend's cost within 7.6 s"
        );
    }

    #[test]
    fn the_score_weighs_calls_in_flight() {
        let mut e = PeakEwma::default();
        assert_eq!(score(&e, 0, 0), 1.0);
        assert_eq!(score(&e, 3, 0), 4.0);
        e.observe(2_000.0, 0);
        assert_eq!(score(&e, 1, 0), 4_000.0);
    }
}
