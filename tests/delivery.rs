//! Black-box tests of delivery with the real binary: verified webhooks go
//! out to real mock targets through load-balanced, health-checked upstream
//! groups, with retries, dead letters, replay (admin API and CLI),
//! priorities, and nothing lost when the sidecar is killed, with either
//! store.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use wedsync_sidecar::webhooks::verify::Inbound;

const DELIVERY_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn stripe_event(id: &str, event_type: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"{event_type}","data":{{"object":{{"metadata":{{"wedding_id":"w-7"}}}}}}}}"#
    )
    .into_bytes()
}

async fn post_event(sidecar: &Sidecar, id: &str, event_type: &str) -> u16 {
    let body = stripe_event(id, event_type);
    let signature = stripe_signature_with(SECRET, &body);
    send(
        "POST",
        &format!("http://{}/webhooks/stripe", sidecar.ingress),
        &[
            ("stripe-signature", signature.as_str()),
            ("content-type", "application/json"),
        ],
        Bytes::from(body),
    )
    .await
    .status
}

/// `upstreams` and extra YAML, with a Stripe webhook whose `routes` and
/// `delivery` are given.
/// `upstreams` is the body of the `upstreams:` section (indented entries).
fn config(upstreams: &str, routes: &str, extra: &str) -> String {
    let routes = format!("routes: {routes}");
    let yaml = Yaml::new()
        .with(format!("admin: {{ token: {ADMIN_TOKEN} }}"))
        .with(format!("upstreams:\n{}", upstreams.trim_end()))
        .stripe_webhook(&[
            "context: { wedding_id: /data/object/metadata/wedding_id }",
            "priority: { high: [booking.confirmed], low: [\"*.updated\"] }",
            &routes,
            "delivery: { path: /events/stripe, timeout: 1s, max_attempts: 100, backoff: { initial: 100ms, max: 400ms } }",
        ]);
    let yaml = if extra.is_empty() {
        yaml
    } else {
        yaml.with(extra)
    };
    yaml.build()
}

fn event_id(seen: &Seen) -> String {
    seen.headers.get("x-event-id").cloned().unwrap_or_default()
}

async fn ok_target() -> MockServer {
    MockServer::start(|_| MockAnswer::status(204, "")).await
}

