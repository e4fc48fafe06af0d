//! The short description `wedsync-sidecar check` prints for a valid file.

use super::services::{ApiKeyPlacement, Auth};
use super::{Config, StoreKind};

pub fn summary(config: &Config) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "egress   {} with {} service(s)",
        config.listen.egress,
        config.services.len()
    ));
    for service in &config.services {
        let auth = match &service.auth {
            None => "no credentials".to_string(),
            Some(Auth::Bearer { .. }) => "bearer token".to_string(),
            Some(Auth::ApiKey {
                placement: ApiKeyPlacement::Header(h),
                ..
            }) => format!("api key in header {h}"),
            Some(Auth::ApiKey {
                placement: ApiKeyPlacement::Query(q),
                ..
            }) => format!("api key in query parameter {q}"),
            Some(Auth::Basic { .. }) => "basic auth".to_string(),
            Some(Auth::OAuth2(o)) => format!("oauth2 client credentials from {}", o.token_url),
            Some(Auth::GithubApp { app_id, .. }) => format!("GitHub App {app_id} (JWT)"),
        };
        out.push(format!(
            "  {:<22} {} -> {} ({auth}; connect timeout {}, timeout {})",
            service.name,
            service.route,
            service.upstream,
            super::units::format_duration(service.connect_timeout),
            super::units::format_duration(service.timeout),
        ));
        let mut guards = Vec::new();
        if let Some(limit) = &service.rate_limit {
            let scope = match limit.scope {
                super::services::LimitScope::Local => "per pod",
                super::services::LimitScope::Global => "shared",
            };
            guards.push(format!(
                "limit {}/{} {scope}",
                limit.requests,
                super::units::format_duration(limit.per)
            ));
        }
        if let Some(breaker) = &service.circuit_breaker {
            guards.push(format!(
                "breaker after {} failures, open {}",
                breaker.failure_threshold,
                super::units::format_duration(breaker.open_for)
            ));
        }
        if let Some(retry) = &service.retry {
            guards.push(format!("{} attempts", retry.attempts));
        }
        if service.idempotency_key == super::services::IdempotencyKey::Auto {
            guards.push("idempotency keys".to_string());
        }
        if !guards.is_empty() {
            out.push(format!("  {:<22} {}", "", guards.join(", ")));
        }
    }
    out.push(format!(
        "ingress  {} with {} webhook(s)",
        config.listen.ingress,
        config.webhooks.len()
    ));
    if !config.events.is_empty() {
        out.push(format!(
            "events   {} with {} published event source(s)",
            config.listen.egress,
            config.events.len()
        ));
    }
    for webhook in config.event_sources() {
        let targets: std::collections::BTreeSet<&str> = webhook
            .routes
            .iter()
            .flat_map(|r| r.targets.iter().map(String::as_str))
            .collect();
        let targets: Vec<&str> = targets.into_iter().collect();
        out.push(format!(
            "  {:<22} {} ({}) -> {}",
            webhook.name,
            webhook.path,
            snake_case(&webhook.verify.kind),
            if targets.is_empty() {
                "no targets".to_string()
            } else {
                targets.join(", ")
            }
        ));
    }
    if config.event_sources().next().is_some() {
        let delivery = config.delivery.clone().unwrap_or_default();
        out.push(format!(
            "delivery {} worker(s), {}",
            delivery.workers,
            if delivery.signing_secret.is_some() {
                "re-signed with Standard Webhooks"
            } else {
                "not re-signed"
            }
        ));
    }
    for group in &config.upstreams {
        let backends = match &group.backends {
            super::upstreams::Backends::Static(list) => list
                .iter()
                .map(|b| match b.weight {
                    1 => b.addr.to_string(),
                    w => format!("{} (weight {w})", b.addr),
                })
                .collect::<Vec<_>>()
                .join(", "),
            super::upstreams::Backends::Dns { dns, refresh } => format!(
                "{dns} resolved every {}",
                super::units::format_duration(*refresh)
            ),
        };
        let check = match &group.health_check {
            Some(check) => format!(
                "{} health check every {}",
                snake_case(&check.kind),
                super::units::format_duration(check.interval)
            ),
            None => "no health check".into(),
        };
        out.push(format!(
            "upstream {:<22} {backends}; {}, {check}, at most {} in flight",
            group.name,
            snake_case(&group.balance),
            group.max_in_flight
        ));
    }
    let token = if config.admin.token.is_some() {
        "token required for /admin/*"
    } else {
        "no admin token"
    };
    out.push(format!("admin    {} ({token})", config.listen.admin));
    let store = match &config.store.kind {
        StoreKind::Local {
            path,
            max_size: None,
        } => format!("local, {}", path.display()),
        StoreKind::Local {
            path,
            max_size: Some(max),
        } => format!("local, {}, at most {} MiB", path.display(), max >> 20),
        StoreKind::Redis(redis) if redis.sentinel.is_some() => format!(
            "redis via sentinel, master {}, {} shard(s)",
            redis.sentinel.as_ref().map_or("", |s| s.master.as_str()),
            redis.shards
        ),
        StoreKind::Redis(redis) if redis.cluster => format!(
            "redis cluster, {} seed(s), {} shard(s)",
            redis.urls.len(),
            redis.shards
        ),
        StoreKind::Redis(redis) => format!("redis, {} shard(s)", redis.shards),
    };
    let history = match config.store.history.limits() {
        Some(limits) => format!(
            "event log kept {}, at most {} MiB",
            super::units::format_duration(limits.retention),
            limits.max_size >> 20
        ),
        None => "no event log".to_string(),
    };
    out.push(format!(
        "store    {store}, prefix {}; {history}",
        config.store.prefix
    ));
    out.join("\n")
}

/// A config enum as the YAML spells it.
fn snake_case<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
