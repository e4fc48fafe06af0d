//! The embedded store's engine: one redb file under `store.path`, used
//! from one process. An event is accepted in a single write transaction
//! that records its dedup key, its metadata and body, and one job per
//! target (or an `unrouted` dead letter); the commit is fsynced before the
//! provider may get its 2xx.
//!
//! Jobs are indexed by (priority rank, target, due time, id), so the next
//! due jobs of a lane and target are the first keys of its range. Job ids
//! grow with acceptance (a replay keeps its job's id), so the oldest job
//! waiting is the first of the jobs table: no index of ages is kept. An
//! event referred to by one job (or dead letter) has no reference count
//! written; only an event with more keeps one. Counters (queue depths,
//! dead letters per webhook, jobs per lane and target) are added up in
//! memory and written once per transaction. Each of these took a B-tree
//! insert and a removal per job from the single writer (removing the oldest
//! keys of an index rebuilds and merges its leftmost leaves in redb). Leases,
//! acks and retries commit without fsync (losing one in a crash means a
//! delivery is made again, which at-least-once allows), but never more than
//! [`DURABLE_EVERY`] after the last fsync; dead-lettering, replays and
//! deletions are fsynced because an operator relies on them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;

use crate::event::Priority;
use crate::store::records::{
    dedup_key, parse_cursor, Acceptance, Attempt, DeadLetter, DeadLetterFilter, DeadLetterPage,
    Job, LeaseRequest, NewEvent, QueueDepth, StoredEvent, UNROUTED,
};
use crate::store::StoreError;
use crate::time::unix_time;

use super::leases::{Leases, Place};

const DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// Jobs and dead letters still referring to an event.
const REFS: TableDefinition<u64, u64> = TableDefinition::new("event_refs");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// (priority rank, target, due ms, job id): per lane and target, the order
/// jobs are leased in. One queue per target, so that a target at its cap
/// with a long backlog never hides the others' jobs behind its own.
const QUEUE: TableDefinition<(u8, &str, u64, u64), ()> = TableDefinition::new("queue");
/// (priority rank, target) -> jobs queued: the targets a lease looks at.
const QUEUED: TableDefinition<(u8, &str), u64> = TableDefinition::new("queued_targets");
/// (received ms, job id) of every waiting job, kept by earlier versions:
/// emptied when the file is opened (the jobs table's order is the same).
const AGE: TableDefinition<(u64, u64), ()> = TableDefinition::new("age");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// (dead at ms, job id): the dead-letter list's order.
const DEAD_ORDER: TableDefinition<(u64, u64), ()> = TableDefinition::new("dead_order");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The longest a non-fsynced commit waits for the next fsync.
pub const DURABLE_EVERY: Duration = Duration::from_secs(1);

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {error}"))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialize")
}

fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

fn priority_of(rank: u8) -> Priority {
    match rank {
        0 => Priority::High,
        2 => Priority::Low,
        _ => Priority::Normal,
    }
}

/// The page cache of a store opened without a memory budget to size it
/// from (tests, tools): that of the default budget.
pub const DEFAULT_CACHE: usize = 16 << 20;

pub struct LocalStore {
    /// The file, or None for a database held in memory (tests).
    path: Option<PathBuf>,
    /// redb's page cache (read cache and write buffer together), in bytes.
    cache: usize,
    /// None only while `reopen` replaces it. After an I/O error (a full
    /// disk) redb refuses every later operation until the file is closed
    /// and opened again; every use holds the read lock for its whole
    /// transaction, so the reopen waits for them and they for it.
    db: RwLock<Option<Database>>,
    /// Unix ms of the last fsynced commit.
    last_durable_ms: AtomicU64,
    /// The last commit was not fsynced.
    unsynced: AtomicBool,
    /// The leases this process holds (`leases`): changed by the writer's
    /// batches once they commit.
    leases: Mutex<Leases>,
    /// New events are refused for want of room (set by the writer from
    /// its space gate): retries keep their jobs' histories at their length.
    full: AtomicBool,
    /// The store is within a tenth of its capacity: every commit is
    /// fsynced. redb reuses the pages a commit frees only once a durable
    /// commit follows it; a second of retries committed without fsync
    /// (a target down, hundreds a second) took more than the whole
    /// reserve in fresh pages and filled the volume.
    tight: AtomicBool,
}

