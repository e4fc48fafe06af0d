//! The ack path of one webhook, after its body is read: verify, answer
//! Slack's URL check, extract the event, store it durably, answer. The
//! provider gets its 2xx only once the store has committed.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::extract::extract;
use super::verify::{self, Inbound, Scheme};
use crate::config::webhooks::{VerifyKind, Webhook};
use crate::metrics::{DeadLetterReason, Metrics, ReceivedOutcome, RejectionReason};
use crate::problem::{ErrorCode, Problem};
use crate::store::{Acceptance, OwnedEvent, Store};

/// A webhook the config describes but the sidecar cannot build.
#[derive(Debug, thiserror::Error)]
#[error("webhooks.{webhook}: {problem}")]
pub struct WebhookError {
    pub webhook: String,
    pub problem: verify::BuildError,
}

pub struct IngressWebhook {
    pub config: Webhook,
    pub scheme: Box<dyn Scheme>,
    accepted: IntCounter,
    unrouted: IntCounter,
    duplicate: IntCounter,
    rejected: IntCounter,
    rejections: IntCounterVec,
    pub ack_duration: Histogram,
}

impl IngressWebhook {
    pub fn new(config: &Webhook, metrics: &Metrics) -> Result<Self, WebhookError> {
        let name = config.name.as_str();
        let outcome = |o: ReceivedOutcome| {
            metrics
                .webhooks_received_total
                .with_label_values(&[name, o.as_str()])
        };
        Ok(Self {
            scheme: verify::build(&config.verify).map_err(|problem| WebhookError {
                webhook: name.to_string(),
                problem,
            })?,
            accepted: outcome(ReceivedOutcome::Accepted),
            unrouted: metrics
                .dead_lettered_total
                .with_label_values(&[name, DeadLetterReason::Unrouted.as_str()]),
            duplicate: outcome(ReceivedOutcome::Duplicate),
            rejected: outcome(ReceivedOutcome::Rejected),
            rejections: metrics.webhook_rejections_total.clone(),
            ack_duration: metrics
                .webhook_ack_duration_seconds
                .with_label_values(&[name]),
            config: config.clone(),
        })
    }

    pub fn rejected(&self, reason: RejectionReason) {
        self.rejected.inc();
        self.rejections
            .with_label_values(&[self.config.name.as_str(), reason.as_str()])
            .inc();
    }

    pub async fn acknowledge(
        &self,
        store: Option<&dyn Store>,
        headers: &HeaderMap,
        body: Bytes,
        query: Option<&str>,
        now: Duration,
        accepted: &tokio::sync::Notify,
    ) -> http::Response<Vec<u8>> {
        let request = Inbound {
            headers,
            body: &body,
            query,
            now: now.as_secs(),
        };
        if let Err(rejection) = self.scheme.verify(&request) {
            self.rejected(rejection.reason());
            return Problem::new(ErrorCode::SignatureInvalid, rejection.as_str())
                .into_http_response();
        }
        if let Some(challenge) = self.slack_url_check(&body) {
            return json(
                http::StatusCode::OK,
                &serde_json::json!({ "challenge": challenge }),
            );
        }
        let meta = extract(
            &self.config,
            headers,
            &body,
            &self.scheme.identity(&request),
        );
        let Some(store) = store else {
            return Problem::new(ErrorCode::StoreUnavailable, "no event store is configured")
                .with_header("retry-after", "1")
                .into_http_response();
        };
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let id = meta.id.clone();
        let unrouted = meta.targets.is_empty();
        let outcome = store
            .accept(OwnedEvent {
                webhook: self.config.name.clone(),
                meta,
                content_type,
                body,
                now_ms: now.as_millis() as u64,
                dedup_window: self.config.dedup_window,
            })
            .await;
        match outcome {
            Ok(Acceptance::Accepted(_)) => {
                accepted.notify_one();
                self.accepted.inc();
                if unrouted {
                    self.unrouted.inc();
                }
                self.answer(http::StatusCode::ACCEPTED, "accepted", &id)
            }
            Ok(Acceptance::Duplicate) => {
                self.duplicate.inc();
                self.answer(http::StatusCode::OK, "duplicate", &id)
            }
            Err(error) => {
                tracing::warn!(webhook = %self.config.name, %error, "could not store a webhook event");
                // Nothing was acknowledged: the provider retries.
                Problem::new(
                    ErrorCode::StoreUnavailable,
                    "the event could not be stored; retry later",
                )
                .with_header("retry-after", "1")
                .into_http_response()
            }
        }
    }

    /// The configured ack body, or the contract's JSON.
    fn answer(&self, status: http::StatusCode, outcome: &str, id: &str) -> http::Response<Vec<u8>> {
        match &self.config.ack {
            Some(ack) => respond(
                ack.status,
                ack.content_type.clone(),
                ack.body.clone().into_bytes(),
            ),
            None => json(status, &serde_json::json!({ "status": outcome, "id": id })),
        }
    }

    /// Slack checks an endpoint by sending `url_verification` and expects
    /// its challenge back; it is answered, not stored.
    fn slack_url_check(&self, body: &[u8]) -> Option<String> {
        if self.config.verify.kind != VerifyKind::Slack {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        (value["type"] == "url_verification")
            .then(|| value["challenge"].as_str().map(str::to_string))
            .flatten()
    }
}

fn json(status: http::StatusCode, value: &serde_json::Value) -> http::Response<Vec<u8>> {
    respond(
        status,
        http::HeaderValue::from_static("application/json"),
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// With a Content-Length, so that the provider's connection stays open for
/// its next webhook. Status and content type are typed values, checked at
/// config load: nothing here can fail.
fn respond(
    status: http::StatusCode,
    content_type: http::HeaderValue,
    body: Vec<u8>,
) -> http::Response<Vec<u8>> {
    let mut response = http::Response::new(Vec::new());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, content_type);
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    *response.body_mut() = body;
    response
}
