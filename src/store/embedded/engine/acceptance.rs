//! Accepting into the event log ahead of the tables: an event's dedup key
//! is checked against the tables (as committed, fsynced or not) and
//! against the events accepted but not yet applied, its numbers are taken,
//! its record is appended, and once the batch's records are fdatasynced it
//! is accepted. Applying it to the tables (`Write::Apply`) comes after, in
//! the writer's next batch: an acknowledgement never waits for redb's
//! commit, nor for the fsync of its pages once a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use redb::ReadableDatabase;

use super::logged::{self, ACCEPTED};
use super::schema::{encode, failed, DEDUP};
use super::LocalStore;
use crate::store::embedded::log::Place;
use crate::store::records::{dedup_key, Acceptance, OwnedEvent};
use crate::store::StoreError;

/// Events accepted into the log and not yet applied to the tables: dedup
/// key -> (accepted at ms, sequence).
#[derive(Default)]
pub struct Unapplied(HashMap<String, (u64, u64)>);

/// An event accepted into the log: what the writer applies.
#[derive(Debug, Clone, Copy)]
pub struct Logged {
    pub sequence: u64,
    pub place: Place,
}

/// One event accepted into the log and not yet applied to the tables:
/// counted until the writer has applied it or given it up (a failed batch:
/// the next transaction applies the log again).
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An event's acceptance into the log and, when it is new, where it was
/// logged and its ticket.
pub type LogAcceptance = (Acceptance, Option<(Logged, Ticket)>);

/// The acceptor's traffic with the log, as the tables' writer sees it.
#[derive(Default)]
pub(super) struct InFlight {
    /// A batch is being appended: the log's end may hold records not yet
    /// counted below.
    pub appending: AtomicBool,
    /// Events accepted into the log whose tickets are alive.
    pub unapplied: Arc<AtomicUsize>,
    /// Above the highest sequence accepted into the log (its jobs too).
    pub accepted_below: AtomicU64,
    /// Above the highest sequence of those applied to the tables (by the
    /// writer, in the acceptor's order, or by a replay).
    pub applied_below: AtomicU64,
}

impl LocalStore {
    /// Accepts a batch into the log: per event its acceptance and, for a
    /// new one, where it was logged. None when the store has no log (it
    /// is held in memory): accepts then go through the writer's
    /// transactions. An error fails the whole batch (nothing in it was
    /// accepted).
    pub fn accept_into_log(
        &self,
        events: &[OwnedEvent],
    ) -> Option<Result<Vec<LogAcceptance>, StoreError>> {
        let log = self.log.get()?;
        // Set before the records go in and cleared once each has its
        // ticket: the writer never takes the log's end for applied while
        // a record before it is neither (`InFlight`).
        self.in_flight.appending.store(true, Ordering::SeqCst);
        let accepted = self.accept_into(log, events);
        self.in_flight.appending.store(false, Ordering::SeqCst);
        Some(accepted)
    }

    /// Whether every event accepted into the log is applied to the tables.
    pub(super) fn log_settled(&self) -> bool {
        !self.in_flight.appending.load(Ordering::SeqCst)
            && self.in_flight.unapplied.load(Ordering::SeqCst) == 0
    }

