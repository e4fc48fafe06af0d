//! Checks that span several entries (routes against routes, webhook targets
//! against upstreams) and the sections whose features are not built yet: those
//! are refused loudly, never ignored, so a limit that looks configured is one
//! that applies.

use super::decode::Decoder;
use super::path::YamlPath;
use super::services::{Auth, LimitScope, ServiceUpstream};
use super::upstreams::unknown_group;
use super::{Config, StoreKind};

/// The checks between fields, on what decoded; `failed` names the
/// top-level sections that did not (they hold their defaults).
pub fn check(d: &mut Decoder, config: &Config, failed: &[&str]) {
    if !failed.contains(&"listen") && !failed.contains(&"admin") {
        check_listeners(d, config);
    }
    check_routes(d, config);
    check_service_groups(d, config);
    check_webhooks(d, config);
    if !failed.contains(&"store") {
        check_global_limits(d, config);
    }
    check_files(d, config);
}

/// Every file the config names that is read at start (CAs, the Redis
/// client certificate and key) can be opened: reported with the key's
/// line, all of them, not the first the start trips on.
fn check_files(d: &mut Decoder, config: &Config) {
    let mut files: Vec<(YamlPath, &std::path::Path)> = Vec::new();
    for service in &config.services {
        let at = YamlPath::root().key("services").key(&service.name);
        if let Some(ca) = &service.ca_file {
            files.push((at.key("ca_file"), ca));
        }
        if let Some(Auth::OAuth2(oauth)) = &service.auth {
            // Inherited from the service unless set: reported there.
            let own = oauth.ca_file.as_deref();
            if let Some(ca) = own.filter(|ca| Some(*ca) != service.ca_file.as_deref()) {
                files.push((at.key("auth").key("ca_file"), ca));
            }
        }
    }
    for group in &config.upstreams {
        if let Some(ca) = &group.ca_file {
            files.push((
                YamlPath::root()
                    .key("upstreams")
                    .key(&group.name)
                    .key("ca_file"),
                ca,
            ));
        }
    }
    if let StoreKind::Redis(redis) = &config.store.kind {
        let at = YamlPath::root().key("store");
        for (key, file) in [
            ("ca_file", &redis.ca_file),
            ("cert_file", &redis.cert_file),
            ("key_file", &redis.key_file),
        ] {
            if let Some(file) = file {
                files.push((at.key(key), file));
            }
        }
    }
    for (path, file) in files {
        if let Err(error) = d.readable(file) {
            d.error(&path, format!("cannot read {}: {error}", file.display()));
        }
    }
}

fn check_listeners(d: &mut Decoder, config: &Config) {
    let listen = YamlPath::root().key("listen");
    let l = &config.listen;
    // Port 0 asks the kernel for a port, a different one for each listener.
    let same = |a: std::net::SocketAddr, b: std::net::SocketAddr| a == b && a.port() != 0;
    if same(l.ingress, l.egress) {
        d.error(
            &listen.key("ingress"),
            format!("{} is already the egress listener", l.ingress),
        );
    }
    if same(l.admin, l.egress) || same(l.admin, l.ingress) {
        d.error(
            &listen.key("admin"),
            format!("{} is already used by another listener", l.admin),
        );
    }
    // Without a token, anyone who reaches the admin listener can replay
    // and delete dead letters: only this pod's own processes may.
    if config.admin.token.is_none() && !l.admin.ip().is_loopback() {
        d.error(
            &listen.key("admin"),
            format!(
                "{} is reachable from outside the pod, so admin.token is required (at least 16 bytes, e.g. from ${{file:...}}); or listen on 127.0.0.1",
                l.admin
            ),
        );
    }
}

