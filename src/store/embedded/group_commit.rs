//! Group commit for the embedded store: one writer thread takes every write
//! waiting at that moment (accepted events, leases, acks, retries, dead
//! letters) and applies them in one transaction, so concurrent webhooks
//! share one fsync and concurrent deliveries share one commit instead of
//! queueing for one each. Each sender gets its own answer once the batch is
//! committed (and fsynced, if it held an accept or a dead letter).
//!
//! The writer is supervised by itself: a batch that fails to commit (an I/O
//! error such as a full disk) or panics inside redb answers every sender
//! with an error (webhooks get 503, never 202), the database is closed and
//! opened again, and a probe commit (fsynced) tells when writes work again.
//! Meanwhile writes fail at once with the reason, which `/readyz` shows.
//! When space comes back, acceptance resumes without a restart.
//!
//! Between batches the writer measures the store's room (`room`) and tells
//! the space gate; an accept the gate refuses is answered `Full` without
//! touching the database, so the room left is the drain's.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::engine::{LocalStore, Write, Written};
use super::room::{self, RoomMeter};
use crate::store::records::{Acceptance, Attempt, Job, LeaseRequest, OwnedEvent};
use crate::store::space::SpaceGate;
use crate::store::StoreError;
use crate::time::unix_time;

/// The most writes applied in one transaction.
const MAX_BATCH: usize = 256;
/// Between attempts to bring a failed writer back: the first soon, then
/// at most every second.
const RECOVERY_FIRST: Duration = Duration::from_millis(50);
const RECOVERY_MAX: Duration = Duration::from_secs(1);
/// A batch that takes this long to apply and commit is logged (debug).
const SLOW_BATCH: Duration = Duration::from_millis(20);
/// The soonest a measurement follows the last one when the gate asks for
/// one (an estimate stopped accepting).
const REMEASURE_MIN: Duration = Duration::from_millis(50);
/// How long an idle writer sleeps when nothing is measured.
const IDLE: Duration = Duration::from_secs(3600);

/// Whether the writer can commit; shared with the store's health check.
#[derive(Default)]
pub struct WriterHealth {
    /// Since when and why commits fail; None while they work.
    failing: Mutex<Option<(Instant, String)>>,
}

impl WriterHealth {
    pub fn failure(&self) -> Option<(Instant, String)> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fail(&self, reason: String) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let since = failing
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        *failing = Some((since, reason));
    }

    fn recover(&self) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
/// How often expired dedup keys are removed.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How often the event log's retention runs.
pub const PRUNE_HISTORY_EVERY: Duration = Duration::from_secs(5);
/// The most batches one retention run drops, so that a log far over its
/// limits (a lowered retention) is brought down over a few runs.
const PRUNE_HISTORY_BATCHES: usize = 20;

/// Drops what the event log no longer keeps, a batch per transaction.
fn prune_history(store: &LocalStore, now_ms: u64) {
    let mut dropped = 0;
    for _ in 0..PRUNE_HISTORY_BATCHES {
        match store.prune_history(now_ms) {
            Ok(n) => {
                dropped += n;
                if n < super::engine::PRUNE_BATCH as u64 {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not drop old events from the event log");
                break;
            }
        }
    }
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "dropped finished events past the event log's retention or size"
        );
    }
}

/// A write handed to the writer thread, owning what it needs.
pub enum OwnedWrite {
    Accept(OwnedEvent),
    Lease(LeaseRequest),
    Ack(Job, Option<Attempt>),
    Retry(Job, Attempt, u64),
    DeadLetter {
        held: Job,
        attempt: Option<Attempt>,
        reason: String,
        now_ms: u64,
    },
}

impl OwnedWrite {
    fn borrowed(&self) -> Write<'_> {
        match self {
            Self::Accept(event) => {
                Write::Accept(event.borrowed(), event.now_ms, event.dedup_window)
            }
            Self::Lease(request) => Write::Lease(request),
            Self::Ack(job, attempt) => Write::Ack(job, attempt.clone()),
            Self::Retry(job, attempt, due_ms) => Write::Retry(job, attempt.clone(), *due_ms),
            Self::DeadLetter {
                held,
                attempt,
                reason,
                now_ms,
            } => Write::DeadLetter {
                held,
                attempt: attempt.clone(),
                reason,
                now_ms: *now_ms,
            },
        }
    }
}

