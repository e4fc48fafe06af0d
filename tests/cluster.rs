//! Black-box tests of the sidecar on a private Redis Cluster (three masters,
//! three replicas) and on Redis over TLS: two sidecars share one queue and
//! one rate limit, a master killed under load loses nothing that was
//! answered 202, `rediss://` works with a CA (and a client certificate)
//! made here, and through Redis Sentinel the store follows a failover.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

fn seeds(cluster: &RedisCluster) -> String {
    format!("[{}]", cluster.urls().join(", "))
}

/// A Stripe webhook delivered to `target`, on the store `store`.
fn webhook_config(store: &str, target: &MockServer) -> String {
    Yaml::new()
        .with(format!("store: {store}"))
        .upstream("notify", format!("{{ backends: [{}] }}", target.addr))
        .stripe_webhook(&[
            "routes: [{ events: [\"*\"], targets: [notify] }]",
            "delivery: { timeout: 2s, backoff: { initial: 100ms, max: 500ms } }",
        ])
        .build()
}

/// The status a Stripe event got (0 for a refused or broken connection).
async fn post(sidecar: &Sidecar, id: &str) -> u16 {
    try_post_stripe(sidecar, id).await.map_or(0, |a| a.status)
}

/// How many times the target received each event id.
fn deliveries(target: &MockServer) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for request in target.requests() {
        let id = request
            .headers
            .get("x-event-id")
            .cloned()
            .unwrap_or_default();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_cluster_deliver_every_event_accepted_on_either() {
    let cluster = RedisCluster::start();
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let body = webhook_config(
        &format!("{{ kind: redis, url: {}, prefix: test }}", seeds(&cluster)),
        &target,
    );
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    let mut accepted = BTreeSet::new();
    for i in 0..60 {
        let (sidecar, id) = if i % 2 == 0 {
            (&a, format!("evt_a{i}"))
        } else {
            (&b, format!("evt_b{i}"))
        };
        assert_eq!(post(sidecar, &id).await, 202, "{id}");
        accepted.insert(id);
    }
    // A copy posted to the other sidecar is the same event.
    assert_eq!(post(&b, "evt_a0").await, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = deliveries(&target);
        let delivered: BTreeSet<String> = seen.keys().cloned().collect();
        if accepted.is_subset(&delivered) {
            assert_eq!(delivered, accepted, "nothing else was delivered");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "undelivered: {:?}",
            accepted.difference(&delivered).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At least once; with healthy targets, exactly once.
    let twice: Vec<_> = deliveries(&target)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");

    // The queue's parts are spread over the three masters: each holds
    // dedup keys (one per event) of about a third of them.
    let dedup_keys: Vec<usize> = cluster
        .masters()
        .into_iter()
        .map(|m| cluster.nodes[m].keys("test:dedup:*").len())
        .collect();
    assert_eq!(dedup_keys.iter().sum::<usize>(), 60, "{dedup_keys:?}");
    assert!(
        dedup_keys.iter().all(|n| *n >= 8),
        "60 events over 3 masters: {dedup_keys:?}"
    );
    let store = get(&a.admin_url("/admin/store")).await.json();
    assert_eq!(store["kind"], "redis", "{store}");
    assert!(store.to_string().contains("cluster masters"), "{store}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_rate_limit_is_exact_across_two_sidecars_on_a_cluster() {
    let cluster = RedisCluster::start();
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let body = Yaml::new()
        .with(format!(
            "store: {{ kind: redis, url: {}, prefix: test }}",
            seeds(&cluster)
        ))
        .service(
            "stripe",
            "/stripe",
            &upstream.url(),
            &["rate_limit: { requests: 10, per: 1m, scope: global }"],
        )
        .service(
            "resend",
            "/resend",
            &upstream.url(),
            &["rate_limit: { requests: 3, per: 1m, scope: global }"],
        )
        .build();
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    let mut statuses = BTreeMap::<(&str, u16), usize>::new();
    for _ in 0..8 {
        for sidecar in [&a, &b] {
            for service in ["stripe", "resend"] {
                let status = get(&sidecar.egress_url(&format!("/{service}/x")))
                    .await
                    .status;
                *statuses.entry((service, status)).or_default() += 1;
            }
        }
    }
    assert_eq!(
        statuses,
        BTreeMap::from([
            (("resend", 200), 3),
            (("resend", 429), 13),
            (("stripe", 200), 10),
            (("stripe", 429), 6)
        ]),
        "each limit holds in total, not per replica"
    );
    assert_eq!(upstream.requests().len(), 13);
    assert!(
        !a.logs().contains("CROSSSLOT"),
        "every script's keys share a slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_nothing_that_was_acknowledged() {
    let mut cluster = RedisCluster::start();
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let body = webhook_config(
        &format!(
            "{{ kind: redis, url: {}, prefix: test, replicas: 1, replica_timeout: 500ms }}",
            seeds(&cluster)
        ),
        &target,
    );
    let sidecar = Arc::new(Sidecar::start(&body));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (sidecar, acknowledged, refused, running, sent) = (
                Arc::clone(&sidecar),
                Arc::clone(&acknowledged),
                Arc::clone(&refused),
                Arc::clone(&running),
                Arc::clone(&sent),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::SeqCst) {
                    let id = format!("evt_{sender}_{n}");
                    n += 1;
                    sent.fetch_add(1, Ordering::SeqCst);
                    match post(&sidecar, &id).await {
                        202 => {
                            acknowledged.lock().unwrap().insert(id);
                        }
                        _ => refused.lock().unwrap().push(Instant::now()),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The master of the part the next event would go to: some part is
    // always on it.
    let victim = cluster.masters()[0];
    let replica = cluster
        .nodes
        .iter()
        .find(|n| {
            n.info("replication")
                .contains(&format!("master_port:{}", cluster.nodes[victim].port))
        })
        .expect("every master has a replica")
        .port;
    let killed = Instant::now();
    cluster.nodes[victim].kill();
    // Its replica takes over once the others see it gone; the killed node
    // comes back (as a pod would) and becomes the new master's replica, so
    // that writes on its parts can wait for a replica again.
    tokio::task::spawn_blocking({
        let nodes = cluster.nodes.iter().map(|n| n.port).collect::<Vec<_>>();
        move || wait_for_failover(&nodes, victim, replica)
    })
    .await
    .unwrap();
    cluster.nodes[victim].restart();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.store(false, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    let last_refusal = refused.iter().max().copied();
    eprintln!(
        "sent {}, acknowledged {}, refused {} (failover {:?}; last refusal {:?} after the kill)",
        sent.load(Ordering::SeqCst),
        acknowledged.len(),
        refused.len(),
        back - killed,
        last_refusal.map(|t| t - killed)
    );
    if let Some(last) = last_refusal {
        assert!(
            last < back + Duration::from_secs(3),
            "503s for {:?} after the failed master came back",
            last.saturating_duration_since(back)
        );
    }
    // Accepted after the failover too.
    assert!(acknowledged.len() > 100, "{}", acknowledged.len());

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: BTreeSet<String> = deliveries(&target).into_keys().collect();
        let lost: Vec<_> = acknowledged.difference(&delivered).collect();
        if lost.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged events never delivered, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `replica` (on `port`) has been promoted in place of its
/// killed master and every other node sees the cluster ok again.
fn wait_for_failover(ports: &[u16], victim: usize, replica: u16) {
    let cli = |port: &u16, args: &[&str]| {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let promoted = cli(&replica, &["INFO", "replication"]).contains("role:master");
        let ok = ports
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .all(|(_, port)| cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
        if promoted && ok {
            return;
        }
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_over_tls_with_our_ca_and_a_client_certificate() {
    let dir = unique_dir("redis-tls");
    let pem = pem_files(&dir);
    let tls_port = free_port();
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca, cert, key) = (path(&pem.ca), path(&pem.server_cert), path(&pem.server_key));
    let tls_port_text = tls_port.to_string();
    // The plain port stays for the test's own redis-cli; the sidecar speaks
    // TLS, and must show a certificate our CA signed.
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port_text,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
    ]);
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let store = format!(
        "{{ kind: redis, url: \"rediss://127.0.0.1:{tls_port}\", prefix: test, ca_file: {ca}, cert_file: {}, key_file: {} }}",
        path(&pem.client_cert),
        path(&pem.client_key)
    );
    let sidecar = Sidecar::start(&webhook_config(&store, &target));
    assert_eq!(post(&sidecar, "evt_tls").await, 202);
    eventually(Duration::from_secs(10), "delivery over a TLS store", || {
        deliveries(&target).contains_key("evt_tls")
    })
    .await;
    assert!(redis
        .cli(&["INFO", "stats"])
        .contains("total_commands_processed"));

    // Without the client certificate the server refuses the handshake:
    // webhooks are refused, never acknowledged.
    let without_cert = format!(
        "{{ kind: redis, url: \"rediss://127.0.0.1:{tls_port}\", prefix: test, ca_file: {ca} }}"
    );
    let refused = Sidecar::start_unready(&webhook_config(&without_cert, &target));
    assert_eq!(post(&refused, "evt_no_cert").await, 503);

    // A server our CA did not sign is not trusted.
    let other = unique_dir("redis-tls-other");
    let stranger = pem_files(&other);
    let wrong_ca = format!(
        "{{ kind: redis, url: \"rediss://127.0.0.1:{tls_port}\", prefix: test, ca_file: {}, cert_file: {}, key_file: {} }}",
        path(&stranger.ca),
        path(&pem.client_cert),
        path(&pem.client_key)
    );
    let untrusting = Sidecar::start_unready(&webhook_config(&wrong_ca, &target));
    assert_eq!(post(&untrusting, "evt_wrong_ca").await, 503);
    assert!(!deliveries(&target).contains_key("evt_no_cert"));
    assert!(!deliveries(&target).contains_key("evt_wrong_ca"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_the_store_follows_a_failover() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::replica_of(&primary);
    let sentinel = RedisSentinel::watching(&primary);
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let store = format!(
        "{{ kind: redis, sentinel: {{ master: mymaster, nodes: [\"127.0.0.1:{}\"] }}, prefix: test }}",
        sentinel.port
    );
    let sidecar = Sidecar::start(&webhook_config(&store, &target));
    let mut accepted = BTreeSet::new();
    for i in 0..10 {
        let id = format!("evt_before_{i}");
        assert_eq!(post(&sidecar, &id).await, 202);
        accepted.insert(id);
    }
    primary.kill();
    let killed = Instant::now();
    // Refused (503) until the sentinel has promoted the replica and the
    // sidecar asked it again; then accepted on the new master.
    let mut n = 0;
    loop {
        let id = format!("evt_during_{n}");
        n += 1;
        if post(&sidecar, &id).await == 202 {
            accepted.insert(id);
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "never accepted again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sentinel.master_port(),
        Some(replica.port),
        "the replica was promoted"
    );
    for i in 0..10 {
        let id = format!("evt_after_{i}");
        assert_eq!(post(&sidecar, &id).await, 202);
        accepted.insert(id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered: BTreeSet<String> = deliveries(&target).into_keys().collect();
        let after: Vec<_> = accepted
            .iter()
            .filter(|id| !id.starts_with("evt_before_"))
            .filter(|id| !delivered.contains(*id))
            .collect();
        if after.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "undelivered after the failover: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_pause_is_announced_across_a_cluster_and_read_by_late_starters() {
    let cluster = RedisCluster::start();
    let upstream =
        MockServer::start(|_| MockAnswer::status(503, "maintenance").header("retry-after", "30"))
            .await;
    let body = Yaml::new()
        .with(format!(
            "store: {{ kind: redis, url: {}, prefix: test }}",
            seeds(&cluster)
        ))
        .service("stripe", "/stripe", &upstream.url(), &[])
        .build();
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    b.log_containing("listening for provider pauses").await;
    assert_eq!(get(&a.egress_url("/stripe/x")).await.status, 503);
    // Published on one node, heard on whichever node the other subscribed to.
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let answer = get(&b.egress_url("/stripe/x")).await;
        if answer.headers.contains_key("x-sidecar-error") || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        answer.headers.get("x-sidecar-error").map(String::as_str),
        Some("provider_throttled")
    );
    // A sidecar that starts later reads the pause from the key's master.
    let late = Sidecar::start(&body);
    late.log_containing("listening for provider pauses").await;
    let answer = get(&late.egress_url("/stripe/x")).await;
    assert_eq!(answer.headers["x-sidecar-error"], "provider_throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_from_a_file_reaches_redis_and_is_shown_nowhere() {
    const PASSWORD: &str = "redis-password-from-a-file-0123";
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let dir = unique_dir("redis-secret");
    let secret = dir.join("password");
    std::fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let store = format!(
        "{{ kind: redis, url: \"redis://:${{file:{}}}@127.0.0.1:{}\", prefix: test }}",
        secret.display(),
        redis.port
    );
    let sidecar = Sidecar::start(&webhook_config(&store, &target));
    assert_eq!(post(&sidecar, "evt_authenticated").await, 202);
    eventually(Duration::from_secs(10), "delivery", || {
        deliveries(&target).contains_key("evt_authenticated")
    })
    .await;
    for path in ["/admin/config", "/admin/store"] {
        let shown = get(&sidecar.admin_url(path)).await.text();
        assert!(!shown.contains(PASSWORD), "{path}: {shown}");
    }
    assert!(!sidecar.logs().contains(PASSWORD));

    // A wrong password: refused, and the error does not echo it.
    std::fs::write(&secret, "not-the-password-0123456789\n").unwrap();
    let wrong = Sidecar::start_unready(&webhook_config(&store, &target));
    assert_eq!(post(&wrong, "evt_wrong_password").await, 503);
    assert!(!wrong.logs().contains("not-the-password"));
}
