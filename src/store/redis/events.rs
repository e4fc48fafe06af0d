//! The event queue in Redis, for replicas that share it: the same records
//! as the embedded store, and every step that touches several keys is one
//! Lua script, so an event, its dedup key and its jobs appear together or
//! not at all, and a lease, ack or retry is checked against the job's
//! current lease token in the same step that changes it.
//!
//! The queue is split into `store.shards` parts. Every key of a part
//! carries the part's hash tag (`{q<n>.<m>}`, see `slots`), so that a
//! script's keys share a Cluster slot and the parts spread over the
//! masters. An event goes to the part its dedup key hashes to, with its
//! dedup key, body and jobs; event numbers and job ids end in their part
//! (`local * 1024 + part`), so every later step finds it from the id alone.
//! Leases take from the parts in turn. Keys of a part (after `<prefix>:`):
//! `dedup:{tag}:<webhook>\x1f<id>` (expires with the window), `sequence`,
//! `events`/`bodies`/`refs` (hashes by event number), `jobs` (job records),
//! `targets` and `leases` (job id → target, lease token),
//! `queue:{tag}:<priority>:<target>` (sorted by due time), `age` (sorted by receipt),
//! `dead` (records), `dead_order` (lexically sorted list keys) and
//! `dead_counts` (per webhook, kept by the scripts). Job ids
//! are written zero-padded to 20 digits wherever they are a field or a
//! member, so that jobs due at the same millisecond lease in id order.
//!
//! A lease moves the job's due time to the end of its visibility timeout,
//! so the job of a replica that died becomes due again by itself and any
//! replica leases it; replicas' clocks only need to agree to well within
//! the visibility timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

mod history;

use super::connection::{is_out_of_memory, RedisCallError, RedisStore, EVENT_CALL_TIMEOUT};
use super::scripts::Scripts;
use super::settings::{info_field, info_texts, RedisSettings};
use crate::config::DEFAULT_MAX_MEMORY_RATIO;
use crate::event::Priority;
use crate::store::history::{
    EventDetail, EventFilter, EventPage, HistoryLimits, HistoryUsage, Redelivered,
};
use crate::store::records::TargetStatus;
use crate::store::records::{
    dedup_key, parse_cursor, Acceptance, Attempt, DeadLetter, DeadLetterFilter, DeadLetterPage,
    Job, LeaseRequest, OwnedEvent, QueueDepth, StoredEvent, UNROUTED,
};
use crate::store::space::{Room, SpaceGate, SpaceStatus};
use crate::store::{Store, StoreError, StoreReport};

/// Dead letters read per round trip while filling a page.
const LIST_BATCH: usize = 200;

/// How long a lease passes over a part's lane that had nothing due: what
/// another replica queues there (or a retry falling due) waits at most this
/// much longer; what this process queues clears it at once.
const NOTHING_DUE_FOR_MS: u64 = 250;

/// Job ids and event numbers end in their part: `local * SHARD_SPACE + part`.
const SHARD_SPACE: u64 = crate::config::MAX_SHARDS;

