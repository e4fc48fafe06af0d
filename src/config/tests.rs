//! Loading whole documents: defaults, every validation error with its exact
//! message, path and position, and that all errors are reported at once.

use std::time::Duration;

use super::interpolate::MapLookup;
use super::services::{ApiKeyPlacement, ClientAuth};
use super::webhooks::VerifyKind;
use super::*;

fn lookup() -> MapLookup {
    let mut lookup = MapLookup::default();
    lookup
        .env
        .insert("STRIPE_KEY".into(), "sk_test_1234567890".into());
    lookup
        .files
        .insert("/secrets/sup".into(), "client-secret-value\n".into());
    for file in [
        "/etc/redis/ca.pem",
        "/etc/redis/client.pem",
        "/etc/redis/client.key",
    ] {
        lookup.files.insert(file.into(), "-----BEGIN ...".into());
    }
    lookup
}

fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    Config::from_yaml(yaml, "test.yaml", &lookup())
}

/// The rendered error lines, for exact comparison.
fn errors(yaml: &str) -> Vec<String> {
    load(yaml)
        .expect_err("expected configuration errors")
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn an_empty_mapping_gets_every_default() {
    let config = load("{}").unwrap();
    assert_eq!(config.listen.egress.to_string(), "127.0.0.1:15001");
    assert_eq!(config.listen.ingress.to_string(), "0.0.0.0:8080");
    assert_eq!(config.listen.admin.to_string(), "127.0.0.1:9901");
    assert_eq!(config.drain_delay, Duration::from_secs(5));
    assert_eq!(config.shutdown_grace, Duration::from_secs(25));
    assert!(
        matches!(&config.store.kind, StoreKind::Local { path, max_size: None } if path.to_str() == Some("./data"))
    );
    assert_eq!(config.store.prefix, "sidecar");
    assert!(config.admin.token.is_none());
}

#[test]
fn reads_every_auth_kind_with_secrets_resolved() {
    let config = load(
        r#"
services:
  stripe:
    route: /stripe
    upstream: https://api.stripe.com
    auth: { kind: bearer, token: "${env:STRIPE_KEY}" }
  resend:
    route: /resend
    upstream: https://api.resend.com
    connect_timeout: 250ms
    timeout: 1m
    auth: { kind: api_key, query: api_key, value: k-1 }
  twilio:
    route: /twilio
    upstream: https://api.twilio.com
    auth: { kind: basic, username: AC1, password: "${env:MISSING:-pw}" }
  suppliers:
    route: /suppliers
    upstream: http://127.0.0.1:9000/v2
    auth:
      kind: oauth2
      token_url: http://127.0.0.1:9001/token
      client_id: sup
      client_secret: ${file:/secrets/sup}
      scopes: [suppliers.read, suppliers.write]
      audience: suppliers
      client_auth: body
"#,
    )
    .unwrap();
    let stripe = config.service("stripe").unwrap();
    assert!(
        matches!(&stripe.auth, Some(Auth::Bearer { token }) if token.expose() == "sk_test_1234567890")
    );
    assert_eq!(stripe.timeout, Duration::from_secs(30));
    let resend = config.service("resend").unwrap();
    assert_eq!(
        (resend.connect_timeout, resend.timeout),
        (Duration::from_millis(250), Duration::from_secs(60))
    );
    assert!(
        matches!(&resend.auth, Some(Auth::ApiKey { placement: ApiKeyPlacement::Query(q), .. }) if q == "api_key")
    );
    assert!(
        matches!(&config.service("twilio").unwrap().auth, Some(Auth::Basic { password, .. }) if password.expose() == "pw")
    );
    let Some(Auth::OAuth2(oauth)) = &config.service("suppliers").unwrap().auth else {
        panic!("oauth2 expected")
    };
    assert_eq!(oauth.client_secret.expose(), "client-secret-value");
    assert_eq!(oauth.scopes, ["suppliers.read", "suppliers.write"]);
    assert_eq!(oauth.client_auth, ClientAuth::Body);
    assert_eq!(oauth.refresh_before, Duration::from_secs(60));
    assert_eq!(
        config.service("suppliers").unwrap().upstream.base_path(),
        "/v2"
    );
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion_and_position() {
    assert_eq!(
        errors("services:\n  stripe:\n    route: /stripe\n    upstream: https://api.stripe.com\n    conect_timeout: 5s\n"),
        ["services.stripe.conect_timeout: unknown key \"conect_timeout\"; did you mean \"connect_timeout\"? (expected one of: route, upstream, group, ca_file, connect_timeout, timeout, auth, rate_limit, circuit_breaker, retry, idempotency_key, max_pause) (line 5, column 21)"]
    );
}

#[test]
fn bad_durations_addresses_and_urls_name_their_path() {
    assert_eq!(
        errors("listen:\n  egress: localhost:15001\nservices:\n  s:\n    route: /s\n    upstream: api.example.com\n    timeout: 30\n"),
        [
            "listen.egress: invalid address \"localhost:15001\": expected IP:port (e.g. 127.0.0.1:15001 or [::1]:15001) (line 2, column 11)",
            "services.s.upstream: invalid URL \"api.example.com\": the scheme must be http or https (line 6, column 15)",
            "services.s.timeout: invalid duration \"30\": expected a number followed by ms, s, m, h or d (e.g. 250ms, 30s, 1h30m) (line 7, column 14)",
        ]
    );
}

#[test]
fn missing_environment_variables_and_files_name_the_key() {
    assert_eq!(
        errors("services:\n  s:\n    route: /s\n    upstream: https://x.example\n    auth:\n      kind: bearer\n      token: ${env:NOT_SET}\nadmin:\n  token: ${file:/nope}\n"),
        [
            "services.s.auth.token: environment variable NOT_SET is not set (referenced as ${env:NOT_SET}; use ${env:NOT_SET:-default} for a default) (line 7, column 14)",
            "admin.token: cannot read /nope (referenced as ${file:/nope}): No such file or directory (line 9, column 10)",
        ]
    );
}

#[test]
fn duplicate_and_shadowing_routes_are_errors() {
    assert_eq!(
        errors("services:\n  a:\n    route: /pay\n    upstream: https://a.example\n  b:\n    route: /pay\n    upstream: https://b.example\n  c:\n    route: /pay/v2\n    upstream: https://c.example\n"),
        [
            "services.b.route: route /pay is already used by services.a (line 6, column 12)",
            "services.c.route: route /pay/v2 lies under route /pay of services.a: it would shadow part of that service (line 9, column 12)",
            "services.c.route: route /pay/v2 lies under route /pay of services.b: it would shadow part of that service (line 9, column 12)",
        ]
    );
}

#[test]
fn malformed_routes_are_errors() {
    assert_eq!(
        errors("services:\n  a:\n    route: pay/\n    upstream: https://a.example\n"),
        ["services.a.route: invalid route \"pay/\": it must start with / (line 3, column 12)"]
    );
}

#[test]
fn webhook_targets_must_name_an_upstream_and_secrets_must_be_long_enough() {
    let yaml = r#"
webhooks:
  stripe:
    path: /webhooks/stripe
    verify: { kind: stripe, secrets: [short] }
    routes: [{ events: ["*"], targets: [nowhere] }]
"#;
    assert_eq!(
        errors(yaml),
        [
            "webhooks.stripe.verify.secrets[0]: secret is 5 bytes long; at least 16 are required (line 5, column 39)",
            "webhooks.stripe.routes[0].targets[0]: target \"nowhere\" names no entry under upstreams (none are defined) (line 6, column 41)",
        ]
    );
}

#[test]
fn a_redis_store_takes_a_cluster_shards_and_tls() {
    let yaml = r#"
store:
  kind: redis
  url: ["rediss://${file:/secrets/sup}@a.example:6379", "rediss://b.example:6379"]
  shards: 32
  ca_file: /etc/redis/ca.pem
  cert_file: /etc/redis/client.pem
  key_file: /etc/redis/client.key
"#;
    let config = load(yaml).unwrap();
    let StoreKind::Redis(redis) = &config.store.kind else {
        panic!("a redis store")
    };
    assert!(redis.cluster, "a list of URLs is a cluster's seeds");
    assert_eq!(redis.urls.len(), 2);
    assert_eq!(
        redis.urls[0].expose(),
        "rediss://client-secret-value@a.example:6379"
    );
    assert!(!format!("{config:?}").contains("client-secret-value"));
    assert!(!serde_json::to_string(&config)
        .unwrap()
        .contains("client-secret-value"));
    assert_eq!(redis.shards, 32);
    assert_eq!(
        redis.ca_file.as_deref(),
        Some(Path::new("/etc/redis/ca.pem"))
    );
    assert!(redis.cert_file.is_some() && redis.key_file.is_some());

    let single = load("store: { kind: redis, url: redis://a:6379 }\n").unwrap();
    let StoreKind::Redis(single) = &single.store.kind else {
        panic!("a redis store")
    };
    assert!(!single.cluster);
    assert_eq!(single.shards, 16, "the default");
    let one_seed = load("store: { kind: redis, url: [redis://a:6379] }\n").unwrap();
    assert!(matches!(&one_seed.store.kind, StoreKind::Redis(r) if r.cluster));
}

#[test]
fn redis_store_settings_are_checked() {
    let cases = [
        ("url: redis://a:6379, shards: 0", "store.shards: "),
        ("url: redis://a:6379, shards: 1025", "store.shards: "),
        (
            "url: redis://a:6379, ca_file: /ca.pem",
            "store.ca_file: only applies to rediss:// URLs (Redis over TLS)",
        ),
        (
            "url: rediss://a:6379, cert_file: /c.pem",
            "store.key_file: mutual TLS needs both cert_file and key_file",
        ),
        (
            "url: [redis://a:6379, rediss://b:6379]",
            "store.url: mixes redis:// and rediss://",
        ),
        (
            "url: [redis://a:6379, http://b]",
            "store.url[1]: invalid Redis URL",
        ),
    ];
    for (fields, expected) in cases {
        let errs = errors(&format!("store: {{ kind: redis, {fields} }}\n"));
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{fields}: {errs:?}"
        );
    }
    let sentinel = load("store: { kind: redis, sentinel: { master: mymaster, nodes: [\"10.0.0.1:26379\", \"s2:26379\"], password: \"${file:/secrets/sup}\" } }\n").unwrap();
    let StoreKind::Redis(redis) = &sentinel.store.kind else {
        panic!("a redis store")
    };
    let found = redis.sentinel.as_ref().unwrap();
    assert_eq!(found.master, "mymaster");
    assert_eq!(found.nodes[1], ("s2".to_string(), 26379));
    assert_eq!(
        found.password.as_ref().unwrap().expose(),
        "client-secret-value"
    );
    assert!(!format!("{sentinel:?}").contains("client-secret-value"));
    for (fields, expected) in [
        (
            "url: redis://a:6379, sentinel: { master: m, nodes: [\"a:1\"] }",
            "store.url: url and sentinel exclude each other",
        ),
        (
            "sentinel: { master: m, nodes: [a] }",
            "store.sentinel.nodes[0]: invalid sentinel address \"a\": expected host:port",
        ),
        (
            "sentinel: { master: m, nodes: [] }",
            "store.sentinel.nodes: name at least one sentinel",
        ),
        ("sentinel: { nodes: [\"a:1\"] }", "store.sentinel.master: "),
    ] {
        let errs = errors(&format!("store: {{ kind: redis, {fields} }}\n"));
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{fields}: {errs:?}"
        );
    }
    let local = errors("store: { kind: local, shards: 4 }\n");
    assert!(local[0].starts_with("store.shards: only applies to kind: redis"));
}

