//! The configuration: one YAML file read once into typed, validated structs.
//! Nothing outside this module sees YAML; everything else sees `Config`.
//! Secrets are resolved here and carried as `Secret`, which never prints.

mod decode;
pub mod error;
use error::ValueError;
pub mod http_types;
pub mod interpolate;
mod locate;
pub mod path;
pub mod pattern;
pub mod private_key;
pub mod secret;
mod ser;
pub mod services;
mod summary;
pub mod telemetry;
#[cfg(test)]
mod tests;
pub mod units;
pub mod upstreams;
mod validate;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use decode::{Decoder, Fields, Node};
pub use error::{ConfigError, ConfigErrors, Location};
use interpolate::{Lookup, ProcessLookup};
pub use secret::Secret;
pub use services::{Auth, Service};
pub use summary::summary;
use units::parse_ratio;
pub use upstreams::UpstreamGroup;
pub use webhooks::{Delivery, Webhook};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub listen: Listen,
    pub ingress: Ingress,
    pub admin: Admin,
    #[serde(serialize_with = "ser::duration")]
    pub drain_delay: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub shutdown_grace: Duration,
    pub store: Store,
    pub services: Vec<Service>,
    pub upstreams: Vec<UpstreamGroup>,
    pub webhooks: Vec<Webhook>,
    /// `events.<name>`: events the pod's own app publishes on the egress
    /// listener; delivered as webhook events are (their `verify` is
    /// `kind: app`, which no webhook may use).
    pub events: Vec<Webhook>,
    pub delivery: Option<Delivery>,
    pub tracing: telemetry::Tracing,
    pub limits: Limits,
}

/// What the sidecar keeps itself within, whatever the load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// `limits.memory`: the resident memory the sidecar keeps under
    /// (None: 80% of the container's cgroup limit, or 100 MiB without
    /// one, decided at start by `resilience::memory`).
    pub memory: Option<u64>,
}

/// The smallest `limits.memory` taken: under it the process at rest
/// (about 17 MiB) is over the budget, and every event would be refused.
pub const MIN_MEMORY: u64 = 16 << 20;

/// The smallest `limits.memory` that holds under any load: the app's
/// connections to the egress hold Pingora's 64 KiB read buffer each (16 MiB
/// for 256) whatever the budget says (`benches/burst.sh` with 48 MiB peaked
/// at 52). A smaller budget is taken, with a warning at start.
pub const SAFE_MEMORY: u64 = 64 << 20;

/// The config's JSON Schema (draft 2020-12), as `wedsync-sidecar schema`
/// prints it; `scripts/check-schema` holds every config of the repository
/// to it, and a unit test its key lists to the decoder's.
pub const SCHEMA: &str = include_str!("../../conf/sidecar.schema.json");

