//! What both stores keep, in one shape: an accepted event, its delivery
//! jobs (one per target), the attempts made for each, and dead letters.
//! Records are JSON in either store, so a dead letter reads the same
//! whichever store wrote it.

use crate::names::{EventId, UpstreamName, WebhookName};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{EventMeta, Priority};

/// Attempts kept per job for the dead-letter view; older ones are dropped.
pub const HISTORY_LIMIT: usize = 20;

/// The target of a dead letter that no route matched.
pub const UNROUTED: &str = "";

/// A verified request, as the ack path hands it over.
#[derive(Clone, Copy)]
pub struct NewEvent<'a> {
    pub webhook: &'a WebhookName,
    pub meta: &'a EventMeta,
    pub content_type: Option<&'a str>,
    /// The request's headers as the event log shows them (`history`).
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl NewEvent<'_> {
    /// The metadata either store keeps for this event.
    pub fn stored(&self, received_at_ms: u64) -> StoredEvent {
        StoredEvent {
            webhook: self.webhook.clone(),
            id: self.meta.id.clone(),
            event_type: self.meta.event_type.clone(),
            content_type: self.content_type.map(str::to_string),
            context: self.meta.context.clone(),
            received_at_ms,
            trace: self.meta.trace.clone(),
            targets: self.targets(),
            priority: Some(self.meta.priority),
            size: self.body.len() as u64,
            headers: self.headers.to_vec(),
            finished_at_ms: None,
            recovered: self.meta.recovered,
        }
    }

    /// One outcome per job, in the jobs' order (their ids follow the
    /// event's sequence in this order); an unrouted event's one dead letter.
    fn targets(&self) -> Vec<TargetOutcome> {
        if self.meta.targets.is_empty() {
            return vec![TargetOutcome::new(UNROUTED.into(), TargetStatus::Dead)];
        }
        self.meta
            .targets
            .iter()
            .map(|target| TargetOutcome::new(target.clone(), TargetStatus::Pending))
            .collect()
    }

    /// The job for one target of this event, before it has a number.
    pub fn job(&self, id: u64, event: u64, target: &UpstreamName, received_at_ms: u64) -> Job {
        Job {
            id,
            event,
            webhook: self.webhook.clone(),
            event_id: self.meta.id.clone(),
            event_type: self.meta.event_type.clone(),
            target: target.clone(),
            priority: self.meta.priority,
            received_at_ms,
            due_ms: received_at_ms,
            attempts: 0,
            history: Vec::new(),
            lease: 0,
            leased: false,
            redelivery: false,
        }
    }
}

/// An event handed over by value (to a writer thread or a task).
#[derive(Clone)]
pub struct OwnedEvent {
    pub webhook: WebhookName,
    pub meta: EventMeta,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    pub now_ms: u64,
    pub dedup_window: Duration,
}

impl OwnedEvent {
    /// What its records hold in bytes: the body and the metadata's strings
    /// (each store weighs it with its own overhead), and its job count.
    pub fn size(&self) -> (u64, u64) {
        let meta = self.meta.id.len() + self.meta.event_type.len() + self.meta.dedup.len();
        let context: usize = self
            .meta
            .context
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        let jobs = self.meta.targets.len().max(1) as u64;
        ((self.body.len() + meta + context) as u64, jobs)
    }

    pub fn borrowed(&self) -> NewEvent<'_> {
        NewEvent {
            webhook: &self.webhook,
            meta: &self.meta,
            content_type: self.content_type.as_deref(),
            headers: &self.headers,
            body: &self.body,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Stored under this sequence number.
    Accepted(u64),
    /// The same (webhook, event id) was accepted within the dedup window.
    Duplicate,
}

/// An event's metadata as stored (its body is kept beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub webhook: WebhookName,
    pub id: EventId,
    pub event_type: String,
    pub content_type: Option<String>,
    pub context: Vec<(String, String)>,
    pub received_at_ms: u64,
    /// The `traceparent` of the span that accepted it (absent in records
    /// written before traces were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Each target's delivery, in the order of the event's jobs. Records
    /// written before the event log have none: their jobs and dead letters
    /// add theirs as they finish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The body's length in bytes.
    #[serde(default)]
    pub size: u64,
    /// The request's headers, signature headers redacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// When the last job or dead letter referring to it went: from then on
    /// only the event log keeps it, and retention may drop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Fetched back from the provider's API by gap repair.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

/// Where one target's delivery of an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetStatus {
    Pending,
    Delivered,
    Dead,
}

impl TargetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }
}

