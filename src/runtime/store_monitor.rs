//! Watches the event store for readiness and for `/admin/store`: a check
//! every second (can it take a write now?) and, at start and every minute,
//! an inspection of how it keeps events (a Redis that may evict the queue,
//! persists nothing, has too few replicas). Warnings are logged when they
//! change; a setting that loses acknowledged events fails readiness.
//! Every second too, the store's room: where it is measured from outside
//! (Redis), and into the used and capacity gauges.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::store::{Store, StoreReport};

const CHECK_EVERY: Duration = Duration::from_secs(1);
const INSPECT_EVERY: Duration = Duration::from_secs(60);
/// How often the event log's retention runs where the store needs asking
/// (Redis); the embedded store's own cleaner keeps the same pace.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

pub struct StoreMonitor {
    store: Arc<dyn Store>,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    /// The latest inspection, for `/admin/store`.
    report: Arc<ArcSwapOption<StoreReport>>,
}

impl StoreMonitor {
    pub fn new(store: Arc<dyn Store>, lifecycle: Arc<Lifecycle>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            lifecycle,
            metrics,
            report: Arc::default(),
        }
    }

    /// Where `/admin/store` reads the latest inspection.
    pub fn report(&self) -> Arc<ArcSwapOption<StoreReport>> {
        Arc::clone(&self.report)
    }

    /// Inspects the store once; logs what changed since the last time.
    pub async fn inspect(&self) {
        match self.store.inspect().await {
            Ok(report) => {
                let previous = self.report.load_full();
                let first = previous.is_none();
                if first {
                    let settings: Vec<String> = report
                        .settings
                        .iter()
                        .map(|(name, value)| format!("{name}={value}"))
                        .collect();
                    tracing::info!(store = report.kind, settings = %settings.join(", "), "event store");
                }
                let seen = previous.as_deref().map(|p| &p.warnings);
                for warning in &report.warnings {
                    if !seen.is_some_and(|w| w.contains(warning)) {
                        tracing::warn!(store = report.kind, "{warning}");
                    }
                }
                if report.refusal != previous.as_deref().and_then(|p| p.refusal.clone()) {
                    if let Some(refusal) = &report.refusal {
                        tracing::error!(store = report.kind, "{refusal}; webhooks are refused and the sidecar is not ready until it is fixed");
                    }
                }
                self.lifecycle.set_store_refusal(report.refusal.clone());
                self.report.store(Some(Arc::new(report)));
            }
            Err(error) => tracing::debug!(%error, "cannot inspect the event store now"),
        }
    }
}

impl StoreMonitor {
    /// Retention of the event log, where the store needs asking.
    async fn prune_history(&self) {
        let now_ms = crate::time::unix_time().as_millis() as u64;
        match self.store.prune_history(now_ms).await {
            Ok(0) => {}
            Ok(dropped) => tracing::debug!(dropped, "dropped finished events from the event log"),
            Err(error) => tracing::warn!(%error, "could not drop old events from the event log"),
        }
    }

    /// The store's room into the gauges (capacity 0: nothing bounds it).
    async fn measure_space(&self) {
        if let Err(error) = self.store.measure_space().await {
            tracing::debug!(%error, "cannot measure the event store's room now");
        }
        let space = self.store.space();
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.metrics.store_used_bytes.set(gauge(space.used_bytes));
        self.metrics
            .store_capacity_bytes
            .set(gauge(space.capacity_bytes.unwrap_or(0)));
    }
}

#[async_trait]
impl BackgroundService for StoreMonitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut since_inspection = INSPECT_EVERY;
        let mut since_pruning = Duration::ZERO;
        loop {
            // Until one inspection worked (Redis down at start), every round
            // tries one.
            if since_inspection >= INSPECT_EVERY || self.report.load().is_none() {
                self.inspect().await;
                since_inspection = Duration::ZERO;
            }
            let outcome = self.store.check().await;
            self.lifecycle.record_store_check(outcome);
            self.measure_space().await;
            if since_pruning >= PRUNE_EVERY {
                since_pruning = Duration::ZERO;
                self.prune_history().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {
                    since_inspection += CHECK_EVERY;
                    since_pruning += CHECK_EVERY;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
