//! The webhook ingress listener: POST to a configured path; the body is read
//! up to `max_body`, the signature verified, the event stored durably, and
//! only then answered 202 (200 for a duplicate). Nothing here calls an
//! internal service: delivery works from the store.

pub mod ack;
pub mod event;
pub mod verify;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::admin::metrics::Metrics;
use crate::config::webhooks::Webhook;
use crate::problem::{ErrorCode, Problem};
use crate::resilience::clock::unix_time;
use crate::store::Store;
use ack::IngressWebhook;
use arc_swap::ArcSwap;
use tokio::sync::Notify;

pub struct IngressApp {
    /// As the latest config made them; a request keeps the set it started with.
    webhooks: Arc<ArcSwap<Vec<Arc<IngressWebhook>>>>,
    metrics: Arc<Metrics>,
    store: Option<Arc<dyn Store>>,
    /// Told of every accepted event, so that delivery starts at once.
    accepted: Arc<Notify>,
}

impl IngressApp {
    pub fn new(
        webhooks: &[Webhook],
        store: Option<Arc<dyn Store>>,
        metrics: &Arc<Metrics>,
        accepted: Arc<Notify>,
    ) -> Result<Self, String> {
        Ok(Self {
            webhooks: Arc::new(ArcSwap::from_pointee(build(webhooks, metrics)?)),
            metrics: Arc::clone(metrics),
            store,
            accepted,
        })
    }

    /// What a config reload swaps in the ingress.
    pub fn reload_handle(&self) -> IngressReload {
        IngressReload {
            webhooks: Arc::clone(&self.webhooks),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The ingress side of a config reload.
pub struct IngressReload {
    webhooks: Arc<ArcSwap<Vec<Arc<IngressWebhook>>>>,
    metrics: Arc<Metrics>,
}

impl IngressReload {
    /// Builds the webhooks of a new config (secrets, routes, priorities,
    /// ack answers); the returned step swaps them in for new requests.
    pub fn prepare(&self, webhooks: &[Webhook]) -> Result<impl FnOnce() + Send + 'static, String> {
        let next = build(webhooks, &self.metrics)?;
        let current = Arc::clone(&self.webhooks);
        Ok(move || current.store(Arc::new(next)))
    }
}

fn build(webhooks: &[Webhook], metrics: &Arc<Metrics>) -> Result<Vec<Arc<IngressWebhook>>, String> {
    webhooks
        .iter()
        .map(|w| IngressWebhook::new(w, metrics).map(Arc::new))
        .collect()
}

/// Reads the body, refusing more than `limit` bytes without buffering them.
async fn read_capped(session: &mut ServerSession, limit: u64) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            ErrorCode::PayloadTooLarge,
            format!("this webhook accepts bodies of at most {limit} bytes"),
        )
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(error) => {
                return Err(Problem::new(
                    ErrorCode::BadRequest,
                    format!("the body could not be read: {}", error.etype().as_str()),
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for IngressApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let started = Instant::now();
        let request = session.req_header();
        let path = request.uri.path().to_string();
        let query = request.uri.query().map(str::to_string);
        if request.method != http::Method::POST {
            return Problem::new(
                ErrorCode::MethodNotAllowed,
                "webhooks are delivered with POST",
            )
            .with_header("allow", "POST")
            .into_http_response();
        }
        let webhook = self
            .webhooks
            .load()
            .iter()
            .find(|w| w.config.path == path)
            .cloned();
        let Some(webhook) = webhook else {
            return Problem::new(
                ErrorCode::NotFound,
                format!("no webhook is configured at {path}"),
            )
            .into_http_response();
        };
        let body = match read_capped(session, webhook.config.max_body).await {
            Ok(body) => body,
            Err(problem) => {
                // The rest of the body is never read: the connection closes.
                session.set_keepalive(None);
                if problem.code == ErrorCode::PayloadTooLarge {
                    webhook.rejected("payload_too_large");
                }
                return problem.into_http_response();
            }
        };
        let answer = webhook
            .acknowledge(
                self.store.as_deref(),
                &session.req_header().headers,
                body,
                query.as_deref(),
                unix_time(),
                &self.accepted,
            )
            .await;
        webhook
            .ack_duration
            .observe(started.elapsed().as_secs_f64());
        answer
    }
}
