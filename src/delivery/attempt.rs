//! One delivery attempt: a leased job's event read from the store, sent to
//! a backend of its target's group (signed when `delivery.signing_secret`
//! is set), the answer turned into ack, retry-at or dead letter
//! (`outcome::decide`) and that decision recorded. The HTTP call goes
//! through [`Transport`], so an attempt is tested with a fake one.
//!
//! An outcome the store cannot record (it is failing, or full) is recorded
//! again with backoff by the task that holds the job, never by sending the
//! event again: while any outcome waits, the scheduler leases nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::event::WEDDING_DAY_CONTEXT;
use crate::trace::export::{Span, SpanKind};
use crate::trace::{self, TraceContext};
use tokio::time::Instant;

use super::outcome::{decide, Answer, Decision};
use super::request;
use super::settings::Plan;
use crate::metrics::{DeadLetterReason, DeliveryOutcome, Metrics};
use crate::net::client::{ClientError, ClientResponse, SmallClient};
use crate::resilience::cooldown::parse_retry_after;
use crate::resilience::retry::unit_random;
use crate::store::records::response_excerpt;
use crate::store::{Attempt, Job, Store, StoreError};
use crate::time::unix_time;

pub fn now_ms() -> u64 {
    unix_time().as_millis() as u64
}

/// How an attempt reaches a backend.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Sends `request` and `body` to `peer` (a backend of the target's
    /// group) and reads the whole answer, all within `timeout`.
    async fn send(
        &self,
        peer: &HttpPeer,
        request: RequestHeader,
        body: Bytes,
        timeout: Duration,
    ) -> Result<ClientResponse, ClientError>;
}

#[async_trait::async_trait]
impl Transport for SmallClient {
    async fn send(
        &self,
        peer: &HttpPeer,
        request: RequestHeader,
        body: Bytes,
        timeout: Duration,
    ) -> Result<ClientResponse, ClientError> {
        self.exchange(peer, request, body, timeout).await
    }
}

/// What every delivery task shares.
pub struct Deliverer {
    pub store: Arc<dyn Store>,
    pub transport: Box<dyn Transport>,
    pub metrics: Arc<Metrics>,
    pub unrecorded: Unrecorded,
}

/// The first pause before an outcome is recorded again, doubled each time
/// up to the last.
const RECORD_AGAIN_FIRST: Duration = Duration::from_millis(100);
const RECORD_AGAIN_MAX: Duration = Duration::from_secs(5);

/// The pause before recording an outcome again after `failures` failed
/// tries (1 or more).
pub fn record_again_after(failures: u32) -> Duration {
    RECORD_AGAIN_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RECORD_AGAIN_MAX)
}

/// Outcomes delivered but not yet recorded, held by their tasks.
#[derive(Debug, Default)]
pub struct Unrecorded {
    waiting: AtomicUsize,
    /// Set at shutdown: the tasks stop trying and leave their jobs to be
    /// leased again after the restart.
    give_up: AtomicBool,
}

impl Unrecorded {
    /// How many outcomes wait to be recorded: none may be leased meanwhile.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn give_up(&self) {
        self.give_up.store(true, Ordering::Release);
    }

    fn giving_up(&self) -> bool {
        self.give_up.load(Ordering::Acquire)
    }
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        transport: Box<dyn Transport>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            transport,
            metrics,
            unrecorded: Unrecorded::default(),
        }
    }
}

/// An attempt that could not reach a backend because the job's event is
/// gone or unreadable: recorded as such in its dead letter.
pub(super) fn no_attempt(error: String) -> Attempt {
    Attempt {
        at_ms: now_ms(),
        duration_ms: 0,
        backend: None,
        status: None,
        error: Some(error),
        response: None,
    }
}

/// What an attempt decided, waiting to be recorded by `Deliverer::settle`.
#[derive(Debug)]
pub struct Settlement {
    pub attempt: Option<Attempt>,
    pub decision: Decision,
}