#[test]
fn upstream_groups_take_a_cap_and_a_backend_breaker() {
    let yaml = "upstreams:\n  notify:\n    backends: [127.0.0.1:7001]\n    max_in_flight: 0\n    circuit_breaker: { failure_treshold: 3 }\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("upstreams.notify.max_in_flight:"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("upstreams.notify.circuit_breaker.failure_treshold:"),
        "{errs:?}"
    );
}

#[test]
fn global_rate_limits_need_the_redis_store() {
    let yaml = "services:\n  s:\n    route: /s\n    upstream: https://x.example\n    rate_limit: { requests: 10, per: 1s, scope: global }\n";
    let errs = errors(yaml);
    assert!(errs.contains(&"services.s.rate_limit.scope: scope: global needs store.kind: redis so that replicas share one budget; with the local store use scope: local (line 5, column 49)".to_string()), "{errs:?}");
    let with_redis = format!("store: {{ kind: redis, url: redis://127.0.0.1:6390 }}\n{yaml}");
    assert!(load(&with_redis).is_ok());
    let cluster =
        format!("store: {{ kind: redis, url: [redis://a:6379, redis://b:6379] }}\n{yaml}");
    assert!(load(&cluster).is_ok(), "a cluster shares limits too");
    let tls = format!("store: {{ kind: redis, url: rediss://a:6379 }}\n{yaml}");
    assert!(load(&tls).is_ok());
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let yaml = "listen:\n  admin: nope\nservices:\n  a:\n    route: /a\n  b:\n    route: /b\n    upstream: https://b.example\n    auth: { kind: magic }\nshutdown_grace: forever\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].starts_with("listen.admin: invalid address"));
    assert_eq!(
        errs[1],
        "services.a.upstream: is required (or `group: <upstream group>`) (line 5, column 5)"
    );
    assert!(errs[2].starts_with("services.b.auth.kind: unknown value \"magic\": expected one of bearer, api_key, basic, oauth2"));
    assert!(errs[3].starts_with("shutdown_grace: invalid duration \"forever\""));
}

