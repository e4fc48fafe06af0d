//! Rate limits shared by every replica: the same GCRA as the per-pod
//! limiter, run atomically in Redis by one Lua script per decision (loaded
//! once, then `EVALSHA`, falling back to `EVAL` on `NOSCRIPT`). The script
//! takes Redis's clock, so replicas whose clocks differ still agree, and it
//! checks the provider's shared pause in the same round trip.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::ratelimit::{composite_key, micros, Decision, Gcra};
use crate::config::services::{LimitKey, RateLimit};
use crate::store::redis::{RedisCallError, RedisStore};

const DECIDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return {3, math.ceil((pause - now) / 1000), 0} end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_until = now + tolerance
local reset_ms = math.ceil((new_tat - now) / 1000)
if new_tat <= allowed_until then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', reset_ms + 1000)
  return {0, math.floor((allowed_until - new_tat) / interval), reset_ms}
end
local late_ms = math.ceil((new_tat - allowed_until) / 1000)
if new_tat - allowed_until <= max_wait then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', reset_ms + 1000)
  return {1, late_ms, reset_ms}
end
return {2, late_ms, 0}
"#;

const PAUSE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1]) * 1000
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], string.format('%d', until_), 'PX', tonumber(ARGV[1]))
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
"#;

/// The channel on which replicas announce provider pauses; a message is
/// `<service>\t<milliseconds>`.
pub fn pause_channel(store: &RedisStore) -> String {
    store.key("pauses", "announce", "")
}

/// Reads an announcement: (service, pause).
pub fn parse_pause_message(payload: &str) -> Option<(&str, Duration)> {
    let (service, millis) = payload.split_once('\t')?;
    Some((service, Duration::from_millis(millis.parse().ok()?)))
}

/// What is left of a service's shared pause, for a replica that was not
/// listening when it was announced.
pub async fn remaining_pause(
    store: &RedisStore,
    service: &str,
) -> Result<Option<Duration>, RedisCallError> {
    let key = pause_key(store, service);
    let millis: i64 = store
        .run("pause", |mut connection| async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
    Ok((millis > 0).then(|| Duration::from_millis(millis as u64)))
}

/// What the shared limiter says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDecision {
    Limit(Decision),
    /// Another replica saw the provider ask for a pause; this much is left.
    ProviderPaused {
        remaining_ms: u64,
    },
}

pub struct GlobalLimiter {
    store: Arc<RedisStore>,
    service: String,
    gcra: Gcra,
    keys: Vec<LimitKey>,
    decide: redis::Script,
}

impl GlobalLimiter {
    pub fn new(service: &str, limit: &RateLimit, store: Arc<RedisStore>) -> Self {
        Self {
            store,
            service: service.to_string(),
            gcra: Gcra::new(limit),
            keys: limit.key.clone(),
            decide: redis::Script::new(DECIDE),
        }
    }

    pub async fn decide(
        &self,
        headers: &HeaderMap,
        wait_cap: Duration,
    ) -> Result<SharedDecision, RedisCallError> {
        let bucket = self.store.key(
            "ratelimit",
            &self.service,
            &composite_key(&self.keys, headers),
        );
        let pause = pause_key(&self.store, &self.service);
        let max_wait = self.gcra.max_wait.min(micros(wait_cap));
        let (kind, a, b): (u8, u64, u64) = self
            .store
            .run("rate_limit", |mut connection| async move {
                self.decide
                    .key(bucket)
                    .key(pause)
                    .arg(self.gcra.interval)
                    .arg(self.gcra.tolerance)
                    .arg(max_wait)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(match kind {
            0 => SharedDecision::Limit(Decision::Allow {
                remaining: a,
                reset_ms: b,
            }),
            1 => SharedDecision::Limit(Decision::Wait {
                delay_ms: a,
                reset_ms: b,
            }),
            3 => SharedDecision::ProviderPaused { remaining_ms: a },
            _ => SharedDecision::Limit(Decision::Reject { retry_after_ms: a }),
        })
    }
}

fn pause_key(store: &RedisStore, service: &str) -> String {
    store.key("pause", service, "")
}

/// Shares a provider's requested pause with every replica: kept in Redis for
/// its length and announced to the replicas listening now.
pub async fn share_pause(
    store: &RedisStore,
    service: &str,
    pause: Duration,
) -> Result<(), RedisCallError> {
    let key = pause_key(store, service);
    let millis = pause.as_millis().max(1) as u64;
    let channel = pause_channel(store);
    let message = format!("{service}\t{millis}");
    store
        .run("provider_pause", |mut connection| async move {
            redis::Script::new(PAUSE)
                .key(key)
                .arg(millis)
                .arg(channel)
                .arg(message)
                .invoke_async::<i64>(&mut connection)
                .await
        })
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_announcements_round_trip() {
        assert_eq!(
            parse_pause_message("stripe\t30000"),
            Some(("stripe", Duration::from_secs(30)))
        );
        for garbage in ["stripe", "stripe\t", "stripe\tsoon", ""] {
            assert_eq!(parse_pause_message(garbage), None, "{garbage:?}");
        }
    }
}