pub struct RedisEventStore {
    store: Arc<RedisStore>,
    scripts: Scripts,
    /// Each part's hash tag, by part number.
    shards: Vec<String>,
    /// The part the next lease starts from: parts are taken in turn.
    next_lease: AtomicUsize,
    /// Per part and lane, the time (Unix ms) before which a lease skips it:
    /// it had nothing due when last asked. Without it every lease of an
    /// empty lane would cost a round trip per part.
    nothing_due_until: Vec<[AtomicU64; 3]>,
    /// Replicas that must have a write that must survive before it counts.
    replicas: u32,
    replica_timeout: Duration,
    replica_wait: Option<prometheus::Histogram>,
    /// Set by `inspect` while the server could evict the queue itself:
    /// nothing is accepted that could vanish.
    refusal: std::sync::RwLock<Option<String>>,
    /// Refuses new events above `max_memory_ratio` of a master's
    /// `maxmemory`, measured by `measure_space`.
    gate: SpaceGate,
    max_memory_ratio: f64,
    /// The event log is kept, within these limits (`store.history`).
    history: Option<HistoryLimits>,
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

/// Over `maxmemory` Redis refuses an accept (the scripts that drain may
/// run over it): the store is full, not gone.
fn unavailable(error: RedisCallError) -> StoreError {
    match &error {
        RedisCallError::Redis(e) if is_out_of_memory(e) => StoreError::Full,
        _ => StoreError::Unavailable(error.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store records serialize")
}

/// A job's record with the fields the accept script fills in taken off.
fn record_tail(job: &Job) -> String {
    let record = encode(job);
    record
        .strip_prefix(r#"{"id":0,"event":0,"#)
        .expect("a job record starts with its id and event, both 0 here")
        .to_string()
}

impl RedisEventStore {
    /// The queue in `shards` parts (1 to 1024; `store.shards`).
    pub fn new(store: Arc<RedisStore>, shards: u32) -> Self {
        let shards = shards.clamp(1, SHARD_SPACE as u32);
        Self {
            store,
            shards: (0..shards).map(super::slots::shard_tag).collect(),
            next_lease: AtomicUsize::new(0),
            nothing_due_until: (0..shards).map(|_| Default::default()).collect(),
            scripts: Scripts::default(),
            replicas: 0,
            replica_timeout: Duration::from_millis(500),
            replica_wait: None,
            refusal: std::sync::RwLock::new(None),
            gate: SpaceGate::new("redis"),
            max_memory_ratio: DEFAULT_MAX_MEMORY_RATIO,
            history: Some(HistoryLimits::default()),
        }
    }

    /// Keeps the event log within `limits`, or (None) drops each event with
    /// its last job or dead letter.
    pub fn with_history(mut self, limits: Option<HistoryLimits>) -> Self {
        self.history = limits;
        self
    }

    /// New events are refused once a master holds `ratio` of its
    /// `maxmemory` (`store.max_memory_ratio`); the rest is the drain's.
    pub fn with_max_memory_ratio(mut self, ratio: f64) -> Self {
        self.max_memory_ratio = ratio;
        self
    }

    /// Every write that must survive (accept, dead letter, replay, delete)
    /// then waits for `replicas` replicas to acknowledge it (`WAIT`), at
    /// most `timeout`; fewer in time fails the write, which is answered
    /// 503 and retried by the provider (a write that did land makes the
    /// retry a duplicate). `wait` observes how long each durable write took.
    pub fn with_replicas(
        mut self,
        replicas: u32,
        timeout: Duration,
        wait: prometheus::Histogram,
    ) -> Self {
        self.replicas = replicas;
        self.replica_timeout = timeout;
        self.replica_wait = Some(wait);
        self
    }

    fn key(&self, shard: usize, kind: &str) -> String {
        self.store.key(kind, &self.shards[shard], "")
    }

    /// A lane's queue for one target: job ids scored by due time.
    fn queue_key(&self, shard: usize, priority: Priority, target: &str) -> String {
        format!("{}{target}", self.queue_prefix(shard, priority))
    }

    fn queue_prefix(&self, shard: usize, priority: Priority) -> String {
        self.store.key(
            "queue",
            &self.shards[shard],
            &format!(":{}:", priority.as_str()),
        )
    }

    /// A lane's targets with jobs queued, and how many each.
    fn queued_key(&self, shard: usize, priority: Priority) -> String {
        self.store.key(
            "queued",
            &self.shards[shard],
            &format!(":{}", priority.as_str()),
        )
    }

    /// The part an event, a job or a dead letter is in, from its number;
    /// None for a number no part of this layout gave out.
    fn shard_of(&self, number: u64) -> Option<usize> {
        let shard = (number % SHARD_SPACE) as usize;
        (shard < self.shards.len()).then_some(shard)
    }

    fn shard_of_job(&self, id: u64) -> Result<usize, StoreError> {
        self.shard_of(id).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "job {id} belongs to queue part {} but store.shards is {}",
                id % SHARD_SPACE,
                self.shards.len()
            ))
        })
    }

    /// The part an event goes to: its dedup key's, so that copies of one
    /// event meet in the same part (and the same script).
    fn shard_of_dedup(&self, dedup: &str) -> usize {
        usize::from(super::slots::crc16(dedup.as_bytes())) % self.shards.len()
    }

    async fn invoke<T: redis::FromRedisValue + Send + 'static>(
        &self,
        op: &str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.store
            .run_within(op, EVENT_CALL_TIMEOUT, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await
            .map_err(unavailable)
    }

