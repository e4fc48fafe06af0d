//! The ack path of one webhook, after its body is read: verify, answer
//! Slack's URL check, extract the event, store it durably, answer. The
//! provider gets its 2xx only once the store has committed.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::extract::{extract_all, Extracted};
use super::verify::{self, Inbound, Scheme};
use crate::config::webhooks::{RecoverKind, VerifyKind, Webhook};
use crate::event::{EventMeta, Priority, WEDDING_DAY_CONTEXT};
use crate::metrics::{
    DeadLetterReason, Metrics, ReceivedOutcome, RecoveredOutcome, RejectionReason,
};
use crate::problem::{ErrorCode, Problem};
use crate::store::{Acceptance, OwnedEvent, Store, StoreError};
use crate::trace::export::{Span, SpanKind};
use crate::trace::{self, TraceContext};
use crate::wedding_day::WeddingDayRule;

/// How long a provider is asked to wait while the store is full: draining
/// a backlog takes minutes, not a second.
pub const STORE_FULL_RETRY_AFTER: &str = "30";

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
    /// `priority.wedding_day`, ready to match (the date is read by
    /// `extract_all`).
    wedding_day: Option<WeddingDayRule>,
    wedding_day_events: IntCounter,
    /// `tracing.propagate`: each accepted event keeps its trace context.
    propagate: bool,
    /// `recover: { kind: github_deliveries }`: the provider resends what
    /// gap repair asked for, and those arrivals are marked recovered.
    resent_on_request: bool,
    recovered_accepted: IntCounter,
    recovered_duplicate: IntCounter,
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
            wedding_day: config.priority.wedding_day.as_ref().map(|w| w.rule()),
            wedding_day_events: metrics.wedding_day_events_total.with_label_values(&[name]),
            propagate: true,
            resent_on_request: config
                .recover
                .as_ref()
                .is_some_and(|r| r.kind == RecoverKind::GithubDeliveries),
            recovered_accepted: metrics
                .recovered_events_total
                .with_label_values(&[name, RecoveredOutcome::Accepted.as_str()]),
            recovered_duplicate: metrics
                .recovered_events_total
                .with_label_values(&[name, RecoveredOutcome::Duplicate.as_str()]),
            config: config.clone(),
        })
    }

    /// With `propagate` off, no trace context is kept or made.
    pub fn propagating(mut self, propagate: bool) -> Self {
        self.propagate = propagate;
        self
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
        let Extracted {
            mut meta,
            wedding_date,
        } = extract_all(
            &self.config,
            headers,
            &body,
            &self.scheme.identity(&request),
        );
        // This acknowledgement is a span of the provider's (or the app's)
        // trace, or the root of a new one; deliveries are its children.
        let (trace, parent) =
            TraceContext::continue_or_start(TraceContext::from_headers(headers), trace::sample);
        if self.propagate {
            meta.trace = Some(trace.header());
        }
        let span = |status: u16, event_id: &str| {
            if !self.propagate || !trace::export::enabled() {
                return;
            }
            trace::export::record(Span {
                context: trace,
                parent,
                name: "webhook.ack",
                kind: SpanKind::Server,
                start: std::time::UNIX_EPOCH + now,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    ("webhook.source", self.config.name.to_string()),
                    ("event.id", event_id.to_string()),
                    ("http.response.status_code", status.to_string()),
                ],
                error: status >= 500,
            });
        };
        let wedding_day = self.mark_wedding_day(&mut meta, wedding_date.as_deref(), now);
        let Some(store) = store else {
            return Problem::new(ErrorCode::StoreUnavailable, "no event store is configured")
                .with_header("retry-after", "1")
                .into_http_response();
        };
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if self.resent_on_request {
            meta.recovered = self.asked_for(store, &meta.id).await;
        }
        let recovered = meta.recovered;
        let id = meta.id.clone();
        let kept = super::kept_headers::kept(headers);
        let event = self.event(meta, content_type, kept, body, now);
        let outcome = self.store_event(store, event, wedding_day, accepted).await;
        match outcome {
            Ok(Acceptance::Accepted(_)) => {
                self.accepted.inc();
                if recovered {
                    self.recovered_accepted.inc();
                }
                span(202, &id);
                self.answer(http::StatusCode::ACCEPTED, "accepted", &id)
            }
            Ok(Acceptance::Duplicate) => {
                if recovered {
                    self.recovered_duplicate.inc();
                }
                self.duplicate.inc();
                span(200, &id);
                self.answer(http::StatusCode::OK, "duplicate", &id)
            }
            Err(StoreError::Full) => {
                span(503, &id);
                // Logged by the store when it starts refusing, not per event.
                self.rejected(RejectionReason::StoreFull);
                Problem::new(
                    ErrorCode::StoreFull,
                    "the store is full; its room is kept for delivering what it holds; retry later",
                )
                .with_header("retry-after", STORE_FULL_RETRY_AFTER)
                .into_http_response()
            }
            Err(error) => {
                span(503, &id);
                tracing::warn!(webhook = %self.config.name, trace_id = %trace.trace_id_text(), %error, "could not store a webhook event");
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

    /// Whether gap repair asked the provider to send event `id` again. A
    /// store that cannot say leaves the event unmarked, not refused: the
    /// mark is for the people reading the log, the event is what counts.
    async fn asked_for(&self, store: &dyn Store, id: &str) -> bool {
        store
            .redelivery_asked(&self.config.name, id)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(webhook = %self.config.name, %error, "could not tell whether gap repair asked for this event");
                false
            })
    }

    /// Stores an event gap repair fetched back from the provider's API
    /// (`body`, the event as the API renders it), as if its webhook had
    /// arrived: the same id and dedup key, context, priority and routes,
    /// marked recovered. Already accepted (the webhook did arrive, or the
    /// provider retried it since) is a duplicate, delivered once. The
    /// API's own credentials vouched for it: there is no signature.
    pub async fn accept_recovered(
        &self,
        store: &dyn Store,
        body: Bytes,
        now: Duration,
        accepted: &tokio::sync::Notify,
    ) -> Result<Acceptance, StoreError> {
        let headers = HeaderMap::new();
        let Extracted {
            mut meta,
            wedding_date,
        } = extract_all(&self.config, &headers, &body, &Default::default());
        meta.recovered = true;
        if self.propagate {
            meta.trace = Some(
                TraceContext::continue_or_start(None, trace::sample)
                    .0
                    .header(),
            );
        }
        let wedding_day = self.mark_wedding_day(&mut meta, wedding_date.as_deref(), now);
        // Counted by gap repair's own metrics, not as webhook requests.
        let json = Some("application/json".to_string());
        let event = self.event(meta, json, Vec::new(), body, now);
        self.store_event(store, event, wedding_day, accepted).await
    }

    /// This webhook's event as the store takes it.
    fn event(
        &self,
        meta: EventMeta,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
        body: Bytes,
        now: Duration,
    ) -> OwnedEvent {
        OwnedEvent {
            webhook: self.config.name.clone(),
            meta,
            content_type,
            headers,
            body,
            now_ms: now.as_millis() as u64,
            dedup_window: self.config.dedup_window,
        }
    }

    /// Stores this webhook's event; an accepted one wakes delivery and
    /// counts as a wedding-day or an unrouted event where it is one.
    async fn store_event(
        &self,
        store: &dyn Store,
        event: OwnedEvent,
        wedding_day: bool,
        accepted: &tokio::sync::Notify,
    ) -> Result<Acceptance, StoreError> {
        let unrouted = event.meta.targets.is_empty();
        let outcome = store.accept(event).await?;
        if let Acceptance::Accepted(_) = outcome {
            accepted.notify_one();
            if wedding_day {
                self.wedding_day_events.inc();
            }
            if unrouted {
                self.unrouted.inc();
            }
        }
        Ok(outcome)
    }

    /// An event whose wedding is today (or within the rule's reach) goes to
    /// the high lane whatever its type, and its deliveries carry
    /// `x-wedding-day: true` (a context value).
    fn mark_wedding_day(&self, meta: &mut EventMeta, date: Option<&str>, now: Duration) -> bool {
        let (Some(rule), Some(value)) = (&self.wedding_day, date) else {
            return false;
        };
        let Ok(now) = jiff::Timestamp::from_millisecond(now.as_millis() as i64) else {
            return false;
        };
        if !rule.matches(value, now) {
            return false;
        }
        meta.priority = Priority::High;
        meta.context.retain(|(key, _)| key != WEDDING_DAY_CONTEXT);
        meta.context
            .push((WEDDING_DAY_CONTEXT.to_string(), "true".to_string()));
        true
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

#[cfg(test)]
mod tests {
    //! The acknowledge path against an in-memory store: what is answered,
    //! and what was stored before the answer.

    use super::*;
    use crate::config::interpolate::ProcessLookup;
    use crate::config::Config;
    use crate::event::Priority;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::LeaseRequest;
    use crate::webhooks::verify::stripe::Stripe;
    use crate::webhooks::verify::testing::signed_headers;

    const SECRET: &str = "whsec_test_secret_0123456789";
    const NOW: Duration = Duration::from_secs(1_800_000_000);

    fn webhook(extra: &str) -> IngressWebhook {
        let yaml = format!(
            "upstreams:\n  notify: {{ backends: [127.0.0.1:9] }}\nwebhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: {{ kind: stripe, secrets: [{SECRET}] }}\n    priority: {{ high: [payment_intent.succeeded] }}\n    routes: [{{ events: [\"payment_intent.*\"], targets: [notify] }}]\n{extra}"
        );
        let config = Config::from_yaml(&yaml, "test.yaml", &ProcessLookup).unwrap();
        IngressWebhook::new(&config.webhooks[0], &Metrics::new()).unwrap()
    }

    fn signed(body: &[u8]) -> HeaderMap {
        let mut headers = signed_headers(
            &Stripe {
                keys: vec![SECRET.as_bytes().to_vec()],
                tolerance: Duration::from_secs(300),
            }
            .sign(body, NOW.as_secs()),
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers
    }

    const EVENT: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;

    async fn ack(
        webhook: &IngressWebhook,
        store: Option<&dyn Store>,
        headers: &HeaderMap,
        body: &'static [u8],
    ) -> http::Response<Vec<u8>> {
        let accepted = tokio::sync::Notify::new();
        webhook
            .acknowledge(
                store,
                headers,
                Bytes::from_static(body),
                None,
                NOW,
                &accepted,
            )
            .await
    }

    fn body_json(response: &http::Response<Vec<u8>>) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_verified_event_is_stored_with_its_route_and_priority_before_the_202() {
        let store = EmbeddedStore::in_memory(Duration::from_secs(3600)).unwrap();
        let webhook = webhook("");
        let answer = ack(&webhook, Some(&store), &signed(EVENT), EVENT).await;
        assert_eq!(answer.status(), http::StatusCode::ACCEPTED);
        assert_eq!(
            body_json(&answer),
            serde_json::json!({"status": "accepted", "id": "evt_1"})
        );
        let jobs = store
            .lease(&LeaseRequest {
                priority: Priority::High,
                now_ms: u64::MAX / 4,
                visibility: Duration::from_secs(30),
                room: Vec::new(),
                max: 10,
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (jobs[0].target.as_str(), jobs[0].event_id.as_str()),
            ("notify", "evt_1")
        );
        let (event, body) = store.event(jobs[0].event).await.unwrap().unwrap();
        assert_eq!(body, EVENT);
        assert_eq!(event.content_type.as_deref(), Some("application/json"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_event_again_is_a_200_duplicate() {
        let store = EmbeddedStore::in_memory(Duration::from_secs(3600)).unwrap();
        let webhook = webhook("");
        ack(&webhook, Some(&store), &signed(EVENT), EVENT).await;
        let again = ack(&webhook, Some(&store), &signed(EVENT), EVENT).await;
        assert_eq!(again.status(), http::StatusCode::OK);
        assert_eq!(body_json(&again)["status"], "duplicate");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgery_is_refused_and_nothing_is_stored() {
        let store = EmbeddedStore::in_memory(Duration::from_secs(3600)).unwrap();
        let webhook = webhook("");
        let mut headers = signed(EVENT);
        headers.insert(
            "stripe-signature",
            http::HeaderValue::from_static("t=1800000000,v1=00"),
        );
        let answer = ack(&webhook, Some(&store), &headers, EVENT).await;
        assert_eq!(answer.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(store.queue_depth().await.unwrap().total(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_store_nothing_is_acknowledged() {
        let answer = ack(&webhook(""), None, &signed(EVENT), EVENT).await;
        assert_eq!(answer.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()["retry-after"], "1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_ack_is_answered_as_written() {
        let store = EmbeddedStore::in_memory(Duration::from_secs(3600)).unwrap();
        let webhook =
            webhook("    ack: { status: 200, content_type: text/xml, body: \"<Response/>\" }\n");
        let answer = ack(&webhook, Some(&store), &signed(EVENT), EVENT).await;
        assert_eq!(answer.status(), http::StatusCode::OK);
        assert_eq!(answer.headers()["content-type"], "text/xml");
        assert_eq!(answer.body(), b"<Response/>");
    }
}
