//! Cost per request of the egress resilience: breaker admit + record, the
//! per-pod limiter's decision (service key and header key), and the shared
//! limiter's round trip to a private loopback `redis-server` (p50/p99 over
//! 10,000 calls, printed after criterion's figures).
//! Run: `cargo bench --bench resilience`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use wedsync_sidecar::config::services::{
    CircuitBreaker, LimitKey, LimitScope, OnLimit, OnStoreError, RateLimit,
};
use wedsync_sidecar::metrics::Metrics;
use wedsync_sidecar::resilience::breaker::{Breaker, Outcome};
use wedsync_sidecar::resilience::global::GlobalLimiter;
use wedsync_sidecar::resilience::ratelimit::LocalLimiter;
use wedsync_sidecar::store::redis::{RedisStore, RedisTarget};
use wedsync_sidecar::time::MonotonicClock;

fn generous_limit(key: Vec<LimitKey>, scope: LimitScope) -> RateLimit {
    RateLimit {
        requests: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000_000,
        scope,
        key,
        on_limit: OnLimit::Reject,
        on_store_error: OnStoreError::Local,
    }
}

fn breaker(c: &mut Criterion) {
    let settings = CircuitBreaker {
        failure_threshold: 5,
        error_rate: 0.5,
        window: Duration::from_secs(10),
        min_requests: 20,
        open_for: Duration::from_secs(30),
        half_open_probes: 1,
        failure_statuses: vec![500, 502, 503, 504],
    };
    let breaker = Breaker::new(&settings, MonotonicClock::shared(), Box::new(|_| {}));
    c.bench_function("breaker admit + record success", |b| {
        b.iter(|| {
            let admission = breaker.admit().unwrap();
            breaker.record(admission, Outcome::Success);
        })
    });
}

fn local_limiter(c: &mut Criterion) {
    let none = HeaderMap::new();
    let by_service = LocalLimiter::new(
        &generous_limit(vec![LimitKey::Service], LimitScope::Local),
        MonotonicClock::shared(),
    );
    c.bench_function("local limiter decision, key: service", |b| {
        b.iter(|| by_service.decide(&none, Duration::MAX))
    });
    let by_header = LocalLimiter::new(
        &generous_limit(vec![LimitKey::Header("x-client".into())], LimitScope::Local),
        MonotonicClock::shared(),
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-client", "client-42".parse().unwrap());
    c.bench_function("local limiter decision, key: header", |b| {
        b.iter(|| by_header.decide(&headers, Duration::MAX))
    });
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn start_redis() -> Option<(Redis, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((redis, port));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn shared_limiter(c: &mut Criterion) {
    let Some((_redis, port)) = start_redis() else {
        eprintln!("redis-server not found: skipping the shared limiter benchmark");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(
        RedisStore::new(
            RedisTarget::single(&format!("redis://127.0.0.1:{port}")),
            "bench",
            MonotonicClock::shared(),
            Metrics::new().store_errors_total.clone(),
        )
        .unwrap(),
    );
    let limiter = GlobalLimiter::new(
        "stripe",
        &generous_limit(vec![LimitKey::Service], LimitScope::Global),
        store,
    );
    let none = HeaderMap::new();
    c.bench_function("shared limiter round trip (loopback Redis)", |b| {
        b.iter(|| {
            runtime
                .block_on(limiter.decide(&none, Duration::MAX))
                .unwrap()
        })
    });
    if !std::env::args().any(|arg| arg == "--bench") {
        return; // `cargo test` runs each benchmark once; skip the percentiles.
    }
    let mut samples: Vec<Duration> = (0..10_000)
        .map(|_| {
            let started = Instant::now();
            runtime
                .block_on(limiter.decide(&none, Duration::MAX))
                .unwrap();
            started.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "shared limiter round trip over 10000 calls: p50 {:?}, p99 {:?}",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100]
    );
}

criterion_group!(benches, breaker, local_limiter, shared_limiter);
criterion_main!(benches);
