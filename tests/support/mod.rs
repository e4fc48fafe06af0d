//! Test support: starts the real sidecar binary on free ports with a generated
//! config, and real HTTP(S) mock servers that record what they receive.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How long a test waits for what the sidecar records after answering.
const SETTLE: Duration = Duration::from_secs(5);

/// Test ports come from below Linux's ephemeral range (32768 and up), where
/// the kernel never puts the local end of an outgoing connection, and from a
/// counter, so two tests of one run never draw the same port. A port that is
/// taken (another program, a test binary still shutting down) is skipped.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        AtomicU32::new(std::process::id().wrapping_mul(7919) ^ nanos)
    });
    loop {
        let offset = next.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = u16::try_from(FIRST + offset).expect("below 32000");
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

enum Startup {
    Ready,
    Exited,
    TimedOut,
}

/// A running sidecar process; killed when dropped.
pub struct Sidecar {
    pub child: Child,
    pub egress: SocketAddr,
    pub admin: SocketAddr,
    pub ingress: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Sidecar {
    /// Starts the binary on `body` (YAML without `listen`), waits for /readyz.
    pub fn start(body: &str) -> Self {
        Self::start_with_env(body, &[])
    }

    /// Ports are free when chosen but released before the sidecar binds
    /// them, so another program may take one in between: a start that fails
    /// on "address in use" is retried on fresh ports.
    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(body, env, &[])
    }

    /// Started, its listeners up, but not (yet) ready: for tests of what
    /// keeps it out of service.
    pub fn start_unready(body: &str) -> Self {
        for _ in 0..5 {
            let mut sidecar = Self::spawn(body, &[], &[]);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !sidecar.logs().contains("startup_ms") {
                if sidecar.has_exited() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if sidecar.logs().contains("startup_ms") {
                return sidecar;
            }
            if !sidecar.logs().contains("Address already in use") {
                panic!("sidecar did not start; log:\n{}", sidecar.logs());
            }
        }
        panic!("no free ports for the sidecar after 5 tries");
    }

    /// `/readyz`: its status and reason.
    pub async fn readiness(&self) -> (u16, String) {
        let answer = get(&self.admin_url("/readyz")).await;
        let reason = answer.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (answer.status, reason)
    }

    /// `args` go after `run -c FILE`, e.g. `--log-format json`.
    pub fn start_with_args(body: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        for _ in 0..5 {
            let mut sidecar = Self::spawn(body, env, args);
            match sidecar.wait_ready() {
                Startup::Ready => return sidecar,
                Startup::Exited if sidecar.logs().contains("Address already in use") => continue,
                Startup::Exited => panic!("sidecar exited at start; log:\n{}", sidecar.logs()),
                Startup::TimedOut => panic!("sidecar not ready; log:\n{}", sidecar.logs()),
            }
        }
        panic!("no free ports for the sidecar after 5 tries");
    }

    fn spawn(body: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (egress, ingress, admin) = (free_port(), free_port(), free_port());
        // A body with its own store (Redis) replaces the embedded one.
        let store = if body.lines().any(|l| l.starts_with("store:")) {
            String::new()
        } else {
            format!("store:\n  path: {}\n", dir.join("data").display())
        };
        let yaml = format!(
            "listen:\n  egress: 127.0.0.1:{egress}\n  ingress: 127.0.0.1:{ingress}\n  admin: 127.0.0.1:{admin}\n{store}{body}"
        );
        let config = dir.join("sidecar.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join("sidecar.log");
        let child = launch(&config, &log, env, args);
        Sidecar {
            child,
            egress: SocketAddr::from(([127, 0, 0, 1], egress)),
            ingress: SocketAddr::from(([127, 0, 0, 1], ingress)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            dir,
            log,
        }
    }

    /// Rewrites the config file with `edit` applied to its text, atomically
    /// (a rename), as Kubernetes swaps a ConfigMap volume.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let path = self.dir.join("sidecar.yaml");
        let text = edit(std::fs::read_to_string(&path).unwrap());
        let temporary = self.dir.join("sidecar.yaml.new");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
    }

    /// Starts the sidecar again (after it was killed) on the same config,
    /// ports and store directory, and waits until it is ready.
    pub fn respawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.dir.join("sidecar.restarted.log");
        self.child = launch(&self.dir.join("sidecar.yaml"), &log, &[], &[]);
        self.log = log;
        match self.wait_ready() {
            Startup::Ready => {}
            _ => panic!("sidecar did not restart; log:\n{}", self.logs()),
        }
    }

    fn wait_ready(&mut self) -> Startup {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.has_exited() {
                return Startup::Exited;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(self.admin) {
                let _ = stream
                    .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
                // The answer must come from our process, not from whoever
                // else may hold the port: the sidecar logs its start-up time
                // once it has checked that every listener is its own.
                if answer.starts_with("HTTP/1.1 200")
                    && self.logs().contains("startup_ms")
                    && !self.has_exited()
                {
                    return Startup::Ready;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Startup::TimedOut
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it contains `needle`. The access log line and the
    /// metrics of a request are written after its response has gone out, so
    /// a test that has its answer must still wait for them.
    pub async fn log_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + SETTLE;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            if Instant::now() > deadline {
                panic!("no {needle:?} in the log:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/metrics` text once it contains every one of `lines`.
    pub async fn metrics_containing(&self, lines: &[&str]) -> String {
        let deadline = Instant::now() + SETTLE;
        loop {
            let text = get(&self.admin_url("/metrics")).await.text();
            match lines.iter().find(|line| !text.contains(*line)) {
                None => return text,
                Some(missing) if Instant::now() > deadline => {
                    panic!("missing {missing} in /metrics:\n{text}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Resident memory in KiB: (current, peak).
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn egress_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.egress)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn launch(
    config: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"));
    command
        .args(["run", "-c"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().expect("start sidecar")
}

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

/// Like `send`, but a refused or broken connection is `None`, not a panic.
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
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority.as_str());
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

/// A private CA and a server certificate for `host` signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

pub fn test_pki(host: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
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

/// A private `redis-server` on a free port (never the machine's own on
/// 6379), without persistence; killed when dropped. It can be killed and
/// started again on the same port to test outages.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// More `redis-server` arguments (`--replicaof`, `--appendfsync` ...).
    extra: Vec<String>,
    /// Its own working directory: a replica's full sync writes an RDB file
    /// and `appendonly yes` an AOF there, which another server started in
    /// a shared directory would load at start (and the repository would
    /// collect). Kept across restarts, removed when dropped.
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments, e.g. `["--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(args: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            extra: args.iter().map(|a| a.to_string()).collect(),
            dir: redis_dir(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The event store a sidecar with `prefix: test` writes to, read directly.
    pub fn event_store(&self) -> wedsync_sidecar::store::redis::events::RedisEventStore {
        redis_event_store(&self.url())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process (SIGSTOP): connections stay open and nothing
    /// answers, as with a Redis stalled on a slow disk.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen Redis run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
    }

    /// A replica of `primary` on a free port, once its link is up.
    pub fn replica_of(primary: &RedisServer) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            extra: vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
            dir: redis_dir(),
        };
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.info("replication").contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica never linked");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `redis-cli INFO <section>` of this server.
    pub fn info(&self, section: &str) -> String {
        self.cli(&["INFO", section])
    }

    /// Runs `redis-cli -p <port> args...`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (scripts/test installs it)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts it (again) on the same port, empty, and waits for PING.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.write_all(b"PING\r\n");
                let mut answer = [0u8; 7];
                if std::io::Read::read(&mut stream, &mut answer).is_ok()
                    && answer.starts_with(b"+PONG")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sidecar-redis-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An event store on the Redis at `url`, with the prefix test sidecars use.
pub fn redis_event_store(url: &str) -> wedsync_sidecar::store::redis::events::RedisEventStore {
    let store = wedsync_sidecar::store::redis::RedisStore::new(
        url,
        "test",
        wedsync_sidecar::time::MonotonicClock::shared(),
        wedsync_sidecar::metrics::Metrics::new()
            .store_errors_total
            .clone(),
    )
    .unwrap();
    wedsync_sidecar::store::redis::events::RedisEventStore::new(std::sync::Arc::new(store))
}

/// Every waiting job as (target, event, body), leased the way a worker
/// would (and so left leased: read a store once).
pub async fn waiting_jobs(
    store: &dyn wedsync_sidecar::store::Store,
) -> Vec<(String, wedsync_sidecar::store::StoredEvent, Vec<u8>)> {
    let far_future = u64::MAX / 4;
    let mut jobs = Vec::new();
    for priority in wedsync_sidecar::event::Priority::ALL {
        let request = wedsync_sidecar::store::LeaseRequest {
            priority,
            now_ms: far_future,
            visibility: Duration::from_secs(60),
            room: Vec::new(),
            max: 1,
        };
        while let Some(job) = store.lease(&request).await.unwrap().pop() {
            let (event, body) = store.event(job.event).await.unwrap().expect("its event");
            jobs.push((job.target, event, body));
        }
    }
    jobs
}

/// The embedded store a stopped sidecar left in `dir`.
pub fn embedded_store(dir: &std::path::Path) -> wedsync_sidecar::store::embedded::EmbeddedStore {
    wedsync_sidecar::store::embedded::EmbeddedStore::open(dir, Duration::from_secs(3600)).unwrap()
}

/// A `Stripe-Signature` value for `body`, signed now with `secret`.
pub fn stripe_signature_with(secret: &str, body: &[u8]) -> String {
    use wedsync_sidecar::webhooks::verify::Scheme;
    let now = wedsync_sidecar::time::unix_time().as_secs();
    wedsync_sidecar::webhooks::verify::stripe::Stripe {
        keys: vec![secret.as_bytes().to_vec()],
        tolerance: Duration::from_secs(300),
    }
    .sign(body, now)
    .headers[0]
        .1
        .clone()
}

/// Waits until `done` holds, for at most `limit`; panics with `what`.
pub async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small tmpfs mounted for one test (root only: `scripts/test` runs as
/// root on CI's Debian machine), unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-tmpfs-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the full-disk tests run as root)"
        );
        Self { dir }
    }

    /// Fills what is left with one file; returns its path.
    pub fn fill(&self) -> PathBuf {
        Self::fill_dir(&self.dir)
    }

    /// Fills what is left of the file system at `dir` with one file.
    pub fn fill_dir(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
