//! What the webhook load generators share: Stripe-signed 2 KiB events with
//! fresh ids, keep-alive HTTP/1 connections to the sidecar's ingress, and
//! the resident memory of the sidecar under load.

// Each example uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use wedsync_sidecar::webhooks::verify::stripe::Stripe;
use wedsync_sidecar::webhooks::verify::Scheme;

pub struct SignedEvents {
    scheme: Stripe,
    /// Makes each event about 2 KiB, a typical Stripe payload.
    padding: String,
}

impl SignedEvents {
    pub fn new(secret: String) -> Self {
        Self {
            scheme: Stripe {
                keys: vec![secret.into_bytes()],
                tolerance: Duration::from_secs(300),
            },
            padding: "x".repeat(2000),
        }
    }

    /// A POST of the event `id` to `path`, signed now.
    pub fn request(&self, path: &str, id: &str) -> hyper::Request<Full<Bytes>> {
        let body = format!(
            r#"{{"id":"{id}","type":"payment_intent.succeeded","pad":"{}"}}"#,
            self.padding
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let signature = self.scheme.sign(body.as_bytes(), now).headers[0].1.clone();
        hyper::Request::post(path)
            .header("host", "localhost")
            .header("stripe-signature", signature)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }
}

/// A keep-alive connection to `url`'s host and port.
pub async fn connect(url: &hyper::Uri) -> SendRequest<Full<Bytes>> {
    let address = format!("{}:{}", url.host().unwrap(), url.port_u16().unwrap());
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (connection, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(driver);
    connection
}

/// The resident memory of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
