//! Durable and shared state. [`Store`] is everything the ingress and the
//! delivery workers ask of the event queue; `embedded` (redb, the default)
//! and `redis_events` (shared by replicas) implement it and pass one
//! conformance suite (`tests/store_conformance.rs`). `redis` is the guarded
//! connection that global rate limits and provider pauses share with the
//! queue (their primitives live in `resilience::global`).

pub mod embedded;
pub mod history;
pub mod records;
pub mod redis;
pub mod space;

pub use records::{
    Acceptance, Attempt, DeadLetter, DeadLetterFilter, DeadLetterPage, Job, LeaseRequest, NewEvent,
    OwnedEvent, QueueDepth, StoredEvent,
};

/// What a store knows of its next due job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextDue {
    /// Another process may add one at any time.
    Unknown,
    /// Nothing is queued; a new event wakes delivery when it is accepted.
    Nothing,
    /// The earliest due time (Unix ms) of a queued job.
    At(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or could not commit; nothing changed.
    #[error("{0}")]
    Unavailable(String),
    /// The job was leased again after this lease's visibility timeout: the
    /// other holder owns it now.
    #[error("the lease on job {0} has expired and the job was leased again")]
    LeaseLost(u64),
    #[error("not a dead-letter cursor: {0:?}")]
    InvalidCursor(String),
    #[error("unreadable record in the store: {0}")]
    Corrupt(String),
    /// New events are refused: what is left is the drain's (`space`).
    #[error("the store is full: new events are refused until deliveries free room")]
    Full,
}

