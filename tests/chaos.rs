//! The chaos suite: faults staged against the real binary while events are
//! sent and delivered, and a count at the end of every scenario: events
//! acknowledged (a 2xx to the sender), delivered (a 2xx from the target),
//! lost (acknowledged, never delivered: must be 0) and delivered twice
//! (allowed: delivery is at least once). The sender behaves like a
//! provider: whatever was not acknowledged (a 503, a reset, a refused
//! connection) is sent again until it is.
//!
//! Scenarios that take under a minute run in `scripts/test`; the long ones
//! are `#[ignore]`d and run by `scripts/chaos` (release build), which also
//! prints the table. Loopback and the suite's own network namespaces only.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// What the target answered 2xx to, per event id.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<HashMap<String, u32>>>);

impl Deliveries {
    fn record(&self, id: &str) {
        *self.0.lock().unwrap().entry(id.to_string()).or_default() += 1;
    }

    fn snapshot(&self) -> HashMap<String, u32> {
        self.0.lock().unwrap().clone()
    }
}

/// A target that answers 204, or 503 while `down`.
async fn target(down: Arc<AtomicBool>) -> (MockServer, Deliveries) {
    target_on(SocketAddr::from(([127, 0, 0, 1], 0)), down).await
}

async fn target_on(addr: SocketAddr, down: Arc<AtomicBool>) -> (MockServer, Deliveries) {
    let deliveries = Deliveries::default();
    let recorded = deliveries.clone();
    let server = MockServer::start_on(addr, move |seen| {
        if down.load(Ordering::SeqCst) {
            return MockAnswer::status(503, "flapping");
        }
        if let Some(id) = seen.headers.get("x-event-id") {
            recorded.record(id);
        }
        MockAnswer::status(204, "")
    })
    .await;
    (server, deliveries)
}

/// A sidecar delivering to `target`; `store: None` is the embedded store in
/// the sidecar's own directory.
fn config(store: Option<&str>, target: SocketAddr) -> String {
    let mut yaml = Yaml::new()
        .with("drain_delay: 0s")
        .with("shutdown_grace: 5s")
        .with("delivery: { workers: 32 }")
        .upstream(
            "notify",
            format!("{{ backends: [{target}], max_in_flight: 32, circuit_breaker: {{ failure_threshold: 1000 }} }}"),
        )
        .stripe_webhook(&[
            "routes: [{ events: [\"*\"], targets: [notify] }]",
            "delivery: { timeout: 2s, max_attempts: 1000, backoff: { initial: 100ms, max: 500ms } }",
        ]);
    if let Some(store) = store {
        yaml = yaml.with(format!("store: {store}"));
    }
    yaml.build()
}

/// The rate events are sent at, so that every fault lands mid-stream.
const RATE: f64 = 400.0;

/// What the sender saw: the acknowledged ids, and how many sends were
/// not acknowledged (refused, reset, timed out) and made again.
struct Sent {
    acknowledged: HashSet<String>,
    refused: usize,
}

/// Sends `count` events to the ingress at `ingress()` with `concurrency`
/// senders, [`RATE`] per second in all, until each is acknowledged or
/// `give_up` passes.
async fn send_until_acknowledged(
    ingress: Arc<dyn Fn() -> SocketAddr + Send + Sync>,
    prefix: &str,
    count: usize,
    concurrency: usize,
    give_up: Duration,
) -> Sent {
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pace = Duration::from_secs_f64(concurrency as f64 / RATE);
    let pending: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        (0..count).rev().map(|n| format!("{prefix}_{n}")).collect(),
    ));
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let deadline = Instant::now() + give_up;
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (pending, acknowledged, ingress, refused) = (
            Arc::clone(&pending),
            Arc::clone(&acknowledged),
            Arc::clone(&ingress),
            Arc::clone(&refused),
        );
        senders.spawn(async move {
            while Instant::now() < deadline {
                let next = Instant::now() + pace;
                let Some(id) = pending.lock().unwrap().pop() else {
                    return;
                };
                let body = format!(r#"{{"id":"{id}","type":"payment_intent.succeeded"}}"#);
                let signature = stripe_signature_with(SECRET, body.as_bytes());
                let status = tokio::time::timeout(
                    Duration::from_secs(5),
                    try_send(
                        &format!("http://{}/webhooks/stripe", ingress()),
                        &[
                            ("stripe-signature", signature.as_str()),
                            ("content-type", "application/json"),
                        ],
                        body.into_bytes(),
                    ),
                )
                .await
                .ok()
                .flatten();
                match status {
                    Some(200 | 202) => {
                        acknowledged.lock().unwrap().insert(id);
                    }
                    // Like a provider: try again a little later.
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        pending.lock().unwrap().insert(0, id);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::time::sleep_until(next.into()).await;
            }
        });
    }
    while senders.join_next().await.is_some() {}
    let acknowledged = acknowledged.lock().unwrap().clone();
    Sent {
        acknowledged,
        refused: refused.load(Ordering::Relaxed),
    }
}

