//! `upstreams.<name>`: the internal services that receive delivered events.

use crate::names::UpstreamName;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::decode::{Decoder, Node};
use super::error::ValueError;
use super::ser;
use super::services::{decode_breaker, positive_duration, CircuitBreaker};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamGroup {
    pub name: UpstreamName,
    pub backends: Backends,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
    /// Deliveries in flight to this group at most (all backends together).
    pub max_in_flight: u32,
    /// The passive breaker each backend gets.
    pub circuit_breaker: CircuitBreaker,
    /// Calls to the backends use TLS (health checks too).
    pub tls: bool,
    /// A private CA the backends' certificates are checked against.
    pub ca_file: Option<PathBuf>,
    /// The Host header and TLS server name of calls to the group; by
    /// default the discovery name, else the backend's address.
    pub host: Option<String>,
}

impl UpstreamGroup {
    /// The Host (and TLS server name) a call to `backend` carries.
    pub fn host_for(&self, backend: &str) -> String {
        if let Some(host) = &self.host {
            return host.clone();
        }
        match &self.backends {
            Backends::Dns { dns, .. } => dns
                .rsplit_once(':')
                .map_or(dns.as_str(), |(host, _)| host)
                .to_string(),
            Backends::Static(_) => backend.to_string(),
        }
    }
}

