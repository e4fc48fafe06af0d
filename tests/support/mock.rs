//! Mock HTTP(S) servers standing for providers and internal services: they
//! record what they receive and answer as a test tells them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a mock upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HashMap<String, String>,
    pub body_len: usize,
    pub body: Bytes,
    /// When the request's body had been read.
    pub at: Instant,
}

type Handler = Arc<dyn Fn(&Seen) -> MockAnswer + Send + Sync>;

pub struct MockAnswer {
    pub status: u16,
    pub body: Bytes,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
}

impl MockAnswer {
    pub fn ok(body: &str) -> Self {
        Self {
            status: 200,
            body: Bytes::from(body.to_string()),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            ..Self::ok(body)
        }
    }
    pub fn with_body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// An HTTP/1.1 server on a free port that records every request; bodies are
/// counted as they stream in, and kept only when small.
pub struct MockServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    pub async fn start(handler: impl Fn(&Seen) -> MockAnswer + Send + Sync + 'static) -> Self {
        Self::start_with_tls(handler, None).await
    }

    /// On a given address, e.g. again where a stopped one was.
    pub async fn start_on(
        addr: SocketAddr,
        handler: impl Fn(&Seen) -> MockAnswer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve_on(listener, handler, None)
    }

    pub async fn start_with_tls(
        handler: impl Fn(&Seen) -> MockAnswer + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        // TLS mocks stand for named hosts (`localhost`), which may resolve to
        // ::1 as well as 127.0.0.1: listen dual-stack where the machine can.
        let listener = match tls {
            Some(_) => match TcpListener::bind("[::]:0").await {
                Ok(listener) => listener,
                Err(_) => TcpListener::bind("127.0.0.1:0").await.unwrap(),
            },
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        Self::serve_on(listener, handler, tls)
    }

    /// Dropping the server closes its open connections too: a stopped
    /// backend must look stopped to a client's connection pool.
    fn serve_on(
        listener: TcpListener,
        handler: impl Fn(&Seen) -> MockAnswer + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let seen_clone = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let (handler, seen, tls) =
                    (Arc::clone(&handler), Arc::clone(&seen_clone), tls.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        serve(req, Arc::clone(&handler), Arc::clone(&seen))
                    });
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    req: Request<Incoming>,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut body = req.into_body();
    let mut body_len = 0;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            body_len += data.len();
            if kept.len() < 64 * 1024 {
                kept.extend_from_slice(data);
            }
        }
    }
    let record = Seen {
        method,
        uri,
        headers,
        body_len,
        body: Bytes::from(kept),
        at: Instant::now(),
    };
    let answer = handler(&record);
    seen.lock().unwrap().push(record);
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = Response::builder().status(answer.status);
    for (k, v) in &answer.headers {
        response = response.header(k, v);
    }
    Ok(response.body(Full::new(answer.body)).unwrap())
}

/// A request body of `remaining` bytes sent in 64 KiB chunks, never held whole.
pub struct ChunkedBody {
    pub remaining: usize,
}

impl hyper::body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [b'y'; 65536];
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len());
        self.remaining -= n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &CHUNK[..n],
        )))))
    }
}

/// A server that reads a request, then stalls its answer the way a
/// hostile or broken server does: `headers` sends the status line and
/// headers a byte every 200 ms, `continues` sends `100 Continue` every
/// 100 ms; neither ever lets a read wait long enough to time out.
pub async fn stalling_provider(how: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nok";
                for step in 0..answer.len() {
                    let sent = match how {
                        "headers" => stream.write_all(&answer[step..step + 1]).await,
                        _ => stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await,
                    };
                    if sent.is_err() {
                        return;
                    }
                    let pause = if how == "headers" { 200 } else { 100 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            });
        }
    });
    addr
}