#[test]
fn errors_of_fields_between_fields_and_missing_files_come_in_one_list() {
    let yaml = "listen: { egress: 127.0.0.1:9000, ingress: 127.0.0.1:9000 }
shutdown_grace: forever
services:
  a:
    route: /a
    upstream: https://a.example
    ca_file: /missing/a.pem
  b:
    route: /a/b
    upstream: https://b.example
    ca_file: /missing/b.pem
upstreams:
  notify: { backends: [127.0.0.1:1], tls: true, ca_file: /missing/n.pem }
";
    assert_eq!(
        errors(yaml),
        [
            "listen.ingress: 127.0.0.1:9000 is already the egress listener (line 1, column 44)",
            "shutdown_grace: invalid duration \"forever\": expected a number followed by ms, s, m, h or d (e.g. 250ms, 30s, 1h30m) (line 2, column 17)",
            "services.a.ca_file: cannot read /missing/a.pem: No such file or directory (line 7, column 14)",
            "services.b.route: route /a/b lies under route /a of services.a: it would shadow part of that service (line 9, column 12)",
            "services.b.ca_file: cannot read /missing/b.pem: No such file or directory (line 11, column 14)",
            "upstreams.notify.ca_file: cannot read /missing/n.pem: No such file or directory (line 13, column 58)",
        ]
    );
}

