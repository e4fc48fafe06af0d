//! Builds the Pingora server from a validated `Config`: the egress proxy, the
//! ingress and admin listeners, readiness, and graceful shutdown.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::listeners::{ListenerConfig, TcpSocketOptions};
use pingora::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use std::path::PathBuf;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::admin::AdminApp;
use crate::config::{Config, RedisStoreConfig, StoreKind};
use crate::delivery::{Deliverer, DeliveryService};
use crate::egress::pause_sync::PauseListener;
use crate::egress::EgressProxy;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::net::client::SmallClient;
use crate::resilience::memory::{self, MemoryGuard};
use crate::runtime::bind::{self, BindError, Settled};
use crate::runtime::housekeeping::Housekeeping;
use crate::runtime::listen_owner::held_by_this_process;
use crate::runtime::publish::PublishedEvents;
use crate::runtime::reload::Reloader;
use crate::runtime::shutdown::{exit_when_idle, DrainingShutdown};
use crate::runtime::snapshot::{self, BuildError, Foundation, Snapshot, SnapshotHandle};
use crate::runtime::store_monitor::StoreMonitor;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::events::RedisEventStore;
use crate::store::redis::{RedisStore, RedisTarget, SentinelTarget};
use crate::store::{Store, StoreError};
use crate::time::MonotonicClock;
use crate::trace;
use crate::trace::export::ExportService;
use crate::upstreams::UpstreamsService;
use crate::webhooks::listener::IngressListener;
use crate::webhooks::publish::Publisher;
use crate::webhooks::IngressApp;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("store.url: {0}")]
    Redis(redis::RedisError),
    #[error("store.{key}: cannot read {path}: {error}")]
    RedisTls {
        key: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the {role} listener on {addr} did not come up within 10s")]
    NotListening {
        role: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot listen on {addr} ({role} listener): Address already in use (another process took the port during start-up)")]
    TakenByAnother {
        role: &'static str,
        addr: SocketAddr,
    },
}

/// Runs the sidecar until it is told to stop; the process exits from within.
/// `path` is where `config` came from: reloads read it again.
/// `ready_file`, if given, receives the listeners' bound addresses as JSON
/// once the sidecar is ready.
pub fn run(config: Config, path: PathBuf, ready_file: Option<PathBuf>) -> Result<(), StartError> {
    // What was loaded, as the reloader compares it: taken now, not when its
    // task first runs, or an edit made while the sidecar starts would be
    // taken for the running config and never applied.
    let loaded = crate::runtime::reload::fingerprint(&path);
    let started = Instant::now();
    let config = Arc::new(config);
    // Pingora binds inside its service threads and panics there on failure;
    // settling first turns a taken port into one clear error and exit code,
    // and gives port 0 a port of its own.
    let listeners = [
        bind::settle("egress", config.listen.egress)?,
        bind::settle("ingress", config.listen.ingress)?,
        bind::settle("admin", config.listen.admin)?,
    ];

    let metrics = Arc::new(Metrics::new());
    let lifecycle = Lifecycle::new();
    lifecycle.set_unready_after(config.store.unready_after);
    let foundation = Arc::new(foundation(&config, &metrics)?);
    let snapshot: SnapshotHandle = Arc::new(ArcSwap::from_pointee(Snapshot::build(
        Arc::clone(&config),
        None,
        &foundation,
    )?));
    let (upstreams_service, group_loops) = UpstreamsService::new();
    group_loops.start_new(&snapshot.load().upstreams, None);

    let memory = Arc::new(memory_guard(&config, &metrics));
    let store = event_store(&config, foundation.redis.clone(), &metrics, memory.budget())?;
    let accepted = Arc::new(Notify::new());
    let egress = EgressProxy::new(
        snapshot::concrete_part(&snapshot, |s| &s.egress),
        &metrics,
        Arc::clone(&lifecycle),
        Box::new(PublishedEvents {
            snapshot: Arc::clone(&snapshot),
            publisher: Publisher {
                store: store.clone(),
                accepted: Arc::clone(&accepted),
                memory: Arc::clone(&memory),
            },
        }),
    );
    let pause_listener = foundation
        .redis
        .clone()
        .map(|redis| PauseListener::new(redis, snapshot::part(&snapshot, |s| &s.egress)));
    let store_monitor = store.as_ref().map(|store| {
        lifecycle.expect_store();
        StoreMonitor::new(
            Arc::clone(store),
            Arc::clone(&lifecycle),
            Arc::clone(&metrics),
        )
    });
    let store_report = store_monitor.as_ref().map(StoreMonitor::report);
    let ingress = Arc::new(IngressApp::new(
        snapshot::part(&snapshot, |s| &s.webhooks),
        store.clone(),
        &metrics,
        Arc::clone(&accepted),
        config.ingress.max_buffered,
        memory,
    ));
    // Gap repair, for the webhooks with `recover` (a reload may add some).
    let gap_repair = store.as_ref().map(|store| {
        Arc::new(crate::webhooks::recover::GapRepair::new(
            snapshot::part(&snapshot, |s| &s.webhooks),
            snapshot::part(&snapshot, |s| &s.config),
            Arc::clone(store),
            loopback_for(listeners[0].addr),
            Arc::clone(&metrics),
            Arc::clone(&accepted),
            Arc::clone(&lifecycle),
        ))
    });
    let delivery = store.as_ref().map(|store| {
        let deliverer = Deliverer::new(
            Arc::clone(store),
            Box::new(SmallClient::default()),
            Arc::clone(&metrics),
        );
        let workers = config.delivery.clone().unwrap_or_default().workers;
        DeliveryService::new(
            deliverer,
            snapshot::part(&snapshot, |s| &s.delivery),
            workers,
            Arc::clone(&lifecycle),
            accepted,
        )
    });

    lifecycle.expect_upkeep();
    let reloader = Reloader {
        path,
        loaded: std::sync::Mutex::new(loaded),
        lifecycle: Arc::clone(&lifecycle),
        snapshot: Arc::clone(&snapshot),
        foundation,
        loops: group_loops,
        has_store: store.is_some(),
        reloads: metrics.config_reloads_total.clone(),
    };

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    let server_conf = Arc::clone(&server.configuration);

    let mut egress_service =
        pingora::proxy::http_proxy_service_with_name(&server_conf, egress, "egress");
    egress_service.add_tcp_with_settings(
        &listeners[0].addr.to_string(),
        socket_options(&listeners[0]),
    );
    egress_service.threads = Some(egress_threads());

    let mut ingress_service = Service::new(
        "ingress".to_string(),
        IngressListener::new(ingress, &config.ingress, Arc::clone(&lifecycle)),
    );
    // No L4 read buffer: Pingora's default is 64 KiB per connection, held
    // by every idle or slow client; the ingress reads its header sections
    // and bodies into buffers of its own.
    ingress_service.add_listener(
        ListenerConfig::tcp(listeners[1].addr.to_string())
            .tcp_socket_options(socket_options(&listeners[1]))
            .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
    );
    let recent = crate::admin::recent::Recent::new(Arc::clone(&metrics));
    let mut admin_service = Service::new(
        "admin".to_string(),
        AdminApp::new(
            snapshot,
            Arc::clone(&metrics),
            Arc::clone(&lifecycle),
            store,
            store_report,
            Arc::clone(&recent),
        )
        .listening([listeners[0].addr, listeners[1].addr, listeners[2].addr])
        .gap_repair(gap_repair.clone()),
    );
    admin_service.add_tcp_with_settings(
        &listeners[2].addr.to_string(),
        socket_options(&listeners[2]),
    );
    ingress_service.threads = Some(1);
    admin_service.threads = Some(1);

    let mut housekeeping = Housekeeping::default();
    if let Some(listener) = pause_listener {
        housekeeping.add("provider pauses", listener);
    }
    if let Some(monitor) = store_monitor {
        housekeeping.add("store monitor", monitor);
    }
    housekeeping.add("upstreams", upstreams_service);
    housekeeping.add("recent events", crate::admin::recent::Sampler(recent));
    if let Some(gap_repair) = gap_repair {
        housekeeping.add("gap repair", crate::webhooks::recover::Schedule(gap_repair));
    }
    // Installed even without tracing.otlp, so that a reload can start it.
    match trace::export::install(
        config.tracing.otlp.as_ref(),
        metrics.trace_spans_exported_total.clone(),
        metrics.trace_spans_dropped_total.clone(),
    ) {
        Some(export) => housekeeping.add("span export", ExportService::new(export)),
        None => {
            tracing::warn!("span export is already installed in this process; not exporting again")
        }
    }
    housekeeping.add("config reload", reloader);
    server.add_service(background_service("housekeeping", housekeeping));
    if let Some(delivery) = delivery {
        server.add_service(background_service("delivery", delivery));
    }
    server.add_service(egress_service);
    server.add_service(ingress_service);
    server.add_service(admin_service);

    exit_when_idle(
        Arc::clone(&lifecycle),
        server.watch_execution_phase(),
        config.shutdown_grace,
    );
    watch_listeners(Arc::clone(&lifecycle), listeners, started, ready_file);

    let shutdown = DrainingShutdown {
        lifecycle,
        drain_delay: config.drain_delay,
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(shutdown),
    });
    Ok(())
}

