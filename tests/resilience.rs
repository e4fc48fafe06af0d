//! Black-box tests of the egress resilience: circuit breaker, per-pod rate
//! limits (reject and wait) and provider back-pressure, with the real binary
//! and a scriptable mock provider.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn service(upstream: &str, extra: &str) -> String {
    format!("services:\n  stripe:\n    route: /stripe\n    upstream: {upstream}\n{extra}")
}

#[tokio::test]
async fn the_breaker_opens_after_failures_fails_fast_then_a_probe_closes_it() {
    let failing = Arc::new(AtomicBool::new(true));
    let state = Arc::clone(&failing);
    let upstream = MockServer::start(move |_| {
        if state.load(Ordering::SeqCst) {
            MockAnswer::status(503, "down")
        } else {
            MockAnswer::ok("up")
        }
    })
    .await;
    let sidecar = Sidecar::start(&service(
        &upstream.url(),
        "    circuit_breaker: { failure_threshold: 3, open_for: 1s, half_open_probes: 1 }\n",
    ));
    for _ in 0..3 {
        let answer = get(&sidecar.egress_url("/stripe/x")).await;
        assert_eq!(answer.status, 503);
        assert!(
            !answer.headers.contains_key("x-sidecar-error"),
            "the provider's own 503 passes through"
        );
    }
    // The breaker hears of the third failure once the request is logged.
    sidecar
        .metrics_containing(&["sidecar_circuit_state{egress_service=\"stripe\"} 2"])
        .await;
    let answer = get(&sidecar.egress_url("/stripe/x")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["x-sidecar-error"], "circuit_open");
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(
        answer.json()["type"],
        "urn:wedsync-sidecar:error:circuit_open"
    );
    assert_eq!(upstream.requests().len(), 3, "an open breaker calls nobody");

    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let probe = get(&sidecar.egress_url("/stripe/x")).await;
    assert_eq!((probe.status, probe.text().as_str()), (200, "up"));
    sidecar
        .metrics_containing(&[
            "sidecar_circuit_state{egress_service=\"stripe\"} 0",
            "sidecar_circuit_transitions_total{egress_service=\"stripe\",to=\"open\"} 1",
            "sidecar_circuit_transitions_total{egress_service=\"stripe\",to=\"half_open\"} 1",
            "sidecar_circuit_transitions_total{egress_service=\"stripe\",to=\"closed\"} 1",
            "sidecar_egress_rejected_total{egress_service=\"stripe\",reason=\"circuit_open\"} 1",
        ])
        .await;
    for _ in 0..3 {
        assert_eq!(get(&sidecar.egress_url("/stripe/x")).await.status, 200);
    }
    let services = get(&sidecar.admin_url("/admin/services")).await.json();
    assert_eq!(
        services["services"][0]["circuit_breaker"]["state"],
        "closed"
    );
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let upstream = MockServer::start(|_| MockAnswer::status(500, "down")).await;
    let sidecar = Sidecar::start(&service(
        &upstream.url(),
        "    circuit_breaker: { failure_threshold: 1, open_for: 500ms }\n",
    ));
    assert_eq!(get(&sidecar.egress_url("/stripe/x")).await.status, 500);
    sidecar
        .metrics_containing(&["sidecar_circuit_state{egress_service=\"stripe\"} 2"])
        .await;
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(get(&sidecar.egress_url("/stripe/x")).await.status, 500);
    sidecar
        .metrics_containing(&[
            "sidecar_circuit_state{egress_service=\"stripe\"} 2",
            "sidecar_circuit_transitions_total{egress_service=\"stripe\",to=\"open\"} 2",
        ])
        .await;
    let answer = get(&sidecar.egress_url("/stripe/x")).await;
    assert_eq!(answer.headers["x-sidecar-error"], "circuit_open");
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn the_rate_limit_refuses_at_the_exact_count_with_ratelimit_fields() {
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let sidecar = Sidecar::start(&service(
        &upstream.url(),
        "    rate_limit: { requests: 3, per: 1m }\n",
    ));
    for remaining in [2, 1, 0] {
        let answer = get(&sidecar.egress_url("/stripe/x")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["ratelimit-policy"], "\"stripe\";q=3;w=60");
        let current = answer.headers["ratelimit"].clone();
        assert!(
            current.starts_with(&format!("\"stripe\";r={remaining};t=")),
            "{current}"
        );
    }
    let answer = get(&sidecar.egress_url("/stripe/x")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers["x-sidecar-error"], "rate_limited");
    assert_eq!(answer.headers["retry-after"], "20");
    assert_eq!(answer.headers["ratelimit"], "\"stripe\";r=0;t=20");
    assert_eq!(answer.headers["ratelimit-policy"], "\"stripe\";q=3;w=60");
    assert_eq!(upstream.requests().len(), 3);
    sidecar
        .metrics_containing(&[
            "sidecar_egress_rejected_total{egress_service=\"stripe\",reason=\"rate_limited\"} 1",
            "sidecar_egress_requests_total{code=\"429\",egress_service=\"stripe\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn wait_mode_spreads_a_burst_within_max_wait_and_refuses_the_rest() {
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let sidecar = Sidecar::start(&service(
        &upstream.url(),
        "    rate_limit: { requests: 10, per: 1s, burst: 1, on_limit: wait, max_wait: 500ms }\n",
    ));
    let started = Instant::now();
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(get(&sidecar.egress_url("/stripe/x"))))
        .collect();
    let mut statuses = Vec::new();
    for request in burst {
        statuses.push(request.await.unwrap().status);
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    // One at once, then one every 100 ms for up to 500 ms: six.
    assert_eq!((passed, limited), (6, 4), "{statuses:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_secs(5),
        "the last one waited its 500 ms slot: {took:?}"
    );
    assert_eq!(upstream.requests().len(), 6);
}

#[tokio::test]
async fn a_provider_429_with_retry_after_pauses_calls_to_it() {
    let upstream =
        MockServer::start(|_| MockAnswer::status(429, "slow down").header("retry-after", "2"))
            .await;
    let sidecar = Sidecar::start(&service(&upstream.url(), ""));
    let answer = get(&sidecar.egress_url("/stripe/x")).await;
    assert_eq!(answer.status, 429);
    assert!(!answer.headers.contains_key("x-sidecar-error"));
    let answer = get(&sidecar.egress_url("/stripe/x")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers["x-sidecar-error"], "provider_throttled");
    assert_eq!(answer.headers["retry-after"], "2");
    assert_eq!(
        upstream.requests().len(),
        1,
        "the paused provider is not called"
    );
    tokio::time::sleep(Duration::from_millis(2050)).await;
    get(&sidecar.egress_url("/stripe/x")).await;
    assert_eq!(
        upstream.requests().len(),
        2,
        "called again once the pause is over"
    );
}

/// A provider that answers 503 to its first `failures` requests, then 200.
async fn failing_first(failures: u32) -> MockServer {
    let seen = Arc::new(AtomicU32::new(0));
    MockServer::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < failures {
            MockAnswer::status(503, "busy")
        } else {
            MockAnswer::ok("done")
        }
    })
    .await
}

const RETRY: &str =
    "    retry: { attempts: 3, retry_on: [connect_error, 503], backoff: { initial: 10ms, max: 50ms } }\n";

#[tokio::test]
async fn safe_requests_are_retried_and_posts_only_with_an_idempotency_key() {
    let upstream = failing_first(2).await;
    let sidecar = Sidecar::start(&service(&upstream.url(), RETRY));
    let answer = get(&sidecar.egress_url("/stripe/v1/customers")).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "done"));
    assert_eq!(upstream.requests().len(), 3, "two retries of a GET");

    let upstream = failing_first(2).await;
    let sidecar = Sidecar::start(&service(&upstream.url(), RETRY));
    let answer = send(
        "POST",
        &sidecar.egress_url("/stripe/v1/charges"),
        &[],
        bytes::Bytes::from("amount=100"),
    )
    .await;
    assert_eq!(answer.status, 503, "a POST without a key is never repeated");
    assert_eq!(upstream.requests().len(), 1);
    let answer = send(
        "POST",
        &sidecar.egress_url("/stripe/v1/charges"),
        &[("idempotency-key", "app-key-1")],
        bytes::Bytes::from("amount=100"),
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "the keyed POST is retried past the second 503"
    );
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test]
async fn auto_idempotency_keys_are_the_same_on_every_attempt_with_the_same_body() {
    let upstream = failing_first(2).await;
    let sidecar = Sidecar::start(&service(
        &upstream.url(),
        &format!("{RETRY}    idempotency_key: auto\n"),
    ));
    let body = bytes::Bytes::from("amount=100&currency=eur");
    let answer = send(
        "POST",
        &sidecar.egress_url("/stripe/v1/charges"),
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    let key = &seen[0].headers["idempotency-key"];
    assert_eq!(key.len(), 36, "a UUID: {key}");
    for attempt in &seen {
        assert_eq!(&attempt.headers["idempotency-key"], key);
        assert_eq!(attempt.body, body, "the body is sent again whole");
    }
    // A second POST gets its own key; an app's own key is kept.
    send(
        "POST",
        &sidecar.egress_url("/stripe/v1/charges"),
        &[],
        body.clone(),
    )
    .await;
    send(
        "POST",
        &sidecar.egress_url("/stripe/v1/charges"),
        &[("idempotency-key", "app-key-7")],
        body,
    )
    .await;
    let seen = upstream.requests();
    assert_ne!(&seen[3].headers["idempotency-key"], key);
    assert_eq!(seen[4].headers["idempotency-key"], "app-key-7");
}

#[tokio::test]
async fn the_retry_budget_holds_when_every_request_fails() {
    let upstream = MockServer::start(|_| MockAnswer::status(503, "down")).await;
    let sidecar = Sidecar::start(&service(
        &upstream.url(),
        "    retry: { attempts: 3, retry_on: [503], budget: 0%, backoff: { initial: 1ms, max: 2ms } }\n",
    ));
    for _ in 0..50 {
        assert_eq!(get(&sidecar.egress_url("/stripe/x")).await.status, 503);
    }
    // With a 0% budget only the floor is left: 3 retries a second over 10 s.
    assert_eq!(upstream.requests().len(), 50 + 30);
}
