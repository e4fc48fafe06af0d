//! The Redis connection: made lazily (the sidecar starts and serves while
//! Redis is down), dropped after a failed call and made again on the next
//! one, and guarded so that a dead Redis costs a request nothing: after a
//! failure no call is tried for [`QUIET_AFTER_FAILURE`], and every call is
//! bounded by [`CALL_TIMEOUT`]. Callers decide what a failure means
//! (`on_store_error`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;

use crate::resilience::clock::Clock;

pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
pub const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("the Redis store is unreachable (retrying in the background)")]
    Unavailable,
    #[error("the Redis store did not answer within {}ms", CALL_TIMEOUT.as_millis())]
    Timeout,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct RedisStore {
    client: redis::Client,
    /// None until the first call, and again after a failed one.
    connection: RwLock<Option<ConnectionManager>>,
    prefix: String,
    clock: Arc<dyn Clock>,
    /// Clock milliseconds before which no call is tried.
    quiet_until: AtomicU64,
    errors: IntCounterVec,
}

impl RedisStore {
    /// `url` is checked at config load; `errors` is `sidecar_store_errors_total`.
    pub fn new(
        url: &str,
        prefix: &str,
        clock: Arc<dyn Clock>,
        errors: IntCounterVec,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("store.url: {e}"))?;
        Ok(Self {
            client,
            connection: RwLock::new(None),
            prefix: prefix.to_string(),
            clock,
            quiet_until: AtomicU64::new(0),
            errors,
        })
    }

    /// A new client for a dedicated connection (subscriptions).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `<prefix>:<kind>:{<tag>}<rest>`: the braces make Redis Cluster place
    /// a key by `tag` alone, so keys a script touches together (a service's
    /// buckets and its pause) share a slot.
    pub fn key(&self, kind: &str, tag: &str, rest: &str) -> String {
        format!("{}:{kind}:{{{tag}}}{rest}", self.prefix)
    }

    /// Runs `call` on the shared connection, bounded in time; `op` names the
    /// operation in `sidecar_store_errors_total`.
    pub async fn run<T, F, Fut>(&self, op: &str, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = self.try_run(call).await;
        // A call refused during the quiet period tried nothing: it neither
        // extends the period nor counts as another failure.
        if result.is_err() && !matches!(result, Err(RedisCallError::Unavailable)) {
            // A manager that lost its server may keep failing; start afresh.
            *self.connection.write().await = None;
            self.errors.with_label_values(&[op]).inc();
            let quiet = self.clock.now_millis() + QUIET_AFTER_FAILURE.as_millis() as u64;
            self.quiet_until.fetch_max(quiet, Ordering::AcqRel);
        }
        result
    }

    async fn try_run<T, F, Fut>(&self, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.clock.now_millis() < self.quiet_until.load(Ordering::Acquire) {
            return Err(RedisCallError::Unavailable);
        }
        let connection = tokio::time::timeout(CALL_TIMEOUT, self.connection())
            .await
            .map_err(|_| RedisCallError::Timeout)??;
        tokio::time::timeout(CALL_TIMEOUT, call(connection))
            .await
            .map_err(|_| RedisCallError::Timeout)?
            .map_err(RedisCallError::from)
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisCallError> {
        if let Some(manager) = self.connection.read().await.as_ref() {
            return Ok(manager.clone());
        }
        let mut slot = self.connection.write().await;
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(manager.clone());
        Ok(manager)
    }
}