/// The event queue. Times are Unix milliseconds passed in by the caller, so
/// tests drive them; a lease is invisible to others until `due_ms`.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Stores a verified event with one job per target (or an `unrouted`
    /// dead letter), atomically with its dedup key, unless the same
    /// (webhook, event id) was accepted within `dedup_window`. Durable when
    /// it returns.
    async fn accept(&self, event: OwnedEvent) -> Result<Acceptance, StoreError>;

    /// Leases what `request` asks for, within each target's room. A leased
    /// job stays invisible for the request's `visibility`; if it is neither
    /// acked nor rescheduled by then, it is leased again, by this process
    /// or another.
    async fn lease(&self, request: &LeaseRequest) -> Result<Vec<Job>, StoreError>;

    /// Delivered by `attempt` (None when it was not recorded): the job is
    /// gone; its event is finished once no job or dead letter refers to it,
    /// kept by the event log or removed.
    async fn ack(&self, job: &Job, attempt: Option<Attempt>) -> Result<(), StoreError>;

    /// Failed, to be tried again at `due_ms`.
    async fn retry_at(&self, job: &Job, attempt: Attempt, due_ms: u64) -> Result<(), StoreError>;

    /// Gives up: the job becomes a dead letter with `reason`, its history and
    /// the last attempt, if one was made.
    async fn dead_letter(
        &self,
        job: &Job,
        attempt: Option<Attempt>,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError>;

    /// Dead letters, newest first, `limit` at most, after `cursor` (a
    /// previous page's `next`).
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError>;

    async fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError>;

    /// Puts a dead letter back on the queue, due now, with a fresh attempt
    /// count and its history. False when there is no such dead letter.
    /// Unrouted ones have no target and are never replayed.
    async fn replay(&self, id: u64, now_ms: u64) -> Result<bool, StoreError>;

    /// Replays every routed dead letter the filter matches; how many.
    async fn replay_all(&self, filter: &DeadLetterFilter, now_ms: u64) -> Result<u64, StoreError> {
        let mut replayed = 0;
        let mut cursor = None;
        loop {
            let page = self.dead_letters(filter, cursor.as_deref(), 200).await?;
            for dead in &page.items {
                if dead.job.target != records::UNROUTED && self.replay(dead.job.id, now_ms).await? {
                    replayed += 1;
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(replayed),
            }
        }
    }

    /// Drops a dead letter (and its event once nothing refers to it).
    async fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError>;

    /// Dead letters per webhook.
    async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Jobs waiting or in flight, per priority.
    async fn queue_depth(&self) -> Result<QueueDepth, StoreError>;

    /// When the oldest event with a job still waiting was received.
    async fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError>;

    /// An event's metadata and body; None when either is missing.
    async fn event(&self, sequence: u64) -> Result<Option<(StoredEvent, Vec<u8>)>, StoreError>;

    /// Gap repair's state for `webhook` (`webhooks.<name>.recover`), as
    /// the recovery wrote it: its checkpoint survives restarts and is
    /// shared by every replica on the store. None before the first run.
    async fn recover_state(&self, _webhook: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Err(no_recover_state())
    }

    async fn save_recover_state(&self, _webhook: &str, _state: &[u8]) -> Result<(), StoreError> {
        Err(no_recover_state())
    }

    /// Takes, or renews, the right to run `webhook`'s recovery for `ttl`
    /// as `holder`: false while another holder has it. It lapses by itself
    /// if its holder dies, so that another replica takes over.
    async fn lease_recover(
        &self,
        _webhook: &str,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Err(no_recover_state())
    }

    /// Whether an event `id` of `webhook` was accepted and is still known
    /// (by its dedup key, or the event log's lookup by id): gap repair asks
    /// a provider to send again only what this does not know. A miss costs
    /// a redelivery, which the dedup store then refuses.
    async fn seen(&self, _webhook: &str, _id: &str) -> Result<bool, StoreError> {
        Err(no_recover_state())
    }

    /// Gap repair asked the provider to send these events of `webhook`
    /// again: for `ttl` their arrival is marked recovered, whichever
    /// replica it reaches.
    async fn note_redeliveries(
        &self,
        _webhook: &str,
        _ids: &[String],
        _ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        Err(no_recover_state())
    }

    /// Whether gap repair asked for event `id` of `webhook` within the
    /// `ttl` it noted it with.
    async fn redelivery_asked(&self, _webhook: &str, _id: &str) -> Result<bool, StoreError> {
        Err(no_recover_state())
    }

    /// The event log, newest first, `limit` at most, below `cursor` (a
    /// previous page's `next`).
    async fn events(
        &self,
        _filter: &history::EventFilter,
        _cursor: Option<&str>,
        _limit: usize,
    ) -> Result<history::EventPage, StoreError> {
        Err(no_event_log())
    }

    /// The newest event `id` received by webhook `source`.
    async fn event_detail(
        &self,
        _source: &str,
        _id: &str,
    ) -> Result<Option<history::EventDetail>, StoreError> {
        Err(no_event_log())
    }

    /// Queues event `sequence` again, due now, for `target` or each of its
    /// targets, even if delivered; its deliveries say `x-redelivery:
    /// true`. How many jobs were queued; None when the event is not kept.
    async fn redeliver(
        &self,
        _sequence: u64,
        _target: Option<&str>,
        _now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        Err(no_event_log())
    }

    /// Counts what the filter matches (`dry_run`, or more than `max`), or
    /// redelivers exactly that.
    async fn redeliver_matching(
        &self,
        _filter: &history::EventFilter,
        _max: u64,
        _dry_run: bool,
        _now_ms: u64,
    ) -> Result<history::Redelivered, StoreError> {
        Err(no_event_log())
    }

    /// Drops what the event log's retention no longer keeps, where the
    /// store monitor must ask (the embedded store does it by itself); how
    /// many events went.
    async fn prune_history(&self, _now_ms: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Events kept and their bytes.
    async fn history_usage(&self) -> Result<history::HistoryUsage, StoreError> {
        Ok(history::HistoryUsage::default())
    }

    /// When a lease could next find a job: delivery sleeps until then
    /// instead of polling. `Unknown` (the default) where other processes
    /// add jobs too (a shared Redis).
    async fn next_due(&self) -> Result<NextDue, StoreError> {
        Ok(NextDue::Unknown)
    }

    /// Makes every change so far durable, at shutdown: acks and retries
    /// may be committed without an fsync while running.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store can take a write now; the readiness probe asks
    /// every second.
    async fn check(&self) -> Result<(), StoreError> {
        self.queue_depth().await.map(drop)
    }

    /// How much the store holds, what it may hold, and whether new events
    /// are refused for want of room (`space`).
    fn space(&self) -> space::SpaceStatus {
        space::SpaceStatus::default()
    }

    /// Measures the store's room now, where it is measured from outside
    /// (the Redis store's `INFO memory`); the embedded store's writer
    /// measures its own. The store monitor calls it every second.
    async fn measure_space(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// What the store is and how safely it keeps events, read from its
    /// settings (at start and every minute): shown in `/admin/store`, logged
    /// when it warns, and fatal when it would lose acknowledged events.
    async fn inspect(&self) -> Result<StoreReport, StoreError>;
}

fn no_recover_state() -> StoreError {
    StoreError::Unavailable("this store does not keep gap repair's state".into())
}

fn no_event_log() -> StoreError {
    StoreError::Unavailable("this store does not keep the event log".into())
}

/// How a store keeps events, as far as the sidecar can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreReport {
    /// `embedded` or `redis`.
    pub kind: &'static str,
    /// Settings worth showing, in order (`maxmemory-policy`, `appendfsync`...).
    pub settings: Vec<(String, String)>,
    /// What may lose events without refusing any (no persistence, say).
    pub warnings: Vec<String>,
    /// A setting under which acknowledged events can vanish: webhooks are
    /// refused and the sidecar is not ready until it is fixed.
    pub refusal: Option<String>,
}