#[test]
fn a_failed_section_does_not_mislead_the_checks_that_read_it() {
    // The store's own error, not "global limits need Redis" on top.
    let errs = errors(
        "store: { kind: redis }\nservices:\n  s:\n    route: /s\n    upstream: https://s.example\n    rate_limit: { requests: 5, per: 1s, scope: global }\n",
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("store"), "{errs:#?}");
}

#[test]
fn listeners_must_not_collide() {
    assert_eq!(
        errors(
            "listen: { egress: 127.0.0.1:9000, ingress: 127.0.0.1:9000, admin: 127.0.0.1:9001 }\n"
        ),
        ["listen.ingress: 127.0.0.1:9000 is already the egress listener (line 1, column 44)"]
    );
}

#[test]
fn unquoted_references_in_flow_collections_get_a_hint() {
    let errs = errors("services:\n  s:\n    route: /s\n    upstream: https://x.example\n    auth: { kind: bearer, token: ${env:X} }\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("(document): invalid YAML: "),
        "{}",
        errs[0]
    );
    assert!(
        errs[0].contains("write references in quotes, e.g. token: \"${env:NAME}\""),
        "{}",
        errs[0]
    );
}

#[test]
fn the_effective_config_never_contains_a_secret() {
    let config = load(
        "admin: { token: admin-token-0123456789 }\nservices:\n  s:\n    route: /s\n    upstream: https://x.example\n    auth: { kind: bearer, token: \"${env:STRIPE_KEY}\" }\n",
    )
    .unwrap();
    let shown = serde_json::to_string(&config).unwrap();
    assert!(!shown.contains("sk_test_1234567890"), "{shown}");
    assert!(!shown.contains("admin-token-0123456789"), "{shown}");
    assert!(shown.contains("\"token\":\"<redacted>\""), "{shown}");
    assert!(shown.contains("\"timeout\":\"30s\""), "{shown}");
}