impl LocalStore {
    /// Opens (or creates) `dir/events.redb`. Jobs leased by a previous
    /// process are due again at once: it is gone, so nobody holds them.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE)
    }

    /// [`open`](Self::open) with a page cache of `cache` bytes. redb's own
    /// default is 1 GiB, filled as the file grows: a burst of 200,000
    /// events took the process past 1.3 GiB and kept it there. The cache
    /// holds what the queue's scans read again (its indexes, the jobs due
    /// soon) and what a transaction writes until it commits; an event's
    /// body is read once per delivery.
    pub fn open_with_cache(dir: &Path, cache: usize) -> Result<Self, StoreError> {
        let path = dir.join("events.redb");
        let shown = path.display().to_string();
        let open_error = |message: String| {
            StoreError::Unavailable(format!("cannot open the store at {shown}: {message}"))
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let db = Database::builder()
            .set_cache_size(cache)
            .create(&path)
            .map_err(|e| open_error(e.to_string()))?;
        Self::with_database(Some(path), cache, db).map_err(|e| open_error(e.to_string()))
    }

    /// A store held in memory: the same engine without a file, for tests of
    /// the code above the store.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot create a store in memory: {e}"))
            })?;
        Self::with_database(None, DEFAULT_CACHE, db)
    }

    fn with_database(
        path: Option<PathBuf>,
        cache: usize,
        db: Database,
    ) -> Result<Self, StoreError> {
        let store = Self {
            path,
            cache,
            db: RwLock::new(Some(db)),
            last_durable_ms: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            leases: Mutex::default(),
            full: AtomicBool::new(false),
            tight: AtomicBool::new(false),
        };
        store.create_tables_and_release_leases()?;
        Ok(store)
    }

    /// Closes the file and opens it again, after an I/O error. Leases held
    /// by this process's deliveries stay theirs.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            // Memory has no I/O to fail.
            return Ok(());
        };
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle must be closed first: redb locks the file.
        drop(slot.take());
        let db = Database::builder()
            .set_cache_size(self.cache)
            .create(path)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot reopen the store at {}: {e}",
                    path.display()
                ))
            })?;
        *slot = Some(db);
        Ok(())
    }

    /// Bytes in redb's pages in use. Its statistics walk every table, so
    /// this reads each page of the database once: the room meter spaces
    /// its calls by what they cost.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(failed)?;
        let stats = txn.stats().map_err(failed);
        txn.abort().map_err(failed)?;
        let stats = stats?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }

    /// Whether new events are refused for want of room, and whether the
    /// store is near that (the writer's space gate says).
    pub fn set_room(&self, full: bool, tight: bool) {
        self.full.store(full, Ordering::Relaxed);
        self.tight.store(tight, Ordering::Relaxed);
    }

    /// The file; None for a store in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The open database, held for one transaction.
    fn db(&self) -> Result<DatabaseGuard<'_>, StoreError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(StoreError::Unavailable(
                "embedded store: the database is being reopened".into(),
            ));
        }
        Ok(DatabaseGuard(guard))
    }

    fn create_tables_and_release_leases(&self) -> Result<(), StoreError> {
        self.drop_age_index()?;
        self.write(true, |tables| {
            let now_ms = unix_time().as_millis() as u64;
            let mut leased = Vec::new();
            let mut unreadable = Vec::new();
            for entry in tables.jobs.iter().map_err(failed)? {
                let (id, value) = entry.map_err(failed)?;
                match decode::<Job>(value.value()) {
                    Ok(job) if job.leased => leased.push(job),
                    Ok(_) => {}
                    Err(error) => unreadable.push((id.value(), error.to_string())),
                }
            }
            for (id, reason) in unreadable {
                tables.set_aside(id, None, &reason, now_ms)?;
            }
            for job in leased {
                let mut released = job.clone();
                released.leased = false;
                released.due_ms = now_ms.min(job.due_ms);
                tables.replace_job(&job, &released)?;
            }
            Ok(())
        })
    }

    /// Empties the index of ages an earlier version kept (it is no longer
    /// updated, and a version that reads it again after a downgrade must
    /// not find jobs long gone in it). The table stays, so that such a
    /// version can open it.
    fn drop_age_index(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(failed)?;
        let emptied = {
            let mut age = txn.open_table(AGE).map_err(failed)?;
            let stale = !age.is_empty().map_err(failed)?;
            if stale {
                age.retain(|_, ()| false).map_err(failed)?;
            }
            stale
        };
        if emptied {
            self.commit(txn, true)
        } else {
            txn.abort().map_err(failed)
        }
    }

    fn commit(&self, txn: WriteTransaction, durable: bool) -> Result<(), StoreError> {
        let mut txn = txn;
        let now_ms = unix_time().as_millis() as u64;
        let overdue = now_ms.saturating_sub(self.last_durable_ms.load(Ordering::Relaxed))
            >= DURABLE_EVERY.as_millis() as u64;
        let durable = durable || overdue || self.tight.load(Ordering::Relaxed);
        if !durable {
            txn.set_durability(Durability::None).map_err(failed)?;
        }
        txn.commit().map_err(failed)?;
        if durable {
            self.last_durable_ms.store(now_ms, Ordering::Relaxed);
        }
        self.unsynced.store(!durable, Ordering::Relaxed);
        Ok(())
    }

    /// When the commits since the last fsync must be made durable (and the
    /// pages they freed reusable: redb frees them only at a durable
    /// commit), if any were made; the writer does it once it is idle.
    pub fn sync_due_in(&self) -> Option<Duration> {
        if !self.unsynced.load(Ordering::Relaxed) {
            return None;
        }
        let since = (unix_time().as_millis() as u64)
            .saturating_sub(self.last_durable_ms.load(Ordering::Relaxed));
        Some(DURABLE_EVERY.saturating_sub(Duration::from_millis(since)))
    }

    /// Runs `change` in one write transaction, committed only if it succeeds.
    fn write<T>(
        &self,
        durable: bool,
        change: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(failed)?;
        // The tables are closed before the commit, as redb requires.
        let full = self.full.load(Ordering::Relaxed);
        let changed = Tables::open(&txn).and_then(|mut tables| {
            tables.full = full;
            let value = change(&mut tables)?;
            tables.write_counts()?;
            Ok(value)
        });
        match changed {
            Ok(value) => {
                self.commit(txn, durable)?;
                Ok(value)
            }
            Err(error) => {
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    /// Applies `writes` in one transaction, fsynced if any of them needs
    /// it (group commit). A write refused on its own (a lost lease) gets its
    /// error and changes nothing; a storage failure fails them all.
    pub fn apply(
        &self,
        writes: &[Write<'_>],
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let durable = writes.iter().any(Write::needs_fsync);
        // The batch works on a copy of the leases, kept only if it commits:
        // a lease granted in a batch that failed was never answered.
        let mut held = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let mut leases = held.clone();
        let answers = self.write(durable, |tables| {
            writes
                .iter()
                .map(|write| match write.apply(tables, &mut leases) {
                    // Refused on its own: every write reads (and decodes)
                    // what it changes before changing anything, so a lost
                    // lease or an unreadable record fails only its write.
                    Err(StoreError::LeaseLost(id)) => Ok(Err(StoreError::LeaseLost(id))),
                    Err(StoreError::Corrupt(reason)) => Ok(Err(StoreError::Corrupt(reason))),
                    other => other.map(Ok),
                })
                .collect()
        })?;
        *held = leases;
        Ok(answers)
    }

    /// One write in its own transaction.
    fn apply_one(&self, write: Write<'_>) -> Result<Written, StoreError> {
        self.apply(std::slice::from_ref(&write))?
            .pop()
            .expect("one answer per write")
    }

    /// Stores a verified event and its jobs, durably, unless the same event
    /// was accepted within `dedup_window`.
    pub fn accept(
        &self,
        event: &NewEvent<'_>,
        now_ms: u64,
        dedup_window: Duration,
    ) -> Result<Acceptance, StoreError> {
        match self.apply_one(Write::Accept(*event, now_ms, dedup_window))? {
            Written::Accepted(acceptance) => Ok(acceptance),
            _ => unreachable!("an accept answers with its acceptance"),
        }
    }

    pub fn lease(&self, request: &LeaseRequest) -> Result<Vec<Job>, StoreError> {
        match self.apply_one(Write::Lease(request))? {
            Written::Leased(jobs) => Ok(jobs),
            _ => unreachable!("a lease answers with its jobs"),
        }
    }

    pub fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        let below = match cursor {
            None => (u64::MAX, u64::MAX),
            Some(cursor) => parse_cursor(cursor)?,
        };
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let order = txn.open_table(DEAD_ORDER).map_err(failed)?;
        let dead = txn.open_table(DEAD).map_err(failed)?;
        let mut items: Vec<DeadLetter> = Vec::new();
        let mut more = false;
        for entry in order.range(..below).map_err(failed)?.rev() {
            let id = entry.map_err(failed)?.0.value().1;
            let Some(value) = dead.get(id).map_err(failed)? else {
                continue;
            };
            let letter: DeadLetter = decode(value.value())?;
            if !filter.matches(&letter) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(letter);
        }
        // A cursor is exclusive: the next page starts below this one's last.
        let next = items.last().filter(|_| more).map(DeadLetter::order_key);
        Ok(DeadLetterPage { items, next })
    }

    pub fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let dead = txn.open_table(DEAD).map_err(failed)?;
        let value = dead.get(id).map_err(failed)?;
        value.map(|v| decode(v.value())).transpose()
    }

    pub fn replay(&self, id: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.write(true, |tables| {
            let Some(letter) = tables.remove_dead(id)? else {
                return Ok(false);
            };
            if letter.job.target == UNROUTED {
                tables.insert_dead(&letter)?;
                return Ok(false);
            }
            tables.insert_job(&letter.job.replayed(now_ms))?;
            Ok(true)
        })
    }

    pub fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        self.write(true, |tables| match tables.remove_dead(id)? {
            None => Ok(false),
            Some(letter) => {
                tables.release_event(letter.job.event)?;
                Ok(true)
            }
        })
    }

    /// From counters kept with every change: the gauges read them every
    /// second, however long the queue.
    pub fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let counters = txn.open_table(COUNTERS).map_err(failed)?;
        let mut counts = Vec::new();
        // Keys after "dead:" and before "dead;" (';' follows ':').
        for entry in counters.range("dead:".."dead;").map_err(failed)? {
            let (key, count) = entry.map_err(failed)?;
            let webhook = key.value().trim_start_matches("dead:").to_string();
            counts.push((webhook, count.value()));
        }
        Ok(counts)
    }

    pub fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let counters = txn.open_table(COUNTERS).map_err(failed)?;
        let count = |priority: Priority| -> Result<u64, StoreError> {
            Ok(counters
                .get(depth_key(priority))
                .map_err(failed)?
                .map_or(0, |v| v.value()))
        };
        Ok(QueueDepth {
            high: count(Priority::High)?,
            normal: count(Priority::Normal)?,
            low: count(Priority::Low)?,
        })
    }

    /// When the next job falls due (leased ones included: when their lease
    /// ends), or None when nothing is queued.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let leases = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let queued = txn.open_table(QUEUED).map_err(failed)?;
        let queue = txn.open_table(QUEUE).map_err(failed)?;
        let mut next: Option<u64> = leases.first_end();
        for entry in queued.iter().map_err(failed)? {
            let (key, _) = entry.map_err(failed)?;
            let (rank, target) = key.value();
            let range = queue
                .range((rank, target, 0, 0)..=(rank, target, u64::MAX, u64::MAX))
                .map_err(failed)?;
            for entry in range {
                let (key, _) = entry.map_err(failed)?;
                let (_, _, due, id) = key.value();
                if !leases.holds(id) {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    break;
                }
            }
        }
        Ok(next)
    }

    /// When the oldest job waiting (queued or leased) was received: the
    /// first of the jobs table, whose ids grow with acceptance. A clock
    /// stepped back may order a few jobs differently; the gauge is in
    /// seconds. Records that cannot be read are passed over (the next lease
    /// sets them aside).
    pub fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let jobs = txn.open_table(JOBS).map_err(failed)?;
        for entry in jobs.iter().map_err(failed)?.take(64) {
            let (_, value) = entry.map_err(failed)?;
            if let Ok(job) = decode::<Job>(value.value()) {
                return Ok(Some(job.received_at_ms));
            }
        }
        Ok(None)
    }

    /// An event's metadata and body.
    pub fn event(&self, sequence: u64) -> Result<Option<(StoredEvent, Vec<u8>)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let events = txn.open_table(EVENTS).map_err(failed)?;
        let Some(metadata) = events.get(sequence).map_err(failed)? else {
            return Ok(None);
        };
        let stored = decode(metadata.value())?;
        let bodies = txn.open_table(BODIES).map_err(failed)?;
        // An event without its body is as good as gone: never delivered empty.
        let Some(body) = bodies.get(sequence).map_err(failed)? else {
            return Ok(None);
        };
        Ok(Some((stored, body.value().to_vec())))
    }

    /// A small fsynced commit, to tell whether writes work again.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.write(true, |tables| {
            tables.bump("probe", 1);
            Ok(())
        })
    }

    /// One fsynced commit, so that every earlier commit is durable too.
    pub fn flush(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(failed)?;
        self.commit(txn, true)
    }

    /// Forgets dedup keys older than `window`; returns how many.
    pub fn prune_dedup(&self, now_ms: u64, window: Duration) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(window.as_millis() as u64);
        self.write(true, |tables| {
            let dedup = &mut tables.dedup;
            let before = dedup.len().map_err(failed)?;
            dedup
                .retain(|_, seen_at| seen_at >= cutoff)
                .map_err(failed)?;
            Ok(before - dedup.len().map_err(failed)?)
        })
    }
}

