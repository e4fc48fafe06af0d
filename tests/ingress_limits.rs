//! Black-box tests of what an anonymous client can hold on the public
//! webhook listener: connections, slow header sections and bodies, header
//! size, body memory, and refusals made from the headers alone, before a
//! byte of the body is read. Raw sockets, so each test controls exactly
//! what arrives and when.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(ingress: &str) -> String {
    Yaml::new()
        .with(format!("ingress: {ingress}"))
        .upstream("notify", "{ backends: [127.0.0.1:9] }")
        .stripe_webhook(&[
            "max_body: 1MiB",
            "routes: [{ events: [\"*\"], targets: [notify] }]",
        ])
        .build()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A header section with a fresh timestamp and a wrong MAC: every check
/// that needs no body passes.
fn forged_head(length: usize) -> String {
    format!(
        "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nstripe-signature: t={},v1={}\r\ncontent-length: {length}\r\n\r\n",
        now(),
        "0".repeat(64)
    )
}

async fn connect(sidecar: &Sidecar) -> TcpStream {
    TcpStream::connect(sidecar.ingress).await.unwrap()
}

async fn genuine_webhook(sidecar: &Sidecar, id: &str) -> u16 {
    let body = format!(r#"{{"id":"{id}","type":"payment_intent.succeeded"}}"#);
    let signature = stripe_signature_with(SECRET, body.as_bytes());
    send(
        "POST",
        &format!("http://{}/webhooks/stripe", sidecar.ingress),
        &[
            ("stripe-signature", signature.as_str()),
            ("content-type", "application/json"),
        ],
        bytes::Bytes::from(body),
    )
    .await
    .status
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_with_408() {
    let sidecar = Sidecar::start(&config("{ request_timeout: 1s }"));
    let mut stream = connect(&sidecar).await;
    let started = Instant::now();
    // One header byte every 200 ms: each read is quick, the whole is late.
    for byte in b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\n".iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let answer = answer_within(&mut stream, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-sidecar-error: request_timeout"),
        "{answer}"
    );
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"request_timeout\",webhook=\"-\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let sidecar = Sidecar::start(&config("{ request_timeout: 1s }"));
    let mut stream = connect(&sidecar).await;
    stream
        .write_all(forged_head(1000).as_bytes())
        .await
        .unwrap();
    stream.write_all(&[b'x'; 999]).await.unwrap();
    let answer = answer_within(&mut stream, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"request_timeout\",webhook=\"stripe\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn headers_over_16_kib_are_refused_with_431() {
    let sidecar = Sidecar::start(&config("{}"));
    let mut stream = connect(&sidecar).await;
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n",
        "a".repeat(17 << 10)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = answer_within(&mut stream, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains("x-sidecar-error: headers_too_large"),
        "{answer}"
    );
    // 15 KiB of headers are still fine.
    let mut stream = connect(&sidecar).await;
    let head = format!(
        "POST /webhooks/nowhere HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(15 << 10)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = answer_within(&mut stream, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[tokio::test]
async fn what_needs_no_body_is_answered_before_the_body_is_sent() {
    let sidecar = Sidecar::start(&config("{}"));
    // (request head, expected status line, expected detail)
    let stale = format!("t={},v1={}", now() - 3600, "0".repeat(64));
    let cases = [
        (
            "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n".to_string(),
            "HTTP/1.1 401",
            "missing_signature",
        ),
        (
            format!("POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: {stale}\r\ncontent-length: 500\r\n\r\n"),
            "HTTP/1.1 401",
            "timestamp_out_of_tolerance",
        ),
        (
            forged_head(2 << 20),
            "HTTP/1.1 413",
            "at most 1048576 bytes",
        ),
        (
            "POST /elsewhere HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n".to_string(),
            "HTTP/1.1 404",
            "no webhook is configured",
        ),
        (
            "PUT /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n".to_string(),
            "HTTP/1.1 405",
            "POST",
        ),
    ];
    for (head, status, detail) in cases {
        let mut stream = connect(&sidecar).await;
        stream.write_all(head.as_bytes()).await.unwrap();
        // No body follows: the answer must not wait for one.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "no answer (and close) for {head:?}");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(status), "{head:?}: {answer}");
        assert!(answer.contains(detail), "{head:?}: {answer}");
    }
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"missing_signature\",webhook=\"stripe\"} 1",
            "sidecar_webhook_rejections_total{reason=\"timestamp_out_of_tolerance\",webhook=\"stripe\"} 1",
            "sidecar_webhook_rejections_total{reason=\"payload_too_large\",webhook=\"stripe\"} 1",
        ])
        .await;
}

#[tokio::test]
async fn a_body_that_would_overrun_the_buffer_budget_is_refused_503_before_it_is_read() {
    let sidecar = Sidecar::start(&config("{ max_buffered: 256KiB }"));
    // 180 KiB is a large body: large ones may hold three quarters (192 KiB).
    let mut first = connect(&sidecar).await;
    first
        .write_all(forged_head(180 << 10).as_bytes())
        .await
        .unwrap();
    first.write_all(&[b'x'; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = connect(&sidecar).await;
    second
        .write_all(forged_head(180 << 10).as_bytes())
        .await
        .unwrap();
    let answer = answer_within(&mut second, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-sidecar-error: overloaded"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    // A small, genuine webhook still finds room.
    assert_eq!(genuine_webhook(&sidecar, "evt_small").await, 202);
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"overloaded\",webhook=\"stripe\"} 1",
        ])
        .await;
    drop(first);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_idle_ones_make_room() {
    let sidecar = Sidecar::start(&config("{ max_connections: 2 }"));
    // Two requests in progress hold both slots.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&sidecar).await;
        stream
            .write_all(b"POST /webhooks/stripe HTTP/1.1\r\n")
            .await
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect(&sidecar).await;
    let answer = answer_within(&mut third, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-sidecar-error: overloaded"), "{answer}");
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"overloaded\",webhook=\"-\"} 1",
        ])
        .await;
    drop(busy);
    // Two idle connections (nothing sent) yield to a newcomer: the refused
    // one tells them to close, and the next attempt gets in.
    let idle = [connect(&sidecar).await, connect(&sidecar).await];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut status = 0;
    for _ in 0..20 {
        status = genuine_webhook_on_fresh_connection(&sidecar).await;
        if status == 202 || status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status == 202 || status == 200, "got {status}");
    drop(idle);
}

async fn genuine_webhook_on_fresh_connection(sidecar: &Sidecar) -> u16 {
    try_post_stripe(sidecar, "evt_room")
        .await
        .map_or(0, |a| a.status)
}

#[tokio::test]
async fn expect_100_continue_is_answered_once_the_headers_pass() {
    let sidecar = Sidecar::start(&config("{}"));
    let body = br#"{"id":"evt_continue","type":"payment_intent.succeeded"}"#;
    let signature = stripe_signature_with(SECRET, body);
    let mut stream = connect(&sidecar).await;
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\nstripe-signature: {signature}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let interim = answer_within(&mut stream, Duration::from_secs(2)).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream.write_all(body).await.unwrap();
    let answer = answer_within(&mut stream, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

/// The flood of the hostile-input issue, smaller: anonymous connections
/// each declaring a large body with a fresh timestamp and a wrong MAC send
/// all but the last byte. Memory stays bounded, the excess is refused, and
/// a genuine webhook is answered at once. (`benches/flood.sh` runs the full
/// 400 × 1 MiB.)
#[tokio::test]
async fn a_flood_of_held_bodies_costs_bounded_memory_and_a_genuine_webhook_gets_through() {
    let sidecar = Sidecar::start(&config("{ max_buffered: 4MiB }"));
    let (before, _) = sidecar.rss_kib();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let mut stream = connect(&sidecar).await;
        stream
            .write_all(forged_head(512 << 10).as_bytes())
            .await
            .unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut left = (512 << 10) - 1;
        while left > 0 {
            let n = left.min(chunk.len());
            match tokio::time::timeout(Duration::from_millis(500), stream.write_all(&chunk[..n]))
                .await
            {
                Ok(Ok(())) => left -= n,
                _ => break,
            }
        }
        let answer = answer_within(&mut stream, Duration::from_millis(100)).await;
        if answer.starts_with("HTTP/1.1 503") {
            refused += 1;
        } else {
            assert_eq!(answer, "", "a held body is not answered yet");
            held.push(stream);
        }
    }
    assert_eq!(
        held.len(),
        6,
        "512 KiB bodies may hold 3 of 4 MiB: six of them"
    );
    assert_eq!(refused, 54);
    let started = Instant::now();
    assert_eq!(genuine_webhook(&sidecar, "evt_genuine").await, 202);
    assert!(started.elapsed() < Duration::from_secs(2));
    let (now, _) = sidecar.rss_kib();
    let growth_mib = now.saturating_sub(before) / 1024;
    assert!(growth_mib < 24, "RSS grew by {growth_mib} MiB");
    drop(held);
}

/// One answer read off `stream`: its header section (returned) and the
/// body its `content-length` announces.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "the connection closed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&seen).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head
}

/// A small event the app publishes to `events.wedding` with `key`.
async fn publish_small(sidecar: &Sidecar, key: &str) -> Answer {
    send(
        "POST",
        &sidecar.egress_url("/events/wedding"),
        &[
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        bytes::Bytes::from_static(br#"{"type":"payment.succeeded"}"#),
    )
    .await
}

/// `limits.memory` is kept: the app holds publish requests with 4 MiB
/// bodies open until the sidecar's memory nears its budget; from then on
/// new webhooks and published events are answered `503 overloaded` with
/// `Retry-After` while RSS is still under the budget, the egress proxy
/// keeps serving, and once the held bodies are let go and memory falls,
/// events are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_and_published_events_are_refused_before_memory_crosses_its_limit() {
    let upstream = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let budget_mib = 64u64;
    let body = Yaml::new()
        .with(format!("limits: {{ memory: {budget_mib}MiB }}"))
        .upstream("notify", "{ backends: [127.0.0.1:9] }")
        .service("stripe", "/stripe", &upstream.url(), &[])
        .stripe_webhook(&["routes: [{ events: [\"*\"], targets: [notify] }]"])
        .with("events:\n  wedding:\n    path: /events/wedding\n    max_body: 4MiB\n    routes: [{ events: [\"*\"], targets: [notify] }]\n")
        .build();
    let sidecar = Sidecar::start(&body);
    sidecar
        .metrics_containing(&[&format!("sidecar_memory_limit_bytes {}", budget_mib << 20)])
        .await;
    assert_eq!(publish_small(&sidecar, "before").await.status, 202);

    // Each held request has its 4 MiB body all but read.
    let length = 4 << 20;
    let mut held = Vec::new();
    let refused = loop {
        assert!(
            held.len() < 40,
            "never refused; RSS {:?} KiB",
            sidecar.rss_kib()
        );
        let mut stream = TcpStream::connect(sidecar.egress).await.unwrap();
        let head = format!(
            "POST /events/wedding HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&vec![b' '; length - 1]).await.unwrap();
        held.push(stream);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = publish_small(&sidecar, &format!("during-{}", held.len())).await;
        if answer.status != 202 {
            break answer;
        }
    };
    let (rss_kib, peak_kib) = sidecar.rss_kib();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.headers["x-sidecar-error"], "overloaded");
    assert_eq!(refused.headers["retry-after"], "5");
    assert!(refused.json()["detail"]
        .as_str()
        .unwrap()
        .contains("limits.memory"));
    assert!(
        peak_kib < budget_mib << 10,
        "RSS reached {peak_kib} KiB (now {rss_kib}) against a budget of {budget_mib} MiB"
    );
    // A refused small event keeps its connection: an app retrying at once
    // sends its next request on it instead of opening another.
    let mut kept = TcpStream::connect(sidecar.egress).await.unwrap();
    for n in 0..2 {
        let body = r#"{"type":"payment.succeeded"}"#;
        let request = format!(
            "POST /events/wedding HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nidempotency-key: kept-{n}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        kept.write_all(request.as_bytes()).await.unwrap();
        let head = read_answer(&mut kept).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    let webhook = post_stripe(&sidecar, "evt_during").await;
    assert_eq!(webhook.status, 503);
    assert_eq!(webhook.headers["x-sidecar-error"], "overloaded");
    // The app's calls to its providers go on.
    assert_eq!(
        get(&sidecar.egress_url("/stripe/v1/balance")).await.status,
        200
    );
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"overloaded\",webhook=\"stripe\"} 1",
            "sidecar_webhook_rejections_total{reason=\"overloaded\",webhook=\"wedding\"} 3",
        ])
        .await;

    drop(held);
    let started = Instant::now();
    loop {
        let answer = publish_small(&sidecar, &format!("after-{:?}", started.elapsed())).await;
        if answer.status == 202 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still refused with RSS {:?} KiB",
            sidecar.rss_kib()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sidecar.logs().contains("memory near limits.memory"));
    assert!(sidecar.logs().contains("memory back under limits.memory"));
}