    /// Waits (at most 2 s) until what was accepted into the log before the
    /// call is applied: reads then see every event acknowledged so far.
    /// The writer applies in the acceptor's order, so the last one
    /// applied stands for all before it.
    pub fn settle(&self) {
        let target = self.in_flight.accepted_below.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.in_flight.applied_below.load(Ordering::SeqCst) < target
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The tables hold every accepted event below `below`.
    pub(super) fn applied_below(&self, below: u64) {
        self.in_flight
            .applied_below
            .fetch_max(below, Ordering::SeqCst);
    }

    fn accept_into(
        &self,
        log: &crate::store::embedded::log::SegmentLog,
        events: &[OwnedEvent],
    ) -> Result<Vec<LogAcceptance>, StoreError> {
        let keys: Vec<String> = events
            .iter()
            .map(|e| dedup_key(&e.webhook, &e.meta.dedup))
            .collect();
        let committed = self.seen_at(&keys)?;
        let mut unapplied = self.unapplied.lock().unwrap_or_else(|e| e.into_inner());
        let mut in_batch: HashMap<&str, u64> = HashMap::new();
        // Per event: its sequence and payload, or None for a duplicate.
        let mut accepted: Vec<Option<(u64, Vec<u8>)>> = Vec::with_capacity(events.len());
        for ((event, key), committed) in events.iter().zip(&keys).zip(committed) {
            let window = event.dedup_window.as_millis() as u64;
            let recent = |seen_at: u64| event.now_ms.saturating_sub(seen_at) < window;
            let seen = committed
                .into_iter()
                .chain(unapplied.0.get(key).map(|v| v.0));
            let seen = seen.chain(in_batch.get(key.as_str()).copied());
            if seen.into_iter().any(recent) {
                accepted.push(None);
                continue;
            }
            let borrowed = event.borrowed();
            let jobs = borrowed.meta.targets.len().max(1) as u64;
            let sequence = self.take_sequences(1 + jobs);
            let stored = encode(&logged::stored_with_jobs(&borrowed, sequence, event.now_ms));
            in_batch.insert(key, event.now_ms);
            accepted.push(Some((
                sequence,
                logged::encode_accepted(sequence, &borrowed, &stored),
            )));
        }
        let records: Vec<(u8, &[u8])> = accepted
            .iter()
            .flatten()
            .map(|(_, payload)| (ACCEPTED, payload.as_slice()))
            .collect();
        let mut places = log.append(&records)?.into_iter();
        let mut answers = Vec::with_capacity(events.len());
        for (one, (key, event)) in accepted.iter().zip(keys.iter().zip(events)) {
            let Some((sequence, _)) = one else {
                answers.push((Acceptance::Duplicate, None));
                continue;
            };
            let place = places.next().expect("one place per record appended");
            unapplied.0.insert(key.clone(), (event.now_ms, *sequence));
            let logged = Logged {
                sequence: *sequence,
                place,
            };
            self.in_flight.unapplied.fetch_add(1, Ordering::SeqCst);
            let ticket = Ticket(Arc::clone(&self.in_flight.unapplied));
            let jobs = event.meta.targets.len().max(1) as u64;
            self.in_flight
                .accepted_below
                .fetch_max(sequence + 1 + jobs, Ordering::SeqCst);
            answers.push((Acceptance::Accepted(*sequence), Some((logged, ticket))));
        }
        Ok(answers)
    }

    /// When each key was last accepted, as the tables hold it.
    fn seen_at(&self, keys: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let dedup = txn.open_table(DEDUP).map_err(failed)?;
        keys.iter()
            .map(|key| Ok(dedup.get(key.as_str()).map_err(failed)?.map(|v| v.value())))
            .collect()
    }

    /// Takes `count` numbers of the sequence events and jobs share.
    pub(super) fn take_sequences(&self, count: u64) -> u64 {
        let previous = self
            .sequence_floor
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |next| Some(next.max(1) + count),
            )
            .unwrap_or_else(|next| next);
        previous.max(1)
    }

    /// The tables now hold the events numbered up to `sequence` that were
    /// applied: they no longer need to be remembered apart.
    pub(super) fn forget_unapplied(&self, applied: &[(String, u64)]) {
        let mut unapplied = self.unapplied.lock().unwrap_or_else(|e| e.into_inner());
        for (key, sequence) in applied {
            if unapplied.0.get(key).is_some_and(|(_, s)| s == sequence) {
                unapplied.0.remove(key);
            }
        }
    }

    /// After the log was applied again up to `sequence` (a reopen): every
    /// event numbered below it is in the tables.
    pub(super) fn forget_unapplied_below(&self, sequence: u64) {
        let mut unapplied = self.unapplied.lock().unwrap_or_else(|e| e.into_inner());
        unapplied.0.retain(|_, (_, s)| *s >= sequence);
    }
}
