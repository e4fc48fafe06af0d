//! The real sidecar binary, started on port 0 with `--ready-file`, so the
//! kernel picks its ports and no test races another for one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::get;
use super::{unique_dir, SETTLE};

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
    /// Starts the binary on `body` (YAML without `listen`), waits until it
    /// is ready.
    pub fn start(body: &str) -> Self {
        Self::start_with_env(body, &[])
    }

    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(body, env, &[])
    }

    /// Started, its listeners up, but not (yet) ready: for tests of what
    /// keeps it out of service. Its addresses come from its `listening` log
    /// line, as the ready file is written only once it is ready.
    pub fn start_unready(body: &str) -> Self {
        let mut sidecar = Self::spawn(body, &[], &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addresses) = listening_line(&sidecar.logs()) {
                sidecar.set_addresses(&addresses);
                return sidecar;
            }
            if sidecar.has_exited() || Instant::now() > deadline {
                panic!("sidecar did not start; log:\n{}", sidecar.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let mut sidecar = Self::spawn(body, env, args);
        match sidecar.wait_ready() {
            Startup::Ready => sidecar,
            Startup::Exited => panic!("sidecar exited at start; log:\n{}", sidecar.logs()),
            Startup::TimedOut => panic!("sidecar not ready; log:\n{}", sidecar.logs()),
        }
    }

    fn spawn(body: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = unique_dir("test");
        // A body with its own store (Redis) replaces the embedded one.
        let store = if body.lines().any(|l| l.starts_with("store:")) {
            String::new()
        } else {
            format!("store:\n  path: {}\n", dir.join("data").display())
        };
        let yaml = format!(
            "listen:\n  egress: 127.0.0.1:0\n  ingress: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{store}{body}"
        );
        let config = dir.join("sidecar.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join("sidecar.log");
        let child = launch(&config, &log, &dir.join("ready.json"), env, args);
        let unknown = SocketAddr::from(([127, 0, 0, 1], 0));
        Sidecar {
            child,
            egress: unknown,
            ingress: unknown,
            admin: unknown,
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

    /// A copy of the config with the ports the kernel gave this run in
    /// place of port 0, for a CLI command (`dlq`) that finds the admin
    /// listener through the config.
    pub fn config_with_bound_ports(&self) -> PathBuf {
        let text = std::fs::read_to_string(self.dir.join("sidecar.yaml")).unwrap();
        let path = self.dir.join("sidecar.bound.yaml");
        std::fs::write(&path, self.with_bound_ports(&text)).unwrap();
        path
    }

    fn with_bound_ports(&self, text: &str) -> String {
        text.replacen(
            "egress: 127.0.0.1:0",
            &format!("egress: {}", self.egress),
            1,
        )
        .replacen(
            "ingress: 127.0.0.1:0",
            &format!("ingress: {}", self.ingress),
            1,
        )
        .replacen("admin: 127.0.0.1:0", &format!("admin: {}", self.admin), 1)
    }

    /// Starts the sidecar again (after it was killed) on the same config,
    /// ports and store directory, and waits until it is ready. The ports
    /// the kernel gave the first run are written into the config, so a
    /// client that kept an address finds the sidecar there again.
    pub fn respawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.edit_config(|text| self.with_bound_ports(&text));
        let log = self.dir.join("sidecar.restarted.log");
        self.child = launch(
            &self.dir.join("sidecar.yaml"),
            &log,
            &self.dir.join("ready.json"),
            &[],
            &[],
        );
        self.log = log;
        match self.wait_ready() {
            Startup::Ready => {}
            _ => panic!("sidecar did not restart; log:\n{}", self.logs()),
        }
    }

    /// Waits for the ready file the sidecar writes once it is ready.
    fn wait_ready(&mut self) -> Startup {
        let ready_file = self.dir.join("ready.json");
        let _ = std::fs::remove_file(&ready_file);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.has_exited() {
                return Startup::Exited;
            }
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                let addresses: serde_json::Value =
                    serde_json::from_str(&text).expect("the ready file is JSON");
                self.set_addresses(&addresses);
                return Startup::Ready;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Startup::TimedOut
    }

    fn set_addresses(&mut self, addresses: &serde_json::Value) {
        let field = |name: &str| -> SocketAddr {
            addresses[name]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {addresses}"))
        };
        self.egress = field("egress");
        self.ingress = field("ingress");
        self.admin = field("admin");
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
        self.metrics_until(
            &format!("every one of {lines:?} in /metrics"),
            SETTLE,
            |text| lines.iter().all(|line| text.contains(line)),
        )
        .await
    }

    /// The value of the sample `series` (name and labels, as exposed) in
    /// a `/metrics` text; 0 when absent.
    pub fn metric_value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The `/metrics` text once `done` holds for it; after `within`, a
    /// panic naming `what` with the last text.
    pub async fn metrics_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = get(&self.admin_url("/metrics")).await.text();
            if done(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("{what}:\n{text}")
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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

/// The addresses of the `listening` log line, as the ready file has them.
fn listening_line(logs: &str) -> Option<serde_json::Value> {
    let line = logs
        .lines()
        .find(|l| l.contains(" listening startup_ms="))?;
    let field = |name: &str| {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        line[start..].split_whitespace().next().map(str::to_string)
    };
    Some(serde_json::json!({
        "egress": field("egress")?,
        "ingress": field("ingress")?,
        "admin": field("admin")?,
    }))
}

fn launch(
    config: &std::path::Path,
    log: &std::path::Path,
    ready_file: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"));
    command
        .args(["run", "-c"])
        .arg(config)
        .arg("--ready-file")
        .arg(ready_file)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().expect("start sidecar")
}
