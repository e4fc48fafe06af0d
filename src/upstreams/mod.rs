//! Upstream groups: the internal services events are delivered to. Each
//! group is one Pingora `LoadBalancer` whose background loop (Pingora's
//! `BackgroundService` for it) resolves its backends (static, or DNS every
//! `refresh`) and probes them (`health_check`). The loops run under one
//! Pingora background service, [`UpstreamsService`], so that a config
//! reload can start the loops of new or changed groups and stop those of
//! removed ones. A delivery asks its group for a backend: the first in the
//! balance's order that is healthy (or has no check) and whose passive
//! breaker admits it.

pub mod discovery;
pub mod ewma;
pub mod health;
pub mod selection;

use crate::names::UpstreamName;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use futures_util::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, watch};

use crate::config::upstreams::{Backends as BackendsConfig, UpstreamGroup};
use crate::metrics::Metrics;
use crate::net::target::{hash_path, load_ca, CaError};
use crate::resilience::breaker::{Admission, Breaker, Outcome};
use crate::time::Clock;
use discovery::DnsDiscovery;
use health::{HealthTable, ProbeReach, TrackedCheck};
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use selection::{BackendLoad, Loads, SelectionConfig, Selector};
use std::time::Duration;

/// Backends tried per selection at most.
const MAX_TRIES: usize = 256;

