//! The embedded store as a [`Store`]: accepts, leases, acks, retries and
//! dead letters go through group commit (one transaction, and one fsync
//! where one is needed, for every write waiting at that moment); reads and
//! the operator's rare writes run the redb engine on tokio's blocking pool,
//! so a commit never stalls a proxy thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod engine;
pub mod group_commit;
pub mod leases;
pub mod room;

use crate::store::history::{
    EventDetail, EventFilter, EventPage, HistoryLimits, HistoryUsage, Redelivered,
};
use crate::store::records::{
    dedup_key, Acceptance, Attempt, DeadLetter, DeadLetterFilter, DeadLetterPage, Job,
    LeaseRequest, OwnedEvent, QueueDepth, StoredEvent,
};
use crate::store::space::{SpaceGate, SpaceStatus};
use crate::store::{NextDue, Store, StoreError, StoreReport};
use engine::{LocalStore, Written};
use group_commit::{GroupCommitter, OwnedWrite};
use room::{RoomMeter, RESERVE_BYTES};

pub struct EmbeddedStore {
    engine: Arc<LocalStore>,
    committer: GroupCommitter,
    gate: Arc<SpaceGate>,
    max_size: Option<u64>,
    /// Gap repair's leases: the file is this process's alone, so they only
    /// keep two runs of one webhook's recovery in this process apart (the
    /// schedule's and one an operator started).
    recover_leases:
        std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    /// The redeliveries gap repair asked a provider for (dedup key -> until
    /// when): in memory, as the file is this process's alone; a restart
    /// forgets them, so one arriving after it is not marked recovered
    /// (it is still accepted once).
    asked: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// The most redeliveries noted at once: a run asks for one per failed
/// delivery, and GitHub keeps three days of them.
const MAX_ASKED: usize = 100_000;

impl EmbeddedStore {
    /// Opens `dir/events.redb`; dedup keys older than `dedup_horizon` (the
    /// longest `dedup_window`) are forgotten in the background. New events
    /// are refused while the database holds `max_size` (or what its volume
    /// has room for) less the reserve kept for draining it.
    pub fn open(
        dir: &Path,
        dedup_horizon: Duration,
        max_size: Option<u64>,
    ) -> Result<Self, StoreError> {
        let history = Some(HistoryLimits::default());
        Self::open_with_cache(dir, dedup_horizon, max_size, engine::DEFAULT_CACHE, history)
    }

    /// [`open`](Self::open) with redb's page cache at `cache` bytes (see
    /// [`LocalStore::open_with_cache`]) and the event log kept within
    /// `history` (None: an event goes with its last job).
    pub fn open_with_cache(
        dir: &Path,
        dedup_horizon: Duration,
        max_size: Option<u64>,
        cache: usize,
        history: Option<HistoryLimits>,
    ) -> Result<Self, StoreError> {
        let engine = Arc::new(LocalStore::open_with_cache(dir, cache)?.with_history(history));
        let file = engine
            .path()
            .expect("a store opened from a file has its path");
        let meter = RoomMeter::new(dir, file, max_size);
        Ok(Self::start(engine, dedup_horizon, Some(meter), max_size))
    }

    /// The same store held in memory, for tests of the code above it:
    /// nothing bounds it.
    pub fn in_memory(dedup_horizon: Duration) -> Result<Self, StoreError> {
        let engine = Arc::new(LocalStore::in_memory()?);
        Ok(Self::start(engine, dedup_horizon, None, None))
    }

    fn start(
        engine: Arc<LocalStore>,
        dedup_horizon: Duration,
        meter: Option<RoomMeter>,
        max_size: Option<u64>,
    ) -> Self {
        let gate = Arc::new(SpaceGate::new("embedded"));
        let committer =
            GroupCommitter::start(Arc::clone(&engine), dedup_horizon, meter, Arc::clone(&gate));
        Self {
            engine,
            committer,
            gate,
            max_size,
            recover_leases: Default::default(),
            asked: Default::default(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&LocalStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || call(&engine))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn accept(&self, event: OwnedEvent) -> Result<Acceptance, StoreError> {
        // Refused at once while full; the writer decides the rest.
        if self.gate.status().paused {
            return Err(StoreError::Full);
        }
        self.committer.accept(event).await
    }

    async fn lease(&self, request: &LeaseRequest) -> Result<Vec<Job>, StoreError> {
        match self
            .committer
            .write(OwnedWrite::Lease(request.clone()))
            .await?
        {
            Written::Leased(jobs) => Ok(jobs),
            other => unreachable!("a lease answered {other:?}"),
        }
    }

    async fn ack(&self, job: &Job, attempt: Option<Attempt>) -> Result<(), StoreError> {
        self.committer
            .write(OwnedWrite::Ack(job.clone(), attempt))
            .await
            .map(drop)
    }

    async fn retry_at(&self, job: &Job, attempt: Attempt, due_ms: u64) -> Result<(), StoreError> {
        self.committer
            .write(OwnedWrite::Retry(job.clone(), attempt, due_ms))
            .await
            .map(drop)
    }

    async fn dead_letter(
        &self,
        job: &Job,
        attempt: Option<Attempt>,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let dead_letter = OwnedWrite::DeadLetter {
            held: job.clone(),
            attempt,
            reason: reason.to_string(),
            now_ms,
        };
        self.committer.write(dead_letter).await.map(drop)
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        let (filter, cursor) = (filter.clone(), cursor.map(str::to_string));
        self.blocking(move |engine| engine.dead_letters(&filter, cursor.as_deref(), limit))
            .await
    }

    async fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.blocking(move |engine| engine.dead_letter_by_id(id))
            .await
    }

    async fn replay(&self, id: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.blocking(move |engine| engine.replay(id, now_ms)).await
    }

    async fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        self.blocking(move |engine| engine.delete_dead_letter(id))
            .await
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.blocking(LocalStore::dead_letter_counts).await
    }

