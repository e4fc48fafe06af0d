//! Private `redis-server` processes on ports of their own (never the
//! machine's 6379), and the event store a sidecar wrote there.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, unique_dir};

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

    pub fn is_running(&self) -> bool {
        self.child.is_some()
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

    /// The keys matching `pattern` (`redis-cli --scan`).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_string)
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Fields in all the hashes matching `pattern`: the event store keeps
    /// each kind of record in one hash per queue part.
    pub fn hlen_all(&self, pattern: &str) -> u64 {
        self.keys(pattern)
            .iter()
            .map(|key| self.cli(&["HLEN", key]).trim().parse::<u64>().unwrap_or(0))
            .sum()
    }

    /// The (hash, field, value) of every field of the hashes matching
    /// `pattern` whose value contains `needle`.
    pub fn hash_fields_containing(
        &self,
        pattern: &str,
        needle: &str,
    ) -> Vec<(String, String, String)> {
        let mut found = Vec::new();
        for key in self.keys(pattern) {
            let fields = self.cli(&["HKEYS", &key]);
            for field in fields.lines().filter(|f| !f.is_empty()) {
                let value = self.cli(&["HGET", &key, field]);
                let value = value.trim_end_matches('\n');
                if value.contains(needle) {
                    found.push((key.clone(), field.to_string(), value.to_string()));
                }
            }
        }
        found
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
                    && (answer.starts_with(b"+PONG") || answer.starts_with(b"-NOAUTH"))
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
    unique_dir("redis")
}

/// An event store on the Redis at `url`, with the prefix test sidecars use
/// and the default 16 parts.
pub fn redis_event_store(url: &str) -> wedsync_sidecar::store::redis::events::RedisEventStore {
    event_store_on(wedsync_sidecar::store::redis::RedisTarget::single(url))
}

/// An event store on `target`, with the prefix test sidecars use and the
/// default 16 parts.
pub fn event_store_on(
    target: wedsync_sidecar::store::redis::RedisTarget,
) -> wedsync_sidecar::store::redis::events::RedisEventStore {
    let store = wedsync_sidecar::store::redis::RedisStore::new(
        target,
        "test",
        wedsync_sidecar::time::MonotonicClock::shared(),
        wedsync_sidecar::metrics::Metrics::new()
            .store_errors_total
            .clone(),
    )
    .unwrap();
    wedsync_sidecar::store::redis::events::RedisEventStore::new(std::sync::Arc::new(store), 16)
}

/// A private Redis Sentinel (`redis-server <file> --sentinel`) watching
/// `master` as `mymaster`, quorum 1, that calls a master down after a
/// second without an answer. Killed when dropped.
pub struct RedisSentinel {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl RedisSentinel {
    pub fn watching(master: &RedisServer) -> Self {
        let port = free_port();
        let dir = unique_dir("sentinel");
        let file = dir.join("sentinel.conf");
        std::fs::write(
            &file,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.display(),
                master.port
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&file)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let sentinel = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sentinel.master_port() != Some(master.port) {
            assert!(
                Instant::now() < deadline,
                "the sentinel never saw its master"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
