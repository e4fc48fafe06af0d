//! Black-box tests of the egress gateway: the real binary, real mock upstreams.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::*;

#[tokio::test]
async fn routes_by_prefix_strips_it_keeps_the_query_and_injects_a_bearer_token() {
    let upstream =
        MockServer::start(|_| MockAnswer::ok("charged").header("x-provider", "yes")).await;
    let other = MockServer::start(|_| MockAnswer::ok("other")).await;
    let body = Yaml::new()
        .service(
            "stripe",
            "/stripe",
            &format!("{}/base", upstream.url()),
            &["auth: { kind: bearer, token: \"${env:TEST_STRIPE_KEY}\" }"],
        )
        .service("stripe-connect", "/stripe-connect", &other.url(), &[])
        .build();
    let sidecar = Sidecar::start_with_env(&body, &[("TEST_STRIPE_KEY", "sk_test_secret_value")]);

    let answer = send(
        "POST",
        &sidecar.egress_url("/stripe/v1/charges?amount=100&currency=eur"),
        &[
            ("authorization", "Bearer app-own-token"),
            ("x-request-id", "req-123"),
        ],
        Bytes::from("a=1"),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "charged");
    assert_eq!(answer.headers["x-provider"], "yes");
    assert_eq!(answer.headers["x-request-id"], "req-123");
    let seen = &upstream.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/base/v1/charges?amount=100&currency=eur");
    assert_eq!(seen.headers["authorization"], "Bearer sk_test_secret_value");
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
    assert_eq!(seen.headers["x-request-id"], "req-123");
    assert_eq!(&seen.body[..], b"a=1");

    let answer = get(&sidecar.egress_url("/stripe-connect/accounts")).await;
    assert_eq!(answer.text(), "other");
    assert_eq!(other.requests()[0].uri, "/accounts");
    assert!(!other.requests()[0].headers.contains_key("authorization"));
    let generated = &other.requests()[0].headers["x-request-id"];
    assert_eq!(
        generated.len(),
        32,
        "a 128-bit hex request id is generated: {generated}"
    );

    let logs = sidecar.log_containing("req-123").await;
    assert!(
        !logs.contains("sk_test_secret_value"),
        "a secret reached the log:\n{logs}"
    );
    assert!(
        !logs.contains("currency=eur"),
        "a query value reached the log:\n{logs}"
    );
}

#[tokio::test]
async fn unknown_routes_answer_404_problem_json() {
    let sidecar = Sidecar::start("services: {}\n");
    let answer = get(&sidecar.egress_url("/nowhere/x")).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert_eq!(answer.headers["x-sidecar-error"], "no_route");
    assert_eq!(
        answer.json()["detail"],
        "no service route matches /nowhere/x"
    );
}

#[tokio::test]
async fn injects_api_keys_in_headers_and_queries_and_basic_credentials() {
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let body = Yaml::new()
        .service(
            "resend",
            "/resend",
            &upstream.url(),
            &["auth: { kind: api_key, header: X-Api-Key, value: re_key_1 }"],
        )
        .service(
            "maps",
            "/maps",
            &upstream.url(),
            &["auth: { kind: api_key, query: key, value: \"k&1\" }"],
        )
        .service(
            "twilio",
            "/twilio",
            &upstream.url(),
            &["auth: { kind: basic, username: AC123, password: tok }"],
        )
        .build();
    let sidecar = Sidecar::start(&body);
    get_with(
        &sidecar,
        "/resend/emails",
        &[("x-api-key", "app-key"), ("authorization", "Bearer app")],
    )
    .await;
    get_with(&sidecar, "/maps/geo?key=app&q=venue", &[]).await;
    get_with(
        &sidecar,
        "/twilio/Messages.json",
        &[("authorization", "Basic YXBwOmFwcA==")],
    )
    .await;
    let seen = upstream.requests();
    assert_eq!(seen[0].headers["x-api-key"], "re_key_1");
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(seen[1].uri, "/geo?q=venue&key=k%261");
    assert_eq!(seen[2].headers["authorization"], "Basic QUMxMjM6dG9r");
}

