//! The operator console's server side, black-box: the page and its assets,
//! the `Host` check (DNS rebinding), the headers on every answer, the one
//! list of paths served without the token, read-only mode, and the
//! overview the page refreshes. The page itself is tested in Chromium by
//! `tests/browser/console.spec.mjs`.

mod support;

use bytes::Bytes;
use support::*;

const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn config(admin: &str) -> String {
    Yaml::new()
        .with(admin)
        .upstream("notify", "{ backends: [127.0.0.1:9] }")
        .stripe_webhook(&["routes: [{ events: [\"*\"], targets: [notify] }]"])
        .build()
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    send("GET", url, headers, Bytes::new()).await
}

#[tokio::test]
async fn the_page_is_served_with_its_assets_and_the_security_headers_on_every_answer() {
    let sidecar = Sidecar::start(&config(""));
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/events?status=dead", "text/html; charset=utf-8"),
        ("/event?source=stripe&id=evt_1", "text/html; charset=utf-8"),
        ("/config", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
    ] {
        let answer = get(&sidecar.admin_url(path)).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.headers["content-type"], content_type, "{path}");
    }
    let page = get(&sidecar.admin_url("/")).await;
    assert!(String::from_utf8_lossy(&page.body).contains("<script src=\"/console/app.js\""));
    // Every answer: a page, the API, a refusal, a probe.
    for path in [
        "/",
        "/admin/events",
        "/admin/overview",
        "/nowhere",
        "/healthz",
        "/metrics",
    ] {
        let answer = get(&sidecar.admin_url(path)).await;
        assert_eq!(
            answer.headers["content-security-policy"],
            "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
        assert_eq!(answer.headers["referrer-policy"], "no-referrer");
        assert_eq!(answer.headers["cache-control"], "no-store");
    }
    let post = send(
        "POST",
        &sidecar.admin_url("/console/app.js"),
        &[("content-type", "application/json")],
        Bytes::new(),
    )
    .await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn only_loopback_names_and_admin_hosts_are_served_but_probes_answer_any() {
    let sidecar = Sidecar::start(&config("admin: { hosts: [sidecar.wedsync.internal] }"));
    for host in [
        "localhost",
        "localhost:9901",
        "127.0.0.1:1",
        "[::1]:9901",
        "sidecar.wedsync.internal:9901",
    ] {
        for path in ["/", "/admin/events", "/admin/overview"] {
            let answer = get_with(&sidecar.admin_url(path), &[("host", host)]).await;
            assert_eq!(answer.status, 200, "{host} {path}");
        }
    }
    for host in [
        "evil.example",
        "evil.example:9901",
        "localhost.evil.example",
        "10.1.2.3:9901",
    ] {
        for path in ["/", "/console/app.js", "/admin/events", "/admin/config"] {
            let answer = get_with(&sidecar.admin_url(path), &[("host", host)]).await;
            assert_eq!(answer.status, 421, "{host} {path}");
            assert_eq!(answer.headers["x-sidecar-error"], "misdirected_request");
        }
        let post = send(
            "POST",
            &sidecar.admin_url("/admin/events/redeliver"),
            &[("host", host), ("content-type", "application/json")],
            Bytes::new(),
        )
        .await;
        assert_eq!(post.status, 421, "a rebound page cannot act either");
        for path in ["/healthz", "/readyz", "/metrics"] {
            let answer = get_with(&sidecar.admin_url(path), &[("host", host)]).await;
            assert_eq!(
                answer.status, 200,
                "the kubelet and Prometheus use the pod's IP: {path}"
            );
        }
    }
}

/// Every path the admin listener knows, and some it does not: with a
/// token set, each needs it unless it is in the one public list.
#[tokio::test]
async fn every_path_but_the_public_list_needs_the_token() {
    let sidecar = Sidecar::start_with_env(
        &config("admin:\n  token: \"${env:TEST_ADMIN_TOKEN}\""),
        &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let public = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/events",
        "/event",
        "/config",
        "/console/app.js",
        "/console/app.css",
        "/console/icon.svg",
    ];
    for path in public {
        assert_eq!(get(&sidecar.admin_url(path)).await.status, 200, "{path}");
    }
    let guarded = [
        "/admin/overview",
        "/admin/config",
        "/admin/services",
        "/admin/upstreams",
        "/admin/store",
        "/admin/events",
        "/admin/events/stripe/evt_1",
        "/admin/dead-letters",
        "/admin/dead-letters/1",
        "/admin/nothing",
        "/console/other.js",
        "/console/",
        "/index.html",
        "/events/",
        "/anything",
        "/metrics/",
        "/healthz/x",
    ];
    for path in guarded {
        let answer = get(&sidecar.admin_url(path)).await;
        assert_eq!(answer.status, 401, "{path}");
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let overview = get_with(
        &sidecar.admin_url("/admin/overview"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(overview.status, 200);
    let overview: serde_json::Value = serde_json::from_slice(&overview.body).unwrap();
    assert_eq!(overview["console"]["token_required"], true);
}

#[tokio::test]
async fn read_only_serves_the_page_and_reads_and_refuses_every_change() {
    let sidecar = Sidecar::start(&config("admin: { read_only: true }"));
    assert_eq!(post_stripe(&sidecar, "evt_read_only").await.status, 202);
    for path in [
        "/",
        "/admin/events",
        "/admin/events/stripe/evt_read_only",
        "/admin/dead-letters",
    ] {
        assert_eq!(get(&sidecar.admin_url(path)).await.status, 200, "{path}");
    }
    let json = [("content-type", "application/json")];
    for (method, path) in [
        ("POST", "/admin/events/redeliver?dry_run=true"),
        ("POST", "/admin/events/redeliver"),
        ("POST", "/admin/events/stripe/evt_read_only/redeliver"),
        ("POST", "/admin/dead-letters/replay"),
        ("POST", "/admin/dead-letters/1/replay"),
        ("DELETE", "/admin/dead-letters/1"),
    ] {
        let answer = send(method, &sidecar.admin_url(path), &json, Bytes::new()).await;
        assert_eq!(answer.status, 403, "{method} {path}");
        assert_eq!(answer.headers["x-sidecar-error"], "forbidden");
    }
    let overview: serde_json::Value =
        serde_json::from_slice(&get(&sidecar.admin_url("/admin/overview")).await.body).unwrap();
    assert_eq!(overview["console"]["read_only"], true);
}

#[tokio::test]
async fn the_overview_shows_the_pod_its_store_queue_recent_events_and_last_reload() {
    let sidecar = Sidecar::start(&config(""));
    for n in 0..3 {
        assert_eq!(
            post_stripe(&sidecar, &format!("evt_overview_{n}"))
                .await
                .status,
            202
        );
    }
    let overview: serde_json::Value =
        serde_json::from_slice(&get(&sidecar.admin_url("/admin/overview")).await.body).unwrap();
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(overview["listeners"]["admin"], sidecar.admin.to_string());
    assert_eq!(overview["store"]["kind"], "embedded");
    assert_eq!(overview["events"]["last_5m"]["accepted"], 3);
    assert_eq!(overview["events"]["last_60m"]["accepted"], 3);
    assert_eq!(overview["webhooks"], serde_json::json!(["stripe"]));
    let backends = &overview["upstreams"]["notify"]["backends"];
    assert_eq!(backends[0]["addr"], "127.0.0.1:9");
    assert!(overview["queue"]["normal"].as_u64().is_some(), "{overview}");
    assert_eq!(overview["last_reload"], serde_json::Value::Null);
    // A config that does not load: the reload is rejected, and says why.
    sidecar.edit_config(|text| format!("{text}\ndrain_delay: soon\n"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let overview: serde_json::Value =
            serde_json::from_slice(&get(&sidecar.admin_url("/admin/overview")).await.body).unwrap();
        if overview["last_reload"]["result"] == "rejected" {
            assert!(overview["last_reload"]["error"]
                .as_str()
                .unwrap()
                .contains("drain_delay"));
            assert!(overview["last_reload"]["at_ms"].as_u64().unwrap() > 0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload recorded: {overview}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
