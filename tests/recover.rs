//! Gap repair against a fake Stripe written from its API reference
//! (`support::fake_stripe`), with the real binary: events the provider
//! sent while the sidecar was down are fetched back through the egress
//! service and delivered exactly once, whether or not the provider also
//! retries them; a run cut short by a 429 is done again from the
//! checkpoint; two replicas on one Redis recover once.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const KEY: &str = "sk_test_recover_0123456789";

fn config(stripe: &FakeStripe, target: &MockServer, store: Option<&str>) -> String {
    let mut yaml = Yaml::new().with("drain_delay: 0s");
    if let Some(store) = store {
        yaml = yaml.with(store);
    }
    yaml.upstream("notify", format!("{{ backends: [{}] }}", target.addr))
        .service(
            "stripe-api",
            "/stripe",
            &stripe.url(),
            &[&format!("auth: {{ kind: bearer, token: {KEY} }}")],
        )
        .stripe_webhook(&[
            "routes: [{ events: [\"payment_intent.*\", \"charge.*\"], targets: [notify] }]",
            "recover: { kind: stripe_events, service: stripe-api, every: 10s, api_version: \"2024-06-20\" }",
        ])
        .build()
}

/// Deliveries per event id, and which said they were recovered.
fn delivered(target: &MockServer) -> (HashMap<String, usize>, HashMap<String, bool>) {
    let mut counts = HashMap::new();
    let mut recovered = HashMap::new();
    for seen in target.requests() {
        let Some(id) = seen.headers.get("x-event-id") else {
            continue;
        };
        *counts.entry(id.clone()).or_default() += 1;
        recovered.insert(
            id.clone(),
            seen.headers.get("x-webhook-recovered").map(String::as_str) == Some("true"),
        );
    }
    (counts, recovered)
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_s() -> u64 {
    wedsync_sidecar::time::unix_time().as_secs()
}

/// `n` payment events the provider could not deliver, one a second up to
/// a minute ago.
fn undelivered(stripe: &FakeStripe, prefix: &str, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("evt_{prefix}_{i}");
            stripe.add_event(
                &id,
                "payment_intent.succeeded",
                now_s() - 60 - (n - i),
                "2024-06-20",
                1,
                json!({ "id": format!("pi_{i}"), "object": "payment_intent" }),
            );
            id
        })
        .collect()
}

// Two threads: the CLI below blocks one while the fake Stripe answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_provider_sent_while_the_sidecar_was_down_is_delivered_exactly_once() {
    let stripe = FakeStripe::start(KEY).await;
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    // The sidecar is down: 50 events the provider could not deliver...
    let ids = undelivered(&stripe, "down", 50);
    // ...one it did deliver, one no route takes, one of another API version.
    stripe.add_event(
        "evt_delivered",
        "payment_intent.succeeded",
        now_s() - 30,
        "2024-06-20",
        0,
        json!({}),
    );
    stripe.add_event(
        "evt_customer",
        "customer.created",
        now_s() - 30,
        "2024-06-20",
        1,
        json!({}),
    );
    stripe.add_event(
        "evt_old_version",
        "charge.refunded",
        now_s() - 30,
        "2020-08-27",
        1,
        json!({}),
    );
    let sidecar = Sidecar::start(&config(&stripe, &target, None));
    // The provider retries ten of them now that the sidecar is back.
    for id in &ids[..10] {
        let status = post_stripe(&sidecar, id).await.status;
        assert!(status == 202 || status == 200, "{status}");
    }
    wait_for("all 50 delivered", Duration::from_secs(20), || {
        delivered(&target).0.len() == 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (counts, recovered) = delivered(&target);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} delivered exactly once");
    }
    assert_eq!(counts.len(), 50, "nothing else: {counts:?}");
    let recovered_count = ids.iter().filter(|id| recovered[*id]).count();
    assert!(
        recovered_count >= 40,
        "the 40 not retried came from the API: {recovered_count}"
    );
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    let counter = |outcome: &str| -> u64 {
        let line =
            format!("sidecar_recovered_events_total{{outcome=\"{outcome}\",webhook=\"stripe\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(counter("accepted") + counter("duplicate"), 50, "{metrics}");
    assert_eq!(counter("accepted"), recovered_count as u64);
    assert_eq!(
        counter("skipped"),
        2,
        "another type and another API version"
    );
    assert!(
        metrics.contains("sidecar_recover_runs_total{outcome=\"ok\",webhook=\"stripe\"} 1"),
        "{metrics}"
    );
    // The event log says which were recovered.
    let recovered_id = ids.iter().find(|id| recovered[*id]).unwrap();
    let detail = get(&sidecar.admin_url(&format!("/admin/events/stripe/{recovered_id}"))).await;
    assert_eq!(detail.json()["recovered"], true);
    let retried = ids[..10].iter().find(|id| !recovered[*id]).unwrap();
    let detail = get(&sidecar.admin_url(&format!("/admin/events/stripe/{retried}"))).await;
    assert_eq!(detail.json()["recovered"], false);
    // The API was called through the egress service, with its credentials.
    assert!(stripe.list_calls() >= 3, "25 a page");
    // The last run, as /admin/webhooks shows it.
    let listed = get(&sidecar.admin_url("/admin/webhooks")).await.json();
    let recover = &listed["webhooks"][0]["recover"];
    assert_eq!(recover["kind"], "stripe_events");
    assert_eq!(recover["outcome"], "ok");
    assert_eq!(recover["error"], serde_json::Value::Null);
    assert_eq!(recover["last"]["found"], 52, "{listed}");
    assert!(recover["checkpoint"].as_str().unwrap().starts_with("20"));
    let overview = get(&sidecar.admin_url("/admin/overview")).await.json();
    assert_eq!(overview["recover"][0]["webhook"], "stripe");
    assert_eq!(overview["recover"][0]["outcome"], "ok");
    // `recover --dry-run` lists and counts again, storing nothing.
    let calls = stripe.list_calls();
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["recover", "stripe", "--since", "2h", "--dry-run", "-c"])
        .arg(sidecar.config_with_bound_ports())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        printed.starts_with("stripe: 52 undelivered events listed since ")
            && printed.contains("50 to accept, 0 already stored, 2 skipped")
            && printed.contains("a dry run"),
        "{printed}"
    );
    assert!(stripe.list_calls() > calls);
    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["recover", "resend", "-c"])
        .arg(sidecar.config_with_bound_ports())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert_eq!(delivered(&target).0.len(), 50, "a dry run delivers nothing");
}