async fn get_with(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)]) -> Answer {
    let answer = send("GET", &sidecar.egress_url(path), headers, Bytes::new()).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    answer
}

/// A token endpoint issuing `at-1`, `at-2`, ... each valid for `expires_in` seconds.
async fn token_server(expires_in: u64, delay: Duration) -> MockServer {
    let issued = AtomicUsize::new(0);
    MockServer::start(move |_| {
        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
        MockAnswer::ok(&format!(
            r#"{{"access_token":"at-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
        ))
        .delayed(delay)
    })
    .await
}

fn oauth_body(upstream: &MockServer, tokens: &MockServer) -> String {
    let auth = format!(
        "auth:\n  kind: oauth2\n  token_url: {}/oauth/token\n  client_id: wedsync\n  client_secret: s3cret-value\n  scopes: [suppliers.read]\n  audience: suppliers-api\n  refresh_before: 1s",
        tokens.url()
    );
    Yaml::new()
        .service("suppliers", "/suppliers", &upstream.url(), &[&auth])
        .build()
}

#[tokio::test]
async fn oauth2_fetches_one_token_for_fifty_concurrent_requests_and_caches_it() {
    let tokens = token_server(3600, Duration::from_millis(200)).await;
    let upstream = MockServer::start(|_| MockAnswer::ok("suppliers")).await;
    let sidecar = Sidecar::start(&oauth_body(&upstream, &tokens));

    let requests: Vec<_> = (0..50)
        .map(|_| tokio::spawn(get(&sidecar.egress_url("/suppliers/v1/vendors"))))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().status, 200);
    }
    assert_eq!(
        tokens.requests().len(),
        1,
        "single flight: one token request for a cold cache"
    );
    let token_request = &tokens.requests()[0];
    assert_eq!(token_request.method, "POST");
    assert_eq!(token_request.uri, "/oauth/token");
    assert_eq!(
        token_request.headers["authorization"],
        "Basic d2Vkc3luYzpzM2NyZXQtdmFsdWU="
    );
    assert_eq!(
        &token_request.body[..],
        b"grant_type=client_credentials&scope=suppliers.read&audience=suppliers-api"
    );
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer at-1"));

    get(&sidecar.egress_url("/suppliers/v1/vendors")).await;
    assert_eq!(tokens.requests().len(), 1, "the cached token is reused");
    sidecar
        .metrics_containing(&[
            "sidecar_oauth2_token_refreshes_total{egress_service=\"suppliers\",outcome=\"success\"} 1",
        ])
        .await;
    assert!(!sidecar.logs().contains("at-1"), "a token reached the log");
}

#[tokio::test]
async fn oauth2_refreshes_before_expiry() {
    let tokens = token_server(2, Duration::ZERO).await;
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let sidecar = Sidecar::start(&oauth_body(&upstream, &tokens));
    get(&sidecar.egress_url("/suppliers/a")).await;
    // Lifetime 2s, refresh_before 1s: after 1.2s the token is in its refresh window.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    get(&sidecar.egress_url("/suppliers/b")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    get(&sidecar.egress_url("/suppliers/c")).await;
    let auth: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].clone())
        .collect();
    assert_eq!(
        auth,
        ["Bearer at-1", "Bearer at-1", "Bearer at-2"],
        "refreshed in the background before expiry"
    );
}

#[tokio::test]
async fn oauth2_endpoint_down_answers_502_without_forwarding_and_recovers() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let tokens = MockServer::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            MockAnswer::ok(r#"{"access_token":"at-ok","expires_in":3600}"#)
        } else {
            MockAnswer::status(503, r#"{"error":"temporarily_unavailable"}"#)
        }
    })
    .await;
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let sidecar = Sidecar::start(&oauth_body(&upstream, &tokens));
    let answer = get(&sidecar.egress_url("/suppliers/x")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["x-sidecar-error"], "credentials_unavailable");
    assert!(
        answer
            .text()
            .contains("answered 503 (temporarily_unavailable)"),
        "{}",
        answer.text()
    );
    assert!(!answer.text().contains("s3cret-value"));
    assert!(
        upstream.requests().is_empty(),
        "never forwarded without credentials"
    );

    healthy.store(true, Ordering::SeqCst);
    let answer = get(&sidecar.egress_url("/suppliers/x")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        upstream.requests()[0].headers["authorization"],
        "Bearer at-ok"
    );
}