struct Request {
    write: OwnedWrite,
    answer: oneshot::Sender<Result<Written, StoreError>>,
}

pub struct GroupCommitter {
    /// None once dropped: the writer sees the channel close and ends.
    requests: Option<mpsc::Sender<Request>>,
    health: Arc<WriterHealth>,
    /// Closed on drop, which wakes the cleaner to end.
    stop_cleaner: Option<mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl GroupCommitter {
    /// Starts the writer, and a cleaner that forgets dedup keys older than
    /// `dedup_horizon` (the longest `dedup_window`) every [`PRUNE_EVERY`].
    /// With a `meter` the writer measures the store's room for `gate`.
    pub fn start(
        store: Arc<LocalStore>,
        dedup_horizon: Duration,
        meter: Option<RoomMeter>,
        gate: Arc<SpaceGate>,
    ) -> Self {
        let (requests, incoming) = mpsc::channel::<Request>();
        let (stop_cleaner, stopped) = mpsc::channel::<()>();
        let writer = Arc::clone(&store);
        let health = Arc::new(WriterHealth::default());
        let writer_health = Arc::clone(&health);
        let writer = std::thread::Builder::new()
            .name("event-store".into())
            .spawn(move || {
                let mut writer = Writer {
                    store: &writer,
                    health: &writer_health,
                    meter,
                    gate: &gate,
                    measured_at: Instant::now(),
                };
                writer.run(&incoming);
            })
            .expect("spawning the event store writer");
        let cleaner = std::thread::Builder::new()
            .name("event-store-cleanup".into())
            .spawn(move || {
                let mut dedup_pruned = Instant::now();
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(PRUNE_HISTORY_EVERY)
                {
                    let now_ms = unix_time().as_millis() as u64;
                    prune_history(&store, now_ms);
                    if dedup_pruned.elapsed() < PRUNE_EVERY {
                        continue;
                    }
                    dedup_pruned = Instant::now();
                    match store.prune_dedup(now_ms, dedup_horizon) {
                        Ok(0) => {}
                        Ok(removed) => tracing::debug!(removed, "forgot expired dedup keys"),
                        Err(error) => tracing::warn!(%error, "could not prune expired dedup keys"),
                    }
                }
            })
            .expect("spawning the event store cleaner");
        Self {
            requests: Some(requests),
            health,
            stop_cleaner: Some(stop_cleaner),
            threads: vec![writer, cleaner],
        }
    }

    pub fn health(&self) -> &WriterHealth {
        &self.health
    }

    /// Applies the write with whatever else is waiting; answers once the
    /// batch is committed.
    pub async fn write(&self, write: OwnedWrite) -> Result<Written, StoreError> {
        // While commits fail, nobody waits behind the recovery.
        if let Some((_, reason)) = self.health.failure() {
            return Err(StoreError::Unavailable(reason));
        }
        let stopped = || StoreError::Unavailable("the event store writer has stopped".into());
        let (answer, answered) = oneshot::channel();
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { write, answer })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// Stores the event; answers once it is durable.
    pub async fn accept(&self, event: OwnedEvent) -> Result<Acceptance, StoreError> {
        match self.write(OwnedWrite::Accept(event)).await? {
            Written::Accepted(acceptance) => Ok(acceptance),
            other => unreachable!("an accept answered {other:?}"),
        }
    }
}

impl Drop for GroupCommitter {
    /// Ends both threads after the writer has answered what it was given,
    /// so the database is closed when the store is dropped.
    fn drop(&mut self) {
        self.requests.take();
        self.stop_cleaner.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The writer thread's state.
struct Writer<'a> {
    store: &'a LocalStore,
    health: &'a WriterHealth,
    meter: Option<RoomMeter>,
    gate: &'a SpaceGate,
    measured_at: Instant,
}

impl Writer<'_> {
    fn run(&mut self, incoming: &mpsc::Receiver<Request>) {
        self.measure();
        loop {
            let first = match incoming.recv_timeout(self.until_idle_work()) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.idle_work();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match incoming.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let batch = self.admit(batch);
            // This batch's retries and commit see how full the store is now.
            let full = self.gate.status().paused;
            self.store.set_room(full, self.gate.fullness());
            if !batch.is_empty() {
                if let Err(failure) = self.commit(batch) {
                    if let Some(meter) = &mut self.meter {
                        meter.after_failed_commit();
                    }
                    recover(self.store, self.health, incoming, failure);
                    // What failed may have been the room (a full volume):
                    // measured now, so that the gate refuses for space
                    // instead of the next accepts failing the same way.
                    self.measure();
                }
            }
            if self.measurement_due() {
                self.measure();
            }
        }
    }

