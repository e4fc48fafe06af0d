//! One provider as the egress proxy uses it: everything the config says
//! about a service, prepared once (peer target, credentials, token source,
//! Host value, metrics handles, resilience guard, retry policy).

use crate::names::ServiceName;
use std::sync::Arc;
use std::time::Duration;

use super::auth::{CredentialError, PreparedAuth};
use super::guard::Guard;
use super::oauth2::{HttpTokenEndpoint, RefreshCounters, TokenSource};
use super::retrying::ServiceRetry;
use crate::config::services::{IdempotencyKey, Service, ServiceUpstream};
use crate::config::Auth;
use crate::metrics::{Metrics, RefreshOutcome, StatusCounters};
use crate::net::target::{CaError, UpstreamTarget};
use crate::store::redis::RedisStore;
use crate::time::Clock;
use crate::upstreams::{Group, UpstreamGroups};

/// A service the config describes but the sidecar cannot build.
#[derive(Debug, thiserror::Error)]
#[error("services.{service}: {problem}")]
pub struct ServiceError {
    pub service: ServiceName,
    pub problem: ServiceProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceProblem {
    #[error("group {0} is not an upstream group")]
    UnknownGroup(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("the upstream host is not a valid Host header")]
    Host,
}

/// Where the service's calls go.
pub enum Destination {
    /// One provider's URL, resolved by DNS.
    Provider(UpstreamTarget),
    /// A backend of an upstream group, chosen per attempt by the group's
    /// balancer among its healthy backends with a closed breaker.
    Group(Arc<Group>),
}

/// One provider as the proxy uses it, built once from the config.
pub struct EgressService {
    pub name: ServiceName,
    pub(super) destination: Destination,
    pub(super) auth: PreparedAuth,
    pub(super) tokens: Option<Arc<TokenSource>>,
    /// The provider's authority, built once: the Host of every request
    /// (None for a group: the chosen backend's).
    pub(super) host: Option<http::HeaderValue>,
    pub(super) connect_timeout: Duration,
    pub(super) timeout: Duration,
    pub(super) requests: StatusCounters,
    pub(super) duration: prometheus::Histogram,
    pub guard: Arc<Guard>,
    pub(super) retry: Option<ServiceRetry>,
    /// `idempotency_key: auto`: POSTs without a key get one.
    pub(super) auto_idempotency_key: bool,
    /// What it was built from: shown by the admin API beside the guard's
    /// state, and compared on reload to tell whether that state carries over.
    pub config: Service,
}

impl EgressService {
    pub fn new(
        service: &Service,
        groups: &UpstreamGroups,
        metrics: &Metrics,
        clock: &Arc<dyn Clock>,
        store: Option<&Arc<RedisStore>>,
        kept_guard: Option<Arc<Guard>>,
    ) -> Result<Self, ServiceError> {
        let context = |e: ServiceProblem| ServiceError {
            service: service.name.clone(),
            problem: e,
        };
        let destination = match &service.upstream {
            ServiceUpstream::Upstream(url) => Destination::Provider(
                UpstreamTarget::new(url.clone(), service.ca_file.as_deref())
                    .map_err(|e| context(e.into()))?,
            ),
            ServiceUpstream::Group(name) => Destination::Group(Arc::clone(
                groups
                    .get(name)
                    .ok_or_else(|| context(ServiceProblem::UnknownGroup(name.to_string())))?,
            )),
        };
        let auth = PreparedAuth::new(service.auth.as_ref()).map_err(|e| context(e.into()))?;
        let tokens = match &service.auth {
            Some(Auth::OAuth2(oauth)) => {
                let endpoint = HttpTokenEndpoint::new(oauth).map_err(|e| context(e.into()))?;
                let counters = RefreshCounters {
                    success: metrics.oauth2_token_refreshes_total.with_label_values(&[
                        service.name.as_str(),
                        RefreshOutcome::Success.as_str(),
                    ]),
                    failure: metrics.oauth2_token_refreshes_total.with_label_values(&[
                        service.name.as_str(),
                        RefreshOutcome::Failure.as_str(),
                    ]),
                };
                Some(TokenSource::new(
                    Box::new(endpoint),
                    oauth.refresh_before,
                    counters,
                ))
            }
            _ => None,
        };
        let host = match &destination {
            Destination::Provider(target) => Some(
                http::HeaderValue::try_from(target.url.authority())
                    .map_err(|_| context(ServiceProblem::Host))?,
            ),
            Destination::Group(_) => None,
        };
        Ok(Self {
            name: service.name.clone(),
            destination,
            auth,
            tokens,
            host,
            connect_timeout: service.connect_timeout,
            timeout: service.timeout,
            requests: StatusCounters::new(&metrics.egress_requests_total, &service.name),
            duration: metrics
                .egress_request_duration_seconds
                .with_label_values(&[service.name.as_str()]),
            guard: kept_guard.unwrap_or_else(|| {
                Arc::new(Guard::new(
                    service,
                    metrics,
                    Arc::clone(clock),
                    store.cloned(),
                ))
            }),
            retry: service
                .retry
                .as_ref()
                .map(|policy| ServiceRetry::new(policy, Arc::clone(clock))),
            auto_idempotency_key: service.idempotency_key == IdempotencyKey::Auto,
            config: service.clone(),
        })
    }

    /// Whether this service's live guard (breaker state, buckets, provider
    /// pause) stays right for `service`: same name, same limits and breaker.
    pub fn keeps_guard_of(&self, service: &Service) -> bool {
        let old = &self.config;
        old.name == service.name
            && old.rate_limit == service.rate_limit
            && old.circuit_breaker == service.circuit_breaker
    }
}