/// A write the queue's hot path makes; several share one transaction.
pub enum Write<'a> {
    Accept(NewEvent<'a>, u64, Duration),
    Lease(&'a LeaseRequest),
    Ack(&'a Job),
    Retry(&'a Job, Attempt, u64),
    DeadLetter {
        held: &'a Job,
        attempt: Option<Attempt>,
        reason: &'a str,
        now_ms: u64,
    },
}

/// What a write answers.
#[derive(Debug)]
pub enum Written {
    Accepted(Acceptance),
    Leased(Vec<Job>),
    Done,
}

impl Write<'_> {
    /// Accepts are acknowledged to providers and dead letters to
    /// operators: both wait for the fsync. Leases, acks and retries may be
    /// lost in a crash at the cost of a repeated delivery.
    fn needs_fsync(&self) -> bool {
        matches!(self, Self::Accept(..) | Self::DeadLetter { .. })
    }

    fn apply(&self, tables: &mut Tables<'_>, leases: &mut Leases) -> Result<Written, StoreError> {
        match self {
            Self::Accept(event, now_ms, window) => tables
                .insert(event, *now_ms, *window)
                .map(Written::Accepted),
            Self::Lease(request) => tables.lease(request, leases).map(Written::Leased),
            Self::Ack(held) => {
                let place = leases.check(held)?.place.clone();
                tables.remove_job_at(held.id, &place)?;
                tables.release_event(place.event)?;
                leases.release(held.id);
                Ok(Written::Done)
            }
            Self::Retry(held, attempt, due_ms) => {
                let current = tables.held_job(held, leases)?;
                let grow = !tables.full;
                let retried = current.clone().retried(attempt.clone(), *due_ms, grow);
                tables.replace_job(&current, &retried)?;
                leases.release(held.id);
                Ok(Written::Done)
            }
            Self::DeadLetter {
                held,
                attempt,
                reason,
                now_ms,
            } => {
                let current = tables.held_job(held, leases)?;
                tables.remove_job(&current)?;
                leases.release(held.id);
                let mut job = current;
                if let Some(attempt) = attempt {
                    job.record(attempt.clone());
                }
                job.leased = false;
                tables.insert_dead(&DeadLetter {
                    job,
                    reason: reason.to_string(),
                    dead_at_ms: *now_ms,
                })?;
                Ok(Written::Done)
            }
        }
    }
}

/// Every table of the store, opened once per write transaction: opening a
/// redb table looks it up and type-checks it, which cost about a third of
/// the writer's instructions when each step opened its own.
struct Tables<'t> {
    dedup: Table<'t, &'static str, u64>,
    events: Table<'t, u64, &'static [u8]>,
    bodies: Table<'t, u64, &'static [u8]>,
    refs: Table<'t, u64, u64>,
    jobs: Table<'t, u64, &'static [u8]>,
    queue: Table<'t, (u8, &'static str, u64, u64), ()>,
    queued: Table<'t, (u8, &'static str), u64>,
    dead: Table<'t, u64, &'static [u8]>,
    dead_order: Table<'t, (u64, u64), ()>,
    counters: Table<'t, &'static str, u64>,
    /// Changes to `queued` and `counters` not written yet: added up here and
    /// written by `write_counts`, before a lease reads them and before the
    /// commit.
    counts: Vec<(Count, i64)>,
    /// The store refuses new events for want of room: a retry does not
    /// grow its job's history (`Job::record_in_place`).
    full: bool,
}

