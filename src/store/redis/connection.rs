//! The Redis connection: made lazily (the sidecar starts and serves while
//! Redis is down), dropped after a failed call and made again on the next
//! one, and guarded so that a dead Redis costs a request nothing: after a
//! failure no call is tried for [`QUIET_AFTER_FAILURE`], and every call is
//! bounded in time: [`CALL_TIMEOUT`] on the request path of the egress,
//! [`EVENT_CALL_TIMEOUT`] for the event store. Callers decide what a failure
//! means (`on_store_error`, 503 `store_unavailable`).
//!
//! One node or a Redis Cluster ([`RedisTarget`]): a cluster connection
//! follows MOVED/ASK redirects, refreshes its slot map and reconnects to
//! a promoted replica by itself; both speak TLS (`rediss://`) with our own
//! CA and, for mutual TLS, a client certificate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
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

/// Redis refused a write because it is over `maxmemory` (`OOM command not
/// allowed when used memory > 'maxmemory'`).
pub fn is_out_of_memory(error: &redis::RedisError) -> bool {
    error.code() == Some("OOM")
}

/// A master found through Redis Sentinel.
#[derive(Clone, Default)]
pub struct SentinelTarget {
    /// The name the sentinels monitor it by.
    pub master: String,
    /// The sentinels, as (host, port).
    pub nodes: Vec<(String, u16)>,
    /// Credentials of the master (and its replicas), not of the sentinels.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Where the store is and how to reach it.
#[derive(Clone, Default)]
pub struct RedisTarget {
    /// One node's URL, or a cluster's seed nodes; empty with `sentinel`.
    pub urls: Vec<String>,
    /// The master is the one the sentinels name, asked again after every
    /// failed call (a failover).
    pub sentinel: Option<SentinelTarget>,
    /// The seeds are a Redis Cluster's (`store.url` is a list).
    pub cluster: bool,
    /// PEM: the CA that signed the servers' certificates (`store.ca_file`);
    /// None trusts the system's roots.
    pub ca: Option<Vec<u8>>,
    /// PEM: a client certificate and its key, for mutual TLS.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTarget {
    /// One node at `url`, without TLS material.
    pub fn single(url: &str) -> Self {
        Self {
            urls: vec![url.to_string()],
            ..Self::default()
        }
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.client_cert.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client_cert
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        })
    }

    /// A client for one node (the `index`th URL, wrapping).
    fn node_client(&self, index: usize) -> Result<redis::Client, redis::RedisError> {
        let url = self.urls[index % self.urls.len()].as_str();
        match self.certificates() {
            Some(certs) if url.starts_with("rediss://") => {
                redis::Client::build_with_tls(url, certs)
            }
            _ => redis::Client::open(url),
        }
    }

    fn sentinel_client(
        &self,
        sentinel: &SentinelTarget,
    ) -> Result<redis::sentinel::SentinelClient, redis::RedisError> {
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        let sentinels = sentinel
            .nodes
            .iter()
            .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder = SentinelClientBuilder::new(
            sentinels,
            sentinel.master.clone(),
            SentinelServerType::Master,
        )?;
        if let Some(username) = &sentinel.username {
            builder = builder.set_client_to_redis_username(username.clone());
        }
        if let Some(password) = &sentinel.password {
            builder = builder.set_client_to_redis_password(password.clone());
        }
        if let Some(certs) = self.certificates() {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_certificates(certs);
        }
        builder.build()
    }

    fn cluster_client(&self) -> Result<redis::cluster::ClusterClient, redis::RedisError> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
            .connection_timeout(EVENT_CALL_TIMEOUT)
            .response_timeout(EVENT_CALL_TIMEOUT)
            // Redirects and a failover's refresh are retried after 20 to
            // 400 ms, within the caller's deadline (the crate's default
            // waits at least 1.28 s between tries).
            .retries(6)
            .min_retry_wait(20)
            .max_retry_wait(400)
            .retry_wait_formula(20, 2);
        if let Some(certs) = self.certificates() {
            builder = builder.certs(certs);
        }
        builder.build()
    }
}