/// Builds every runtime part of `config` the way `run` does (egress
/// services with their credentials and limits, webhook verifiers, upstream
/// groups, delivery settings) without listening, storing or calling
/// anything: `check` runs it, so a config it passes cannot fail at start.
pub fn build_check(config: &Config) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let foundation = foundation(config, &metrics)?;
    Snapshot::build(Arc::new(config.clone()), None, &foundation)?;
    Ok(())
}

/// What every snapshot is built on: the metrics, the clock and, with a
/// Redis store, its connection (made here, not by the parts that use it).
fn foundation(config: &Config, metrics: &Arc<Metrics>) -> Result<Foundation, StartError> {
    let clock = MonotonicClock::shared();
    let redis = match &config.store.kind {
        StoreKind::Redis(redis) => Some(Arc::new(
            RedisStore::new(
                redis_target(redis)?,
                &config.store.prefix,
                Arc::clone(&clock),
                metrics.store_errors_total.clone(),
            )
            .map_err(StartError::Redis)?,
        )),
        StoreKind::Local { .. } => None,
    };
    Ok(Foundation {
        metrics: Arc::clone(metrics),
        clock,
        redis,
    })
}

/// The Redis a `kind: redis` store names, with its TLS files read.
fn redis_target(config: &RedisStoreConfig) -> Result<RedisTarget, StartError> {
    let read = |key: &'static str, path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|error| StartError::RedisTls {
                    key,
                    path: path.clone(),
                    error,
                })
            })
            .transpose()
    };
    let client_cert = match (
        read("cert_file", &config.cert_file)?,
        read("key_file", &config.key_file)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    Ok(RedisTarget {
        urls: config.urls.iter().map(|u| u.expose().to_string()).collect(),
        sentinel: config.sentinel.as_ref().map(|s| SentinelTarget {
            master: s.master.clone(),
            nodes: s.nodes.clone(),
            username: s.username.as_ref().map(|u| u.expose().to_string()),
            password: s.password.as_ref().map(|p| p.expose().to_string()),
        }),
        cluster: config.cluster,
        ca: read("ca_file", &config.ca_file)?,
        client_cert,
    })
}