/// Waits until every acknowledged event was delivered (or `limit`), then
/// counts; prints the scenario's row (with the seconds from the call until
/// the last acknowledged event was delivered: the fault is over by then)
/// and asserts that nothing was lost.
async fn count(
    scenario: &str,
    started: Instant,
    sent: &Sent,
    deliveries: &Deliveries,
    limit: Duration,
) {
    let acknowledged = &sent.acknowledged;
    let waiting = Instant::now();
    let deadline = waiting + limit;
    loop {
        let delivered = deliveries.snapshot();
        if acknowledged.iter().all(|id| delivered.contains_key(id)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_in = waiting.elapsed();
    let delivered = deliveries.snapshot();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .collect();
    let twice = delivered.values().filter(|n| **n > 1).count();
    let delivered_acknowledged = acknowledged
        .iter()
        .filter(|id| delivered.contains_key(*id))
        .count();
    let most = delivered.values().copied().max().unwrap_or(0);
    println!(
        "CHAOS | {scenario} | {} | {} | {} | {twice} | {most} | {} | {:.1} s | {:.0} s",
        acknowledged.len(),
        delivered_acknowledged,
        lost.len(),
        sent.refused,
        drained_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{scenario}: lost {} acknowledged events, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        !acknowledged.is_empty(),
        "{scenario}: nothing was acknowledged"
    );
}

/// SIGKILL the sidecar `kills` times at random moments while `events` are
/// sent and delivered; restarted each time on the same store.
async fn kill_repeatedly(scenario: &str, store: Option<&str>, events: usize, kills: u32) {
    let started = Instant::now();
    let (target, deliveries) = target(Arc::default()).await;
    let sidecar = Arc::new(tokio::sync::Mutex::new(Sidecar::start(&config(
        store,
        target.addr,
    ))));
    let ingress = sidecar.lock().await.ingress;
    let killer = {
        let sidecar = Arc::clone(&sidecar);
        tokio::spawn(async move {
            for _ in 0..kills {
                let pause = 300 + (uuid::Uuid::new_v4().as_u128() % 1200) as u64;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let mut sidecar = sidecar.lock().await;
                sidecar.signal("KILL");
                tokio::task::block_in_place(|| sidecar.respawn());
            }
        })
    };
    let sent = send_until_acknowledged(
        Arc::new(move || ingress),
        scenario,
        events,
        16,
        Duration::from_secs(120),
    )
    .await;
    killer.await.unwrap();
    assert_eq!(
        sent.acknowledged.len(),
        events,
        "every event is acknowledged in the end"
    );
    count(
        scenario,
        started,
        &sent,
        &deliveries,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: scripts/chaos"]
async fn sigkill_five_times_embedded_store_3000_events() {
    kill_repeatedly("SIGKILL x5, embedded store", None, 3000, 5).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: scripts/chaos"]
async fn sigkill_five_times_redis_store_3000_events() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    kill_repeatedly(
        "SIGKILL x5, Redis store",
        Some(&format!(
            "{{ kind: redis, url: {}, prefix: chaos }}",
            redis.url()
        )),
        3000,
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_twice_embedded_store_quick() {
    kill_repeatedly("SIGKILL x2, embedded store (quick)", None, 800, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_twice_redis_store_quick() {
    let redis = RedisServer::start();
    kill_repeatedly(
        "SIGKILL x2, Redis store (quick)",
        Some(&format!(
            "{{ kind: redis, url: {}, prefix: chaos }}",
            redis.url()
        )),
        800,
        2,
    )
    .await;
}

/// The primary SIGKILLed mid-stream, its replica promoted and the sidecar
/// pointed at it: with `replicas: 1` every acknowledged event was on the
/// replica before its 2xx.
#[tokio::test(flavor = "multi_thread")]
async fn redis_primary_killed_and_replica_promoted_with_replicas_1() {
    let started = Instant::now();
    let mut primary = RedisServer::start();
    let replica = RedisServer::replica_of(&primary);
    let (target, deliveries) = target(Arc::default()).await;
    let store = |url: &str| {
        format!("{{ kind: redis, url: {url}, prefix: chaos, replicas: 1, replica_timeout: 500ms }}")
    };
    let sidecar = Arc::new(tokio::sync::Mutex::new(Sidecar::start(&config(
        Some(&store(&primary.url())),
        target.addr,
    ))));
    let ingress = sidecar.lock().await.ingress;
    let (primary_url, replica_url) = (primary.url(), replica.url());
    let failover = {
        let sidecar = Arc::clone(&sidecar);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            primary.kill();
            replica.cli(&["REPLICAOF", "NO", "ONE"]);
            // The new primary needs a replica of its own for replicas: 1
            // (until then, webhooks are refused: nothing unreplicated is
            // acknowledged).
            let standby = tokio::task::block_in_place(|| RedisServer::replica_of(&replica));
            let mut sidecar = sidecar.lock().await;
            sidecar.edit_config(|text| text.replace(&primary_url, &replica_url));
            tokio::task::block_in_place(|| sidecar.respawn());
            (primary, replica, standby)
        })
    };
    let sent = send_until_acknowledged(
        Arc::new(move || ingress),
        "failover",
        1500,
        16,
        Duration::from_secs(90),
    )
    .await;
    let _servers = failover.await.unwrap();
    count(
        "Redis primary SIGKILLed, replica promoted, replicas: 1",
        started,
        &sent,
        &deliveries,
        Duration::from_secs(60),
    )
    .await;
}

/// Redis restarted mid-stream (SIGKILL, then started again on its AOF) with
/// `appendfsync always`: every acknowledged write was on disk.
#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_mid_stream_with_appendfsync_always() {
    let started = Instant::now();
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let (target, deliveries) = target(Arc::default()).await;
    let sidecar = Sidecar::start(&config(
        Some(&format!(
            "{{ kind: redis, url: {}, prefix: chaos }}",
            redis.url()
        )),
        target.addr,
    ));
    let ingress = sidecar.ingress;
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| redis.restart());
        redis
    });
    let sent = send_until_acknowledged(
        Arc::new(move || ingress),
        "aof",
        1500,
        16,
        Duration::from_secs(90),
    )
    .await;
    let _redis = restart.await.unwrap();
    count(
        "Redis SIGKILLed and restarted, appendfsync always",
        started,
        &sent,
        &deliveries,
        Duration::from_secs(60),
    )
    .await;
}

/// A target that flaps (503, then 204) every 500 ms for 20 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_flapping_every_500ms_for_20s() {
    let started = Instant::now();
    let down = Arc::new(AtomicBool::new(false));
    let (target, deliveries) = target(Arc::clone(&down)).await;
    let sidecar = Sidecar::start(&config(None, target.addr));
    let ingress = sidecar.ingress;
    let flapper = {
        let down = Arc::clone(&down);
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until {
                down.fetch_xor(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            down.store(false, Ordering::SeqCst);
        })
    };
    let sent = send_until_acknowledged(
        Arc::new(move || ingress),
        "flap",
        2000,
        8,
        Duration::from_secs(60),
    )
    .await;
    flapper.await.unwrap();
    count(
        "target flapping every 500 ms for 20 s",
        started,
        &sent,
        &deliveries,
        Duration::from_secs(60),
    )
    .await;
}

/// The embedded store's disk fills mid-stream (a small tmpfs), and space
/// comes back 3 s later.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_stores_disk_fills_mid_stream() {
    let started = Instant::now();
    let disk = Tmpfs::mount("16m");
    let (target, deliveries) = target(Arc::default()).await;
    let sidecar = Sidecar::start(&config(
        Some(&format!("{{ path: {} }}", disk.dir.join("data").display())),
        target.addr,
    ));
    let ingress = sidecar.ingress;
    let filler = {
        let dir = disk.dir.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let filler = tokio::task::block_in_place(|| Tmpfs::fill_dir(&dir));
            tokio::time::sleep(Duration::from_secs(3)).await;
            std::fs::remove_file(filler).unwrap();
        })
    };
    let sent = send_until_acknowledged(
        Arc::new(move || ingress),
        "disk",
        2000,
        16,
        Duration::from_secs(60),
    )
    .await;
    filler.await.unwrap();
    count(
        "embedded store's disk full for 3 s",
        started,
        &sent,
        &deliveries,
        Duration::from_secs(60),
    )
    .await;
    drop(sidecar);
}

