//! What a config says about delivery, built once per config: the retry
//! policy of each webhook, the signer of outgoing events, each target's
//! in-flight cap and the lease's length. With the upstream groups it makes
//! the [`Plan`], delivery's part of the runtime snapshot.

use crate::names::{UpstreamName, WebhookName};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::error::SecretError;
use crate::config::webhooks::{default_delivery, secret_key_bytes, VerifyKind, WebhookDelivery};
use crate::config::Config;
use crate::signing::standard::Signer;
use crate::upstreams::UpstreamGroups;

/// A lease outlives the longest delivery timeout by this much: time for
/// the store to record the outcome. A replica that dies holding a lease
/// delays that job by the timeout plus this.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("delivery.signing_secret: {0}")]
    SigningSecret(#[from] SecretError),
}

pub struct Settings {
    policies: HashMap<WebhookName, WebhookDelivery>,
    pub signer: Option<Signer>,
    pub caps: HashMap<UpstreamName, u32>,
    /// How long a leased job stays with this replica.
    pub visibility: Duration,
    /// Every webhook's name, for the per-webhook gauges.
    pub webhooks: Vec<WebhookName>,
}

impl Settings {
    pub fn new(config: &Config) -> Result<Self, SettingsError> {
        let delivery = config.delivery.clone().unwrap_or_default();
        let signer = match &delivery.signing_secret {
            None => None,
            Some(secret) => Some(Signer::new(secret_key_bytes(
                VerifyKind::Standard,
                secret.expose(),
            )?)),
        };
        let policies: HashMap<WebhookName, WebhookDelivery> = config
            .event_sources()
            .map(|w| (w.name.clone(), w.delivery.clone()))
            .collect();
        let longest = policies
            .values()
            .map(|p| p.timeout)
            .max()
            .unwrap_or_default();
        Ok(Self {
            policies,
            signer,
            caps: config
                .upstreams
                .iter()
                .map(|u| (u.name.clone(), u.max_in_flight))
                .collect(),
            visibility: longest + LEASE_MARGIN,
            webhooks: config.event_sources().map(|w| w.name.clone()).collect(),
        })
    }

    /// The delivery policy of `webhook`; a job of a webhook the config no
    /// longer has is delivered under the defaults.
    pub fn policy(&self, webhook: &str) -> WebhookDelivery {
        self.policies
            .get(webhook)
            .cloned()
            .unwrap_or_else(|| default_delivery(webhook))
    }
}

/// Delivery's part of the runtime snapshot: the settings and the groups
/// they deliver to, from the same config.
pub struct Plan {
    pub settings: Settings,
    pub upstreams: Arc<UpstreamGroups>,
}
