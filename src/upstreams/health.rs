//! Active health of a group's backends. Pingora's checks start every
//! backend healthy and flip on one result; ours start *unknown* (not used)
//! and follow `healthy_after` / `unhealthy_after`, so no delivery goes to a
//! backend before its first check passes. [`TrackedCheck`] wraps Pingora's
//! HTTP or TCP probe and records each result in a [`HealthTable`].

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use prometheus::IntGaugeVec;

use crate::config::upstreams::{HealthCheck as HealthCheckConfig, HealthCheckKind, UpstreamGroup};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendHealth {
    /// False until `healthy_after` checks in a row have passed.
    pub healthy: bool,
    /// At least one check has finished.
    pub checked: bool,
    successes: u32,
    failures: u32,
}

/// Health per backend address of one group, with the thresholds to apply.
pub struct HealthTable {
    group: String,
    healthy_after: u32,
    unhealthy_after: u32,
    states: RwLock<HashMap<String, BackendHealth>>,
    gauge: IntGaugeVec,
}

impl HealthTable {
    pub fn new(group: &str, config: &HealthCheckConfig, gauge: IntGaugeVec) -> Self {
        Self {
            group: group.to_string(),
            healthy_after: config.healthy_after.max(1),
            unhealthy_after: config.unhealthy_after.max(1),
            states: RwLock::default(),
            gauge,
        }
    }

    pub fn is_healthy(&self, backend: &Backend) -> bool {
        self.state(&backend.addr.to_string()).healthy
    }

    pub fn state(&self, addr: &str) -> BackendHealth {
        self.states
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .copied()
            .unwrap_or_default()
    }

    /// Forgets backends that left discovery, and their gauge series.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        states.retain(|addr, _| {
            let keep = live.contains(addr);
            if !keep {
                let _ = self
                    .gauge
                    .remove_label_values(&[self.group.as_str(), addr.as_str()]);
            }
            keep
        });
    }

    /// Takes the states of `previous` (the same group before a reload):
    /// a backend that stays keeps its health instead of going unchecked,
    /// and unusable, until its next probes.
    pub fn inherit(&self, previous: &HealthTable) {
        let kept = previous
            .states
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        *self.states.write().unwrap_or_else(|e| e.into_inner()) = kept;
    }

    pub fn tracked(&self) -> usize {
        self.states.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// One check's result; returns the new health when it changed.
    pub fn record(&self, addr: &str, passed: bool) -> Option<bool> {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        let state = states.entry(addr.to_string()).or_default();
        state.checked = true;
        if passed {
            state.successes += 1;
            state.failures = 0;
        } else {
            state.failures += 1;
            state.successes = 0;
        }
        let before = state.healthy;
        if !state.healthy && state.successes >= self.healthy_after {
            state.healthy = true;
        } else if state.healthy && state.failures >= self.unhealthy_after {
            state.healthy = false;
        }
        self.gauge
            .with_label_values(&[self.group.as_str(), addr])
            .set(state.healthy as i64);
        (state.healthy != before).then_some(state.healthy)
    }
}

/// Pingora's probe, with every result recorded in our table.
pub struct TrackedCheck {
    config: HealthCheckConfig,
    reach: ProbeReach,
    /// One probe per `Host` the group's calls carry (Pingora's HTTP probe
    /// sends one fixed Host): one for a group with `host` or a DNS name,
    /// one per static backend otherwise, made at its first check.
    probes: std::sync::Mutex<HashMap<String, Probe>>,
    table: std::sync::Arc<HealthTable>,
}

type Probe = std::sync::Arc<dyn HealthCheck + Send + Sync>;

/// How a probe reaches the group: with the `Host` (and TLS server name)
/// the group's own calls to a backend carry, and TLS when they use it.
pub struct ProbeReach {
    pub group: UpstreamGroup,
    pub ca: Option<std::sync::Arc<pingora::protocols::tls::CaType>>,
}