/// Sends new events (1 KiB each, four senders) until the sidecar refuses
/// them for want of room (`503 store_full`, with `Retry-After`) twenty
/// times. What it acknowledged is `Sent::acknowledged`; any other answer
/// than 202 or store_full fails the scenario.
async fn send_until_full(sidecar: &Sidecar, prefix: &str, give_up: Duration) -> Sent {
    let ingress = sidecar.ingress;
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let full = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + give_up;
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (acknowledged, full, next, prefix) = (
            Arc::clone(&acknowledged),
            Arc::clone(&full),
            Arc::clone(&next),
            prefix.to_string(),
        );
        senders.spawn(async move {
            let padding = "p".repeat(1024);
            while full.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
                let id = format!("{prefix}_{}", next.fetch_add(1, Ordering::Relaxed));
                let body = format!(
                    r#"{{"id":"{id}","type":"payment_intent.succeeded","pad":"{padding}"}}"#
                );
                let signature = stripe_signature_with(SECRET, body.as_bytes());
                let answer = send(
                    "POST",
                    &format!("http://{ingress}/webhooks/stripe"),
                    &[
                        ("stripe-signature", signature.as_str()),
                        ("content-type", "application/json"),
                    ],
                    bytes::Bytes::from(body),
                )
                .await;
                match answer.status {
                    202 => {
                        acknowledged.lock().unwrap().insert(id);
                    }
                    503 if answer.headers.get("x-sidecar-error").map(String::as_str)
                        == Some("store_full") =>
                    {
                        assert_eq!(answer.headers["retry-after"], "30");
                        full.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("{id}: {other} {}", answer.text()),
                }
            }
        });
    }
    while let Some(sender) = senders.join_next().await {
        sender.unwrap();
    }
    assert!(
        full.load(Ordering::Relaxed) >= 20,
        "the store never refused events for want of room"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    Sent {
        refused: full.load(Ordering::Relaxed),
        acknowledged,
    }
}

