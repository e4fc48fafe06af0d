//! Black-box tests of the admin listener, metrics and the shutdown sequence.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;

#[tokio::test]
async fn metrics_count_known_traffic_by_service_and_code() {
    let upstream = MockServer::start(|seen| {
        if seen.uri == "/fail" {
            MockAnswer::status(503, "down")
        } else {
            MockAnswer::ok("ok")
        }
    })
    .await;
    let sidecar = Sidecar::start(&format!(
        "services:\n  stripe:\n    route: /stripe\n    upstream: {}\n",
        upstream.url()
    ));
    for _ in 0..3 {
        get(&sidecar.egress_url("/stripe/ok")).await;
    }
    get(&sidecar.egress_url("/stripe/fail")).await;
    get(&sidecar.egress_url("/unknown")).await;
    sidecar
        .metrics_containing(&[
            "sidecar_egress_requests_total{code=\"200\",egress_service=\"stripe\"} 3",
            "sidecar_egress_requests_total{code=\"503\",egress_service=\"stripe\"} 1",
            "sidecar_egress_requests_total{code=\"404\",egress_service=\"-\"} 1",
            "sidecar_egress_request_duration_seconds_count{egress_service=\"stripe\"} 4",
        ])
        .await;
}

#[tokio::test]
async fn the_admin_token_guards_admin_endpoints_but_not_probes_or_metrics() {
    let body = "admin:\n  token: \"${env:TEST_ADMIN_TOKEN}\"\nservices:\n  stripe:\n    route: /stripe\n    upstream: https://api.stripe.com\n    auth: { kind: bearer, token: sk_live_do_not_show }\n";
    let sidecar = Sidecar::start_with_env(body, &[("TEST_ADMIN_TOKEN", "admin-token-0123456789")]);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(&sidecar.admin_url(path)).await.status, 200, "{path}");
    }
    for path in ["/admin/config", "/admin/services"] {
        let answer = get(&sidecar.admin_url(path)).await;
        assert_eq!(answer.status, 401, "{path}");
        assert_eq!(answer.headers["x-sidecar-error"], "unauthorized");
        let answer = send(
            "GET",
            &sidecar.admin_url(path),
            &[("authorization", "Bearer wrong-token-0123456789")],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, 401, "{path}");
    }
    let auth = [("authorization", "Bearer admin-token-0123456789")];
    let config = send(
        "GET",
        &sidecar.admin_url("/admin/config"),
        &auth,
        Bytes::new(),
    )
    .await;
    assert_eq!(config.status, 200);
    let text = config.text();
    assert!(
        !text.contains("sk_live_do_not_show") && !text.contains("admin-token-0123456789"),
        "{text}"
    );
    assert_eq!(config.json()["services"][0]["auth"]["token"], "<redacted>");
    let services = send(
        "GET",
        &sidecar.admin_url("/admin/services"),
        &auth,
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(services["services"][0]["name"], "stripe");
    assert_eq!(services["services"][0]["auth"], "bearer");
}