/// The store webhooks are accepted into; none without webhooks, so an
/// egress-only sidecar creates no files.
fn event_store(
    config: &Config,
    redis: Option<Arc<RedisStore>>,
    metrics: &Metrics,
    memory_budget: u64,
) -> Result<Option<Arc<dyn Store>>, StartError> {
    if config.event_sources().next().is_none() {
        return Ok(None);
    }
    Ok(Some(match (&config.store.kind, redis) {
        (StoreKind::Redis(settings), Some(redis)) => Arc::new(
            RedisEventStore::new(redis, settings.shards)
                .with_replicas(
                    config.store.replicas,
                    config.store.replica_timeout,
                    metrics.store_replica_wait_seconds.clone(),
                )
                .with_max_memory_ratio(settings.max_memory_ratio)
                .with_history(config.store.history.limits()),
        ),
        (StoreKind::Local { path, max_size }, _) => {
            let horizon = config
                .event_sources()
                .map(|w| w.dedup_window)
                .max()
                .unwrap_or_default();
            Arc::new(EmbeddedStore::open_with_cache(
                path,
                horizon,
                *max_size,
                store_cache(memory_budget),
                config.store.history.limits(),
            )?)
        }
        (StoreKind::Redis(_), None) => unreachable!("the foundation holds the Redis store"),
    }))
}

