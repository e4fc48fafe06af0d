//! The embedded store: one redb file under `store.path`. An event is
//! accepted in a single write transaction that records its dedup key, its
//! metadata and body, and one delivery job per target (or a dead letter
//! `unrouted` when no route matched); the commit is fsynced (redb's default,
//! immediate durability) before the provider may get its 2xx. Jobs are keyed
//! by (priority, sequence), so reading them in key order is high before
//! normal before low, oldest first.

use std::path::Path;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::webhooks::event::{EventMeta, Priority};

const DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const JOBS: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("jobs");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

#[derive(Debug, thiserror::Error)]
pub enum LocalStoreError {
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store read failed: {0}")]
    Read(String),
}

fn write_error(error: impl std::fmt::Display) -> LocalStoreError {
    LocalStoreError::Write(error.to_string())
}

fn read_error(error: impl std::fmt::Display) -> LocalStoreError {
    LocalStoreError::Read(error.to_string())
}

/// A verified request, as the ack path hands it over.
#[derive(Clone, Copy)]
pub struct NewEvent<'a> {
    pub webhook: &'a str,
    pub meta: &'a EventMeta,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

impl NewEvent<'_> {
    /// The metadata either store keeps for this event.
    pub fn stored(&self, received_at_ms: u64) -> StoredEvent {
        StoredEvent {
            webhook: self.webhook.to_string(),
            id: self.meta.id.clone(),
            event_type: self.meta.event_type.clone(),
            content_type: self.content_type.map(str::to_string),
            context: self.meta.context.clone(),
            received_at_ms,
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
    pub webhook: String,
    pub id: String,
    pub event_type: String,
    pub content_type: Option<String>,
    pub context: Vec<(String, String)>,
    pub received_at_ms: u64,
}

/// One (event, target) pair waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub event: u64,
    pub target: String,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event: u64,
    /// Empty for an event no route matched.
    pub target: String,
    pub reason: String,
    pub dead_at_ms: u64,
}

pub struct LocalStore {
    db: Database,
}

