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
//!
//! Here: opening the file, committing, and the reads. `schema` holds the
//! tables, their keys and encodings; `tables` one write transaction's
//! tables and what a write changes in them; `write` the hot path's writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction,
};

use crate::event::Priority;
use crate::store::history::{HistoryLimits, HISTORY_SHARE};
use crate::store::records::{Acceptance, Job, LeaseRequest, NewEvent, QueueDepth, StoredEvent};
use crate::store::space::RESUME_AT;
use crate::store::StoreError;
use crate::time::unix_time;

use super::leases::Leases;

mod dead_letters;
mod history;
#[cfg(test)]
mod history_tests;
mod recover;
mod schema;
mod tables;
#[cfg(test)]
mod tests;
mod write;

pub use history::PRUNE_BATCH;
use schema::*;
use tables::Tables;
pub use write::{Write, Written};

/// The longest a non-fsynced commit waits for the next fsync.
pub const DURABLE_EVERY: Duration = Duration::from_secs(1);

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
    /// The store holds more than [`HISTORY_SHARE`] of its capacity: the
    /// event log gives way.
    crowded: AtomicBool,
    /// The event log is kept, within these limits (`store.history`).
    history: Option<HistoryLimits>,
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
            crowded: AtomicBool::new(false),
            history: Some(HistoryLimits::default()),
        };
        store.create_tables_and_release_leases()?;
        store.count_history()?;
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

    /// Whether new events are refused for want of room, and how full the
    /// store is (the writer's space gate says): near the low-water mark
    /// every commit is fsynced, and past [`HISTORY_SHARE`] the event log
    /// drops finished events whatever their age.
    pub fn set_room(&self, full: bool, fullness: f64) {
        self.full.store(full, Ordering::Relaxed);
        self.tight
            .store(full || fullness >= RESUME_AT, Ordering::Relaxed);
        self.crowded
            .store(full || fullness >= HISTORY_SHARE, Ordering::Relaxed);
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
            tables.history = self.history.is_some();
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
            let before =
                tables.dedup.len().map_err(failed)? + tables.dedup_ids.len().map_err(failed)?;
            tables
                .dedup
                .retain(|_, seen_at| seen_at >= cutoff)
                .map_err(failed)?;
            // A key past the window that finds a kept event by id hands
            // that lookup to BY_ID as it goes.
            let (events, by_id) = (&tables.events, &mut tables.by_id);
            let mut failure = None;
            tables
                .dedup_ids
                .retain(|key, (seen_at, sequence)| {
                    if seen_at >= cutoff {
                        return true;
                    }
                    match keep_lookup_by_id(events, by_id, key, sequence) {
                        Ok(()) => false,
                        Err(error) => {
                            failure.get_or_insert(error);
                            true
                        }
                    }
                })
                .map_err(failed)?;
            if let Some(error) = failure {
                return Err(error);
            }
            let after =
                tables.dedup.len().map_err(failed)? + tables.dedup_ids.len().map_err(failed)?;
            Ok(before - after)
        })
    }
}

/// Where the expiring dedup key `key` is the id of the kept event
/// `sequence`, that event's lookup by id moves to BY_ID (unless it holds a
/// newer event with that id).
fn keep_lookup_by_id(
    events: &redb::Table<'_, u64, &'static [u8]>,
    by_id: &mut redb::Table<'_, (&'static str, &'static str), u64>,
    key: &str,
    sequence: u64,
) -> Result<(), StoreError> {
    let Some(record) = events.get(sequence).map_err(failed)? else {
        return Ok(());
    };
    // An unreadable record has no id to be found by.
    let Ok(event) = decode::<StoredEvent>(record.value()) else {
        return Ok(());
    };
    drop(record);
    if crate::store::records::dedup_key(&event.webhook, &event.id) != key {
        return Ok(());
    }
    let id = (event.webhook.as_str(), event.id.as_str());
    let newer = by_id.get(id).map_err(failed)?.map(|v| v.value());
    if newer.is_none_or(|newer| newer < sequence) {
        by_id.insert(id, sequence).map_err(failed)?;
    }
    Ok(())
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
