//! The scheduler: leases jobs as workers come free, lane by lane and
//! within each target's room, and runs each job's attempt as its own task.
//! The ingress wakes it when it accepts an event, so an idle queue
//! delivers at once; otherwise it polls, which is also how it finds
//! retries falling due and jobs other replicas accepted or left.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::access::DynAccess;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::attempt::{no_attempt, now_ms, Deliverer, Settlement};
use super::gauges;
use super::lanes::{Lanes, TargetSlot, TargetSlots};
use super::outcome::Decision;
use super::settings::Plan;
use crate::event::Priority;
use crate::lifecycle::Lifecycle;
use crate::metrics::DeadLetterReason;
use crate::store::{Job, LeaseRequest, NextDue, StoreError};

/// How often the queue is looked at when nothing woke the service.
const POLL: Duration = Duration::from_millis(100);
/// The longest idle wait when the store knows its next due job.
const IDLE_MAX: Duration = Duration::from_secs(1);

/// Until `at_ms`, within `POLL` (a due job a lease did not take: its
/// target is at its cap) and `IDLE_MAX`.
fn idle_wait_until(at_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(now_ms)).clamp(POLL, IDLE_MAX)
}
/// The pause after the store failed to answer a lease.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// How often the queue gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// Jobs leased in one store call at most.
const LEASE_BATCH: usize = 64;

/// The running config's delivery plan (the runtime snapshot's).
pub type PlanSource = Box<dyn DynAccess<Arc<Plan>> + Send + Sync>;

pub struct DeliveryService {
    deliverer: Arc<Deliverer>,
    plan: PlanSource,
    lanes: Lanes,
    slots: Arc<TargetSlots>,
    workers: Arc<Semaphore>,
    /// Outcomes being recorded after their worker came free.
    recording: Arc<Semaphore>,
    worker_count: u32,
    wake: Arc<Notify>,
    lifecycle: Arc<Lifecycle>,
}

