//! Test support, one module per kind of real part: the sidecar binary
//! (`sidecar`), mock HTTP servers (`mock`) and a client (`client`), Redis
//! servers and a Redis Cluster (`redis_server`, `redis_cluster`), stores read directly (`store`), a private CA (`pki`),
//! a tmpfs (`fs`), the one config builder (`config`) and fakes of providers'
//! APIs written from their references (`fake_stripe`, `fake_github`).
//!
//! Each test binary compiles this whole tree and uses a part of it, so the
//! rest would be reported as dead code in that binary.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod config;
pub mod fake_github;
pub mod fake_stripe;
pub mod fs;
pub mod mock;
pub mod pki;
pub mod redis_cluster;
pub mod redis_server;
pub mod sidecar;
pub mod store;

pub use client::*;
pub use config::*;
pub use fake_github::FakeGitHub;
pub use fake_stripe::FakeStripe;
pub use fs::*;
pub use mock::*;
pub use pki::*;
pub use redis_cluster::*;
pub use redis_server::*;
pub use sidecar::*;
pub use store::*;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a test waits for what the sidecar records after answering.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Ports for servers that cannot take port 0 and tell theirs (Redis), or
/// that must come back on the same port. They come from below Linux's ephemeral range (32768 and up), where
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

/// Waits until `done` holds, for at most `limit`; panics with `what`.
pub async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new, empty directory under the system's temporary one, named for
/// `what`, this process and a counter.
pub fn unique_dir(what: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sidecar-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