/// A count kept in the QUEUED or COUNTERS table.
#[derive(Debug)]
enum Count {
    /// Jobs queued in a lane for a target.
    Queued(u8, String),
    /// A key of the COUNTERS table.
    Counter(String),
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            dedup: txn.open_table(DEDUP).map_err(failed)?,
            events: txn.open_table(EVENTS).map_err(failed)?,
            bodies: txn.open_table(BODIES).map_err(failed)?,
            refs: txn.open_table(REFS).map_err(failed)?,
            jobs: txn.open_table(JOBS).map_err(failed)?,
            queue: txn.open_table(QUEUE).map_err(failed)?,
            queued: txn.open_table(QUEUED).map_err(failed)?,
            dead: txn.open_table(DEAD).map_err(failed)?,
            dead_order: txn.open_table(DEAD_ORDER).map_err(failed)?,
            counters: txn.open_table(COUNTERS).map_err(failed)?,
            counts: Vec::new(),
            full: false,
        })
    }

    /// Adds `delta` to the count `is` picks out, in memory until
    /// `write_counts`; `new` names it the first time in a transaction. A
    /// batch touches a few counts many times: they are found by a look
    /// along, without making their key again.
    fn count(&mut self, is: impl Fn(&Count) -> bool, new: impl FnOnce() -> Count, delta: i64) {
        match self.counts.iter_mut().find(|(c, _)| is(c)) {
            Some((_, sum)) => *sum += delta,
            None => self.counts.push((new(), delta)),
        }
    }

    /// Writes the counts changed since the last call.
    fn write_counts(&mut self) -> Result<(), StoreError> {
        for (count, delta) in std::mem::take(&mut self.counts) {
            if delta == 0 {
                continue;
            }
            match count {
                Count::Queued(rank, target) => {
                    add_count(&mut self.queued, (rank, target.as_str()), delta)?
                }
                Count::Counter(key) => add_count(&mut self.counters, key.as_str(), delta)?,
            }
        }
        Ok(())
    }

    /// The `max` oldest due jobs of a lane among every target with room,
    /// each target giving at most its room: targets are looked at one by
    /// one, so a full target's backlog costs nothing.
    fn lease(
        &mut self,
        request: &LeaseRequest,
        leases: &mut Leases,
    ) -> Result<Vec<Job>, StoreError> {
        let LeaseRequest {
            priority,
            now_ms,
            visibility,
            ref room,
            max,
        } = *request;
        let r = rank(priority);
        // Jobs accepted earlier in this transaction are listed by target.
        self.write_counts()?;
        let mut due: Vec<(u64, u64, String)> = Vec::new();
        for entry in self.queued.range((r, "")..(r + 1, "")).map_err(failed)? {
            let (key, _) = entry.map_err(failed)?;
            let target = key.value().1;
            let take = room
                .iter()
                .find(|(t, _)| t == target)
                .map_or(max, |(_, left)| (*left as usize).min(max));
            if take == 0 {
                continue;
            }
            let range = self
                .queue
                .range((r, target, 0, 0)..=(r, target, now_ms, u64::MAX))
                .map_err(failed)?;
            // Jobs leased and not yet settled keep their place: passed over.
            let mut taken = 0;
            for entry in range {
                let (key, _) = entry.map_err(failed)?;
                let (_, target, due_ms, id) = key.value();
                if leases.blocks(id, now_ms) {
                    continue;
                }
                due.push((due_ms, id, target.to_string()));
                taken += 1;
                if taken == take {
                    break;
                }
            }
        }
        due.sort_unstable();
        due.truncate(max);
        let mut leased = Vec::with_capacity(due.len());
        for (due_ms, id, target) in due {
            let job = match self.job(id) {
                Ok(Some(job)) => job,
                // One unreadable record must not fail every lease after it.
                Ok(None) => {
                    let place = (r, target, due_ms);
                    self.set_aside(id, Some(place), "it has no record", now_ms)?;
                    continue;
                }
                Err(StoreError::Corrupt(reason)) => {
                    self.set_aside(id, Some((r, target, due_ms)), &reason, now_ms)?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let until_ms = now_ms + visibility.as_millis() as u64;
            let place = Place {
                rank: r,
                target,
                due_ms,
                event: job.event,
            };
            let mut taken = job;
            taken.lease = leases.grant(id, until_ms, place);
            taken.leased = true;
            taken.due_ms = until_ms;
            leased.push(taken);
        }
        Ok(leased)
    }

    /// Takes a job whose record cannot be read off the queue and keeps it
    /// as a dead letter `corrupt`, with what could be read of it, so that
    /// it never fails another batch. `place` is its queue entry (rank,
    /// target, due) when known; otherwise the queue is searched for it.
    fn set_aside(
        &mut self,
        id: u64,
        place: Option<(u8, String, u64)>,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let raw = self
            .jobs
            .get(id)
            .map_err(failed)?
            .map(|v| v.value().to_vec());
        let place = match place {
            Some(place) => Some(place),
            None => self.queue_entry_of(id)?,
        };
        let priority = match place.as_ref().map(|(rank, _, _)| *rank) {
            Some(0) => Priority::High,
            Some(2) => Priority::Low,
            _ => Priority::Normal,
        };
        let target = place.as_ref().map(|(_, target, _)| target.clone());
        let letter = crate::store::records::set_aside(
            id,
            raw.as_deref(),
            priority,
            target.as_deref().unwrap_or(UNROUTED),
            reason,
            now_ms,
        );
        let mut job = letter.job.clone();
        job.due_ms = place.as_ref().map_or(0, |(_, _, due)| *due);
        self.jobs.remove(id).map_err(failed)?;
        if let Some((rank, target, due_ms)) = &place {
            self.queue
                .remove((*rank, target.as_str(), *due_ms, id))
                .map_err(failed)?;
            self.count_queued(&job, -1);
            self.bump(depth_key(job.priority), -1);
        }
        tracing::error!(job = id, %reason, "a job's record cannot be read; it is set aside as a dead letter (corrupt)");
        job.due_ms = letter.job.due_ms;
        self.insert_dead(&DeadLetter { job, ..letter })
    }

    /// Where job `id` waits in the queue (rank, target, due), searched for.
    fn queue_entry_of(&self, id: u64) -> Result<Option<(u8, String, u64)>, StoreError> {
        for entry in self.queue.iter().map_err(failed)? {
            let (key, _) = entry.map_err(failed)?;
            let (rank, target, due_ms, job_id) = key.value();
            if job_id == id {
                return Ok(Some((rank, target.to_string(), due_ms)));
            }
        }
        Ok(None)
    }

    fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let value = self.jobs.get(id).map_err(failed)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// The job as stored, if `held` is still its current lease.
    fn held_job(&self, held: &Job, leases: &Leases) -> Result<Job, StoreError> {
        leases.check(held)?;
        self.job(held.id)?.ok_or(StoreError::LeaseLost(held.id))
    }

    /// Adds `delta` to a counter of the COUNTERS table.
    fn bump(&mut self, key: &str, delta: i64) {
        self.count(
            |c| matches!(c, Count::Counter(k) if k == key),
            || Count::Counter(key.to_string()),
            delta,
        );
    }

    /// A new job: its records and one more in its priority's depth (kept as
    /// a counter so the gauges never scan the queue).
    fn insert_job(&mut self, job: &Job) -> Result<(), StoreError> {
        self.insert_job_records(job)?;
        self.count_queued(job, 1);
        self.bump(depth_key(job.priority), 1);
        Ok(())
    }

    fn remove_job(&mut self, job: &Job) -> Result<(), StoreError> {
        self.remove_job_records(job)?;
        self.count_queued(job, -1);
        self.bump(depth_key(job.priority), -1);
        Ok(())
    }

    /// Keeps a (lane, target) listed while it has jobs queued.
    fn count_queued(&mut self, job: &Job, delta: i64) {
        self.count_queued_at(rank(job.priority), &job.target, delta);
    }

    fn count_queued_at(&mut self, rank: u8, target: &str, delta: i64) {
        self.count(
            |c| matches!(c, Count::Queued(r, t) if *r == rank && t == target),
            || Count::Queued(rank, target.to_string()),
            delta,
        );
    }

    fn insert_job_records(&mut self, job: &Job) -> Result<(), StoreError> {
        self.jobs
            .insert(job.id, encode(job).as_slice())
            .map_err(failed)?;
        self.queue.insert(queue_key(job), ()).map_err(failed)?;
        Ok(())
    }

    /// Removes a leased job from where its lease found it, without reading
    /// its record.
    fn remove_job_at(&mut self, id: u64, place: &Place) -> Result<(), StoreError> {
        self.jobs.remove(id).map_err(failed)?;
        self.queue
            .remove((place.rank, place.target.as_str(), place.due_ms, id))
            .map_err(failed)?;
        self.count_queued_at(place.rank, &place.target, -1);
        self.bump(depth_key(priority_of(place.rank)), -1);
        Ok(())
    }

    fn remove_job_records(&mut self, job: &Job) -> Result<(), StoreError> {
        self.jobs.remove(job.id).map_err(failed)?;
        self.queue.remove(queue_key(job)).map_err(failed)?;
        Ok(())
    }

    /// The same job in a new state: its record is overwritten and its queue
    /// entry moved; its priority, target and age never change.
    fn replace_job(&mut self, old: &Job, new: &Job) -> Result<(), StoreError> {
        debug_assert_eq!(
            (old.priority, &old.target, old.received_at_ms),
            (new.priority, &new.target, new.received_at_ms)
        );
        self.jobs
            .insert(new.id, encode(new).as_slice())
            .map_err(failed)?;
        if old.due_ms != new.due_ms {
            self.queue.remove(queue_key(old)).map_err(failed)?;
            self.queue.insert(queue_key(new), ()).map_err(failed)?;
        }
        Ok(())
    }

    fn insert_dead(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.dead
            .insert(letter.job.id, encode(letter).as_slice())
            .map_err(failed)?;
        self.dead_order
            .insert((letter.dead_at_ms, letter.job.id), ())
            .map_err(failed)?;
        self.bump(&dead_key(&letter.job.webhook), 1);
        Ok(())
    }

    fn remove_dead(&mut self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let letter: Option<DeadLetter> = {
            let removed = self.dead.remove(id).map_err(failed)?;
            removed.map(|v| decode(v.value())).transpose()?
        };
        if let Some(letter) = &letter {
            self.dead_order
                .remove((letter.dead_at_ms, id))
                .map_err(failed)?;
            self.bump(&dead_key(&letter.job.webhook), -1);
        }
        Ok(letter)
    }

    /// One job or dead letter no longer refers to the event; the last one
    /// takes the event and its body with it. An event without a count has
    /// one reference: counts are written only for events with more, and an
    /// earlier version reads a missing count the same way.
    fn release_event(&mut self, event: u64) -> Result<(), StoreError> {
        let count = self.refs.get(event).map_err(failed)?.map(|v| v.value());
        if let Some(count) = count {
            if count > 1 {
                // Kept even at 1, which any version reads as one reference.
                self.refs.insert(event, count - 1).map_err(failed)?;
                return Ok(());
            }
            self.refs.remove(event).map_err(failed)?;
        }
        self.events.remove(event).map_err(failed)?;
        self.bodies.remove(event).map_err(failed)?;
        Ok(())
    }

    /// One event's records.
    fn insert(
        &mut self,
        event: &NewEvent<'_>,
        now_ms: u64,
        dedup_window: Duration,
    ) -> Result<Acceptance, StoreError> {
        let key = dedup_key(event.webhook, &event.meta.dedup);
        if let Some(seen_at) = self.dedup.get(key.as_str()).map_err(failed)? {
            if now_ms.saturating_sub(seen_at.value()) < dedup_window.as_millis() as u64 {
                return Ok(Acceptance::Duplicate);
            }
        }
        self.dedup.insert(key.as_str(), now_ms).map_err(failed)?;
        let sequence = {
            let next = self
                .counters
                .get("sequence")
                .map_err(failed)?
                .map_or(1, |v| v.value());
            // One number per event and per job: a job's id never repeats.
            let jobs = event.meta.targets.len().max(1) as u64;
            self.counters
                .insert("sequence", next + 1 + jobs)
                .map_err(failed)?;
            next
        };
        self.events
            .insert(sequence, encode(&event.stored(now_ms)).as_slice())
            .map_err(failed)?;
        self.bodies.insert(sequence, event.body).map_err(failed)?;
        let refs = event.meta.targets.len().max(1) as u64;
        if refs > 1 {
            self.refs.insert(sequence, refs).map_err(failed)?;
        }
        if event.meta.targets.is_empty() {
            let job = event.job(sequence + 1, sequence, &UNROUTED.into(), now_ms);
            self.insert_dead(&DeadLetter {
                job,
                reason: "unrouted".into(),
                dead_at_ms: now_ms,
            })?;
        } else {
            for (offset, target) in event.meta.targets.iter().enumerate() {
                let id = sequence + 1 + offset as u64;
                self.insert_job(&event.job(id, sequence, target, now_ms))?;
            }
        }
        Ok(Acceptance::Accepted(sequence))
    }
}

/// The open database while a read lock is held.
struct DatabaseGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DatabaseGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        // `db()` made the guard only after checking the slot is full.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("checked when made"))
    }
}

