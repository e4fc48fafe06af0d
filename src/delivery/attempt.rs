//! One delivery attempt: a leased job's event read from the store, sent to
//! a backend of its target's group (signed when `delivery.signing_secret`
//! is set), the answer turned into ack, retry-at or dead letter
//! (`outcome::decide`) and that decision recorded. The HTTP call goes
//! through [`Transport`], so an attempt is tested with a fake one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use tokio::time::Instant;

use super::outcome::{decide, Answer, Decision};
use super::request;
use super::settings::Plan;
use crate::metrics::{DeadLetterReason, DeliveryOutcome, Metrics};
use crate::net::client::{ClientError, ClientResponse, SmallClient};
use crate::resilience::cooldown::parse_retry_after;
use crate::resilience::retry::unit_random;
use crate::store::{Attempt, Job, Store, StoreError};
use crate::time::unix_time;

pub fn now_ms() -> u64 {
    unix_time().as_millis() as u64
}

/// How an attempt reaches a backend.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Sends `request` and `body` to `backend` (`IP:port`) and reads the
    /// whole answer, all within `timeout`.
    async fn send(
        &self,
        backend: &str,
        request: RequestHeader,
        body: Bytes,
        timeout: Duration,
    ) -> Result<ClientResponse, ClientError>;
}

#[async_trait::async_trait]
impl Transport for SmallClient {
    async fn send(
        &self,
        backend: &str,
        request: RequestHeader,
        body: Bytes,
        timeout: Duration,
    ) -> Result<ClientResponse, ClientError> {
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(timeout.min(Duration::from_secs(5)));
        self.exchange(&peer, request, body, timeout).await
    }
}

/// What every delivery task shares.
pub struct Deliverer {
    pub store: Arc<dyn Store>,
    pub transport: Box<dyn Transport>,
    pub metrics: Arc<Metrics>,
}

/// An attempt that could not reach a backend because the job's event is
/// gone or unreadable: recorded as such in its dead letter.
fn no_attempt(error: String) -> Attempt {
    Attempt {
        at_ms: now_ms(),
        duration_ms: 0,
        backend: None,
        status: None,
        error: Some(error),
    }
}

impl Deliverer {
    /// One attempt for one job under `plan`, and what follows from its answer.
    pub async fn deliver(&self, job: Job, plan: &Plan) -> Decision {
        let policy = plan.settings.policy(&job.webhook);
        let Some(group) = plan.upstreams.get(&job.target) else {
            let decision = Decision::DeadLetter(DeadLetterReason::UnknownTarget);
            self.settle(&job, None, decision).await;
            return decision;
        };
        let (stored, body) = match self.store.event(job.event).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                // Never acked as delivered and never sent empty: an operator
                // must see that the store lost what it had acknowledged.
                tracing::error!(
                    job = job.id, event = job.event, webhook = %job.webhook, event_id = %job.event_id,
                    "a job's event or body is missing from the store; the job becomes a dead letter"
                );
                let attempt = no_attempt("the event or its body is missing from the store".into());
                let decision = Decision::DeadLetter(DeadLetterReason::EventMissing);
                self.settle(&job, Some(attempt), decision).await;
                return decision;
            }
            Err(StoreError::Corrupt(reason)) => {
                tracing::error!(job = job.id, event = job.event, %reason, "a job's event cannot be read; the job becomes a dead letter (corrupt)");
                let attempt =
                    no_attempt(format!("the event's record could not be read ({reason})"));
                let decision = Decision::DeadLetter(DeadLetterReason::Corrupt);
                self.settle(&job, Some(attempt), decision).await;
                return decision;
            }
            Err(error) => {
                tracing::warn!(job = job.id, %error, "cannot read an event to deliver; its lease will expire and it is tried again");
                return Decision::LeftToLease;
            }
        };
        let started = Instant::now();
        let at_ms = now_ms();
        let attempt_number = job.attempts + 1;
        let chosen = group.choose();
        let answer = match &chosen {
            None => Answer::NoBackend,
            Some(chosen) => {
                let delivery = request::Delivery {
                    path: &policy.path,
                    backend: &chosen.addr,
                    event: &stored,
                    attempt: attempt_number,
                    now_secs: at_ms / 1000,
                };
                match request::build(&delivery, plan.settings.signer.as_ref(), &body) {
                    Err(error) => Answer::Internal(format!(
                        "the delivery request could not be built: {error}"
                    )),
                    Ok(request) => match self
                        .transport
                        .send(&chosen.addr, request, Bytes::from(body), policy.timeout)
                        .await
                    {
                        Ok(response) => Answer::Status {
                            status: response.status,
                            retry_after: response
                                .headers
                                .get(http::header::RETRY_AFTER)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now())),
                        },
                        Err(error) => Answer::Failed(error.to_string()),
                    },
                }
            }
        };
        let elapsed = started.elapsed();
        let backend = chosen.as_ref().map(|c| c.addr.clone());
        if let Some(chosen) = chosen {
            chosen.finish(answer.breaker_outcome());
            self.metrics
                .delivery_duration_seconds
                .with_label_values(&[job.target.as_str()])
                .observe(elapsed.as_secs_f64());
        }
        let attempt = Attempt {
            at_ms,
            duration_ms: elapsed.as_millis() as u64,
            backend,
            status: answer.status(),
            error: answer.error(&job.target),
        };
        let decision = decide(
            &answer,
            attempt_number,
            &policy,
            stored.received_at_ms,
            now_ms(),
            unit_random(),
        );
        if decision != Decision::Delivered {
            tracing::info!(
                webhook = %job.webhook, target = %job.target, event_id = %stored.id,
                attempt = attempt_number, status = ?attempt.status, error = ?attempt.error,
                decision = ?decision, "delivery attempt failed"
            );
        }
        self.settle(&job, Some(attempt), decision).await;
        decision
    }

    /// Records the decision in the store and the metrics.
    pub async fn settle(&self, job: &Job, attempt: Option<Attempt>, decision: Decision) {
        let (outcome, result) = match (decision, attempt) {
            (Decision::Delivered, _) => (DeliveryOutcome::Delivered, self.store.ack(job).await),
            (Decision::Retry { due_ms }, Some(attempt)) => (
                DeliveryOutcome::Retried,
                self.store.retry_at(job, attempt, due_ms).await,
            ),
            // A retry always follows an attempt; without one there is
            // nothing to record, and the lease runs out by itself.
            (Decision::Retry { .. } | Decision::LeftToLease, _) => return,
            (Decision::DeadLetter(reason), attempt) => (
                DeliveryOutcome::DeadLettered,
                self.store
                    .dead_letter(job, attempt, reason.as_str(), now_ms())
                    .await,
            ),
        };
        match result {
            Ok(()) => {
                self.metrics
                    .deliveries_total
                    .with_label_values(&[
                        job.webhook.as_str(),
                        job.target.as_str(),
                        outcome.as_str(),
                    ])
                    .inc();
                if let Decision::DeadLetter(reason) = decision {
                    self.metrics
                        .dead_lettered_total
                        .with_label_values(&[job.webhook.as_str(), reason.as_str()])
                        .inc();
                }
            }
            Err(StoreError::LeaseLost(_)) => tracing::warn!(
                job = job.id,
                "a delivery outlived its lease; the job's new holder decides its fate"
            ),
            Err(error) => tracing::warn!(
                job = job.id, %error,
                "cannot record a delivery's outcome; the job is tried again when its lease expires"
            ),
        }
    }
}