/// A gauge's value in the `/metrics` text.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The bad Saturday: the target answers 503 while events keep coming, the
/// backlog itself fills the store (nothing else writes to it) until the
/// sidecar refuses new events for want of room; then the target comes
/// back. Every acknowledged event is delivered within 60 s without a
/// restart and none more than twice, the store's used bytes fall, new
/// events are accepted again, and the sidecar never exits.
async fn the_backlog_fills_the_store(scenario: &str, store: &str) {
    let started = Instant::now();
    let down = Arc::new(AtomicBool::new(true));
    let (target, deliveries) = target(Arc::clone(&down)).await;
    let mut sidecar = Sidecar::start(&config(Some(store), target.addr));
    let sent = send_until_full(&sidecar, "full", Duration::from_secs(120)).await;
    let store_state = get(&sidecar.admin_url("/admin/store")).await.json();
    assert_eq!(store_state["paused_for_space"], true, "{store_state}");
    // Live from the store (the gauges follow within a second).
    let (used_full, capacity) = (
        store_state["used_bytes"].as_f64().unwrap(),
        store_state["capacity_bytes"].as_f64().unwrap(),
    );
    assert!(used_full >= 0.9 * capacity, "{used_full} of {capacity}");
    // Full for a while: the waiting jobs keep being retried meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    down.store(false, Ordering::SeqCst);
    count(
        scenario,
        started,
        &sent,
        &deliveries,
        Duration::from_secs(60),
    )
    .await;
    let most = deliveries.snapshot().values().copied().max().unwrap_or(0);
    assert!(most <= 2, "an event reached the target {most} times");
    let drained = sidecar
        .metrics_until(
            "the store's used bytes fall",
            Duration::from_secs(30),
            |text| gauge(text, "sidecar_store_used_bytes") < used_full,
        )
        .await;
    let resumed = {
        let mut status = 0;
        for n in 0..300 {
            status = post_stripe(&sidecar, &format!("after_{n}")).await.status;
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        status
    };
    assert_eq!(resumed, 202, "new events are accepted again");
    assert!(
        sidecar.child.try_wait().unwrap().is_none(),
        "the sidecar exited: {}",
        sidecar.logs()
    );
    println!(
        "{scenario}: used {used_full} of {capacity} bytes when full, {} once drained",
        gauge(&drained, "sidecar_store_used_bytes")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backlog_fills_an_8mib_volume_then_drains_by_itself() {
    let disk = Tmpfs::mount("8m");
    the_backlog_fills_the_store(
        "backlog fills the embedded store (8 MiB tmpfs), target back",
        &format!("{{ path: {} }}", disk.dir.join("data").display()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backlog_fills_a_redis_of_4mb_then_drains_by_itself() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    the_backlog_fills_the_store(
        "backlog fills Redis (maxmemory 4mb), target back",
        &format!("{{ kind: redis, url: {}, prefix: chaos }}", redis.url()),
    )
    .await;
}

/// Redis cut off by a network partition: Redis in a network namespace of
/// its own behind a veth pair, whose link goes down for 5 s mid-stream
/// (packets dropped, no reset: the sidecar meets timeouts, not refusals).
#[tokio::test(flavor = "multi_thread")]
async fn redis_cut_off_by_a_partition_for_5s() {
    let started = Instant::now();
    let net = Namespace::create();
    let port = free_port();
    let mut redis = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.name,
            "redis-server",
            "--port",
            &port.to_string(),
        ])
        // Protected mode only lets loopback in; this namespace is the suite's own.
        .args(["--bind", &net.inside.to_string(), "--protected-mode", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server in the namespace");
    let url = format!("redis://{}:{port}", net.inside);
    wait_for_redis(&net.inside.to_string(), port);
    let (target, deliveries) = target(Arc::default()).await;
    let sidecar = Sidecar::start(&config(
        Some(&format!(
            "{{ kind: redis, url: {url}, prefix: chaos, unready_after: 30s }}"
        )),
        target.addr,
    ));
    let ingress = sidecar.ingress;
    let cut = {
        let link = net.host_link.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            ip(&["link", "set", &link, "down"]);
            tokio::time::sleep(Duration::from_secs(5)).await;
            ip(&["link", "set", &link, "up"]);
        })
    };
    let sent = send_until_acknowledged(
        Arc::new(move || ingress),
        "partition",
        1500,
        16,
        Duration::from_secs(90),
    )
    .await;
    cut.await.unwrap();
    count(
        "Redis cut off by a partition for 5 s",
        started,
        &sent,
        &deliveries,
        Duration::from_secs(60),
    )
    .await;
    let _ = redis.kill();
    let _ = redis.wait();
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(status.success(), "ip {args:?}");
}

fn wait_for_redis(host: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((host, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server in the namespace never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network namespace joined to this one by a veth pair on a /30 of its
/// own; deleted when dropped.
struct Namespace {
    name: String,
    host_link: String,
    inside: std::net::Ipv4Addr,
}

impl Namespace {
    fn create() -> Self {
        let n = free_port();
        let name = format!("sidecar-chaos-{n}");
        let (host_link, ns_link) = (format!("sc{n}h"), format!("sc{n}n"));
        // 10.200.x.y/30 per namespace, from the port counter.
        let (a, b) = (((n / 64) % 250) as u8, ((n % 64) * 4) as u8);
        let host = std::net::Ipv4Addr::new(10, 200, a, b + 1);
        let inside = std::net::Ipv4Addr::new(10, 200, a, b + 2);
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ]);
        ip(&["link", "set", &ns_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &ns_link,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_link, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        Self {
            name,
            host_link,
            inside,
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
