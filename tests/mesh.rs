//! Black-box tests of the service mesh with the real binary: the app's
//! calls to internal services through upstream groups (round robin, a
//! backend gone, latency-aware `ewma`), wedding events the app publishes
//! (fan-out, dedup, 404 on the public ingress, the `publish` CLI), trace
//! context from the app to providers and from a publisher to every
//! delivery, spans exported to an OTLP collector stand-in, and wedding-day
//! priority overtaking a backlog.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn group(mocks: &[&MockServer], extra: &str) -> String {
    let backends: Vec<String> = mocks.iter().map(|m| m.addr.to_string()).collect();
    format!("{{ backends: [{}]{extra} }}", backends.join(", "))
}

/// The app's call to `route` on the egress listener.
async fn call(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(
        "GET",
        &format!("http://{}{path}", sidecar.egress),
        headers,
        Bytes::new(),
    )
    .await
}

fn per_backend(mocks: &[&MockServer]) -> Vec<usize> {
    mocks.iter().map(|m| m.requests().len()).collect()
}

/// A valid traceparent's trace id, or a panic.
fn trace_id_of(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
    parts[1].to_string()
}

#[tokio::test]
async fn an_egress_group_spreads_calls_round_robin_with_the_backend_in_metrics_and_log() {
    let a = MockServer::start(|_| MockAnswer::ok("a")).await;
    let b = MockServer::start(|_| MockAnswer::ok("b")).await;
    let c = MockServer::start(|_| MockAnswer::ok("c")).await;
    let yaml = Yaml::new()
        .upstream("notification", group(&[&a, &b, &c], ""))
        .with("services:\n  notification:\n    route: /notification\n    group: notification\n");
    let sidecar = Sidecar::start(&yaml.build());
    for _ in 0..30 {
        let answer = call(&sidecar, "/notification/v1/notify?x=1", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(per_backend(&[&a, &b, &c]), [10, 10, 10]);
    let seen = &a.requests()[0];
    assert_eq!(
        seen.uri, "/v1/notify?x=1",
        "the route is stripped, no base path"
    );
    assert_eq!(seen.headers["host"], a.addr.to_string());
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    for mock in [&a, &b, &c] {
        let series = format!(
            "sidecar_upstream_requests_total{{backend=\"{}\",code=\"200\",upstream=\"notification\"}} 10",
            mock.addr
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    eventually(SETTLE, "an access-log line names the backend", || {
        sidecar.logs().contains(&format!("backend={}", a.addr))
    })
    .await;
}

#[tokio::test]
async fn a_backend_gone_costs_no_failed_call() {
    let a = MockServer::start(|_| MockAnswer::ok("a")).await;
    let b = MockServer::start(|_| MockAnswer::ok("b")).await;
    let gone = MockServer::start(|_| MockAnswer::ok("gone")).await;
    let gone_addr = gone.addr;
    let yaml = Yaml::new()
        .upstream("supplier", group(&[&a, &b, &gone], ""))
        .with(
            "services:\n  supplier:\n    route: /supplier\n    group: supplier\n    retry: { attempts: 3, retry_on: [connect_error], backoff: { initial: 10ms, max: 50ms } }\n",
        );
    let sidecar = Sidecar::start(&yaml.build());
    assert_eq!(call(&sidecar, "/supplier/x", &[]).await.status, 200);
    drop(gone);
    let mut statuses = BTreeMap::new();
    for _ in 0..30 {
        *statuses
            .entry(call(&sidecar, "/supplier/x", &[]).await.status)
            .or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 30)]), "every call answered");
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    let failures = format!(
        "sidecar_upstream_requests_total{{backend=\"{gone_addr}\",code=\"error\",upstream=\"supplier\"}}"
    );
    assert!(
        metrics.contains(&failures),
        "the gone backend's failures are counted:\n{metrics}"
    );
}

#[tokio::test]
async fn ewma_moves_traffic_off_a_backend_150ms_slower() {
    let fast =
        MockServer::start(|_| MockAnswer::ok("fast").delayed(Duration::from_millis(5))).await;
    let slow =
        MockServer::start(|_| MockAnswer::ok("slow").delayed(Duration::from_millis(155))).await;
    let yaml = Yaml::new()
        .upstream("analytics", group(&[&fast, &slow], ", balance: ewma"))
        .with("services:\n  analytics:\n    route: /analytics\n    group: analytics\n");
    let sidecar = Sidecar::start(&yaml.build());
    let started = Instant::now();
    let mut late_counts = [0usize; 2];
    // Four callers for three seconds; the last two seconds are counted.
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("http://{}/analytics/event", sidecar.egress);
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                while started.elapsed() < Duration::from_secs(3) {
                    let answer = send("GET", &url, &[], Bytes::new()).await;
                    assert_eq!(answer.status, 200);
                    bodies.push((started.elapsed(), answer.text()));
                }
                bodies
            })
        })
        .collect();
    for caller in callers {
        for (at, body) in caller.await.unwrap() {
            if at > Duration::from_secs(1) {
                late_counts[usize::from(body == "slow")] += 1;
            }
        }
    }
    let slow_share = late_counts[1] as f64 / (late_counts[0] + late_counts[1]) as f64;
    assert!(
        slow_share < 0.05,
        "the slow backend kept {slow_share:.2} of the calls: {late_counts:?}"
    );
    assert!(!slow.requests().is_empty(), "the slow backend was tried");
}