#[tokio::test]
async fn an_upstream_401_invalidates_the_cached_token() {
    let tokens = token_server(3600, Duration::ZERO).await;
    let upstream = MockServer::start(|seen| {
        if seen.headers["authorization"] == "Bearer at-1" {
            MockAnswer::status(401, "revoked")
        } else {
            MockAnswer::ok("ok")
        }
    })
    .await;
    let sidecar = Sidecar::start(&oauth_body(&upstream, &tokens));
    assert_eq!(
        get(&sidecar.egress_url("/suppliers/x")).await.status,
        401,
        "the provider's 401 passes through"
    );
    assert_eq!(get(&sidecar.egress_url("/suppliers/x")).await.status, 200);
    assert_eq!(tokens.requests().len(), 2);
}

#[tokio::test]
async fn slow_providers_time_out_with_504_and_closed_ports_answer_502() {
    let slow = MockServer::start(|_| MockAnswer::ok("late").delayed(Duration::from_secs(3))).await;
    let closed = free_port();
    let body = Yaml::new()
        .service("slow", "/slow", &slow.url(), &["timeout: 300ms"])
        .service(
            "gone",
            "/gone",
            &format!("http://127.0.0.1:{closed}"),
            &["connect_timeout: 200ms"],
        )
        .build();
    let sidecar = Sidecar::start(&body);
    let started = std::time::Instant::now();
    let answer = get(&sidecar.egress_url("/slow/x")).await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.headers["x-sidecar-error"], "upstream_timeout");
    assert_eq!(answer.json()["detail"], "slow did not answer within 300ms");
    assert!(started.elapsed() < Duration::from_secs(2));
    let answer = get(&sidecar.egress_url("/gone/x")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["x-sidecar-error"], "upstream_unreachable");
    assert_eq!(
        answer.json()["type"],
        "urn:wedsync-sidecar:error:upstream_unreachable"
    );
}