impl Config {
    /// Every source of stored events: the webhooks, then the app's events.
    pub fn event_sources(&self) -> impl Iterator<Item = &Webhook> {
        self.webhooks.iter().chain(&self.events)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listen {
    pub egress: SocketAddr,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
}

/// What the public webhook listener gives anonymous clients at most: it
/// listens for anyone on the internet, and the egress shares its process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ingress {
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: u32,
    /// Headers and body must arrive within this, from the first byte.
    #[serde(serialize_with = "ser::duration")]
    pub request_timeout: Duration,
    /// Bytes of all bodies being read at once.
    pub max_buffered: u64,
}

impl Default for Ingress {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            request_timeout: Duration::from_secs(10),
            max_buffered: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Admin {
    pub token: Option<Secret>,
    /// `admin.hosts`: `Host` names served besides localhost, 127.0.0.1 and
    /// [::1] (any port), lowercased; any other is refused (421) so that a
    /// page on a name rebound to this pod cannot read or act.
    pub hosts: Vec<String>,
    /// `admin.read_only`: the console and the GET API only; every POST
    /// and DELETE is refused (403).
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreKind {
    Local {
        path: PathBuf,
        /// `store.max_size`: the most the database file may hold (None:
        /// as much as its volume has room for).
        max_size: Option<u64>,
    },
    Redis(RedisStoreConfig),
}

/// The smallest `store.max_size`: an empty database file and the reserve
/// the drain keeps (`store::space`) with room for a backlog above them.
pub const MIN_STORE_MAX_SIZE: u64 = 4 << 20;
/// `store.max_memory_ratio` when it is not set.
pub const DEFAULT_MAX_MEMORY_RATIO: f64 = 0.9;

/// `store` with `kind: redis`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisStoreConfig {
    /// One node's URL, or a cluster's seed nodes.
    pub urls: Vec<Secret>,
    /// `store.url` is a list: the seeds of a Redis Cluster.
    pub cluster: bool,
    /// The master as Redis Sentinel names it (instead of `urls`).
    pub sentinel: Option<SentinelConfig>,
    /// The queue's hash-tagged parts, spread over a cluster's masters.
    pub shards: u32,
    /// The CA that signed the servers' certificates (`rediss://`).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `store.max_memory_ratio`: the share of each master's `maxmemory`
    /// above which new events are refused; the rest is the drain's.
    pub max_memory_ratio: f64,
}

/// `store.sentinel`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master by.
    pub master: String,
    /// The sentinels: `host:port`, reached over plain TCP.
    pub nodes: Vec<(String, u16)>,
    /// The master's credentials (not the sentinels').
    pub username: Option<Secret>,
    pub password: Option<Secret>,
}

/// The most queue parts: job ids carry their part in their last ten bits.
pub const MAX_SHARDS: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Store {
    #[serde(flatten)]
    pub kind: StoreKind,
    pub prefix: String,
    /// Redis replicas that must acknowledge a write that must survive
    /// (accept, dead letter, replay, delete) before it counts as done.
    pub replicas: u32,
    #[serde(serialize_with = "ser::duration")]
    pub replica_timeout: Duration,
    /// How long the store may fail before `/readyz` turns 503.
    #[serde(serialize_with = "ser::duration")]
    pub unready_after: Duration,
    /// `store.history`: the event log.
    pub history: History,
}

/// `store.history`: events kept after delivery, with every attempt, for
/// the event log (`/admin/events`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct History {
    pub enabled: bool,
    /// Finished events older than this go.
    #[serde(serialize_with = "ser::duration")]
    pub retention: Duration,
    /// Beyond this many bytes of events, the oldest finished ones go.
    pub max_size: u64,
}

impl Default for History {
    fn default() -> Self {
        let limits = crate::store::history::HistoryLimits::default();
        Self {
            enabled: true,
            retention: limits.retention,
            max_size: limits.max_size,
        }
    }
}

impl History {
    /// The limits the store keeps the log within; None when it is off.
    pub fn limits(&self) -> Option<crate::store::history::HistoryLimits> {
        self.enabled
            .then_some(crate::store::history::HistoryLimits {
                retention: self.retention,
                max_size: self.max_size,
            })
    }
}

impl Store {
    fn with_kind(kind: StoreKind) -> Self {
        Self {
            kind,
            prefix: "sidecar".into(),
            replicas: 0,
            replica_timeout: Duration::from_millis(500),
            unready_after: Duration::from_secs(10),
            history: History::default(),
        }
    }
}