fn wedding_events(targets: &[(&str, &MockServer)], extra: &str) -> String {
    let mut yaml = Yaml::new();
    for (name, mock) in targets {
        yaml = yaml.upstream(name, group(&[mock], ""));
    }
    let names: Vec<&str> = targets.iter().map(|(n, _)| *n).collect();
    yaml.with(format!(
        "events:\n  wedding:\n    path: /events/wedding\n    event_type: /type\n    context: {{ wedding_id: /wedding_id }}\n    routes: [{{ events: [\"payment.*\"], targets: [{}] }}]\n    delivery: {{ path: /events, timeout: 2s, backoff: {{ initial: 100ms, max: 200ms }} }}\n{extra}",
        names.join(", ")
    ))
    .build()
}

async fn publish(sidecar: &Sidecar, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(
        "POST",
        &format!("http://{}/events/wedding", sidecar.egress),
        &all,
        Bytes::from(body.to_string()),
    )
    .await
}

#[tokio::test]
async fn a_published_event_reaches_three_services_once_with_its_context_and_trace() {
    let notification = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let analytics = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let supplier = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let sidecar = Sidecar::start(&wedding_events(
        &[
            ("notification", &notification),
            ("analytics", &analytics),
            ("supplier", &supplier),
        ],
        "",
    ));
    let body = r#"{"type":"payment.completed","wedding_id":"w-42","amount":1200}"#;
    let answer = publish(
        &sidecar,
        body,
        &[("idempotency-key", "pay-42"), ("traceparent", TRACEPARENT)],
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(
        answer.json(),
        serde_json::json!({"status": "accepted", "id": "pay-42"})
    );
    let again = publish(&sidecar, body, &[("idempotency-key", "pay-42")]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], "duplicate");
    let mocks = [&notification, &analytics, &supplier];
    eventually(SETTLE, "each service got the event", || {
        mocks.iter().all(|m| !m.requests().is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut span_ids = std::collections::BTreeSet::new();
    for mock in mocks {
        let seen = mock.requests();
        assert_eq!(seen.len(), 1, "delivered once");
        let seen = &seen[0];
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            ("POST", "/events")
        );
        assert_eq!(seen.body, Bytes::from(body));
        assert_eq!(seen.headers["x-webhook-source"], "wedding");
        assert_eq!(seen.headers["x-event-id"], "pay-42");
        assert_eq!(seen.headers["x-event-type"], "payment.completed");
        assert_eq!(seen.headers["x-wedding-id"], "w-42");
        assert_eq!(trace_id_of(&seen.headers["traceparent"]), TRACE_ID);
        span_ids.insert(seen.headers["traceparent"].clone());
    }
    assert_eq!(span_ids.len(), 3, "each delivery attempt is its own span");
    assert!(!span_ids.contains(TRACEPARENT));

    let on_ingress = send(
        "POST",
        &format!("http://{}/events/wedding", sidecar.ingress),
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await;
    assert_eq!(on_ingress.status, 404, "only the pod's app can publish");

    let not_json = publish(&sidecar, "payment!", &[]).await;
    assert_eq!(not_json.status, 400);
}

#[tokio::test]
async fn the_publish_cli_posts_stdin_to_the_running_sidecar() {
    let notification = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let sidecar = Sidecar::start(&wedding_events(&[("notification", &notification)], ""));
    let config = sidecar.config_with_bound_ports();
    let run = move |key: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
            .args(["publish", "wedding", "--idempotency-key", key, "-c"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"type":"payment.completed","wedding_id":"w-9"}"#)
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let output = tokio::task::spawn_blocking(move || run("cli-1"))
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"status": "accepted", "id": "cli-1"})
    );
    eventually(SETTLE, "the published event is delivered", || {
        notification.requests().len() == 1
    })
    .await;
}

#[tokio::test]
async fn the_apps_trace_reaches_the_provider_as_a_child_span_and_the_access_log() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = Yaml::new().service("stripe", "/stripe", &provider.url(), &[]);
    let sidecar = Sidecar::start(&yaml.build());
    let answer = call(
        &sidecar,
        "/stripe/v1/charges",
        &[("traceparent", TRACEPARENT), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(answer.status, 200);
    let answer = call(&sidecar, "/stripe/v1/charges", &[]).await;
    assert_eq!(answer.status, 200);
    let seen = provider.requests();
    let child = &seen[0].headers["traceparent"];
    assert_eq!(trace_id_of(child), TRACE_ID);
    assert_ne!(child, TRACEPARENT, "a new span id");
    assert_eq!(seen[0].headers["tracestate"], "vendor=1");
    let started = trace_id_of(&seen[1].headers["traceparent"]);
    assert_ne!(started, TRACE_ID, "a call without one starts a trace");
    eventually(SETTLE, "the access log carries both trace ids", || {
        let logs = sidecar.logs();
        logs.contains(&format!("trace_id={TRACE_ID}"))
            && logs.contains(&format!("trace_id={started}"))
    })
    .await;
}

/// A span as the collector stand-in received it (ids in hex).
#[derive(Debug)]
struct Exported {
    name: String,
    trace: String,
    span: String,
    parent: String,
    service: String,
}

/// Every span of every post: each is an OTLP ExportTraceServiceRequest in
/// protobuf, read with the OpenTelemetry project's types.
fn exported_spans(collector: &MockServer) -> Vec<Exported> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut spans = Vec::new();
    for seen in collector.requests() {
        let request = ExportTraceServiceRequest::decode(seen.body.clone()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .into_iter()
                .flat_map(|r| r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value?.value)
                .map(|v| match v {
                    Value::StringValue(text) => text,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        name: span.name,
                        trace: hex(&span.trace_id),
                        span: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        service: service.clone(),
                    });
                }
            }
        }
    }
    spans
}

