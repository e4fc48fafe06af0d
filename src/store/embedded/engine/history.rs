//! The event log in the embedded store: events stay after their last job
//! (listed in FINISHED), read newest first by sequence (which grows with
//! acceptance), looked up by (webhook, id), queued again by an operator,
//! and dropped oldest first by retention. An event's record holds each
//! target's outcome and finished attempts, so a list reads one record per
//! event and an outcome is an update of it.

use redb::{ReadableDatabase, ReadableTable};

use super::schema::*;
use super::tables::Tables;
use super::LocalStore;
use crate::store::history::{
    cursor, parse_cursor, EventDetail, EventFilter, EventPage, HistoryLimits, HistoryUsage,
    Redelivered, Tally,
};
use crate::store::records::{dedup_key, Job, StoredEvent, TargetStatus, UNROUTED};
use crate::store::StoreError;

/// The most finished events one retention pass drops in a transaction, so
/// that the writer never waits long behind it.
pub const PRUNE_BATCH: usize = 1_000;

impl LocalStore {
    /// Keeps the event log within `limits`, or (None) removes each event
    /// with its last job as before.
    pub fn with_history(mut self, limits: Option<HistoryLimits>) -> Self {
        self.history = limits;
        self
    }

    /// Counts the events of a file written before the log kept counts (once).
    pub(super) fn count_history(&self) -> Result<(), StoreError> {
        self.write(true, |tables| {
            if tables.counter(HISTORY_COUNTED)? != 0 {
                return Ok(());
            }
            let (mut events, mut bytes) = (0i64, 0i64);
            for entry in tables.events.iter().map_err(failed)? {
                let (sequence, record) = entry.map_err(failed)?;
                let body = tables
                    .bodies
                    .get(sequence.value())
                    .map_err(failed)?
                    .map_or(0, |b| b.value().len());
                events += 1;
                bytes += (record.value().len() + body) as i64;
            }
            tables.bump(HISTORY_EVENTS, events);
            tables.bump(HISTORY_BYTES, bytes);
            tables.bump(HISTORY_COUNTED, 1);
            Ok(())
        })
    }