impl Deliverer {
    /// One attempt for one job under `plan`, and what follows from its
    /// answer, recorded before this returns.
    pub async fn deliver(&self, job: Job, plan: &Plan) -> Decision {
        let Settlement { attempt, decision } = self.attempt(&job, plan).await;
        self.settle(&job, attempt, decision).await;
        decision
    }

    /// One attempt for one job under `plan` and its decision, not yet
    /// recorded: the scheduler frees the worker and the target's slot
    /// before the store records it, so a slow commit does not idle them.
    pub async fn attempt(&self, job: &Job, plan: &Plan) -> Settlement {
        let policy = plan.settings.policy(&job.webhook);
        let Some(group) = plan.upstreams.get(&job.target) else {
            let decision = Decision::DeadLetter(DeadLetterReason::UnknownTarget);
            return Settlement {
                attempt: None,
                decision,
            };
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
                return Settlement {
                    attempt: Some(attempt),
                    decision,
                };
            }
            Err(StoreError::Corrupt(reason)) => {
                tracing::error!(job = job.id, event = job.event, %reason, "a job's event cannot be read; the job becomes a dead letter (corrupt)");
                let attempt =
                    no_attempt(format!("the event's record could not be read ({reason})"));
                let decision = Decision::DeadLetter(DeadLetterReason::Corrupt);
                return Settlement {
                    attempt: Some(attempt),
                    decision,
                };
            }
            Err(error) => {
                tracing::warn!(job = job.id, %error, "cannot read an event to deliver; its lease will expire and it is tried again");
                let decision = Decision::LeftToLease;
                return Settlement {
                    attempt: None,
                    decision,
                };
            }
        };
        let started = Instant::now();
        let at_ms = now_ms();
        let attempt_number = job.attempts + 1;
        // Each attempt is a span under the one that accepted the event; an
        // event kept without one (tracing.propagate off, or stored before
        // traces were kept) is delivered without.
        let trace = stored
            .trace
            .as_deref()
            .and_then(|t| TraceContext::parse(t.as_bytes()))
            .map(|parent| (parent.child(), parent.span_id));
        let traceparent = trace.map(|(t, _)| t.header());
        let chosen = group.choose();
        // The start of the target's answer, kept with the attempt.
        let mut excerpt = None;
        let answer = match &chosen {
            None => Answer::NoBackend,
            Some(chosen) => {
                let host = group.host_for(chosen);
                let delivery = request::Delivery {
                    path: &policy.path,
                    host: &host,
                    event: &stored,
                    attempt: attempt_number,
                    now_secs: at_ms / 1000,
                    traceparent: traceparent.as_deref(),
                    redelivery: job.redelivery,
                };
                match request::build(&delivery, plan.settings.signer.as_ref(), &body) {
                    Err(error) => Answer::Internal(format!(
                        "the delivery request could not be built: {error}"
                    )),
                    Ok(request) => match self
                        .transport
                        .send(
                            &group.peer(
                                chosen,
                                policy.timeout.min(Duration::from_secs(5)),
                                policy.timeout,
                            ),
                            request,
                            Bytes::from(body),
                            policy.timeout,
                        )
                        .await
                    {
                        Ok(response) => {
                            excerpt = response_excerpt(&response.body);
                            Answer::Status {
                                status: response.status,
                                retry_after: response
                                    .headers
                                    .get(http::header::RETRY_AFTER)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| {
                                        parse_retry_after(v, std::time::SystemTime::now())
                                    }),
                            }
                        }
                        Err(error) => Answer::Failed(error.to_string()),
                    },
                }
            }
        };
        let elapsed = started.elapsed();
        let backend = chosen.as_ref().map(|c| c.addr.clone());
        if let Some(chosen) = chosen {
            match &answer {
                Answer::Status { status, .. } => {
                    group.count_call(&chosen.addr, &status.to_string())
                }
                Answer::Failed(_) => group.count_call(&chosen.addr, "error"),
                Answer::NoBackend | Answer::Internal(_) => {}
            }
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
            response: excerpt,
        };
        let decision = decide(
            &answer,
            attempt_number,
            &policy,
            // The job's: a redelivery's age counts from when it was queued.
            job.received_at_ms,
            now_ms(),
            unit_random(),
        );
        // On the stack: only a failed attempt's log line shows it.
        let trace_id = trace.map(|(t, _)| t.trace_id_text());
        let trace_id = trace_id.as_ref().map_or("", |t| t.as_str());
        if let Some((context, parent)) = trace.filter(|_| trace::export::enabled()) {
            trace::export::record(Span {
                context,
                parent: Some(parent),
                name: "delivery.attempt",
                kind: SpanKind::Client,
                start: std::time::UNIX_EPOCH + Duration::from_millis(at_ms),
                end: std::time::SystemTime::now(),
                attributes: vec![
                    ("webhook.source", job.webhook.to_string()),
                    ("event.id", stored.id.to_string()),
                    ("delivery.target", job.target.to_string()),
                    ("delivery.attempt", attempt_number.to_string()),
                    (
                        "http.response.status_code",
                        attempt.status.map_or_else(String::new, |s| s.to_string()),
                    ),
                ],
                error: decision != Decision::Delivered,
            });
        }
        if let Decision::DeadLetter(_) = decision {
            if stored
                .context
                .iter()
                .any(|(key, _)| key == WEDDING_DAY_CONTEXT)
            {
                self.metrics
                    .wedding_day_dead_letters_total
                    .with_label_values(&[job.webhook.as_str(), job.target.as_str()])
                    .inc();
                tracing::error!(
                    webhook = %job.webhook, target = %job.target, event_id = %stored.id,
                    trace_id = %trace_id, "a wedding-day event became a dead letter"
                );
            }
        }
        if decision != Decision::Delivered {
            tracing::info!(
                webhook = %job.webhook, target = %job.target, event_id = %stored.id,
                trace_id = %trace_id,
                attempt = attempt_number, status = ?attempt.status, error = ?attempt.error,
                decision = ?decision, "delivery attempt failed"
            );
        }
        Settlement {
            attempt: Some(attempt),
            decision,
        }
    }

    /// Records the decision in the store and the metrics. While the store
    /// cannot record it, tries again with backoff, holding the job: the
    /// event is not sent again meanwhile (its lease may run out, but this
    /// process leases nothing while an outcome waits). Given up only at
    /// shutdown or when another holder took the job: a delivered event is
    /// then sent once more, counted as `repeated`.
    pub async fn settle(&self, job: &Job, attempt: Option<Attempt>, decision: Decision) {
        let outcome = match decision {
            Decision::Delivered => DeliveryOutcome::Delivered,
            Decision::Retry { .. } if attempt.is_some() => DeliveryOutcome::Retried,
            // A retry always follows an attempt; without one there is
            // nothing to record, and the lease runs out by itself.
            Decision::Retry { .. } | Decision::LeftToLease => return,
            Decision::DeadLetter(_) => DeliveryOutcome::DeadLettered,
        };
        let mut failures = 0;
        let result = loop {
            let result = self.record(job, attempt.clone(), decision).await;
            let Err(error @ (StoreError::Unavailable(_) | StoreError::Full)) = &result else {
                break result;
            };
            failures += 1;
            if failures == 1 {
                self.unrecorded.waiting.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    job = job.id, %error,
                    "cannot record a delivery's outcome; trying again (the event is not sent again meanwhile)"
                );
            }
            if self.unrecorded.giving_up() {
                break result;
            }
            tokio::time::sleep(record_again_after(failures)).await;
        };
        if failures > 0 {
            self.unrecorded.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        let count = |outcome: DeliveryOutcome| {
            self.metrics
                .deliveries_total
                .with_label_values(&[job.webhook.as_str(), job.target.as_str(), outcome.as_str()])
                .inc();
        };
        match result {
            Ok(()) => {
                count(outcome);
                if failures > 0 {
                    tracing::info!(
                        job = job.id,
                        failures,
                        "a delivery's outcome was recorded after the store failed"
                    );
                }
                if let Decision::DeadLetter(reason) = decision {
                    self.metrics
                        .dead_lettered_total
                        .with_label_values(&[job.webhook.as_str(), reason.as_str()])
                        .inc();
                }
            }
            Err(StoreError::LeaseLost(_)) => {
                tracing::warn!(
                    job = job.id,
                    "a delivery outlived its lease; the job's new holder decides its fate"
                );
                if decision == Decision::Delivered {
                    count(DeliveryOutcome::Repeated);
                }
            }
            Err(error) => {
                tracing::warn!(
                    job = job.id, %error,
                    "cannot record a delivery's outcome; the job is tried again when its lease expires"
                );
                if decision == Decision::Delivered {
                    count(DeliveryOutcome::Repeated);
                }
            }
        }
    }

    async fn record(
        &self,
        job: &Job,
        attempt: Option<Attempt>,
        decision: Decision,
    ) -> Result<(), StoreError> {
        match (decision, attempt) {
            (Decision::Delivered, attempt) => self.store.ack(job, attempt).await,
            (Decision::Retry { due_ms }, Some(attempt)) => {
                self.store.retry_at(job, attempt, due_ms).await
            }
            (Decision::DeadLetter(reason), attempt) => {
                self.store
                    .dead_letter(job, attempt, reason.as_str(), now_ms())
                    .await
            }
            (Decision::Retry { .. } | Decision::LeftToLease, _) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! One attempt end to end against an in-memory store and a fake
    //! transport that answers as each test says: what was sent, and what
    //! the store holds afterwards.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::config::Config;
    use crate::event::{EventMeta, Priority};
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Acceptance, DeadLetterFilter, LeaseRequest, OwnedEvent};
    use crate::time::MonotonicClock;
    use crate::upstreams::UpstreamGroups;

    /// Answers from a script, one per call; records every request.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Result<ClientResponse, ClientError>>>,
        sent: Mutex<Vec<(String, RequestHeader, Bytes)>>,
    }

    fn status(code: u16, retry_after: Option<&str>) -> Result<ClientResponse, ClientError> {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        }
        Ok(ClientResponse {
            status: code,
            headers,
            body: Bytes::new(),
        })
    }

    #[async_trait::async_trait]
    impl Transport for Arc<Scripted> {
        async fn send(
            &self,
            peer: &HttpPeer,
            request: RequestHeader,
            body: Bytes,
            _timeout: Duration,
        ) -> Result<ClientResponse, ClientError> {
            self.sent
                .lock()
                .unwrap()
                .push((peer._address.to_string(), request, body));
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("an answer scripted")
        }
    }

    const CONFIG: &str = "
