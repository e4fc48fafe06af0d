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
    let token = if config.admin.token.is_some() {
        "token required for /admin/*"
    } else {
        "no admin token"
    };
    out.push(format!("admin    {} ({token})", config.listen.admin));
    let store = match &config.store.kind {
        StoreKind::Local { path } => format!("local, {}", path.display()),
        StoreKind::Redis { urls } => format!("redis, {} node(s)", urls.len()),
    };
    out.push(format!("store    {store}, prefix {}", config.store.prefix));
    out.join("\n")
}