#[tokio::test]
async fn spans_are_posted_to_the_otlp_collector() {
    let collector = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = Yaml::new()
        .with(format!(
            "tracing: {{ otlp: {{ endpoint: {}, service_name: wedding-app }} }}",
            collector.url()
        ))
        .upstream("notify", group(&[&target], ""))
        .service("stripe", "/stripe", &provider.url(), &[])
        .stripe_webhook(&["routes: [{ events: [\"*\"], targets: [notify] }]"]);
    let sidecar = Sidecar::start(&yaml.build());
    assert_eq!(
        call(&sidecar, "/stripe/v1/x", &[("traceparent", TRACEPARENT)])
            .await
            .status,
        200
    );
    assert_eq!(post_stripe(&sidecar, "evt_traced").await.status, 202);
    eventually(
        Duration::from_secs(10),
        "egress, ack and delivery spans exported",
        || {
            let spans = exported_spans(&collector);
            ["egress", "webhook.ack", "delivery.attempt"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
        },
    )
    .await;
    let spans = exported_spans(&collector);
    assert!(
        spans
            .iter()
            .any(|s| s.name == "egress" && s.trace == TRACE_ID),
        "the app's trace id on its egress span: {spans:?}"
    );
    let ack = spans.iter().find(|s| s.name == "webhook.ack").unwrap();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "delivery.attempt" && s.trace == ack.trace && s.parent == ack.span),
        "the delivery attempt is a child of the acknowledgement: {spans:?}"
    );
    assert!(
        spans.iter().all(|s| s.service == "wedding-app"),
        "{spans:?}"
    );
    let seen = &collector.requests()[0];
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/v1/traces")
    );
    assert_eq!(seen.headers["content-type"], "application/x-protobuf");
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("sidecar_trace_spans_exported_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_never_fails_a_request() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = Yaml::new()
        .with(format!(
            "tracing: {{ otlp: {{ endpoint: http://127.0.0.1:{} }} }}",
            free_port()
        ))
        .service("stripe", "/stripe", &provider.url(), &[]);
    let sidecar = Sidecar::start(&yaml.build());
    for _ in 0..20 {
        assert_eq!(call(&sidecar, "/stripe/v1/x", &[]).await.status, 200);
    }
    sidecar
        .metrics_until(
            "spans not counted as dropped",
            Duration::from_secs(10),
            |m| m.contains("sidecar_trace_spans_dropped_total 20"),
        )
        .await;
}