upstreams:
  notify: { backends: [127.0.0.1:9] }
webhooks:
  stripe:
    path: /webhooks/stripe
    verify: { kind: stripe, secrets: [whsec_test_secret_0123456789] }
    routes: [{ events: [\"*\"], targets: [notify] }]
    delivery: { path: /events/stripe, max_attempts: 3, backoff: { initial: 1s, max: 4s } }
";

    struct Bench {
        deliverer: Deliverer,
        transport: Arc<Scripted>,
        store: Arc<EmbeddedStore>,
        plan: Plan,
    }

    fn bench(answers: Vec<Result<ClientResponse, ClientError>>) -> Bench {
        let config = Config::from_yaml(
            CONFIG,
            "test.yaml",
            &crate::config::interpolate::ProcessLookup,
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let upstreams = Arc::new(
            UpstreamGroups::build(&config.upstreams, None, &MonotonicClock::shared(), &metrics)
                .unwrap(),
        );
        let plan = Plan {
            settings: super::super::Settings::new(&config).unwrap(),
            upstreams,
        };
        let transport = Arc::new(Scripted {
            answers: Mutex::new(answers.into()),
            ..Scripted::default()
        });
        let store = Arc::new(EmbeddedStore::in_memory(Duration::from_secs(3600)).unwrap());
        Bench {
            deliverer: Deliverer::new(store.clone(), Box::new(Arc::clone(&transport)), metrics),
            transport,
            store,
            plan,
        }
    }

    async fn accept_and_lease(store: &EmbeddedStore, id: &str) -> Job {
        accept(store, id).await;
        lease(store).await.expect("the job is due")
    }

    async fn accept(store: &EmbeddedStore, id: &str) {
        let meta = EventMeta {
            id: id.into(),
            dedup: id.into(),
            event_type: "payment_intent.succeeded".into(),
            priority: Priority::Normal,
            targets: vec!["notify".into()],
            trace: None,
            context: vec![("wedding_id".into(), "w_1".into())],
            recovered: false,
        };
        let accepted = store
            .accept(OwnedEvent {
                webhook: "stripe".into(),
                meta,
                content_type: Some("application/json".into()),
                headers: Vec::new(),
                body: Bytes::from_static(b"{\"id\":\"evt_1\"}"),
                now_ms: now_ms(),
                dedup_window: Duration::from_secs(3600),
            })
            .await
            .unwrap();
        assert!(matches!(accepted, Acceptance::Accepted(_)));
    }

    async fn lease(store: &EmbeddedStore) -> Option<Job> {
        store
            .lease(&LeaseRequest {
                priority: Priority::Normal,
                now_ms: now_ms() + 3_600_000,
                visibility: Duration::from_secs(30),
                room: Vec::new(),
                max: 1,
            })
            .await
            .unwrap()
            .pop()
    }

    /// The in-memory store, whose acks fail with `Unavailable` while
    /// `failing` is above 0 (counting down; `u32::MAX`: always), and with
    /// a `gate`, wait for one of its permits each (a slow commit).
    struct AcksFailing {
        inner: EmbeddedStore,
        failing: std::sync::atomic::AtomicU32,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    #[async_trait::async_trait]
    impl Store for AcksFailing {
        async fn accept(&self, event: OwnedEvent) -> Result<Acceptance, StoreError> {
            self.inner.accept(event).await
        }
        async fn lease(&self, request: &LeaseRequest) -> Result<Vec<Job>, StoreError> {
            self.inner.lease(request).await
        }
        async fn ack(&self, job: &Job, attempt: Option<Attempt>) -> Result<(), StoreError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("never closed").forget();
            }
            let left = self.failing.load(Ordering::SeqCst);
            if left > 0 {
                if left != u32::MAX {
                    self.failing.store(left - 1, Ordering::SeqCst);
                }
                return Err(StoreError::Unavailable("No space left on device".into()));
            }
            self.inner.ack(job, attempt).await
        }
        async fn retry_at(
            &self,
            job: &Job,
            attempt: Attempt,
            due_ms: u64,
        ) -> Result<(), StoreError> {
            self.inner.retry_at(job, attempt, due_ms).await
        }
        async fn dead_letter(
            &self,
            job: &Job,
            attempt: Option<Attempt>,
            reason: &str,
            now_ms: u64,
        ) -> Result<(), StoreError> {
            self.inner.dead_letter(job, attempt, reason, now_ms).await
        }
        async fn dead_letters(
            &self,
            filter: &DeadLetterFilter,
            cursor: Option<&str>,
            limit: usize,
        ) -> Result<crate::store::DeadLetterPage, StoreError> {
            self.inner.dead_letters(filter, cursor, limit).await
        }
        async fn dead_letter_by_id(
            &self,
            id: u64,
        ) -> Result<Option<crate::store::DeadLetter>, StoreError> {
            self.inner.dead_letter_by_id(id).await
        }
        async fn replay(&self, id: u64, now_ms: u64) -> Result<bool, StoreError> {
            self.inner.replay(id, now_ms).await
        }
        async fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
            self.inner.delete_dead_letter(id).await
        }
        async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
            self.inner.dead_letter_counts().await
        }
        async fn queue_depth(&self) -> Result<crate::store::QueueDepth, StoreError> {
            self.inner.queue_depth().await
        }
        async fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
            self.inner.oldest_pending_ms().await
        }
        async fn event(
            &self,
            sequence: u64,
        ) -> Result<Option<(crate::store::StoredEvent, Vec<u8>)>, StoreError> {
            self.inner.event(sequence).await
        }
        async fn inspect(&self) -> Result<crate::store::StoreReport, StoreError> {
            self.inner.inspect().await
        }
    }

    /// A bench whose store fails `failing` acks.
    fn bench_failing_acks(
        answers: Vec<Result<ClientResponse, ClientError>>,
        failing: u32,
    ) -> (Bench, Arc<AcksFailing>) {
        let mut bench = bench(answers);
        let store = Arc::new(AcksFailing {
            inner: EmbeddedStore::in_memory(Duration::from_secs(3600)).unwrap(),
            failing: failing.into(),
            gate: None,
        });
        let metrics = Arc::clone(&bench.deliverer.metrics);
        bench.deliverer = Deliverer::new(
            store.clone(),
            Box::new(Arc::clone(&bench.transport)),
            metrics,
        );
        (bench, store)
    }

    fn delivered_count(deliverer: &Deliverer, outcome: DeliveryOutcome) -> u64 {
        deliverer
            .metrics
            .deliveries_total
            .with_label_values(&["stripe", "notify", outcome.as_str()])
            .get()
    }

    /// With one worker and acks that wait for a slow commit, the next job
    /// is sent while the first one's outcome is still being recorded; and
    /// the service stops only once both outcomes are recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_takes_the_next_job_while_the_last_outcome_is_recorded() {
        use crate::delivery::scheduler::DeliveryService;
        use pingora::services::background::BackgroundService;

        let mut bench = bench(vec![status(204, None), status(204, None)]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let store = Arc::new(AcksFailing {
            inner: EmbeddedStore::in_memory(Duration::from_secs(3600)).unwrap(),
            failing: 0.into(),
            gate: Some(Arc::clone(&gate)),
        });
        let metrics = Arc::clone(&bench.deliverer.metrics);
        bench.deliverer = Deliverer::new(
            store.clone(),
            Box::new(Arc::clone(&bench.transport)),
            metrics,
        );
        accept(&store.inner, "evt_1").await;
        accept(&store.inner, "evt_2").await;
        let plan = Box::new(arc_swap::access::Constant(Arc::new(bench.plan)));
        let service = Arc::new(DeliveryService::new(
            bench.deliverer,
            plan,
            1,
            crate::lifecycle::Lifecycle::new(),
            Arc::default(),
        ));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let running = tokio::spawn({
            let service = Arc::clone(&service);
            async move { service.start(shutdown).await }
        });
        let sent = || bench.transport.sent.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sent(), 2, "the second job waited for the first one's ack");
        assert_eq!(gate.available_permits(), 0);
        assert_eq!(store.inner.queue_depth().await.unwrap().total(), 2);
        stop.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!running.is_finished(), "stopped with outcomes unrecorded");
        gate.add_permits(2);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("stops once the outcomes are recorded")
            .unwrap();
        assert_eq!(store.inner.queue_depth().await.unwrap().total(), 0);
        assert_eq!(sent(), 2, "sent once each");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_the_store_cannot_write_is_written_again_with_backoff_never_by_sending_again() {
        let (bench, store) = bench_failing_acks(vec![status(204, None)], 3);
        let job = accept_and_lease(&store.inner, "evt_1").await;
        let deliverer = Arc::new(bench.deliverer);
        let plan = bench.plan;
        let started = tokio::time::Instant::now();
        let task = tokio::spawn({
            let deliverer = Arc::clone(&deliverer);
            async move { deliverer.deliver(job, &plan).await }
        });
        // Waiting on its backoff, the task holds the outcome: nothing may
        // be leased meanwhile.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(deliverer.unrecorded.waiting(), 1);
        assert_eq!(task.await.unwrap(), Decision::Delivered);
        assert_eq!(deliverer.unrecorded.waiting(), 0);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100 + 200 + 400),
            "three failed writes: three pauses"
        );
        assert_eq!(bench.transport.sent.lock().unwrap().len(), 1, "sent once");
        assert_eq!(delivered_count(&deliverer, DeliveryOutcome::Delivered), 1);
        assert_eq!(delivered_count(&deliverer, DeliveryOutcome::Repeated), 0);
        assert_eq!(store.inner.queue_depth().await.unwrap().normal, 0, "acked");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_still_unwritten_at_shutdown_is_given_up_and_counted_as_repeated() {
        let (bench, store) = bench_failing_acks(vec![status(204, None)], u32::MAX);
        let job = accept_and_lease(&store.inner, "evt_1").await;
        let deliverer = Arc::new(bench.deliverer);
        let plan = bench.plan;
        let task = tokio::spawn({
            let deliverer = Arc::clone(&deliverer);
            async move { deliverer.deliver(job, &plan).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            deliverer.unrecorded.waiting(),
            1,
            "still trying after a minute"
        );
        deliverer.unrecorded.give_up();
        task.await.unwrap();
        assert_eq!(deliverer.unrecorded.waiting(), 0);
        assert_eq!(bench.transport.sent.lock().unwrap().len(), 1);
        assert_eq!(delivered_count(&deliverer, DeliveryOutcome::Repeated), 1);
        assert_eq!(delivered_count(&deliverer, DeliveryOutcome::Delivered), 0);
    }

    #[test]
    fn an_outcome_is_recorded_again_after_a_doubling_pause_of_at_most_five_seconds() {
        let pauses: Vec<u64> = (1..=8)
            .map(|n| record_again_after(n).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(record_again_after(u32::MAX), RECORD_AGAIN_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_2xx_sends_the_event_to_the_path_and_acks_the_job() {
        let bench = bench(vec![status(204, None)]);
        let job = accept_and_lease(&bench.store, "evt_1").await;
        let decision = bench.deliverer.deliver(job, &bench.plan).await;
        assert_eq!(decision, Decision::Delivered);
        {
            let sent = bench.transport.sent.lock().unwrap();
            let (backend, request, body) = &sent[0];
            assert_eq!(backend, "127.0.0.1:9");
            assert_eq!(request.uri.path(), "/events/stripe");
            assert_eq!(request.headers["x-event-id"], "evt_1");
            assert_eq!(request.headers["x-delivery-attempt"], "1");
            assert_eq!(&body[..], b"{\"id\":\"evt_1\"}");
        }
        assert!(
            lease(&bench.store).await.is_none(),
            "nothing left to deliver"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_503_with_retry_after_schedules_the_retry_then_and_counts_the_attempt() {
        let bench = bench(vec![status(503, Some("2")), status(204, None)]);
        let job = accept_and_lease(&bench.store, "evt_1").await;
        let before = now_ms();
        let Decision::Retry { due_ms } = bench.deliverer.deliver(job, &bench.plan).await else {
            panic!("a 503 is retried");
        };
        assert!(
            (before + 1_900..=now_ms() + 2_100).contains(&due_ms),
            "due in 2 s, as asked"
        );
        let again = lease(&bench.store).await.expect("due again");
        assert_eq!(again.attempts, 1);
        assert_eq!(
            bench.deliverer.deliver(again, &bench.plan).await,
            Decision::Delivered
        );
        let sent = bench.transport.sent.lock().unwrap();
        assert_eq!(sent[1].1.headers["x-delivery-attempt"], "2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_400_is_a_dead_letter_with_its_attempt_at_once() {
        let bench = bench(vec![status(400, None)]);
        let job = accept_and_lease(&bench.store, "evt_1").await;
        assert_eq!(
            bench.deliverer.deliver(job, &bench.plan).await,
            Decision::DeadLetter(DeadLetterReason::Rejected)
        );
        let page = bench
            .store
            .dead_letters(&DeadLetterFilter::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].reason, "rejected");
        assert_eq!(page.items[0].job.attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_failure_on_the_last_attempt_is_a_dead_letter() {
        let refused = || Err(ClientError::Connection("ConnectRefused"));
        let bench = bench(vec![refused(), refused(), refused()]);
        let mut job = accept_and_lease(&bench.store, "evt_1").await;
        for _ in 0..2 {
            let decision = bench.deliverer.deliver(job, &bench.plan).await;
            assert!(matches!(decision, Decision::Retry { .. }), "{decision:?}");
            job = lease(&bench.store).await.expect("retried");
        }
        assert_eq!(
            bench.deliverer.deliver(job, &bench.plan).await,
            Decision::DeadLetter(DeadLetterReason::MaxAttempts)
        );
    }
}