#[test]
fn the_ingress_bounds_have_defaults_that_fit_a_small_pod() {
    let config = load("{}").unwrap();
    assert_eq!(config.ingress.max_connections, 1024);
    assert_eq!(config.ingress.request_timeout, Duration::from_secs(10));
    assert_eq!(config.ingress.max_buffered, 32 << 20);
    let config =
        load("ingress: { max_connections: 10, request_timeout: 2s, max_buffered: 1MiB }\n")
            .unwrap();
    assert_eq!(
        config.ingress,
        Ingress {
            max_connections: 10,
            request_timeout: Duration::from_secs(2),
            max_buffered: 1 << 20,
        }
    );
    assert_eq!(
        errors("ingress: { max_connections: 0, max_buffered: 1KiB }\n"),
        [
            "ingress.max_connections: expected a whole number from 1 to 1000000, found 0 (line 1, column 29)",
            "ingress.max_buffered: must be between 64KiB and 4GiB (line 1, column 46)",
        ]
    );
}

#[test]
fn the_memory_limit_is_a_size_from_16_mib_or_left_to_the_container() {
    assert_eq!(load("{}").unwrap().limits.memory, None);
    assert_eq!(
        load("limits: { memory: 128MiB }\n").unwrap().limits.memory,
        Some(128 << 20)
    );
    let errors_of = |text: &str| errors(text).join("\n");
    assert_eq!(
        load("limits: { memory: 32MiB }\n").unwrap().limits.memory,
        Some(32 << 20)
    );
    assert!(errors_of("limits: { memory: 8MiB }\n")
        .contains("limits.memory: must be between 16MiB and 1TiB"));
    assert!(errors_of("limits: { memory: 2000GiB }\n").contains("limits.memory: must be between"));
    assert!(errors_of("limits: { memory: lots }\n").contains("limits.memory"));
    assert!(errors_of("limits: { cpu: 1 }\n").contains("limits.cpu"));
}

#[test]
fn an_admin_token_is_long_or_absent_and_required_off_loopback() {
    assert_eq!(
        errors("admin: { token: \"\" }\n"),
        ["admin.token: token is 0 bytes long; at least 16 are required; to run without a token, leave admin.token out (the admin listener must then be on loopback) (line 1, column 17)"]
    );
    assert_eq!(
        errors("admin: { token: short }\n"),
        ["admin.token: token is 5 bytes long; at least 16 are required (line 1, column 17)"]
    );
    let open = "listen: { admin: 0.0.0.0:9901 }\n";
    assert_eq!(
        errors(open),
        ["listen.admin: 0.0.0.0:9901 is reachable from outside the pod, so admin.token is required (at least 16 bytes, e.g. from ${file:...}); or listen on 127.0.0.1 (line 1, column 18)"]
    );
    assert!(load(&format!(
        "{open}admin: {{ token: admin-token-0123456789 }}\n"
    ))
    .is_ok());
    assert!(load("listen: { admin: \"[::1]:9901\" }\n").is_ok());
}

#[test]
fn paths_that_reach_an_http_request_are_checked_at_load() {
    let yaml = "upstreams:\n  u: { backends: [127.0.0.1:1], health_check: { path: /health z } }\nwebhooks:\n  w:\n    path: /w\n    verify: { kind: github, secrets: [0123456789abcdef] }\n    routes: [{ events: [\"*\"], targets: [u] }]\n    delivery: { path: \"/events/a b\" }\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("upstreams.u.health_check.path: invalid path \"/health z\""),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("webhooks.w.delivery.path: invalid path \"/events/a b\""),
        "{errs:?}"
    );
    assert!(errs[1].ends_with("(line 8, column 23)"), "{errs:?}");
}

#[test]
fn an_error_about_a_value_from_the_environment_never_shows_it() {
    let mut lookup = lookup();
    lookup.env.insert(
        "UPSTREAM".into(),
        "https://user:pa55word-very-secret@api.example".into(),
    );
    let yaml = "services:\n  s:\n    route: /s\n    upstream: ${env:UPSTREAM}\n";
    let errs = Config::from_yaml(yaml, "test.yaml", &lookup)
        .unwrap_err()
        .to_string();
    assert!(!errs.contains("pa55word"), "{errs}");
    assert!(errs.contains("${env:UPSTREAM}"), "{errs}");
}