/// `tracing.otlp` follows a reload: spans go to the new collector from
/// then on, none to the old; a collector that fails is warned about.
#[tokio::test]
async fn a_reload_moves_span_export_to_the_new_collector_and_failures_are_warned_about() {
    let old = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let new = MockServer::start(|_| MockAnswer::status(503, "busy")).await;
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = Yaml::new()
        .with(format!(
            "tracing: {{ otlp: {{ endpoint: {} }} }}",
            old.url()
        ))
        .service("stripe", "/stripe", &provider.url(), &[]);
    let sidecar = Sidecar::start(&yaml.build());
    assert_eq!(call(&sidecar, "/stripe/v1/x", &[]).await.status, 200);
    eventually(
        Duration::from_secs(10),
        "a span at the first collector",
        || !exported_spans(&old).is_empty(),
    )
    .await;
    let (old_url, new_url) = (old.url(), new.url());
    sidecar.edit_config(|text| text.replace(&old_url, &new_url));
    sidecar.log_containing("configuration reloaded").await;
    let before = old.requests().len();
    for _ in 0..5 {
        assert_eq!(call(&sidecar, "/stripe/v1/x", &[]).await.status, 200);
    }
    eventually(
        Duration::from_secs(10),
        "spans at the new collector",
        || !new.requests().is_empty(),
    )
    .await;
    let logs = sidecar.log_containing("could not export spans").await;
    let line = logs
        .lines()
        .find(|l| l.contains("could not export spans"))
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains("the collector answered 503"),
        "warned, not only at debug level: {line}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        old.requests().len(),
        before,
        "nothing more to the old collector"
    );
}

