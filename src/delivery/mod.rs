//! Delivery: a Pingora background service that leases jobs from the store
//! and delivers each (event, target) pair to a backend of the target's
//! upstream group. `delivery.workers` deliveries run at once in total,
//! `max_in_flight` per target; priorities share the workers 6:3:1
//! (`lanes`). Each answer is turned into ack, retry-at or dead letter
//! (`outcome`). The ingress wakes the service when it accepts an event, so
//! an idle queue delivers at once; otherwise it polls, which is also how it
//! finds retries falling due and jobs other replicas accepted or left.
//!
//! Shutdown: when Pingora's shutdown begins (after `drain_delay`), no new
//! job is leased; deliveries in flight finish within `shutdown_grace` (they
//! count as in flight for the lifecycle), and whatever is left waits in the
//! store for the next start.

pub mod lanes;
pub mod outcome;
pub mod request;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use tokio::sync::{Notify, Semaphore};

use crate::config::webhooks::{default_delivery, WebhookDelivery};
use crate::config::Config;
use crate::event::Priority;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::net::client::SmallClient;
use crate::resilience::cooldown::parse_retry_after;
use crate::resilience::retry::unit_random;
use crate::signing::standard::Signer;
use crate::store::{Attempt, Job, LeaseRequest, Store, StoreError};
use crate::time::unix_time;
use crate::upstreams::Upstreams;
use lanes::{Lanes, TargetSlot, TargetSlots};
use outcome::{decide, Answer, Decision};

/// How often the queue is looked at when nothing woke the service.
const POLL: Duration = Duration::from_millis(100);
/// The pause after the store failed to answer a lease.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// How often the queue gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// Jobs leased in one store call at most.
const LEASE_BATCH: usize = 64;
/// A lease outlives the longest delivery timeout by this much: time for
/// the store to record the outcome. A replica that dies holding a lease
/// delays that job by the timeout plus this.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    unix_time().as_millis() as u64
}

/// What a config says about delivery; swapped whole on reload.
struct Settings {
    policies: HashMap<String, WebhookDelivery>,
    signer: Option<Signer>,
    caps: HashMap<String, u32>,
    visibility: Duration,
    webhooks: Vec<String>,
}

impl Settings {
    fn new(config: &Config) -> Result<Self, String> {
        let delivery = config.delivery.clone().unwrap_or_default();
        let signer = match &delivery.signing_secret {
            None => None,
            Some(secret) => Some(Signer::new(
                crate::config::webhooks::secret_key_bytes(
                    crate::config::webhooks::VerifyKind::Standard,
                    secret.expose(),
                )
                .map_err(|e| format!("delivery.signing_secret: {e}"))?,
            )),
        };
        let policies: HashMap<String, WebhookDelivery> = config
            .webhooks
            .iter()
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
            webhooks: config.webhooks.iter().map(|w| w.name.clone()).collect(),
        })
    }
}

/// Builds the delivery settings of `config` (the signing secret above all)
/// without starting anything.
pub fn check_settings(config: &Config) -> Result<(), String> {
    Settings::new(config).map(drop)
}

/// What every delivery task shares.
pub struct Deliverer {
    store: Arc<dyn Store>,
    upstreams: Arc<Upstreams>,
    settings: ArcSwap<Settings>,
    client: SmallClient,
    metrics: Arc<Metrics>,
}

pub struct DeliveryService {
    deliverer: Arc<Deliverer>,
    lanes: Lanes,
    slots: Arc<TargetSlots>,
    workers: Arc<Semaphore>,
    worker_count: u32,
    wake: Arc<Notify>,
    lifecycle: Arc<Lifecycle>,
}

