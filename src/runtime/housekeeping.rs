//! The sidecar's own upkeep (the reload poll, upstream health checks and
//! DNS, the store monitor, the provider-pause listener) on one runtime
//! thread at low priority, instead of a runtime and a thread each: none of
//! them is ever busy, and every runtime is one more thread that wakes on the
//! core the egress serves from, and its stack and timer wheel in memory.
//! Delivery keeps its own runtime: it does the work of events, at normal
//! priority.

use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

#[derive(Default)]
pub struct Housekeeping {
    tasks: Vec<(&'static str, Box<dyn BackgroundService + Send + Sync>)>,
}

impl Housekeeping {
    pub fn add(
        &mut self,
        name: &'static str,
        task: impl BackgroundService + Send + Sync + 'static,
    ) {
        self.tasks.push((name, Box::new(task)));
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, shutdown: ShutdownWatch) {
        crate::os::lower_this_thread();
        join_all(self.tasks.iter().map(|(name, task)| {
            let shutdown = shutdown.clone();
            async move {
                task.start(shutdown).await;
                tracing::debug!(task = name, "housekeeping task ended");
            }
        }))
        .await;
    }
}
