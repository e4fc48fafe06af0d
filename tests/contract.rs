//! What the README promises of every answer and of the command line, held
//! against the running binary: the request id on every answer of every
//! listener, the app's first `Retry-After` within `max_pause`, health
//! checks that call a backend by its address, a man page that names no
//! page nothing installs and survives `| head`, and an idle sidecar that
//! has nothing in flight when it stops.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use tokio::io::AsyncWriteExt;

fn webhook_config(target: &MockServer) -> String {
    Yaml::new()
        .with("drain_delay: 0s")
        .upstream("notify", format!("{{ backends: [{}] }}", target.addr))
        .stripe_webhook(&[
            "max_body: 1KiB",
            "routes: [{ events: [\"payment_intent.*\"], targets: [notify] }]",
        ])
        .build()
}

fn assert_request_id(what: &str, answer: &Answer) {
    let id = answer.headers.get("x-request-id");
    assert!(
        id.is_some_and(|id| !id.is_empty()),
        "{what}: {} without x-request-id: {:?}",
        answer.status,
        answer.headers
    );
}

#[tokio::test]
async fn every_answer_of_the_ingress_and_the_admin_listener_carries_a_request_id() {
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let sidecar = Sidecar::start(&webhook_config(&target));
    let ingress = |path: &str| format!("http://{}{path}", sidecar.ingress);
    let json = ("content-type", "application/json");
    // Ingress: 202, 401, 404, 413.
    let accepted = post_stripe(&sidecar, "evt_contract_1").await;
    assert_eq!(accepted.status, 202);
    assert_request_id("202", &accepted);
    let forged = send(
        "POST",
        &ingress("/webhooks/stripe"),
        &[json, ("stripe-signature", "t=1,v1=00")],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(forged.status, 401);
    assert_request_id("ingress 401", &forged);
    let nowhere = send("POST", &ingress("/webhooks/nowhere"), &[json], Bytes::new()).await;
    assert_eq!(nowhere.status, 404);
    assert_request_id("ingress 404", &nowhere);
    let large = send(
        "POST",
        &ingress("/webhooks/stripe"),
        &[json],
        Bytes::from(vec![b'x'; 4096]),
    )
    .await;
    assert_eq!(large.status, 413);
    assert_request_id("ingress 413", &large);
    // The provider's own id, when usable, is kept.
    let kept = send(
        "POST",
        &ingress("/webhooks/nowhere"),
        &[json, ("x-request-id", "req-from-provider-1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(kept.headers["x-request-id"], "req-from-provider-1");
    // 431 comes before any session: written whole, with an id of its own.
    let huge = format!(
        "GET /webhooks/stripe HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let mut stream = tokio::net::TcpStream::connect(sidecar.ingress)
        .await
        .unwrap();
    stream.write_all(huge.as_bytes()).await.unwrap();
    let answer = answer_within(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nx-request-id: "),
        "{answer}"
    );
    // Admin: 400, 404, 409, 415, and 200.
    let admin = |path: &str| sidecar.admin_url(path);
    let bad = get(&admin("/admin/dead-letters?limit=lots")).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_request_id("admin 400", &bad);
    let missing = get(&admin("/admin/nothing-here")).await;
    assert_eq!(missing.status, 404);
    assert_request_id("admin 404", &missing);
    let no_type = send(
        "POST",
        &admin("/admin/dead-letters/replay"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(no_type.status, 415);
    assert_request_id("admin 415", &no_type);
    // An event no route takes is an unrouted dead letter, which has no target.
    let body = br#"{"id":"evt_unrouted","type":"customer.created"}"#;
    let signature = stripe_signature_with(SECRET, body);
    let unrouted = send(
        "POST",
        &ingress("/webhooks/stripe"),
        &[json, ("stripe-signature", &signature)],
        Bytes::from_static(body),
    )
    .await;
    assert_eq!(unrouted.status, 202);
    let letters = get(&admin("/admin/dead-letters")).await.json();
    let id = match &letters["items"][0]["id"] {
        serde_json::Value::String(id) => id.clone(),
        other => other.to_string(),
    };
    let conflict = send(
        "POST",
        &admin(&format!("/admin/dead-letters/{id}/replay")),
        &[json],
        Bytes::new(),
    )
    .await;
    assert_eq!(conflict.status, 409, "{}", conflict.text());
    assert_request_id("admin 409", &conflict);
    assert_request_id("admin 200", &get(&admin("/admin/config")).await);
}

#[tokio::test]
async fn the_apps_first_retry_after_is_within_max_pause() {
    let provider = MockServer::start(|_| {
        MockAnswer::status(429, r#"{"error":"slow down"}"#).header("retry-after", "100")
    })
    .await;
    let sidecar = Sidecar::start(
        &Yaml::new()
            .service("resend", "/resend", &provider.url(), &["max_pause: 3s"])
            .build(),
    );
    let first = get(&sidecar.egress_url("/resend/emails")).await;
    assert_eq!(first.status, 429);
    assert_eq!(
        first.headers["retry-after"], "3",
        "the provider's own answer"
    );
    let later = get(&sidecar.egress_url("/resend/emails")).await;
    assert_eq!(later.status, 429);
    assert_eq!(later.headers["x-sidecar-error"], "provider_throttled");
    assert!(
        later.headers["retry-after"].parse::<u64>().unwrap() <= 3,
        "{:?}",
        later.headers
    );
}

#[tokio::test]
async fn an_http_health_check_calls_a_backend_by_its_address() {
    let backend = MockServer::start(|_| MockAnswer::status(200, "ok")).await;
    let sidecar = Sidecar::start(
        &Yaml::new()
            .upstream(
                "notify",
                format!(
                    "{{ backends: [{}], health_check: {{ kind: http, path: /healthz, interval: 1s, timeout: 1s }} }}",
                    backend.addr
                ),
            )
            .build(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = loop {
        if let Some(seen) = backend.requests().into_iter().find(|s| s.uri == "/healthz") {
            break seen;
        }
        assert!(Instant::now() < deadline, "no health check arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(probe.headers["host"], backend.addr.to_string());
    drop(sidecar);
}

#[test]
fn the_man_page_has_every_command_and_names_no_page_nothing_installs() {
    let man = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .arg("man")
        .output()
        .unwrap();
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(
        !page.contains("sidecar\\-run(1)") && !page.contains("(1)\n.SH"),
        "references to separate pages"
    );
    for command in [
        "run",
        "check",
        "sign",
        "inject",
        "publish",
        "schema",
        "completions",
        "dlq list",
        "events redeliver",
        "recover",
    ] {
        let heading = format!(".SS \"wedsync\\-sidecar {}\"", command.replace('-', "\\-"));
        assert!(page.contains(&heading), "{heading} missing");
    }
    // `man | head`: the reader closes the pipe early; that is no error.
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "\"{}\" man | head -1 >/dev/null; echo ${{PIPESTATUS:-}}",
            env!("CARGO_BIN_EXE_wedsync-sidecar")
        ))
        .output()
        .unwrap();
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "\"{}\" man | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}",
            env!("CARGO_BIN_EXE_wedsync-sidecar")
        ))
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn an_idle_sidecar_stops_with_nothing_in_flight() {
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let mut sidecar = Sidecar::start(&webhook_config(&target));
    let stopping = Instant::now();
    sidecar.signal("TERM");
    let status = loop {
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "still running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success());
    let logs = sidecar.logs();
    assert!(
        logs.contains("listeners stop accepting in_flight=0"),
        "{logs}"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "exited {:?} after SIGTERM with drain_delay 0s",
        stopping.elapsed()
    );
}
