//! Black-box tests of what an acknowledged webhook survives: writes a
//! Redis replica must have before the 2xx, the Redis the sidecar writes to
//! checked for settings that lose data, and readiness that rides out a
//! store blip.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;

fn config(store: &str) -> String {
    Yaml::new()
        .with(format!("store: {store}"))
        .upstream("notify", "{ backends: [127.0.0.1:9] }")
        .stripe_webhook(&["routes: [{ events: [\"*\"], targets: [notify] }]"])
        .build()
}

#[tokio::test]
async fn with_replicas_1_an_ack_waits_for_the_replica_and_a_silent_one_means_503() {
    let primary = RedisServer::start();
    let replica = RedisServer::replica_of(&primary);
    let sidecar = Sidecar::start(&config(&format!(
        "{{ kind: redis, url: {}, prefix: test, replicas: 1, replica_timeout: 300ms }}",
        primary.url()
    )));
    let answer = post_stripe(&sidecar, "evt_replicated").await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    // The replica has the event the moment the provider has its 202.
    assert_eq!(replica.hlen_all("test:events:*"), 1);
    sidecar
        .metrics_containing(&["sidecar_store_replica_wait_seconds_count 1"])
        .await;

    // A replica that does not answer: no 202 for a write it may not have.
    replica.freeze();
    let started = Instant::now();
    let answer = post_stripe(&sidecar, "evt_unreplicated").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.headers["x-sidecar-error"], "store_unavailable");
    assert!(started.elapsed() >= Duration::from_millis(300));
    sidecar
        .metrics_containing(&["sidecar_store_errors_total{op=\"replica_wait\"} 1"])
        .await;
    replica.thaw();
    // The write did reach the primary: the provider's retry is a duplicate.
    let mut retry = post_stripe(&sidecar, "evt_unreplicated").await;
    for _ in 0..20 {
        if retry.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        retry = post_stripe(&sidecar, "evt_unreplicated").await;
    }
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["status"], "duplicate");
}

#[tokio::test]
async fn with_replicas_configured_and_none_connected_nothing_is_acknowledged() {
    let primary = RedisServer::start();
    let sidecar = Sidecar::start(&config(&format!(
        "{{ kind: redis, url: {}, prefix: test, replicas: 1, replica_timeout: 200ms }}",
        primary.url()
    )));
    let answer = post_stripe(&sidecar, "evt_alone").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.json()["detail"]
        .as_str()
        .unwrap()
        .contains("retry later"));
}

#[tokio::test]
async fn a_redis_that_may_evict_the_queue_keeps_the_sidecar_unready_and_refuses_webhooks() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let sidecar = Sidecar::start_unready(&config(&format!(
        "{{ kind: redis, url: {}, prefix: test }}",
        redis.url()
    )));
    let mut readiness = sidecar.readiness().await;
    for _ in 0..50 {
        if readiness.1.contains("maxmemory-policy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        readiness = sidecar.readiness().await;
    }
    assert_eq!(readiness.0, 503);
    assert!(
        readiness.1.contains("maxmemory-policy is allkeys-lru"),
        "{}",
        readiness.1
    );
    assert!(readiness.1.contains("noeviction"), "{}", readiness.1);
    let answer = post_stripe(&sidecar, "evt_evictable").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let store = get(&sidecar.admin_url("/admin/store")).await.json();
    assert_eq!(store["kind"], "redis");
    assert_eq!(store["settings"]["maxmemory-policy"], "allkeys-lru");
    assert!(store["refusal"].as_str().unwrap().contains("noeviction"));
    assert!(sidecar.logs().contains("maxmemory-policy is allkeys-lru"));
}