/// One target's delivery of an event, kept in the event's record. While it
/// is pending its attempts are the job's; they are copied here when the job
/// is delivered or becomes a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOutcome {
    pub target: UpstreamName,
    pub status: TargetStatus,
    /// The job (or dead letter) that delivers it now or did last: a
    /// redelivery makes a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// Every attempt of the finished jobs, oldest first (the latest
    /// [`HISTORY_LIMIT`] of each job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

impl TargetOutcome {
    pub fn new(target: UpstreamName, status: TargetStatus) -> Self {
        Self {
            target,
            status,
            job: None,
            attempts: Vec::new(),
        }
    }

    /// A job's attempts join those kept, each once (a replayed dead letter
    /// carries the attempts it had), the latest [`KEPT_ATTEMPTS`] kept.
    pub fn add_attempts(&mut self, job: &Job) {
        for attempt in &job.history {
            if !self.attempts.contains(attempt) {
                self.attempts.push(attempt.clone());
            }
        }
        let excess = self.attempts.len().saturating_sub(KEPT_ATTEMPTS);
        self.attempts.drain(..excess);
    }
}

impl StoredEvent {
    /// The outcome kept for `target`, added when a record written before
    /// the event log has none.
    pub fn outcome_mut(&mut self, target: &str) -> &mut TargetOutcome {
        let at = match self.targets.iter().position(|t| t.target == target) {
            Some(at) => at,
            None => {
                let status = TargetStatus::Pending;
                self.targets.push(TargetOutcome::new(target.into(), status));
                self.targets.len() - 1
            }
        };
        &mut self.targets[at]
    }

    /// A job of this event finished: `job`'s attempts join the outcome.
    pub fn finish_job(&mut self, job: &Job, status: TargetStatus) {
        let outcome = self.outcome_mut(&job.target);
        outcome.status = status;
        outcome.job = Some(job.id);
        outcome.add_attempts(job);
    }
}

impl StoredEvent {
    /// A new job delivering this event again to `target`, due now and
    /// marked `redelivery`; its age (`max_age`) counts from now.
    pub fn redelivery_job(&self, id: u64, event: u64, target: &UpstreamName, now_ms: u64) -> Job {
        Job {
            id,
            event,
            webhook: self.webhook.clone(),
            event_id: self.id.clone(),
            event_type: self.event_type.clone(),
            target: target.clone(),
            priority: self.priority.unwrap_or(Priority::Normal),
            received_at_ms: now_ms,
            due_ms: now_ms,
            attempts: 0,
            history: Vec::new(),
            lease: 0,
            leased: false,
            redelivery: true,
        }
    }
}

/// Attempts the event log keeps per target, across redeliveries.
pub const KEPT_ATTEMPTS: usize = 50;

/// One delivery attempt, as the dead-letter view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    pub duration_ms: u64,
    /// The backend tried, when one was chosen.
    pub backend: Option<String>,
    /// The target's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, when something did (connect error, timeout, 5xx…).
    pub error: Option<String>,
    /// The start of the target's answer (at most [`RESPONSE_EXCERPT`]
    /// bytes, as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// How much of a target's answer an attempt keeps.
pub const RESPONSE_EXCERPT: usize = 1024;

/// The start of an answer's body as an attempt keeps it: at most
/// [`RESPONSE_EXCERPT`] bytes, cut at a character boundary, invalid UTF-8
/// replaced; None when it is empty.
pub fn response_excerpt(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let head = &body[..body.len().min(RESPONSE_EXCERPT)];
    let text = match std::str::from_utf8(head) {
        Ok(text) => text.to_string(),
        // Cut inside a character: keep what is whole before it.
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(head).into_owned(),
    };
    Some(text)
}

/// What a delivery worker asks of the queue: up to `max` due jobs of
/// `priority`, oldest due first, each invisible to other leases for
/// `visibility`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub priority: Priority,
    pub now_ms: u64,
    pub visibility: Duration,
    /// How many more jobs of a target may be leased now (its in-flight cap
    /// minus what runs); targets not listed are not capped.
    pub room: Vec<(UpstreamName, u32)>,
    pub max: usize,
}

/// One (event, target) pair. `id` names it everywhere: in the queue, in
/// the dead letters and in the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub event: u64,
    pub webhook: WebhookName,
    /// The event's id and type, kept with each job for the dead-letter list.
    pub event_id: EventId,
    pub event_type: String,
    pub target: UpstreamName,
    pub priority: Priority,
    pub received_at_ms: u64,
    /// When it may next be leased: now for a new job, the retry time after
    /// a failure, the end of the visibility timeout while leased.
    pub due_ms: u64,
    /// Attempts since it was accepted or last replayed.
    pub attempts: u32,
    /// The latest attempts, oldest first, at most [`HISTORY_LIMIT`]; a
    /// replay keeps them. Left out while empty: Redis scripts splice job
    /// records as text and never meet an empty array.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    /// Bumped by every lease: an ack or retry carrying an older number
    /// comes from a worker whose lease expired, and is refused.
    pub lease: u64,
    pub leased: bool,
    /// Queued again by an operator (`/admin/events/.../redeliver`): its
    /// deliveries say `x-redelivery: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redelivery: bool,
}