    /// The meter's time has come, or the gate asks (an estimate stopped
    /// accepting) and the last measurement is at least `REMEASURE_MIN` old.
    fn measurement_due(&self) -> bool {
        let now = Instant::now();
        let asked =
            self.gate.wants_measurement() && now.duration_since(self.measured_at) >= REMEASURE_MIN;
        asked || self.meter.as_ref().is_some_and(|m| m.due(now))
    }

    /// Until the next measurement, or until commits made without fsync
    /// are due to be made durable (an idle store's last acks would stay
    /// unsynced, and the pages they freed unusable, until the next write).
    fn until_idle_work(&self) -> Duration {
        let sync = self.store.sync_due_in().unwrap_or(IDLE);
        self.until_measurement().min(sync)
    }

    fn idle_work(&mut self) {
        if self.store.sync_due_in() == Some(Duration::ZERO) {
            if let Err(error) = self.store.flush() {
                tracing::warn!(%error, "cannot make the event store's last commits durable");
            }
        }
        if self.measurement_due() {
            self.measure();
        }
    }

    fn until_measurement(&self) -> Duration {
        match &self.meter {
            Some(_) if self.gate.wants_measurement() => REMEASURE_MIN,
            Some(meter) => meter.until_due(Instant::now()),
            None => IDLE,
        }
    }

    /// Answers `Full` to every accept the space gate refuses; the rest go on.
    fn admit(&self, batch: Vec<Request>) -> Vec<Request> {
        batch
            .into_iter()
            .filter_map(|request| {
                let OwnedWrite::Accept(event) = &request.write else {
                    return Some(request);
                };
                match self.gate.admit(room::estimated_bytes(event)) {
                    Ok(()) => Some(request),
                    Err(_) => {
                        let _ = request.answer.send(Err(StoreError::Full));
                        None
                    }
                }
            })
            .collect()
    }

    /// Applies one batch and answers every sender; on a failure to commit,
    /// answers them all with it and returns it.
    fn commit(&self, batch: Vec<Request>) -> Result<(), String> {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let writes: Vec<Write<'_>> = batch.iter().map(|r| r.write.borrowed()).collect();
            self.store.apply(&writes)
        }));
        let took = started.elapsed();
        if took >= SLOW_BATCH {
            // Every accept in the batch waited this long for its answer.
            let count =
                |kind: fn(&OwnedWrite) -> bool| batch.iter().filter(|r| kind(&r.write)).count();
            tracing::debug!(
                took_ms = took.as_millis() as u64,
                accepts = count(|w| matches!(w, OwnedWrite::Accept(_))),
                leases = count(|w| matches!(w, OwnedWrite::Lease(_))),
                acks = count(|w| matches!(w, OwnedWrite::Ack(..))),
                retries = count(|w| matches!(w, OwnedWrite::Retry(..))),
                dead_letters = count(|w| matches!(w, OwnedWrite::DeadLetter { .. })),
                "a slow embedded store batch"
            );
        }
        let failure = match outcome {
            Ok(Ok(answers)) => {
                for (request, answer) in batch.into_iter().zip(answers) {
                    let _ = request.answer.send(answer);
                }
                return Ok(());
            }
            Ok(Err(error)) => format!("the event store cannot commit: {error}"),
            Err(panic) => format!(
                "the event store failed inside its database engine: {}",
                panic_message(panic.as_ref())
            ),
        };
        // Failing before anyone hears of it: a sender answered now must not
        // queue a write behind the recovery.
        self.health.fail(failure.clone());
        tracing::error!(%failure, writes = batch.len(), "an embedded store batch failed; nothing in it was acknowledged");
        for request in batch {
            let _ = request
                .answer
                .send(Err(StoreError::Unavailable(failure.clone())));
        }
        Err(failure)
    }

    /// Measures the room and tells the gate; logs when accepting stops or
    /// resumes.
    fn measure(&mut self) {
        let Some(meter) = &mut self.meter else {
            return;
        };
        self.measured_at = Instant::now();
        match meter.measure(self.store) {
            Ok(room) => {
                self.gate.measured(room);
            }
            Err(error) => tracing::warn!(%error, "cannot measure the event store's room"),
        }
        let took = self.measured_at.elapsed();
        if took >= SLOW_BATCH {
            // Accepts waited behind it.
            tracing::debug!(took_ms = took.as_millis() as u64, "a slow room measurement");
        }
    }
}