#[tokio::test]
async fn admin_store_reports_persistence_and_warns_when_nothing_persists() {
    let redis = RedisServer::start();
    let sidecar = Sidecar::start(&config(&format!(
        "{{ kind: redis, url: {}, prefix: test }}",
        redis.url()
    )));
    let store = get(&sidecar.admin_url("/admin/store")).await.json();
    assert_eq!(store["kind"], "redis");
    assert_eq!(store["settings"]["appendonly"], "no");
    assert_eq!(store["settings"]["appendfsync"], "everysec");
    assert_eq!(store["answering"], true);
    let warnings = store["warnings"].to_string();
    assert!(warnings.contains("persists nothing"), "{warnings}");
    assert!(warnings.contains("Redis has no maxmemory"), "{warnings}");
    assert_eq!(store["settings"]["maxmemory"], "0 (no limit)");
    assert_eq!(store["capacity_bytes"], serde_json::Value::Null);
    sidecar.log_containing("Redis persists nothing").await;
    sidecar.log_containing("Redis has no maxmemory").await;

    let durable = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--maxmemory",
        "64mb",
        "--maxmemory-policy",
        "noeviction",
    ]);
    let sidecar = Sidecar::start(&config(&format!(
        "{{ kind: redis, url: {}, prefix: test }}",
        durable.url()
    )));
    let store = get(&sidecar.admin_url("/admin/store")).await.json();
    assert_eq!(store["settings"]["appendfsync"], "always");
    assert_eq!(
        store["settings"]["maxmemory"],
        format!("{} bytes", 64 << 20)
    );
    assert_eq!(store["warnings"], serde_json::json!([]));
}

