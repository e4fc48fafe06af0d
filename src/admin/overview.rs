//! `GET /admin/overview`: the console's first page in one answer (the
//! version and uptime, listeners, the store and its queue, recent events,
//! egress services, upstream groups, the last reload and what the console
//! may do), so that a refresh is one request.

use std::time::{Duration, Instant};

use super::{json, recent, services_summary, AdminApp};
use crate::config::Config;
use crate::time::unix_time;

/// When the admin listener started: the pod's uptime, near enough.
pub struct Started {
    at: Instant,
    unix_ms: u64,
}

impl Started {
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: unix_time().as_millis() as u64,
        }
    }
}

impl AdminApp {
    pub(super) async fn overview(&self, config: &Config) -> http::Response<Vec<u8>> {
        let now_ms = unix_time().as_millis() as u64;
        let snapshot = self.snapshot.load();
        let queue = match &self.store {
            None => serde_json::Value::Null,
            Some(store) => {
                // Each read on its own: a store that does not answer shows
                // as such, and the rest of the page still does.
                let depth = store.queue_depth().await;
                let oldest = store.oldest_pending_ms().await;
                match (depth, oldest) {
                    (Ok(depth), Ok(oldest)) => serde_json::json!({
                        "high": depth.high,
                        "normal": depth.normal,
                        "low": depth.low,
                        "oldest_pending_age_s": oldest.map(|at| now_ms.saturating_sub(at) / 1000),
                    }),
                    (Err(error), _) | (_, Err(error)) => {
                        serde_json::json!({ "error": error.to_string() })
                    }
                }
            }
        };
        // Each webhook's gap repair, as `/admin/webhooks` shows it.
        let mut recover = Vec::new();
        if let Some(store) = &self.store {
            for webhook in snapshot.webhooks.iter() {
                let mut status = super::webhooks::recover_status(&webhook.config, &**store).await;
                if !status.is_null() {
                    status["webhook"] = serde_json::json!(webhook.config.name);
                    recover.push(status);
                }
            }
        }
        let window = |minutes: u64| {
            self.recent
                .window(now_ms, Duration::from_secs(minutes * 60))
        };
        let listen = &config.listen;
        let [egress, ingress, admin] =
            self.listening
                .unwrap_or([listen.egress, listen.ingress, listen.admin]);
        json(
            200,
            &serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "started_at_ms": self.started.unix_ms,
                "uptime_s": self.started.at.elapsed().as_secs(),
                "listeners": {
                    "egress": egress.to_string(),
                    "ingress": ingress.to_string(),
                    "admin": admin.to_string(),
                },
                "console": {
                    "read_only": config.admin.read_only,
                    "token_required": config.admin.token.is_some(),
                },
                "store": self.store_value(),
                "queue": queue,
                "events": {
                    "last_5m": window(5),
                    "last_60m": window(60),
                    "sampled_every_s": recent::EVERY.as_secs(),
                },
                "services": services_summary(&snapshot.egress)["services"],
                "upstreams": snapshot.upstreams.summary(),
                "webhooks": config.webhooks.iter().map(|w| w.name.to_string()).collect::<Vec<_>>(),
                "last_reload": self.lifecycle.last_reload(),
                "recover": recover,
            }),
        )
    }
}