fn unused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn admin_json(sidecar: &Sidecar, method: &str, path: &str) -> Answer {
    send(
        method,
        &sidecar.admin_url(path),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn fan_out_reaches_every_target_signed_and_a_down_one_delays_nobody() {
    let (notify, analytics) = (ok_target().await, ok_target().await);
    let supplier = unused_addr();
    let sidecar = Sidecar::start(&config(
        &format!(
            "  notify: {{ backends: [{}] }}\n  analytics: {{ backends: [{}] }}\n  supplier: {{ backends: [{supplier}] }}\n",
            notify.addr, analytics.addr
        ),
        "[{ events: [\"payment_intent.*\"], targets: [notify, analytics, supplier] }]",
        &format!("delivery: {{ signing_secret: \"{DELIVERY_SECRET}\", workers: 8 }}\n"),
    ));
    let started = Instant::now();
    for i in 0..5 {
        assert_eq!(
            post_event(&sidecar, &format!("evt_{i}"), "payment_intent.succeeded").await,
            202
        );
    }
    eventually(
        Duration::from_secs(3),
        "both live targets get all five",
        || notify.requests().len() == 5 && analytics.requests().len() == 5,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the down target slowed the others: {:?}",
        started.elapsed()
    );

    let seen = &notify.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/events/stripe");
    assert_eq!(seen.headers["x-webhook-source"], "stripe");
    assert_eq!(seen.headers["x-event-type"], "payment_intent.succeeded");
    assert_eq!(seen.headers["x-delivery-attempt"], "1");
    assert_eq!(seen.headers["x-wedding-id"], "w-7");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(
        seen.body,
        stripe_event(&event_id(seen), "payment_intent.succeeded")
    );
    // Internal services verify one scheme, whatever the provider.
    let verifier =
        wedsync_sidecar::webhooks::verify::build(&wedsync_sidecar::config::webhooks::Verify {
            kind: wedsync_sidecar::config::webhooks::VerifyKind::Standard,
            secrets: vec![wedsync_sidecar::config::Secret::new(DELIVERY_SECRET)],
            tolerance: Duration::from_secs(300),
            allow_sha1: false,
            public_url: None,
            hmac: None,
        })
        .unwrap();
    let mut headers = http::HeaderMap::new();
    for (name, value) in &seen.headers {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let now = wedsync_sidecar::time::unix_time().as_secs();
    assert_eq!(
        verifier.verify(&Inbound {
            headers: &headers,
            body: &seen.body,
            query: None,
            now
        }),
        Ok(())
    );
    assert_eq!(
        seen.headers["webhook-id"],
        format!("stripe:{}", event_id(seen))
    );

    let metrics = sidecar
        .metrics_containing(&[
            "sidecar_deliveries_total{outcome=\"delivered\",target=\"notify\",webhook=\"stripe\"} 5",
            "sidecar_deliveries_total{outcome=\"delivered\",target=\"analytics\",webhook=\"stripe\"} 5",
        ])
        .await;
    assert!(
        metrics.contains(
            "sidecar_deliveries_total{outcome=\"retried\",target=\"supplier\",webhook=\"stripe\"}"
        ),
        "{metrics}"
    );
}

/// Which backend (by index) got each delivery, in arrival order.
/// Waits until `/admin/upstreams` reports each of `addrs` healthy.
async fn healthy_in_admin(sidecar: &Sidecar, addrs: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let upstreams = admin_json(sidecar, "GET", "/admin/upstreams").await.json();
        let healthy = |addr: &SocketAddr| {
            upstreams["upstreams"]["notify"]["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["addr"] == addr.to_string().as_str() && b["health"] == "healthy")
        };
        if addrs.iter().all(healthy) {
            return;
        }
        assert!(Instant::now() < deadline, "not healthy: {upstreams}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn arrivals(backends: &[MockServer]) -> Vec<usize> {
    let mut all: Vec<(Instant, usize)> = backends
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.requests().into_iter().map(move |s| (s.at, i)))
        .collect();
    all.sort();
    all.into_iter().map(|(_, i)| i).collect()
}

fn counts(order: &[usize]) -> [usize; 3] {
    let mut counts = [0; 3];
    for i in order {
        counts[*i] += 1;
    }
    counts
}

#[tokio::test]
async fn each_balance_spreads_deliveries_as_it_promises() {
    let mut groups: Vec<Vec<MockServer>> = Vec::new();
    for _ in 0..3 {
        groups.push(vec![
            ok_target().await,
            ok_target().await,
            ok_target().await,
        ]);
    }
    let list = |group: &[MockServer], weights: [u32; 3]| {
        group
            .iter()
            .zip(weights)
            .map(|(b, w)| format!("{{ addr: \"{}\", weight: {w} }}", b.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // One worker: deliveries go out one at a time, so arrival order is
    // selection order.
    let sidecar = Sidecar::start(&config(
        &format!(
            "  rr: {{ balance: round_robin, backends: [{}] }}\n  weighted: {{ balance: weighted, backends: [{}] }}\n  random: {{ balance: random, backends: [{}] }}\n",
            list(&groups[0], [1, 1, 1]),
            list(&groups[1], [3, 1, 1]),
            list(&groups[2], [1, 1, 1]),
        ),
        "[{ events: [\"*\"], targets: [rr, weighted, random] }]",
        "delivery: { workers: 1 }\n",
    ));
    const EVENTS: usize = 60;
    for i in 0..EVENTS {
        assert_eq!(
            post_event(&sidecar, &format!("evt_{i}"), "charge.succeeded").await,
            202
        );
    }
    eventually(Duration::from_secs(10), "every delivery", || {
        groups
            .iter()
            .all(|g| g.iter().map(|b| b.requests().len()).sum::<usize>() == EVENTS)
    })
    .await;

    let rr = counts(&arrivals(&groups[0]));
    assert!(
        rr.iter().all(|c| c.abs_diff(EVENTS / 3) <= 1),
        "round robin: {rr:?}"
    );

    let weighted_order = arrivals(&groups[1]);
    let weighted = counts(&weighted_order);
    let share = weighted[0] as f64 / EVENTS as f64;
    assert!((share - 0.6).abs() <= 0.05, "weighted 3:1:1: {weighted:?}");
    assert!(
        weighted[1].abs_diff(weighted[2]) <= EVENTS / 20,
        "{weighted:?}"
    );
    let longest_run = weighted_order
        .chunk_by(|a, b| a == b)
        .filter(|run| run[0] == 0)
        .map(<[usize]>::len)
        .max()
        .unwrap();
    assert!(
        longest_run <= 2,
        "interleaved, not bursts: {weighted_order:?}"
    );

    let random = counts(&arrivals(&groups[2]));
    assert!(
        random.iter().all(|c| *c >= 8),
        "random, roughly uniform: {random:?}"
    );
}

#[tokio::test]
async fn least_connections_sends_to_the_idle_backends_while_one_is_slow() {
    let slow =
        MockServer::start(|_| MockAnswer::status(204, "").delayed(Duration::from_millis(400)))
            .await;
    let (fast_a, fast_b) = (ok_target().await, ok_target().await);
    let sidecar = Sidecar::start(&config(
        &format!(
            "  lc: {{ balance: least_connections, backends: [{}, {}, {}] }}\n",
            slow.addr, fast_a.addr, fast_b.addr
        ),
        "[{ events: [\"*\"], targets: [lc] }]",
        "delivery: { workers: 8 }\n",
    ));
    for i in 0..30 {
        assert_eq!(
            post_event(&sidecar, &format!("evt_{i}"), "charge.succeeded").await,
            202
        );
    }
    eventually(Duration::from_secs(10), "every delivery", || {
        slow.requests().len() + fast_a.requests().len() + fast_b.requests().len() == 30
    })
    .await;
    let slow_count = slow.requests().len();
    assert!(
        slow_count <= 5,
        "the slow backend got {slow_count} of 30 (fast: {}, {})",
        fast_a.requests().len(),
        fast_b.requests().len()
    );
}

#[tokio::test]
async fn a_failing_health_check_takes_a_backend_out_and_a_passing_one_brings_it_back() {
    let healthy =
        |seen: &Seen| MockAnswer::status(if seen.uri == "/healthz" { 200 } else { 204 }, "");
    let steady = MockServer::start(healthy).await;
    let flapping = MockServer::start(healthy).await;
    let flapping_addr = flapping.addr;
    // Answers events but fails its health check: never checked healthy,
    // so never used.
    let sick = MockServer::start(|seen: &Seen| {
        MockAnswer::status(if seen.uri == "/healthz" { 503 } else { 204 }, "")
    })
    .await;
    let sidecar = Sidecar::start(&config(
        &format!(
            "  notify: {{ backends: [{}, {}, {}], health_check: {{ kind: http, path: /healthz, interval: 100ms, timeout: 100ms, healthy_after: 1, unhealthy_after: 1 }} }}\n",
            steady.addr, flapping_addr, sick.addr
        ),
        "[{ events: [\"*\"], targets: [notify] }]",
        "",
    ));
    let events = |seen: Vec<Seen>| {
        seen.into_iter()
            .filter(|s| s.uri == "/events/stripe")
            .count()
    };
    eventually(
        Duration::from_secs(3),
        "both healthy backends checked",
        || {
            flapping.requests().iter().any(|s| s.uri == "/healthz")
                && steady.requests().iter().any(|s| s.uri == "/healthz")
        },
    )
    .await;
    healthy_in_admin(&sidecar, &[steady.addr, flapping_addr]).await;
    for i in 0..10 {
        post_event(&sidecar, &format!("evt_a{i}"), "charge.succeeded").await;
    }
    eventually(Duration::from_secs(3), "ten deliveries", || {
        events(steady.requests()) + events(flapping.requests()) == 10
    })
    .await;
    assert!(
        events(flapping.requests()) >= 4,
        "round robin over the two healthy ones"
    );
    assert_eq!(
        events(sick.requests()),
        0,
        "a backend never checked healthy is never used"
    );
    let upstreams = admin_json(&sidecar, "GET", "/admin/upstreams").await.json();
    let states: BTreeMap<String, String> = upstreams["upstreams"]["notify"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["health"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states[&sick.addr.to_string()], "unhealthy");
    assert_eq!(states[&steady.addr.to_string()], "healthy");

    drop(flapping);
    sidecar
        .metrics_containing(&[&format!(
            "sidecar_upstream_backend_healthy{{backend=\"{flapping_addr}\",upstream=\"notify\"}} 0"
        )])
        .await;
    let before = events(steady.requests());
    for i in 0..10 {
        post_event(&sidecar, &format!("evt_b{i}"), "charge.succeeded").await;
    }
    eventually(Duration::from_secs(3), "ten more at the steady one", || {
        events(steady.requests()) == before + 10
    })
    .await;
    let first_attempts = steady
        .requests()
        .iter()
        .filter(|s| event_id(s).starts_with("evt_b"))
        .all(|s| s.headers["x-delivery-attempt"] == "1");
    assert!(
        first_attempts,
        "no delivery went to the stopped backend first"
    );
    sidecar
        .metrics_containing(&[&format!(
            "sidecar_upstream_backend_healthy{{backend=\"{flapping_addr}\",upstream=\"notify\"}} 0"
        )])
        .await;

    let flapping = MockServer::start_on(flapping_addr, healthy).await;
    eventually(Duration::from_secs(3), "checked again", || {
        flapping.requests().iter().any(|s| s.uri == "/healthz")
    })
    .await;
    healthy_in_admin(&sidecar, &[flapping_addr]).await;
    for i in 0..10 {
        post_event(&sidecar, &format!("evt_c{i}"), "charge.succeeded").await;
    }
    eventually(
        Duration::from_secs(3),
        "the returned backend gets deliveries again",
        || events(flapping.requests()) >= 4,
    )
    .await;
}

#[tokio::test]
async fn retries_back_off_honour_retry_after_and_rejections_dead_letter_until_replayed() {
    let accept_rejected = Arc::new(AtomicBool::new(false));
    let attempts: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let target = {
        let (accept_rejected, attempts) = (Arc::clone(&accept_rejected), Arc::clone(&attempts));
        MockServer::start(move |seen: &Seen| {
            let id = event_id(seen);
            let n = {
                let mut attempts = attempts.lock().unwrap();
                let n = attempts.entry(id.clone()).or_default();
                *n += 1;
                *n
            };
            match id.as_str() {
                "evt_flaky" if n <= 2 => MockAnswer::status(500, "busy"),
                "evt_throttled" if n == 1 => MockAnswer::status(429, "").header("retry-after", "1"),
                id if id.starts_with("evt_bad") && !accept_rejected.load(Ordering::SeqCst) => {
                    MockAnswer::status(400, "unknown wedding")
                }
                _ => MockAnswer::status(200, ""),
            }
        })
        .await
    };
    let sidecar = Sidecar::start(&config(
        &format!("  notify: {{ backends: [{}] }}\n", target.addr),
        "[{ events: [\"*\"], targets: [notify] }]",
        "",
    ));
    for id in ["evt_flaky", "evt_throttled", "evt_bad_1", "evt_bad_2"] {
        assert_eq!(post_event(&sidecar, id, "charge.failed").await, 202);
    }
    let seen_for = |id: &str| -> Vec<Seen> {
        target
            .requests()
            .into_iter()
            .filter(|s| event_id(s) == id)
            .collect()
    };
    eventually(
        Duration::from_secs(5),
        "three attempts of the flaky one",
        || seen_for("evt_flaky").len() == 3,
    )
    .await;
    let flaky = seen_for("evt_flaky");
    let numbers: Vec<&str> = flaky
        .iter()
        .map(|s| s.headers["x-delivery-attempt"].as_str())
        .collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    for pair in flaky.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // Full jitter between half the initial delay and the ceiling.
        assert!(gap >= Duration::from_millis(45), "retried after {gap:?}");
        // The ceiling is 400 ms; a retry never waits for the 1 s timeout.
        assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    }
    eventually(Duration::from_secs(5), "the throttled one again", || {
        seen_for("evt_throttled").len() == 2
    })
    .await;
    let throttled = seen_for("evt_throttled");
    // Retry-After: 1 is honoured up to backoff.max, 400 ms here: a
    // target's number never holds a job longer than the longest backoff.
    let gap = throttled[1].at - throttled[0].at;
    assert!(
        gap >= Duration::from_millis(390) && gap < Duration::from_millis(950),
        "Retry-After capped at backoff.max, retried after {gap:?}"
    );

    // 400: dead-lettered after one attempt, with its error.
    let list = loop {
        let list = admin_json(&sidecar, "GET", "/admin/dead-letters?webhook=stripe")
            .await
            .json();
        if list["items"].as_array().unwrap().len() == 2 {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let first = &list["items"][0];
    assert_eq!(first["reason"], "rejected");
    assert_eq!(first["last_error"], "HTTP 400");
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["target"], "notify");
    assert_eq!(first["event_type"], "charge.failed");
    assert_eq!(seen_for("evt_bad_1").len(), 1, "a 400 is not retried");
    let by_event: BTreeMap<String, String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["event_id"].as_str().unwrap().to_string(),
                d["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let detail = admin_json(
        &sidecar,
        "GET",
        &format!("/admin/dead-letters/{}", by_event["evt_bad_1"]),
    )
    .await
    .json();
    assert_eq!(detail["history"][0]["status"], 400);
    assert_eq!(detail["history"][0]["backend"], target.addr.to_string());
    sidecar
        .metrics_containing(&["sidecar_dead_letters{webhook=\"stripe\"} 2"])
        .await;

    accept_rejected.store(true, Ordering::SeqCst);
    // Replay from the API.
    let replayed = admin_json(
        &sidecar,
        "POST",
        &format!("/admin/dead-letters/{}/replay", by_event["evt_bad_1"]),
    )
    .await;
    assert_eq!(replayed.status, 200, "{}", replayed.text());
    eventually(Duration::from_secs(3), "the replayed one delivered", || {
        seen_for("evt_bad_1").len() == 2
    })
    .await;
    assert_eq!(
        seen_for("evt_bad_1")[1].headers["x-delivery-attempt"],
        "1",
        "a fresh attempt count"
    );

    // And from the CLI, which reads the admin address and token from the config.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
            .args(["dlq"])
            .args(args)
            .arg("-c")
            .arg(sidecar.config_with_bound_ports())
            .output()
            .unwrap()
    };
    let listed = cli(&["list"]);
    let table = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        table.contains("evt_bad_2") && !table.contains("evt_bad_1"),
        "{table}"
    );
    let replay = cli(&["replay", &by_event["evt_bad_2"]]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    eventually(Duration::from_secs(3), "the CLI replay delivered", || {
        seen_for("evt_bad_2").len() == 2
    })
    .await;
    let missing = cli(&["show", "999999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter 999999"));
    let empty = admin_json(&sidecar, "GET", "/admin/dead-letters")
        .await
        .json();
    assert_eq!(empty["items"], serde_json::json!([]));
}

#[tokio::test]
async fn a_high_priority_event_overtakes_a_backlog_of_low_ones() {
    let target =
        MockServer::start(|_| MockAnswer::status(204, "").delayed(Duration::from_millis(50))).await;
    let sidecar = Sidecar::start(&config(
        &format!(
            "  notify: {{ backends: [{}], max_in_flight: 1 }}\n",
            target.addr
        ),
        "[{ events: [\"*\"], targets: [notify] }]",
        "delivery: { workers: 1 }\n",
    ));
    for i in 0..40 {
        assert_eq!(
            post_event(&sidecar, &format!("evt_low_{i}"), "booking.updated").await,
            202
        );
    }
    assert_eq!(
        post_event(&sidecar, "evt_high", "booking.confirmed").await,
        202
    );
    // How far the low lane had got when the high event was accepted: the
    // bound below counts from there, so how long the posting took (a loaded
    // machine) does not decide the outcome.
    let lows_seen = target.requests().len();
    assert!(
        lows_seen < 30,
        "a backlog of low events was waiting ({lows_seen} of 40 delivered already)"
    );
    eventually(Duration::from_secs(15), "all delivered", || {
        target.requests().len() == 41
    })
    .await;
    let order: Vec<String> = target.requests().iter().map(event_id).collect();
    let position = order.iter().position(|id| id == "evt_high").unwrap();
    let lows_before = order[..position].len();
    // At most the low one in flight, one leased just before the accept,
    // and one whose lane's turn the 6:3:1 round robin gave the next lease
    // (one in ten: low is never starved).
    assert!(
        lows_before <= lows_seen + 2,
        "the high event came after {lows_before} of the 40 low ones, {lows_seen} of them \
         delivered before it was accepted: {order:?}"
    );
    // Low is slowed, not starved: it kept going while high waited.
    assert!(lows_before >= 1);
}

/// Accepts `count` events while the targets are down, SIGKILLs the
/// sidecar, brings the targets up, restarts it, and checks that every
/// target got every event at least once.
async fn nothing_accepted_is_lost_across_a_sigkill(store: &str) {
    let (notify_addr, analytics_addr) = (unused_addr(), unused_addr());
    let mut sidecar = Sidecar::start(&config(
        &format!("  notify: {{ backends: [{notify_addr}] }}\n  analytics: {{ backends: [{analytics_addr}] }}\n"),
        "[{ events: [\"*\"], targets: [notify, analytics] }]",
        store,
    ));
    const COUNT: usize = 500;
    let sidecar_ref = &sidecar;
    let accepted: Vec<String> = futures_util::future::join_all((0..8).map(|sender| async move {
        let mut ids = Vec::new();
        for i in (sender..COUNT).step_by(8) {
            let id = format!("evt_{i}");
            if post_event(sidecar_ref, &id, "charge.succeeded").await == 202 {
                ids.push(id);
            }
        }
        ids
    }))
    .await
    .concat();
    assert_eq!(accepted.len(), COUNT);
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();

    let notify = MockServer::start_on(notify_addr, |_| MockAnswer::status(204, "")).await;
    let analytics = MockServer::start_on(analytics_addr, |_| MockAnswer::status(204, "")).await;
    sidecar.respawn();
    let ids = |server: &MockServer| -> BTreeSet<String> {
        server.requests().iter().map(event_id).collect()
    };
    let expected: BTreeSet<String> = accepted.into_iter().collect();
    eventually(
        Duration::from_secs(30),
        "every event at every target after the restart",
        || ids(&notify) == expected && ids(&analytics) == expected,
    )
    .await;
}

#[tokio::test]
async fn with_the_embedded_store_nothing_accepted_is_lost_across_a_sigkill() {
    nothing_accepted_is_lost_across_a_sigkill("").await;
}

#[tokio::test]
async fn with_redis_nothing_accepted_is_lost_across_a_sigkill() {
    let redis = RedisServer::start();
    nothing_accepted_is_lost_across_a_sigkill(&format!(
        "store: {{ kind: redis, url: {}, prefix: test }}\n",
        redis.url()
    ))
    .await;
}

#[tokio::test]
async fn two_sidecars_on_one_redis_share_the_queue_and_a_dead_ones_work_is_taken_over() {
    let redis = RedisServer::start();
    let target = MockServer::start(|seen: &Seen| {
        let slow = event_id(seen).starts_with("evt_slow");
        MockAnswer::status(204, "").delayed(Duration::from_millis(if slow { 300 } else { 0 }))
    })
    .await;
    let yaml = config(
        &format!("  notify: {{ backends: [{}] }}\n", target.addr),
        "[{ events: [\"*\"], targets: [notify] }]",
        &format!(
            "store: {{ kind: redis, url: {}, prefix: test }}\n",
            redis.url()
        ),
    );
    let mut first = Sidecar::start(&yaml);
    let second = Sidecar::start(&yaml);
    for i in 0..100 {
        let sidecar = if i % 2 == 0 { &first } else { &second };
        assert_eq!(
            post_event(sidecar, &format!("evt_{i}"), "charge.succeeded").await,
            202
        );
    }
    eventually(Duration::from_secs(10), "a hundred deliveries", || {
        target.requests().len() >= 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_event = |prefix: &str| -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for seen in target.requests() {
            let id = event_id(&seen);
            if id.starts_with(prefix) {
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    };
    let normal = per_event("evt_");
    assert_eq!(normal.len(), 100);
    assert!(
        normal.values().all(|n| *n == 1),
        "each delivered once: {normal:?}"
    );
    let mut delivered = Vec::new();
    for sidecar in [&first, &second] {
        let metrics = get(&sidecar.admin_url("/metrics")).await.text();
        let line =
            "sidecar_deliveries_total{outcome=\"delivered\",target=\"notify\",webhook=\"stripe\"} ";
        delivered.push(
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(line))
                .map_or(0, |n| n.parse::<u64>().unwrap()),
        );
    }
    assert_eq!(delivered.iter().sum::<u64>(), 100, "{delivered:?}");
    assert!(
        delivered.iter().all(|n| *n > 0),
        "both replicas deliver: {delivered:?}"
    );

    // Kill one while it holds leases: the other delivers its jobs once the
    // leases expire.
    for i in 0..20 {
        assert_eq!(
            post_event(&first, &format!("evt_slow_{i}"), "charge.succeeded").await,
            202
        );
    }
    // Some slow deliveries under way (each takes 300 ms), so the first
    // holds leases when it dies.
    eventually(Duration::from_secs(5), "slow deliveries under way", || {
        target
            .requests()
            .iter()
            .any(|seen| event_id(seen).starts_with("evt_slow"))
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let expected: BTreeSet<String> = (0..20).map(|i| format!("evt_slow_{i}")).collect();
    eventually(
        Duration::from_secs(20),
        "every slow event delivered by the survivor",
        || {
            per_event("evt_slow")
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                == expected
        },
    )
    .await;
    drop(second);
}

#[tokio::test]
async fn a_dns_name_is_resolved_in_the_background_and_only_checked_addresses_are_used() {
    let target = ok_target().await;
    let sidecar = Sidecar::start(&config(
        &format!(
            "  notify: {{ discovery: {{ dns: \"localhost:{}\", refresh: 1s }}, health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms }} }}\n",
            target.addr.port()
        ),
        "[{ events: [\"*\"], targets: [notify] }]",
        "",
    ));
    let backend = target.addr.to_string();
    let mut healthy = false;
    for _ in 0..100 {
        let upstreams = admin_json(&sidecar, "GET", "/admin/upstreams").await.json();
        healthy = upstreams["upstreams"]["notify"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["addr"] == backend.as_str() && b["health"] == "healthy");
        if healthy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        healthy,
        "localhost resolved to {backend} and its check passed"
    );
    for i in 0..5 {
        assert_eq!(
            post_event(&sidecar, &format!("evt_{i}"), "charge.succeeded").await,
            202
        );
    }
    eventually(Duration::from_secs(3), "five deliveries", || {
        target.requests().len() == 5
    })
    .await;
    // Where localhost is also ::1 (nothing listens there), its failing
    // check kept every delivery off it.
    assert!(target
        .requests()
        .iter()
        .all(|s| s.headers["x-delivery-attempt"] == "1"));
}

#[tokio::test]
async fn a_slow_target_at_its_cap_leaves_the_workers_to_the_others() {
    let slow =
        MockServer::start(|_| MockAnswer::status(204, "").delayed(Duration::from_millis(1500)))
            .await;
    let fast = ok_target().await;
    let sidecar = Sidecar::start(&config(
        &format!(
            "  slow: {{ backends: [{}], max_in_flight: 2 }}\n  fast: {{ backends: [{}] }}\n",
            slow.addr, fast.addr
        ),
        "[{ events: [\"slow.*\"], targets: [slow] }, { events: [\"fast.*\"], targets: [fast] }]",
        "delivery: { workers: 4 }\n",
    ));
    for i in 0..6 {
        assert_eq!(
            post_event(&sidecar, &format!("evt_slow_{i}"), "slow.thing").await,
            202
        );
    }
    for i in 0..6 {
        assert_eq!(
            post_event(&sidecar, &format!("evt_fast_{i}"), "fast.thing").await,
            202
        );
    }
    eventually(
        Duration::from_secs(1),
        "the fast target gets all six while the slow one is busy",
        || fast.requests().len() == 6,
    )
    .await;
    assert_eq!(
        slow.requests().len(),
        2,
        "never more than max_in_flight at the slow target"
    );
    eventually(
        Duration::from_secs(10),
        "the slow target gets all six in the end",
        || slow.requests().len() == 6,
    )
    .await;
}

#[tokio::test]
async fn sigterm_lets_a_delivery_in_flight_finish_and_keeps_the_rest_in_the_store() {
    let target =
        MockServer::start(|_| MockAnswer::status(204, "").delayed(Duration::from_millis(800)))
            .await;
    let mut sidecar = Sidecar::start(&config(
        &format!(
            "  notify: {{ backends: [{}], max_in_flight: 1 }}\n",
            target.addr
        ),
        "[{ events: [\"*\"], targets: [notify] }]",
        "drain_delay: 100ms\nshutdown_grace: 10s\ndelivery: { workers: 1 }\n",
    ));
    assert_eq!(
        post_event(&sidecar, "evt_in_flight", "charge.succeeded").await,
        202
    );
    eventually(
        Duration::from_secs(2),
        "the first delivery under way",
        || target.requests().len() == 1,
    )
    .await;
    assert_eq!(
        post_event(&sidecar, "evt_waiting", "charge.succeeded").await,
        202
    );
    sidecar.signal("TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the sidecar did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the delivery"
    );
    assert_eq!(
        target.requests().len(),
        1,
        "nothing new was leased after SIGTERM"
    );
    let store = embedded_store(&sidecar.dir.join("data"));
    let waiting: Vec<String> = waiting_jobs(&store)
        .await
        .into_iter()
        .map(|(_, event, _)| event.id.to_string())
        .collect();
    assert_eq!(
        waiting,
        ["evt_waiting"],
        "the finished delivery was acked; the other waits"
    );
}

/// A target asking for ten years with Retry-After gets the longest backoff
/// (400 ms here) instead: neither a job parked for a decade nor a due time
/// wrapped into the past and retried in a tight loop.
#[tokio::test]
async fn a_targets_huge_retry_after_is_capped_at_the_longest_backoff() {
    let target = MockServer::start(|seen| {
        if seen.headers["x-delivery-attempt"] == "1" {
            MockAnswer::status(503, "later").header("retry-after", "315360000")
        } else {
            MockAnswer::status(204, "")
        }
    })
    .await;
    let sidecar = Sidecar::start(&config(
        &format!("  notify: {{ backends: [{}] }}\n", target.addr),
        "[{ events: [\"*\"], targets: [notify] }]",
        "",
    ));
    assert_eq!(
        post_event(&sidecar, "evt_decade", "charge.failed").await,
        202
    );
    eventually(Duration::from_secs(5), "the second attempt", || {
        target.requests().len() == 2
    })
    .await;
    let seen = target.requests();
    let gap = seen[1].at - seen[0].at;
    assert!(
        // 400 ms, not ten years.
        gap >= Duration::from_millis(390) && gap < Duration::from_secs(10),
        "retried after {gap:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(target.requests().len(), 2, "delivered: no tight loop");
}

/// A delivery's `timeout` bounds its whole exchange: a target that sends
/// its headers a byte at a time, or `100 Continue` after `100 Continue`,
/// fails the attempt at the timeout (and the event is retried), instead of
/// holding a worker for as long as it keeps talking.
#[tokio::test]
async fn a_target_that_trickles_its_headers_or_sends_endless_1xx_fails_the_attempt_at_the_timeout()
{
    let trickle = stalling_provider("headers").await;
    let continues = stalling_provider("continues").await;
    let sidecar = Sidecar::start(&config(
        &format!(
            "  trickle: {{ backends: [{trickle}] }}\n  continues: {{ backends: [{continues}] }}\n"
        ),
        "[{ events: [\"*\"], targets: [trickle, continues] }]",
        "",
    ));
    assert_eq!(
        post_event(&sidecar, "evt_slow", "payment_intent.succeeded").await,
        202
    );
    // Each attempt ends at 1 s, then waits 100-400 ms: two attempts end
    // well within 4.5 s on a loaded machine. Without the whole-exchange
    // deadline the first one alone would take 17 s (trickle) or forever
    // (continues).
    let started = Instant::now();
    sidecar
        .metrics_until("two attempts each", Duration::from_millis(4500), |text| {
            ["trickle", "continues"].iter().all(|target| {
                Sidecar::metric_value(
                    text,
                    &format!(
                        "sidecar_deliveries_total{{outcome=\"retried\",target=\"{target}\",webhook=\"stripe\"}}"
                    ),
                ) >= 2.0
            })
        })
        .await;
    assert!(started.elapsed() < Duration::from_millis(4500));
}
