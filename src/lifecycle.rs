//! Readiness and graceful shutdown. SIGTERM (or SIGINT) turns `/readyz` 503 at
//! once, keeps serving for `drain_delay` so endpoints can propagate, then stops
//! the listeners and exits as soon as no request is in flight, or when
//! `shutdown_grace` runs out. Pingora's own grace sleep never adds to that.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::broadcast;

#[derive(Default)]
pub struct Lifecycle {
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Why the event store did not answer its last check, if it did not.
    store_trouble: std::sync::Mutex<Option<String>>,
}

/// Counts one request in flight until dropped.
pub struct InFlightGuard(Arc<Lifecycle>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lifecycle {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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

    /// Ok when the pod should receive traffic; otherwise why not.
    /// The event store's last check: Err with its reason fails readiness
    /// (webhooks could not be accepted).
    pub fn record_store_check(&self, outcome: Result<(), String>) {
        *self.store_trouble.lock().expect("lifecycle") = outcome.err();
    }

    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("shutting down".into());
        }
        if !self.listeners_bound.load(Ordering::Acquire) {
            return Err("listeners are not bound yet".into());
        }
        if let Some(trouble) = self.store_trouble.lock().expect("lifecycle").as_ref() {
            return Err(format!("the event store does not answer: {trouble}"));
        }
        Ok(())
    }

    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(self))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// The shutdown signal handed to Pingora: it returns only after the drain delay.
pub struct DrainingShutdown {
    pub lifecycle: Arc<Lifecycle>,
    pub drain_delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!(
                "cannot install signal handlers; the sidecar can only be stopped by SIGKILL"
            );
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        self.lifecycle.start_draining();
        tracing::info!(
            signal = name,
            drain_delay_ms = self.drain_delay.as_millis() as u64,
            "shutdown requested: readiness is now failing, still serving during the drain delay"
        );
        tokio::time::sleep(self.drain_delay).await;
        tracing::info!(
            in_flight = self.lifecycle.in_flight(),
            "drain delay over: listeners stop accepting"
        );
        ShutdownSignal::GracefulTerminate
    }
}

/// Ends the process once the listeners have stopped and nothing is in flight,
/// or when the grace period is over, whichever comes first.
pub fn exit_when_idle(
    lifecycle: Arc<Lifecycle>,
    mut phases: broadcast::Receiver<ExecutionPhase>,
    grace: Duration,
) {
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulTerminate) => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        let deadline = Instant::now() + grace;
        while lifecycle.in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = lifecycle.in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "shutdown grace period over: abandoning requests still in flight"
            );
        } else {
            tracing::info!("no request in flight: exiting");
        }
        crate::access_log::flush();
        std::process::exit(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_bound_listeners_and_fails_once_draining() {
        let lifecycle = Lifecycle::new();
        assert_eq!(
            lifecycle.readiness(),
            Err("listeners are not bound yet".into())
        );
        lifecycle.mark_listeners_bound();
        assert_eq!(lifecycle.readiness(), Ok(()));
        lifecycle.record_store_check(Err("Redis: connection refused".into()));
        assert_eq!(
            lifecycle.readiness(),
            Err("the event store does not answer: Redis: connection refused".into())
        );
        lifecycle.record_store_check(Ok(()));
        assert_eq!(lifecycle.readiness(), Ok(()));
        lifecycle.start_draining();
        assert_eq!(lifecycle.readiness(), Err("shutting down".into()));
    }

    #[test]
    fn in_flight_counts_live_guards() {
        let lifecycle = Lifecycle::new();
        let a = lifecycle.enter();
        let b = lifecycle.enter();
        assert_eq!(lifecycle.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(lifecycle.in_flight(), 0);
    }
}
