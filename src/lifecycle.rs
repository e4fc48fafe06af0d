//! Readiness and requests in flight: what the admin listener's `/readyz`
//! answers (listeners bound, draining, the event store's state) and the
//! count every direction keeps of the requests it serves, which the
//! shutdown waits for (`runtime::shutdown`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Lifecycle {
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Work the process must not exit under that is not a request (the
    /// delivery scheduler until its store is flushed).
    held_open: AtomicUsize,
    store: std::sync::Mutex<StoreState>,
    /// Set when there is an event store, until its first check passes: a
    /// store that never answered is no blip.
    store_unchecked: AtomicBool,
    /// Upkeep was expected and has not started yet: until the reload task
    /// runs, a SIGHUP (whose default action ends the process) has no
    /// handler, so the sidecar is not ready before it.
    upkeep_pending: AtomicBool,
    /// How long the store may fail before readiness does (`store.unready_after`).
    unready_after: std::sync::Mutex<Duration>,
    /// The last config reload, for the console.
    last_reload: std::sync::Mutex<Option<ReloadRecord>>,
}

/// A config reload as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadRecord {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `applied` or `rejected` (as `sidecar_config_reloads_total`).
    pub result: &'static str,
    /// What was wrong with a rejected config.
    pub error: Option<String>,
}

/// What the store's checks said, for readiness and `/admin/store`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreState {
    /// Since when, and why, the store has failed its checks without a pass.
    pub failing: Option<(Instant, String)>,
    /// A setting under which the store would lose acknowledged events.
    pub refusal: Option<String>,
}

/// Why the pod should not receive traffic now (`/readyz`'s `reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("shutting down")]
    Draining,
    #[error("listeners are not bound yet")]
    Starting,
    /// A store setting under which acknowledged events can vanish.
    #[error("{0}")]
    StoreRefused(String),
    #[error("the event store has not answered yet{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    StoreUnanswered(Option<String>),
    #[error("the event store has failed for {} s: {reason}", .failing_for.as_secs())]
    StoreFailing {
        failing_for: Duration,
        reason: String,
    },
}