fn today_utc() -> String {
    let output = std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_wedding_day_event_overtakes_a_backlog_of_low_priority_ones() {
    // One delivery at a time, 100 ms each: a backlog drains slowly.
    let target =
        MockServer::start(|_| MockAnswer::status(204, "").delayed(Duration::from_millis(100)))
            .await;
    let yaml = Yaml::new()
        .upstream("notify", group(&[&target], ", max_in_flight: 1"))
        .stripe_webhook(&[
            "priority: { low: [\"*.updated\"], wedding_day: { date: /data/object/metadata/wedding_date, timezone: UTC, within: 1h } }",
            "routes: [{ events: [\"*\"], targets: [notify] }]",
            "delivery: { path: /events }",
        ]);
    let sidecar = Sidecar::start(&yaml.build());
    let post = |id: String, event_type: &'static str, date: String| {
        let ingress = sidecar.ingress;
        async move {
            let body = format!(
                r#"{{"id":"{id}","type":"{event_type}","data":{{"object":{{"metadata":{{"wedding_date":"{date}"}}}}}}}}"#
            );
            let signature = stripe_signature_with(SECRET, body.as_bytes());
            send(
                "POST",
                &format!("http://{ingress}/webhooks/stripe"),
                &[("stripe-signature", signature.as_str())],
                Bytes::from(body),
            )
            .await
            .status
        }
    };
    for i in 0..20 {
        assert_eq!(
            post(
                format!("evt_low_{i}"),
                "customer.updated",
                "2020-01-01".into()
            )
            .await,
            202
        );
    }
    assert_eq!(
        post("evt_wedding".into(), "customer.updated", today_utc()).await,
        202
    );
    // The bound counts from how far the low lane had got when the wedding
    // event was accepted: slow posting on a loaded machine must not decide.
    let lows_seen = target.requests().len();
    assert!(
        lows_seen < 15,
        "a backlog of low events was waiting ({lows_seen} of 20 delivered already)"
    );
    eventually(
        Duration::from_secs(10),
        "the wedding-day event is delivered",
        || {
            target
                .requests()
                .iter()
                .any(|s| s.headers["x-event-id"] == "evt_wedding")
        },
    )
    .await;
    let order: Vec<String> = target
        .requests()
        .iter()
        .map(|s| s.headers["x-event-id"].clone())
        .collect();
    let position = order.iter().position(|id| id == "evt_wedding").unwrap();
    // At most the low one in flight, one leased just before the accept,
    // and one whose lane's turn the 6:3:1 round robin gave the next lease
    // (one in ten: low is never starved, even by wedding days).
    assert!(
        position <= lows_seen + 2,
        "delivered {position}th of {order:?}, {lows_seen} low ones before it was accepted"
    );
    let seen = target
        .requests()
        .into_iter()
        .find(|s| s.headers["x-event-id"] == "evt_wedding")
        .unwrap();
    assert_eq!(seen.headers["x-wedding-day"], "true");
    assert!(
        !target.requests()[0].headers.contains_key("x-wedding-day"),
        "an old wedding is not marked"
    );
    let metrics = get(&sidecar.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("sidecar_wedding_day_events_total{webhook=\"stripe\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_propagation_off_the_sidecar_adds_no_trace_context() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let yaml = Yaml::new()
        .with("tracing: { propagate: false }")
        .upstream("notify", group(&[&target], ""))
        .service("stripe", "/stripe", &provider.url(), &[])
        .stripe_webhook(&["routes: [{ events: [\"*\"], targets: [notify] }]"]);
    let sidecar = Sidecar::start(&yaml.build());
    assert_eq!(call(&sidecar, "/stripe/v1/x", &[]).await.status, 200);
    assert_eq!(
        call(&sidecar, "/stripe/v1/x", &[("traceparent", TRACEPARENT)])
            .await
            .status,
        200
    );
    let seen = provider.requests();
    assert!(!seen[0].headers.contains_key("traceparent"));
    assert_eq!(
        seen[1].headers["traceparent"], TRACEPARENT,
        "the app's own passes as it is"
    );
    assert_eq!(post_stripe(&sidecar, "evt_untraced").await.status, 202);
    eventually(SETTLE, "delivered", || target.requests().len() == 1).await;
    assert!(!target.requests()[0].headers.contains_key("traceparent"));
}

#[tokio::test]
async fn a_tls_group_is_reached_over_tls_with_its_ca_and_host() {
    let pki = test_pki("localhost");
    let secure =
        MockServer::start_with_tls(|_| MockAnswer::ok("secure"), Some(pki.acceptor.clone())).await;
    let dir = unique_dir("tls-group");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let backend = format!("127.0.0.1:{}", secure.addr.port());
    let yaml = Yaml::new()
        .upstream(
            "payments",
            format!(
                "{{ backends: [{backend}], tls: true, ca_file: {}, host: localhost }}",
                ca.display()
            ),
        )
        .with("services:\n  payments:\n    route: /payments\n    group: payments\n");
    let sidecar = Sidecar::start(&yaml.build());
    let answer = call(&sidecar, "/payments/v1/ping", &[]).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "secure"));
    assert_eq!(secure.requests()[0].headers["host"], "localhost");

    // The same group without the CA: the certificate is refused.
    let untrusted = Yaml::new()
        .upstream(
            "payments",
            format!("{{ backends: [{backend}], tls: true, host: localhost }}"),
        )
        .with("services:\n  payments:\n    route: /payments\n    group: payments\n");
    let sidecar = Sidecar::start(&untrusted.build());
    let answer = call(&sidecar, "/payments/v1/ping", &[]).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(secure.requests().len(), 1);
}