/// Closes and opens the database again until a probe commit (fsynced)
/// works; until then every write is refused with `reason`, those already
/// queued included.
fn recover(
    store: &LocalStore,
    health: &WriterHealth,
    incoming: &mpsc::Receiver<Request>,
    mut reason: String,
) {
    let mut pause = RECOVERY_FIRST;
    loop {
        health.fail(reason.clone());
        while let Ok(request) = incoming.try_recv() {
            let _ = request
                .answer
                .send(Err(StoreError::Unavailable(reason.clone())));
        }
        std::thread::sleep(pause);
        let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
            store.reopen()?;
            store.probe()
        }));
        match attempt {
            Ok(Ok(())) => {
                health.recover();
                tracing::info!("the embedded store commits again");
                return;
            }
            Ok(Err(error)) => reason = format!("the event store cannot commit: {error}"),
            Err(panic) => {
                reason = format!(
                    "the event store failed inside its database engine: {}",
                    panic_message(panic.as_ref())
                )
            }
        }
        pause = (pause * 2).min(RECOVERY_MAX);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventMeta, Priority};

    fn event(id: &str) -> OwnedEvent {
        OwnedEvent {
            webhook: "stripe".into(),
            meta: EventMeta {
                id: id.into(),
                dedup: id.into(),
                event_type: "t".into(),
                context: Vec::new(),
                priority: Priority::Normal,
                targets: vec!["notify".into()],
                trace: None,
                recovered: false,
            },
            content_type: None,
            headers: Vec::new(),
            body: bytes::Bytes::from_static(b"{}"),
            now_ms: 1,
            dedup_window: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn concurrent_events_are_stored_once_each_with_answers_for_all() {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-group-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let store = Arc::new(LocalStore::open(&dir).unwrap());
        let committer = Arc::new(GroupCommitter::start(
            Arc::clone(&store),
            Duration::from_secs(3600),
            None,
            Arc::default(),
        ));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let committer = Arc::clone(&committer);
            // Every event twice: one copy is a duplicate, whichever batch it lands in.
            tasks.push(tokio::spawn(async move {
                committer.accept(event(&format!("evt_{}", i % 100))).await
            }));
        }
        let mut accepted = 0;
        let mut duplicates = 0;
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Acceptance::Accepted(_) => accepted += 1,
                Acceptance::Duplicate => duplicates += 1,
            }
        }
        assert_eq!((accepted, duplicates), (100, 100));
        assert_eq!(store.queue_depth().unwrap().normal, 100);
    }

    #[tokio::test]
    async fn an_idle_writer_makes_its_last_unsynced_commits_durable_within_a_second() {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-group-sync-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let store = Arc::new(LocalStore::open(&dir).unwrap());
        let committer = GroupCommitter::start(
            Arc::clone(&store),
            Duration::from_secs(3600),
            None,
            Arc::default(),
        );
        committer.accept(event("evt_1")).await.unwrap();
        let request = LeaseRequest {
            priority: Priority::Normal,
            now_ms: unix_time().as_millis() as u64 + 1_000,
            visibility: Duration::from_secs(60),
            room: Vec::new(),
            max: 1,
        };
        let jobs = match committer.write(OwnedWrite::Lease(request)).await.unwrap() {
            Written::Leased(jobs) => jobs,
            other => panic!("{other:?}"),
        };
        // Right after the fsynced accept: this ack is committed without one.
        committer
            .write(OwnedWrite::Ack(jobs[0].clone(), None))
            .await
            .unwrap();
        assert!(store.sync_due_in().is_some(), "the ack is not durable yet");
        tokio::time::sleep(super::super::engine::DURABLE_EVERY + Duration::from_millis(500)).await;
        assert_eq!(store.sync_due_in(), None, "made durable while idle");
    }
}