#[tokio::test]
async fn unresolvable_names_and_providers_that_hang_up_answer_502_with_the_reason() {
    let hangup_addr = hangup_provider().await;
    let body = Yaml::new()
        .service("nowhere", "/nowhere", "http://no-such-host.invalid", &[])
        .service("hangup", "/hangup", &format!("http://{hangup_addr}"), &[])
        .build();
    let sidecar = Sidecar::start(&body);

    let answer = get(&sidecar.egress_url("/nowhere/x")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["x-sidecar-error"], "upstream_unreachable");
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.starts_with("cannot reach nowhere: cannot resolve no-such-host.invalid"),
        "the resolver's reason is kept: {detail}"
    );

    let answer = get(&sidecar.egress_url("/hangup/x")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["x-sidecar-error"], "upstream_failed");
    assert_eq!(
        answer.json()["type"],
        "urn:wedsync-sidecar:error:upstream_failed"
    );
    assert!(answer.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("the connection to hangup failed"));
    sidecar
        .metrics_containing(&[
            "sidecar_egress_requests_total{code=\"502\",egress_service=\"hangup\"} 1",
            "sidecar_egress_requests_total{code=\"502\",egress_service=\"nowhere\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn tls_upstreams_are_verified_against_a_private_ca_with_sni() {
    let pki = test_pki("localhost");
    let upstream =
        MockServer::start_with_tls(|_| MockAnswer::ok("secure"), Some(pki.acceptor.clone())).await;
    let port = upstream.addr.port();
    let dir = tempdir();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let body = Yaml::new()
        .service(
            "trusted",
            "/trusted",
            &format!("https://localhost:{port}"),
            &[&format!("ca_file: {}", ca.display())],
        )
        .service(
            "untrusted",
            "/untrusted",
            &format!("https://localhost:{port}"),
            &[],
        )
        .service(
            "wrongname",
            "/wrongname",
            &format!("https://127.0.0.1:{port}"),
            &[&format!("ca_file: {}", ca.display())],
        )
        .build();
    let sidecar = Sidecar::start(&body);
    let answer = get(&sidecar.egress_url("/trusted/x")).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "secure"));
    assert_eq!(
        upstream.requests()[0].headers["host"],
        format!("localhost:{port}")
    );
    for path in ["/untrusted/x", "/wrongname/x"] {
        let answer = get(&sidecar.egress_url(path)).await;
        assert_eq!(answer.status, 502, "{path}");
        assert_eq!(
            answer.headers["x-sidecar-error"], "upstream_unreachable",
            "{path}"
        );
    }
    assert_eq!(upstream.requests().len(), 1);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sidecar-pki-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn streams_50_mib_both_ways_without_buffering_it() {
    const SIZE: usize = 50 << 20;
    let upstream = MockServer::start(|seen| {
        if seen.method == "GET" {
            MockAnswer::ok("").with_body(Bytes::from(vec![b'x'; SIZE]))
        } else {
            MockAnswer::ok(&seen.body_len.to_string())
        }
    })
    .await;
    let sidecar = Sidecar::start(
        &Yaml::new()
            .service("files", "/files", &upstream.url(), &[])
            .build(),
    );
    get(&sidecar.egress_url("/files/warmup")).await;
    let (_, peak_before) = sidecar.rss_kib();

    let chunks = ChunkedBody { remaining: SIZE };
    let answer = send_body("PUT", &sidecar.egress_url("/files/upload"), &[], chunks).await;
    assert_eq!(
        answer.text(),
        SIZE.to_string(),
        "the whole body arrived upstream"
    );
    let answer = get(&sidecar.egress_url("/files/download")).await;
    assert_eq!(answer.body.len(), SIZE);

    let (_, peak_after) = sidecar.rss_kib();
    let growth_mib = (peak_after.saturating_sub(peak_before)) / 1024;
    assert!(
        growth_mib < 16,
        "peak RSS grew by {growth_mib} MiB while streaming 50 MiB each way"
    );
}

/// A token endpoint promising a lifetime near the end of time: the sidecar
/// keeps serving (no overflow of the clock), with the token cached.
#[tokio::test]
async fn an_oauth2_expires_in_near_u64_max_is_served_and_cached() {
    let tokens = token_server(u64::MAX - 1, Duration::ZERO).await;
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let sidecar = Sidecar::start(&oauth_body(&upstream, &tokens));
    for path in ["/suppliers/a", "/suppliers/b"] {
        get_with(&sidecar, path, &[]).await;
    }
    assert_eq!(tokens.requests().len(), 1);
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer at-1"));
    assert!(!sidecar.logs().contains("panicked"), "{}", sidecar.logs());
}

/// An app's request id is kept only when it is 1 to 128 visible token
/// characters: one with spaces could forge fields in the text access log.
#[tokio::test]
async fn a_request_id_that_could_forge_log_fields_is_replaced() {
    let upstream = MockServer::start(|_| MockAnswer::ok("ok")).await;
    let sidecar = Sidecar::start(
        &Yaml::new()
            .service("stripe", "/stripe", &upstream.url(), &[])
            .build(),
    );
    let kept = get_with(
        &sidecar,
        "/stripe/a",
        &[("x-request-id", "req-42.abc_DEF~1")],
    )
    .await;
    assert_eq!(kept.headers["x-request-id"], "req-42.abc_DEF~1");
    let forged = "x status=200 service=payments";
    let replaced = get_with(&sidecar, "/stripe/b", &[("x-request-id", forged)]).await;
    let id = &replaced.headers["x-request-id"];
    assert_eq!(id.len(), 32, "a new id: {id}");
    assert_eq!(upstream.requests()[1].headers["x-request-id"], *id);
    let long = "a".repeat(129);
    let replaced = get_with(&sidecar, "/stripe/c", &[("x-request-id", long.as_str())]).await;
    assert_ne!(replaced.headers["x-request-id"], long);
    let logs = sidecar.log_containing(id).await;
    assert!(!logs.contains("service=payments"), "{logs}");
}

