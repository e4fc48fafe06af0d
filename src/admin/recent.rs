//! Events accepted, delivered and dead-lettered in the last 5 and 60
//! minutes, for the console's overview: the metrics' counters sampled every
//! `EVERY`, a window being the difference between now and the newest sample
//! at least that old. A pod younger than the window counts since it started
//! (and says so).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::time::unix_time;

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// The longest window; older samples go.
const KEPT_MS: u64 = 61 * 60 * 1000;

/// The counters' totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub accepted: u64,
    pub delivered: u64,
    pub dead: u64,
}

impl Totals {
    pub fn read(metrics: &Metrics) -> Self {
        Self {
            // Stored events, however they came: received, or fetched back
            // by gap repair.
            accepted: sum_where(&metrics.webhooks_received_total, "outcome", "accepted")
                + sum_where(&metrics.recovered_events_total, "outcome", "accepted"),
            delivered: sum_where(&metrics.deliveries_total, "outcome", "delivered"),
            dead: sum_where(&metrics.dead_lettered_total, "", ""),
        }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            accepted: self.accepted.saturating_sub(earlier.accepted),
            delivered: self.delivered.saturating_sub(earlier.delivered),
            dead: self.dead.saturating_sub(earlier.dead),
        }
    }
}

/// The sum of a counter's series whose `label` is `value` (every series
/// when `label` is empty).
fn sum_where(counter: &prometheus::IntCounterVec, label: &str, value: &str) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            label.is_empty()
                || m.get_label()
                    .iter()
                    .any(|l| l.name() == label && l.value() == value)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// What a window answers: the counts, and over how many seconds they were
/// counted (less than the window while the pod is younger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    #[serde(flatten)]
    pub counts: Totals,
    pub over_s: u64,
}

pub struct Recent {
    /// (unix ms, totals), oldest first.
    samples: Mutex<VecDeque<(u64, Totals)>>,
    metrics: Arc<Metrics>,
}

impl Recent {
    /// Starts with the counters as they are (zero at start).
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let recent = Arc::new(Self {
            samples: Mutex::default(),
            metrics,
        });
        recent.sample(unix_time().as_millis() as u64);
        recent
    }

    pub fn sample(&self, now_ms: u64) {
        self.sample_totals(now_ms, Totals::read(&self.metrics));
    }

    fn sample_totals(&self, now_ms: u64, totals: Totals) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now_ms, totals));
        while samples.len() > 1 && samples[1].0 + KEPT_MS <= now_ms {
            samples.pop_front();
        }
    }

    pub fn window(&self, now_ms: u64, length: Duration) -> Window {
        self.window_of(now_ms, Totals::read(&self.metrics), length)
    }

    fn window_of(&self, now_ms: u64, now: Totals, length: Duration) -> Window {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let start = now_ms.saturating_sub(length.as_millis() as u64);
        let from = samples
            .iter()
            .rev()
            .find(|(at, _)| *at <= start)
            .or_else(|| samples.front())
            .copied()
            .unwrap_or((now_ms, now));
        Window {
            counts: now.since(from.1),
            over_s: now_ms.saturating_sub(from.0) / 1000,
        }
    }
}

/// Samples the counters every `EVERY` (a housekeeping task).
pub struct Sampler(pub Arc<Recent>);

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => self.0.sample(unix_time().as_millis() as u64),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(accepted: u64, delivered: u64, dead: u64) -> Totals {
        Totals {
            accepted,
            delivered,
            dead,
        }
    }

    #[test]
    fn a_window_counts_from_the_newest_sample_at_least_that_old() {
        let recent = Recent::new(Arc::new(Metrics::new()));
        recent.samples.lock().unwrap().clear();
        let minute = 60_000;
        for m in 0..=70 {
            recent.sample_totals(m * minute, totals(m * 10, m * 9, m));
        }
        let now = 70 * minute + 5_000;
        let now_totals = totals(705, 634, 70);
        let five = recent.window_of(now, now_totals, Duration::from_secs(300));
        assert_eq!(five.counts, totals(55, 49, 5), "since minute 65");
        assert_eq!(five.over_s, 305);
        let hour = recent.window_of(now, now_totals, Duration::from_secs(3600));
        assert_eq!(hour.counts, totals(605, 544, 60), "since minute 10");
        assert!(
            recent.samples.lock().unwrap().len() <= 63,
            "samples older than the longest window go"
        );
    }

    #[test]
    fn a_young_pod_counts_since_it_started() {
        let recent = Recent::new(Arc::new(Metrics::new()));
        recent.samples.lock().unwrap().clear();
        recent.sample_totals(1_000_000, totals(0, 0, 0));
        let hour = recent.window_of(1_120_000, totals(12, 10, 1), Duration::from_secs(3600));
        assert_eq!(hour.counts, totals(12, 10, 1));
        assert_eq!(hour.over_s, 120);
    }

    #[test]
    fn totals_read_the_counters_by_outcome() {
        let metrics = Metrics::new();
        let received = &metrics.webhooks_received_total;
        received
            .with_label_values(&["stripe", "accepted"])
            .inc_by(3);
        received
            .with_label_values(&["github", "accepted"])
            .inc_by(2);
        received
            .with_label_values(&["stripe", "duplicate"])
            .inc_by(7);
        let deliveries = &metrics.deliveries_total;
        deliveries
            .with_label_values(&["stripe", "notify", "delivered"])
            .inc_by(4);
        deliveries
            .with_label_values(&["stripe", "notify", "retried"])
            .inc_by(9);
        metrics
            .dead_lettered_total
            .with_label_values(&["stripe", "rejected"])
            .inc();
        assert_eq!(Totals::read(&metrics), totals(5, 4, 1));
        let recovered = &metrics.recovered_events_total;
        recovered
            .with_label_values(&["stripe", "accepted"])
            .inc_by(2);
        recovered
            .with_label_values(&["stripe", "duplicate"])
            .inc_by(9);
        assert_eq!(
            Totals::read(&metrics),
            totals(7, 4, 1),
            "recovered events count"
        );
    }
}