/// Counts one request in flight until dropped.
pub struct InFlightGuard(Arc<Lifecycle>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps the process from exiting until dropped, without counting as a
/// request in flight.
pub struct HoldOpen(Arc<Lifecycle>);

impl Drop for HoldOpen {
    fn drop(&mut self) {
        self.0.held_open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lifecycle {
    pub fn new() -> Arc<Self> {
        let lifecycle = Self::default();
        lifecycle.set_unready_after(Duration::from_secs(10));
        Arc::new(lifecycle)
    }

    pub fn record_reload(&self, record: ReloadRecord) {
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn mark_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_unready_after(&self, after: Duration) {
        *self.unready_after.lock().unwrap_or_else(|e| e.into_inner()) = after;
    }

    /// The event store's latest check. A failure fails readiness only once
    /// the store has failed for `unready_after` without a pass: a native
    /// sidecar's readiness gates the whole pod, and a one-second Redis blip
    /// must not take every replica (and the app) out of its Services.
    /// Webhooks get 503 meanwhile anyway, and providers retry.
    pub fn record_store_check<E: std::fmt::Display>(&self, outcome: Result<(), E>) {
        self.record_store_check_at(outcome, Instant::now());
    }

    /// Readiness waits for the store's first passing check.
    pub fn expect_store(&self) {
        self.store_unchecked.store(true, Ordering::Release);
    }

    /// Readiness waits for `upkeep_running`.
    pub fn expect_upkeep(&self) {
        self.upkeep_pending.store(true, Ordering::Release);
    }

    /// The reload task runs, its SIGHUP handler installed.
    pub fn upkeep_running(&self) {
        self.upkeep_pending.store(false, Ordering::Release);
    }

    pub fn record_store_check_at<E: std::fmt::Display>(
        &self,
        outcome: Result<(), E>,
        now: Instant,
    ) {
        if outcome.is_ok() {
            self.store_unchecked.store(false, Ordering::Release);
        }
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.failing = match outcome {
            Ok(()) => None,
            Err(reason) => Some((
                store.failing.as_ref().map_or(now, |(since, _)| *since),
                reason.to_string(),
            )),
        };
    }

    /// A store setting that loses acknowledged events (None: none).
    /// Readiness fails at once: this is no blip.
    pub fn set_store_refusal(&self, refusal: Option<String>) {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).refusal = refusal;
    }

    pub fn store_state(&self) -> StoreState {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ok when the pod should receive traffic; otherwise why not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.readiness_at(Instant::now())
    }

    pub fn readiness_at(&self, now: Instant) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        if !self.listeners_bound.load(Ordering::Acquire)
            || self.upkeep_pending.load(Ordering::Acquire)
        {
            return Err(NotReady::Starting);
        }
        let store = self.store_state();
        if let Some(refusal) = store.refusal {
            return Err(NotReady::StoreRefused(refusal));
        }
        if self.store_unchecked.load(Ordering::Acquire) {
            return Err(NotReady::StoreUnanswered(
                store.failing.map(|(_, reason)| reason),
            ));
        }
        if let Some((since, reason)) = store.failing {
            let after = *self.unready_after.lock().unwrap_or_else(|e| e.into_inner());
            let failing_for = now.saturating_duration_since(since);
            if failing_for >= after {
                return Err(NotReady::StoreFailing {
                    failing_for,
                    reason,
                });
            }
        }
        Ok(())
    }

    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(self))
    }

    /// Requests and deliveries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn hold_open(self: &Arc<Self>) -> HoldOpen {
        self.held_open.fetch_add(1, Ordering::AcqRel);
        HoldOpen(Arc::clone(self))
    }

    /// Whether the process may exit now: nothing in flight, nothing
    /// holding it open.
    pub fn idle(&self) -> bool {
        self.in_flight() == 0 && self.held_open.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_the_upkeep_that_handles_sighup_runs() {
        let lifecycle = Lifecycle::new();
        lifecycle.expect_upkeep();
        lifecycle.mark_listeners_bound();
        assert!(matches!(lifecycle.readiness(), Err(NotReady::Starting)));
        lifecycle.upkeep_running();
        assert!(lifecycle.readiness().is_ok());
    }

    #[test]
    fn readiness_needs_bound_listeners_and_fails_once_draining() {
        let lifecycle = Lifecycle::new();
        assert_eq!(lifecycle.readiness(), Err(NotReady::Starting));
        lifecycle.mark_listeners_bound();
        assert_eq!(lifecycle.readiness(), Ok(()));
        lifecycle.start_draining();
        assert_eq!(lifecycle.readiness(), Err(NotReady::Draining));
    }

    #[test]
    fn a_store_blip_keeps_the_pod_ready_and_a_lasting_failure_does_not() {
        let lifecycle = Lifecycle::new();
        lifecycle.mark_listeners_bound();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let down = || Err("Redis: connection refused".to_string());
        lifecycle.record_store_check_at(down(), at(0));
        lifecycle.record_store_check_at(down(), at(5));
        assert_eq!(lifecycle.readiness_at(at(9)), Ok(()), "a blip of 9 s");
        lifecycle.record_store_check_at(Ok::<(), String>(()), at(9));
        lifecycle.record_store_check_at(down(), at(12));
        assert_eq!(
            lifecycle.readiness_at(at(21)),
            Ok(()),
            "failing anew since 12 s"
        );
        assert_eq!(
            lifecycle.readiness_at(at(22)).unwrap_err().to_string(),
            "the event store has failed for 10 s: Redis: connection refused"
        );
        lifecycle.record_store_check_at(Ok::<(), String>(()), at(23));
        assert_eq!(lifecycle.readiness_at(at(23)), Ok(()));
    }

    #[test]
    fn a_store_setting_that_loses_events_fails_readiness_at_once() {
        let lifecycle = Lifecycle::new();
        lifecycle.mark_listeners_bound();
        lifecycle.set_store_refusal(Some("maxmemory-policy is allkeys-lru".into()));
        assert_eq!(
            lifecycle.readiness(),
            Err(NotReady::StoreRefused(
                "maxmemory-policy is allkeys-lru".into()
            ))
        );
        lifecycle.set_store_refusal(None);
        assert_eq!(lifecycle.readiness(), Ok(()));
    }

    #[test]
    fn in_flight_counts_live_guards() {
        let lifecycle = Lifecycle::new();
        let held = lifecycle.hold_open();
        assert_eq!(lifecycle.in_flight(), 0, "held open is not in flight");
        assert!(!lifecycle.idle());
        drop(held);
        assert!(lifecycle.idle());
        let a = lifecycle.enter();
        let b = lifecycle.enter();
        assert_eq!(lifecycle.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(lifecycle.in_flight(), 0);
    }
}