impl TrackedCheck {
    pub fn new(
        config: &HealthCheckConfig,
        reach: ProbeReach,
        table: std::sync::Arc<HealthTable>,
    ) -> Self {
        Self {
            config: config.clone(),
            reach,
            probes: Default::default(),
            table,
        }
    }

    fn probe_for(&self, addr: &str) -> Probe {
        // A TCP probe sends nothing: one serves every backend.
        let host = match self.config.kind {
            HealthCheckKind::Http => self.reach.group.host_for(addr),
            HealthCheckKind::Tcp => String::new(),
        };
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let made = probes
            .entry(host)
            .or_insert_with_key(|host| probe(&self.config, host, &self.reach).into());
        std::sync::Arc::clone(made)
    }
}

/// An HTTP GET of `path` expecting one of `expect`, or a TCP connect, each
/// bounded by `timeout`. Pingora's own thresholds stay at one: ours decide.
fn probe(
    config: &HealthCheckConfig,
    host: &str,
    reach: &ProbeReach,
) -> Box<dyn HealthCheck + Send + Sync> {
    match config.kind {
        HealthCheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(config.timeout);
            check.peer_template.options.total_connection_timeout = Some(config.timeout);
            check
        }
        HealthCheckKind::Http => {
            let mut check = HttpHealthCheck::new(host, reach.group.tls);
            check.peer_template.options.ca = reach.ca.clone();
            check.req.set_uri(http::Uri::from(config.path.clone()));
            check.peer_template.options.connection_timeout = Some(config.timeout);
            check.peer_template.options.read_timeout = Some(config.timeout);
            check.peer_template.options.write_timeout = Some(config.timeout);
            let expect = config.expect.clone();
            check.validator = Some(Box::new(move |response| {
                if expect.contains(&response.status.as_u16()) {
                    Ok(())
                } else {
                    Err(pingora::Error::explain(
                        pingora::ErrorType::HTTPStatus(response.status.as_u16()),
                        "unexpected health check status",
                    ))
                }
            }));
            Box::new(check)
        }
    }
}

#[async_trait::async_trait]
impl HealthCheck for TrackedCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let addr = target.addr.to_string();
        let result = self.probe_for(&addr).check(target).await;
        if let Some(healthy) = self.table.record(&addr, result.is_ok()) {
            match &result {
                Ok(()) => {
                    tracing::info!(upstream = %self.table.group, backend = %addr, healthy, "backend health changed")
                }
                Err(error) => {
                    tracing::warn!(upstream = %self.table.group, backend = %addr, healthy, error = %error, "backend health changed")
                }
            }
        }
        result
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

/// How long a check may take before the next one is due.
pub fn check_interval(config: &HealthCheckConfig) -> Duration {
    config.interval.max(config.timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(healthy_after: u32, unhealthy_after: u32) -> HealthTable {
        let config = HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            path: http::uri::PathAndQuery::from_static("/"),
            expect: vec![200],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after,
            unhealthy_after,
        };
        let gauge =
            IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["upstream", "backend"]).unwrap();
        HealthTable::new("notify", &config, gauge)
    }

    #[test]
    fn a_backend_is_unknown_until_enough_checks_pass_and_leaves_after_enough_fail() {
        let table = table(2, 3);
        let addr = "127.0.0.1:7001";
        assert!(!table.state(addr).healthy, "unknown is not healthy");
        assert_eq!(table.record(addr, true), None);
        assert!(table.state(addr).checked && !table.state(addr).healthy);
        assert_eq!(table.record(addr, true), Some(true));
        assert_eq!(table.record(addr, false), None);
        assert_eq!(table.record(addr, true), None, "a pass resets the failures");
        assert_eq!(table.record(addr, false), None);
        assert_eq!(table.record(addr, false), None);
        assert_eq!(table.record(addr, false), Some(false));
        assert_eq!(table.record(addr, true), None);
        assert_eq!(table.record(addr, true), Some(true));
    }
}
