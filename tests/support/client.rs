//! A minimal HTTP/1.1 client: one request on a fresh connection, the
//! whole answer read.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A minimal HTTP/1.1 client answer.
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection and reads the whole answer.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    send_body(method, url, headers, Full::new(body)).await
}

/// The Stripe event `id` (`payment_intent.succeeded`), signed with `SECRET`
/// and posted to the sidecar's `/webhooks/stripe` on a fresh connection.
pub async fn post_stripe(sidecar: &super::Sidecar, id: &str) -> Answer {
    try_post_stripe(sidecar, id)
        .await
        .unwrap_or_else(|error| panic!("POST /webhooks/stripe: {error}"))
}

/// Like `post_stripe`, but a refused or broken connection is an error, not
/// a panic (a sidecar mid-failover, at its connection limit).
pub async fn try_post_stripe(sidecar: &super::Sidecar, id: &str) -> Result<Answer, String> {
    let body = format!(r#"{{"id":"{id}","type":"payment_intent.succeeded"}}"#);
    let signature = super::stripe_signature_with(super::SECRET, body.as_bytes());
    try_send_body(
        "POST",
        &format!("http://{}/webhooks/stripe", sidecar.ingress),
        &[
            ("stripe-signature", signature.as_str()),
            ("content-type", "application/json"),
        ],
        Full::new(Bytes::from(body)),
    )
    .await
}

/// Like `send`, but a refused or broken connection is `None`, not a panic.
/// A GET that may find nothing listening yet: its status, or None.
pub async fn try_get(url: &str) -> Option<u16> {
    try_send_body("GET", url, &[], Full::new(Bytes::new()))
        .await
        .ok()
        .map(|answer| answer.status)
}

pub async fn try_send(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Option<u16> {
    try_send_body("POST", url, headers, Full::new(Bytes::from(body)))
        .await
        .ok()
        .map(|answer| answer.status)
}

pub fn get(url: &str) -> impl std::future::Future<Output = Answer> + Send + 'static {
    let url = url.to_string();
    async move { send("GET", &url, &[], Bytes::new()).await }
}

pub async fn send_body<B>(method: &str, url: &str, headers: &[(&str, &str)], body: B) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    try_send_body(method, url, headers, body)
        .await
        .unwrap_or_else(|error| panic!("{method} {url}: {error}"))
}

/// One request on a fresh connection, the whole answer read.
async fn try_send_body<B>(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: B,
) -> Result<Answer, String>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let authority = uri.authority().ok_or("no authority")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
    // A test may send a Host of its own (the admin listener's check).
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request = request.header("host", authority.as_str());
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(body).map_err(|e| format!("request: {e}"))?)
        .await
        .map_err(|e| format!("response: {e}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The status line and headers of whatever comes back on `stream` within
/// `wait`, as text ("" if nothing came): for requests no HTTP client
/// would send (a header section over the limit, a body never finished).
pub async fn answer_within(
    stream: &mut tokio::net::TcpStream,
    wait: std::time::Duration,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = std::time::Instant::now() + wait;
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