/// A connection to one node or to a cluster: whatever a command or a
/// script is sent on.
#[derive(Clone)]
pub enum Connection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

enum Client {
    Node(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    /// Asks the sentinels for the master at every (re)connection.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

pub struct RedisStore {
    target: RedisTarget,
    client: Client,
    /// None until the first call, and again after a failed one.
    connection: RwLock<Option<Connection>>,
    /// Which seed the next subscription connects to: a pause announced on
    /// any node of a cluster reaches every node, and a dead seed is skipped.
    next_seed: std::sync::atomic::AtomicUsize,
    prefix: String,
    clock: Arc<dyn Clock>,
    /// Clock milliseconds before which no call is tried.
    quiet_until: AtomicU64,
    errors: IntCounterVec,
}

impl RedisStore {
    /// The URLs are checked at config load; `errors` is
    /// `sidecar_store_errors_total`. Nothing connects yet.
    pub fn new(
        target: RedisTarget,
        prefix: &str,
        clock: Arc<dyn Clock>,
        errors: IntCounterVec,
    ) -> Result<Self, redis::RedisError> {
        let client = if let Some(sentinel) = &target.sentinel {
            Client::Sentinel(tokio::sync::Mutex::new(target.sentinel_client(sentinel)?))
        } else if target.cluster {
            Client::Cluster(target.cluster_client()?)
        } else {
            Client::Node(target.node_client(0)?)
        };
        Ok(Self {
            target,
            client,
            connection: RwLock::new(None),
            next_seed: std::sync::atomic::AtomicUsize::new(0),
            prefix: prefix.to_string(),
            clock,
            quiet_until: AtomicU64::new(0),
            errors,
        })
    }

    /// Whether the store is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// A client of one node for a dedicated connection (subscriptions):
    /// each call the next seed, so a dead one is passed over; the current
    /// master with Sentinel.
    pub async fn node_client(&self) -> Result<redis::Client, redis::RedisError> {
        if let Client::Sentinel(sentinel) = &self.client {
            return sentinel.lock().await.async_get_client().await;
        }
        let index = self.next_seed.fetch_add(1, Ordering::Relaxed);
        self.target.node_client(index)
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
        F: FnOnce(Connection) -> Fut,
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
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(deadline, self.try_run(call))
            .await
            .unwrap_or(Err(RedisCallError::Timeout(deadline)));
        // A call refused during the quiet period tried nothing: it neither
        // extends the period nor counts as another failure. A server over
        // `maxmemory` answered: its connection is fine, and the calls that
        // drain the queue (allowed over it) must not wait out a quiet period.
        if let Err(RedisCallError::Redis(error)) = &result {
            if is_out_of_memory(error) {
                self.errors.with_label_values(&[op]).inc();
                return result;
            }
        }
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
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.clock.now_millis() < self.quiet_until.load(Ordering::Acquire) {
            return Err(RedisCallError::Unavailable);
        }
        let connection = self.connection().await?;
        call(connection).await.map_err(RedisCallError::from)
    }

    async fn connection(&self) -> Result<Connection, RedisCallError> {
        if let Some(manager) = self.connection.read().await.as_ref() {
            return Ok(manager.clone());
        }
        let mut slot = self.connection.write().await;
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        // Each call brings its own deadline; the connection's bounds are
        // only the longest of them.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(EVENT_CALL_TIMEOUT)
            .set_response_timeout(EVENT_CALL_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let connection = match &self.client {
            Client::Node(client) => {
                Connection::Node(ConnectionManager::new_with_config(client.clone(), config).await?)
            }
            // A failed call drops the connection, so the next one asks the
            // sentinels again and follows a failover.
            Client::Sentinel(sentinel) => {
                let master = sentinel.lock().await.async_get_client().await?;
                Connection::Node(ConnectionManager::new_with_config(master, config).await?)
            }
            Client::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
        };
        *slot = Some(connection.clone());
        Ok(connection)
    }
}