impl Job {
    /// Records an attempt, dropping the oldest beyond [`HISTORY_LIMIT`].
    pub fn record(&mut self, attempt: Attempt) {
        self.attempts += 1;
        self.history.push(attempt);
        let excess = self.history.len().saturating_sub(HISTORY_LIMIT);
        self.history.drain(..excess);
    }

    /// Records an attempt without growing the history: it replaces the
    /// latest one (the count stays exact). For a store refusing new events
    /// for want of room, whose waiting jobs must not take the drain's room
    /// by collecting attempts through a long outage.
    pub fn record_in_place(&mut self, attempt: Attempt) {
        match self.history.last_mut() {
            Some(last) => {
                self.attempts += 1;
                *last = attempt;
            }
            None => self.record(attempt),
        }
    }

    /// The job as a retry due at `due_ms` after `attempt`; with `grow`
    /// false, its history keeps its length (`record_in_place`).
    pub fn retried(mut self, attempt: Attempt, due_ms: u64, grow: bool) -> Self {
        if grow {
            self.record(attempt);
        } else {
            self.record_in_place(attempt);
        }
        self.leased = false;
        self.due_ms = due_ms;
        self
    }

    /// The job as an operator's redelivery of its dead letter puts it back:
    /// a replay marked `redelivery`, whose age (`max_age`) counts from now.
    pub fn redelivered(self, now_ms: u64) -> Self {
        let mut job = self.replayed(now_ms);
        job.redelivery = true;
        job.received_at_ms = now_ms;
        job
    }

    /// The job as a replay puts it back: due now, a fresh attempt count,
    /// its history kept.
    pub fn replayed(mut self, now_ms: u64) -> Self {
        self.attempts = 0;
        self.leased = false;
        self.due_ms = now_ms;
        self
    }
}

/// A job that could not be delivered (or had nowhere to go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job: Job,
    /// `unrouted`, `rejected` (a 4xx that retrying cannot fix),
    /// `max_attempts`, `max_age`, or `unknown_target` (its upstream group
    /// is no longer configured).
    pub reason: String,
    pub dead_at_ms: u64,
}

impl DeadLetter {
    pub fn last_error(&self) -> Option<String> {
        let last = self.job.history.last()?;
        Some(match (&last.error, last.status) {
            (Some(error), _) => error.clone(),
            (None, Some(status)) => format!("HTTP {status}"),
            (None, None) => return None,
        })
    }

    /// The order of the dead-letter list (newest first) as a sortable key:
    /// `<dead_at_ms>.<id>`, zero-padded, which is also the page cursor.
    pub fn order_key(&self) -> String {
        order_key(self.dead_at_ms, self.job.id)
    }
}

pub fn order_key(dead_at_ms: u64, id: u64) -> String {
    format!("{dead_at_ms:020}.{id:020}")
}

/// A page cursor (an [`order_key`]) read back as (dead at ms, job id).
pub fn parse_cursor(cursor: &str) -> Result<(u64, u64), super::StoreError> {
    let invalid = || super::StoreError::InvalidCursor(cursor.to_string());
    let (dead_at, id) = cursor.split_once('.').ok_or_else(invalid)?;
    Ok((
        dead_at.parse().map_err(|_| invalid())?,
        id.parse().map_err(|_| invalid())?,
    ))
}

/// Which dead letters a list or a bulk replay covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub webhook: Option<String>,
    pub target: Option<String>,
}

impl DeadLetterFilter {
    pub fn matches(&self, dead: &DeadLetter) -> bool {
        self.webhook.as_ref().is_none_or(|w| dead.job.webhook == *w)
            && self.target.as_ref().is_none_or(|t| dead.job.target == *t)
    }
}

/// One page of dead letters, newest first; `next` continues after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    pub next: Option<String>,
}

/// Jobs waiting or in flight, per priority (high, normal, low).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub high: u64,
    pub normal: u64,
    pub low: u64,
}

impl QueueDepth {
    pub fn of(&self, priority: Priority) -> u64 {
        match priority {
            Priority::High => self.high,
            Priority::Normal => self.normal,
            Priority::Low => self.low,
        }
    }

    pub fn total(&self) -> u64 {
        self.high + self.normal + self.low
    }
}