impl DeliveryService {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        upstreams: Arc<Upstreams>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        wake: Arc<Notify>,
    ) -> Result<Self, String> {
        let workers = config.delivery.clone().unwrap_or_default().workers;
        Ok(Self {
            deliverer: Arc::new(Deliverer {
                store,
                upstreams,
                settings: ArcSwap::from_pointee(Settings::new(config)?),
                client: SmallClient::default(),
                metrics,
            }),
            lanes: Lanes::default(),
            slots: Arc::default(),
            workers: Arc::new(Semaphore::new(workers as usize)),
            worker_count: workers,
            wake,
            lifecycle,
        })
    }

    /// What a config reload swaps in delivery.
    pub fn reload_handle(&self) -> DeliveryReload {
        DeliveryReload {
            deliverer: Arc::clone(&self.deliverer),
            worker_count: self.worker_count,
        }
    }

    /// Leases up to `max` jobs: from the lane whose turn it is first, then
    /// from the others in precedence order, within each target's room.
    async fn lease_batch(&self, max: usize) -> Result<Vec<Job>, StoreError> {
        let settings = self.deliverer.settings.load_full();
        let mut request = LeaseRequest {
            priority: Priority::High, // each lane's in turn below
            now_ms: now_ms(),
            visibility: settings.visibility,
            room: self.slots.room(&settings.caps),
            max,
        };
        let mut jobs: Vec<Job> = Vec::new();
        for priority in self.lanes.order() {
            request.priority = priority;
            request.max = max - jobs.len();
            let leased = self.deliverer.store.lease(&request).await?;
            // What this lane took is no longer room for the next.
            for job in &leased {
                if let Some((_, left)) = request.room.iter_mut().find(|(t, _)| *t == job.target) {
                    *left = left.saturating_sub(1);
                }
            }
            jobs.extend(leased);
            if jobs.len() == max {
                break;
            }
        }
        Ok(jobs)
    }

    async fn run(&self, mut shutdown: ShutdownWatch) {
        // The process exits once nothing is in flight: delivery counts as
        // in flight until its store is closed cleanly.
        let _running = self.lifecycle.enter();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut permits = tokio::select! {
                permit = Arc::clone(&self.workers).acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = shutdown.changed() => break,
            };
            // Every free worker's job comes in the same store call.
            let extra = self.workers.available_permits().min(LEASE_BATCH - 1) as u32;
            if let Ok(more) = Arc::clone(&self.workers).try_acquire_many_owned(extra) {
                permits.merge(more);
            }
            let pause = match self.lease_batch(permits.num_permits()).await {
                Ok(jobs) if !jobs.is_empty() => {
                    for job in jobs {
                        self.start_delivery(job, permits.split(1).expect("one permit per job"));
                    }
                    continue;
                }
                Ok(_) => POLL,
                Err(error) => {
                    tracing::warn!(%error, "cannot lease delivery jobs; trying again");
                    STORE_RETRY
                }
            };
            drop(permits);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => break,
            }
        }
        tracing::info!("delivery stopped leasing; deliveries in flight finish");
        // Every permit back means no delivery is running.
        let _ = self.workers.acquire_many(self.worker_count).await;
        match self.deliverer.store.flush().await {
            Ok(()) => tracing::info!("deliveries finished; the store is flushed"),
            Err(error) => tracing::warn!(%error, "cannot flush the store at shutdown"),
        }
    }

    /// Runs one job's delivery as its own task, holding a worker permit.
    /// The target's slot and the permit come back however the task ends;
    /// an attempt that panics dead-letters its job (`internal_error`)
    /// instead of leaving it to be leased, and to panic, again forever.
    fn start_delivery(&self, job: Job, permit: tokio::sync::OwnedSemaphorePermit) {
        let slot = TargetSlot::take(Arc::clone(&self.slots), &job.target);
        let (deliverer, wake) = (Arc::clone(&self.deliverer), Arc::clone(&self.wake));
        let in_flight = self.lifecycle.enter();
        tokio::spawn(async move {
            let attempt = tokio::spawn({
                let (deliverer, job) = (Arc::clone(&deliverer), job.clone());
                async move { deliverer.deliver(job).await }
            });
            if let Err(failure) = attempt.await {
                tracing::error!(
                    job = job.id, webhook = %job.webhook, target = %job.target, error = %failure,
                    "a delivery attempt failed inside the sidecar; the job becomes a dead letter"
                );
                let attempt = Attempt {
                    at_ms: now_ms(),
                    duration_ms: 0,
                    backend: None,
                    status: None,
                    error: Some("the sidecar failed while delivering (internal error)".into()),
                };
                deliverer
                    .settle(
                        &job,
                        Some(attempt),
                        Decision::DeadLetter {
                            reason: "internal_error",
                        },
                    )
                    .await;
            }
            drop((slot, permit, in_flight));
            // A target below its cap again may have jobs waiting.
            wake.notify_one();
        });
    }

    /// Keeps the queue gauges current.
    async fn refresh_gauges(&self) {
        let store = &self.deliverer.store;
        let metrics = &self.deliverer.metrics;
        if let Ok(depth) = store.queue_depth().await {
            for priority in Priority::ALL {
                metrics
                    .queue_depth
                    .with_label_values(&[priority.as_str()])
                    .set(depth.of(priority) as i64);
            }
        }
        if let Ok(oldest) = store.oldest_pending_ms().await {
            let age = oldest.map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
            metrics.event_age_seconds.set(age);
        }
        if let Ok(counts) = store.dead_letter_counts().await {
            for webhook in &self.deliverer.settings.load().webhooks {
                let count = counts
                    .iter()
                    .find(|(w, _)| w == webhook)
                    .map_or(0, |(_, c)| *c);
                metrics
                    .dead_letters
                    .with_label_values(&[webhook.as_str()])
                    .set(count as i64);
            }
        }
        for group in self.deliverer.upstreams.all() {
            group.refresh_gauges();
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for DeliveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let gauges = async {
            loop {
                self.refresh_gauges().await;
                tokio::time::sleep(GAUGES_EVERY).await;
            }
        };
        tokio::select! {
            _ = self.run(shutdown) => {}
            _ = gauges => {}
        }
    }
}

/// The delivery side of a config reload.
pub struct DeliveryReload {
    deliverer: Arc<Deliverer>,
    worker_count: u32,
}

