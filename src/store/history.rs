//! The event log's view of the store: what an event's status is, which
//! events a filter picks, how far back the log reaches and what a page of
//! it holds. Plain data and functions; each store finds the events.

use std::time::Duration;

use super::records::{StoredEvent, TargetStatus};

/// The most events one filtered redelivery queues unless `max` says less.
pub const DEFAULT_REDELIVER_MAX: u64 = 10_000;

/// The most of the store's capacity finished events may keep it at: past
/// it, retention drops the oldest whatever their age, so that the log
/// alone never holds a store near full (the `WedsyncStoreNearlyFull` alert
/// fires at 80%) nor takes the room a backlog needs.
pub const HISTORY_SHARE: f64 = 0.5;

/// How long and how much of the log is kept (`store.history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Finished events older than this go.
    pub retention: Duration,
    /// Beyond this many bytes of events, the oldest finished ones go.
    pub max_size: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            max_size: 256 << 20,
        }
    }
}

/// An event as a whole: `pending` while any target waits, else
/// `delivered` or `dead` when every target agrees, else `partial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Pending,
    Delivered,
    Dead,
    Partial,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Partial => "partial",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "dead" => Self::Dead,
            "partial" => Self::Partial,
            _ => return None,
        })
    }

    /// The status of an event whose targets stand as `targets` say. An
    /// event recorded before the log with no outcome yet is pending.
    pub fn of(targets: impl IntoIterator<Item = TargetStatus>) -> Self {
        let (mut pending, mut delivered, mut dead) = (false, false, false);
        for status in targets {
            match status {
                TargetStatus::Pending => pending = true,
                TargetStatus::Delivered => delivered = true,
                TargetStatus::Dead => dead = true,
            }
        }
        match (pending, delivered, dead) {
            (true, _, _) | (false, false, false) => Self::Pending,
            (false, true, false) => Self::Delivered,
            (false, false, true) => Self::Dead,
            (false, true, true) => Self::Partial,
        }
    }
}

pub fn status_of(event: &StoredEvent) -> EventStatus {
    EventStatus::of(event.targets.iter().map(|t| t.status))
}

/// Which events a list or a redelivery covers; every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// The webhook (source) that received it.
    pub source: Option<String>,
    /// An exact type, or a `prefix.*` glob.
    pub event_type: Option<String>,
    /// The event's status; with `target`, that target's.
    pub status: Option<EventStatus>,
    /// Events with a delivery to this target.
    pub target: Option<String>,
    /// (field, value) pairs of the event's context.
    pub context: Vec<(String, String)>,
    /// Received at or after, Unix ms.
    pub since_ms: Option<u64>,
    /// Received at or before, Unix ms.
    pub until_ms: Option<u64>,
}

impl EventFilter {
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.source.as_ref().is_none_or(|s| event.webhook == **s)
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| type_matches(t, &event.event_type))
            && self.since_ms.is_none_or(|s| event.received_at_ms >= s)
            && self.until_ms.is_none_or(|u| event.received_at_ms <= u)
            && self
                .context
                .iter()
                .all(|(field, value)| event.context.iter().any(|(k, v)| k == field && v == value))
            && self.target_and_status_match(event)
    }

    fn target_and_status_match(&self, event: &StoredEvent) -> bool {
        match (&self.target, self.status) {
            (None, None) => true,
            (None, Some(status)) => status_of(event) == status,
            (Some(target), status) => event.targets.iter().any(|t| {
                t.target == **target && status.is_none_or(|s| EventStatus::of([t.status]) == s)
            }),
        }
    }

    /// Whether an event received at `received_at_ms` may still match: the
    /// log is read newest first, so one before `since` ends the search.
    pub fn reaches_back_to(&self, received_at_ms: u64) -> bool {
        self.since_ms.is_none_or(|s| received_at_ms >= s)
    }
}

/// `prefix.*` matches every type starting with `prefix.`; anything else
/// matches itself only.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// The most events one page reads, in either store: a filter that matches
/// little answers fewer items and a cursor to go on from, instead of
/// reading the whole log. About 10 ms of decoding.
pub const SCAN_BUDGET: usize = 8_000;

/// How far a newest-first read of the log got, and the filter's total
/// that follows from it.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    read: usize,
    matched: u64,
    /// Received times of the first and the last event read.
    newest_ms: u64,
    last_ms: u64,
    /// The budget ended the read before the candidates did.
    cut_short: bool,
}

impl Tally {
    /// One more event read, received at `received_ms`.
    pub fn read(&mut self, received_ms: u64) {
        if self.read == 0 {
            self.newest_ms = received_ms;
        }
        self.read += 1;
        self.last_ms = received_ms;
    }

    pub fn matched(&mut self) {
        self.matched += 1;
    }

    /// Whether the budget is spent: then the read ends here, cut short.
    pub fn spent(&mut self) -> bool {
        self.cut_short = self.read >= SCAN_BUDGET;
        self.cut_short
    }

    /// The budget ended the read before the candidates did: the total is
    /// an estimate, which needs the log's oldest time.
    pub fn cut_short(&self) -> bool {
        self.cut_short
    }

    /// The filter's total: exact when every candidate was read, otherwise
    /// the rate of matches over the time read, stretched to `lower_ms`.
    pub fn estimate(&self, lower_ms: u64) -> u64 {
        if !self.cut_short || self.read == 0 {
            return self.matched;
        }
        let read_span = self.newest_ms.saturating_sub(self.last_ms).max(1);
        let whole_span = self.newest_ms.saturating_sub(lower_ms).max(read_span);
        (self.matched as u128 * whole_span as u128 / read_span as u128) as u64
    }
}