/// A backend's passive breaker unless the group sets one: five failed
/// deliveries in a row take it out for ten seconds.
pub fn default_backend_breaker() -> CircuitBreaker {
    CircuitBreaker {
        failure_threshold: 5,
        error_rate: 0.5,
        window: Duration::from_secs(10),
        min_requests: 20,
        open_for: Duration::from_secs(10),
        half_open_probes: 1,
        failure_statuses: vec![500, 502, 503, 504],
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backends {
    Static(Vec<WeightedBackend>),
    Dns {
        /// `name:port`, resolved in the background.
        dns: String,
        #[serde(serialize_with = "ser::duration")]
        refresh: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightedBackend {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    Weighted,
    Random,
    Ewma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    #[serde(serialize_with = "ser::display")]
    pub path: http::uri::PathAndQuery,
    pub expect: Vec<u16>,
    #[serde(serialize_with = "ser::duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

/// The error for `name` where an upstream group is wanted but none is
/// called so, with the names there are.
pub(super) fn unknown_group<S: AsRef<str>>(name: &str, known: &[S]) -> String {
    let known = if known.is_empty() {
        "none are defined".to_string()
    } else {
        let names: Vec<&str> = known.iter().map(AsRef::as_ref).collect();
        format!("defined: {}", names.join(", "))
    };
    format!("\"{name}\" names no entry under upstreams ({known})")
}

pub fn decode_upstream(d: &mut Decoder, name: &str, node: &Node) -> Option<UpstreamGroup> {
    let f = d.fields(
        node,
        &[
            "backends",
            "discovery",
            "balance",
            "health_check",
            "max_in_flight",
            "circuit_breaker",
            "tls",
            "ca_file",
            "host",
        ],
    )?;
    let backends = match (f.get("backends"), f.get("discovery")) {
        (Some(n), None) => d.list(&n, decode_backend).and_then(|list| {
            if list.is_empty() {
                d.error(&n.path, "must name at least one backend");
                return None;
            }
            Some(Backends::Static(list))
        }),
        (None, Some(n)) => decode_discovery(d, &n),
        _ => {
            d.error(&f.path, "set exactly one of `backends` (a list of IP:port) or `discovery: { dns: name:port }`");
            None
        }
    };
    let balance = d.choice_or(
        &f,
        "balance",
        &[
            ("round_robin", Balance::RoundRobin),
            ("least_connections", Balance::LeastConnections),
            ("weighted", Balance::Weighted),
            ("random", Balance::Random),
            ("ewma", Balance::Ewma),
        ],
        Balance::RoundRobin,
    );
    let health_check = f.get("health_check").map(|n| decode_health_check(d, &n));
    let max_in_flight = d.or(&f, "max_in_flight", 16, |d, n| {
        d.integer(n, 1, 10_000).map(|v| v as u32)
    });
    let circuit_breaker = d.or(&f, "circuit_breaker", default_backend_breaker(), |d, n| {
        decode_breaker(d, n)
    });
    let tls = d.or(&f, "tls", false, |d, n| d.boolean(n));
    let ca_file = f
        .get("ca_file")
        .and_then(|n| d.non_empty_string(&n))
        .map(PathBuf::from);
    if ca_file.is_some() && tls != Some(true) {
        d.error(&f.path.key("ca_file"), "needs tls: true");
    }
    let host = f.get("host").and_then(|n| {
        d.non_empty_string(&n).filter(|h| {
            let ok = http::HeaderValue::from_str(h).is_ok() && !h.contains(['/', ' ']);
            if !ok {
                d.error(&n.path, "must be a host name, optionally with :port");
            }
            ok
        })
    });
    Some(UpstreamGroup {
        tls: tls?,
        ca_file,
        host,
        name: name.into(),
        backends: backends?,
        balance: balance?,
        health_check: health_check.flatten(),
        max_in_flight: max_in_flight?,
        circuit_breaker: circuit_breaker?,
    })
}

fn decode_backend(d: &mut Decoder, node: &Node) -> Option<WeightedBackend> {
    if node.value.is_mapping() {
        let f = d.fields(node, &["addr", "weight"])?;
        let addr = d.required(&f, "addr").and_then(|n| d.socket_addr(&n));
        let weight = d.or(&f, "weight", 1, |d, n| {
            d.integer(n, 1, 1000).map(|w| w as u32)
        });
        return Some(WeightedBackend {
            addr: addr?,
            weight: weight?,
        });
    }
    d.socket_addr(node)
        .map(|addr| WeightedBackend { addr, weight: 1 })
}

fn decode_discovery(d: &mut Decoder, node: &Node) -> Option<Backends> {
    let f = d.fields(node, &["dns", "refresh"])?;
    let dns = d.required(&f, "dns").and_then(|n| {
        d.parsed(&n, |text| match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(text.to_string())
            }
            _ => Err(ValueError::DnsTarget(text.into())),
        })
    });
    let refresh = positive_duration(d, &f, "refresh", Duration::from_secs(10));
    Some(Backends::Dns {
        dns: dns?,
        refresh: refresh?,
    })
}

fn decode_health_check(d: &mut Decoder, node: &Node) -> Option<HealthCheck> {
    let f = d.fields(
        node,
        &[
            "kind",
            "path",
            "expect",
            "interval",
            "timeout",
            "healthy_after",
            "unhealthy_after",
        ],
    )?;
    let kind = d.choice_or(
        &f,
        "kind",
        &[
            ("http", HealthCheckKind::Http),
            ("tcp", HealthCheckKind::Tcp),
        ],
        HealthCheckKind::Http,
    );
    let path = d.or(
        &f,
        "path",
        http::uri::PathAndQuery::from_static("/healthz"),
        |d, n| d.parsed(n, super::http_types::request_path),
    );
    let expect = d.or(&f, "expect", vec![200], |d, n| {
        d.list(n, |d, item| d.integer(item, 100, 599).map(|v| v as u16))
    });
    let interval = positive_duration(d, &f, "interval", Duration::from_secs(5));
    let timeout = positive_duration(d, &f, "timeout", Duration::from_secs(1));
    let count = |d: &mut Decoder, key: &str, default: u32| match f.get(key) {
        Some(n) => d.integer(&n, 1, 100).map(|v| v as u32),
        None => Some(default),
    };
    let healthy_after = count(d, "healthy_after", 1);
    let unhealthy_after = count(d, "unhealthy_after", 3);
    Some(HealthCheck {
        kind: kind?,
        path: path?,
        expect: expect?,
        interval: interval?,
        timeout: timeout?,
        healthy_after: healthy_after?,
        unhealthy_after: unhealthy_after?,
    })
}