#[tokio::test]
async fn the_ingress_listener_answers_404_until_webhooks_exist() {
    let sidecar = Sidecar::start("services: {}\n");
    let answer = send(
        "POST",
        &format!("http://{}/webhooks/stripe", sidecar.ingress),
        &[],
        Bytes::from("{}"),
    )
    .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.headers["x-sidecar-error"], "not_found");
    let answer = get(&format!("http://{}/webhooks/stripe", sidecar.ingress)).await;
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn sigterm_fails_readiness_at_once_and_lets_a_slow_request_finish() {
    let upstream =
        MockServer::start(|_| MockAnswer::ok("finished").delayed(Duration::from_millis(1500)))
            .await;
    let body = format!("drain_delay: 300ms\nshutdown_grace: 10s\nservices:\n  slow:\n    route: /slow\n    upstream: {}\n", upstream.url());
    let mut sidecar = Sidecar::start(&body);
    let in_flight = tokio::spawn(get(&sidecar.egress_url("/slow/x")));
    eventually(
        Duration::from_secs(5),
        "the request at the upstream",
        || upstream.requests().len() == 1,
    )
    .await;
    let signalled = Instant::now();
    sidecar.signal("TERM");
    // The signal is handled asynchronously: the first /readyz after it that
    // answers 503 must say why, and every later one too.
    let mut ready = get(&sidecar.admin_url("/readyz")).await;
    while ready.status == 200 && signalled.elapsed() < Duration::from_secs(5) {
        ready = get(&sidecar.admin_url("/readyz")).await;
    }
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["reason"], "shutting down");

    let answer = in_flight.await.unwrap();
    assert_eq!((answer.status, answer.text().as_str()), (200, "finished"));
    let status = wait_exit(&mut sidecar.child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    let took = signalled.elapsed();
    // The request ends 1.5 s after it started; shutdown_grace is 10 s.
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM: when the request finished, not at the grace"
    );
    // After the drain delay the listener no longer accepts.
    assert!(std::net::TcpStream::connect(sidecar.egress).is_err());
    let logs = sidecar.logs();
    assert!(
        logs.contains("path=/slow/x status=200"),
        "the last request's access line is written before the exit:\n{logs}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_the_access_log_can_be_turned_off() {
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let body = format!(
        "drain_delay: 0s\nservices:\n  stripe:\n    route: /stripe\n    upstream: {}\n",
        upstream.url()
    );
    let mut sidecar = Sidecar::start_with_args(&body, &[], &["--log-format", "json"]);
    get(&sidecar.egress_url("/stripe/v1/charges?amount=1")).await;
    get(&sidecar.egress_url("/nowhere")).await;
    sidecar.signal("TERM");
    wait_exit(&mut sidecar.child, Duration::from_secs(5));
    let lines: Vec<serde_json::Value> = sidecar
        .logs()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["message"] == "starting wedsync-sidecar"));
    let access: Vec<_> = lines.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 2, "{lines:?}");
    assert_eq!(
        (
            &access[0]["service"],
            &access[0]["path"],
            &access[0]["status"]
        ),
        (&"stripe".into(), &"/stripe/v1/charges".into(), &200.into())
    );
    assert_eq!(access[0]["request_id"].as_str().map(str::len), Some(32));
    assert_eq!(
        (
            &access[1]["service"],
            &access[1]["status"],
            &access[1]["sidecar_error"]
        ),
        (&"-".into(), &404.into(), &"no_route".into())
    );

    let quiet = Sidecar::start_with_env(&body, &[("RUST_LOG", "info,access=off")]);
    get(&quiet.egress_url("/stripe/v1/charges")).await;
    quiet.log_containing("listening").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!quiet.logs().contains("access: egress"), "{}", quiet.logs());
}

#[tokio::test]
async fn an_idle_sidecar_exits_right_after_the_drain_delay() {
    let mut sidecar = Sidecar::start("drain_delay: 500ms\nshutdown_grace: 20s\n");
    let signalled = Instant::now();
    sidecar.signal("TERM");
    let status = wait_exit(&mut sidecar.child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        // After the 500 ms drain delay, long before the 20 s grace.
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the sidecar did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Without a token (loopback only), a web page must not be able to replay
/// dead letters with a "simple" cross-site POST: only a request that says
/// it sends JSON (which needs a preflight, never granted) gets through, and
/// the dlq CLI sends exactly that.
#[tokio::test]
async fn without_a_token_an_admin_post_must_say_it_sends_json() {
    let body = "upstreams:\n  notify: { backends: [127.0.0.1:9] }\nwebhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: { kind: stripe, secrets: [whsec_test_secret_0123456789] }\n    routes: [{ events: [\"*\"], targets: [notify] }]\n";
    let sidecar = Sidecar::start(body);
    let url = sidecar.admin_url("/admin/dead-letters/replay");
    for simple in [
        vec![],
        vec![("content-type", "text/plain")],
        vec![("content-type", "application/x-www-form-urlencoded")],
    ] {
        let answer = send("POST", &url, &simple, Bytes::new()).await;
        assert_eq!(answer.status, 415, "{simple:?}");
        assert_eq!(answer.headers["x-sidecar-error"], "unsupported_media_type");
    }
    let json = [("content-type", "application/json")];
    let answer = send("POST", &url, &json, Bytes::from_static(b"{}")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["replayed"], 0);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["dlq", "replay", "--all", "-c"])
        .arg(sidecar.config_with_bound_ports())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "replayed 0 dead letters"
    );
}