    pub fn history_usage(&self) -> Result<HistoryUsage, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let counters = txn.open_table(COUNTERS).map_err(failed)?;
        let get = |key: &str| -> Result<u64, StoreError> {
            Ok(counters.get(key).map_err(failed)?.map_or(0, |v| v.value()))
        };
        Ok(HistoryUsage {
            events: get(HISTORY_EVENTS)?,
            bytes: get(HISTORY_BYTES)?,
        })
    }

    /// A page of the log, newest first, below `cursor`.
    pub fn events(
        &self,
        filter: &EventFilter,
        cursor_text: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let below = cursor_text.map(parse_cursor).transpose()?;
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let events = txn.open_table(EVENTS).map_err(failed)?;
        let page = scan(&events, filter, below, limit)?;
        // The total counts from the newest event, wherever this page is.
        let counted = match below {
            None => None,
            Some(_) => Some(scan(&events, filter, None, 0)?),
        };
        let tally = counted.as_ref().map_or(&page.tally, |c| &c.tally);
        let oldest_ms = match events.first().map_err(failed)? {
            Some((_, record)) if tally.cut_short() => {
                decode::<StoredEvent>(record.value()).map_or(0, |e| e.received_at_ms)
            }
            _ => 0,
        };
        let total_estimate = tally.estimate(filter.since_ms.unwrap_or(0).max(oldest_ms));
        Ok(EventPage {
            next: page.next.map(cursor),
            items: page.items,
            total_estimate,
        })
    }

    /// The newest event `id` of `source`, with its body and its live jobs.
    pub fn event_detail(&self, source: &str, id: &str) -> Result<Option<EventDetail>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let events = txn.open_table(EVENTS).map_err(failed)?;
        // The event whose dedup key is its id, else the lookup by id.
        let dedup_ids = txn.open_table(DEDUP_IDS).map_err(failed)?;
        let by_dedup = dedup_ids
            .get(dedup_key(source, id).as_str())
            .map_err(failed)?
            .map(|v| v.value().1);
        let by_id = txn.open_table(BY_ID).map_err(failed)?;
        let by_id = by_id.get((source, id)).map_err(failed)?.map(|v| v.value());
        let mut found = None;
        for sequence in by_dedup.into_iter().chain(by_id) {
            let Some(record) = events.get(sequence).map_err(failed)? else {
                continue;
            };
            let event: StoredEvent = decode(record.value())?;
            // A dedup key that is a digest never reads as an id, but a
            // provider's id could look like one: the record decides.
            if event.webhook.as_str() == source && event.id.as_str() == id {
                found = Some((sequence, event));
                break;
            }
        }
        let Some((sequence, event)) = found else {
            return Ok(None);
        };
        let bodies = txn.open_table(BODIES).map_err(failed)?;
        let body = bodies
            .get(sequence)
            .map_err(failed)?
            .map_or_else(Vec::new, |b| b.value().to_vec());
        let jobs_table = txn.open_table(JOBS).map_err(failed)?;
        let mut jobs = Vec::new();
        for outcome in &event.targets {
            let Some(job) = outcome
                .job
                .filter(|_| outcome.status == TargetStatus::Pending)
            else {
                continue;
            };
            if let Some(value) = jobs_table.get(job).map_err(failed)? {
                if let Ok(job) = decode::<Job>(value.value()) {
                    jobs.push(job);
                }
            }
        }
        Ok(Some(EventDetail {
            sequence,
            event,
            body,
            jobs,
        }))
    }

    /// Queues event `sequence` again, due now, for `target` or every
    /// target; how many jobs were queued, or None when it is not kept.
    pub fn redeliver(
        &self,
        sequence: u64,
        target: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.write(true, |tables| {
            redeliver_event(tables, sequence, target, now_ms)
        })
    }

    /// Every event the filter matches, counted (`dry_run`, or more than
    /// `max`) or queued again for its targets (the filter's `target` only,
    /// when it names one).
    pub fn redeliver_matching(
        &self,
        filter: &EventFilter,
        max: u64,
        dry_run: bool,
        now_ms: u64,
    ) -> Result<Redelivered, StoreError> {
        let matched = {
            let db = self.db()?;
            let txn = db.begin_read().map_err(failed)?;
            let events = txn.open_table(EVENTS).map_err(failed)?;
            matching(&events, filter)?
        };
        if dry_run || matched.len() as u64 > max {
            return Ok(Redelivered::Matched(matched.len() as u64));
        }
        self.write(true, |tables| {
            // Matched again inside the write: exactly what matches now.
            let mut queued = 0;
            for sequence in matching(&tables.events, filter)? {
                let target = filter.target.as_deref();
                if redeliver_event(tables, sequence, target, now_ms)?.unwrap_or(0) > 0 {
                    queued += 1;
                }
            }
            Ok(Redelivered::Queued(queued))
        })
    }

    /// Drops finished events, oldest first, while they are older than the
    /// retention, the log is over its size, or the store is past
    /// [`HISTORY_SHARE`](crate::store::history::HISTORY_SHARE) of its capacity (the log
    /// gives way to new events); at most
    /// [`PRUNE_BATCH`] per call. How many went.
    pub fn prune_history(&self, now_ms: u64) -> Result<u64, StoreError> {
        let Some(limits) = self.history else {
            return Ok(0);
        };
        let pressed = self.crowded.load(std::sync::atomic::Ordering::Relaxed);
        let expired_before = now_ms.saturating_sub(limits.retention.as_millis() as u64);
        self.write(true, |tables| {
            let mut bytes = tables.counter(HISTORY_BYTES)?;
            let mut oldest = Vec::new();
            for entry in tables.finished.iter().map_err(failed)?.take(PRUNE_BATCH) {
                let (sequence, value) = entry.map_err(failed)?;
                let (received_ms, size) = value.value();
                if received_ms >= expired_before && bytes <= limits.max_size && !pressed {
                    break;
                }
                bytes = bytes.saturating_sub(size);
                oldest.push(sequence.value());
            }
            for sequence in &oldest {
                tables.remove_event(*sequence)?;
            }
            Ok(oldest.len() as u64)
        })
    }
}