#[tokio::test]
async fn a_run_cut_short_by_a_429_is_done_again_from_the_checkpoint() {
    let stripe = FakeStripe::start(KEY).await;
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let ids = undelivered(&stripe, "cut", 60);
    // The first run's second page is refused.
    stripe.fail_list_call(2, 429);
    let sidecar = Sidecar::start(&config(&stripe, &target, None));
    sidecar
        .metrics_until("a failed run", Duration::from_secs(10), |m| {
            m.contains("sidecar_recover_runs_total{outcome=\"failed\",webhook=\"stripe\"} 1")
        })
        .await;
    let (counts, _) = delivered(&target);
    assert!(counts.len() <= 25, "only the first page before the 429");
    // The next run (10 s later) lists the same window again.
    wait_for("all 60 delivered", Duration::from_secs(25), || {
        delivered(&target).0.len() == 60
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (counts, _) = delivered(&target);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} delivered exactly once");
    }
    sidecar
        .metrics_containing(&["sidecar_recover_runs_total{outcome=\"ok\",webhook=\"stripe\"} 1"])
        .await;
}

#[tokio::test]
async fn two_replicas_on_one_redis_recover_each_event_once() {
    let redis = RedisServer::start();
    let stripe = FakeStripe::start(KEY).await;
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let ids = undelivered(&stripe, "replicas", 40);
    let store = format!("store: {{ kind: redis, url: {} }}", redis.url());
    let a = Sidecar::start(&config(&stripe, &target, Some(&store)));
    let b = Sidecar::start(&config(&stripe, &target, Some(&store)));
    wait_for("all 40 delivered", Duration::from_secs(20), || {
        delivered(&target).0.len() == 40
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (counts, _) = delivered(&target);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} delivered exactly once");
    }
    let accepted = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "sidecar_recovered_events_total{outcome=\"accepted\",webhook=\"stripe\"} ",
                )
            })
            .map_or(0, |n| n.parse().unwrap())
    };
    let (ma, mb) = (
        get(&a.admin_url("/metrics")).await.text(),
        get(&b.admin_url("/metrics")).await.text(),
    );
    assert_eq!(
        accepted(&ma) + accepted(&mb),
        40,
        "each event accepted by one replica"
    );
}

/// The schedule's run and an operator's never run at once in one sidecar:
/// while one lists (a slow API), the other is refused with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_at_a_time_per_webhook_in_a_sidecar() {
    let stripe = FakeStripe::start(KEY).await;
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    undelivered(&stripe, "slow", 3);
    stripe.slow(Duration::from_millis(1500));
    let sidecar = Sidecar::start(&config(&stripe, &target, None));
    // The run at start is listing now.
    wait_for("the run at start", Duration::from_secs(10), || {
        stripe.list_calls() >= 1
    })
    .await;
    let json = [("content-type", "application/json")];
    let url = sidecar.admin_url("/admin/webhooks/stripe/recover");
    let busy = send("POST", &url, &json, bytes::Bytes::new()).await;
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert_eq!(busy.headers["x-sidecar-error"], "conflict");
    wait_for("the run at start to end", Duration::from_secs(10), || {
        delivered(&target).0.len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = send("POST", &url, &json, bytes::Bytes::new()).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["report"]["duplicate"], 3);
}
