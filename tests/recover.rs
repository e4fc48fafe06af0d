//! Gap repair against a fake Stripe and a fake GitHub written from their
//! API references (`support::fake_stripe`, `support::fake_github`), with
//! the real binary: events the provider sent while the sidecar was down
//! are fetched back (Stripe) or sent again by the provider (GitHub)
//! through the egress service and delivered exactly once, whether or not
//! the provider also retries them; a run cut short by a 429 is done again
//! from the checkpoint; two replicas on one Redis recover once.

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

/// `sidecar_recovered_events_total` of `webhook` and `outcome`.
fn counter(metrics: &str, webhook: &str, outcome: &str) -> u64 {
    let series =
        format!("sidecar_recovered_events_total{{outcome=\"{outcome}\",webhook=\"{webhook}\"}}");
    Sidecar::metric_value(metrics, &series) as u64
}

/// Each of `ids` reached the target exactly once.
fn assert_each_delivered_once(counts: &HashMap<String, usize>, ids: &[String]) {
    for id in ids {
        assert_eq!(counts.get(id), Some(&1), "{id} delivered exactly once");
    }
}

/// The provider retries `ids` itself: each is taken (or a duplicate).
async fn retried_by_provider(sidecar: &Sidecar, ids: &[String]) {
    for id in ids {
        let status = post_stripe(sidecar, id).await.status;
        assert!(status == 202 || status == 200, "{status}");
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
    retried_by_provider(&sidecar, &ids[..10]).await;
    wait_for("all 50 delivered", Duration::from_secs(20), || {
        delivered(&target).0.len() == 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (counts, recovered) = delivered(&target);
    assert_each_delivered_once(&counts, &ids);
    assert_eq!(counts.len(), 50, "nothing else: {counts:?}");
    let recovered_count = ids.iter().filter(|id| recovered[*id]).count();
    assert!(
        recovered_count >= 40,
        "the 40 not retried came from the API: {recovered_count}"
    );
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    let counter = |outcome: &str| counter(&metrics, "stripe", outcome);
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
    assert_each_delivered_once(&counts, &ids);
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
    assert_each_delivered_once(&counts, &ids);
    let accepted = |metrics: &str| counter(metrics, "stripe", "accepted");
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

const GITHUB_TOKEN: &str = "ghs_recover_installation_token";
const GITHUB_SECRET: &str = "github-hook-secret-0123456789";
const APP_ID: &str = "424242";
/// A key made for the tests only (`openssl genrsa -traditional 2048`).
const APP_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/github_app_test_key.pem"
);
const APP_PUBLIC: &[u8] = include_bytes!("fixtures/github_app_test_key.pub.der");

/// The GitHub webhook on `/webhooks/github`, recovering through
/// `github-api` (authenticated by `auth`) from `hook`.
fn github_webhook(yaml: Yaml, github: &FakeGitHub, auth: &str, hook: &str, every: &str) -> Yaml {
    yaml.service("github-api", "/github", &github.url(), &[&format!("auth: {auth}")])
        .webhook(
            "github",
            &[
                "path: /webhooks/github",
                &format!("verify: {{ kind: github, secrets: [{GITHUB_SECRET}] }}"),
                "routes: [{ events: [\"issues.*\", \"push\"], targets: [notify] }]",
                &format!("recover: {{ kind: github_deliveries, service: github-api, hook: {hook}, every: {every} }}"),
            ],
        )
}

fn issue(n: usize) -> String {
    format!(r#"{{"action":"opened","issue":{{"number":{n}}}}}"#)
}

#[tokio::test]
async fn github_sends_again_each_failed_delivery_the_store_lacks_once_marked_recovered() {
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let hook = "/repos/wedsync/app/hooks/7";
    let github = FakeGitHub::start(hook, GITHUB_TOKEN, GITHUB_SECRET, "http://127.0.0.1:9/").await;
    let yaml = Yaml::new()
        .with("drain_delay: 0s")
        .upstream("notify", format!("{{ backends: [{}] }}", target.addr));
    let auth = format!("{{ kind: bearer, token: {GITHUB_TOKEN} }}");
    let sidecar = Sidecar::start(
        &github_webhook(yaml, &github, &auth, "repos/wedsync/app/hooks/7", "1h").build(),
    );
    github.set_target(&format!("http://{}/webhooks/github", sidecar.ingress));
    sidecar
        .metrics_until("the run at start", Duration::from_secs(10), |m| {
            m.contains("sidecar_recover_runs_total{outcome=\"ok\",webhook=\"github\"} 1")
        })
        .await;
    // Taken, but GitHub gave up waiting for the answer: it lists a failure.
    let taken = github.send_event("issues", &issue(0)).await;
    github.mark_failed(&taken);
    // The sidecar refused these (a full store, a restart): GitHub keeps the failures.
    let failed: Vec<String> = (1..=20)
        .map(|n| github.failed_event("issues", &issue(n), 503))
        .collect();
    let unrouted = github.failed_event("star", r#"{"action":"created"}"#, 503);
    let url = sidecar.admin_url("/admin/webhooks/github/recover");
    let json = [("content-type", "application/json")];
    let dry = send(
        "POST",
        &format!("{url}?dry_run=true"),
        &json,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", dry.text());
    let report = &dry.json()["report"];
    assert_eq!(
        (
            &report["found"],
            &report["requested"],
            &report["duplicate"],
            &report["skipped"]
        ),
        (&json!(22), &json!(20), &json!(1), &json!(1)),
        "{report}"
    );
    assert!(
        github.redeliveries_asked().is_empty(),
        "a dry run asks for nothing"
    );
    let run = send("POST", &url, &json, bytes::Bytes::new()).await;
    assert_eq!(run.status, 200, "{}", run.text());
    assert_eq!(run.json()["report"]["requested"], 20);
    assert_eq!(github.redeliveries_asked().len(), 20);
    wait_for("the 20 sent again", Duration::from_secs(10), || {
        delivered(&target).0.len() == 21
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (counts, recovered) = delivered(&target);
    for guid in &failed {
        assert_eq!(counts.get(guid), Some(&1), "{guid} delivered once");
        assert!(recovered[guid], "{guid} marked recovered");
    }
    assert_eq!(counts.get(&taken), Some(&1));
    assert!(!recovered[&taken], "arrived by itself");
    assert!(!counts.contains_key(&unrouted));
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    assert_eq!(counter(&metrics, "github", "accepted"), 20, "{metrics}");
    assert_eq!(counter(&metrics, "github", "duplicate"), 1);
    assert_eq!(counter(&metrics, "github", "skipped"), 1);
    let detail = get(&sidecar.admin_url(&format!("/admin/events/github/{}", failed[3]))).await;
    assert_eq!(detail.json()["recovered"], true);
    // Now GitHub lists a successful redelivery for each: nothing to ask.
    let again = send("POST", &url, &json, bytes::Bytes::new()).await;
    assert_eq!(again.json()["report"]["requested"], 0, "{}", again.text());
    assert_eq!(github.redeliveries_asked().len(), 20);
    // A failing API: the run says so, the checkpoint stays, the next one works.
    let listed = get(&sidecar.admin_url("/admin/webhooks")).await.json();
    let checkpoint = listed["webhooks"][0]["recover"]["checkpoint"].clone();
    github.fail_next(&[500]);
    let failed_run = send("POST", &url, &json, bytes::Bytes::new()).await;
    assert_eq!(failed_run.status, 502, "{}", failed_run.text());
    let listed = get(&sidecar.admin_url("/admin/webhooks")).await.json();
    let recover = &listed["webhooks"][0]["recover"];
    assert_eq!(recover["hook"], hook);
    assert_eq!(recover["outcome"], "failed");
    assert!(
        recover["error"].as_str().unwrap().contains("answered 500"),
        "{recover}"
    );
    assert_eq!(recover["checkpoint"], checkpoint);
    let ok = send("POST", &url, &json, bytes::Bytes::new()).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// The issue's "done when": the sidecar stopped for a while, a fake
/// Stripe and a fake GitHub (an app's hook, its JWT checked) sending
/// meanwhile; after the restart every event is delivered exactly once
/// within one `every`, and the metrics and the log say which were
/// recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stop_every_event_both_providers_sent_is_delivered_once_within_one_every() {
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let stripe = FakeStripe::start(KEY).await;
    let github =
        FakeGitHub::start_app(APP_ID, APP_PUBLIC, GITHUB_SECRET, "http://127.0.0.1:9/").await;
    let yaml = Yaml::new()
        .with("drain_delay: 0s")
        .upstream("notify", format!("{{ backends: [{}] }}", target.addr))
        .service(
            "stripe-api",
            "/stripe",
            &stripe.url(),
            &[&format!("auth: {{ kind: bearer, token: {KEY} }}")],
        )
        .stripe_webhook(&[
            "routes: [{ events: [\"payment_intent.*\"], targets: [notify] }]",
            "recover: { kind: stripe_events, service: stripe-api, every: 15s }",
        ]);
    let auth = format!("{{ kind: github_app, app_id: {APP_ID}, private_key: {APP_KEY} }}");
    let mut sidecar = Sidecar::start(&github_webhook(yaml, &github, &auth, "app", "15s").build());
    github.set_target(&format!("http://{}/webhooks/github", sidecar.ingress));
    sidecar
        .metrics_until("both runs at start", Duration::from_secs(10), |m| {
            m.contains("sidecar_recover_runs_total{outcome=\"ok\",webhook=\"github\"} 1")
                && m.contains("sidecar_recover_runs_total{outcome=\"ok\",webhook=\"stripe\"} 1")
        })
        .await;
    // While it is up: five of each arrive as webhooks.
    let mut github_sent = Vec::new();
    for n in 0..5 {
        github_sent.push(github.send_event("issues", &issue(n)).await);
    }
    for n in 0..5 {
        assert_eq!(
            post_stripe(&sidecar, &format!("evt_live_{n}")).await.status,
            202
        );
    }
    wait_for("the live ten delivered", Duration::from_secs(10), || {
        delivered(&target).0.len() == 10
    })
    .await;
    // Their outcomes recorded (a SIGKILL before that delivers them again).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Stopped: GitHub's deliveries fail to connect, Stripe's pile up.
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    for n in 5..30 {
        github_sent.push(github.send_event("issues", &issue(n)).await);
    }
    let github_missed = github_sent[5..].to_vec();
    assert!(
        github
            .deliveries()
            .iter()
            .filter(|d| d.status_code == 0)
            .count()
            == 25
    );
    let stripe_missed = undelivered(&stripe, "stopped", 25);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    sidecar.respawn();
    // Stripe retries five of them itself, racing the recovery.
    retried_by_provider(&sidecar, &stripe_missed[..5]).await;
    wait_for("all 60 delivered", Duration::from_secs(15), || {
        delivered(&target).0.len() == 60
    })
    .await;
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "within one `every`"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (counts, recovered) = delivered(&target);
    let mut expected: Vec<String> = github_sent.clone();
    expected.extend((0..5).map(|n| format!("evt_live_{n}")));
    expected.extend(stripe_missed.iter().cloned());
    assert_each_delivered_once(&counts, &expected);
    assert_eq!(counts.len(), 60, "nothing else");
    for guid in &github_missed {
        assert!(recovered[guid], "{guid} recovered");
    }
    assert!(github_sent[..5].iter().all(|g| !recovered[g]));
    let stripe_recovered = stripe_missed.iter().filter(|id| recovered[*id]).count();
    assert!(stripe_recovered >= 20, "{stripe_recovered}");
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    assert_eq!(counter(&metrics, "github", "accepted"), 25, "{metrics}");
    assert_eq!(
        counter(&metrics, "stripe", "accepted"),
        stripe_recovered as u64
    );
    assert_eq!(
        counter(&metrics, "stripe", "accepted") + counter(&metrics, "stripe", "duplicate"),
        25
    );
    // The event log says which were recovered.
    let recovered_only = get(&sidecar.admin_url("/admin/events?source=github&limit=100"))
        .await
        .json();
    let items = recovered_only["items"].as_array().unwrap();
    assert_eq!(items.len(), 30, "{recovered_only}");
    assert_eq!(items.iter().filter(|e| e["recovered"] == true).count(), 25);
    let detail =
        get(&sidecar.admin_url(&format!("/admin/events/stripe/{}", stripe_missed[10]))).await;
    assert_eq!(detail.json()["recovered"], true);
}