impl DeliveryReload {
    /// The delivery settings of a new config (policies, signing secret,
    /// caps); the returned step swaps them in for jobs leased from then on.
    /// `delivery.workers` takes a restart.
    pub fn prepare(&self, config: &Config) -> Result<impl FnOnce() + Send + 'static, String> {
        let next = Settings::new(config)?;
        let workers = config.delivery.clone().unwrap_or_default().workers;
        if workers != self.worker_count {
            tracing::warn!(
                running = self.worker_count,
                configured = workers,
                "delivery.workers cannot change while running; it takes effect at the next start"
            );
        }
        let deliverer = Arc::clone(&self.deliverer);
        Ok(move || deliverer.settings.store(Arc::new(next)))
    }
}

impl Deliverer {
    /// One attempt for one job, and what follows from its answer.
    async fn deliver(&self, job: Job) {
        let settings = self.settings.load_full();
        let policy = settings
            .policies
            .get(&job.webhook)
            .cloned()
            .unwrap_or_else(|| default_delivery(&job.webhook));
        let Some(group) = self.upstreams.get(&job.target) else {
            self.settle(
                &job,
                None,
                Decision::DeadLetter {
                    reason: "unknown_target",
                },
            )
            .await;
            return;
        };
        let event = match self.store.event(job.event).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                // Never acked as delivered and never sent empty: an operator
                // must see that the store lost what it had acknowledged.
                tracing::error!(
                    job = job.id, event = job.event, webhook = %job.webhook, event_id = %job.event_id,
                    "a job's event or body is missing from the store; the job becomes a dead letter"
                );
                let attempt = Attempt {
                    at_ms: now_ms(),
                    duration_ms: 0,
                    backend: None,
                    status: None,
                    error: Some("the event or its body is missing from the store".into()),
                };
                self.settle(
                    &job,
                    Some(attempt),
                    Decision::DeadLetter {
                        reason: "event_missing",
                    },
                )
                .await;
                return;
            }
            Err(StoreError::Corrupt(reason)) => {
                tracing::error!(job = job.id, event = job.event, %reason, "a job's event cannot be read; the job becomes a dead letter (corrupt)");
                let attempt = Attempt {
                    at_ms: now_ms(),
                    duration_ms: 0,
                    backend: None,
                    status: None,
                    error: Some(format!("the event's record could not be read ({reason})")),
                };
                let corrupt = Decision::DeadLetter { reason: "corrupt" };
                self.settle(&job, Some(attempt), corrupt).await;
                return;
            }
            Err(error) => {
                tracing::warn!(job = job.id, %error, "cannot read an event to deliver; its lease will expire and it is tried again");
                return;
            }
        };
        let (stored, body) = event;
        let started = Instant::now();
        let at_ms = now_ms();
        let attempt_number = job.attempts + 1;
        let chosen = group.choose();
        let answer = match &chosen {
            None => Answer::NoBackend,
            Some(chosen) => {
                let request = request::build(
                    &request::Delivery {
                        path: &policy.path,
                        backend: &chosen.addr,
                        event: &stored,
                        attempt: attempt_number,
                        now_secs: at_ms / 1000,
                    },
                    settings.signer.as_ref(),
                    &body,
                );
                match request {
                    Err(error) => Answer::Internal(format!(
                        "the delivery request could not be built: {error}"
                    )),
                    Ok(request) => {
                        let mut peer = HttpPeer::new(chosen.addr.as_str(), false, String::new());
                        peer.options.connection_timeout =
                            Some(policy.timeout.min(Duration::from_secs(5)));
                        match self
                            .client
                            .exchange(&peer, request, Bytes::from(body), policy.timeout)
                            .await
                        {
                            Ok(response) => Answer::Status {
                                status: response.status,
                                retry_after: response
                                    .headers
                                    .get(http::header::RETRY_AFTER)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| {
                                        parse_retry_after(v, std::time::SystemTime::now())
                                    }),
                            },
                            Err(error) => Answer::Failed(error),
                        }
                    }
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
    }

    /// Records the decision in the store and the metrics.
    async fn settle(&self, job: &Job, attempt: Option<Attempt>, decision: Decision) {
        let (outcome, result) = match (decision, attempt) {
            (Decision::Delivered, _) => ("delivered", self.store.ack(job).await),
            (Decision::Retry { due_ms }, Some(attempt)) => {
                ("retried", self.store.retry_at(job, attempt, due_ms).await)
            }
            // A retry always follows an attempt; without one there is
            // nothing to record, and the lease runs out by itself.
            (Decision::Retry { .. }, None) => return,
            (Decision::DeadLetter { reason }, attempt) => (
                "dead_lettered",
                self.store.dead_letter(job, attempt, reason, now_ms()).await,
            ),
        };
        match result {
            Ok(()) => {
                self.metrics
                    .deliveries_total
                    .with_label_values(&[job.webhook.as_str(), job.target.as_str(), outcome])
                    .inc();
                if let Decision::DeadLetter { reason } = decision {
                    self.metrics
                        .dead_lettered_total
                        .with_label_values(&[job.webhook.as_str(), reason])
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