/// What the app publishes must be a JSON object that reads whole, sent as
/// JSON, with a usable `Idempotency-Key`: anything else is refused with the
/// reason, and nothing is stored or delivered.
#[tokio::test]
async fn a_publish_that_is_not_a_readable_json_object_or_has_a_bad_key_is_refused() {
    let notification = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let sidecar = Sidecar::start(&wedding_events(&[("notification", &notification)], ""));
    let url = format!("http://{}/events/wedding", sidecar.egress);
    let event = r#"{"type":"payment.completed","wedding_id":"w-42"}"#;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let answer = send(
            "POST",
            &url,
            &[("content-type", content_type)],
            Bytes::from(event),
        )
        .await;
        assert_eq!(answer.status, 415, "{content_type}");
        assert_eq!(answer.headers["x-sidecar-error"], "unsupported_media_type");
    }
    let deep = format!(
        r#"{{"type":"payment.completed","x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let long_key = "k".repeat(300);
    // (body, extra headers, what the refusal's detail names)
    type Refused<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let refused: [Refused<'_>; 5] = [
        ("42", vec![], "a JSON object"),
        (deep.as_str(), vec![], "recursion limit"),
        (
            r#"{"type":"payment.completed","amount":1e400}"#,
            vec![],
            "number out of range",
        ),
        (
            event,
            vec![("idempotency-key", long_key.as_str())],
            "300 bytes",
        ),
        (event, vec![("idempotency-key", "pay 42")], "visible ASCII"),
    ];
    for (body, headers, reason) in refused {
        let answer = publish(&sidecar, body, &headers).await;
        assert_eq!(answer.status, 400, "{reason}: {}", answer.text());
        let detail = answer.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(reason), "{reason}: {detail}");
    }
    let answer = publish(&sidecar, event, &[("idempotency-key", "pay-42")]).await;
    assert_eq!(answer.status, 202);
    eventually(SETTLE, "the one valid event delivered", || {
        !notification.requests().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        notification.requests().len(),
        1,
        "nothing refused was stored"
    );
}

/// W3C Trace Context level 1 as the provider sees it: two `traceparent`
/// headers are invalid (a new trace), `tracestate` goes on only with a
/// valid `traceparent` and as one list, and of the flags only `sampled`.
#[tokio::test]
async fn the_provider_gets_trace_context_as_the_w3c_spec_says() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = Yaml::new().service("stripe", "/stripe", &provider.url(), &[]);
    let sidecar = Sidecar::start(&yaml.build());
    let other = "00-12345678901234567890123456789012-1234567890123456-01";
    let cases: [&[(&str, &str)]; 4] = [
        &[("traceparent", TRACEPARENT), ("traceparent", other)],
        &[("tracestate", "vendor=1")],
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "a=1,b=2"),
            ("tracestate", "c=3"),
        ],
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
        )],
    ];
    for headers in cases {
        assert_eq!(
            call(&sidecar, "/stripe/v1/charges", headers).await.status,
            200
        );
    }
    let seen = provider.requests();
    let duplicated = trace_id_of(&seen[0].headers["traceparent"]);
    assert!(duplicated != TRACE_ID && duplicated != "12345678901234567890123456789012");
    assert_eq!(seen[0].headers.get("tracestate"), None);
    assert_eq!(
        seen[1].headers.get("tracestate"),
        None,
        "no traceparent, no state"
    );
    assert_eq!(trace_id_of(&seen[2].headers["traceparent"]), TRACE_ID);
    assert_eq!(seen[2].headers["tracestate"], "a=1,b=2,c=3");
    assert_eq!(trace_id_of(&seen[3].headers["traceparent"]), TRACE_ID);
    assert!(
        seen[3].headers["traceparent"].ends_with("-01"),
        "only sampled"
    );
}
