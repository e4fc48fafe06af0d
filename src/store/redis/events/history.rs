//! The event log in Redis. Per part: `log` (every kept event as a
//! `<received ms:015>.<event:020>` member of a lexically sorted set, so
//! the parts' lists merge newest first by comparing members), `finished`
//! (the same members, for events no job or dead letter refers to any
//! more: retention's list), `by_id` (`<webhook>\x1f<id>` → the newest
//! event number), `outcomes` (`<event>\x1f<target>` → that target's
//! outcome, written by the ack, dead letter, replay or redelivery that
//! changed it: an event's record is never rewritten), `history` (events
//! and bytes kept) and `index` (what dropping an event needs). The accept,
//! ack, dead-letter, replay and delete scripts keep them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use futures_util::future::try_join_all;

use super::{encode, member, parse, record_tail, RedisEventStore, SHARD_SPACE};
use crate::store::history::{
    EventDetail, EventFilter, EventPage, HistoryUsage, Redelivered, Tally, HISTORY_SHARE,
};
use crate::store::records::{Job, StoredEvent, TargetOutcome, TargetStatus, UNROUTED};
use crate::store::redis::scripts::EVENT_KEYS;
use crate::store::{Store, StoreError};

/// Log members read per part and round trip while filling a page.
const BATCH: usize = 100;
/// Finished events one retention round drops per part.
const PRUNE_BATCH: usize = 1_000;

/// An event read from the log: its part, number, member and record with
/// its outcomes applied.
struct Logged {
    shard: usize,
    number: u64,
    member: String,
    event: StoredEvent,
}

/// Where a part's list stands while pages merge.
struct Part {
    shard: usize,
    /// The exclusive bound below which the next batch starts (`+` first).
    below: String,
    read: VecDeque<Logged>,
    done: bool,
}

fn member_parts(member: &str) -> Option<(u64, u64)> {
    let (ms, event) = member.split_once('.')?;
    Some((ms.parse().ok()?, event.parse().ok()?))
}

/// The outcome field of one event's target.
pub fn outcome_field(event: u64, target: &str) -> String {
    format!("{event}\x1f{target}")
}

/// `webhook\x1fid`: the by-id field.
pub fn by_id_field(webhook: &str, id: &str) -> String {
    format!("{webhook}\x1f{id}")
}

impl RedisEventStore {
    pub(super) fn event_keys(&self, shard: usize) -> Vec<String> {
        EVENT_KEYS.iter().map(|k| self.key(shard, k)).collect()
    }