pub struct Group {
    pub config: UpstreamGroup,
    /// The group's private CA, when `tls` with `ca_file`.
    ca: Option<Arc<CaType>>,
    lb: Arc<LoadBalancer<Selector>>,
    /// Ends the group's background loop when the group is dropped (a reload
    /// removed or replaced it).
    stop: watch::Sender<bool>,
    health: Option<Arc<HealthTable>>,
    loads: Arc<Loads>,
    breakers: RwLock<HashMap<String, Arc<Breaker>>>,
    /// Backends whose health gauge this group set without a check.
    published: Mutex<HashSet<String>>,
    /// (backend, code) series of `sidecar_upstream_requests_total`, removed
    /// when their backend leaves.
    counted: Mutex<HashMap<String, HashSet<String>>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// A backend chosen for one call; counts as in flight until dropped.
pub struct Chosen {
    pub addr: String,
    pub socket: std::net::SocketAddr,
    admission: Admission,
    breaker: Arc<Breaker>,
    load: Arc<BackendLoad>,
    clock: Arc<dyn Clock>,
    started: u64,
}

impl Chosen {
    /// Tells the backend's passive breaker and its latency estimate how
    /// the call went; a failure counts as a slow answer.
    pub fn finish(self, outcome: Outcome) {
        let now = self.clock.now_micros();
        match outcome {
            Outcome::Success => self
                .load
                .observe(now.saturating_sub(self.started) as f64, now),
            Outcome::Failure => self.load.observe(ewma::FAILURE_PENALTY_MICROS, now),
            Outcome::Unknown => {}
        }
        self.breaker.record(self.admission, outcome);
    }
}

impl Drop for Chosen {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Group {
    /// The group; its loop starts when [`UpstreamsService`] gets it.
    fn new(
        config: &UpstreamGroup,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, GroupError> {
        let (backends, refresh) = match &config.backends {
            BackendsConfig::Static(list) => {
                let set: BTreeSet<Backend> = list
                    .iter()
                    .map(|b| Backend {
                        addr: pingora::protocols::l4::socket::SocketAddr::Inet(b.addr),
                        weight: b.weight as usize,
                        ext: http::Extensions::new(),
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
        let ca = match &config.ca_file {
            Some(path) => Some(load_ca(path).map_err(|source| GroupError {
                group: config.name.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Self::with_backends(
            config, backends, refresh, ca, clock, metrics,
        ))
    }

    /// The peer for one call to `chosen`: plain or TLS (with the group's
    /// CA), its Host and server name the group's.
    pub fn peer(&self, chosen: &Chosen, connect_timeout: Duration, timeout: Duration) -> HttpPeer {
        let mut peer = HttpPeer::new(chosen.socket, self.config.tls, self.host_for(chosen));
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(Arc::clone(ca));
            peer.group_key = self.config.ca_file.as_deref().map_or(0, hash_path);
        }
        peer
    }

    /// The Host header (and TLS server name) of a call to `chosen`.
    pub fn host_for(&self, chosen: &Chosen) -> String {
        self.config.host_for(&chosen.addr)
    }

    fn with_backends(
        config: &UpstreamGroup,
        backends: Backends,
        refresh: Option<std::time::Duration>,
        ca: Option<Arc<CaType>>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let loads = Arc::new(Loads::default());
        let mut lb = LoadBalancer::from_backends_with_config(
            backends,
            Some(SelectionConfig {
                balance: config.balance,
                loads: Arc::clone(&loads),
                clock: Arc::clone(&clock),
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
            let reach = ProbeReach {
                group: config.clone(),
                ca: ca.clone(),
            };
            lb.set_health_check(Box::new(TrackedCheck::new(
                check,
                reach,
                Arc::clone(&table),
            )));
            lb.health_check_frequency = Some(health::check_interval(check));
            table
        });
        if refresh.is_none() {
            // Static backends are known now: usable before the service's
            // first round (and by tests that run no server).
            let _ = lb.update().now_or_never();
        }
        let (stop, _) = watch::channel(false);
        Arc::new(Self {
            config: config.clone(),
            ca,
            lb: Arc::new(lb),
            stop,
            health,
            loads,
            breakers: RwLock::default(),
            published: Mutex::default(),
            counted: Mutex::default(),
            clock,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A changed group takes over what the group of its name knew of the
    /// backends that stay: their health (a reload must not send calls to
    /// `no_healthy_backend` while the backends are probed again) and, when
    /// the breaker settings did not change, their breakers.
    fn inherit(&self, previous: &Group) {
        if let (Some(health), Some(old)) = (&self.health, &previous.health) {
            health.inherit(old);
        }
        if self.config.circuit_breaker == previous.config.circuit_breaker {
            let breakers = previous
                .breakers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            *self.breakers.write().unwrap_or_else(|e| e.into_inner()) = breakers;
        }
    }

    fn breaker(&self, addr: &str) -> Arc<Breaker> {
        if let Some(breaker) = self
            .breakers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
        {
            return Arc::clone(breaker);
        }
        let mut breakers = self.breakers.write().unwrap_or_else(|e| e.into_inner());
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
    ///
    /// The balance's first choice is asked for again (up to once per
    /// backend) before falling back to its second: skipping an unusable
    /// backend then costs it its turn rather than handing that turn to its
    /// neighbour, so the usable ones share evenly.
    pub fn choose(&self) -> Option<Chosen> {
        self.choose_excluding(&[])
    }

    /// As [`Group::choose`], avoiding the backends in `tried` (a retry
    /// goes to another backend) unless no other one is usable.
    pub fn choose_excluding(&self, tried: &[String]) -> Option<Chosen> {
        let turns = self.lb.backends().get_backend().len();
        (0..turns)
            .find_map(|_| self.select(1, tried))
            .or_else(|| self.select(MAX_TRIES, tried))
            .or_else(|| match tried {
                [] => None,
                _ => self.select(MAX_TRIES, &[]),
            })
    }

    fn select(&self, tries: usize, tried: &[String]) -> Option<Chosen> {
        let admitted = Cell::new(None);
        let backend = self.lb.select_with(b"", tries, |backend, _| {
            if !self.is_healthy(backend) {
                return false;
            }
            let addr = backend.addr.to_string();
            if tried.contains(&addr) {
                return false;
            }
            let breaker = self.breaker(&addr);
            match breaker.admit() {
                Ok(admission) => {
                    // The address written once: the chosen call keeps it.
                    admitted.set(Some((admission, breaker, addr)));
                    true
                }
                Err(_) => false,
            }
        })?;
        let (admission, breaker, addr) = admitted.take()?;
        let socket = backend.addr.as_inet().copied()?;
        let load = self.loads.of(&backend);
        load.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Chosen {
            addr,
            socket,
            admission,
            breaker,
            load,
            clock: Arc::clone(&self.clock),
            started: self.clock.now_micros(),
        })
    }

    /// Counts one call to `backend` in `sidecar_upstream_requests_total`
    /// (`code` is the status, or `error` when none came back).
    pub fn count_call(&self, backend: &str, code: &str) {
        self.metrics
            .upstream_requests_total
            .with_label_values(&[self.config.name.as_str(), backend, code])
            .inc();
        // Looked up by reference: a call allocates only for a series new
        // to this group.
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        match counted.get_mut(backend) {
            Some(codes) if codes.contains(code) => {}
            Some(codes) => {
                codes.insert(code.to_string());
            }
            None => {
                counted.insert(backend.to_string(), HashSet::from([code.to_string()]));
            }
        }
    }

    /// Deliveries in flight to the whole group.
    pub fn in_flight(&self) -> usize {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| self.loads.count(b))
            .sum()
    }

    /// Sets `sidecar_upstream_backend_healthy` for backends without a check
    /// (always 1; checked ones are set by each check), and forgets every
    /// backend that left discovery: its breaker, in-flight counter, health
    /// and metric series. DNS churn must not grow the sidecar forever.
    pub fn refresh_gauges(&self) {
        let live: HashSet<String> = self
            .lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        self.prune(&live);
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if self.health.is_none() {
            for addr in &live {
                self.metrics
                    .upstream_backend_healthy
                    .with_label_values(&[self.config.name.as_str(), addr.as_str()])
                    .set(1);
                published.insert(addr.clone());
            }
        }
    }

    /// Drops every series of this group: a reload removed it.
    pub fn forget_series(&self) {
        self.prune(&HashSet::new());
    }

    /// Forgets the state and metric series of every backend not in `live`.
    fn prune(&self, live: &HashSet<String>) {
        self.breakers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr, _| live.contains(addr));
        self.loads.retain(live);
        self.counted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|backend, codes| {
                let keep = live.contains(backend);
                if !keep {
                    for code in codes.iter() {
                        let _ = self.metrics.upstream_requests_total.remove_label_values(&[
                            self.config.name.as_str(),
                            backend,
                            code,
                        ]);
                    }
                }
                keep
            });
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr| {
                let keep = live.contains(addr);
                if !keep {
                    let _ = self
                        .metrics
                        .upstream_backend_healthy
                        .remove_label_values(&[self.config.name.as_str(), addr.as_str()]);
                }
                keep
            });
        if let Some(table) = &self.health {
            table.retain(live);
        }
    }

    /// Per-backend entries held (breakers, in-flight counters, health), for
    /// tests of how state follows discovery.
    pub fn tracked_backends(&self) -> (usize, usize, usize) {
        (
            self.breakers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            self.loads.tracked(),
            self.health.as_ref().map_or(0, |h| h.tracked()),
        )
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
                    "in_flight": self.loads.count(backend),
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

impl Drop for Group {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A group the config describes but the sidecar cannot build.
#[derive(Debug, thiserror::Error)]
#[error("upstreams.{group}: {source}")]
pub struct GroupError {
    pub group: UpstreamName,
    pub source: CaError,
}

/// Every upstream group by name, as one config made them; part of the
/// runtime snapshot.
#[derive(Default)]
pub struct UpstreamGroups {
    groups: BTreeMap<UpstreamName, Arc<Group>>,
}

/// Where the groups a snapshot adds are sent for their loops to start:
/// the handle of [`UpstreamsService`].
#[derive(Clone)]
pub struct GroupLoops {
    start: mpsc::UnboundedSender<Arc<Group>>,
}

/// Runs every group's Pingora load-balancer loop, and the loops of groups a
/// reload adds; each ends with the server or when its group is dropped.
pub struct UpstreamsService {
    started: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Arc<Group>>>>,
}

impl UpstreamsService {
    /// The service the server runs, and the handle that feeds it groups.
    pub fn new() -> (Self, GroupLoops) {
        let (start, started) = mpsc::unbounded_channel();
        let service = Self {
            started: std::sync::Mutex::new(Some(started)),
        };
        (service, GroupLoops { start })
    }
}

impl GroupLoops {
    /// Starts the loops of the groups of `next` that `previous` did not
    /// have (new or changed ones); kept groups' loops run on.
    pub fn start_new(&self, next: &UpstreamGroups, previous: Option<&UpstreamGroups>) {
        for group in next.groups.values() {
            let kept = previous
                .and_then(|p| p.groups.get(group.name()))
                .is_some_and(|old| Arc::ptr_eq(old, group));
            if !kept {
                let _ = self.start.send(Arc::clone(group));
            }
        }
    }
}

impl UpstreamGroups {
    /// The groups of a config: unchanged ones of `previous` are kept with
    /// their health, breakers and in-flight counts; new and changed ones
    /// start afresh (a changed group's backends are checked again before
    /// use) once [`GroupLoops::start_new`] is given them.
    pub fn build(
        configs: &[UpstreamGroup],
        previous: Option<&UpstreamGroups>,
        clock: &Arc<dyn Clock>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, GroupError> {
        let mut groups = BTreeMap::new();
        for config in configs {
            let kept = previous
                .and_then(|p| p.groups.get(&config.name))
                .filter(|g| g.config == *config);
            let group = match kept {
                Some(group) => Arc::clone(group),
                None => {
                    let group = Group::new(config, Arc::clone(clock), Arc::clone(metrics))?;
                    if let Some(old) = previous.and_then(|p| p.groups.get(&config.name)) {
                        group.inherit(old);
                    }
                    group
                }
            };
            groups.insert(config.name.clone(), group);
        }
        Ok(Self { groups })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.values()
    }

    pub fn summary(&self) -> serde_json::Value {
        let groups: serde_json::Map<String, serde_json::Value> = self
            .groups
            .iter()
            .map(|(name, group)| (name.to_string(), group.summary()))
            .collect();
        serde_json::Value::Object(groups)
    }
}

#[async_trait::async_trait]
impl BackgroundService for UpstreamsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut started) = self.started.lock().expect("upstreams service").take() else {
            return;
        };
        let mut loops = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                group = started.recv() => {
                    let Some(group) = group else { break };
                    let (lb, mut stop) = (Arc::clone(&group.lb), group.stop.subscribe());
                    let mut server_shutdown = shutdown.clone();
                    drop(group);
                    // Pingora's loop stops when its watch turns true: at the
                    // server's shutdown or when the group is dropped.
                    let (tell, watch) = watch::channel(false);
                    loops.spawn(async move {
                        tokio::select! {
                            _ = lb.start(watch) => {}
                            _ = async {
                                tokio::select! {
                                    _ = stop.changed() => {}
                                    _ = server_shutdown.changed() => {}
                                }
                                let _ = tell.send(true);
                                std::future::pending::<()>().await
                            } => {}
                        }
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
        loops.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstreams::{default_backend_breaker, Balance, WeightedBackend};
    use crate::time::ManualClock;

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
            tls: false,
            ca_file: None,
            host: None,
        };
        let clock = Arc::new(ManualClock::default());
        let group = Group::new(&config, clock.clone(), Arc::new(Metrics::new())).unwrap();
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

    /// A discovery whose answer the test sets.
    struct Shifting(Arc<Mutex<BTreeSet<Backend>>>);

    #[async_trait::async_trait]
    impl pingora::lb::discovery::ServiceDiscovery for Shifting {
        async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
            Ok((self.0.lock().unwrap().clone(), HashMap::new()))
        }
    }

    fn backend(port: u16) -> Backend {
        Backend::new(&format!("127.0.0.1:{port}")).unwrap()
    }

    #[tokio::test]
    async fn backends_that_leave_discovery_take_their_state_and_series_with_them() {
        let answer = Arc::new(Mutex::new((7001..7004).map(backend).collect()));
        let config = UpstreamGroup {
            name: "notify".into(),
            backends: BackendsConfig::Static(Vec::new()),
            balance: Balance::RoundRobin,
            health_check: None,
            max_in_flight: 16,
            circuit_breaker: default_backend_breaker(),
            tls: false,
            ca_file: None,
            host: None,
        };
        let metrics = Arc::new(Metrics::new());
        let group = Group::with_backends(
            &config,
            Backends::new(Box::new(Shifting(Arc::clone(&answer)))),
            None,
            None,
            Arc::new(ManualClock::default()),
            Arc::clone(&metrics),
        );
        group.lb.update().await.unwrap();
        for _ in 0..3 {
            group.choose().unwrap().finish(Outcome::Success);
        }
        group.refresh_gauges();
        assert_eq!(group.tracked_backends(), (3, 3, 0));
        let series = |metrics: &Metrics| {
            String::from_utf8(metrics.render())
                .unwrap()
                .matches("sidecar_upstream_backend_healthy{")
                .count()
        };
        assert_eq!(series(&metrics), 3);
        // DNS now answers with two others: 7001-7003 leave.
        *answer.lock().unwrap() = [backend(7010), backend(7011)].into();
        group.lb.update().await.unwrap();
        group.refresh_gauges();
        assert_eq!(group.tracked_backends(), (0, 0, 0));
        assert_eq!(series(&metrics), 2, "only the live backends' series");
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
