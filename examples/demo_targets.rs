//! The demo's internal services: a notification, an analytics and a
//! supplier service on 127.0.0.1:7001-7003 (as `conf/sidecar.yaml` names
//! them). Each answers `GET /healthz`, prints every delivered event with its
//! headers and whether its Standard Webhooks signature verifies, and
//! accepts it, unless switched to rejecting (to show dead letters):
//! `curl -X POST 127.0.0.1:7003/demo/reject` and `.../demo/accept`.
//! Usage: scripts/demo [secret] (the secret defaults to the demo
//! `delivery.signing_secret` of conf/sidecar.yaml).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use wedsync_sidecar::webhooks::verify::standard::Standard;
use wedsync_sidecar::webhooks::verify::{Inbound, Scheme};

const SERVICES: [(&str, &str); 3] = [
    ("notification-service", "127.0.0.1:7001"),
    ("analytics-service", "127.0.0.1:7002"),
    ("supplier-service", "127.0.0.1:7003"),
];
const DEMO_SECRET: &str = "whsec_ZGVtby1kZWxpdmVyeS1zaWduaW5nLWtleS0zMmJ5dGVz";

struct Target {
    name: &'static str,
    rejecting: AtomicBool,
    verifier: Standard,
}

type Response = hyper::Response<Full<Bytes>>;

fn answer(status: u16, body: &str) -> Response {
    hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

async fn handle(target: Arc<Target>, request: hyper::Request<hyper::body::Incoming>) -> Response {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/healthz") => answer(200, "ok"),
        ("POST", "/demo/reject") => {
            target.rejecting.store(true, Ordering::SeqCst);
            println!("[{}] now rejecting events with 422", target.name);
            answer(200, "rejecting\n")
        }
        ("POST", "/demo/accept") => {
            target.rejecting.store(false, Ordering::SeqCst);
            println!("[{}] now accepting events", target.name);
            answer(200, "accepting\n")
        }
        ("POST", path) => {
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            let now = wedsync_sidecar::time::unix_time().as_secs();
            let signature = match parts.headers.get("webhook-signature") {
                None => "unsigned",
                Some(_) => match target.verifier.verify(&Inbound {
                    headers: &parts.headers,
                    body: &body,
                    query: None,
                    now,
                }) {
                    Ok(()) => "signature ok",
                    Err(_) => "SIGNATURE INVALID",
                },
            };
            let rejecting = target.rejecting.load(Ordering::SeqCst);
            println!(
                "[{}] {path} {} {} from {} attempt {} wedding {} ({signature}, {} bytes){}",
                target.name,
                header("x-event-id"),
                header("x-event-type"),
                header("x-webhook-source"),
                header("x-delivery-attempt"),
                header("x-wedding-id"),
                body.len(),
                if rejecting { " -> 422" } else { "" }
            );
            if rejecting {
                answer(422, "rejected by the demo\n")
            } else {
                answer(204, "")
            }
        }
        _ => answer(404, "not found\n"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secret = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEMO_SECRET.to_string());
    let key = wedsync_sidecar::config::webhooks::secret_key_bytes(
        wedsync_sidecar::config::webhooks::VerifyKind::Standard,
        &secret,
    )
    .expect("a whsec_ secret");
    let mut servers = Vec::new();
    for (name, addr) in SERVICES {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {addr} for {name}: {e}"));
        println!("{name} listening on {addr}");
        let target = Arc::new(Target {
            name,
            rejecting: AtomicBool::new(false),
            verifier: Standard {
                keys: vec![key.clone()],
                tolerance: Duration::from_secs(300),
            },
        });
        servers.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let target = Arc::clone(&target);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let target = Arc::clone(&target);
                        async move { Ok::<_, Infallible>(handle(target, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
    for server in servers {
        let _ = server.await;
    }
}
