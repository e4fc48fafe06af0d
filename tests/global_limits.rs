//! Rate limits shared by replicas through a real Redis (a private
//! `redis-server` on a free port): two sidecar processes let through the
//! limit in total, fall back per `on_store_error` while Redis is down, go
//! back to the shared budget when it returns, and share a provider's pause.

mod support;

use std::time::Duration;

use support::*;

fn config(redis: &RedisServer, upstream: &MockServer, limit: &str) -> String {
    Yaml::new()
        .with(format!(
            "store: {{ kind: redis, url: {}, prefix: test }}",
            redis.url()
        ))
        .service(
            "stripe",
            "/stripe",
            &upstream.url(),
            &[&format!(
                "rate_limit: {{ requests: {limit}, per: 1m, scope: global }}"
            )],
        )
        .build()
}

async fn statuses(sidecar: &Sidecar, count: usize) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..count {
        seen.push(get(&sidecar.egress_url("/stripe/x")).await.status);
    }
    seen
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn two_replicas_share_one_budget() {
    let redis = RedisServer::start();
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let body = config(&redis, &upstream, "10");
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    let mut all = Vec::new();
    for _ in 0..8 {
        all.extend(statuses(&a, 1).await);
        all.extend(statuses(&b, 1).await);
    }
    assert_eq!((count(&all, 200), count(&all, 429)), (10, 6), "{all:?}");
    assert_eq!(
        upstream.requests().len(),
        10,
        "the limit holds in total, not per replica"
    );
    let refused = get(&b.egress_url("/stripe/x")).await;
    assert_eq!(refused.headers["x-sidecar-error"], "rate_limited");
    assert_eq!(refused.headers["retry-after"], "6");
    let services = get(&a.admin_url("/admin/services")).await.json();
    assert_eq!(services["services"][0]["rate_limit"]["scope"], "global");
}

#[tokio::test]
async fn a_redis_outage_falls_back_per_pod_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let body = config(&redis, &upstream, "3");
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    assert_eq!(statuses(&a, 2).await, [200, 200]);

    redis.kill();
    // on_store_error: local (the default): each replica limits on its own.
    assert_eq!(statuses(&a, 4).await, [200, 200, 200, 429]);
    assert_eq!(statuses(&b, 4).await, [200, 200, 200, 429]);
    a.metrics_containing(&["sidecar_store_errors_total{op=\"rate_limit\"}"])
        .await;

    redis.restart();
    // Failed calls make a replica leave Redis alone for a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut all = statuses(&a, 2).await;
    all.extend(statuses(&b, 3).await);
    assert_eq!(all, [200, 200, 200, 429, 429], "one shared budget again");
}

#[tokio::test]
async fn on_store_error_deny_and_allow() {
    let mut redis = RedisServer::start();
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let deny = Sidecar::start(
        &config(&redis, &upstream, "1")
            .replace("scope: global", "scope: global, on_store_error: deny"),
    );
    let allow = Sidecar::start(
        &config(&redis, &upstream, "1")
            .replace("scope: global", "scope: global, on_store_error: allow"),
    );
    redis.kill();
    let answer = get(&deny.egress_url("/stripe/x")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["x-sidecar-error"], "store_unavailable");
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(
        statuses(&allow, 3).await,
        [200, 200, 200],
        "allow: no limit while Redis is down"
    );
}

#[tokio::test]
async fn a_stalled_redis_holds_an_egress_request_at_most_250ms() {
    let redis = RedisServer::start();
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let allow = Sidecar::start(
        &config(&redis, &upstream, "100")
            .replace("scope: global", "scope: global, on_store_error: allow"),
    );
    assert_eq!(statuses(&allow, 1).await, [200]);
    redis.freeze();
    let started = std::time::Instant::now();
    assert_eq!(statuses(&allow, 1).await, [200]);
    let waited = started.elapsed();
    redis.thaw();
    assert!(
        waited >= Duration::from_millis(240) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn a_providers_pause_reaches_every_replica() {
    let redis = RedisServer::start();
    let upstream =
        MockServer::start(|_| MockAnswer::status(429, "slow down").header("retry-after", "30"))
            .await;
    let body = config(&redis, &upstream, "100");
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    assert_eq!(get(&a.egress_url("/stripe/x")).await.status, 429);
    let answer = get(&b.egress_url("/stripe/x")).await;
    assert_eq!(answer.headers["x-sidecar-error"], "provider_throttled");
    let seconds: u64 = answer.headers["retry-after"].parse().unwrap();
    assert!((29..=30).contains(&seconds), "{seconds}");
    assert_eq!(
        upstream.requests().len(),
        1,
        "the other replica did not call the provider"
    );
}

#[tokio::test]
async fn pauses_are_announced_to_replicas_without_a_shared_limit_and_to_late_starters() {
    let redis = RedisServer::start();
    let upstream =
        MockServer::start(|_| MockAnswer::status(503, "maintenance").header("retry-after", "30"))
            .await;
    let body = format!(
        "store: {{ kind: redis, url: {}, prefix: test }}\nservices:\n  stripe:\n    route: /stripe\n    upstream: {}\n",
        redis.url(),
        upstream.url()
    );
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    b.log_containing("listening for provider pauses").await;
    assert_eq!(get(&a.egress_url("/stripe/x")).await.status, 503);
    // The announcement travels through Redis pub/sub; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let answer = get(&b.egress_url("/stripe/x")).await;
        if answer.headers.contains_key("x-sidecar-error") || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers["x-sidecar-error"], "provider_throttled");

    let late = Sidecar::start(&body);
    late.log_containing("listening for provider pauses").await;
    let answer = get(&late.egress_url("/stripe/x")).await;
    assert_eq!(answer.headers["x-sidecar-error"], "provider_throttled");
    assert_eq!(
        answer.headers["retry-after"].parse::<u64>().map(|s| s > 25),
        Ok(true)
    );
}

/// A provider's Retry-After of ten years pauses the service for
/// `max_pause` (15 minutes by default) at most: locally, in Redis for
/// every replica, and in the Retry-After the app is told.
#[tokio::test]
async fn a_ten_year_retry_after_pauses_every_replica_for_max_pause_at_most() {
    let redis = RedisServer::start();
    let upstream = MockServer::start(|_| {
        MockAnswer::status(429, "go away").header("retry-after", "315360000")
    })
    .await;
    let body = config(&redis, &upstream, "1000");
    let (a, b) = (Sidecar::start(&body), Sidecar::start(&body));
    assert_eq!(get(&a.egress_url("/stripe/x")).await.status, 429);
    let paused = get(&a.egress_url("/stripe/x")).await;
    assert_eq!(paused.headers["x-sidecar-error"], "provider_throttled");
    assert_eq!(paused.headers["retry-after"], "900");
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let left: i64 = redis::cmd("PTTL")
        .arg("test:pause:{stripe}")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((0..=900_000).contains(&left), "stored for {left} ms");
    // The other replica heard of it, capped the same way.
    let mut seen = 0;
    for _ in 0..50 {
        let answer = get(&b.egress_url("/stripe/x")).await;
        if answer.headers.get("x-sidecar-error").map(String::as_str) == Some("provider_throttled") {
            seen = answer.headers["retry-after"].parse::<u64>().unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((1..=900).contains(&seen), "{seen}");
    assert_eq!(
        upstream.requests().len(),
        1,
        "nobody called the provider again"
    );
}