fn queue_key(job: &Job) -> (u8, &str, u64, u64) {
    (rank(job.priority), job.target.as_str(), job.due_ms, job.id)
}

/// Adds `delta` to a count kept in `table` under `key`: a missing count is
/// 0, and a count back at 0 is removed.
fn add_count<'k, K: redb::Key + 'static>(
    table: &mut Table<'_, K, u64>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
    delta: i64,
) -> Result<(), StoreError> {
    let key = key.borrow();
    let now = table.get(key).map_err(failed)?.map_or(0, |v| v.value());
    let next = now.saturating_add_signed(delta);
    if next == 0 {
        table.remove(key).map_err(failed)?;
    } else {
        table.insert(key, next).map_err(failed)?;
    }
    Ok(())
}

fn depth_key(priority: Priority) -> &'static str {
    match rank(priority) {
        0 => "depth:0",
        1 => "depth:1",
        _ => "depth:2",
    }
}

fn dead_key(webhook: &str) -> String {
    format!("dead:{webhook}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventMeta;

    const HOUR: Duration = Duration::from_secs(3600);

    fn dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "sidecar-store-{}-{name}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// A high-priority event of `stripe` for `targets`.
    fn meta(id: &str, targets: &[&str]) -> EventMeta {
        EventMeta {
            id: id.into(),
            dedup: id.into(),
            event_type: "t".into(),
            context: Vec::new(),
            priority: Priority::High,
            targets: targets.iter().map(|&t| t.into()).collect(),
            trace: None,
        }
    }

    fn event<'a>(webhook: &'a crate::names::WebhookName, meta: &'a EventMeta) -> NewEvent<'a> {
        NewEvent {
            webhook,
            meta,
            content_type: None,
            body: b"{}",
        }
    }

    fn accept(store: &LocalStore, id: &str, now_ms: u64) -> Acceptance {
        let meta = meta(id, &["notify"]);
        store
            .accept(&event(&"stripe".into(), &meta), now_ms, HOUR)
            .unwrap()
    }

    fn one_high_job(now_ms: u64) -> LeaseRequest {
        LeaseRequest {
            priority: Priority::High,
            now_ms,
            visibility: HOUR,
            room: Vec::new(),
            max: 1,
        }
    }

    #[test]
    fn the_next_due_time_is_the_earliest_queued_job_leased_or_not() {
        let store = LocalStore::open(&dir("next-due")).unwrap();
        assert_eq!(store.next_due_ms().unwrap(), None, "nothing queued");
        accept(&store, "evt_1", 1_000);
        accept(&store, "evt_2", 2_000);
        assert_eq!(store.next_due_ms().unwrap(), Some(1_000));
        // Leased: due again when its lease ends, after the other one.
        store.lease(&one_high_job(1_500)).unwrap();
        assert_eq!(store.next_due_ms().unwrap(), Some(2_000));
    }

    #[test]
    fn expired_dedup_keys_are_pruned() {
        let store = LocalStore::open(&dir("prune")).unwrap();
        accept(&store, "evt_1", 1_000);
        assert_eq!(store.prune_dedup(1_000 + 3_599_999, HOUR).unwrap(), 0);
        assert_eq!(store.prune_dedup(10 * 3_600_000, HOUR).unwrap(), 1);
    }

    #[test]
    fn a_job_leased_by_a_process_that_died_is_due_again_on_reopening() {
        let path = dir("reopen");
        {
            let store = LocalStore::open(&path).unwrap();
            accept(&store, "evt_1", 1_000);
            let leased = store.lease(&one_high_job(1_000)).unwrap();
            assert!(leased[0].leased);
            assert!(store.lease(&one_high_job(1_000)).unwrap().is_empty());
        }
        let store = LocalStore::open(&path).unwrap();
        let again = store
            .lease(&one_high_job(unix_time().as_millis() as u64))
            .unwrap();
        assert_eq!(again.len(), 1, "released on open");
    }

    #[test]
    fn an_unreadable_job_is_set_aside_as_corrupt_and_the_rest_of_its_lease_goes_on() {
        let store = LocalStore::open(&dir("corrupt")).unwrap();
        for id in ["evt_1", "evt_2", "evt_3"] {
            accept(&store, id, 1_000);
        }
        // The first event's job (number 2) no longer decodes.
        store
            .write(true, |tables| {
                tables.jobs.insert(2, b"{\"id\":2,\"event\":1,\"webhook\":\"stripe\",\"event_id\":\"evt_1\",\"priority\":".as_slice()).map_err(failed)?;
                Ok(())
            })
            .unwrap();
        let mut request = one_high_job(1_000);
        request.max = 10;
        let leased = store.lease(&request).unwrap();
        let ids: Vec<&str> = leased.iter().map(|j| j.event_id.as_str()).collect();
        assert_eq!(ids, ["evt_2", "evt_3"], "the others are leased");
        let dead = store
            .dead_letters(&DeadLetterFilter::default(), None, 10)
            .unwrap()
            .items;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "corrupt");
        assert_eq!(
            (
                dead[0].job.id,
                dead[0].job.webhook.as_str(),
                dead[0].job.event_id.as_str()
            ),
            (2, "stripe", "evt_1"),
            "what could be read is kept"
        );
        assert!(dead[0].last_error().unwrap().contains("could not be read"));
        assert_eq!(
            store.queue_depth().unwrap().high,
            2,
            "counted out of the queue"
        );
        assert!(store.lease(&request).unwrap().is_empty());
    }

    #[test]
    fn an_unreadable_job_found_at_start_is_set_aside_too() {
        let path = dir("corrupt-open");
        {
            let store = LocalStore::open(&path).unwrap();
            accept(&store, "evt_1", 1_000);
            store
                .write(true, |tables| {
                    tables
                        .jobs
                        .insert(2, b"garbage".as_slice())
                        .map_err(failed)?;
                    Ok(())
                })
                .unwrap();
        }
        let store = LocalStore::open(&path).expect("opens despite the bad record");
        let dead = store
            .dead_letters(&DeadLetterFilter::default(), None, 10)
            .unwrap()
            .items;
        assert_eq!((dead.len(), dead[0].reason.as_str()), (1, "corrupt"));
        assert_eq!(
            dead[0].job.target, "notify",
            "its place in the queue was found"
        );
        assert_eq!(store.queue_depth().unwrap().high, 0);
    }

    fn lease_all(store: &LocalStore, now_ms: u64) -> Vec<Job> {
        let mut request = one_high_job(now_ms);
        request.max = 100;
        store.lease(&request).unwrap()
    }

    fn ack(store: &LocalStore, job: &Job) {
        store.apply_one(Write::Ack(job)).unwrap();
    }

    fn counts(store: &LocalStore) -> (usize, usize, usize) {
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        let len = |table: TableDefinition<u64, &[u8]>| {
            txn.open_table(table).unwrap().len().unwrap() as usize
        };
        let refs = txn.open_table(REFS).unwrap().len().unwrap() as usize;
        (len(EVENTS), len(BODIES), refs)
    }

    #[test]
    fn only_an_event_with_several_references_has_a_count_and_the_last_release_removes_it() {
        let store = LocalStore::open(&dir("refs")).unwrap();
        accept(&store, "evt_one", 1_000);
        let two = meta("evt_two", &["notify", "analytics"]);
        store
            .accept(&event(&"stripe".into(), &two), 1_000, HOUR)
            .unwrap();
        assert_eq!(
            counts(&store),
            (2, 2, 1),
            "a count for the two-target event only"
        );
        let jobs = lease_all(&store, 1_000);
        assert_eq!(jobs.len(), 3);
        for job in &jobs {
            ack(&store, job);
        }
        assert_eq!(
            counts(&store),
            (0, 0, 0),
            "every event and body gone with its last job"
        );
        assert_eq!(store.queue_depth().unwrap().high, 0);
        assert_eq!(store.next_due_ms().unwrap(), None);
    }

    #[test]
    fn a_file_written_by_an_earlier_version_with_counts_of_one_and_an_age_index_reads_the_same() {
        let path = dir("earlier");
        {
            let store = LocalStore::open(&path).unwrap();
            accept(&store, "evt_1", 1_000);
            accept(&store, "evt_2", 2_000);
            // What an earlier version kept: a count of one for every event
            // and an index of ages.
            store
                .write(true, |tables| {
                    tables.refs.insert(1, 1).map_err(failed)?;
                    tables.refs.insert(3, 1).map_err(failed)?;
                    Ok(())
                })
                .unwrap();
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut age = txn.open_table(AGE).unwrap();
                age.insert((1_000, 2), ()).unwrap();
                age.insert((2_000, 4), ()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = LocalStore::open(&path).unwrap();
        {
            let db = store.db().unwrap();
            let txn = db.begin_read().unwrap();
            assert!(
                txn.open_table(AGE).unwrap().is_empty().unwrap(),
                "emptied on open"
            );
        }
        assert_eq!(store.oldest_pending_ms().unwrap(), Some(1_000));
        let jobs = lease_all(&store, unix_time().as_millis() as u64);
        ack(&store, &jobs[0]);
        assert_eq!(store.oldest_pending_ms().unwrap(), Some(2_000));
        ack(&store, &jobs[1]);
        assert_eq!(counts(&store), (0, 0, 0));
        assert_eq!(store.oldest_pending_ms().unwrap(), None);
    }

    #[test]
    fn counts_changed_earlier_in_a_batch_are_seen_by_its_lease() {
        let store = LocalStore::open(&dir("batch-counts")).unwrap();
        let webhook = "stripe".into();
        let one = meta("evt_1", &["notify"]);
        let request = one_high_job(1_000);
        let answers = store
            .apply(&[
                Write::Accept(event(&webhook, &one), 1_000, HOUR),
                Write::Lease(&request),
            ])
            .unwrap();
        match &answers[1] {
            Ok(Written::Leased(jobs)) => assert_eq!(jobs.len(), 1, "the job accepted before it"),
            other => panic!("a lease answers with jobs, not {other:?}"),
        }
        assert_eq!(
            store.queue_depth().unwrap().high,
            1,
            "leased jobs still count"
        );
    }

    /// `apply`, measuring redb's pages in use just before the commit: the
    /// transaction's peak (what it copied is freed only by the commit).
    fn apply_measuring_peak(store: &LocalStore, writes: &[Write<'_>]) -> u64 {
        let db = store.db().unwrap();
        let txn = db.begin_write().unwrap();
        let mut leases = store.leases.lock().unwrap().clone();
        {
            let mut tables = Tables::open(&txn).unwrap();
            for write in writes {
                write.apply(&mut tables, &mut leases).unwrap();
            }
            tables.write_counts().unwrap();
        }
        let stats = txn.stats().unwrap();
        store
            .commit(txn, writes.iter().any(Write::needs_fsync))
            .unwrap();
        *store.leases.lock().unwrap() = leases;
        stats.allocated_pages() * stats.page_size() as u64
    }

    /// What draining a full store costs in pages beyond what it held: the
    /// figure behind `room::RESERVE_BYTES`. 3,000 events of 2 KiB leased in
    /// the writer's batches of 256, half acked (committed without fsync),
    /// half dead-lettered (fsynced), each batch's peak taken inside its
    /// transaction; then the dead letters replayed one by one.
    #[test]
    fn draining_a_full_store_needs_less_than_half_the_reserve() {
        let store = LocalStore::open(&dir("drain-room")).unwrap();
        let body = vec![b'x'; 2048];
        let webhook = "stripe".into();
        let metas: Vec<EventMeta> = (0..3000)
            .map(|n| meta(&format!("evt_{n:05}_{}", "k".repeat(20)), &["notify"]))
            .collect();
        for chunk in metas.chunks(64) {
            let writes: Vec<Write<'_>> = chunk
                .iter()
                .map(|m| {
                    Write::Accept(
                        NewEvent {
                            webhook: &webhook,
                            meta: m,
                            content_type: None,
                            body: &body,
                        },
                        1_000,
                        HOUR,
                    )
                })
                .collect();
            store.apply(&writes).unwrap();
        }
        let full = store.used_bytes().unwrap();
        let per_event = full / 3000;
        let mut peak = full;
        let now_ms = unix_time().as_millis() as u64;
        let mut drained = 0;
        loop {
            let mut request = one_high_job(now_ms);
            request.max = 256;
            let jobs = store.lease(&request).unwrap();
            if jobs.is_empty() {
                break;
            }
            // Acks first (committed without fsync), then dead letters
            // (fsynced): both kinds of drain.
            let writes: Vec<Write<'_>> = jobs
                .iter()
                .map(|job| {
                    if drained < 1500 {
                        Write::Ack(job)
                    } else {
                        Write::DeadLetter {
                            held: job,
                            attempt: None,
                            reason: "max_attempts",
                            now_ms,
                        }
                    }
                })
                .collect();
            peak = peak.max(apply_measuring_peak(&store, &writes));
            drained += jobs.len();
        }
        assert_eq!(drained, 3000);
        let dead = store
            .dead_letters(&DeadLetterFilter::default(), None, 2000)
            .unwrap()
            .items;
        let after_drain = store.used_bytes().unwrap();
        let mut replay_peak = after_drain;
        for letter in &dead {
            assert!(store.replay(letter.job.id, now_ms).unwrap());
            replay_peak = replay_peak.max(store.used_bytes().unwrap());
        }
        println!(
            "ROOM | full {full} B ({per_event} B per event) | drain peak +{} B | after drain {after_drain} B | replay peak +{} B",
            peak - full,
            replay_peak - after_drain
        );
        let reserve = super::super::room::RESERVE_BYTES;
        assert!(peak - full < reserve / 2, "drain grew by {}", peak - full);
        assert!(
            replay_peak - after_drain < reserve / 2,
            "replays grew by {}",
            replay_peak - after_drain
        );
        assert!(after_drain < full, "the drain freed pages");
    }

    #[test]
    fn a_bad_cursor_is_refused() {
        let store = LocalStore::open(&dir("cursor")).unwrap();
        let error = store
            .dead_letters(&DeadLetterFilter::default(), Some("nonsense"), 10)
            .unwrap_err();
        assert!(matches!(error, StoreError::InvalidCursor(_)));
    }
}
