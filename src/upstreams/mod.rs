//! Upstream groups: the internal services events are delivered to. Each
//! group is one Pingora `LoadBalancer`, run as a Pingora background service
//! that resolves its backends (static, or DNS every `refresh`) and probes
//! them (`health_check`). A delivery asks its group for a backend: the
//! first in the balance's order that is healthy (or has no check) and whose
//! passive breaker admits it.

pub mod discovery;
pub mod health;
pub mod selection;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::services::background::{background_service, GenBackgroundService};

use crate::admin::metrics::Metrics;
use crate::config::upstreams::{Backends as BackendsConfig, UpstreamGroup};
use crate::resilience::breaker::{Admission, Breaker, Outcome};
use crate::resilience::clock::Clock;
use discovery::DnsDiscovery;
use health::{HealthTable, TrackedCheck};
use selection::{InFlight, SelectionConfig, Selector};

pub type GroupService = GenBackgroundService<LoadBalancer<Selector>>;

/// Backends tried per selection at most.
const MAX_TRIES: usize = 256;

pub struct Group {
    pub config: UpstreamGroup,
    lb: Arc<LoadBalancer<Selector>>,
    health: Option<Arc<HealthTable>>,
    in_flight: Arc<InFlight>,
    breakers: RwLock<HashMap<String, Arc<Breaker>>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// A backend chosen for one delivery; counts as in flight until dropped.
pub struct Chosen {
    pub addr: String,
    admission: Admission,
    breaker: Arc<Breaker>,
    in_flight: Arc<AtomicUsize>,
}

impl Chosen {
    /// Tells the backend's passive breaker how the delivery went.
    pub fn finish(self, outcome: Outcome) {
        self.breaker.record(self.admission, outcome);
    }
}

impl Drop for Chosen {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Group {
    /// The group and the background service that keeps its backends and
    /// their health current.
    fn new(
        config: &UpstreamGroup,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, GroupService) {
        let (backends, refresh) = match &config.backends {
            BackendsConfig::Static(list) => {
                let set: BTreeSet<Backend> = list
                    .iter()
                    .map(|b| {
                        Backend::new_with_weight(&b.addr.to_string(), b.weight as usize)
                            .expect("a socket address is a backend")
                    })
                    .collect();
                (Backends::new(Static::new(set)), None)
            }
            BackendsConfig::Dns { dns, refresh } => (
                Backends::new(Box::new(DnsDiscovery {
                    target: dns.clone(),
                })),
                Some(*refresh),
            ),
        };
        let in_flight = Arc::new(InFlight::default());
        let mut lb = LoadBalancer::from_backends_with_config(
            backends,
            Some(SelectionConfig {
                balance: config.balance,
                in_flight: Arc::clone(&in_flight),
            }),
        );
        lb.update_frequency = refresh;
        lb.parallel_health_check = true;
        let health = config.health_check.as_ref().map(|check| {
            let table = Arc::new(HealthTable::new(
                &config.name,
                check,
                metrics.upstream_backend_healthy.clone(),
            ));
            lb.set_health_check(Box::new(TrackedCheck::new(check, Arc::clone(&table))));
            lb.health_check_frequency = Some(health::check_interval(check));
            table
        });
        if refresh.is_none() {
            // Static backends are known now: usable before the service's
            // first round (and by tests that run no server).
            let _ = lb.update().now_or_never();
        }
        let service = background_service(&format!("upstream {}", config.name), lb);
        let group = Arc::new(Self {
            config: config.clone(),
            lb: service.task(),
            health,
            in_flight,
            breakers: RwLock::default(),
            clock,
            metrics,
        });
        (group, service)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn breaker(&self, addr: &str) -> Arc<Breaker> {
        if let Some(breaker) = self.breakers.read().expect("breakers").get(addr) {
            return Arc::clone(breaker);
        }
        let mut breakers = self.breakers.write().expect("breakers");
        let (group, backend) = (self.config.name.clone(), addr.to_string());
        let breaker = breakers.entry(addr.to_string()).or_insert_with(|| {
            Arc::new(Breaker::new(
                &self.config.circuit_breaker,
                Arc::clone(&self.clock),
                Box::new(move |state| {
                    tracing::warn!(upstream = %group, %backend, state = state.as_str(), "backend breaker changed state");
                }),
            ))
        });
        Arc::clone(breaker)
    }

    fn is_healthy(&self, backend: &Backend) -> bool {
        self.health.as_ref().is_none_or(|h| h.is_healthy(backend))
    }

    /// A backend for one delivery, or None when every backend is
    /// unhealthy, unchecked yet, or has its breaker open.
    pub fn choose(&self) -> Option<Chosen> {
        let admitted = Cell::new(None);
        let backend = self.lb.select_with(b"", MAX_TRIES, |backend, _| {
            if !self.is_healthy(backend) {
                return false;
            }
            let breaker = self.breaker(&backend.addr.to_string());
            match breaker.admit() {
                Ok(admission) => {
                    admitted.set(Some((admission, breaker)));
                    true
                }
                Err(_) => false,
            }
        })?;
        let (admission, breaker) = admitted.take()?;
        let in_flight = self.in_flight.counter(&backend);
        in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Chosen {
            addr: backend.addr.to_string(),
            admission,
            breaker,
            in_flight,
        })
    }