impl Config {
    /// Reads, resolves and validates `path`, reporting every error found.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|err| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                path: "(file)".into(),
                message: format!("cannot read the file: {err}"),
                location: None,
            }],
        })?;
        Self::from_yaml(&source, &file, &ProcessLookup)
    }

    pub fn from_yaml(source: &str, file: &str, lookup: &dyn Lookup) -> Result<Self, ConfigErrors> {
        decode_with(source, file, lookup, |decoder, root| {
            let (config, failed) = decode_document(decoder, root)?;
            validate::check(decoder, &config, &failed);
            Some(config)
        })
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl Listen {
    /// Only `listen` of a config's text, with the defaults and checks of a
    /// whole load. `inject` needs the ports where manifests are edited,
    /// where the secrets the rest of the config reads do not exist.
    pub fn from_yaml(source: &str, file: &str) -> Result<Self, ConfigErrors> {
        decode_with(source, file, &ProcessLookup, |decoder, root| {
            match root.value.get("listen").filter(|v| !v.is_null()) {
                Some(value) => decode_listen(
                    decoder,
                    &Node {
                        value,
                        path: root.path.key("listen"),
                    },
                ),
                None => Some(default_listen()),
            }
        })
    }
}

/// Parses `source` and decodes it with `decode`, reporting every error
/// the decoder collected, each with its line and column.
fn decode_with<T>(
    source: &str,
    file: &str,
    lookup: &dyn Lookup,
    decode: impl FnOnce(&mut Decoder, &Node) -> Option<T>,
) -> Result<T, ConfigErrors> {
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(source).map_err(|err| ConfigErrors {
            file: file.to_string(),
            errors: vec![syntax_error(source, &err)],
        })?;
    let mut decoder = Decoder::new(lookup);
    let decoded = decode(&mut decoder, &Node::root(&value));
    let errors = decoder.into_errors();
    if errors.is_empty() {
        if let Some(decoded) = decoded {
            return Ok(decoded);
        }
    }
    let mut errors: Vec<ConfigError> = errors
        .into_iter()
        .map(|(path, message)| ConfigError {
            location: locate::locate(source, path.segments()),
            path: path.to_string(),
            message,
        })
        .collect();
    errors.sort_by_key(|e| {
        e.location
            .map(|l| (l.line, l.column))
            .unwrap_or((usize::MAX, 0))
    });
    Err(ConfigErrors {
        file: file.to_string(),
        errors,
    })
}

fn syntax_error(source: &str, err: &serde_yaml_ng::Error) -> ConfigError {
    let location = err.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    let mut message = format!("invalid YAML: {}", strip_position(&err.to_string()));
    let line_text = location
        .and_then(|l| source.lines().nth(l.line.saturating_sub(1)))
        .unwrap_or("");
    if line_text.contains("${") && (line_text.contains('{') || line_text.contains('[')) {
        message.push_str(
            "; inside { } or [ ] write references in quotes, e.g. token: \"${env:NAME}\"",
        );
    }
    ConfigError {
        path: "(document)".into(),
        message,
        location,
    }
}

/// serde_yaml's messages end with "at line L column C"; we print the position our own way.
fn strip_position(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "ingress",
    "admin",
    "drain_delay",
    "shutdown_grace",
    "store",
    "services",
    "upstreams",
    "webhooks",
    "events",
    "delivery",
    "tracing",
    "limits",
];

/// The document, and the top-level sections that had errors: each of
/// those stands at its default, so that the checks between fields still
/// run and every error is reported in one go (the errors make the load
/// fail all the same). A check that would read a failed section is
/// skipped rather than misled by its default.
fn decode_document(d: &mut Decoder, root: &Node) -> Option<(Config, Vec<&'static str>)> {
    if root.value.is_null() {
        d.error(&root.path, "the file is empty");
        return None;
    }
    let f = d.fields(root, TOP_LEVEL_KEYS)?;
    let mut top = Sections {
        fields: &f,
        failed: Vec::new(),
    };
    let listen = top.take(d, "listen", default_listen(), decode_listen);
    let ingress = top.take(d, "ingress", Ingress::default(), decode_ingress);
    let admin = top.take(d, "admin", Admin::default(), decode_admin);
    let drain_delay = top.take(d, "drain_delay", Duration::from_secs(5), |d, n| {
        d.duration(n)
    });
    let shutdown_grace = top.take(d, "shutdown_grace", Duration::from_secs(25), |d, n| {
        d.duration(n)
    });
    let store = top.take(d, "store", default_store(), decode_store);
    let services = named_entries(d, f.get("services"), services::decode_service);
    let upstreams = named_entries(d, f.get("upstreams"), upstreams::decode_upstream);
    // Webhook targets are checked against every upstream that was named, even
    // one whose own entry had errors, so that one mistake is reported once.
    let upstream_names: Vec<String> = f
        .get("upstreams")
        .and_then(|n| {
            n.value.as_mapping().map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default();
    let webhooks = named_entries(d, f.get("webhooks"), |d, name, node| {
        webhooks::decode_webhook(d, name, node, &upstream_names)
    });
    let tracing = top.take(
        d,
        "tracing",
        telemetry::Tracing::default(),
        telemetry::decode_tracing,
    );
    let events = named_entries(d, f.get("events"), |d, name, node| {
        webhooks::decode_published(d, name, node, &upstream_names)
    });
    let delivery = f
        .get("delivery")
        .map(|n| webhooks::decode_delivery_section(d, &n));
    let limits = top.take(d, "limits", Limits::default(), decode_limits);
    let config = Config {
        listen,
        ingress,
        admin,
        drain_delay,
        shutdown_grace,
        store,
        services,
        upstreams,
        webhooks,
        events,
        delivery: delivery.flatten(),
        tracing,
        limits,
    };
    Some((config, top.failed))
}

/// The document's top-level keys, and those of them that had errors.
struct Sections<'f, 'a> {
    fields: &'f Fields<'a>,
    failed: Vec<&'static str>,
}

impl<'a> Sections<'_, 'a> {
    /// A top-level section, its default when absent; when it has errors,
    /// its default too, and its name in `failed` (the errors fail the
    /// load).
    fn take<T: Clone>(
        &mut self,
        d: &mut Decoder,
        key: &'static str,
        default: T,
        decode: impl FnOnce(&mut Decoder, &Node<'a>) -> Option<T>,
    ) -> T {
        d.or(self.fields, key, default.clone(), decode)
            .unwrap_or_else(|| {
                self.failed.push(key);
                default
            })
    }
}

fn default_store() -> Store {
    Store::with_kind(StoreKind::Local {
        path: PathBuf::from("./data"),
        max_size: None,
    })
}

fn decode_limits(d: &mut Decoder, node: &Node) -> Option<Limits> {
    let f = d.fields(node, &["memory"])?;
    let memory = match f.get("memory") {
        Some(n) => Some(d.size(&n).filter(|size| {
            let ok = (MIN_MEMORY..=1 << 40).contains(size);
            if !ok {
                d.error(&n.path, "must be between 16MiB and 1TiB");
            }
            ok
        })?),
        None => None,
    };
    Some(Limits { memory })
}

fn named_entries<T>(
    d: &mut Decoder,
    node: Option<Node>,
    mut decode: impl FnMut(&mut Decoder, &str, &Node) -> Option<T>,
) -> Vec<T> {
    let Some(node) = node else { return Vec::new() };
    d.entries(&node)
        .into_iter()
        .filter_map(|(name, entry)| decode(d, &name, &entry))
        .collect()
}

impl Default for Listen {
    fn default() -> Self {
        default_listen()
    }
}

fn default_listen() -> Listen {
    Listen {
        egress: SocketAddr::from(([127, 0, 0, 1], 15001)),
        ingress: SocketAddr::from(([0, 0, 0, 0], 8080)),
        admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
    }
}

fn decode_listen(d: &mut Decoder, node: &Node) -> Option<Listen> {
    let f = d.fields(node, &["egress", "ingress", "admin"])?;
    let defaults = default_listen();
    let mut addr = |key: &str, default: SocketAddr| match f.get(key) {
        Some(n) => d.socket_addr(&n),
        None => Some(default),
    };
    let egress = addr("egress", defaults.egress);
    let ingress = addr("ingress", defaults.ingress);
    let admin = addr("admin", defaults.admin);
    Some(Listen {
        egress: egress?,
        ingress: ingress?,
        admin: admin?,
    })
}

fn decode_ingress(d: &mut Decoder, node: &Node) -> Option<Ingress> {
    let f = d.fields(
        node,
        &["max_connections", "request_timeout", "max_buffered"],
    )?;
    let defaults = Ingress::default();
    let max_connections = d.or(&f, "max_connections", defaults.max_connections, |d, n| {
        d.integer(n, 1, 1_000_000).map(|v| v as u32)
    });
    let request_timeout =
        services::positive_duration(d, &f, "request_timeout", defaults.request_timeout);
    let max_buffered = match f.get("max_buffered") {
        Some(n) => d.size(&n).filter(|size| {
            let ok = (64 << 10..=4 << 30).contains(size);
            if !ok {
                d.error(&n.path, "must be between 64KiB and 4GiB");
            }
            ok
        }),
        None => Some(defaults.max_buffered),
    };
    Some(Ingress {
        max_connections: max_connections?,
        request_timeout: request_timeout?,
        max_buffered: max_buffered?,
    })
}

/// The token guards operator actions (replay, delete), so a short or empty
/// one is a mistake, not a way to turn it off: leave the key out instead
/// (allowed only while the admin listener is on loopback).
fn decode_admin(d: &mut Decoder, node: &Node) -> Option<Admin> {
    let f = d.fields(node, &["token", "hosts", "read_only"])?;
    let hosts = match f.get("hosts") {
        Some(n) => d.list(&n, |d, item| {
            let host = d.non_empty_string(item)?.to_ascii_lowercase();
            let valid = host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
            if !valid || host.contains(':') && !host.starts_with('[') {
                d.error(
                    &item.path,
                    format!("{host:?} is not a host name (give the name alone, without a port or a scheme)"),
                );
                return None;
            }
            Some(host)
        }),
        None => Some(Vec::new()),
    };
    let read_only = match f.get("read_only") {
        Some(n) => d.boolean(&n),
        None => Some(false),
    };
    let token = match f.get("token") {
        Some(n) => {
            let token = d.secret(&n)?;
            if token.expose().len() < webhooks::MIN_SECRET_BYTES {
                let length = token.expose().len();
                let advice = if length == 0 {
                    "; to run without a token, leave admin.token out (the admin listener must then be on loopback)"
                } else {
                    ""
                };
                d.error(
                    &n.path,
                    format!(
                        "token is {length} bytes long; at least {} are required{advice}",
                        webhooks::MIN_SECRET_BYTES
                    ),
                );
                return None;
            }
            Some(token)
        }
        None => None,
    };
    Some(Admin {
        token,
        hosts: hosts?,
        read_only: read_only?,
    })
}

/// `store.sentinel`; None after an error (reported).
fn decode_sentinel(d: &mut Decoder, node: &Node) -> Option<SentinelConfig> {
    let f = d.fields(node, &["master", "nodes", "username", "password"])?;
    let master = d
        .required(&f, "master")
        .and_then(|n| d.non_empty_string(&n));
    let nodes = d.required(&f, "nodes").and_then(|n| {
        d.list(&n, |d, item| {
            d.parsed(item, |text| {
                let (host, port) = text
                    .rsplit_once(':')
                    .ok_or_else(|| ValueError::SentinelNode(text.into()))?;
                match port.parse::<u16>() {
                    Ok(port) if !host.is_empty() && port > 0 => Ok((host.to_string(), port)),
                    _ => Err(ValueError::SentinelNode(text.into())),
                }
            })
        })
    });
    let nodes = nodes.filter(|nodes| {
        if nodes.is_empty() {
            d.error(&f.path.key("nodes"), "name at least one sentinel");
        }
        !nodes.is_empty()
    });
    let username = f.get("username").map(|n| d.secret(&n));
    let password = f.get("password").map(|n| d.secret(&n));
    // Some(None): given but unreadable (reported).
    let (username, password) = match (username, password) {
        (Some(None), _) | (_, Some(None)) => return None,
        (username, password) => (username.flatten(), password.flatten()),
    };
    Some(SentinelConfig {
        master: master?,
        nodes: nodes?,
        username,
        password,
    })
}

fn decode_store(d: &mut Decoder, node: &Node) -> Option<Store> {
    let f = d.fields(
        node,
        &[
            "kind",
            "path",
            "url",
            "sentinel",
            "prefix",
            "replicas",
            "replica_timeout",
            "unready_after",
            "shards",
            "ca_file",
            "cert_file",
            "key_file",
            "max_size",
            "max_memory_ratio",
            "history",
        ],
    )?;
    let history = match f.get("history") {
        Some(n) => decode_history(d, &n),
        None => Some(History::default()),
    };
    let defaults = default_store();
    let replicas = d.or(&f, "replicas", defaults.replicas, |d, n| {
        d.integer(n, 0, 16).map(|v| v as u32)
    });
    // WAIT with a timeout of 0 would block forever; a long one holds acks
    // past every provider's budget.
    let replica_timeout =
        services::positive_duration(d, &f, "replica_timeout", defaults.replica_timeout).filter(
            |timeout| {
                let ok = *timeout <= Duration::from_secs(2);
                if !ok {
                    d.error(
                        &f.path.key("replica_timeout"),
                        "must be at most 2s (webhook acks wait for it)",
                    );
                }
                ok
            },
        );
    let unready_after = services::positive_duration(d, &f, "unready_after", defaults.unready_after);
    let kind = d.choice_or(&f, "kind", &[("local", false), ("redis", true)], false)?;
    let prefix = match f.get("prefix") {
        Some(n) => d.parsed(&n, |p| {
            if !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
            {
                Ok(p.to_string())
            } else {
                Err(ValueError::Prefix(p.into()))
            }
        }),
        None => Some("sidecar".to_string()),
    };
    let kind = if kind {
        if let Some(n) = f.get("path") {
            d.error(&n.path, "only applies to kind: local");
        }
        let sentinel = f.get("sentinel").map(|n| decode_sentinel(d, &n));
        if let (Some(_), Some(url)) = (&sentinel, f.get("url")) {
            d.error(
                &url.path,
                "url and sentinel exclude each other: with sentinel the sentinels name the master",
            );
        }
        let urls_and_cluster = match &sentinel {
            Some(_) => Some((Vec::new(), false)),
            None => d.required(&f, "url").and_then(|n| {
                let url = |d: &mut Decoder, item: &Node| {
                    d.parsed(item, |u| {
                        // Parsed here, so the store never meets a URL it cannot use.
                        let usable = (u.starts_with("redis://") || u.starts_with("rediss://"))
                            && redis::Client::open(u).is_ok();
                        if usable {
                            Ok(Secret::new(u))
                        } else {
                            Err(ValueError::RedisUrl)
                        }
                    })
                };
                if n.value.is_sequence() {
                    d.list(&n, url).map(|urls| (urls, true))
                } else {
                    url(d, &n).map(|u| (vec![u], false))
                }
            }),
        };
        let shards = d.or(&f, "shards", 16, |d, n| {
            d.integer(n, 1, MAX_SHARDS).map(|v| v as u32)
        });
        let file = |d: &mut Decoder, key: &str| match f.get(key) {
            Some(n) => d.non_empty_string(&n).map(|p| Some(PathBuf::from(p))),
            None => Some(None),
        };
        let (ca_file, cert_file, key_file) = (
            file(d, "ca_file"),
            file(d, "cert_file"),
            file(d, "key_file"),
        );
        if let (Some(cert), Some(key)) = (&cert_file, &key_file) {
            if cert.is_some() != key.is_some() {
                let missing = if cert.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                };
                d.error(
                    &f.path.key(missing),
                    "mutual TLS needs both cert_file and key_file",
                );
            }
        }
        let (urls, cluster) = urls_and_cluster?;
        // Some(None): given but invalid (reported).
        let sentinel = match sentinel {
            Some(None) => return None,
            other => other.flatten(),
        };
        // Through Sentinel, the CA file is what turns TLS on.
        let plain = sentinel.is_none() && urls.iter().any(|u| !u.expose().starts_with("rediss://"));
        if plain && urls.iter().any(|u| u.expose().starts_with("rediss://")) {
            d.error(
                &f.path.key("url"),
                "mixes redis:// and rediss://: every node is reached the same way",
            );
        }
        for key in ["ca_file", "cert_file", "key_file"] {
            if plain && f.get(key).is_some() {
                d.error(
                    &f.path.key(key),
                    "only applies to rediss:// URLs (Redis over TLS)",
                );
            }
        }
        if let Some(n) = f.get("max_size") {
            d.error(
                &n.path,
                "only applies to kind: local (a Redis store is bounded by maxmemory and store.max_memory_ratio)",
            );
        }
        // Below a tenth the queue could hold next to nothing; at 1 the
        // drain would have no room of its own.
        let max_memory_ratio = d.or(&f, "max_memory_ratio", DEFAULT_MAX_MEMORY_RATIO, |d, n| {
            d.parsed(n, |text| match parse_ratio(text) {
                Ok(ratio) if (0.1..=0.99).contains(&ratio) => Ok(ratio),
                _ => Err(ValueError::MaxMemoryRatio(text.to_string())),
            })
        });
        StoreKind::Redis(RedisStoreConfig {
            urls,
            cluster,
            sentinel,
            shards: shards?,
            ca_file: ca_file?,
            cert_file: cert_file?,
            key_file: key_file?,
            max_memory_ratio: max_memory_ratio?,
        })
    } else {
        for key in [
            "url",
            "sentinel",
            "shards",
            "ca_file",
            "cert_file",
            "key_file",
            "max_memory_ratio",
        ] {
            if let Some(n) = f.get(key) {
                d.error(&n.path, "only applies to kind: redis");
            }
        }
        let path = match f.get("path") {
            Some(n) => d.non_empty_string(&n).map(PathBuf::from)?,
            None => PathBuf::from("./data"),
        };
        let max_size = match f.get("max_size") {
            Some(n) => d
                .size(&n)
                .filter(|size| {
                    let ok = *size >= MIN_STORE_MAX_SIZE;
                    if !ok {
                        d.error(
                            &n.path,
                            "must be at least 4MiB (an empty store and the reserve its drain keeps take about 2MiB)",
                        );
                    }
                    ok
                })
                .map(Some)?,
            None => None,
        };
        StoreKind::Local { path, max_size }
    };
    if replicas.is_some_and(|r| r > 0) && !matches!(kind, StoreKind::Redis(_)) {
        d.error(
            &f.path.key("replicas"),
            "only applies to kind: redis (the embedded store has no replicas)",
        );
        return None;
    }
    Some(Store {
        kind,
        prefix: prefix?,
        replicas: replicas?,
        replica_timeout: replica_timeout?,
        unready_after: unready_after?,
        history: history?,
    })
}

/// The least `store.history.max_size`: a few thousand events.
pub const MIN_HISTORY_SIZE: u64 = 1 << 20;

fn decode_history(d: &mut Decoder, node: &Node) -> Option<History> {
    let f = d.fields(node, &["enabled", "retention", "max_size"])?;
    let defaults = History::default();
    let enabled = d.or(&f, "enabled", defaults.enabled, |d, n| d.boolean(n));
    let retention = services::positive_duration(d, &f, "retention", defaults.retention);
    let max_size = d.or(&f, "max_size", defaults.max_size, |d, n| {
        d.size(n).filter(|size| {
            let ok = *size >= MIN_HISTORY_SIZE;
            if !ok {
                d.error(&n.path, "must be at least 1MiB");
            }
            ok
        })
    });
    Some(History {
        enabled: enabled?,
        retention: retention?,
        max_size: max_size?,
    })
}
