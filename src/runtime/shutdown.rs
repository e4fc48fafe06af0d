//! Graceful shutdown. SIGTERM (or SIGINT) turns `/readyz` 503 at once, keeps
//! serving for `drain_delay` so endpoints can propagate, then stops the
//! listeners and exits as soon as no request is in flight, or when
//! `shutdown_grace` runs out. Pingora's own grace sleep never adds to that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::broadcast;

use crate::lifecycle::Lifecycle;

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
        while !lifecycle.idle() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = lifecycle.in_flight();
        if !lifecycle.idle() {
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