    /// A write that must survive: the script, then `WAIT` on the same
    /// connection in the same round trip, so that it covers this write.
    async fn invoke_durable<T: redis::FromRedisValue + Send + 'static>(
        &self,
        op: &str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        if self.replicas == 0 {
            return self.invoke(op, invocation).await;
        }
        let started = Instant::now();
        let (replicas, timeout) = (self.replicas, self.replica_timeout);
        let mut pipeline = redis::pipe();
        pipeline
            .invoke_script(&invocation)
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64);
        let (value, acknowledged): (T, u64) = self
            .store
            .run_within(
                op,
                EVENT_CALL_TIMEOUT + timeout,
                |mut connection| async move {
                    match pipeline.query_async(&mut connection).await {
                        // The pipeline names the script by its hash: load it once.
                        Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
                            invocation.load_async(&mut connection).await?;
                            pipeline.query_async(&mut connection).await
                        }
                        other => other,
                    }
                },
            )
            .await
            .map_err(unavailable)?;
        if let Some(wait) = &self.replica_wait {
            wait.observe(started.elapsed().as_secs_f64());
        }
        if acknowledged < u64::from(replicas) {
            self.store.count_error("replica_wait");
            return Err(StoreError::Unavailable(format!(
                "only {acknowledged} of {replicas} Redis replicas acknowledged the write within {}ms",
                timeout.as_millis()
            )));
        }
        Ok(value)
    }

    async fn query<T: redis::FromRedisValue + Send + 'static>(
        &self,
        op: &str,
        pipeline: redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.store
            .run_within(op, EVENT_CALL_TIMEOUT, |mut connection| async move {
                pipeline.query_async(&mut connection).await
            })
            .await
            .map_err(unavailable)
    }

    /// Takes a job whose record cannot be read off the queue, keeping it as
    /// a dead letter `corrupt` with what could be read of it.
    async fn set_aside(
        &self,
        member: &str,
        priority: Priority,
        target: &str,
        raw: Option<&str>,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let id: u64 = member.parse().map_err(corrupt)?;
        let shard = self.shard_of_job(id)?;
        let letter = crate::store::records::set_aside(
            id,
            raw.map(str::as_bytes),
            priority,
            target,
            reason,
            now_ms,
        );
        tracing::error!(job = id, %reason, "a job's record cannot be read; it is set aside as a dead letter (corrupt)");
        let mut invocation = self.scripts.set_aside.prepare_invoke();
        invocation
            .key(self.key(shard, "jobs"))
            .key(self.queue_key(shard, priority, target))
            .key(self.key(shard, "targets"))
            .key(self.key(shard, "age"))
            .key(self.queued_key(shard, priority))
            .key(self.key(shard, "dead"))
            .key(self.key(shard, "dead_order"))
            .key(self.key(shard, "dead_counts"))
            .key(self.key(shard, "leases"))
            .arg(member)
            .arg(target)
            .arg(encode(&letter))
            .arg(letter.order_key())
            .arg(&letter.job.webhook);
        self.invoke_durable::<i64>("dead_letter", invocation)
            .await
            .map(drop)
    }

    /// A lease-guarded script with the keys and arguments they all start
    /// with: leases, jobs, queue, targets, age, queued of the job's part;
    /// the job id, its lease token, its target. Also the part.
    fn guarded_invocation<'a>(
        &self,
        script: &'a redis::Script,
        job: &Job,
    ) -> Result<(redis::ScriptInvocation<'a>, usize), StoreError> {
        let shard = self.shard_of_job(job.id)?;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.key(shard, "leases"))
            .key(self.key(shard, "jobs"))
            .key(self.queue_key(shard, job.priority, &job.target))
            .key(self.key(shard, "targets"))
            .key(self.key(shard, "age"))
            .key(self.queued_key(shard, job.priority))
            .arg(member(job.id))
            .arg(job.lease)
            .arg(&job.target);
        Ok((invocation, shard))
    }

    /// Runs a lease-guarded script; a refusal means the lease was lost.
    async fn guarded_call(
        &self,
        op: &str,
        job: &Job,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<(), StoreError> {
        let done: i64 = self.invoke(op, invocation).await?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(job.id))
        }
    }

    /// Leases from one part what `request` asks for, within `room`, `most`
    /// jobs at most.
    async fn lease_from(
        &self,
        shard: usize,
        request: &LeaseRequest,
        room: &[(crate::names::UpstreamName, u32)],
        most: usize,
    ) -> Result<(Vec<Job>, Option<u64>), StoreError> {
        let (priority, now_ms) = (request.priority, request.now_ms);
        let until = now_ms + request.visibility.as_millis() as u64;
        let mut invocation = self.scripts.lease.prepare_invoke();
        invocation
            .key(self.queued_key(shard, priority))
            .key(self.key(shard, "leases"))
            .key(self.key(shard, "jobs"))
            .arg(now_ms)
            .arg(until)
            .arg(most)
            .arg(self.queue_prefix(shard, priority));
        for (target, left) in room {
            invocation.arg(target).arg(*left);
        }
        let answer: Vec<redis::Value> = self.invoke("lease", invocation).await?;
        let [skipped, earliest, leased @ ..] = &answer[..] else {
            return Err(StoreError::Corrupt(
                "a lease answer of the wrong shape".into(),
            ));
        };
        let skipped = redis::from_redis_value::<u8>(skipped).map_err(corrupt)? == 1;
        let earliest: i64 = redis::from_redis_value(earliest).map_err(corrupt)?;
        // Nothing due here before then, unless another process adds it.
        let nothing_due_until = (!skipped).then(|| {
            let soon = now_ms + NOTHING_DUE_FOR_MS;
            u64::try_from(earliest).map_or(soon, |at| at.min(soon))
        });
        let mut jobs = Vec::with_capacity(leased.len() / 4);
        for entry in leased.chunks(4) {
            let [token, id, target, record] = entry else {
                return Err(StoreError::Corrupt(
                    "a lease answer of the wrong shape".into(),
                ));
            };
            let token: u64 = redis::from_redis_value(token).map_err(corrupt)?;
            let id: String = redis::from_redis_value(id).map_err(corrupt)?;
            let target: String = redis::from_redis_value(target).map_err(corrupt)?;
            let record: Option<String> = redis::from_redis_value(record).map_err(corrupt)?;
            let parsed = match &record {
                None => Err("it has no record".to_string()),
                Some(text) => parse::<Job>(text).map_err(|e| e.to_string()),
            };
            match parsed {
                Ok(mut job) => {
                    job.lease = token;
                    job.leased = true;
                    job.due_ms = until;
                    jobs.push(job);
                }
                // One unreadable record must not fail every lease after it.
                Err(reason) => {
                    self.set_aside(&id, priority, &target, record.as_deref(), &reason, now_ms)
                        .await?;
                }
            }
        }
        Ok((jobs, nothing_due_until))
    }

    fn lane_slot(&self, shard: usize, priority: Priority) -> &AtomicU64 {
        &self.nothing_due_until[shard][priority as usize]
    }

    /// Runs `read` on every part at once (one round trip each, in
    /// parallel on the multiplexed connection); the answers by part.
    async fn each_shard<T, F>(&self, read: F) -> Result<Vec<T>, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
        F: Fn(usize) -> redis::Pipeline,
    {
        try_join_all((0..self.shards.len()).map(|shard| self.query("read", read(shard)))).await
    }

    /// Puts dead letter `letter` back on the queue as `job` (due now), and
    /// its target's outcome back to pending.
    async fn replay_job(
        &self,
        letter: &DeadLetter,
        job: &Job,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let id = letter.job.id;
        let shard = self.shard_of_job(id)?;
        let outcome = self.outcome_text(job, TargetStatus::Pending).await?;
        let mut invocation = self.scripts.replay.prepare_invoke();
        invocation
            .key(self.key(shard, "dead"))
            .key(self.key(shard, "dead_order"))
            .key(self.key(shard, "jobs"))
            .key(self.key(shard, "targets"))
            .key(self.queue_key(shard, job.priority, &job.target))
            .key(self.key(shard, "age"))
            .key(self.key(shard, "dead_counts"))
            .key(self.queued_key(shard, job.priority))
            .key(self.key(shard, "outcomes"))
            .arg(member(id))
            .arg(letter.order_key())
            .arg(encode(job))
            .arg(&job.target)
            .arg(now_ms)
            .arg(job.received_at_ms)
            .arg(&job.webhook)
            .arg(history::outcome_field(job.event, &job.target))
            .arg(outcome);
        let replayed: i64 = self.invoke_durable("replay", invocation).await?;
        self.lane_slot(shard, job.priority)
            .store(0, Ordering::Relaxed);
        Ok(replayed == 1)
    }

    /// One batch of dead-letter order keys of every part, newest first,
    /// below `below`; the keys that are certainly the newest of all (down
    /// to the oldest key of a part that may have more), and whether any
    /// part may have more.
    async fn dead_order_batch(&self, below: &str) -> Result<(Vec<String>, bool), StoreError> {
        let batches: Vec<(Vec<String>,)> = self
            .each_shard(|shard| {
                let mut range = redis::pipe();
                range
                    .cmd("ZREVRANGEBYLEX")
                    .arg(self.key(shard, "dead_order"))
                    .arg(below)
                    .arg("-")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(LIST_BATCH);
                range
            })
            .await?;
        // A part that filled its batch may hold keys older than its last:
        // only keys down to the newest such last key are complete.
        let horizon = batches
            .iter()
            .filter(|(keys,)| keys.len() == LIST_BATCH)
            .filter_map(|(keys,)| keys.last().cloned())
            .max();
        let mut keys: Vec<String> = batches
            .into_iter()
            .flat_map(|(keys,)| keys)
            .filter(|key| horizon.as_ref().is_none_or(|h| key >= h))
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        Ok((keys, horizon.is_some()))
    }

    /// The dead-letter records of `keys` (order keys), in their order.
    async fn dead_records(&self, keys: &[String]) -> Result<Vec<DeadLetter>, StoreError> {
        let mut by_shard: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
        for key in keys {
            let member = id_of(key).ok_or_else(|| corrupt(format!("dead-letter key {key:?}")))?;
            let id: u64 = member.parse().map_err(corrupt)?;
            by_shard
                .entry(self.shard_of_job(id)?)
                .or_default()
                .push(member);
        }
        let reads = by_shard.iter().map(|(shard, members)| {
            let mut read = redis::pipe();
            read.cmd("HMGET").arg(self.key(*shard, "dead")).arg(members);
            self.query::<(Vec<Option<String>>,)>("read", read)
        });
        let mut records: std::collections::HashMap<String, DeadLetter> = Default::default();
        for ((_, members), (texts,)) in by_shard.iter().zip(try_join_all(reads).await?) {
            for (member, text) in members.iter().zip(texts) {
                if let Some(text) = text {
                    records.insert(member.clone(), parse(&text)?);
                }
            }
        }
        Ok(keys
            .iter()
            .filter_map(|key| records.remove(&id_of(key)?))
            .collect())
    }
}

