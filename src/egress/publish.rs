//! `events.<name>` on the egress listener: the app publishes its own
//! events here. The egress only recognises the paths (from the config) and
//! hands the request to an [`EventSink`]; storing the event is the webhook
//! side's, wired in by `runtime`, so the directions stay apart.

use async_trait::async_trait;
use pingora::proxy::Session;

use crate::names::WebhookName;

#[async_trait]
pub trait EventSink: Send + Sync {
    /// Answers a request to the path of `events.<source>`; the status written.
    async fn serve(&self, session: &mut Session, source: &WebhookName) -> u16;
}

/// The paths of `events.<name>`, as one config made them.
#[derive(Default)]
pub struct PublishedPaths(Vec<(String, WebhookName)>);

impl PublishedPaths {
    pub fn new(config: &crate::config::Config) -> Self {
        Self(
            config
                .events
                .iter()
                .map(|e| (e.path.clone(), e.name.clone()))
                .collect(),
        )
    }

    /// The event source served at `path`.
    pub fn at(&self, path: &str) -> Option<&WebhookName> {
        self.0.iter().find(|(p, _)| p == path).map(|(_, name)| name)
    }
}