impl DeliveryService {
    /// `workers` deliveries at most at once; `wake` is told of every
    /// accepted event. `delivery.workers` takes a restart to change.
    pub fn new(
        deliverer: Deliverer,
        plan: PlanSource,
        workers: u32,
        lifecycle: Arc<Lifecycle>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            deliverer: Arc::new(deliverer),
            plan,
            lanes: Lanes::default(),
            slots: Arc::default(),
            workers: Arc::new(Semaphore::new(workers as usize)),
            recording: Arc::new(Semaphore::new(workers as usize)),
            worker_count: workers,
            wake,
            lifecycle,
        }
    }

    fn plan(&self) -> Arc<Plan> {
        Arc::clone(&self.plan.load())
    }

    /// Leases up to `max` jobs: from the lane whose turn it is first, then
    /// from the others in precedence order, within each target's room.
    async fn lease_batch(&self, max: usize) -> Result<Vec<Job>, StoreError> {
        let plan = self.plan();
        let mut request = LeaseRequest {
            priority: Priority::High, // each lane's in turn below
            now_ms: now_ms(),
            visibility: plan.settings.visibility,
            room: self.slots.room(&plan.settings.caps),
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

    /// How long to wait for work after a lease found none, unless woken by
    /// an accepted event or a finished delivery: until the next job falls
    /// due where the store knows it (at most `IDLE_MAX`, for what else may
    /// add jobs, such as a replay), otherwise `POLL`. An idle sidecar with
    /// the embedded store then leases once a second instead of ten times.
    async fn idle_wait(&self) -> Duration {
        match self.deliverer.store.next_due().await {
            Ok(NextDue::Nothing) => IDLE_MAX,
            Ok(NextDue::At(at_ms)) => idle_wait_until(at_ms, now_ms()),
            Ok(NextDue::Unknown) | Err(_) => POLL,
        }
    }

    async fn run(&self, mut shutdown: ShutdownWatch) {
        // The process exits once nothing is in flight: delivery holds it
        // open until its store is closed cleanly (not a request: an idle
        // sidecar has nothing in flight).
        let _running = self.lifecycle.hold_open();
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
            // Outcomes the store could not record are tried again by their
            // tasks; leasing more would only deliver more it cannot record.
            let unrecorded = self.deliverer.unrecorded.waiting() > 0;
            let leased = if unrecorded {
                Ok(Vec::new())
            } else {
                self.lease_batch(permits.num_permits()).await
            };
            let pause = match leased {
                Ok(_) if unrecorded => STORE_RETRY,
                Ok(jobs) if !jobs.is_empty() => {
                    for job in jobs {
                        self.start_delivery(job, permits.split(1).expect("one permit per job"));
                    }
                    continue;
                }
                Ok(_) => self.idle_wait().await,
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
        // Outcomes still waiting for the store are left to be leased again.
        self.deliverer.unrecorded.give_up();
        // Every permit back means no delivery is running or recording.
        let _ = self.workers.acquire_many(self.worker_count).await;
        let _ = self.recording.acquire_many(self.worker_count).await;
        match self.deliverer.store.flush().await {
            Ok(()) => tracing::info!("deliveries finished; the store is flushed"),
            Err(error) => tracing::warn!(%error, "cannot flush the store at shutdown"),
        }
    }

    /// Runs one job's delivery as its own task, holding a worker permit.
    /// The target's slot and the worker come back once the attempt has its
    /// answer, while its outcome is recorded (at most `workers` outcomes
    /// wait at once): a worker waiting for the store's commit would cap
    /// delivery at workers per commit. An attempt that panics dead-letters
    /// its job (`internal_error`) instead of leaving it to be leased, and
    /// to panic, again forever.
    fn start_delivery(&self, job: Job, permit: OwnedSemaphorePermit) {
        let slot = TargetSlot::take(Arc::clone(&self.slots), &job.target);
        let (deliverer, wake) = (Arc::clone(&self.deliverer), Arc::clone(&self.wake));
        let recording = Arc::clone(&self.recording);
        let plan = self.plan();
        let in_flight = self.lifecycle.enter();
        tokio::spawn(async move {
            let attempt = tokio::spawn({
                let (deliverer, job) = (Arc::clone(&deliverer), job.clone());
                async move { deliverer.attempt(&job, &plan).await }
            });
            let Settlement { attempt, decision } = match attempt.await {
                Ok(settlement) => settlement,
                Err(failure) => {
                    tracing::error!(
                        job = job.id, webhook = %job.webhook, target = %job.target, error = %failure,
                        "a delivery attempt failed inside the sidecar; the job becomes a dead letter"
                    );
                    let attempt =
                        no_attempt("the sidecar failed while delivering (internal error)".into());
                    Settlement {
                        attempt: Some(attempt),
                        decision: Decision::DeadLetter(DeadLetterReason::InternalError),
                    }
                }
            };
            let recorder = recording
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            drop((slot, permit));
            // A target below its cap again may have jobs waiting.
            wake.notify_one();
            deliverer.settle(&job, attempt, decision).await;
            drop((recorder, in_flight));
        });
    }
}

#[async_trait::async_trait]
impl BackgroundService for DeliveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let gauges = async {
            loop {
                gauges::refresh(&self.deliverer, &self.plan()).await;
                tokio::time::sleep(GAUGES_EVERY).await;
            }
        };
        tokio::select! {
            _ = self.run(shutdown) => {}
            _ = gauges => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_wait_lasts_until_the_next_due_job_within_bounds() {
        assert_eq!(idle_wait_until(10_400, 10_000), Duration::from_millis(400));
        assert_eq!(idle_wait_until(10_000, 10_000), POLL, "due now: at its cap");
        assert_eq!(idle_wait_until(5_000, 10_000), POLL, "overdue");
        assert_eq!(idle_wait_until(u64::MAX, 10_000), IDLE_MAX);
    }
}
