//! The runtime snapshot: everything one config makes (egress services with
//! their guards, webhooks, the delivery plan, upstream groups), built whole
//! and swapped in as one, so a request, a delivery or an admin answer
//! never pairs parts of two configs. Live state carries over for parts
//! whose settings are unchanged (compared with `PartialEq`): a service's
//! breaker, buckets and provider pause; a group's health, breakers and
//! in-flight counts.

use std::sync::Arc;

use arc_swap::access::{DynAccess, Map};
use arc_swap::ArcSwap;

use crate::config::Config;
use crate::delivery::{Plan, Settings, SettingsError};
use crate::egress::service::ServiceError;
use crate::egress::EgressRoutes;
use crate::metrics::Metrics;
use crate::store::redis::RedisStore;
use crate::time::Clock;
use crate::upstreams::{GroupError, UpstreamGroups};
use crate::webhooks::{WebhookError, Webhooks};

pub struct Snapshot {
    pub config: Arc<Config>,
    pub egress: EgressRoutes,
    pub webhooks: Webhooks,
    /// `events.<name>`: the app's own event sources.
    pub published: Webhooks,
    pub delivery: Arc<Plan>,
    pub upstreams: Arc<UpstreamGroups>,
}

/// The running snapshot; a reload stores the next one.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// What every snapshot is built on and that no reload replaces.
pub struct Foundation {
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// The Redis connection, when the store is Redis (shared limits and
    /// pauses use it too).
    pub redis: Option<Arc<RedisStore>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Delivery(#[from] SettingsError),
    #[error(transparent)]
    Upstream(#[from] GroupError),
}

impl Snapshot {
    /// Builds every part of `config`, keeping the live state of the parts
    /// of `previous` whose settings did not change. Nothing runs yet: new
    /// upstream groups start their loops once the snapshot is swapped in
    /// (`GroupLoops::start_new`).
    pub fn build(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
        foundation: &Foundation,
    ) -> Result<Self, BuildError> {
        let upstreams = Arc::new(UpstreamGroups::build(
            &config.upstreams,
            previous.map(|p| &*p.upstreams),
            &foundation.clock,
            &foundation.metrics,
        )?);
        let egress = EgressRoutes::build(
            &config,
            &upstreams,
            &foundation.metrics,
            &foundation.clock,
            foundation.redis.as_ref(),
            previous.map(|p| &p.egress),
        )?;
        let propagate = config.tracing.propagate;
        let published = Webhooks::build(&config.events, propagate, &foundation.metrics)?;
        let webhooks = Webhooks::build(&config.webhooks, propagate, &foundation.metrics)?;
        let delivery = Arc::new(Plan {
            settings: Settings::new(&config)?,
            upstreams: Arc::clone(&upstreams),
        });
        Ok(Self {
            config,
            egress,
            webhooks,
            published,
            delivery,
            upstreams,
        })
    }
}

/// A part of the running snapshot as a concrete type, for the request path
/// (loading it allocates nothing).
pub type Part<T> = Map<SnapshotHandle, Snapshot, fn(&Snapshot) -> &T>;

pub fn concrete_part<T: 'static>(handle: &SnapshotHandle, project: fn(&Snapshot) -> &T) -> Part<T> {
    Map::new(Arc::clone(handle), project)
}

/// A direction's view of the running snapshot: its own part, as of the
/// latest swap.
pub fn part<T: 'static>(
    handle: &SnapshotHandle,
    project: fn(&Snapshot) -> &T,
) -> Box<dyn DynAccess<T> + Send + Sync> {
    Box::new(concrete_part(handle, project))
}
