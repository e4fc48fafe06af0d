//! The file's layout: its tables, their keys, and how records are
//! encoded in them. What every other part of the engine agrees on.

use redb::{ReadableTable, Table, TableDefinition};
use serde::de::DeserializeOwned;

use crate::event::Priority;
use crate::store::records::Job;
use crate::store::StoreError;

/// Dedup key -> when it was last accepted (ms), written by earlier
/// versions: still read, pruned like the next one, no longer written.
pub(super) const DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");
/// Dedup key -> (when it was last accepted, ms; the sequence of that
/// event). Where the dedup key is the event's id (its signed bytes carry
/// it) this is also the event log's lookup by id: one B-tree leaf per
/// accepted event instead of two (each a random key, so each its own
/// page in the commit: BENCHMARKS "One random key per event fewer").
pub(super) const DEDUP_IDS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("dedup_ids");
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Webhook name -> gap repair's state (its recovery's own encoding).
pub(super) const RECOVER: TableDefinition<&str, &[u8]> = TableDefinition::new("recover_state");
pub(super) const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// Jobs and dead letters still referring to an event.
pub(super) const REFS: TableDefinition<u64, u64> = TableDefinition::new("event_refs");
pub(super) const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// (priority rank, target, due ms, job id): per lane and target, the order
/// jobs are leased in. One queue per target, so that a target at its cap
/// with a long backlog never hides the others' jobs behind its own.
pub(super) const QUEUE: TableDefinition<(u8, &str, u64, u64), ()> = TableDefinition::new("queue");
/// (priority rank, target) -> jobs queued: the targets a lease looks at.
pub(super) const QUEUED: TableDefinition<(u8, &str), u64> = TableDefinition::new("queued_targets");
/// (received ms, job id) of every waiting job, kept by earlier versions:
/// emptied when the file is opened (the jobs table's order is the same).
pub(super) const AGE: TableDefinition<(u64, u64), ()> = TableDefinition::new("age");
pub(super) const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// (dead at ms, job id): the dead-letter list's order.
pub(super) const DEAD_ORDER: TableDefinition<(u64, u64), ()> = TableDefinition::new("dead_order");
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// (webhook, event id) -> the sequence of the newest event with that id,
/// for events whose dedup key is not their id (DEDUP_IDS finds the others),
/// and for every event of a file written before DEDUP_IDS.
pub(super) const BY_ID: TableDefinition<(&str, &str), u64> = TableDefinition::new("events_by_id");
/// Events that no job or dead letter refers to any more, kept by the event
/// log: sequence -> (received ms, bytes). Retention drops them from the
/// first (the oldest) on; an event listed here has no references.
pub(super) const FINISHED: TableDefinition<u64, (u64, u64)> =
    TableDefinition::new("finished_events");

/// COUNTERS keys: events kept (pending and finished alike) and their bytes
/// (record and body), for the `sidecar_store_history_*` gauges and
/// `store.history.max_size`.
pub(super) const HISTORY_EVENTS: &str = "history_events";
pub(super) const HISTORY_BYTES: &str = "history_bytes";
/// Set once the two counts above cover the events of a file written
/// before them (`LocalStore::count_history`).
pub(super) const HISTORY_COUNTED: &str = "history_counted";

pub(super) fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {error}"))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialize")
}

pub(super) fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

pub(super) fn priority_of(rank: u8) -> Priority {
    match rank {
        0 => Priority::High,
        2 => Priority::Low,
        _ => Priority::Normal,
    }
}

pub(super) fn queue_key(job: &Job) -> (u8, &str, u64, u64) {
    (rank(job.priority), job.target.as_str(), job.due_ms, job.id)
}

/// Adds `delta` to a count kept in `table` under `key`: a missing count is
/// 0, and a count back at 0 is removed.
pub(super) fn add_count<'k, K: redb::Key + 'static>(
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

pub(super) fn depth_key(priority: Priority) -> &'static str {
    match rank(priority) {
        0 => "depth:0",
        1 => "depth:1",
        _ => "depth:2",
    }
}

pub(super) fn dead_key(webhook: &str) -> String {
    format!("dead:{webhook}")
}