/// The memory budget: `limits.memory`, or 80% of the container's limit,
/// or 100 MiB; said at start and exported as a gauge.
fn memory_guard(config: &Config, metrics: &Metrics) -> MemoryGuard {
    let (budget, source) = memory::budget(config.limits.memory, memory::container_limit());
    tracing::info!(budget_mib = budget >> 20, source, "memory budget");
    if budget < crate::config::SAFE_MEMORY {
        tracing::warn!(
            budget_mib = budget >> 20,
            "the memory budget is under 64 MiB: the app's connections to the egress hold 64 KiB each whatever it says, so bursts may cross it"
        );
    }
    metrics.memory_limit_bytes.set(budget as i64);
    MemoryGuard::new(budget)
}

/// redb's page cache: an eighth of the memory budget, 4 to 64 MiB. The
/// rest is the process itself (about 20 MiB), bodies being read (the
/// ingress's `max_buffered`) and written, connections' buffers, and the
/// allocator's slack after a burst.
fn store_cache(memory_budget: u64) -> usize {
    (memory_budget / 8).clamp(4 << 20, 64 << 20) as usize
}

fn server_conf(config: &Config) -> ServerConf {
    let run_dir = std::env::temp_dir();
    ServerConf {
        threads: 1,
        // The grace period is an upper bound only: exit_when_idle ends the
        // process as soon as nothing is in flight.
        grace_period_seconds: Some(config.shutdown_grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: run_dir.join("wedsync-sidecar.pid").display().to_string(),
        upgrade_sock: run_dir
            .join(format!("wedsync-sidecar-{}.sock", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    }
}

/// One proxy thread per core, at most four: a sidecar shares its pod.
fn egress_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

fn socket_options(settled: &Settled) -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.so_reuseport = settled.reuse_port().then_some(true);
    options
}

/// Marks the sidecar ready once every listener accepts connections on a
/// socket of this process (then lets go of the port reservations); exits
/// with a clear error if one never does. Writes `ready_file` once the
/// sidecar is first ready.
fn watch_listeners(
    lifecycle: Arc<Lifecycle>,
    listeners: [Settled; 3],
    started: Instant,
    ready_file: Option<PathBuf>,
) {
    std::thread::spawn(move || {
        for settled in &listeners {
            let (role, addr) = (settled.role, settled.addr);
            let probe = loopback_for(addr);
            loop {
                let answers =
                    TcpStream::connect_timeout(&probe, Duration::from_millis(100)).is_ok();
                // Another process may answer on the port while Pingora's own
                // bind failed in its spawned task: only our socket counts.
                if answers && held_by_this_process(addr) != Some(false) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    let error = if answers {
                        StartError::TakenByAnother { role, addr }
                    } else {
                        StartError::NotListening { role, addr }
                    };
                    tracing::error!("{error}");
                    std::process::exit(2);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let [egress, ingress, admin] = listeners.map(|settled| settled.addr);
        lifecycle.mark_listeners_bound();
        tracing::info!(
            startup_ms = started.elapsed().as_secs_f64() * 1000.0,
            %egress,
            %ingress,
            %admin,
            "listening"
        );
        let addresses = serde_json::json!({
            "egress": egress.to_string(),
            "ingress": ingress.to_string(),
            "admin": admin.to_string(),
        });
        let Some(path) = ready_file else { return };
        while lifecycle.readiness().is_err() {
            if lifecycle.is_draining() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(error) = write_ready_file(&path, &addresses) {
            tracing::error!(path = %path.display(), "cannot write the ready file: {error}");
        }
    });
}

/// Written beside and renamed into place, so a reader never sees half a file.
fn write_ready_file(path: &std::path::Path, addresses: &serde_json::Value) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, format!("{addresses}\n"))?;
    std::fs::rename(&partial, path)
}

/// A wildcard listen address is probed on loopback.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}