#[test]
fn oauth2_params_are_redacted_in_the_effective_config() {
    let config = load("services:\n  s:\n    route: /s\n    upstream: https://x.example\n    auth: { kind: oauth2, token_url: https://x.example/token, client_id: c, client_secret: s, params: { client_assertion: eyJhbGciOi-secret } }\n").unwrap();
    let shown = serde_json::to_string(&config).unwrap();
    assert!(!shown.contains("eyJhbGciOi"), "{shown}");
    assert!(shown.contains("client_assertion"), "{shown}");
}

#[test]
fn a_service_targets_a_url_or_an_existing_group_and_nothing_else() {
    let config = load(
        "upstreams:\n  notify: { backends: [127.0.0.1:7001], balance: ewma, tls: true, host: notify.internal }\nservices:\n  notify:\n    route: /notify\n    group: notify\n",
    )
    .unwrap();
    assert_eq!(
        config.services[0].upstream,
        crate::config::services::ServiceUpstream::Group("notify".into())
    );
    assert_eq!(
        config.upstreams[0].host_for("10.0.0.1:80"),
        "notify.internal"
    );
    let both = errors("upstreams:\n  notify: { backends: [127.0.0.1:7001] }\nservices:\n  a:\n    route: /a\n    upstream: http://127.0.0.1:1\n    group: notify\n");
    assert!(
        both[0].contains("set exactly one of `upstream`"),
        "{both:?}"
    );
    let unknown = errors("services:\n  a:\n    route: /a\n    group: nowhere\n");
    assert!(
        unknown[0].starts_with("services.a.group: \"nowhere\" names no entry under upstreams"),
        "{unknown:?}"
    );
    let ca = errors("upstreams:\n  n: { backends: [127.0.0.1:7001], ca_file: /ca.pem }\n");
    assert!(
        ca[0].starts_with("upstreams.n.ca_file: needs tls: true"),
        "{ca:?}"
    );
}

#[test]
fn published_events_share_the_webhook_keys_but_verify_and_their_names() {
    let base = "upstreams:\n  notify: { backends: [127.0.0.1:7001] }\n";
    let config = load(&format!(
        "{base}events:\n  wedding:\n    path: /events/wedding\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n    priority: {{ wedding_day: {{ date: /wedding_date, timezone: Europe/London }} }}\n"
    ))
    .unwrap();
    let event = &config.events[0];
    assert_eq!(event.verify.kind, VerifyKind::App);
    let rule = event.priority.wedding_day.as_ref().unwrap();
    assert_eq!(
        (rule.date.as_str(), rule.timezone.as_str(), rule.within),
        (
            "/wedding_date",
            "Europe/London",
            Duration::from_secs(86_400)
        )
    );
    let verify = errors(&format!(
        "{base}events:\n  e:\n    path: /e\n    verify: {{ kind: stripe, secrets: [whsec_0123456789abcdef] }}\n    routes: []\n"
    ));
    assert!(
        verify[0].starts_with("events.e.verify: unknown key"),
        "{verify:?}"
    );
    let clash = errors(&format!(
        "{base}webhooks:\n  stripe:\n    path: /webhooks/stripe\n    verify: {{ kind: stripe, secrets: [whsec_0123456789abcdef] }}\n    routes: []\nevents:\n  stripe:\n    path: /events/stripe\n    routes: []\n"
    ));
    assert!(
        clash[0].starts_with("events.stripe: stripe is already the name of webhooks.stripe"),
        "{clash:?}"
    );
    let shadowed = errors(&format!(
        "{base}services:\n  api:\n    route: /events\n    upstream: http://127.0.0.1:1\nevents:\n  e:\n    path: /events/e\n    routes: []\n"
    ));
    assert!(
        shadowed[0].starts_with("events.e.path: path /events/e lies under route /events"),
        "{shadowed:?}"
    );
    let zone = errors(&format!(
        "{base}events:\n  e:\n    path: /e\n    routes: []\n    priority: {{ wedding_day: {{ date: /d, timezone: Mars/Olympus }} }}\n"
    ));
    assert!(zone[0].contains("is not an IANA time zone"), "{zone:?}");
}