#[tokio::test]
async fn a_store_blip_shorter_than_unready_after_keeps_the_pod_ready_and_a_longer_one_does_not() {
    let mut redis = RedisServer::start();
    let sidecar = Sidecar::start(&config(&format!(
        "{{ kind: redis, url: {}, prefix: test, unready_after: 3s }}",
        redis.url()
    )));
    redis.kill();
    let down_at = Instant::now();
    // Webhooks are refused at once: nothing is acknowledged without a store.
    assert_eq!(post_stripe(&sidecar, "evt_blip").await.status, 503);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sidecar.readiness().await.0,
        200,
        "a blip keeps the pod in service"
    );
    let mut unready_after = None;
    while down_at.elapsed() < Duration::from_secs(8) {
        let (status, reason) = sidecar.readiness().await;
        if status == 503 {
            assert!(
                reason.contains("the event store has failed for"),
                "{reason}"
            );
            unready_after = Some(down_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready_after = unready_after.expect("unready once the failure lasted");
    assert!(unready_after >= Duration::from_secs(3), "{unready_after:?}");
    redis.restart();
    let mut ready = false;
    for _ in 0..50 {
        if sidecar.readiness().await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the store answers");
    // Readiness follows the store monitor's check; the webhook's own
    // connection may reconnect a moment later (under load it did): until
    // it does the answer is 503, which the provider retries.
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let status = post_stripe(&sidecar, "evt_after").await.status;
        statuses.push(status);
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&202),
        "acceptance resumes: {statuses:?}"
    );
}

#[tokio::test]
async fn a_full_disk_means_503_never_202_and_acceptance_resumes_when_space_returns() {
    let disk = Tmpfs::mount("8m");
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let body = format!(
        "store: {{ path: {} }}\nupstreams:\n  notify: {{ backends: [{}] }}\nwebhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: {{ kind: stripe, secrets: [{SECRET}] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n",
        disk.dir.join("data").display(),
        target.addr
    );
    let sidecar = Sidecar::start(&body);
    let filler = disk.fill();
    let padding = "p".repeat(16 << 10);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 0..400 {
        let id = format!("evt_disk_{n}");
        let payload = format!(r#"{{"id":"{id}","type":"t","pad":"{padding}"}}"#);
        let signature = stripe_signature_with(SECRET, payload.as_bytes());
        let answer = send(
            "POST",
            &format!("http://{}/webhooks/stripe", sidecar.ingress),
            &[("stripe-signature", signature.as_str())],
            Bytes::from(payload),
        )
        .await;
        match answer.status {
            202 => acknowledged.push(id),
            503 => {
                // The room gate sees the volume full (store_full), unless a
                // write failed for want of space first (store_unavailable).
                let code = answer.headers["x-sidecar-error"].as_str();
                assert!(
                    code == "store_full" || code == "store_unavailable",
                    "{code}"
                );
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("{other}: {}", answer.text()),
        }
    }
    assert!(
        refused >= 5,
        "the disk never filled ({} accepted)",
        acknowledged.len()
    );
    // /admin/store says why: paused for space, the writer's last error, or
    // (between a failed write's recovery and the next refusal) a room left
    // smaller than one of these events.
    let mut store = serde_json::Value::Null;
    let too_small = |store: &serde_json::Value| {
        let room = store["capacity_bytes"].as_u64().unwrap_or(u64::MAX)
            - store["used_bytes"]
                .as_u64()
                .unwrap_or(0)
                .min(store["capacity_bytes"].as_u64().unwrap_or(0));
        room < padding.len() as u64
    };
    for _ in 0..30 {
        store = get(&sidecar.admin_url("/admin/store")).await.json();
        if store["answering"] == false || store["paused_for_space"] == true || too_small(&store) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store["paused_for_space"] == true
            || too_small(&store)
            || store["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("No space left"),
        "{store}"
    );
    std::fs::remove_file(filler).unwrap();
    // No restart: the writer finds the space again by itself.
    let mut resumed = false;
    for n in 0..100 {
        if post_stripe(&sidecar, &format!("evt_after_{n}"))
            .await
            .status
            == 202
        {
            acknowledged.push(format!("evt_after_{n}"));
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "acceptance resumed once space came back");
    // Everything acknowledged is delivered: nothing was lost.
    eventually(
        Duration::from_secs(20),
        "every acknowledged event delivered",
        || {
            let delivered: std::collections::HashSet<String> = target
                .requests()
                .iter()
                .map(|s| s.headers["x-event-id"].clone())
                .collect();
            acknowledged.iter().all(|id| delivered.contains(id))
        },
    )
    .await;
}

/// SIGTERM while webhooks wait for their durable write: the sidecar waits
/// for them (they count as in flight) and each gets a whole answer, 202
/// once the write lands, never a reset.
#[tokio::test]
async fn sigterm_lets_every_webhook_waiting_for_its_write_finish_with_an_answer() {
    let redis = RedisServer::start();
    let mut sidecar = Sidecar::start(&format!(
        "drain_delay: 100ms\nshutdown_grace: 10s\n{}",
        config(&format!(
            "{{ kind: redis, url: {}, prefix: test }}",
            redis.url()
        ))
    ));
    redis.freeze();
    let ingress = sidecar.ingress;
    let waiting: Vec<_> = (0..5)
        .map(|n| {
            tokio::spawn(async move {
                let body = format!(r#"{{"id":"evt_term_{n}","type":"t"}}"#);
                let signature = stripe_signature_with(SECRET, body.as_bytes());
                try_send(
                    &format!("http://{ingress}/webhooks/stripe"),
                    &[("stripe-signature", signature.as_str())],
                    body.into_bytes(),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.signal("TERM");
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.thaw();
    let mut statuses = Vec::new();
    for request in waiting {
        statuses.push(request.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == Some(202)),
        "every waiting webhook got its answer: {statuses:?}"
    );
    let exit = tokio::task::spawn_blocking(move || sidecar.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A job whose event body vanished from the store is never delivered empty
/// nor acked as delivered: it becomes a dead letter `event_missing`.
#[tokio::test]
async fn a_job_whose_body_is_gone_becomes_a_dead_letter_event_missing() {
    let redis = RedisServer::start();
    let target = MockServer::start(|_| MockAnswer::status(503, "not yet")).await;
    let body = format!(
        "store: {{ kind: redis, url: {}, prefix: test }}\nupstreams:\n  notify: {{ backends: [{}] }}\nwebhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: {{ kind: stripe, secrets: [{SECRET}] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n    delivery: {{ backoff: {{ initial: 200ms, max: 200ms }} }}\n",
        redis.url(),
        target.addr
    );
    let sidecar = Sidecar::start(&body);
    assert_eq!(post_stripe(&sidecar, "evt_vanishing").await.status, 202);
    eventually(Duration::from_secs(5), "a first attempt", || {
        !target.requests().is_empty()
    })
    .await;
    for bodies in redis.keys("test:bodies:*") {
        redis.cli(&["DEL", &bodies]);
    }
    let letter = loop {
        let list = get(&sidecar.admin_url("/admin/dead-letters")).await.json();
        if let Some(item) = list["items"].as_array().and_then(|items| items.first()) {
            break item.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter["reason"], "event_missing");
    assert_eq!(letter["event_id"], "evt_vanishing");
    assert!(
        target.requests().iter().all(|seen| seen.body_len > 0),
        "never sent empty"
    );
    sidecar
        .metrics_containing(&[
            "sidecar_dead_lettered_total{reason=\"event_missing\",webhook=\"stripe\"} 1",
        ])
        .await;
}

/// A job record that no longer decodes (here garbled in Redis by hand) is
/// set aside as a dead letter `corrupt` with what could be read of it; the
/// other events of the same lease are delivered.
#[tokio::test]
async fn an_unreadable_job_record_is_set_aside_and_the_others_are_delivered() {
    let redis = RedisServer::start();
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let holding = Arc::clone(&hold);
    let target = MockServer::start(move |_| {
        if holding.load(std::sync::atomic::Ordering::SeqCst) {
            MockAnswer::status(503, "not yet")
        } else {
            MockAnswer::status(204, "")
        }
    })
    .await;
    let body = format!(
        "store: {{ kind: redis, url: {}, prefix: test }}\nupstreams:\n  notify: {{ backends: [{}] }}\nwebhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: {{ kind: stripe, secrets: [{SECRET}] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n    delivery: {{ backoff: {{ initial: 3s, max: 3s }} }}\n",
        redis.url(),
        target.addr
    );
    let sidecar = Sidecar::start(&body);
    for id in ["evt_a", "evt_b", "evt_c"] {
        assert_eq!(post_stripe(&sidecar, id).await.status, 202);
    }
    // After a first failed attempt each job waits 1.5 to 3 s for its retry:
    // then job 2, evt_a's, has its record cut short.
    eventually(Duration::from_secs(5), "first attempts", || {
        target.requests().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let [(jobs, field, record)] = &redis.hash_fields_containing("test:jobs:*", "\"evt_a\"")[..]
    else {
        panic!("one job record of evt_a")
    };
    let cut = &record[..record.find("\"target\"").expect("a target field") + 9];
    redis.cli(&["HSET", jobs, field, cut]);
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    // Each job's retry falls due on its own (jittered): wait for all three.
    let deadline = Instant::now() + Duration::from_secs(10);
    let items = loop {
        let list = get(&sidecar.admin_url("/admin/dead-letters")).await.json();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let delivered: Vec<String> = target
            .requests()
            .iter()
            .filter(|s| s.headers["x-delivery-attempt"] == "2")
            .map(|s| s.headers["x-event-id"].clone())
            .collect();
        if !items.is_empty() && delivered.len() == 2 {
            assert_eq!(delivered.len(), 2, "{delivered:?}");
            assert!(!delivered.contains(&"evt_a".to_string()), "{delivered:?}");
            break items;
        }
        assert!(Instant::now() < deadline, "{list} {delivered:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["reason"], "corrupt");
    assert_eq!(items[0]["event_id"], "evt_a", "what could be read is kept");
    assert!(items[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("could not be read"));
}

/// A Redis that something else filled past `maxmemory` (noeviction): new
/// events are refused with `store_full`, and what was accepted before is
/// still leased, delivered and acked, although Redis refuses every other
/// write (each draining script may run over `maxmemory`).
#[tokio::test]
async fn a_redis_filled_past_maxmemory_by_others_refuses_new_events_and_still_drains() {
    let redis = RedisServer::start_with(&[
        "--enable-debug-command",
        "yes",
        "--maxmemory-policy",
        "noeviction",
    ]);
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let delivered = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let (up, seen) = (Arc::clone(&down), Arc::clone(&delivered));
    let target = MockServer::start(move |request| {
        if up.load(std::sync::atomic::Ordering::SeqCst) {
            return MockAnswer::status(503, "down");
        }
        if let Some(id) = request.headers.get("x-event-id") {
            seen.lock().unwrap().insert(id.clone());
        }
        MockAnswer::status(204, "")
    })
    .await;
    let sidecar = Sidecar::start(
        &Yaml::new()
            .with(format!(
                "store: {{ kind: redis, url: {}, prefix: test }}",
                redis.url()
            ))
            .upstream(
                "notify",
                format!(
                    "{{ backends: [{}], circuit_breaker: {{ failure_threshold: 1000 }} }}",
                    target.addr
                ),
            )
            .stripe_webhook(&[
                "routes: [{ events: [\"*\"], targets: [notify] }]",
                "delivery: { max_attempts: 1000, backoff: { initial: 100ms, max: 300ms } }",
            ])
            .build(),
    );
    let ids: Vec<String> = (0..20).map(|n| format!("evt_before_{n}")).collect();
    for id in &ids {
        assert_eq!(post_stripe(&sidecar, id).await.status, 202);
    }
    // Someone else's data, then a maxmemory below what Redis holds.
    redis.cli(&["DEBUG", "POPULATE", "40000", "others", "128"]);
    let used: u64 = redis
        .info("memory")
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let limit = (used - 512 * 1024).to_string();
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory", &limit]).trim(),
        "OK"
    );
    assert!(
        redis.cli(&["SET", "plain", "write"]).contains("OOM"),
        "Redis refuses ordinary writes now"
    );
    let mut refusal = None;
    for n in 0..50 {
        let answer = post_stripe(&sidecar, &format!("evt_over_{n}")).await;
        assert_ne!(answer.status, 202, "accepted over maxmemory");
        if answer.headers.get("x-sidecar-error").map(String::as_str) == Some("store_full") {
            refusal = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusal = refusal.expect("new events are refused with store_full");
    assert_eq!(refusal.status, 503);
    assert_eq!(refusal.headers["retry-after"], "30");
    // Measured within a second (the first refusal may be Redis' own OOM).
    let mut store = serde_json::Value::Null;
    for _ in 0..30 {
        store = get(&sidecar.admin_url("/admin/store")).await.json();
        if store["paused_for_space"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store["paused_for_space"], true, "{store}");
    assert!(
        store["used_bytes"].as_u64() > store["capacity_bytes"].as_u64(),
        "{store}"
    );
    // The target comes back: every event accepted before is delivered.
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    // (The target's breaker opened while it failed: up to 10 s to probe.)
    eventually(
        Duration::from_secs(40),
        "every earlier event delivered",
        || {
            let delivered = delivered.lock().unwrap();
            ids.iter().all(|id| delivered.contains(id))
        },
    )
    .await;
    // Acked too: nothing is left in the queue.
    sidecar
        .metrics_until("every delivery acked", Duration::from_secs(10), |text| {
            text.contains("sidecar_queue_depth{priority=\"normal\"} 0")
                && text.contains(
                    "sidecar_deliveries_total{outcome=\"delivered\",target=\"notify\",webhook=\"stripe\"} 20",
                )
        })
        .await;
    drop(target);
}
