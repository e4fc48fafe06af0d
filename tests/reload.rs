//! Config hot reload with the real binary: a changed rate limit applies to
//! new requests while connections stay up, an invalid file is rejected and
//! the old config keeps serving, SIGHUP reloads, webhook secrets and
//! upstream groups change live, and listeners cannot.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;

fn service(upstream: &str, limit: &str) -> String {
    format!("services:\n  stripe:\n    route: /stripe\n    upstream: {upstream}\n    rate_limit: {limit}\n")
}

/// Keep-alive connections sending GETs until told to stop; every answer's
/// status is recorded, and any connection error fails the test.
async fn load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, statuses: Arc<Mutex<Vec<u16>>>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    while !stop.load(Ordering::SeqCst) {
        let request = hyper::Request::get("/stripe/v1/balance")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.ready().await.expect("the connection stays up");
        let response = sender
            .send_request(request)
            .await
            .expect("an answer on the same connection");
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        statuses.lock().unwrap().push(status);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Four `load` connections, once 50 answers have come back: the stop
/// switch, the statuses so far and the connections' tasks.
async fn load_under_way(
    addr: std::net::SocketAddr,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Vec<u16>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<Vec<u16>>> = Arc::default();
    let connections = (0..4)
        .map(|_| tokio::spawn(load(addr, Arc::clone(&stop), Arc::clone(&statuses))))
        .collect();
    eventually(Duration::from_secs(10), "load under way", || {
        statuses.lock().unwrap().len() >= 50
    })
    .await;
    (stop, statuses, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rate_limit_applies_without_dropping_a_connection() {
    let upstream = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let sidecar = Sidecar::start(&service(&upstream.url(), "{ requests: 10000, per: 1s }"));
    let (stop, statuses, connections) = load_under_way(sidecar.egress).await;
    assert!(statuses.lock().unwrap().iter().all(|s| *s == 200));
    sidecar.edit_config(|text| {
        text.replace("{ requests: 10000, per: 1s }", "{ requests: 5, per: 1m }")
    });
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 1"])
        .await;
    let at_reload = statuses.lock().unwrap().len();
    eventually(Duration::from_secs(10), "load after the reload", || {
        statuses.lock().unwrap().len() >= at_reload + 50
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for connection in connections {
        connection.await.expect("no connection failed");
    }
    let statuses = statuses.lock().unwrap();
    let after = &statuses[at_reload..];
    assert!(after.len() > 20, "the load kept going: {}", after.len());
    // The new limit's burst is 5; each of the four connections may also
    // have had one request admitted under the old limit and answered after
    // the count was taken.
    assert!(
        after.iter().filter(|s| **s == 200).count() <= 5 + 4,
        "the new limit applies: {after:?}"
    );
    assert!(
        after.iter().rev().take(20).all(|s| *s == 429),
        "the new limit holds: {after:?}"
    );
    assert!(after.iter().all(|s| *s == 200 || *s == 429), "{after:?}");
    assert!(sidecar.logs().contains("configuration reloaded"));
}

#[tokio::test]
async fn an_invalid_reload_is_rejected_and_the_old_config_keeps_serving() {
    let upstream = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let sidecar = Sidecar::start(&service(&upstream.url(), "{ requests: 100, per: 1s }"));
    sidecar.edit_config(|text| {
        text.replace(
            "{ requests: 100, per: 1s }",
            "{ requests: 100, per: 1s, burts: 5 }",
        )
    });
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"rejected\"} 1"])
        .await;
    let log = sidecar
        .log_containing("configuration reload rejected")
        .await;
    assert!(
        log.contains("services.stripe.rate_limit.burts"),
        "the error names the key:\n{log}"
    );
    let answer = get(&sidecar.egress_url("/stripe/v1/balance")).await;
    assert_eq!(answer.status, 200);
    let config = get(&sidecar.admin_url("/admin/config")).await.json();
    assert_eq!(config["services"][0]["rate_limit"]["requests"], 100);
    // A fixed file is taken.
    sidecar.edit_config(|text| text.replace(", burts: 5", ""));
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 1"])
        .await;
}

#[tokio::test]
async fn sighup_reloads_and_a_new_route_serves_while_listeners_stay() {
    let upstream = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let sidecar = Sidecar::start(&service(&upstream.url(), "{ requests: 100, per: 1s }"));
    sidecar.signal("HUP");
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 1"])
        .await;
    let other_port = free_port();
    sidecar.edit_config(|text| {
        text.replace(
            "egress: 127.0.0.1:0",
            &format!("egress: 127.0.0.1:{other_port}"),
        ) + &format!(
            "  resend:\n    route: /resend\n    upstream: {}\n",
            upstream.url()
        )
    });
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 2"])
        .await;
    assert!(sidecar
        .logs()
        .contains("listen addresses and store settings cannot change while running"));
    let answer = get(&sidecar.egress_url("/resend/emails")).await;
    assert_eq!(
        answer.status, 200,
        "the new route serves, on the old listener"
    );
    assert_eq!(upstream.requests().last().unwrap().uri, "/emails");
}

#[tokio::test]
async fn webhook_secrets_and_upstream_groups_change_live() {
    let first = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let second = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let old_secret = "whsec_old_secret_0123456789";
    let new_secret = "whsec_new_secret_0123456789";
    let sidecar = Sidecar::start(&format!(
        "upstreams:\n  notify: {{ backends: [{}] }}\nwebhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: {{ kind: stripe, secrets: [{old_secret}] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n",
        first.addr
    ));
    let sent = AtomicUsize::new(0);
    let post = |secret: &'static str| {
        let n = sent.fetch_add(1, Ordering::SeqCst);
        let body = format!(r#"{{"id":"evt_{n}","type":"charge.succeeded"}}"#).into_bytes();
        let signature = stripe_signature_with(secret, &body);
        let url = format!("http://{}/webhooks/stripe", sidecar.ingress);
        async move {
            send(
                "POST",
                &url,
                &[("stripe-signature", signature.as_str())],
                Bytes::from(body),
            )
            .await
            .status
        }
    };
    assert_eq!(post(old_secret).await, 202);
    let first_addr = first.addr.to_string();
    sidecar.edit_config(|text| {
        text.replace(old_secret, new_secret)
            .replace(&first_addr, &second.addr.to_string())
    });
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 1"])
        .await;
    assert_eq!(post(old_secret).await, 401, "the old secret is gone");
    assert_eq!(post(new_secret).await, 202);
    eventually(
        Duration::from_secs(3),
        "the new backend gets deliveries",
        || !second.requests().is_empty(),
    )
    .await;
    assert_eq!(
        first.requests().len(),
        1,
        "the old backend only got the event before the reload"
    );
}

/// SIGTERM under load: `/readyz` fails at once, every request during
/// `drain_delay` is answered (egress and webhooks, on new connections too),
/// and every webhook that got its 202 is in the store afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_without_a_connection_error_and_keeps_every_accepted_webhook() {
    let upstream = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let secret = "whsec_test_secret_0123456789";
    let mut sidecar = Sidecar::start(&format!(
        "drain_delay: 1s\nshutdown_grace: 10s\n{}upstreams:\n  notify: {{ backends: [127.0.0.1:9] }}\nwebhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: {{ kind: stripe, secrets: [{secret}] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n",
        service(&upstream.url(), "{ requests: 100000, per: 1s }")
    ));
    let terminated: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..4 {
        let (terminated, accepted, failures) = (
            Arc::clone(&terminated),
            Arc::clone(&accepted),
            Arc::clone(&failures),
        );
        let (ingress, egress) = (sidecar.ingress, sidecar.egress);
        senders.push(tokio::spawn(async move {
            for n in 0.. {
                let since_term = terminated.lock().unwrap().map(|t| t.elapsed());
                // Stop well inside the drain delay's end.
                if since_term.is_some_and(|t| t > Duration::from_millis(800)) {
                    break;
                }
                let id = format!("evt_{sender}_{n}");
                let body = format!(r#"{{"id":"{id}","type":"charge.succeeded"}}"#).into_bytes();
                let signature = stripe_signature_with(secret, &body);
                let url = format!("http://{ingress}/webhooks/stripe");
                match try_send(&url, &[("stripe-signature", signature.as_str())], body).await {
                    Some(202) => accepted.lock().unwrap().push(id),
                    other => failures
                        .lock()
                        .unwrap()
                        .push(format!("webhook {id}: {other:?}")),
                }
                match try_send(
                    &format!("http://{egress}/stripe/v1/balance"),
                    &[],
                    Vec::new(),
                )
                .await
                {
                    Some(200) => {}
                    other => failures.lock().unwrap().push(format!("egress: {other:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.signal("TERM");
    *terminated.lock().unwrap() = Some(std::time::Instant::now());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(&sidecar.admin_url("/readyz")).await.status,
        503,
        "not ready at once"
    );
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    let status = sidecar.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() > 20, "the load ran: {}", accepted.len());
    let store = embedded_store(&sidecar.dir.join("data"));
    let stored: std::collections::BTreeSet<String> = waiting_jobs(&store)
        .await
        .into_iter()
        .map(|(_, event, _)| event.id.to_string())
        .collect();
    for id in &accepted {
        assert!(
            stored.contains(id),
            "{id} was acknowledged but is not in the store"
        );
    }
}

#[tokio::test]
async fn an_open_breaker_stays_open_across_a_reload_that_leaves_its_service_alone() {
    let failing = MockServer::start(|_| MockAnswer::status(502, "down")).await;
    let other = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let sidecar = Sidecar::start(&format!(
        "services:\n  stripe:\n    route: /stripe\n    upstream: {}\n    circuit_breaker: {{ failure_threshold: 2, open_for: 1m }}\n",
        failing.url()
    ));
    for _ in 0..2 {
        assert_eq!(
            get(&sidecar.egress_url("/stripe/v1/charges")).await.status,
            502
        );
    }
    // Outcomes are recorded after the answer has gone out.
    sidecar
        .metrics_containing(&["sidecar_circuit_state{egress_service=\"stripe\"} 2"])
        .await;
    let open = get(&sidecar.egress_url("/stripe/v1/charges")).await;
    assert_eq!(open.headers["x-sidecar-error"], "circuit_open");
    sidecar.edit_config(|text| {
        text + &format!(
            "  resend:\n    route: /resend\n    upstream: {}\n",
            other.url()
        )
    });
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 1"])
        .await;
    assert_eq!(get(&sidecar.egress_url("/resend/emails")).await.status, 200);
    let still = get(&sidecar.egress_url("/stripe/v1/charges")).await;
    assert_eq!(
        still.headers["x-sidecar-error"], "circuit_open",
        "the breaker's state carried over"
    );
    assert_eq!(failing.requests().len(), 2);
    // Changing the breaker itself starts it afresh.
    sidecar.edit_config(|text| text.replace("open_for: 1m", "open_for: 2m"));
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 2"])
        .await;
    assert_eq!(
        get(&sidecar.egress_url("/stripe/v1/charges")).await.status,
        502
    );
    assert_eq!(failing.requests().len(), 3);
}

/// A reload that changes a health-checked group (only `unhealthy_after`
/// here) keeps its backends' health: no request meets `503
/// no_healthy_backend` while the new group's probes start over, and
/// `/admin/upstreams` keeps showing the backend healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_health_checked_group_fails_no_request() {
    let backend = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = format!(
        "upstreams:\n  payments:\n    backends: [{}]\n    health_check: {{ kind: http, path: /healthz, interval: 1s, healthy_after: 2, unhealthy_after: 3 }}\nservices:\n  stripe:\n    route: /stripe\n    group: payments\n",
        backend.addr
    );
    let sidecar = Sidecar::start(&yaml);
    let healthy = |summary: &serde_json::Value| {
        summary["upstreams"]["payments"]["backends"][0]["health"] == "healthy"
    };
    let mut summary = serde_json::Value::Null;
    for _ in 0..100 {
        summary = get(&sidecar.admin_url("/admin/upstreams")).await.json();
        if healthy(&summary) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy(&summary), "{summary}");
    let (stop, statuses, connections) = load_under_way(sidecar.egress).await;
    sidecar.edit_config(|text| text.replace("unhealthy_after: 3", "unhealthy_after: 5"));
    sidecar
        .metrics_containing(&["sidecar_config_reloads_total{outcome=\"applied\"} 1"])
        .await;
    let summary = get(&sidecar.admin_url("/admin/upstreams")).await.json();
    assert!(
        healthy(&summary),
        "kept healthy across the reload: {summary}"
    );
    let at_reload = statuses.lock().unwrap().len();
    // Longer than the new group needs to pass two probes from scratch.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    for connection in connections {
        connection.await.expect("no connection failed");
    }
    let statuses = statuses.lock().unwrap();
    assert!(statuses.len() > at_reload + 50, "the load kept going");
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
}