#[async_trait::async_trait]
impl Store for RedisEventStore {
    async fn accept(&self, event: OwnedEvent) -> Result<Acceptance, StoreError> {
        if let Some(refusal) = self
            .refusal
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(StoreError::Unavailable(refusal));
        }
        self.gate
            .admit(estimated_bytes(&event))
            .map_err(|_| StoreError::Full)?;
        let new = event.borrowed();
        let now_ms = event.now_ms;
        let dedup = dedup_key(&event.webhook, &event.meta.dedup);
        let shard = self.shard_of_dedup(&dedup);
        let mut invocation = self.scripts.accept.prepare_invoke();
        invocation
            .key(
                self.store
                    .key("dedup", &self.shards[shard], &format!(":{dedup}")),
            )
            .key(self.key(shard, "sequence"))
            .key(self.key(shard, "events"))
            .key(self.key(shard, "bodies"))
            .key(self.key(shard, "refs"))
            .key(self.key(shard, "jobs"))
            .key(self.key(shard, "targets"))
            .key(self.queued_key(shard, event.meta.priority))
            .key(self.key(shard, "age"))
            .key(self.key(shard, "dead"))
            .key(self.key(shard, "dead_order"))
            .key(self.key(shard, "dead_counts"))
            .key(self.key(shard, "log"))
            .key(self.key(shard, "by_id"))
            .key(self.key(shard, "history"))
            .key(self.key(shard, "index"))
            .arg(event.dedup_window.as_millis().max(1) as u64);
        let record = encode(&new.stored(now_ms));
        let targets: Vec<&str> = event.meta.targets.iter().map(|t| t.as_str()).collect();
        invocation
            .arg(&record)
            .arg(now_ms)
            .arg(&event.body[..])
            .arg(&event.webhook)
            .arg(shard)
            .arg(history::by_id_field(&event.webhook, &event.meta.id))
            .arg(record.len() + event.body.len())
            .arg(targets.join("\x1f"));
        for target in &event.meta.targets {
            invocation.key(self.queue_key(shard, event.meta.priority, target));
        }
        if event.meta.targets.is_empty() {
            invocation.arg(record_tail(&new.job(0, 0, &UNROUTED.into(), now_ms)));
        }
        for target in &event.meta.targets {
            invocation
                .arg(target)
                .arg(record_tail(&new.job(0, 0, target, now_ms)));
        }
        let sequence: i64 = match self.invoke_durable("accept", invocation).await {
            Err(StoreError::Full) => {
                // Redis refused it over maxmemory.
                self.gate.store_refused();
                return Err(StoreError::Full);
            }
            other => other?,
        };
        self.lane_slot(shard, event.meta.priority)
            .store(0, Ordering::Relaxed);
        Ok(match u64::try_from(sequence) {
            Ok(sequence) => Acceptance::Accepted(sequence),
            Err(_) => Acceptance::Duplicate,
        })
    }

    /// From the parts in turn, starting one further each call, until `max`
    /// jobs are leased or every part was asked: within a part the oldest
    /// due come first, across parts there is no order.
    async fn lease(&self, request: &LeaseRequest) -> Result<Vec<Job>, StoreError> {
        let parts = self.shards.len();
        let start = self.next_lease.fetch_add(1, Ordering::Relaxed) % parts;
        let mut room = request.room.clone();
        let mut jobs: Vec<Job> = Vec::new();
        for step in 0..parts {
            if jobs.len() >= request.max {
                break;
            }
            let shard = (start + step) % parts;
            let quiet = self.lane_slot(shard, request.priority);
            if quiet.load(Ordering::Relaxed) > request.now_ms {
                continue;
            }
            let (leased, nothing_due_until) = match self
                .lease_from(shard, request, &room, request.max - jobs.len())
                .await
            {
                Ok(leased) => leased,
                // Jobs already leased from other parts are delivered now,
                // not when their leases expire; the failed part (a master
                // failing over) is asked again on the next lease.
                Err(error) if jobs.is_empty() => return Err(error),
                Err(_) => break,
            };
            // A lane that gave nothing, with no target passed over for want
            // of room, is skipped until its next job falls due (at most
            // `NOTHING_DUE_FOR_MS`).
            if let (true, Some(until)) = (leased.is_empty(), nothing_due_until) {
                quiet.store(until, Ordering::Relaxed);
            }
            // What this part gave is no longer room for the next.
            for job in &leased {
                if let Some((_, left)) = room.iter_mut().find(|(t, _)| *t == job.target) {
                    *left = left.saturating_sub(1);
                }
            }
            jobs.extend(leased);
        }
        Ok(jobs)
    }

    async fn ack(&self, job: &Job, attempt: Option<Attempt>) -> Result<(), StoreError> {
        let mut done = job.clone();
        if let Some(attempt) = attempt {
            done.record(attempt);
        }
        let outcome = self.outcome_text(&done, TargetStatus::Delivered).await?;
        let (mut invocation, shard) = self.guarded_invocation(&self.scripts.ack, job)?;
        for key in self.event_keys(shard) {
            invocation.key(key);
        }
        invocation
            .arg(job.event)
            .arg(self.history_flag())
            .arg(outcome);
        self.guarded_call("ack", job, invocation).await
    }

    async fn retry_at(&self, job: &Job, attempt: Attempt, due_ms: u64) -> Result<(), StoreError> {
        // While full, a waiting job's history does not grow into the
        // drain's room.
        let grow = !self.gate.status().paused;
        let retried = job.clone().retried(attempt, due_ms, grow);
        let (mut invocation, shard) = self.guarded_invocation(&self.scripts.retry, job)?;
        invocation.arg(encode(&retried)).arg(due_ms);
        self.guarded_call("retry", job, invocation).await?;
        self.lane_slot(shard, job.priority)
            .store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn dead_letter(
        &self,
        job: &Job,
        attempt: Option<Attempt>,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut dead_job = job.clone();
        if let Some(attempt) = attempt {
            dead_job.record(attempt);
        }
        dead_job.leased = false;
        let letter = DeadLetter {
            job: dead_job,
            reason: reason.to_string(),
            dead_at_ms: now_ms,
        };
        let outcome = self.outcome_text(&letter.job, TargetStatus::Dead).await?;
        let (mut invocation, shard) = self.guarded_invocation(&self.scripts.dead_letter, job)?;
        invocation
            .key(self.key(shard, "dead"))
            .key(self.key(shard, "dead_order"))
            .key(self.key(shard, "dead_counts"))
            .key(self.key(shard, "outcomes"))
            .arg(encode(&letter))
            .arg(letter.order_key())
            .arg(&job.webhook)
            .arg(history::outcome_field(job.event, &job.target))
            .arg(outcome);
        let done: i64 = self.invoke_durable("dead_letter", invocation).await?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(job.id))
        }
    }

    /// Merges the parts' lists: each round reads a batch of every part
    /// below the cursor and takes the keys that are surely the newest.
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        let mut below = match cursor {
            None => "+".to_string(),
            Some(cursor) => {
                parse_cursor(cursor)?;
                format!("({cursor}")
            }
        };
        let mut items: Vec<DeadLetter> = Vec::new();
        loop {
            let (keys, more) = self.dead_order_batch(&below).await?;
            let Some(last) = keys.last() else {
                return Ok(DeadLetterPage { items, next: None });
            };
            below = format!("({last}");
            for letter in self.dead_records(&keys).await? {
                if !filter.matches(&letter) {
                    continue;
                }
                if items.len() == limit {
                    let next = items.last().map(DeadLetter::order_key);
                    return Ok(DeadLetterPage { items, next });
                }
                items.push(letter);
            }
            if !more {
                return Ok(DeadLetterPage { items, next: None });
            }
        }
    }

    async fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let Some(shard) = self.shard_of(id) else {
            return Ok(None);
        };
        let mut read = redis::pipe();
        read.hget(self.key(shard, "dead"), member(id));
        let (record,): (Option<String>,) = self.query("read", read).await?;
        record.map(|r| parse(&r)).transpose()
    }

    async fn replay(&self, id: u64, now_ms: u64) -> Result<bool, StoreError> {
        let Some(letter) = self.dead_letter_by_id(id).await? else {
            return Ok(false);
        };
        if letter.job.target == UNROUTED {
            return Ok(false);
        }
        let job = letter.job.clone().replayed(now_ms);
        self.replay_job(&letter, &job, now_ms).await
    }

    async fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        let Some(letter) = self.dead_letter_by_id(id).await? else {
            return Ok(false);
        };
        let shard = self.shard_of_job(id)?;
        let mut invocation = self.scripts.delete.prepare_invoke();
        invocation
            .key(self.key(shard, "dead"))
            .key(self.key(shard, "dead_order"))
            .key(self.key(shard, "leases"));
        for key in self.event_keys(shard) {
            invocation.key(key);
        }
        invocation
            .key(self.key(shard, "dead_counts"))
            .arg(member(id))
            .arg(letter.order_key())
            .arg(letter.job.event)
            .arg(&letter.job.webhook)
            .arg(self.history_flag());
        let deleted: i64 = self.invoke_durable("delete", invocation).await?;
        Ok(deleted == 1)
    }

    async fn recover_state(&self, webhook: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut read = redis::pipe();
        read.get(self.store.key("recover", webhook, ""));
        let (state,): (Option<Vec<u8>>,) = self.query("recover", read).await?;
        Ok(state)
    }

    /// Not waited on by replicas: a checkpoint lost in a failover only
    /// makes the next run fetch (and deduplicate) a longer stretch again.
    async fn save_recover_state(&self, webhook: &str, state: &[u8]) -> Result<(), StoreError> {
        let mut write = redis::pipe();
        write
            .set(self.store.key("recover", webhook, ""), state)
            .ignore();
        self.query::<()>("recover", write).await
    }

    async fn lease_recover(
        &self,
        webhook: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // Renewed by its holder, taken by another only once it lapsed.
        const LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
            redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
            if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
            return 0";
        let mut call = redis::pipe();
        call.cmd("EVAL")
            .arg(LEASE)
            .arg(1)
            .arg(self.store.key("recover_lease", webhook, ""))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64);
        let (taken,): (i64,) = self.query("recover", call).await?;
        Ok(taken == 1)
    }

    async fn seen(&self, webhook: &str, id: &str) -> Result<bool, StoreError> {
        // The event log's lookup by id is in the part of the event's dedup
        // key, which the id alone does not give: every part is asked. The
        // dedup key where it is the id outlives the log's record.
        let field = history::by_id_field(webhook, id);
        let logged: Vec<(bool,)> = self
            .each_shard(|shard| {
                let mut read = redis::pipe();
                read.hexists(self.key(shard, "by_id"), &field);
                read
            })
            .await?;
        if logged.iter().any(|(found,)| *found) {
            return Ok(true);
        }
        let dedup = dedup_key(webhook, id);
        let shard = self.shard_of_dedup(&dedup);
        let mut read = redis::pipe();
        read.exists(
            self.store
                .key("dedup", &self.shards[shard], &format!(":{dedup}")),
        );
        let (seen,): (bool,) = self.query("recover", read).await?;
        Ok(seen)
    }

    /// One key per event, expiring by itself; under the webhook's tag, so
    /// a run's are written in one call on a Cluster too.
    async fn note_redeliveries(
        &self,
        webhook: &str,
        ids: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut write = redis::pipe();
        for id in ids {
            write
                .cmd("SET")
                .arg(self.store.key("recover_asked", webhook, &format!(":{id}")))
                .arg(1)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        self.query::<()>("recover", write).await
    }

    async fn redelivery_asked(&self, webhook: &str, id: &str) -> Result<bool, StoreError> {
        let mut read = redis::pipe();
        read.exists(self.store.key("recover_asked", webhook, &format!(":{id}")));
        let (asked,): (bool,) = self.query("recover", read).await?;
        Ok(asked)
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        // Counted by the scripts that add and remove dead letters, so this
        // stays one small read per part however many there are.
        let parts: Vec<(std::collections::BTreeMap<String, u64>,)> = self
            .each_shard(|shard| {
                let mut read = redis::pipe();
                read.hgetall(self.key(shard, "dead_counts"));
                read
            })
            .await?;
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for (part,) in parts {
            for (webhook, n) in part {
                *counts.entry(webhook).or_default() += n;
            }
        }
        Ok(counts.into_iter().filter(|(_, n)| *n > 0).collect())
    }

    async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        let parts: Vec<(Vec<u64>, Vec<u64>, Vec<u64>)> = self
            .each_shard(|shard| {
                let mut read = redis::pipe();
                for priority in Priority::ALL {
                    read.hvals(self.queued_key(shard, priority));
                }
                read
            })
            .await?;
        let mut depth = QueueDepth::default();
        for (high, normal, low) in parts {
            depth.high += high.iter().sum::<u64>();
            depth.normal += normal.iter().sum::<u64>();
            depth.low += low.iter().sum::<u64>();
        }
        Ok(depth)
    }

    async fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        let parts: Vec<(Vec<(u64, u64)>,)> = self
            .each_shard(|shard| {
                let mut read = redis::pipe();
                read.cmd("ZRANGE")
                    .arg(self.key(shard, "age"))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
                read
            })
            .await?;
        Ok(parts
            .iter()
            .filter_map(|(oldest,)| oldest.first().map(|(_, received)| *received))
            .min())
    }

    /// The server's settings that decide what survives: eviction, AOF and
    /// snapshots, replicas. A managed Redis may forbid CONFIG: then the
    /// settings show as unknown and only a warning says so.
    async fn inspect(&self) -> Result<StoreReport, StoreError> {
        // On a cluster INFO goes to every master and comes back per master.
        let info = |section: &'static str| async move {
            self.store
                .run_within("check", EVENT_CALL_TIMEOUT, |mut connection| async move {
                    redis::cmd("INFO")
                        .arg(section)
                        .query_async::<redis::Value>(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)
                .map(info_texts)
        };
        let (server, replication) = (info("server").await?, info("replication").await?);
        let memory = info("memory").await?;
        let config = |name: &'static str| async move {
            let mut get = redis::pipe();
            get.cmd("CONFIG").arg("GET").arg(name);
            let result: Result<(Vec<String>,), StoreError> = self.query("check", get).await;
            result.ok().and_then(|(pair,)| pair.get(1).cloned())
        };
        let settings = RedisSettings {
            version: server.iter().find_map(|s| info_field(s, "redis_version")),
            maxmemory_policy: config("maxmemory-policy").await,
            appendonly: config("appendonly").await,
            appendfsync: config("appendfsync").await,
            save: config("save").await,
            // The weakest master decides what a write can wait for.
            connected_replicas: replication
                .iter()
                .filter_map(|r| info_field(r, "connected_slaves")?.parse().ok())
                .min(),
            masters: (self.store.is_cluster()).then_some(replication.len()),
            maxmemory: memory
                .iter()
                .filter_map(|m| MasterMemory::read(m))
                .map(|m| m.maxmemory)
                .min_by_key(|&bytes| (bytes != 0, bytes)),
        };
        let report = settings.report(self.replicas);
        *self.refusal.write().unwrap_or_else(|e| e.into_inner()) = report.refusal.clone();
        Ok(report)
    }

    fn space(&self) -> SpaceStatus {
        self.gate.status()
    }

    /// `INFO memory` of every master: what each holds against its
    /// `maxmemory`. The fullest master decides for all (an event's part is
    /// not known before its dedup key is hashed, and a cluster whose one
    /// master is full is a cluster to fix).
    async fn measure_space(&self) -> Result<(), StoreError> {
        let texts: Vec<String> = self
            .store
            .run_within("check", EVENT_CALL_TIMEOUT, |mut connection| async move {
                redis::cmd("INFO")
                    .arg("memory")
                    .query_async::<redis::Value>(&mut connection)
                    .await
            })
            .await
            .map_err(unavailable)
            .map(info_texts)?;
        let masters: Vec<MasterMemory> =
            texts.iter().filter_map(|t| MasterMemory::read(t)).collect();
        if masters.is_empty() {
            return Err(StoreError::Unavailable(
                "Redis INFO memory named no used_memory".into(),
            ));
        }
        let room = memory_room(&masters, self.max_memory_ratio);
        self.gate.measured(room);
        Ok(())
    }

    async fn events(
        &self,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        self.list_events(filter, cursor, limit).await
    }

    async fn event_detail(
        &self,
        source: &str,
        id: &str,
    ) -> Result<Option<EventDetail>, StoreError> {
        self.detail(source, id).await
    }

    async fn redeliver(
        &self,
        sequence: u64,
        target: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.redeliver_event(sequence, target, now_ms).await
    }

    async fn redeliver_matching(
        &self,
        filter: &EventFilter,
        max: u64,
        dry_run: bool,
        now_ms: u64,
    ) -> Result<Redelivered, StoreError> {
        self.redeliver_filtered(filter, max, dry_run, now_ms).await
    }

    async fn history_usage(&self) -> Result<HistoryUsage, StoreError> {
        self.usage().await
    }

    async fn prune_history(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.prune(now_ms).await
    }

    async fn event(&self, sequence: u64) -> Result<Option<(StoredEvent, Vec<u8>)>, StoreError> {
        let Some(shard) = self.shard_of(sequence) else {
            return Ok(None);
        };
        let mut read = redis::pipe();
        read.hget(self.key(shard, "events"), sequence)
            .hget(self.key(shard, "bodies"), sequence);
        let (metadata, body): (Option<String>, Option<Vec<u8>>) = self.query("read", read).await?;
        // An event without its body is as good as gone: never delivered empty.
        match (metadata, body) {
            (Some(metadata), Some(body)) => Ok(Some((parse(&metadata)?, body))),
            _ => Ok(None),
        }
    }
}

