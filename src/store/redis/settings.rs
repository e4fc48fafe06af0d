//! What a Redis server says of itself (INFO, CONFIG GET), and what that
//! means for acknowledged events: shown in `/admin/store`, warned about,
//! or refused.

use crate::store::StoreReport;

/// INFO's text, or each master's on a cluster.
pub fn info_texts(value: redis::Value) -> Vec<String> {
    match value {
        redis::Value::Map(nodes) => nodes
            .into_iter()
            .filter_map(|(_, text)| redis::from_redis_value(&text).ok())
            .collect(),
        other => redis::from_redis_value(&other).into_iter().collect(),
    }
}

/// One `field:value` line of an INFO section.
pub fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

/// What the server says of itself (None: it would not say).
#[derive(Debug, Default)]
pub struct RedisSettings {
    pub version: Option<String>,
    pub maxmemory_policy: Option<String>,
    pub appendonly: Option<String>,
    pub appendfsync: Option<String>,
    pub save: Option<String>,
    pub connected_replicas: Option<u32>,
    /// A cluster's masters (None: one node).
    pub masters: Option<usize>,
    /// The smallest master's `maxmemory` (0: some master has no limit).
    pub maxmemory: Option<u64>,
}

impl RedisSettings {
    /// What these settings mean for acknowledged events, with `replicas`
    /// the writes wait for.
    pub fn report(&self, replicas: u32) -> StoreReport {
        let shown = |value: &Option<String>| {
            value
                .clone()
                .unwrap_or_else(|| "unknown (CONFIG is not allowed)".into())
        };
        let mut report = StoreReport {
            kind: "redis",
            settings: vec![
                (
                    "version".into(),
                    self.version.clone().unwrap_or_else(|| "unknown".into()),
                ),
                (
                    "maxmemory".into(),
                    match self.maxmemory {
                        None => "unknown".into(),
                        Some(0) => "0 (no limit)".into(),
                        Some(bytes) => format!("{bytes} bytes"),
                    },
                ),
                ("maxmemory-policy".into(), shown(&self.maxmemory_policy)),
                ("appendonly".into(), shown(&self.appendonly)),
                ("appendfsync".into(), shown(&self.appendfsync)),
                ("save".into(), shown(&self.save)),
                (
                    "cluster masters".into(),
                    self.masters
                        .map_or_else(|| "not a cluster".into(), |n| n.to_string()),
                ),
                (
                    "connected replicas".into(),
                    self.connected_replicas
                        .map_or_else(|| "unknown".into(), |n| n.to_string()),
                ),
                ("replicas a write waits for".into(), replicas.to_string()),
            ],
            ..StoreReport::default()
        };
        if let Some(policy) = self
            .maxmemory_policy
            .as_deref()
            .filter(|p| p.starts_with("allkeys-"))
        {
            report.refusal = Some(format!(
                "Redis maxmemory-policy is {policy}: under memory pressure Redis would evict the event queue itself and lose acknowledged events; set maxmemory-policy noeviction"
            ));
        }
        if self.maxmemory_policy.is_none() || self.appendonly.is_none() {
            report.warnings.push(
                "Redis does not allow CONFIG GET: its eviction policy and persistence cannot be checked; make sure maxmemory-policy is noeviction and appendonly yes".into(),
            );
        }
        if self.maxmemory == Some(0) {
            report.warnings.push(
                "Redis has no maxmemory: nothing bounds the event queue, so a long backlog grows until the host runs out of memory (Redis is then killed or swaps) and the sidecar never refuses new events for want of room; set maxmemory, with maxmemory-policy noeviction, and new events are refused (503 store_full) above store.max_memory_ratio of it while the rest is kept for draining".into(),
            );
        }
        let aof = self.appendonly.as_deref() == Some("yes");
        let snapshots = self.save.as_deref().is_some_and(|s| !s.trim().is_empty());
        if self.appendonly.as_deref() == Some("no") && self.save.is_some() && !snapshots {
            report.warnings.push(
                "Redis persists nothing (appendonly no, no save points): a Redis restart loses every queued event; set appendonly yes and appendfsync always".into(),
            );
        } else if self.appendonly.as_deref() == Some("no") {
            report.warnings.push(
                "Redis keeps only snapshots (appendonly no): a Redis crash loses what came after the last one; set appendonly yes and appendfsync always".into(),
            );
        } else if aof && self.appendfsync.as_deref() != Some("always") {
            report.warnings.push(format!(
                "Redis fsyncs its AOF {} (appendfsync): a Redis crash may lose the last second of acknowledged events; appendfsync always loses none",
                match self.appendfsync.as_deref() { Some("no") => "when the OS decides", _ => "every second" }
            ));
        }
        if let Some(connected) = self.connected_replicas.filter(|n| *n < replicas) {
            report.warnings.push(format!(
                "store.replicas is {replicas} but the primary has {connected} replica(s) connected: webhooks are answered 503 until enough are"
            ));
        }
        report
    }
}