/// Answers after which the sidecar closes the connection say so: an app's
/// pool that saw `keep-alive` would send its next request into a closed
/// socket.
#[tokio::test]
async fn answers_that_close_the_connection_say_connection_close() {
    let slow = MockServer::start(|_| MockAnswer::ok("late").delayed(Duration::from_secs(3))).await;
    let closed = free_port();
    let hangup_addr = hangup_provider().await;
    let body = Yaml::new()
        .service("slow", "/slow", &slow.url(), &["timeout: 300ms"])
        .service(
            "gone",
            "/gone",
            &format!("http://127.0.0.1:{closed}"),
            &["connect_timeout: 200ms"],
        )
        .service("hangup", "/hangup", &format!("http://{hangup_addr}"), &[])
        .build();
    let sidecar = Sidecar::start(&body);
    for (path, status, code) in [
        ("/slow/x", 504, "upstream_timeout"),
        ("/gone/x", 502, "upstream_unreachable"),
        ("/hangup/x", 502, "upstream_failed"),
    ] {
        let answer = get(&sidecar.egress_url(path)).await;
        assert_eq!(
            (answer.status, answer.headers["x-sidecar-error"].as_str()),
            (status, code)
        );
        assert_eq!(
            answer.headers.get("connection").map(String::as_str),
            Some("close"),
            "{path}"
        );
    }
}

/// A provider that reads the request and closes without answering.
async fn hangup_provider() -> std::net::SocketAddr {
    let hangup = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hangup.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = hangup.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
            drop(stream);
        }
    });
    addr
}

/// `timeout` bounds the whole exchange, its status line, headers and any
/// `1xx` answers included: a provider that trickles them is cut off at the
/// deadline with `504 upstream_timeout`, and the breaker counts a failure.
#[tokio::test]
async fn a_provider_that_trickles_its_headers_or_sends_endless_1xx_is_cut_off_at_the_timeout() {
    let headers = stalling_provider("headers").await;
    let continues = stalling_provider("continues").await;
    let breaker = "circuit_breaker: { failure_threshold: 2, open_for: 1m }";
    let body = Yaml::new()
        .service(
            "trickle",
            "/trickle",
            &format!("http://{headers}"),
            &["timeout: 1s", breaker],
        )
        .service(
            "continues",
            "/continues",
            &format!("http://{continues}"),
            &["timeout: 1s", breaker],
        )
        .upstream("trickling", format!("{{ backends: [{headers}] }}"))
        .group_service("grouped", "/grouped", "trickling", &["timeout: 1s"])
        .build();
    let sidecar = Sidecar::start(&body);
    for path in ["/trickle/x", "/continues/x", "/grouped/x"] {
        let started = std::time::Instant::now();
        let answer = get(&sidecar.egress_url(path)).await;
        let took = started.elapsed();
        assert_eq!(answer.status, 504, "{path}: {}", answer.text());
        assert_eq!(
            answer.headers["x-sidecar-error"], "upstream_timeout",
            "{path}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
            "{path} answered after {took:?}"
        );
    }
    // The second failure opens each breaker: the next call is refused at once.
    for path in ["/trickle/x", "/continues/x"] {
        assert_eq!(get(&sidecar.egress_url(path)).await.status, 504, "{path}");
        let answer = get(&sidecar.egress_url(path)).await;
        assert_eq!(answer.status, 503, "{path}");
        assert_eq!(answer.headers["x-sidecar-error"], "circuit_open", "{path}");
    }
}
