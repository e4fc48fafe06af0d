//! The egress gateway: the app calls `127.0.0.1:15001/<route>/...` with no
//! secret and the sidecar forwards to the provider with credentials
//! injected, under the service's timeouts and resilience policies. The
//! files follow the request:
//!
//! ```text
//! routing      the route table: which service, the path the provider sees
//! proxy        Pingora's ProxyHttp callbacks, a few lines each
//! context      what a request keeps between the callbacks
//! exchange     one request's state machine: admit, retry, answer (tested on paused time)
//! guard        a service's pause, breaker and limits before, its provider's answer after
//! retrying     whether a failed attempt is tried again
//! failure      the answer for a failure (502, 504)
//! auth/oauth2  credentials injected into the upstream request
//! service      one provider or upstream group, built once from its config
//! backend      the group backend of each attempt, and what it answered
//! pause_sync   provider pauses heard from other replicas (Redis pub/sub)
//! publish      `events.<name>`: the app's own events, stored for delivery
//! ```
//! Bodies stream both ways; nothing is buffered whole.

pub mod auth;
pub mod backend;
pub mod context;
pub mod exchange;
pub mod failure;
pub mod guard;
pub mod headers;
pub mod oauth2;
pub mod pause_sync;
pub mod proxy;
pub mod publish;
pub mod retrying;
pub mod routing;
pub mod service;

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::redis::RedisStore;
use crate::time::Clock;
use crate::upstreams::UpstreamGroups;
use guard::Guard;
pub use proxy::EgressProxy;
use publish::PublishedPaths;
use routing::RouteTable;
use service::{EgressService, ServiceError};

pub const REQUEST_ID_HEADER: &str = crate::net::request_id::HEADER;

/// The services and their route table as one config made them; part of
/// the runtime snapshot, so a request sees one config from start to end.
pub struct EgressRoutes {
    pub services: Vec<Arc<EgressService>>,
    routes: RouteTable,
    /// `events.<name>`: the paths the app publishes its own events on.
    pub published: PublishedPaths,
    /// `tracing.propagate`.
    pub propagate: bool,
}

impl EgressRoutes {
    /// The services of `config`, keeping the live resilience state (breaker,
    /// buckets, provider pause) of each `previous` service whose rate limit
    /// and breaker are unchanged.
    pub fn build(
        config: &Config,
        groups: &UpstreamGroups,
        metrics: &Metrics,
        clock: &Arc<dyn Clock>,
        store: Option<&Arc<RedisStore>>,
        previous: Option<&EgressRoutes>,
    ) -> Result<Self, ServiceError> {
        let mut services = Vec::with_capacity(config.services.len());
        for service in &config.services {
            let kept_guard = previous
                .into_iter()
                .flat_map(|p| &p.services)
                .find(|old| old.keeps_guard_of(service))
                .map(|old| Arc::clone(&old.guard));
            services.push(Arc::new(EgressService::new(
                service, groups, metrics, clock, store, kept_guard,
            )?));
        }
        Ok(Self {
            services,
            routes: RouteTable::new(config.services.iter().map(|s| s.route.as_str())),
            published: PublishedPaths::new(config),
            propagate: config.tracing.propagate,
        })
    }

    /// The service whose route the path is under, and the rest of the path.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Arc<EgressService>, &'p str)> {
        let (index, rest) = self.routes.find(path)?;
        Some((&self.services[index], rest))
    }

    /// A service's live resilience state, by name.
    pub fn guard(&self, name: &str) -> Option<&Arc<Guard>> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.guard)
    }
}