    async fn recover_state(&self, webhook: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let webhook = webhook.to_string();
        self.blocking(move |engine| engine.recover_state(&webhook))
            .await
    }

    async fn save_recover_state(&self, webhook: &str, state: &[u8]) -> Result<(), StoreError> {
        let (webhook, state) = (webhook.to_string(), state.to_vec());
        self.blocking(move |engine| engine.save_recover_state(&webhook, &state))
            .await
    }

    async fn lease_recover(
        &self,
        webhook: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut leases = self
            .recover_leases
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match leases.get(webhook) {
            Some((other, until)) if other != holder && *until > now => Ok(false),
            _ => {
                leases.insert(webhook.to_string(), (holder.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn seen(&self, webhook: &str, id: &str) -> Result<bool, StoreError> {
        let (webhook, id) = (webhook.to_string(), id.to_string());
        self.blocking(move |engine| engine.seen(&webhook, &id))
            .await
    }

    async fn note_redeliveries(
        &self,
        webhook: &str,
        ids: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = std::time::Instant::now();
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.retain(|_, until| *until > now);
        for id in ids {
            if asked.len() >= MAX_ASKED {
                tracing::warn!(
                    webhook,
                    "too many redeliveries asked at once; later ones are not marked recovered"
                );
                break;
            }
            asked.insert(dedup_key(webhook, id), now + ttl);
        }
        Ok(())
    }

    async fn redelivery_asked(&self, webhook: &str, id: &str) -> Result<bool, StoreError> {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        Ok(asked
            .get(&dedup_key(webhook, id))
            .is_some_and(|until| *until > std::time::Instant::now()))
    }

    async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        self.blocking(LocalStore::queue_depth).await
    }

    async fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        self.blocking(LocalStore::oldest_pending_ms).await
    }

    /// Only this process adds jobs to its own file: the next due time is
    /// known exactly.
    async fn next_due(&self) -> Result<NextDue, StoreError> {
        Ok(match self.blocking(LocalStore::next_due_ms).await? {
            Some(at_ms) => NextDue::At(at_ms),
            None => NextDue::Nothing,
        })
    }

    async fn event(&self, sequence: u64) -> Result<Option<(StoredEvent, Vec<u8>)>, StoreError> {
        self.blocking(move |engine| engine.event(sequence)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(LocalStore::flush).await
    }

    async fn events(
        &self,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let (filter, cursor) = (filter.clone(), cursor.map(str::to_string));
        self.blocking(move |engine| engine.events(&filter, cursor.as_deref(), limit))
            .await
    }

    async fn event_detail(
        &self,
        source: &str,
        id: &str,
    ) -> Result<Option<EventDetail>, StoreError> {
        let (source, id) = (source.to_string(), id.to_string());
        self.blocking(move |engine| engine.event_detail(&source, &id))
            .await
    }

    async fn redeliver(
        &self,
        sequence: u64,
        target: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let target = target.map(str::to_string);
        self.blocking(move |engine| engine.redeliver(sequence, target.as_deref(), now_ms))
            .await
    }

    async fn redeliver_matching(
        &self,
        filter: &EventFilter,
        max: u64,
        dry_run: bool,
        now_ms: u64,
    ) -> Result<Redelivered, StoreError> {
        let filter = filter.clone();
        self.blocking(move |engine| engine.redeliver_matching(&filter, max, dry_run, now_ms))
            .await
    }

    async fn history_usage(&self) -> Result<HistoryUsage, StoreError> {
        self.blocking(LocalStore::history_usage).await
    }

    /// Fails while the writer cannot commit (it is recovering), or when a
    /// read fails.
    async fn check(&self) -> Result<(), StoreError> {
        if let Some((_, reason)) = self.committer.health().failure() {
            return Err(StoreError::Unavailable(reason));
        }
        self.queue_depth().await.map(drop)
    }

    fn space(&self) -> SpaceStatus {
        self.gate.status()
    }

    async fn inspect(&self) -> Result<StoreReport, StoreError> {
        let path = self.engine.path();
        let size = path
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let writer = match self.committer.health().failure() {
            None => "committing".to_string(),
            Some((since, reason)) => {
                format!("failing for {} s: {reason}", since.elapsed().as_secs())
            }
        };
        Ok(StoreReport {
            kind: "embedded",
            settings: vec![
                (
                    "path".into(),
                    path.map_or("(in memory)".into(), |p| p.display().to_string()),
                ),
                ("file size".into(), format!("{size} bytes")),
                (
                    "max size".into(),
                    self.max_size
                        .map_or_else(|| "none (the volume)".into(), |m| format!("{m} bytes")),
                ),
                (
                    "reserve".into(),
                    format!("{RESERVE_BYTES} bytes kept for draining a full store"),
                ),
                (
                    "durability".into(),
                    "accepts, dead letters, replays and deletions fsynced before they are answered; leases, acks and retries within 1 s".into(),
                ),
                ("writer".into(), writer),
            ],
            warnings: Vec::new(),
            refusal: None,
        })
    }
}
