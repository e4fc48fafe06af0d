//! An anonymous flood against the webhook listener, as an attacker without
//! a secret would send it: CONNECTIONS connections each declare a body of
//! BODY bytes with a fresh Stripe timestamp and a wrong MAC (so every check
//! that needs no body passes), send all but its last byte and hold. During
//! the flood one genuine, signed webhook is sent; then the flood closes.
//! Prints one JSON line: RSS of the sidecar (pid PID) before, at the peak of
//! the flood, right after it and SETTLE seconds later (KiB), how the flood's
//! requests were answered while held, and the genuine webhook's status and
//! latency. Loopback only, bounded in time.
//!
//! Usage: ingress_flood URL SECRET PID [CONNECTIONS] [BODY] [HOLD_SECONDS] [SETTLE_SECONDS]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wedsync_sidecar::webhooks::verify::stripe::Stripe;
use wedsync_sidecar::webhooks::verify::Scheme;

mod common;
use common::rss_kib;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sends everything but the body's last byte; returns the connection and
/// whatever the sidecar answered within `wait` (or nothing).
async fn hold(address: &str, path: &str, body: usize) -> (Option<TcpStream>, String) {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return (None, "connect_failed".into());
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: flood\r\ncontent-type: application/json\r\nstripe-signature: t={},v1={}\r\ncontent-length: {body}\r\n\r\n",
        now(),
        "0".repeat(64)
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return (None, "closed".into());
    }
    let chunk = vec![b'x'; 64 << 10];
    let mut left = body - 1;
    while left > 0 {
        let n = left.min(chunk.len());
        // A refused request is answered and closed at once; stop writing then.
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(&chunk[..n])).await {
            Ok(Ok(())) => left -= n,
            _ => break,
        }
    }
    let mut answer = [0u8; 12];
    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut answer)).await {
        Ok(Ok(n)) if n >= 12 => {
            let status = String::from_utf8_lossy(&answer[9..12]).into_owned();
            (None, status)
        }
        Ok(_) => (None, "closed".into()),
        Err(_) => (Some(stream), "held".into()),
    }
}

async fn genuine(address: &str, path: &str, secret: &str) -> (u16, Duration) {
    let scheme = Stripe {
        keys: vec![secret.as_bytes().to_vec()],
        tolerance: Duration::from_secs(300),
    };
    let body = format!(
        r#"{{"id":"evt_genuine_{}","type":"payment_intent.succeeded"}}"#,
        now()
    );
    let signature = scheme.sign(body.as_bytes(), now()).headers[0].1.clone();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: provider\r\ncontent-type: application/json\r\nstripe-signature: {signature}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let status = String::from_utf8_lossy(answer.get(9..12).unwrap_or(b"000"))
        .parse()
        .unwrap_or(0);
    (status, started.elapsed())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url: hyper::Uri = args[1].parse().unwrap();
    let secret = args[2].clone();
    let pid = args[3].clone();
    let arg = |i: usize, default: u64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let connections = arg(4, 400) as usize;
    let body = arg(5, 1 << 20) as usize;
    let hold_for = Duration::from_secs(arg(6, 3));
    let settle = Duration::from_secs(arg(7, 20));
    let address = format!("{}:{}", url.host().unwrap(), url.port_u16().unwrap());
    let path = url.path().to_string();

    let before = rss_kib(&pid);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (address, path) = (address.clone(), path.clone());
        tasks.spawn(async move { hold(&address, &path, body).await });
    }
    let mut held = Vec::new();
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        let (stream, answer) = result.unwrap();
        *answers.entry(answer).or_default() += 1;
        held.extend(stream);
    }
    let (status, latency) = genuine(&address, &path, &secret).await;
    let mut peak = rss_kib(&pid);
    let held_until = Instant::now() + hold_for;
    while Instant::now() < held_until {
        peak = peak.max(rss_kib(&pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(&pid);
    tokio::time::sleep(settle).await;
    let settled = rss_kib(&pid);
    let answers: serde_json::Map<String, serde_json::Value> = answers
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::from(v)))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "connections": connections,
            "body_bytes": body,
            "flood_answers": answers,
            "genuine_status": status,
            "genuine_ms": latency.as_secs_f64() * 1000.0,
            "rss_kib": { "before": before, "peak": peak, "after": after, "settled": settled },
            "growth_mib": (peak.saturating_sub(before)) as f64 / 1024.0,
            "settled_growth_mib": (settled.saturating_sub(before)) as f64 / 1024.0,
        })
    );
}