pub fn dedup_key(webhook: &str, id: &str) -> String {
    format!("{webhook}\u{1f}{id}")
}

/// A job whose record no longer decodes, as the dead letter `corrupt` that
/// keeps what could be read of it: each field is looked for as
/// `"name":value` in the raw text, so a record cut short or garbled past
/// some field still shows the fields before it. Its queue gives its
/// priority and target.
pub fn set_aside(
    id: u64,
    raw: Option<&[u8]>,
    priority: Priority,
    target: &str,
    reason: &str,
    now_ms: u64,
) -> DeadLetter {
    let raw = String::from_utf8_lossy(raw.unwrap_or_default());
    let after = |name: &str| -> Option<&str> {
        let at = raw.find(&format!("\"{name}\":"))?;
        Some(&raw[at + name.len() + 3..])
    };
    let text = |name: &str| -> String {
        after(name)
            .and_then(|rest| rest.strip_prefix('"'))
            .and_then(|rest| rest.split('"').next())
            .and_then(|value| serde_json::from_str::<String>(&format!("\"{value}\"")).ok())
            .unwrap_or_default()
    };
    let number = |name: &str| -> u64 {
        after(name)
            .map(|rest| {
                rest.bytes()
                    .take_while(u8::is_ascii_digit)
                    .map(char::from)
                    .collect::<String>()
            })
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_default()
    };
    let webhook = Some(text("webhook"))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut job = Job {
        id,
        event: number("event"),
        webhook: webhook.into(),
        event_id: text("event_id").into(),
        event_type: text("event_type"),
        target: target.into(),
        priority,
        received_at_ms: number("received_at_ms"),
        due_ms: now_ms,
        attempts: u32::try_from(number("attempts")).unwrap_or(u32::MAX),
        history: Vec::new(),
        lease: number("lease"),
        leased: false,
        redelivery: false,
    };
    job.record(Attempt {
        at_ms: now_ms,
        duration_ms: 0,
        backend: None,
        status: None,
        error: Some(format!(
            "the job's record could not be read ({reason}); what could be read is kept"
        )),
        response: None,
    });
    DeadLetter {
        job,
        reason: "corrupt".into(),
        dead_at_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(at_ms: u64) -> Attempt {
        Attempt {
            at_ms,
            duration_ms: 1,
            backend: None,
            status: Some(503),
            error: None,
            response: None,
        }
    }

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({
            "id": 2, "event": 1, "webhook": "stripe", "event_id": "evt", "event_type": "t",
            "target": "notify", "priority": "normal", "received_at_ms": 10, "due_ms": 10,
            "attempts": 0, "lease": 1, "leased": true
        }))
        .unwrap()
    }

    #[test]
    fn a_retry_in_a_full_store_counts_the_attempt_without_growing_the_history() {
        let grown = job()
            .retried(attempt(1), 100, true)
            .retried(attempt(2), 200, true);
        assert_eq!((grown.attempts, grown.history.len()), (2, 2));
        let kept = grown.retried(attempt(3), 300, false);
        assert_eq!((kept.attempts, kept.history.len()), (3, 2));
        assert_eq!(kept.history.last().unwrap().at_ms, 3, "the latest is kept");
        assert_eq!((kept.due_ms, kept.leased), (300, false));
        // A job with no history yet gets its first entry all the same.
        let first = job().retried(attempt(1), 100, false);
        assert_eq!((first.attempts, first.history.len()), (1, 1));
    }

    #[test]
    fn a_replayed_jobs_attempts_join_its_outcome_once() {
        let mut job = job();
        job.history = vec![attempt(1), attempt(2), attempt(3)];
        let mut outcome = TargetOutcome::new("notify".into(), TargetStatus::Dead);
        outcome.attempts = vec![attempt(1), attempt(2)];
        outcome.add_attempts(&job);
        assert_eq!(outcome.attempts, [attempt(1), attempt(2), attempt(3)]);
        for at in 10..(10 + KEPT_ATTEMPTS as u64) {
            job.history = vec![attempt(at)];
            outcome.add_attempts(&job);
        }
        assert_eq!(outcome.attempts.len(), KEPT_ATTEMPTS);
        assert_eq!(outcome.attempts[0].at_ms, 10, "the oldest go first");
    }

    #[test]
    fn the_history_keeps_the_latest_attempts_up_to_its_limit() {
        let mut job = job();
        for at in 0..(HISTORY_LIMIT as u64 + 5) {
            job.record(attempt(at));
        }
        assert_eq!(job.history.len(), HISTORY_LIMIT);
        assert_eq!(job.history[0].at_ms, 5);
        assert_eq!(job.attempts as usize, HISTORY_LIMIT + 5);
    }
}