/// A page of the log, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// (sequence, event) pairs.
    pub items: Vec<(u64, StoredEvent)>,
    /// Where the next page starts, when there may be one.
    pub next: Option<String>,
    /// How many events the filter matches in all: exact when the search
    /// read every candidate, otherwise extrapolated from what it read.
    pub total_estimate: u64,
}

/// One event as the log keeps it, with its body and the jobs still
/// delivering it (whose attempts are not in the record yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDetail {
    pub sequence: u64,
    pub event: StoredEvent,
    pub body: Vec<u8>,
    pub jobs: Vec<super::records::Job>,
}

/// What a redelivery by filter found, or queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivered {
    /// The events matched (a dry run, or a refusal over `max`).
    Matched(u64),
    /// The events queued again.
    Queued(u64),
}

/// How many events and bytes the log holds (`sidecar_store_history_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryUsage {
    pub events: u64,
    pub bytes: u64,
}

/// A cursor of the event log: the sequence below which the next page
/// starts, as text.
pub fn cursor(sequence: u64) -> String {
    format!("{sequence}")
}

pub fn parse_cursor(text: &str) -> Result<u64, super::StoreError> {
    text.parse()
        .map_err(|_| super::StoreError::InvalidCursor(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::TargetOutcome;

    fn event(targets: &[(&str, TargetStatus)]) -> StoredEvent {
        StoredEvent {
            webhook: "stripe".into(),
            id: "evt_1".into(),
            event_type: "payment_intent.succeeded".into(),
            content_type: None,
            context: vec![("wedding_id".into(), "w-42".into())],
            received_at_ms: 1_000,
            trace: None,
            targets: targets
                .iter()
                .map(|(t, s)| TargetOutcome::new((*t).into(), *s))
                .collect(),
            priority: None,
            size: 0,
            headers: Vec::new(),
            finished_at_ms: None,
            recovered: false,
        }
    }

    #[test]
    fn an_event_is_pending_while_any_target_waits_and_partial_when_they_disagree() {
        use TargetStatus::*;
        assert_eq!(EventStatus::of([Delivered, Pending]), EventStatus::Pending);
        assert_eq!(
            EventStatus::of([Delivered, Delivered]),
            EventStatus::Delivered
        );
        assert_eq!(EventStatus::of([Dead]), EventStatus::Dead);
        assert_eq!(EventStatus::of([Dead, Delivered]), EventStatus::Partial);
        assert_eq!(EventStatus::of([]), EventStatus::Pending);
    }

    #[test]
    fn a_status_with_a_target_is_that_targets() {
        use TargetStatus::*;
        let e = event(&[("notify", Delivered), ("ledger", Dead)]);
        let filter = |target: Option<&str>, status| EventFilter {
            target: target.map(str::to_string),
            status,
            ..EventFilter::default()
        };
        assert!(filter(None, Some(EventStatus::Partial)).matches(&e));
        assert!(!filter(None, Some(EventStatus::Dead)).matches(&e));
        assert!(filter(Some("ledger"), Some(EventStatus::Dead)).matches(&e));
        assert!(!filter(Some("notify"), Some(EventStatus::Dead)).matches(&e));
        assert!(filter(Some("notify"), None).matches(&e));
        assert!(!filter(Some("crm"), None).matches(&e));
    }

    #[test]
    fn a_total_is_exact_when_all_was_read_and_stretched_over_time_when_not() {
        let mut all = Tally::default();
        for ms in (0..10).rev() {
            all.read(ms * 1_000);
            if ms % 2 == 0 {
                all.matched();
            }
        }
        assert!(!all.spent());
        assert_eq!(all.estimate(0), 5);
        // Half the time read (10 s of 20), 3 matched: about 6 in all.
        let mut part = Tally::default();
        for ms in [20_000, 15_000, 10_000] {
            part.read(ms);
            part.matched();
        }
        part.cut_short = true;
        assert_eq!(part.estimate(0), 6);
        assert_eq!(Tally::default().estimate(0), 0);
    }

    #[test]
    fn types_context_and_time_narrow_the_match() {
        let e = event(&[("notify", TargetStatus::Delivered)]);
        let with = |f: EventFilter| f.matches(&e);
        assert!(with(EventFilter {
            event_type: Some("payment_intent.*".into()),
            ..Default::default()
        }));
        assert!(!with(EventFilter {
            event_type: Some("payment_intent".into()),
            ..Default::default()
        }));
        assert!(!with(EventFilter {
            event_type: Some("charge.*".into()),
            ..Default::default()
        }));
        assert!(with(EventFilter {
            context: vec![("wedding_id".into(), "w-42".into())],
            ..Default::default()
        }));
        assert!(!with(EventFilter {
            context: vec![("wedding_id".into(), "w-43".into())],
            ..Default::default()
        }));
        assert!(with(EventFilter {
            since_ms: Some(1_000),
            until_ms: Some(1_000),
            ..Default::default()
        }));
        assert!(!with(EventFilter {
            since_ms: Some(1_001),
            ..Default::default()
        }));
        assert!(!with(EventFilter {
            source: Some("resend".into()),
            ..Default::default()
        }));
    }
}
