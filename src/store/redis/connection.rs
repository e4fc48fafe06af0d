//! The Redis connection: made lazily (the sidecar starts and serves while
//! Redis is down), dropped after a failed call and made again on the next
//! one, and guarded so that a dead Redis costs a request nothing: after a
//! failure no call is tried for [`QUIET_AFTER_FAILURE`], and every call is
//! bounded in time: [`CALL_TIMEOUT`] on the request path of the egress,
//! [`EVENT_CALL_TIMEOUT`] for the event store. Callers decide what a failure
//! means (`on_store_error`, 503 `store_unavailable`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;

use crate::time::Clock;

/// A rate-limit decision or a pause lookup holds up an app's request.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// An event-store call holds up a webhook's ack (the tightest provider
/// budget is Slack's 3 s) or a delivery worker, and a Redis that fsyncs every
/// write (`appendfsync always`) may stall for hundreds of milliseconds: a
/// longer wait is better than refusing an event it would have stored.
pub const EVENT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
pub const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("the Redis store is unreachable (retrying in the background)")]
    Unavailable,
    #[error("the Redis store did not answer within {}ms", .0.as_millis())]
    Timeout(Duration),
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
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
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

    /// Runs `call` on the shared connection within [`CALL_TIMEOUT`]; `op`
    /// names the operation in `sidecar_store_errors_total`.
    pub async fn run<T, F, Fut>(&self, op: &str, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(op, CALL_TIMEOUT, call).await
    }

    /// Runs `call` on the shared connection, connecting first if need be,
    /// all within `deadline`.
    pub async fn run_within<T, F, Fut>(
        &self,
        op: &str,
        deadline: Duration,
        call: F,
    ) -> Result<T, RedisCallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(deadline, self.try_run(call))
            .await
            .unwrap_or(Err(RedisCallError::Timeout(deadline)));
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

    /// Counts a failure found in an answer (not in the call itself).
    pub fn count_error(&self, op: &str) {
        self.errors.with_label_values(&[op]).inc();
    }

    async fn try_run<T, F, Fut>(&self, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.clock.now_millis() < self.quiet_until.load(Ordering::Acquire) {
            return Err(RedisCallError::Unavailable);
        }
        let connection = self.connection().await?;
        call(connection).await.map_err(RedisCallError::from)
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisCallError> {
        if let Some(manager) = self.connection.read().await.as_ref() {
            return Ok(manager.clone());
        }
        let mut slot = self.connection.write().await;
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        // Each call brings its own deadline; the manager's bounds are only
        // the longest of them.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(EVENT_CALL_TIMEOUT)
            .set_response_timeout(EVENT_CALL_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(manager.clone());
        Ok(manager)
    }
}