#[test]
fn tracing_exports_to_an_otlp_endpoint_with_a_ratio() {
    let config =
        load("tracing: { otlp: { endpoint: http://collector:4318, sample_ratio: 10% } }\n")
            .unwrap();
    let otlp = config.tracing.otlp.unwrap();
    assert_eq!(otlp.endpoint.to_string(), "http://collector:4318");
    assert_eq!(
        (otlp.sample_ratio, otlp.service_name.as_str()),
        (0.1, "wedsync-sidecar")
    );
    let bad = errors("tracing: { otlp: { endpoint: http://c:4318, sample_ratio: 2 } }\n");
    assert!(bad[0].starts_with("tracing.otlp.sample_ratio:"), "{bad:?}");
}

#[test]
fn exporting_spans_needs_propagation() {
    let off = load("tracing: { propagate: false }\n").unwrap();
    assert!(!off.tracing.propagate);
    let both = errors("tracing: { propagate: false, otlp: { endpoint: http://c:4318 } }\n");
    assert!(
        both[0].starts_with("tracing.otlp: exporting spans needs propagate: true"),
        "{both:?}"
    );
}

#[test]
fn the_json_schema_knows_exactly_the_keys_the_decoder_takes() {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    let keys = |pointer: &str| -> Vec<String> {
        let mut keys: Vec<String> = schema
            .pointer(pointer)
            .and_then(|v| v.as_object())
            .unwrap_or_else(|| panic!("{pointer} in the schema"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let sorted = |list: &[&str]| {
        let mut list: Vec<String> = list.iter().map(|k| k.to_string()).collect();
        list.sort();
        list
    };
    let verify: Vec<&str> = webhooks::VERIFY_KEYS
        .iter()
        .chain(webhooks::HMAC_KEYS)
        .copied()
        .collect();
    for (pointer, decoded) in [
        ("/properties", TOP_LEVEL_KEYS),
        (
            "/properties/services/additionalProperties/properties",
            services::SERVICE_KEYS,
        ),
        (
            "/properties/webhooks/additionalProperties/properties",
            webhooks::WEBHOOK_KEYS,
        ),
        (
            "/properties/events/additionalProperties/properties",
            &webhooks::published_keys(),
        ),
        (
            "/properties/webhooks/additionalProperties/properties/verify/properties",
            &verify,
        ),
    ] {
        assert_eq!(keys(pointer), sorted(decoded), "{pointer}");
    }
    // Unknown keys are refused, as the decoder refuses them.
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn the_event_log_is_on_by_default_and_bounded_as_configured() {
    let config = load("{}").unwrap();
    assert_eq!(config.store.history, History::default());
    let limits = config.store.history.limits().expect("on by default");
    assert_eq!(limits.retention, Duration::from_secs(24 * 3600));
    assert_eq!(limits.max_size, 256 << 20);
    let config =
        load("store: { history: { enabled: false, retention: 2h, max_size: 64MiB } }").unwrap();
    assert_eq!(config.store.history.limits(), None);
    assert_eq!(config.store.history.retention, Duration::from_secs(7200));
    assert_eq!(config.store.history.max_size, 64 << 20);
    let wrong = errors("store: { history: { max_size: 1KiB, retention: 0s, kept: true } }");
    assert!(
        wrong
            .iter()
            .any(|e| e.contains("store.history.max_size") && e.contains("at least 1MiB")),
        "{wrong:?}"
    );
    assert!(
        wrong.iter().any(|e| e.contains("store.history.retention")),
        "{wrong:?}"
    );
    assert!(
        wrong.iter().any(|e| e.contains("store.history.kept")),
        "{wrong:?}"
    );
}

/// A key made for the tests only.
const APP_KEY: &str = include_str!("../../tests/fixtures/github_app_test_key.pem");

fn gap_repair_yaml(recover: &str, auth: &str) -> String {
    format!(
        r#"
upstreams:
  notify: {{ backends: [127.0.0.1:9000] }}
services:
  github-api:
    route: /github
    upstream: https://api.github.com
    auth: {auth}
  stripe-api:
    route: /stripe
    upstream: https://api.stripe.com
    auth: {{ kind: bearer, token: sk_test_0123456789 }}
webhooks:
  github:
    path: /webhooks/github
    verify: {{ kind: github, secrets: [gh-secret-0123456789] }}
    routes: [{{ events: ["*"], targets: [notify] }}]
    recover: {recover}
"#
    )
}

#[test]
fn github_gap_repair_and_the_app_key_are_read_from_a_path_or_a_file_reference() {
    let mut lookup = lookup();
    lookup
        .files
        .insert("/secrets/app.pem".into(), APP_KEY.into());
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/github_app_test_key.pem"
    );
    for key in [path, "\"${file:/secrets/app.pem}\""] {
        let yaml = gap_repair_yaml(
            "{ kind: github_deliveries, service: github-api, hook: repos/wedsync/app/hooks/7, lookback: 30d }",
            &format!("{{ kind: github_app, app_id: 123456, private_key: {key} }}"),
        );
        let config = Config::from_yaml(&yaml, "test.yaml", &lookup).unwrap();
        let recover = config.webhooks[0].recover.clone().unwrap();
        assert_eq!(recover.hook.as_deref(), Some("/repos/wedsync/app/hooks/7"));
        assert_eq!(
            recover.lookback,
            Duration::from_secs(3 * 86_400),
            "GitHub keeps three days"
        );
        let Some(services::Auth::GithubApp { app_id, .. }) =
            &config.service("github-api").unwrap().auth
        else {
            panic!("github_app");
        };
        assert_eq!(app_id, "123456");
        let shown = serde_json::to_string(&config.service("github-api").unwrap().auth).unwrap();
        assert!(!shown.contains("BEGIN"), "{shown}");
    }
    for (hook, api) in [
        ("app", "/app/hook"),
        ("orgs/wedsync/hooks/12", "/orgs/wedsync/hooks/12"),
    ] {
        let yaml = gap_repair_yaml(
            &format!("{{ kind: github_deliveries, service: github-api, hook: {hook} }}"),
            "{ kind: bearer, token: ghp_0123456789 }",
        );
        assert_eq!(
            load(&yaml).unwrap().webhooks[0]
                .recover
                .as_ref()
                .unwrap()
                .hook
                .as_deref(),
            Some(api)
        );
    }
}

#[test]
fn github_gap_repair_mistakes_are_named() {
    let bearer = "{ kind: bearer, token: ghp_0123456789 }";
    let errs = errors(&gap_repair_yaml(
        "{ kind: github_deliveries, service: github-api }",
        bearer,
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("webhooks.github.recover.hook: is required with github_deliveries"),
        "{errs:#?}"
    );
    let errs = errors(&gap_repair_yaml(
        "{ kind: github_deliveries, service: github-api, hook: repos/wedsync/hooks/x, api_version: \"2024-06-20\" }",
        bearer,
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("webhooks.github.recover.hook: invalid hook \"repos/wedsync/hooks/x\""),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with(
            "webhooks.github.recover.api_version: only stripe_events has an api_version"
        ),
        "{errs:#?}"
    );
    let errs = errors(&gap_repair_yaml(
        "{ kind: stripe_events, service: stripe-api, hook: app }",
        bearer,
    ));
    assert!(
        errs[0].starts_with("webhooks.github.recover.kind: stripe_events recovers a webhook verified with kind: stripe"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("webhooks.github.recover.hook: only github_deliveries has a hook"),
        "{errs:#?}"
    );
    let errs = errors(&gap_repair_yaml(
        "{ kind: github_deliveries, service: github-api, hook: app }",
        "{ kind: github_app, app_id: 1, private_key: /nonexistent/app.pem }",
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0]
            .starts_with("services.github-api.auth.private_key: cannot read /nonexistent/app.pem"),
        "{errs:#?}"
    );
    let errs = errors(&gap_repair_yaml(
        "{ kind: github_deliveries, service: github-api, hook: app }",
        "{ kind: github_app, app_id: 1, private_key: \"-----BEGIN RSA PRIVATE KEY-----\\nMIIBAA==\\n-----END RSA PRIVATE KEY-----\\n\" }",
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("not a usable RSA private key"),
        "{errs:#?}"
    );
    assert!(
        !errs[0].contains("MIIBAA"),
        "the key is never echoed: {errs:#?}"
    );
}
