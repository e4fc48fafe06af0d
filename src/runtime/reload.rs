//! Config hot reload. The sidecar looks at its config file every second
//! (Kubernetes updates a ConfigMap volume by swapping a symlink, and a
//! Secret volume the same way, so the files a config reads with
//! `${file:...}` are looked at too) and reloads on SIGHUP.
//!
//! A new config is loaded and validated completely first; if it is
//! invalid, the running config stays, the errors are logged and
//! `sidecar_config_reloads_total{outcome="rejected"}` counts it. Then the
//! next runtime snapshot is built from it (egress services, webhooks,
//! upstream groups, delivery plan) and swapped in as one, so a reload
//! applies whole or not at all. Requests in flight finish on the snapshot
//! they started with. Listener addresses, store settings, the ingress
//! bounds and `delivery.workers` cannot change live: the reload says so
//! and keeps the running ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounterVec;

use crate::config::error::ConfigErrors;
use crate::config::Config;
use crate::metrics::ReloadOutcome;
use crate::runtime::snapshot::{BuildError, Foundation, Snapshot, SnapshotHandle};
use crate::upstreams::GroupLoops;

/// How often the config file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    #[error("the sidecar started without webhooks, so it has no event store; adding webhooks takes a restart")]
    NoStore,
    #[error("{0}")]
    Build(#[from] BuildError),
}

pub struct Reloader {
    pub path: PathBuf,
    /// The fingerprint of the config the sidecar started with, taken when
    /// it was loaded; the poll compares against it first.
    pub loaded: std::sync::Mutex<Option<Vec<u8>>>,
    /// Told once the SIGHUP handler is installed (readiness waits for it).
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    pub snapshot: SnapshotHandle,
    pub foundation: Arc<Foundation>,
    pub loops: GroupLoops,
    /// Whether the sidecar started with an event store (with webhooks).
    pub has_store: bool,
    pub reloads: IntCounterVec,
}

/// What decides whether a reload is due: the config's bytes and those of
/// every file it reads with `${file:...}`.
pub fn fingerprint(path: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read(path).ok()?;
    let mut print = text.clone();
    let as_text = String::from_utf8_lossy(&text);
    for (start, _) in as_text.match_indices("${file:") {
        let rest = &as_text[start + "${file:".len()..];
        if let Some(end) = rest.find('}') {
            print.extend_from_slice(b"\0");
            print.extend(std::fs::read(&rest[..end]).unwrap_or_default());
        }
    }
    Some(print)
}

impl Reloader {
    /// Loads the file and applies it whole, or keeps the running snapshot.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let mut next = Config::load(&self.path)?;
        let running = self.snapshot.load_full();
        let was = &running.config;
        let fixed = (&next.listen, &next.ingress, &next.store, &next.limits);
        if fixed != (&was.listen, &was.ingress, &was.store, &was.limits) {
            tracing::warn!(
                "listen addresses and store settings cannot change while running, nor the ingress bounds or limits; keeping the running ones (restart to change them)"
            );
            next.listen = was.listen.clone();
            next.ingress = was.ingress.clone();
            next.store = was.store.clone();
            next.limits = was.limits.clone();
        }
        if !self.has_store && next.event_sources().next().is_some() {
            return Err(ReloadError::NoStore);
        }
        let workers = |c: &Config| c.delivery.clone().unwrap_or_default().workers;
        if workers(&next) != workers(was) {
            tracing::warn!(
                running = workers(was),
                configured = workers(&next),
                "delivery.workers cannot change while running; it takes effect at the next start"
            );
        }
        // Built whole before anything is swapped: a reload applies whole or
        // not at all, and requests in flight finish on the snapshot they
        // started with.
        let next_otlp = next.tracing.otlp.clone();
        let snapshot = Snapshot::build(Arc::new(next), Some(&running), &self.foundation)?;
        self.loops
            .start_new(&snapshot.upstreams, Some(&running.upstreams));
        let gone_services: Vec<_> = running
            .egress
            .services
            .iter()
            .filter(|old| !snapshot.egress.services.iter().any(|s| s.name == old.name))
            .cloned()
            .collect();
        let gone_groups: Vec<_> = running
            .upstreams
            .all()
            .filter(|old| snapshot.upstreams.get(old.name()).is_none())
            .cloned()
            .collect();
        if next_otlp != was.tracing.otlp {
            if let Err(error) = crate::trace::export::configure(next_otlp.as_ref()) {
                tracing::warn!(%error, "cannot export spans to the new tracing.otlp.endpoint; exporting as before");
            }
        }
        self.snapshot.store(Arc::new(snapshot));
        // Their series go with them: a removed service or group must not
        // show on a dashboard (or keep an alert firing) forever.
        for service in gone_services {
            self.foundation.metrics.forget_service(&service.name);
        }
        for group in gone_groups {
            group.forget_series();
        }
        Ok(())
    }

    fn reload_and_count(&self, why: &str) {
        let result = self.reload();
        self.lifecycle
            .record_reload(crate::lifecycle::ReloadRecord {
                at_ms: crate::time::unix_time().as_millis() as u64,
                result: match &result {
                    Ok(()) => ReloadOutcome::Applied.as_str(),
                    Err(_) => ReloadOutcome::Rejected.as_str(),
                },
                error: result.as_ref().err().map(ToString::to_string),
            });
        match result {
            Ok(()) => {
                self.reloads
                    .with_label_values(&[ReloadOutcome::Applied.as_str()])
                    .inc();
                tracing::info!(config = %self.path.display(), trigger = why, "configuration reloaded");
            }
            Err(errors) => {
                self.reloads
                    .with_label_values(&[ReloadOutcome::Rejected.as_str()])
                    .inc();
                tracing::error!(
                    config = %self.path.display(), trigger = why,
                    "configuration reload rejected; the running configuration stays:\n{errors}"
                );
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        self.lifecycle.upkeep_running();
        let mut seen = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .or_else(|| fingerprint(&self.path));
        loop {
            let sighup = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                _ = sighup => "SIGHUP",
                _ = tokio::time::sleep(POLL) => "file change",
                _ = shutdown.changed() => return,
            };
            let now = fingerprint(&self.path);
            if why == "file change" && (now == seen || now.is_none()) {
                continue;
            }
            seen = now;
            self.reload_and_count(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_changing_changes_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("sidecar-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("token");
        std::fs::write(&secret, "one").unwrap();
        let config = dir.join("sidecar.yaml");
        std::fs::write(
            &config,
            format!("admin: {{ token: \"${{file:{}}}\" }}\n", secret.display()),
        )
        .unwrap();
        let before = fingerprint(&config).unwrap();
        assert_eq!(fingerprint(&config).unwrap(), before);
        std::fs::write(&secret, "two").unwrap();
        assert_ne!(fingerprint(&config).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
