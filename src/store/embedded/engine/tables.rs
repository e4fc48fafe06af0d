//! One write transaction's tables, opened once, and the changes a write
//! makes to them: jobs and their queue entries, dead letters, events and
//! their references, counters added up in memory until the commit.

use std::time::Duration;

use redb::{ReadableTable, Table, WriteTransaction};

use super::schema::*;
use crate::event::Priority;
use crate::store::embedded::leases::{Leases, Place};
use crate::store::records::{
    dedup_key, Acceptance, DeadLetter, Job, LeaseRequest, NewEvent, StoredEvent, TargetStatus,
    UNROUTED,
};
use crate::store::StoreError;

/// Every table of the store, opened once per write transaction: opening a
/// redb table looks it up and type-checks it, which cost about a third of
/// the writer's instructions when each step opened its own.
pub(super) struct Tables<'t> {
    pub(super) dedup: Table<'t, &'static str, u64>,
    pub(super) dedup_ids: Table<'t, &'static str, (u64, u64)>,
    pub(super) events: Table<'t, u64, &'static [u8]>,
    pub(super) bodies: Table<'t, u64, &'static [u8]>,
    pub(super) by_id: Table<'t, (&'static str, &'static str), u64>,
    pub(super) finished: Table<'t, u64, (u64, u64)>,
    pub(super) refs: Table<'t, u64, u64>,
    pub(super) jobs: Table<'t, u64, &'static [u8]>,
    queue: Table<'t, (u8, &'static str, u64, u64), ()>,
    queued: Table<'t, (u8, &'static str), u64>,
    dead: Table<'t, u64, &'static [u8]>,
    dead_order: Table<'t, (u64, u64), ()>,
    pub(super) counters: Table<'t, &'static str, u64>,
    /// Changes to `queued` and `counters` not written yet: added up here and
    /// written by `write_counts`, before a lease reads them and before the
    /// commit.
    counts: Vec<(Count, i64)>,
    /// The store refuses new events for want of room: a retry does not
    /// grow its job's history (`Job::record_in_place`).
    pub(super) full: bool,
    /// The event log is kept (`store.history.enabled`): an event no job
    /// refers to any more stays, listed as finished, until retention.
    pub(super) history: bool,
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
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            dedup: txn.open_table(DEDUP).map_err(failed)?,
            dedup_ids: txn.open_table(DEDUP_IDS).map_err(failed)?,
            events: txn.open_table(EVENTS).map_err(failed)?,
            bodies: txn.open_table(BODIES).map_err(failed)?,
            by_id: txn.open_table(BY_ID).map_err(failed)?,
            finished: txn.open_table(FINISHED).map_err(failed)?,
            refs: txn.open_table(REFS).map_err(failed)?,
            jobs: txn.open_table(JOBS).map_err(failed)?,
            queue: txn.open_table(QUEUE).map_err(failed)?,
            queued: txn.open_table(QUEUED).map_err(failed)?,
            dead: txn.open_table(DEAD).map_err(failed)?,
            dead_order: txn.open_table(DEAD_ORDER).map_err(failed)?,
            counters: txn.open_table(COUNTERS).map_err(failed)?,
            counts: Vec::new(),
            full: false,
            history: false,
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
    pub(super) fn write_counts(&mut self) -> Result<(), StoreError> {
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
    pub(super) fn lease(
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
    pub(super) fn set_aside(
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

    /// A counter of the COUNTERS table as committed so far (0 when absent).
    pub(super) fn counter(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self
            .counters
            .get(key)
            .map_err(failed)?
            .map_or(0, |v| v.value()))
    }

    /// Takes `count` numbers of the sequence events and jobs share.
    pub(super) fn next_sequence(&mut self, count: u64) -> Result<u64, StoreError> {
        let next = self
            .counters
            .get("sequence")
            .map_err(failed)?
            .map_or(1, |v| v.value());
        self.counters
            .insert("sequence", next + count)
            .map_err(failed)?;
        Ok(next)
    }

    fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let value = self.jobs.get(id).map_err(failed)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// The job as stored, if `held` is still its current lease.
    pub(super) fn held_job(&self, held: &Job, leases: &Leases) -> Result<Job, StoreError> {
        leases.check(held)?;
        self.job(held.id)?.ok_or(StoreError::LeaseLost(held.id))
    }

    /// Adds `delta` to a counter of the COUNTERS table.
    pub(super) fn bump(&mut self, key: &str, delta: i64) {
        self.count(
            |c| matches!(c, Count::Counter(k) if k == key),
            || Count::Counter(key.to_string()),
            delta,
        );
    }

    /// A new job: its records and one more in its priority's depth (kept as
    /// a counter so the gauges never scan the queue).
    pub(super) fn insert_job(&mut self, job: &Job) -> Result<(), StoreError> {
        self.insert_job_records(job)?;
        self.count_queued(job, 1);
        self.bump(depth_key(job.priority), 1);
        Ok(())
    }

    pub(super) fn remove_job(&mut self, job: &Job) -> Result<(), StoreError> {
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
    pub(super) fn remove_job_at(&mut self, id: u64, place: &Place) -> Result<(), StoreError> {
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
    pub(super) fn replace_job(&mut self, old: &Job, new: &Job) -> Result<(), StoreError> {
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

    pub(super) fn insert_dead(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.dead
            .insert(letter.job.id, encode(letter).as_slice())
            .map_err(failed)?;
        self.dead_order
            .insert((letter.dead_at_ms, letter.job.id), ())
            .map_err(failed)?;
        self.bump(&dead_key(&letter.job.webhook), 1);
        Ok(())
    }

    pub(super) fn remove_dead(&mut self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
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

    /// One job or dead letter no longer refers to the event; `outcome` is
    /// how that job ended, for the event log. After the last reference the
    /// event is finished: kept and listed as such while the event log is,
    /// otherwise removed with its body.
    pub(super) fn release_event(
        &mut self,
        event: u64,
        now_ms: u64,
        outcome: Option<(&Job, TargetStatus)>,
    ) -> Result<(), StoreError> {
        let last = self.drop_ref(event)?;
        if !self.history {
            return if last {
                self.remove_event(event)
            } else {
                Ok(())
            };
        }
        let Some(mut stored) = self.stored_if_readable(event)? else {
            return Ok(());
        };
        if let Some((job, status)) = outcome {
            stored.finish_job(job, status);
        }
        if last {
            stored.finished_at_ms = Some(now_ms);
        }
        let record = self.put_event(event, &stored)?;
        if last {
            // Its bytes (record and body), for retention's size bound: the
            // body is read only for an event that finishes.
            let body = self
                .bodies
                .get(event)
                .map_err(failed)?
                .map_or(0, |b| b.value().len());
            self.finished
                .insert(event, (stored.received_at_ms, (record + body) as u64))
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Takes one reference off the event; true when it was the last. An
    /// event without a count has one (counts are written only for events
    /// with more, and an earlier version reads a missing count the same
    /// way); a finished one has none left to take.
    fn drop_ref(&mut self, event: u64) -> Result<bool, StoreError> {
        if self.finished.get(event).map_err(failed)?.is_some() {
            return Ok(false);
        }
        let count = self.refs.get(event).map_err(failed)?.map(|v| v.value());
        if let Some(count) = count {
            if count > 1 {
                // Kept even at 1, which any version reads as one reference.
                self.refs.insert(event, count - 1).map_err(failed)?;
                return Ok(false);
            }
            self.refs.remove(event).map_err(failed)?;
        }
        Ok(true)
    }

    /// One more job refers to the event (a redelivery): a finished event
    /// is pending again.
    pub(super) fn add_ref(
        &mut self,
        event: u64,
        stored: &mut StoredEvent,
    ) -> Result<(), StoreError> {
        if self.finished.remove(event).map_err(failed)?.is_some() {
            stored.finished_at_ms = None;
            return Ok(());
        }
        let count = self
            .refs
            .get(event)
            .map_err(failed)?
            .map_or(1, |v| v.value());
        self.refs.insert(event, count + 1).map_err(failed)?;
        Ok(())
    }

    /// Removes an event, its body and its lookup by id.
    pub(super) fn remove_event(&mut self, event: u64) -> Result<(), StoreError> {
        let record = match self.events.remove(event).map_err(failed)? {
            Some(record) => record.value().to_vec(),
            None => return Ok(()),
        };
        let body_len = match self.bodies.remove(event).map_err(failed)? {
            Some(body) => body.value().len(),
            None => 0,
        };
        self.finished.remove(event).map_err(failed)?;
        self.bump(HISTORY_EVENTS, -1);
        self.bump(HISTORY_BYTES, -((record.len() + body_len) as i64));
        if let Ok(stored) = decode::<StoredEvent>(&record) {
            let key = (stored.webhook.as_str(), stored.id.as_str());
            let newest = self.by_id.get(key).map_err(failed)?.map(|v| v.value());
            if newest == Some(event) {
                self.by_id.remove(key).map_err(failed)?;
            }
        }
        Ok(())
    }

    /// The event's record, if it is kept.
    pub(super) fn stored(&self, event: u64) -> Result<Option<StoredEvent>, StoreError> {
        let value = self.events.get(event).map_err(failed)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Writes the event's record over the one kept; the record's length.
    pub(super) fn put_event(
        &mut self,
        event: u64,
        stored: &StoredEvent,
    ) -> Result<usize, StoreError> {
        let record = encode(stored);
        let old = self
            .events
            .insert(event, record.as_slice())
            .map_err(failed)?
            .map_or(0, |v| v.value().len());
        self.bump(HISTORY_BYTES, record.len() as i64 - old as i64);
        Ok(record.len())
    }

    /// The event's record; None when it is gone or cannot be read: the
    /// log is what an operator reads, and an unreadable record must not
    /// hold up the queue's work.
    fn stored_if_readable(&self, event: u64) -> Result<Option<StoredEvent>, StoreError> {
        match self.stored(event) {
            Err(StoreError::Corrupt(_)) => Ok(None),
            other => other,
        }
    }

    /// Records in the event's record how one of its jobs stands now (a
    /// dead letter, a replay), while the event log is kept.
    pub(super) fn record_outcome(
        &mut self,
        job: &Job,
        status: TargetStatus,
    ) -> Result<(), StoreError> {
        if !self.history {
            return Ok(());
        }
        let Some(mut stored) = self.stored_if_readable(job.event)? else {
            return Ok(());
        };
        if status == TargetStatus::Pending {
            let outcome = stored.outcome_mut(&job.target);
            outcome.status = status;
            outcome.job = Some(job.id);
        } else {
            stored.finish_job(job, status);
        }
        self.put_event(job.event, &stored).map(drop)
    }

    /// One event's records.
    pub(super) fn insert(
        &mut self,
        event: &NewEvent<'_>,
        now_ms: u64,
        dedup_window: Duration,
    ) -> Result<Acceptance, StoreError> {
        let key = dedup_key(event.webhook, &event.meta.dedup);
        let seen_at = match self.dedup_ids.get(key.as_str()).map_err(failed)? {
            Some(seen) => Some(seen.value().0),
            None => self
                .dedup
                .get(key.as_str())
                .map_err(failed)?
                .map(|v| v.value()),
        };
        if let Some(seen_at) = seen_at {
            if now_ms.saturating_sub(seen_at) < dedup_window.as_millis() as u64 {
                return Ok(Acceptance::Duplicate);
            }
        }
        // One number per event and per job: a job's id never repeats.
        let sequence = self.next_sequence(1 + event.meta.targets.len().max(1) as u64)?;
        self.dedup_ids
            .insert(key.as_str(), (now_ms, sequence))
            .map_err(failed)?;
        let mut stored = event.stored(now_ms);
        for (offset, outcome) in stored.targets.iter_mut().enumerate() {
            outcome.job = Some(sequence + 1 + offset as u64);
        }
        let record = encode(&stored);
        self.events
            .insert(sequence, record.as_slice())
            .map_err(failed)?;
        self.bodies.insert(sequence, event.body).map_err(failed)?;
        if event.meta.dedup != event.meta.id.as_str() {
            self.by_id
                .insert((event.webhook.as_str(), event.meta.id.as_str()), sequence)
                .map_err(failed)?;
        }
        self.bump(HISTORY_EVENTS, 1);
        self.bump(HISTORY_BYTES, (record.len() + event.body.len()) as i64);
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