fn priority_rank(priority: Priority) -> u8 {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

fn dedup_key(webhook: &str, id: &str) -> String {
    format!("{webhook}\u{1f}{id}")
}

impl LocalStore {
    /// Opens (or creates) `dir/events.redb`.
    pub fn open(dir: &Path) -> Result<Self, LocalStoreError> {
        let path = dir.join("events.redb");
        let open_error = |message: String| LocalStoreError::Open {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| open_error(e.to_string()))?;
        // Create every table once, so that readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| open_error(e.to_string()))?;
        {
            txn.open_table(DEDUP)
                .map_err(|e| open_error(e.to_string()))?;
            txn.open_table(EVENTS)
                .map_err(|e| open_error(e.to_string()))?;
            txn.open_table(BODIES)
                .map_err(|e| open_error(e.to_string()))?;
            txn.open_table(JOBS)
                .map_err(|e| open_error(e.to_string()))?;
            txn.open_table(DEAD)
                .map_err(|e| open_error(e.to_string()))?;
            txn.open_table(COUNTERS)
                .map_err(|e| open_error(e.to_string()))?;
        }
        txn.commit().map_err(|e| open_error(e.to_string()))?;
        Ok(Self { db })
    }

    /// Stores a verified event and its jobs, durably, unless the same event
    /// was accepted within `dedup_window`.
    pub fn accept(
        &self,
        event: &NewEvent<'_>,
        now_ms: u64,
        dedup_window: Duration,
    ) -> Result<Acceptance, LocalStoreError> {
        Ok(self
            .accept_all(&[(*event, now_ms, dedup_window)])?
            .pop()
            .expect("one answer per event"))
    }

    /// Stores several events in one transaction and one fsync (group
    /// commit): either all are stored or none is. Each gets its own answer;
    /// a second copy inside the batch is a duplicate.
    pub fn accept_all(
        &self,
        events: &[(NewEvent<'_>, u64, Duration)],
    ) -> Result<Vec<Acceptance>, LocalStoreError> {
        let txn = self.db.begin_write().map_err(write_error)?;
        let answers = events
            .iter()
            .map(|(event, now_ms, window)| insert(&txn, event, *now_ms, *window))
            .collect::<Result<Vec<_>, _>>();
        match answers {
            Ok(answers) => {
                txn.commit().map_err(write_error)?;
                Ok(answers)
            }
            Err(error) => {
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    /// Jobs waiting, high priority first, oldest first within a priority.
    pub fn pending(&self) -> Result<Vec<Job>, LocalStoreError> {
        self.read_all(JOBS)
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, LocalStoreError> {
        self.read_all(DEAD)
    }

    /// Every record of a table of JSON values, in key order.
    fn read_all<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        &self,
        definition: TableDefinition<K, &'static [u8]>,
    ) -> Result<Vec<T>, LocalStoreError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let table = txn.open_table(definition).map_err(read_error)?;
        table
            .iter()
            .map_err(read_error)?
            .map(|entry| {
                let (_, value) = entry.map_err(read_error)?;
                serde_json::from_slice(value.value()).map_err(read_error)
            })
            .collect()
    }

    /// An event's metadata and body.
    pub fn event(&self, sequence: u64) -> Result<Option<(StoredEvent, Vec<u8>)>, LocalStoreError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let events = txn.open_table(EVENTS).map_err(read_error)?;
        let Some(metadata) = events.get(sequence).map_err(read_error)? else {
            return Ok(None);
        };
        let stored = serde_json::from_slice(metadata.value()).map_err(read_error)?;
        let bodies = txn.open_table(BODIES).map_err(read_error)?;
        let body = bodies
            .get(sequence)
            .map_err(read_error)?
            .map(|b| b.value().to_vec())
            .unwrap_or_default();
        Ok(Some((stored, body)))
    }

    /// Forgets dedup keys older than `window`; returns how many.
    pub fn prune_dedup(&self, now_ms: u64, window: Duration) -> Result<u64, LocalStoreError> {
        let cutoff = now_ms.saturating_sub(window.as_millis() as u64);
        let txn = self.db.begin_write().map_err(write_error)?;
        let removed = {
            let mut dedup = txn.open_table(DEDUP).map_err(write_error)?;
            let before = dedup.len().map_err(write_error)?;
            dedup
                .retain(|_, seen_at| seen_at >= cutoff)
                .map_err(write_error)?;
            before - dedup.len().map_err(write_error)?
        };
        txn.commit().map_err(write_error)?;
        Ok(removed)
    }
}

/// One event's records inside an open write transaction.
fn insert(
    txn: &redb::WriteTransaction,
    event: &NewEvent<'_>,
    now_ms: u64,
    dedup_window: Duration,
) -> Result<Acceptance, LocalStoreError> {
    let key = dedup_key(event.webhook, &event.meta.id);
    let sequence = {
        let mut dedup = txn.open_table(DEDUP).map_err(write_error)?;
        if let Some(seen_at) = dedup.get(key.as_str()).map_err(write_error)? {
            if now_ms.saturating_sub(seen_at.value()) < dedup_window.as_millis() as u64 {
                return Ok(Acceptance::Duplicate);
            }
        }
        dedup.insert(key.as_str(), now_ms).map_err(write_error)?;

        let mut counters = txn.open_table(COUNTERS).map_err(write_error)?;
        let next = counters
            .get("sequence")
            .map_err(write_error)?
            .map_or(1, |v| v.value());
        // One number per event and per job: a job's key never repeats.
        let jobs = event.meta.targets.len().max(1) as u64;
        counters
            .insert("sequence", next + 1 + jobs)
            .map_err(write_error)?;

        let metadata = serde_json::to_vec(&event.stored(now_ms)).map_err(write_error)?;
        txn.open_table(EVENTS)
            .map_err(write_error)?
            .insert(next, metadata.as_slice())
            .map_err(write_error)?;
        txn.open_table(BODIES)
            .map_err(write_error)?
            .insert(next, event.body)
            .map_err(write_error)?;

        if event.meta.targets.is_empty() {
            let dead = DeadLetter {
                event: next,
                target: String::new(),
                reason: "unrouted".into(),
                dead_at_ms: now_ms,
            };
            let value = serde_json::to_vec(&dead).map_err(write_error)?;
            txn.open_table(DEAD)
                .map_err(write_error)?
                .insert(next + 1, value.as_slice())
                .map_err(write_error)?;
        } else {
            let mut table = txn.open_table(JOBS).map_err(write_error)?;
            let rank = priority_rank(event.meta.priority);
            for (offset, target) in event.meta.targets.iter().enumerate() {
                let job = Job {
                    event: next,
                    target: target.clone(),
                    attempts: 0,
                };
                let value = serde_json::to_vec(&job).map_err(write_error)?;
                table
                    .insert((rank, next + 1 + offset as u64), value.as_slice())
                    .map_err(write_error)?;
            }
        }
        next
    };
    Ok(Acceptance::Accepted(sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-store-{}-{name}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn meta(id: &str, priority: Priority, targets: &[&str]) -> EventMeta {
        EventMeta {
            id: id.into(),
            event_type: "payment_intent.succeeded".into(),
            context: vec![("wedding_id".into(), "w-1".into())],
            priority,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn accept(store: &LocalStore, meta: &EventMeta, now_ms: u64) -> Acceptance {
        store
            .accept(
                &NewEvent {
                    webhook: "stripe",
                    meta,
                    content_type: Some("application/json"),
                    body: br#"{"id":"evt"}"#,
                },
                now_ms,
                HOUR,
            )
            .unwrap()
    }

    #[test]
    fn an_accepted_event_has_one_job_per_target_in_priority_order() {
        let store = LocalStore::open(&dir("order")).unwrap();
        accept(&store, &meta("evt_low", Priority::Low, &["analytics"]), 1);
        accept(
            &store,
            &meta("evt_normal", Priority::Normal, &["notify"]),
            2,
        );
        let Acceptance::Accepted(high) = accept(
            &store,
            &meta("evt_high", Priority::High, &["notify", "supplier"]),
            3,
        ) else {
            panic!("accepted")
        };
        let targets: Vec<_> = store
            .pending()
            .unwrap()
            .into_iter()
            .map(|job| job.target)
            .collect();
        assert_eq!(targets, ["notify", "supplier", "notify", "analytics"]);
        let (stored, body) = store.event(high).unwrap().unwrap();
        assert_eq!((stored.id.as_str(), stored.received_at_ms), ("evt_high", 3));
        assert_eq!(body, br#"{"id":"evt"}"#);
    }

    #[test]
    fn the_same_event_is_a_duplicate_within_the_window_only() {
        let store = LocalStore::open(&dir("dedup")).unwrap();
        let event = meta("evt_1", Priority::Normal, &["notify"]);
        assert!(matches!(
            accept(&store, &event, 1_000),
            Acceptance::Accepted(_)
        ));
        assert_eq!(
            accept(&store, &event, 1_000 + 3_599_999),
            Acceptance::Duplicate
        );
        assert_eq!(store.pending().unwrap().len(), 1, "a duplicate adds no job");
        assert!(matches!(
            accept(&store, &event, 1_000 + 3_600_000),
            Acceptance::Accepted(_)
        ));
        assert_eq!(store.prune_dedup(10 * 3_600_000, HOUR).unwrap(), 1);
    }

    #[test]
    fn unrouted_events_are_kept_as_dead_letters() {
        let store = LocalStore::open(&dir("unrouted")).unwrap();
        accept(&store, &meta("evt_x", Priority::Normal, &[]), 5);
        assert!(store.pending().unwrap().is_empty());
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].reason.as_str(), dead[0].target.as_str()),
            ("unrouted", "")
        );
        assert_eq!(store.event(dead[0].event).unwrap().unwrap().0.id, "evt_x");
    }

    #[test]
    fn what_was_accepted_survives_closing_and_reopening() {
        let path = dir("reopen");
        {
            let store = LocalStore::open(&path).unwrap();
            accept(&store, &meta("evt_1", Priority::High, &["notify"]), 1);
        }
        let store = LocalStore::open(&path).unwrap();
        assert_eq!(store.pending().unwrap().len(), 1);
        assert_eq!(
            accept(&store, &meta("evt_1", Priority::High, &["notify"]), 2),
            Acceptance::Duplicate,
            "dedup keys are durable too"
        );
        let Acceptance::Accepted(next) =
            accept(&store, &meta("evt_2", Priority::Low, &["a", "b"]), 3)
        else {
            panic!("accepted")
        };
        assert!(next > 1, "sequence numbers continue after a restart");
        assert_eq!(store.pending().unwrap().len(), 3);
    }
}
