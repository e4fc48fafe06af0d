//! Black-box tests of the event log with the real binary and real mock
//! targets: 100 Stripe events to three targets (one answering 400, one
//! failing each event's first attempt), then every combination of filters
//! counted against what was sent, an event's detail with every attempt,
//! redelivery of one event and by filter (its dry run first), the log
//! across a SIGKILL, the CLI, and retention dropping only finished events.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use support::*;

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const EVENTS: usize = 100;

/// Event `n`: even ones are payments (to `ok` and `flaky`), odd ones
/// failed charges (to `ok` and `no`); wedding `w-<n % 4>`.
fn event_type(n: usize) -> &'static str {
    if n.is_multiple_of(2) {
        "payment_intent.succeeded"
    } else {
        "charge.failed"
    }
}

fn wedding(n: usize) -> String {
    format!("w-{}", n % 4)
}

async fn post(sidecar: &Sidecar, id: &str, event_type: &str, wedding: &str) -> u16 {
    let body = format!(
        r#"{{"id":"{id}","type":"{event_type}","data":{{"object":{{"metadata":{{"wedding_id":"{wedding}"}}}}}}}}"#
    );
    let signature = stripe_signature_with(SECRET, body.as_bytes());
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

async fn admin(sidecar: &Sidecar, method: &str, path: &str) -> Answer {
    let mut headers = vec![("authorization", format!("Bearer {ADMIN_TOKEN}"))];
    if method == "POST" {
        headers.push(("content-type", "application/json".to_string()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(method, &sidecar.admin_url(path), &headers, Bytes::new()).await
}

/// The three targets and the Stripe webhook's routes; `max_attempts` per
/// delivery. The flaky target's breaker never opens: its 503s are each
/// event's first attempt, not a backend in trouble.
fn config(
    ok: &MockServer,
    no: &MockServer,
    flaky: &MockServer,
    store: &str,
    max_attempts: u32,
) -> String {
    let delivery = format!(
        "delivery: {{ path: /events, timeout: 2s, max_attempts: {max_attempts}, backoff: {{ initial: 50ms, max: 100ms }} }}"
    );
    Yaml::new()
        .with(format!("admin: {{ token: {ADMIN_TOKEN} }}"))
        .with(store)
        .upstream("ok", format!("{{ backends: [{}] }}", ok.addr))
        .upstream("no", format!("{{ backends: [{}] }}", no.addr))
        .upstream(
            "flaky",
            format!(
                "{{ backends: [{}], circuit_breaker: {{ failure_threshold: 1000, min_requests: 1000 }} }}",
                flaky.addr
            ),
        )
        .stripe_webhook(&[
            "context: { wedding_id: /data/object/metadata/wedding_id }",
            "routes: [{ events: [\"payment_intent.*\"], targets: [ok, flaky] }, { events: [\"charge.*\"], targets: [ok, no] }, { events: [\"customer.*\"], targets: [ok] }]",
            &delivery,
        ])
        .build()
}

/// A target failing each event's first attempt with 503, then taking it.
async fn flaky_target() -> MockServer {
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    MockServer::start(move |seen| {
        let id = seen.headers.get("x-event-id").cloned().unwrap_or_default();
        let mut tries = tries.lock().unwrap();
        let n = tries.entry(id).or_default();
        *n += 1;
        if *n == 1 {
            MockAnswer::status(503, "try later")
        } else {
            MockAnswer::status(200, "got it")
        }
    })
    .await
}

fn seen_with(server: &MockServer, id: &str) -> Vec<Seen> {
    server
        .requests()
        .into_iter()
        .filter(|s| s.headers.get("x-event-id").map(String::as_str) == Some(id))
        .collect()
}

/// How many of the 100 events a filter should match: (status, target,
/// type, wedding), each optional.
fn expected(
    status: Option<&str>,
    target: Option<&str>,
    kind: Option<&str>,
    w: Option<&str>,
) -> usize {
    (0..EVENTS)
        .filter(|&n| {
            let payment = n.is_multiple_of(2);
            let targets: [(&str, &str); 2] = if payment {
                [("ok", "delivered"), ("flaky", "delivered")]
            } else {
                [("ok", "delivered"), ("no", "dead")]
            };
            let event_status = if payment { "delivered" } else { "partial" };
            let status_and_target = match (target, status) {
                (None, None) => true,
                (None, Some(s)) => s == event_status,
                (Some(t), s) => targets
                    .iter()
                    .any(|(name, st)| *name == t && s.is_none_or(|s| s == *st)),
            };
            let type_ok = kind.is_none_or(|k| event_type(n).starts_with(k.trim_end_matches('*')));
            status_and_target && type_ok && w.is_none_or(|w| wedding(n) == w)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_counts_shows_and_redelivers_exactly_what_was_sent() {
    counts_shows_and_redelivers("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_in_redis_counts_shows_and_redelivers_exactly_what_was_sent() {
    let redis = RedisServer::start();
    counts_shows_and_redelivers(&format!(
        "store: {{ kind: redis, url: {}, prefix: test }}\n",
        redis.url()
    ))
    .await;
}

/// The whole walk, on the embedded store (`store` empty) or the one given.
async fn counts_shows_and_redelivers(store: &str) {
    let ok = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let no =
        MockServer::start(|_| MockAnswer::status(400, "{\"error\":\"unknown wedding\"}")).await;
    let flaky = flaky_target().await;
    let mut sidecar = Sidecar::start(&config(
        &ok,
        &no,
        &flaky,
        &format!("{store}delivery: {{ workers: 8 }}"),
        5,
    ));
    for n in 0..EVENTS {
        assert_eq!(
            post(&sidecar, &format!("evt_{n}"), event_type(n), &wedding(n)).await,
            202
        );
    }
    eventually(Duration::from_secs(30), "every delivery settled", || {
        ok.requests().len() == EVENTS
            && no.requests().len() == EVENTS / 2
            && flaky.requests().len() == EVENTS
    })
    .await;
    // The last outcome is recorded just after its answer.
    let settled = || async {
        let page = admin(&sidecar, "GET", "/admin/events?status=pending")
            .await
            .json();
        page["items"].as_array().unwrap().is_empty()
    };
    for _ in 0..100 {
        if settled().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every combination of filters, counted against what was sent.
    let statuses = [
        None,
        Some("pending"),
        Some("delivered"),
        Some("dead"),
        Some("partial"),
    ];
    let targets = [None, Some("ok"), Some("no"), Some("flaky")];
    let kinds = [
        None,
        Some("charge.*"),
        Some("payment_intent.*"),
        Some("payment_intent.succeeded"),
    ];
    let weddings = [None, Some("w-1"), Some("w-2")];
    let mut tried = 0;
    for status in statuses {
        for target in targets {
            for kind in kinds {
                for w in weddings {
                    let mut query = vec!["limit=500".to_string(), "source=stripe".to_string()];
                    query.extend(status.map(|s| format!("status={s}")));
                    query.extend(target.map(|t| format!("target={t}")));
                    query.extend(kind.map(|k| format!("type={k}")));
                    query.extend(w.map(|w| format!("context.wedding_id={w}")));
                    let path = format!("/admin/events?{}", query.join("&"));
                    let page = admin(&sidecar, "GET", &path).await;
                    assert_eq!(page.status, 200, "{path}: {}", page.text());
                    let page = page.json();
                    let want = expected(status, target, kind, w);
                    assert_eq!(page["items"].as_array().unwrap().len(), want, "{path}");
                    assert_eq!(page["total_estimate"], want, "{path}");
                    tried += 1;
                }
            }
        }
    }
    assert_eq!(tried, 240);
    let none = admin(&sidecar, "GET", "/admin/events?source=resend")
        .await
        .json();
    assert_eq!(none["total_estimate"], 0);
    let old = admin(&sidecar, "GET", "/admin/events?until=2020-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(old["total_estimate"], 0);
    let recent = admin(&sidecar, "GET", "/admin/events?since=1h&limit=10")
        .await
        .json();
    assert_eq!(recent["items"].as_array().unwrap().len(), 10);
    assert_eq!(recent["items"][0]["id"], "evt_99", "newest first");
    let next = recent["next"].as_str().expect("a cursor to the next page");
    let page_two = admin(
        &sidecar,
        "GET",
        &format!("/admin/events?since=1h&limit=10&cursor={next}"),
    )
    .await
    .json();
    assert_eq!(page_two["items"][0]["id"], "evt_89");
    assert_eq!(
        admin(&sidecar, "GET", "/admin/events?status=lost")
            .await
            .status,
        400
    );
    assert_eq!(
        admin(&sidecar, "GET", "/admin/events?since=yesterday")
            .await
            .status,
        400
    );

    // The detail: headers with the signature redacted, the body, every
    // attempt per target with its status and the start of the answer.
    let detail = admin(&sidecar, "GET", "/admin/events/stripe/evt_0")
        .await
        .json();
    assert_eq!(detail["status"], "delivered");
    assert_eq!(detail["context"]["wedding_id"], "w-0");
    assert!(detail["body"].as_str().unwrap().contains("\"evt_0\""));
    let signature = detail["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "stripe-signature")
        .expect("the signature header is listed");
    assert_eq!(signature[1], "[redacted]");
    let target = |detail: &serde_json::Value, name: &str| -> serde_json::Value {
        detail["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {detail}"))
    };
    let flaky_attempts = target(&detail, "flaky")["attempts"].clone();
    assert_eq!(flaky_attempts.as_array().unwrap().len(), 2, "{detail}");
    assert_eq!(flaky_attempts[0]["status"], 503);
    assert_eq!(flaky_attempts[0]["response"], "try later");
    assert_eq!(flaky_attempts[1]["status"], 200);
    assert_eq!(flaky_attempts[1]["backend"], flaky.addr.to_string());
    let failed = admin(&sidecar, "GET", "/admin/events/stripe/evt_1")
        .await
        .json();
    assert_eq!(failed["status"], "partial");
    let dead = target(&failed, "no");
    assert_eq!(
        (
            dead["status"].as_str(),
            dead["attempts"][0]["status"].as_u64()
        ),
        (Some("dead"), Some(400))
    );
    assert_eq!(
        dead["attempts"][0]["response"],
        "{\"error\":\"unknown wedding\"}"
    );
    assert_eq!(
        admin(&sidecar, "GET", "/admin/events/stripe/evt_none")
            .await
            .status,
        404
    );

    // One event again, to one target: the same id, marked a redelivery.
    let one = admin(
        &sidecar,
        "POST",
        "/admin/events/stripe/evt_0/redeliver?target=ok",
    )
    .await;
    assert_eq!(
        (one.status, one.json()["queued"].as_u64()),
        (200, Some(1)),
        "{}",
        one.text()
    );
    eventually(Duration::from_secs(10), "evt_0 at ok again", || {
        seen_with(&ok, "evt_0").len() == 2
    })
    .await;
    let again = &seen_with(&ok, "evt_0")[1];
    assert_eq!(
        again.headers.get("x-redelivery").map(String::as_str),
        Some("true")
    );
    assert!(!seen_with(&ok, "evt_0")[0]
        .headers
        .contains_key("x-redelivery"));
    assert_eq!(
        seen_with(&flaky, "evt_0").len(),
        2,
        "only the target asked for"
    );

    // By filter: the dry run's count is what the run queues.
    let path = "/admin/events/redeliver?target=no&status=dead";
    let dry = admin(&sidecar, "POST", &format!("{path}&dry_run=true"))
        .await
        .json();
    assert_eq!(dry["matched"], EVENTS / 2);
    let over = admin(&sidecar, "POST", &format!("{path}&max=10")).await;
    assert_eq!(over.status, 400);
    assert!(over.text().contains("50"), "{}", over.text());
    assert_eq!(no.requests().len(), EVENTS / 2, "neither queued anything");
    let run = admin(&sidecar, "POST", path).await.json();
    assert_eq!(run["queued"], dry["matched"]);
    eventually(Duration::from_secs(20), "every dead one sent again", || {
        no.requests().len() == EVENTS
    })
    .await;
    let redelivered = no.requests()[EVENTS / 2..].to_vec();
    assert!(redelivered
        .iter()
        .all(|s| s.headers.get("x-redelivery").map(String::as_str) == Some("true")));

    // The CLI reads the same API.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
            .arg("events")
            .args(args)
            .arg("-c")
            .arg(sidecar.config_with_bound_ports())
            .output()
            .unwrap()
    };
    let listed = cli(&[
        "list",
        "--type",
        "charge.*",
        "--context",
        "wedding_id=w-1",
        "-o",
        "json",
    ]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let page: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        page["total_estimate"],
        expected(None, None, Some("charge.*"), Some("w-1"))
    );
    let shown = cli(&["show", "stripe", "evt_1"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["id"], "evt_1");
    let dry = cli(&["redeliver", "--all", "--status", "partial", "--dry-run"]);
    let said = String::from_utf8_lossy(&dry.stdout);
    assert!(said.starts_with("50 events match"), "{said}");

    // The log survives a SIGKILL.
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    sidecar.respawn();
    let all = admin(&sidecar, "GET", "/admin/events?limit=500")
        .await
        .json();
    assert_eq!(all["total_estimate"], EVENTS);
    let kept = admin(&sidecar, "GET", "/admin/events/stripe/evt_0")
        .await
        .json();
    assert_eq!(
        target(&kept, "ok")["attempts"].as_array().unwrap().len(),
        2,
        "{kept}"
    );
    let metrics = sidecar
        .metrics_until("the event log's gauges", Duration::from_secs(5), |text| {
            Sidecar::metric_value(text, "sidecar_store_history_events") == EVENTS as f64
        })
        .await;
    assert!(Sidecar::metric_value(&metrics, "sidecar_store_history_bytes") > 10_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_finished_events_and_keeps_dead_letters_and_pending_ones() {
    let data = unique_dir("retention");
    retention(&format!(
        "store:\n  path: {}\n  history: {{ retention: 1s }}",
        data.display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_in_redis_drops_finished_events_and_keeps_dead_letters_and_pending_ones() {
    let redis = RedisServer::start();
    retention(&format!(
        "store: {{ kind: redis, url: {}, prefix: test, history: {{ retention: 1s }} }}",
        redis.url()
    ))
    .await;
}

async fn retention(store: &str) {
    let ok = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let no = MockServer::start(|_| MockAnswer::status(400, "no")).await;
    // Down: its events stay pending.
    let flaky = MockServer::start(|_| MockAnswer::status(503, "down")).await;
    let sidecar = Sidecar::start(&config(&ok, &no, &flaky, store, 1000));
    for n in 0..4 {
        assert_eq!(
            post(&sidecar, &format!("evt_{n}"), event_type(n), "w-1").await,
            202
        );
    }
    eventually(
        Duration::from_secs(10),
        "delivered and dead-lettered",
        || ok.requests().len() == 4 && no.requests().len() == 2,
    )
    .await;
    // Retention runs every 5 s: the delivered-everywhere events would go,
    // but each here has a dead letter or a pending target.
    let list = |status: &'static str| {
        let sidecar = &sidecar;
        async move {
            admin(sidecar, "GET", &format!("/admin/events?status={status}"))
                .await
                .json()["total_estimate"]
                .as_u64()
                .unwrap()
        }
    };
    let lone = "evt_lone";
    assert_eq!(post(&sidecar, lone, "customer.created", "w-1").await, 202);
    eventually(Duration::from_secs(10), "the lone event delivered", || {
        seen_with(&ok, lone).len() == 1
    })
    .await;
    let detail = |id: &'static str| {
        let sidecar = &sidecar;
        async move {
            admin(sidecar, "GET", &format!("/admin/events/stripe/{id}"))
                .await
                .status
        }
    };
    assert_eq!(detail(lone).await, 200, "kept after delivery");
    // Retention (1 s) runs every 5 s: the event delivered everywhere goes;
    // the others have a dead letter or a pending target and stay.
    let mut gone = false;
    for _ in 0..150 {
        if detail(lone).await == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a finished event past its retention is dropped");
    assert_eq!((list("pending").await, list("partial").await), (2, 2));
    for id in ["evt_0", "evt_1", "evt_2", "evt_3"] {
        assert_eq!(detail(id).await, 200, "{id} is kept");
    }
    // Its dedup key outlives it: the provider's retry is still a duplicate.
    assert_eq!(post(&sidecar, lone, "customer.created", "w-1").await, 200);
    assert_eq!(seen_with(&ok, lone).len(), 1);
}

/// SIGKILL while retention drops a backlog of finished events: every event
/// still pending survives and is delivered once its target is back; the
/// finished ones are dropped in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_history_pruning_loses_no_pending_event() {
    let ok = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let no = MockServer::start(|_| MockAnswer::status(400, "no")).await;
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let taken: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    let flaky = {
        let (up, taken) = (Arc::clone(&up), Arc::clone(&taken));
        MockServer::start(move |seen| {
            if up.load(std::sync::atomic::Ordering::SeqCst) {
                let id = seen.headers.get("x-event-id").cloned().unwrap_or_default();
                taken.lock().unwrap().insert(id);
                MockAnswer::status(200, "")
            } else {
                MockAnswer::status(503, "down")
            }
        })
        .await
    };
    let data = unique_dir("pruning");
    let store = format!(
        "store:\n  path: {}\n  history: {{ retention: 1s }}\ndelivery: {{ workers: 8 }}",
        data.display()
    );
    let mut sidecar = Sidecar::start(&config(&ok, &no, &flaky, &store, 1000));
    const FINISHED: usize = 1_500;
    const PENDING: usize = 100;
    let ingress = sidecar.ingress;
    let posted: Vec<u16> = futures_util::future::join_all((0..4).map(|sender| async move {
        let mut statuses = Vec::new();
        for n in (sender..FINISHED + PENDING).step_by(4) {
            let (id, kind) = if n < FINISHED {
                (format!("evt_done_{n}"), "customer.created")
            } else {
                (format!("evt_wait_{n}"), "payment_intent.succeeded")
            };
            let body = format!(r#"{{"id":"{id}","type":"{kind}"}}"#);
            let signature = stripe_signature_with(SECRET, body.as_bytes());
            statuses.push(
                send(
                    "POST",
                    &format!("http://{ingress}/webhooks/stripe"),
                    &[("stripe-signature", signature.as_str())],
                    Bytes::from(body),
                )
                .await
                .status,
            );
        }
        statuses
    }))
    .await
    .concat();
    assert!(posted.iter().all(|s| *s == 202), "{posted:?}");
    eventually(
        Duration::from_secs(60),
        "the finished ones delivered",
        || ok.requests().len() >= FINISHED + PENDING,
    )
    .await;
    // Retention runs 5 s after start, then every 5 s: kill around it.
    for round in 0..4u64 {
        tokio::time::sleep(Duration::from_millis(4_900 + round * 60)).await;
        sidecar.child.kill().unwrap();
        sidecar.child.wait().unwrap();
        sidecar.respawn();
    }
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let waiting: std::collections::BTreeSet<String> = (FINISHED..FINISHED + PENDING)
        .map(|n| format!("evt_wait_{n}"))
        .collect();
    eventually(
        Duration::from_secs(60),
        "every pending event delivered",
        || waiting.is_subset(&taken.lock().unwrap()),
    )
    .await;
    assert!(!flaky.requests().is_empty());
    // And retention went on: only what was pending is left.
    let mut left = u64::MAX;
    for _ in 0..150 {
        left = admin(&sidecar, "GET", "/admin/events").await.json()["total_estimate"]
            .as_u64()
            .unwrap();
        if left <= PENDING as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left <= PENDING as u64, "{left} events kept");
}