/// Does `inner` lie at or below `outer` in whole path segments?
fn route_covers(outer: &str, inner: &str) -> bool {
    outer == "/"
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn check_routes(d: &mut Decoder, config: &Config) {
    for (i, service) in config.services.iter().enumerate() {
        let path = YamlPath::root()
            .key("services")
            .key(&service.name)
            .key("route");
        for earlier in &config.services[..i] {
            if earlier.route == service.route {
                d.error(
                    &path,
                    format!(
                        "route {} is already used by services.{}",
                        service.route, earlier.name
                    ),
                );
            } else if route_covers(&earlier.route, &service.route) {
                d.error(&path, format!("route {} lies under route {} of services.{}: it would shadow part of that service", service.route, earlier.route, earlier.name));
            } else if route_covers(&service.route, &earlier.route) {
                d.error(
                    &path,
                    format!(
                        "route {} would shadow route {} of services.{}",
                        service.route, earlier.route, earlier.name
                    ),
                );
            }
        }
    }
}

/// A service that targets an upstream group names one that exists, and
/// leaves TLS trust to the group (its `tls` and `ca_file`).
fn check_service_groups(d: &mut Decoder, config: &Config) {
    for service in &config.services {
        let ServiceUpstream::Group(group) = &service.upstream else {
            continue;
        };
        let path = YamlPath::root().key("services").key(&service.name);
        if !config.upstreams.iter().any(|u| &u.name == group) {
            let known: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
            d.error(&path.key("group"), unknown_group(group, &known));
        }
        if service.ca_file.is_some() {
            d.error(
                &path.key("ca_file"),
                format!("a service on an upstream group uses the group's trust: set upstreams.{group}.ca_file (with tls: true)"),
            );
        }
    }
}

/// No two entries of `section` share a path.
fn check_unique_paths(d: &mut Decoder, section: &str, sources: &[super::Webhook]) {
    for (i, source) in sources.iter().enumerate() {
        if let Some(earlier) = sources[..i].iter().find(|s| s.path == source.path) {
            d.error(
                &YamlPath::root().key(section).key(&source.name).key("path"),
                format!(
                    "path {} is already used by {section}.{}",
                    source.path, earlier.name
                ),
            );
        }
    }
}

fn check_webhooks(d: &mut Decoder, config: &Config) {
    check_unique_paths(d, "webhooks", &config.webhooks);
    // Gap repair calls the provider through an egress service.
    for webhook in &config.webhooks {
        let Some(recover) = &webhook.recover else {
            continue;
        };
        if !config.services.iter().any(|s| s.name == recover.service) {
            let path = YamlPath::root()
                .key("webhooks")
                .key(&webhook.name)
                .key("recover")
                .key("service");
            d.error(
                &path,
                format!(
                    "no egress service {:?}: recover calls the provider's API through one (services.<name>, with its credentials)",
                    recover.service
                ),
            );
        }
    }
    check_unique_paths(d, "events", &config.events);
    for event in &config.events {
        let base = YamlPath::root().key("events").key(&event.name);
        // Jobs, dead letters and metrics name their source: one namespace.
        if config.webhooks.iter().any(|w| w.name == event.name) {
            d.error(
                &base,
                format!(
                    "{} is already the name of webhooks.{}: a delivered event names its source in x-webhook-source",
                    event.name, event.name
                ),
            );
        }
        // The path is served on the egress listener, before its routes.
        if let Some(service) = config
            .services
            .iter()
            .find(|s| route_covers(&s.route, &event.path))
        {
            d.error(
                &base.key("path"),
                format!(
                    "path {} lies under route {} of services.{}: the app could not reach that part of the service",
                    event.path, service.route, service.name
                ),
            );
        }
    }
}

fn check_global_limits(d: &mut Decoder, config: &Config) {
    if !matches!(config.store.kind, StoreKind::Local { .. }) {
        return;
    }
    for service in &config.services {
        if service
            .rate_limit
            .as_ref()
            .is_some_and(|l| l.scope == LimitScope::Global)
        {
            d.error(
                &YamlPath::root().key("services").key(&service.name).key("rate_limit").key("scope"),
                "scope: global needs store.kind: redis so that replicas share one budget; with the local store use scope: local",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_by_whole_segments() {
        assert!(route_covers("/stripe", "/stripe/v1"));
        assert!(route_covers("/", "/anything"));
        assert!(!route_covers("/stripe", "/stripe-connect"));
        assert!(!route_covers("/stripe/v1", "/stripe"));
    }
}