    /// Deliveries in flight to the whole group.
    pub fn in_flight(&self) -> usize {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| self.in_flight.count(b))
            .sum()
    }

    /// Sets `sidecar_upstream_backend_healthy` for backends without a check
    /// (always 1); checked ones are set by each check.
    pub fn refresh_gauges(&self) {
        if self.health.is_some() {
            return;
        }
        for backend in self.lb.backends().get_backend().iter() {
            self.metrics
                .upstream_backend_healthy
                .with_label_values(&[self.config.name.as_str(), &backend.addr.to_string()])
                .set(1);
        }
    }

    /// The `/admin/upstreams` entry of this group.
    pub fn summary(&self) -> serde_json::Value {
        let backends: Vec<serde_json::Value> = self
            .lb
            .backends()
            .get_backend()
            .iter()
            .map(|backend| {
                let addr = backend.addr.to_string();
                let health = match &self.health {
                    None => "unchecked",
                    Some(table) => match table.state(&addr) {
                        state if state.healthy => "healthy",
                        state if state.checked => "unhealthy",
                        _ => "unknown",
                    },
                };
                serde_json::json!({
                    "addr": addr,
                    "weight": backend.weight,
                    "health": health,
                    "breaker": self.breaker(&addr).state().as_str(),
                    "in_flight": self.in_flight.count(backend),
                })
            })
            .collect();
        serde_json::json!({
            "balance": self.config.balance,
            "max_in_flight": self.config.max_in_flight,
            "backends": backends,
        })
    }
}

/// Every upstream group by name.
#[derive(Default)]
pub struct Upstreams {
    groups: BTreeMap<String, Arc<Group>>,
}

impl Upstreams {
    /// The groups, and the background services the server must run.
    pub fn new(
        configs: &[UpstreamGroup],
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> (Self, Vec<GroupService>) {
        let mut groups = BTreeMap::new();
        let mut services = Vec::new();
        for config in configs {
            let (group, service) = Group::new(config, Arc::clone(&clock), Arc::clone(&metrics));
            groups.insert(config.name.clone(), group);
            services.push(service);
        }
        (Self { groups }, services)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.values()
    }

    pub fn summary(&self) -> serde_json::Value {
        let groups: serde_json::Map<String, serde_json::Value> = self
            .groups
            .iter()
            .map(|(name, group)| (name.clone(), group.summary()))
            .collect();
        serde_json::Value::Object(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstreams::{default_backend_breaker, Balance, WeightedBackend};
    use crate::resilience::clock::ManualClock;

    fn group(balance: Balance, ports: &[u16]) -> (Arc<Group>, Arc<ManualClock>) {
        let config = UpstreamGroup {
            name: "notify".into(),
            backends: BackendsConfig::Static(
                ports
                    .iter()
                    .map(|p| WeightedBackend {
                        addr: format!("127.0.0.1:{p}").parse().unwrap(),
                        weight: 1,
                    })
                    .collect(),
            ),
            balance,
            health_check: None,
            max_in_flight: 16,
            circuit_breaker: default_backend_breaker(),
        };
        let clock = Arc::new(ManualClock::default());
        let (group, _service) = Group::new(&config, clock.clone(), Arc::new(Metrics::new()));
        (group, clock)
    }

    #[test]
    fn a_backend_whose_deliveries_keep_failing_is_skipped_until_its_breaker_half_opens() {
        let (group, clock) = group(Balance::RoundRobin, &[7001, 7002]);
        for _ in 0..5 {
            loop {
                let chosen = group.choose().unwrap();
                if chosen.addr.ends_with(":7001") {
                    chosen.finish(Outcome::Failure);
                    break;
                }
                chosen.finish(Outcome::Success);
            }
        }
        for _ in 0..6 {
            let chosen = group.choose().unwrap();
            assert!(chosen.addr.ends_with(":7002"), "7001's breaker is open");
            chosen.finish(Outcome::Success);
        }
        clock.advance(std::time::Duration::from_secs(10));
        let seen: BTreeSet<String> = (0..4)
            .filter_map(|_| group.choose().map(|c| c.addr.clone()))
            .collect();
        assert!(
            seen.contains("127.0.0.1:7001"),
            "a probe goes to 7001 again"
        );
    }

    #[test]
    fn a_chosen_backend_counts_as_in_flight_until_dropped() {
        let (group, _) = group(Balance::LeastConnections, &[7001, 7002]);
        let first = group.choose().unwrap();
        let second = group.choose().unwrap();
        assert_ne!(first.addr, second.addr, "the idle one is chosen");
        assert_eq!(group.in_flight(), 2);
        drop(first);
        second.finish(Outcome::Success);
        assert_eq!(group.in_flight(), 0);
    }
}