    pub(super) fn history_flag(&self) -> &'static str {
        if self.history.is_some() {
            "1"
        } else {
            ""
        }
    }

    /// How job `job` ended (or stands) for its target, as the log keeps it:
    /// empty without the log. A job that was replayed or redelivered adds
    /// its attempts to those its target's outcome kept.
    pub(super) async fn outcome_text(
        &self,
        job: &Job,
        status: TargetStatus,
    ) -> Result<String, StoreError> {
        if self.history.is_none() {
            return Ok(String::new());
        }
        let own = job.redelivery || job.attempts as usize != job.history.len();
        let kept = if own {
            self.outcome(job.event, &job.target)
                .await?
                .map(|o| o.attempts)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut outcome = TargetOutcome {
            target: job.target.clone(),
            status,
            job: Some(job.id),
            attempts: kept,
        };
        outcome.add_attempts(job);
        Ok(encode(&outcome))
    }

    async fn outcome(&self, event: u64, target: &str) -> Result<Option<TargetOutcome>, StoreError> {
        let Some(shard) = self.shard_of(event) else {
            return Ok(None);
        };
        let mut read = redis::pipe();
        read.hget(self.key(shard, "outcomes"), outcome_field(event, target));
        let (text,): (Option<String>,) = self.query("read", read).await?;
        Ok(text.and_then(|t| parse(&t).ok()))
    }

    /// Records of `numbers` in one part with their outcomes applied (an
    /// unreadable or missing one is None).
    async fn logged(
        &self,
        shard: usize,
        numbers: &[u64],
    ) -> Result<Vec<Option<StoredEvent>>, StoreError> {
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = redis::pipe();
        read.cmd("HMGET")
            .arg(self.key(shard, "events"))
            .arg(numbers);
        let (texts,): (Vec<Option<String>>,) = self.query("read", read).await?;
        let mut events: Vec<Option<StoredEvent>> = texts
            .into_iter()
            .map(|t| t.and_then(|t| parse::<StoredEvent>(&t).ok()))
            .collect();
        let fields: Vec<String> = numbers
            .iter()
            .zip(&events)
            .flat_map(|(number, event)| {
                event.iter().flat_map(move |e| {
                    e.targets
                        .iter()
                        .filter(|t| t.target != UNROUTED)
                        .map(move |t| outcome_field(*number, &t.target))
                })
            })
            .collect();
        if fields.is_empty() {
            return Ok(events);
        }
        let mut read = redis::pipe();
        read.cmd("HMGET")
            .arg(self.key(shard, "outcomes"))
            .arg(&fields);
        let (outcomes,): (Vec<Option<String>>,) = self.query("read", read).await?;
        let outcomes: HashMap<&str, TargetOutcome> = fields
            .iter()
            .zip(outcomes)
            .filter_map(|(field, text)| Some((field.as_str(), parse(&text?).ok()?)))
            .collect();
        for (number, event) in numbers.iter().zip(events.iter_mut()) {
            let Some(event) = event else { continue };
            for target in &mut event.targets {
                if let Some(outcome) = outcomes.get(outcome_field(*number, &target.target).as_str())
                {
                    *target = outcome.clone();
                }
            }
        }
        Ok(events)
    }

    /// The next batch of one part's log below its bound.
    async fn fill(&self, part: &mut Part) -> Result<(), StoreError> {
        let mut range = redis::pipe();
        range
            .cmd("ZREVRANGEBYLEX")
            .arg(self.key(part.shard, "log"))
            .arg(&part.below)
            .arg("-")
            .arg("LIMIT")
            .arg(0)
            .arg(BATCH);
        let (members,): (Vec<String>,) = self.query("read", range).await?;
        part.done = members.len() < BATCH;
        if let Some(last) = members.last() {
            part.below = format!("({last}");
        }
        let parsed: Vec<(String, u64)> = members
            .into_iter()
            .filter_map(|m| member_parts(&m).map(|(_, n)| (m, n)))
            .collect();
        let numbers: Vec<u64> = parsed.iter().map(|(_, n)| *n).collect();
        let events = self.logged(part.shard, &numbers).await?;
        for ((member, number), event) in parsed.into_iter().zip(events) {
            if let Some(event) = event {
                part.read.push_back(Logged {
                    shard: part.shard,
                    number,
                    member,
                    event,
                });
            }
        }
        Ok(())
    }

    /// Walks every part's log newest first from `below` (a member,
    /// exclusive), merged; `visit` says whether to go on.
    async fn walk(
        &self,
        below: Option<&str>,
        mut visit: impl FnMut(Logged) -> bool,
    ) -> Result<bool, StoreError> {
        let start = below.map_or_else(|| "+".to_string(), |b| format!("({b}"));
        let mut parts: Vec<Part> = (0..self.shards.len())
            .map(|shard| Part {
                shard,
                below: start.clone(),
                read: VecDeque::new(),
                done: false,
            })
            .collect();
        loop {
            let empty: Vec<&mut Part> = parts
                .iter_mut()
                .filter(|p| p.read.is_empty() && !p.done)
                .collect();
            if !empty.is_empty() {
                try_join_all(empty.into_iter().map(|p| self.fill(p))).await?;
                continue;
            }
            // The newest head of all: every part has one or is done.
            let Some(part) = parts
                .iter_mut()
                .filter(|p| !p.read.is_empty())
                .max_by(|a, b| a.read[0].member.cmp(&b.read[0].member))
            else {
                return Ok(true);
            };
            let next = part.read.pop_front().expect("a head");
            if !visit(next) {
                return Ok(false);
            }
        }
    }

    pub(super) async fn list_events(
        &self,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        if let Some(cursor) = cursor {
            member_parts(cursor).ok_or_else(|| StoreError::InvalidCursor(cursor.to_string()))?;
        }
        let page = self.scan(filter, cursor, limit).await?;
        // The total counts from the newest event, wherever this page is.
        let counted = match cursor {
            None => None,
            Some(_) => Some(self.scan(filter, None, 0).await?),
        };
        let tally = counted.as_ref().map_or(&page.tally, |c| &c.tally);
        let oldest_ms = if tally.cut_short() {
            self.oldest_logged_ms().await?
        } else {
            0
        };
        let total_estimate = tally.estimate(filter.since_ms.unwrap_or(0).max(oldest_ms));
        Ok(EventPage {
            items: page.items,
            next: page.next,
            total_estimate,
        })
    }

    /// When the oldest event kept in any part was received (0: none).
    async fn oldest_logged_ms(&self) -> Result<u64, StoreError> {
        let firsts: Vec<(Vec<String>,)> = self
            .each_shard(|shard| {
                let mut range = redis::pipe();
                range
                    .cmd("ZRANGEBYLEX")
                    .arg(self.key(shard, "log"))
                    .arg("-")
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(1);
                range
            })
            .await?;
        Ok(firsts
            .iter()
            .flat_map(|(members,)| members.first().and_then(|m| member_parts(m)))
            .map(|(ms, _)| ms)
            .min()
            .unwrap_or(0))
    }

    async fn scan(
        &self,
        filter: &EventFilter,
        below: Option<&str>,
        limit: usize,
    ) -> Result<Scan, StoreError> {
        let mut scan = Scan::default();
        self.walk(below, |logged| {
            if scan.tally.spent() {
                if scan.items.len() < limit {
                    scan.next = Some(logged.member.clone());
                }
                return false;
            }
            let received = logged.event.received_at_ms;
            scan.tally.read(received);
            if !filter.reaches_back_to(received) {
                return false;
            }
            if filter.matches(&logged.event) {
                scan.tally.matched();
                if scan.items.len() < limit {
                    scan.last_member = Some(logged.member.clone());
                    scan.items.push((logged.number, logged.event));
                } else if scan.next.is_none() {
                    scan.next = scan.last_member.clone();
                }
            }
            true
        })
        .await?;
        Ok(scan)
    }

    /// Every kept event the filter matches: (part, number, record).
    async fn matching(&self, filter: &EventFilter) -> Result<Vec<Logged>, StoreError> {
        let mut found = Vec::new();
        self.walk(None, |logged| {
            if !filter.reaches_back_to(logged.event.received_at_ms) {
                return false;
            }
            if filter.matches(&logged.event) {
                found.push(logged);
            }
            true
        })
        .await?;
        Ok(found)
    }

    pub(super) async fn detail(
        &self,
        source: &str,
        id: &str,
    ) -> Result<Option<EventDetail>, StoreError> {
        // The event is in the part of its dedup key, which its id alone
        // does not give: every part is asked.
        let field = by_id_field(source, id);
        let numbers: Vec<(Option<u64>,)> = self
            .each_shard(|shard| {
                let mut read = redis::pipe();
                read.hget(self.key(shard, "by_id"), &field);
                read
            })
            .await?;
        let mut newest: Option<(usize, u64, StoredEvent)> = None;
        for (shard, (number,)) in numbers.into_iter().enumerate() {
            let Some(number) = number else { continue };
            if let Some(Some(event)) = self.logged(shard, &[number]).await?.pop() {
                if newest
                    .as_ref()
                    .is_none_or(|(_, _, n)| n.received_at_ms < event.received_at_ms)
                {
                    newest = Some((shard, number, event));
                }
            }
        }
        let Some((shard, sequence, event)) = newest else {
            return Ok(None);
        };
        let mut read = redis::pipe();
        read.hget(self.key(shard, "bodies"), sequence);
        // A job of the accept follows the event's number in the targets'
        // order; a replay's or redelivery's is in the outcome.
        let live: Vec<String> = event
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.status == TargetStatus::Pending && t.target != UNROUTED)
            .map(|(index, t)| {
                let accepted =
                    (sequence / SHARD_SPACE + 1 + index as u64) * SHARD_SPACE + shard as u64;
                member(t.job.unwrap_or(accepted))
            })
            .collect();
        if !live.is_empty() {
            read.cmd("HMGET").arg(self.key(shard, "jobs")).arg(&live);
        }
        let (body, jobs): (Option<Vec<u8>>, Vec<Option<String>>) = if live.is_empty() {
            let (body,): (Option<Vec<u8>>,) = self.query("read", read).await?;
            (body, Vec::new())
        } else {
            self.query("read", read).await?
        };
        let jobs = jobs
            .into_iter()
            .flatten()
            .filter_map(|text| parse::<Job>(&text).ok())
            .collect();
        Ok(Some(EventDetail {
            sequence,
            event,
            body: body.unwrap_or_default(),
            jobs,
        }))
    }

    /// Queues event `sequence` again for `target` or each finished target.
    pub(super) async fn redeliver_event(
        &self,
        sequence: u64,
        target: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(shard) = self.shard_of(sequence) else {
            return Ok(None);
        };
        let Some(Some(event)) = self.logged(shard, &[sequence]).await?.pop() else {
            return Ok(None);
        };
        self.redeliver_logged(shard, sequence, &event, target, now_ms)
            .await
            .map(Some)
    }

    async fn redeliver_logged(
        &self,
        shard: usize,
        sequence: u64,
        event: &StoredEvent,
        target: Option<&str>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut queued = 0;
        for outcome in &event.targets {
            if outcome.target == UNROUTED
                || outcome.status == TargetStatus::Pending
                || target.is_some_and(|t| outcome.target != *t)
            {
                continue;
            }
            // A dead letter still kept is replayed, marked a redelivery.
            if let (TargetStatus::Dead, Some(id)) = (outcome.status, outcome.job) {
                if let Some(letter) = self.dead_letter_by_id(id).await? {
                    let job = letter.job.clone().redelivered(now_ms);
                    if self.replay_job(&letter, &job, now_ms).await? {
                        queued += 1;
                    }
                    continue;
                }
            }
            // Numbered by the script.
            let job = event.redelivery_job(0, 0, &outcome.target, now_ms);
            let priority = job.priority;
            let pending = encode(&TargetOutcome {
                job: None,
                status: TargetStatus::Pending,
                ..outcome.clone()
            });
            let prefix = format!(
                "{},\"job\":",
                pending.strip_suffix('}').expect("a JSON object")
            );
            let mut invocation = self.scripts.redeliver.prepare_invoke();
            invocation
                .key(self.key(shard, "sequence"))
                .key(self.key(shard, "jobs"))
                .key(self.key(shard, "targets"))
                .key(self.queue_key(shard, priority, &outcome.target))
                .key(self.key(shard, "age"))
                .key(self.queued_key(shard, priority));
            for key in self.event_keys(shard) {
                invocation.key(key);
            }
            invocation
                .arg(shard)
                .arg(sequence)
                .arg(&outcome.target)
                .arg(record_tail(&job))
                .arg(now_ms)
                .arg(prefix);
            let id: i64 = self.invoke_durable("replay", invocation).await?;
            if id > 0 {
                queued += 1;
                self.lane_slot(shard, priority)
                    .store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(queued)
    }

    pub(super) async fn redeliver_filtered(
        &self,
        filter: &EventFilter,
        max: u64,
        dry_run: bool,
        now_ms: u64,
    ) -> Result<Redelivered, StoreError> {
        let matched = self.matching(filter).await?;
        if dry_run || matched.len() as u64 > max {
            return Ok(Redelivered::Matched(matched.len() as u64));
        }
        let mut queued = 0;
        for logged in &matched {
            let target = filter.target.as_deref();
            if self
                .redeliver_logged(logged.shard, logged.number, &logged.event, target, now_ms)
                .await?
                > 0
            {
                queued += 1;
            }
        }
        Ok(Redelivered::Queued(queued))
    }

    pub(super) async fn usage(&self) -> Result<HistoryUsage, StoreError> {
        let parts: Vec<(BTreeMap<String, i64>,)> = self
            .each_shard(|shard| {
                let mut read = redis::pipe();
                read.hgetall(self.key(shard, "history"));
                read
            })
            .await?;
        let mut usage = HistoryUsage::default();
        for (counts,) in parts {
            let get = |k: &str| u64::try_from(counts.get(k).copied().unwrap_or(0)).unwrap_or(0);
            usage.events += get("events");
            usage.bytes += get("bytes");
        }
        Ok(usage)
    }

    /// Drops finished events past the retention, beyond `max_size`, or
    /// while Redis holds more than [`HISTORY_SHARE`] of what it may.
    pub(super) async fn prune(&self, now_ms: u64) -> Result<u64, StoreError> {
        let Some(limits) = self.history else {
            return Ok(0);
        };
        let pressed = self.gate.fullness() >= HISTORY_SHARE;
        let expired_before = now_ms.saturating_sub(limits.retention.as_millis() as u64);
        let mut over = self.usage().await?.bytes.saturating_sub(limits.max_size);
        let mut dropped = 0;
        for shard in 0..self.shards.len() {
            let mut range = redis::pipe();
            range
                .cmd("ZRANGEBYLEX")
                .arg(self.key(shard, "finished"))
                .arg("-")
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(PRUNE_BATCH);
            let (members,): (Vec<String>,) = self.query("read", range).await?;
            let going: Vec<&String> = members
                .iter()
                .take_while(|m| {
                    let old = member_parts(m).is_some_and(|(ms, _)| ms < expired_before);
                    // Each finished event counts for about an average share.
                    let drop = old || over > 0 || pressed;
                    if !old && over > 0 {
                        over = over.saturating_sub(2_048);
                    }
                    drop
                })
                .collect();
            if going.is_empty() {
                continue;
            }
            let mut invocation = self.scripts.prune.prepare_invoke();
            for key in self.event_keys(shard) {
                invocation.key(key);
            }
            for member in going {
                invocation.arg(member);
            }
            let n: i64 = self.invoke("delete", invocation).await?;
            dropped += u64::try_from(n).unwrap_or(0);
        }
        Ok(dropped)
    }
}

/// What one read of the log found.
#[derive(Default)]
struct Scan {
    items: Vec<(u64, StoredEvent)>,
    /// The member to go on below.
    next: Option<String>,
    /// The member of the last item kept.
    last_member: Option<String>,
    tally: Tally,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log member as the accept script writes it.
    fn log_member(received_ms: u64, event: u64) -> String {
        format!("{received_ms:015}.{event:020}")
    }

    #[test]
    fn log_members_sort_by_time_then_number_and_read_back() {
        let a = log_member(1_800_000_000_000, 5 * 1024 + 3);
        let b = log_member(1_800_000_000_001, 2 * 1024);
        assert!(a < b);
        assert_eq!(member_parts(&a), Some((1_800_000_000_000, 5 * 1024 + 3)));
        assert_eq!(member_parts("x"), None);
    }
}
