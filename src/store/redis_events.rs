//! Accepted webhook events in Redis, for replicas that share one queue:
//! the same records as the embedded store (`local.rs`), written by one Lua
//! script per event, so the dedup key, the event, its body and its jobs
//! appear together or not at all. Every key carries the hash tag `{q}`: a
//! script's keys must share a Cluster slot, and the queue is one unit.

use std::sync::Arc;
use std::time::Duration;

use super::local::{Acceptance, DeadLetter, Job, NewEvent, StoredEvent};
use super::redis::{RedisStore, StoreError};
use crate::webhooks::event::Priority;

const ACCEPT: &str = r#"
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ARGV[1]) then return -1 end
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], seq, ARGV[2])
redis.call('HSET', KEYS[4], seq, ARGV[4])
local targets = #ARGV - 4
if targets == 0 then
  redis.call('HSET', KEYS[6], seq, cjson.encode({event = seq, target = '', reason = 'unrouted', dead_at_ms = tonumber(ARGV[3])}))
else
  for i = 1, targets do
    redis.call('ZADD', KEYS[5], seq * 1000 + i, cjson.encode({event = seq, target = ARGV[4 + i], attempts = 0}))
  end
end
return seq
"#;

const PRIORITIES: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

pub struct RedisEventStore {
    store: Arc<RedisStore>,
    accept: redis::Script,
}

impl RedisEventStore {
    pub fn new(store: Arc<RedisStore>) -> Self {
        Self {
            store,
            accept: redis::Script::new(ACCEPT),
        }
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        self.store.key(kind, "q", rest)
    }

    /// Stores a verified event and its jobs unless the same event was
    /// accepted within `dedup_window` (the dedup key expires with it).
    pub async fn accept(
        &self,
        event: &NewEvent<'_>,
        now_ms: u64,
        dedup_window: Duration,
    ) -> Result<Acceptance, StoreError> {
        let metadata = serde_json::to_string(&event.stored(now_ms)).expect("plain data serializes");
        let mut invocation = self.accept.prepare_invoke();
        invocation
            .key(self.key(
                "dedup",
                &format!(":{}\u{1f}{}", event.webhook, event.meta.id),
            ))
            .key(self.key("sequence", ""))
            .key(self.key("events", ""))
            .key(self.key("bodies", ""))
            .key(self.key("jobs", &format!(":{}", event.meta.priority.as_str())))
            .key(self.key("dead", ""))
            .arg(dedup_window.as_millis().max(1) as u64)
            .arg(metadata)
            .arg(now_ms)
            .arg(event.body);
        for target in &event.meta.targets {
            invocation.arg(target);
        }
        let sequence: i64 = self
            .store
            .run("accept", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(match u64::try_from(sequence) {
            Ok(sequence) => Acceptance::Accepted(sequence),
            Err(_) => Acceptance::Duplicate,
        })
    }

    /// Jobs waiting, high priority first, oldest first within a priority.
    pub async fn pending(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        for priority in PRIORITIES {
            let key = self.key("jobs", &format!(":{}", priority.as_str()));
            let members: Vec<String> = self
                .store
                .run("read", |mut connection| async move {
                    redis::cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            for member in members {
                jobs.push(parse(&member)?);
            }
        }
        Ok(jobs)
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let key = self.key("dead", "");
        let entries: Vec<(u64, String)> = self
            .store
            .run("read", |mut connection| async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let mut dead = entries
            .iter()
            .map(|(_, value)| parse(value))
            .collect::<Result<Vec<DeadLetter>, _>>()?;
        dead.sort_by_key(|d| d.event);
        Ok(dead)
    }

    /// An event's metadata and body.
    pub async fn event(&self, sequence: u64) -> Result<Option<(StoredEvent, Vec<u8>)>, StoreError> {
        let (events, bodies) = (self.key("events", ""), self.key("bodies", ""));
        let (metadata, body): (Option<String>, Option<Vec<u8>>) = self
            .store
            .run("read", |mut connection| async move {
                redis::pipe()
                    .hget(events, sequence)
                    .hget(bodies, sequence)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        match metadata {
            None => Ok(None),
            Some(metadata) => Ok(Some((parse(&metadata)?, body.unwrap_or_default()))),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "unreadable record in the store",
            e.to_string(),
        )))
    })
}