/// What one read of the log found.
#[derive(Default)]
struct Scan {
    items: Vec<(u64, StoredEvent)>,
    /// The sequence to go on below, when the page is full or the budget
    /// ran out before the end.
    next: Option<u64>,
    tally: Tally,
}

/// Reads the log newest first below `below`, keeping `limit` matches and
/// counting further matches within the budget.
fn scan(
    events: &impl ReadableTable<u64, &'static [u8]>,
    filter: &EventFilter,
    below: Option<u64>,
    limit: usize,
) -> Result<Scan, StoreError> {
    let mut found = Scan::default();
    let range = events.range(..below.unwrap_or(u64::MAX)).map_err(failed)?;
    for entry in range.rev() {
        let (sequence, record) = entry.map_err(failed)?;
        let sequence = sequence.value();
        if found.tally.spent() {
            if found.items.len() < limit {
                found.next = Some(sequence + 1);
            }
            break;
        }
        // One unreadable record is passed over, not the whole log.
        let Ok(event) = decode::<StoredEvent>(record.value()) else {
            continue;
        };
        found.tally.read(event.received_at_ms);
        if !filter.reaches_back_to(event.received_at_ms) {
            break;
        }
        if !filter.matches(&event) {
            continue;
        }
        found.tally.matched();
        if found.items.len() < limit {
            found.items.push((sequence, event));
        } else if found.next.is_none() {
            found.next = found.items.last().map(|(s, _)| *s);
        }
    }
    Ok(found)
}

/// Every sequence the filter matches, newest first, the whole log read.
fn matching(
    events: &impl ReadableTable<u64, &'static [u8]>,
    filter: &EventFilter,
) -> Result<Vec<u64>, StoreError> {
    let mut found = Vec::new();
    for entry in events.iter().map_err(failed)?.rev() {
        let (sequence, record) = entry.map_err(failed)?;
        let Ok(event) = decode::<StoredEvent>(record.value()) else {
            continue;
        };
        if !filter.reaches_back_to(event.received_at_ms) {
            break;
        }
        if filter.matches(&event) {
            found.push(sequence.value());
        }
    }
    Ok(found)
}

/// Queues event `sequence` again for `target` or each of its finished
/// targets: a dead letter is replayed, a delivered target gets a new job; a
/// target still waiting is left as it is. Jobs queued, or None when the
/// event is not kept.
fn redeliver_event(
    tables: &mut Tables<'_>,
    sequence: u64,
    target: Option<&str>,
    now_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let Some(mut stored) = tables.stored(sequence)? else {
        return Ok(None);
    };
    let mut queued = 0;
    for index in 0..stored.targets.len() {
        let outcome = &stored.targets[index];
        if outcome.target == UNROUTED || target.is_some_and(|t| outcome.target != *t) {
            continue;
        }
        // A target still waiting keeps its job: its next attempt is already
        // scheduled (and may be in flight).
        if outcome.status == TargetStatus::Pending {
            continue;
        }
        let letter = match outcome.job {
            Some(id) if outcome.status == TargetStatus::Dead => tables.remove_dead(id)?,
            _ => None,
        };
        let job = match letter {
            Some(letter) => {
                let job = letter.job.redelivered(now_ms);
                tables.insert_job(&job)?;
                job
            }
            // Delivered, or its dead letter was deleted: a new job.
            None => {
                let id = tables.next_sequence(1)?;
                let target = &stored.targets[index].target;
                let job = stored.redelivery_job(id, sequence, target, now_ms);
                tables.insert_job(&job)?;
                tables.add_ref(sequence, &mut stored)?;
                job
            }
        };
        let outcome = &mut stored.targets[index];
        outcome.status = TargetStatus::Pending;
        outcome.job = Some(job.id);
        queued += 1;
    }
    if queued > 0 {
        tables.put_event(sequence, &stored)?;
    }
    Ok(Some(queued))
}
