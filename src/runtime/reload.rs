//! Config hot reload. The sidecar looks at its config file every second
//! (Kubernetes updates a ConfigMap volume by swapping a symlink, and a
//! Secret volume the same way, so the files a config reads with
//! `${file:...}` are looked at too) and reloads on SIGHUP.
//!
//! A new config is loaded and validated completely first; if it is
//! invalid, the running config stays, the errors are logged and
//! `sidecar_config_reloads_total{outcome="rejected"}` counts it. Then every
//! part is built from it (egress services, webhooks, upstream groups,
//! delivery settings) before any is swapped in, so a reload applies whole
//! or not at all. Requests in flight finish on the config they started
//! with. Listener addresses and store settings cannot change live: the
//! reload says so and keeps the running ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounterVec;

use crate::config::{Config, StoreKind};
use crate::delivery::DeliveryReload;
use crate::egress::EgressReload;
use crate::upstreams::Upstreams;
use crate::webhooks::IngressReload;

/// How often the config file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// The running config, shared with the admin API.
pub type ConfigHandle = Arc<ArcSwap<Config>>;

pub struct Reloader {
    pub path: PathBuf,
    pub config: ConfigHandle,
    pub egress: EgressReload,
    pub ingress: IngressReload,
    pub upstreams: Arc<Upstreams>,
    pub delivery: Option<DeliveryReload>,
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

/// Listener addresses and store settings as they compare for "changed".
fn fixed_parts(config: &Config) -> String {
    let store = match &config.store.kind {
        StoreKind::Local { path } => format!("local {}", path.display()),
        StoreKind::Redis { urls } => {
            let urls: Vec<&str> = urls.iter().map(|u| u.expose()).collect();
            format!("redis {}", urls.join(","))
        }
    };
    format!(
        "{} {} {} {:?} {store} {}",
        config.listen.egress,
        config.listen.ingress,
        config.listen.admin,
        config.ingress,
        config.store.prefix
    )
}

impl Reloader {
    /// Loads the file and applies it; returns what happened, for the log.
    pub fn reload(&self) -> Result<(), String> {
        let mut next = Config::load(&self.path).map_err(|errors| errors.to_string())?;
        let running = self.config.load_full();
        if fixed_parts(&next) != fixed_parts(&running) {
            tracing::warn!(
                "listen addresses and store settings cannot change while running, nor the ingress bounds; keeping the running ones (restart to change them)"
            );
            next.listen = running.listen.clone();
            next.ingress = running.ingress.clone();
            next.store = running.store.clone();
        }
        if self.delivery.is_none() && !next.webhooks.is_empty() {
            return Err(
                "the sidecar started without webhooks, so it has no event store; adding webhooks takes a restart"
                    .into(),
            );
        }
        // Build everything first: a reload applies whole or not at all.
        let egress = self.egress.prepare(&next)?;
        let ingress = self.ingress.prepare(&next.webhooks)?;
        let delivery = match &self.delivery {
            Some(delivery) => Some(delivery.prepare(&next)?),
            None => None,
        };
        let upstreams = self.upstreams.prepare_reload(&next.upstreams);
        upstreams();
        egress();
        ingress();
        if let Some(delivery) = delivery {
            delivery();
        }
        self.config.store(Arc::new(next));
        Ok(())
    }

    fn reload_and_count(&self, why: &str) {
        match self.reload() {
            Ok(()) => {
                self.reloads.with_label_values(&["applied"]).inc();
                tracing::info!(config = %self.path.display(), trigger = why, "configuration reloaded");
            }
            Err(errors) => {
                self.reloads.with_label_values(&["rejected"]).inc();
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
        let mut seen = fingerprint(&self.path);
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