/// About what an event takes in Redis: its body and metadata once in
/// hashes, and per job its record, its queue and age entries and a lease
/// token, with Redis' per-field overhead.
fn estimated_bytes(event: &OwnedEvent) -> u64 {
    let (content, jobs) = event.size();
    content + 512 + 640 * jobs
}

/// One master's memory, from `INFO memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MasterMemory {
    used: u64,
    /// 0: no limit.
    maxmemory: u64,
}

impl MasterMemory {
    fn read(info: &str) -> Option<Self> {
        Some(Self {
            used: info_field(info, "used_memory")?.parse().ok()?,
            maxmemory: info_field(info, "maxmemory")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// The room of a store on these masters: used and capacity added up; no
/// capacity if any master has no `maxmemory`; the fullest master's share.
fn memory_room(masters: &[MasterMemory], ratio: f64) -> Room {
    let used = masters.iter().map(|m| m.used).sum();
    if masters.iter().any(|m| m.maxmemory == 0) {
        return Room {
            used,
            capacity: None,
            fullest: 0.0,
        };
    }
    let capacity_of = |m: &MasterMemory| (m.maxmemory as f64 * ratio) as u64;
    let fullest = masters
        .iter()
        .map(|m| m.used as f64 / capacity_of(m).max(1) as f64)
        .fold(0.0, f64::max);
    Room {
        used,
        capacity: Some(masters.iter().map(capacity_of).sum()),
        fullest,
    }
}

/// A job id as the Redis records name it.
fn member(id: u64) -> String {
    format!("{id:020}")
}

/// The job id part of a dead-letter order key, as a member.
fn id_of(order_key: &str) -> Option<String> {
    Some(order_key.split_once('.')?.1.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventMeta;

    #[test]
    fn the_fullest_master_decides_and_a_master_without_maxmemory_leaves_no_capacity() {
        let info = "# Memory\r\nused_memory:900\r\nused_memory_human:900B\r\nmaxmemory:1000\r\nmaxmemory_human:1000B\r\n";
        let one = MasterMemory::read(info).unwrap();
        assert_eq!(
            one,
            MasterMemory {
                used: 900,
                maxmemory: 1000
            }
        );
        let other = MasterMemory {
            used: 100,
            maxmemory: 1000,
        };
        let room = memory_room(&[one, other], 0.9);
        assert_eq!(room.used, 1000);
        assert_eq!(room.capacity, Some(1800));
        assert!((room.fullest - 1.0).abs() < 1e-9, "{room:?}");
        let unbounded = MasterMemory {
            used: 5,
            maxmemory: 0,
        };
        assert_eq!(memory_room(&[one, unbounded], 0.9).capacity, None);
    }
    use crate::store::records::order_key;
    use std::time::Duration;

    #[test]
    fn the_accept_script_receives_job_records_without_id_and_event() {
        let meta = EventMeta {
            id: "evt".into(),
            dedup: "evt".into(),
            event_type: "t".into(),
            context: Vec::new(),
            priority: Priority::High,
            targets: vec!["notify".into()],
            trace: None,
            recovered: false,
        };
        let event = OwnedEvent {
            webhook: "stripe".into(),
            meta,
            content_type: None,
            headers: Vec::new(),
            body: bytes::Bytes::new(),
            now_ms: 7,
            dedup_window: Duration::from_secs(1),
        };
        let tail = record_tail(&event.borrowed().job(0, 0, &"notify".into(), 7));
        let spliced: Job = parse(&format!(r#"{{"id":12,"event":11,{tail}"#)).unwrap();
        assert_eq!(spliced, event.borrowed().job(12, 11, &"notify".into(), 7));
        assert_eq!(
            order_key(7, 12).len(),
            41,
            "lexical order needs fixed width"
        );
    }
}
