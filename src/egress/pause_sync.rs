//! Provider pauses reach every replica: each sidecar with a Redis store
//! subscribes to the pause channel and starts the announced pause locally,
//! so no request pays a round trip to learn of it. After (re)connecting it
//! reads the pauses still running, which covers announcements it missed.
//! While Redis is down each replica pauses on what it sees itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use arc_swap::access::DynAccess;

use crate::egress::guard::Guard;
use crate::egress::EgressRoutes;
use crate::resilience::global::{parse_pause_message, pause_channel, remaining_pause};
use crate::store::redis::{RedisCallError, RedisStore};

const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub struct PauseListener {
    store: Arc<RedisStore>,
    /// The services of the running config (the runtime snapshot's).
    routes: Box<dyn DynAccess<EgressRoutes> + Send + Sync>,
}

impl PauseListener {
    pub fn new(
        store: Arc<RedisStore>,
        routes: Box<dyn DynAccess<EgressRoutes> + Send + Sync>,
    ) -> Self {
        Self { store, routes }
    }

    fn guard(&self, service: &str) -> Option<Arc<Guard>> {
        self.routes.load().guard(service).cloned()
    }

    /// Listens until the connection drops.
    async fn listen(&self) -> Result<(), RedisCallError> {
        // Its own connection to one node: on a cluster, PUBLISH reaches
        // every node, so any seed hears every announcement.
        let client = self.store.node_client().await?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(pause_channel(&self.store)).await?;
        let guards: Vec<Arc<Guard>> = self
            .routes
            .load()
            .services
            .iter()
            .map(|s| Arc::clone(&s.guard))
            .collect();
        for guard in guards {
            if let Some(left) = remaining_pause(&self.store, guard.name()).await? {
                guard.pause(left);
            }
        }
        tracing::info!("listening for provider pauses announced by other replicas");
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            if let Some((service, pause)) = parse_pause_message(&payload) {
                if let Some(guard) = self.guard(service) {
                    guard.pause(pause);
                }
            }
        }
        Err(RedisCallError::Unavailable)
    }
}

#[async_trait]
impl BackgroundService for PauseListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reported = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                result = self.listen() => {
                    if let Err(error) = result {
                        if !reported {
                            tracing::warn!(%error, "not hearing other replicas' provider pauses; reconnecting");
                            reported = true;
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    }
}
