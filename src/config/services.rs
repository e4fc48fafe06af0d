//! `services.<name>`: one egress route per provider, with its credentials,
//! timeouts and resilience policies.

use crate::names::{ServiceName, UpstreamName};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::decode::{Decoder, Fields, Node};
use super::error::ValueError;
use super::private_key::{RsaPrivateKey, MAX_PEM};
use super::secret::Secret;
use super::ser;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: ServiceName,
    pub route: String,
    #[serde(flatten)]
    pub upstream: ServiceUpstream,
    pub ca_file: Option<PathBuf>,
    #[serde(serialize_with = "ser::duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    pub auth: Option<Auth>,
    pub rate_limit: Option<RateLimit>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub retry: Option<Retry>,
    pub idempotency_key: IdempotencyKey,
    /// The longest pause a provider's `Retry-After` can impose, here and
    /// (through Redis) on every replica.
    #[serde(serialize_with = "ser::duration")]
    pub max_pause: Duration,
}

/// Where a service's calls go: one provider's base URL, or a backend of
/// an upstream group (the groups delivery uses, with their balancer,
/// health checks, passive breakers and discovery).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceUpstream {
    Upstream(UpstreamUrl),
    Group(UpstreamName),
}

impl ServiceUpstream {
    /// The path prefix the provider's URL adds ("" for a group).
    pub fn base_path(&self) -> &str {
        match self {
            Self::Upstream(url) => &url.base_path,
            Self::Group(_) => "",
        }
    }
}

impl std::fmt::Display for ServiceUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Upstream(url) => url.fmt(f),
            Self::Group(name) => write!(f, "group {name}"),
        }
    }
}

/// A provider asking for a longer pause is most likely broken or hostile:
/// ten years of `Retry-After` must not stop payments on every replica.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

/// A provider base URL: `https://api.stripe.com` or `http://127.0.0.1:8080/base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Prepended to the request path after the route prefix is stripped; no trailing `/`.
    pub base_path: String,
}

impl UpstreamUrl {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let uri: http::Uri = text.parse().map_err(|_| ValueError::Url(text.into()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ValueError::UrlScheme(text.into())),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ValueError::UrlHost(text.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err(ValueError::UrlQuery(text.into()));
        }
        if text.contains('@') {
            return Err(ValueError::UrlCredentials(text.into()));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// The `Host` header value: the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.base_path)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Auth {
    Bearer {
        token: Secret,
    },
    ApiKey {
        placement: ApiKeyPlacement,
        value: Secret,
    },
    Basic {
        username: String,
        password: Secret,
    },
    #[serde(rename = "oauth2")]
    OAuth2(OAuth2),
    /// A GitHub App: an RS256 JWT minted for each call from the app's
    /// private key (`Authorization: Bearer <jwt>`, valid 10 minutes).
    GithubApp {
        app_id: String,
        /// Read from its file when the config is (never shown).
        private_key: RsaPrivateKey,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyPlacement {
    Header(String),
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` with the client id and secret (RFC 6749 §2.3.1, the default).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OAuth2 {
    pub token_url: UpstreamUrl,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    /// Extra form parameters sent with the token request. Their values are
    /// shown redacted: some token endpoints take a client assertion here.
    pub params: Vec<(String, Secret)>,
    pub client_auth: ClientAuth,
    #[serde(serialize_with = "ser::duration")]
    pub refresh_before: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    Local,
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    Service,
    Header(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum OnLimit {
    Reject,
    Wait {
        #[serde(serialize_with = "ser::duration")]
        max_wait: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(serialize_with = "ser::duration")]
    pub per: Duration,
    pub burst: u32,
    pub scope: LimitScope,
    pub key: Vec<LimitKey>,
    pub on_limit: OnLimit,
    pub on_store_error: OnStoreError,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CircuitBreaker {
    pub failure_threshold: u32,
    #[serde(serialize_with = "ser::percent")]
    pub error_rate: f64,
    #[serde(serialize_with = "ser::duration")]
    pub window: Duration,
    pub min_requests: u32,
    #[serde(serialize_with = "ser::duration")]
    pub open_for: Duration,
    pub half_open_probes: u32,
    pub failure_statuses: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    ConnectError,
    Timeout,
    Status(u16),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backoff {
    #[serde(serialize_with = "ser::duration")]
    pub initial: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retry {
    /// Counts the first try too.
    pub attempts: u32,
    pub retry_on: Vec<RetryOn>,
    #[serde(serialize_with = "ser::percent")]
    pub budget: f64,
    pub backoff: Backoff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyKey {
    Off,
    Auto,
}

pub(super) const SERVICE_KEYS: &[&str] = &[
    "route",
    "upstream",
    "group",
    "ca_file",
    "connect_timeout",
    "timeout",
    "auth",
    "rate_limit",
    "circuit_breaker",
    "retry",
    "idempotency_key",
    "max_pause",
];

pub fn decode_service(d: &mut Decoder, name: &str, node: &Node) -> Option<Service> {
    let f = d.fields(node, SERVICE_KEYS)?;
    let route = d.required(&f, "route").and_then(|n| route_prefix(d, &n));
    let upstream = match (f.get("upstream"), f.get("group")) {
        (Some(n), None) => d
            .parsed(&n, UpstreamUrl::parse)
            .map(ServiceUpstream::Upstream),
        (None, Some(n)) => d
            .non_empty_string(&n)
            .map(|name| ServiceUpstream::Group(name.as_str().into())),
        (Some(_), Some(_)) => {
            d.error(
                &f.path,
                "set exactly one of `upstream` (a provider's URL) or `group` (an upstream group)",
            );
            None
        }
        (None, None) => {
            d.error(
                &f.path.key("upstream"),
                "is required (or `group: <upstream group>`)",
            );
            None
        }
    };
    let ca_file = f
        .get("ca_file")
        .and_then(|n| d.non_empty_string(&n))
        .map(PathBuf::from);
    let connect_timeout = positive_duration(d, &f, "connect_timeout", Duration::from_secs(5));
    let timeout = positive_duration(d, &f, "timeout", Duration::from_secs(30));
    let auth = f.get("auth").map(|n| decode_auth(d, &n, ca_file.as_ref()));
    let rate_limit = f
        .get("rate_limit")
        .map(|n| decode_rate_limit(d, &n, timeout.unwrap_or_default()));
    let circuit_breaker = f.get("circuit_breaker").map(|n| decode_breaker(d, &n));
    let retry = f.get("retry").map(|n| decode_retry(d, &n));
    let idempotency_key = d.choice_or(
        &f,
        "idempotency_key",
        &[("auto", IdempotencyKey::Auto), ("off", IdempotencyKey::Off)],
        IdempotencyKey::Off,
    );
    let max_pause = positive_duration(d, &f, "max_pause", DEFAULT_MAX_PAUSE).filter(|pause| {
        let ok = *pause <= Duration::from_secs(86_400);
        if !ok {
            d.error(&f.path.key("max_pause"), "must be at most 1d");
        }
        ok
    });
    Some(Service {
        name: name.into(),
        route: route?,
        upstream: upstream?,
        ca_file,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        auth: auth.flatten(),
        rate_limit: rate_limit.flatten(),
        circuit_breaker: circuit_breaker.flatten(),
        retry: retry.flatten(),
        idempotency_key: idempotency_key?,
        max_pause: max_pause?,
    })
}

/// A route is a path prefix: `/stripe`. Matching is by whole segments, so a
/// trailing `/`, a query or a `*` would mean something else than users expect.
fn route_prefix(d: &mut Decoder, node: &Node) -> Option<String> {
    d.parsed(node, |text| {
        if !text.starts_with('/') {
            return Err(ValueError::RouteNotAbsolute(text.into()));
        }
        if text.len() > 1 && text.ends_with('/') {
            return Err(ValueError::RouteTrailingSlash(text.into()));
        }
        if text.contains("//")
            || text.contains(['*', '?'])
            || super::http_types::plain_path(text).is_err()
        {
            return Err(ValueError::Route(text.into()));
        }
        Ok(text.to_string())
    })
}

pub(crate) fn positive_duration(
    d: &mut Decoder,
    f: &Fields,
    key: &str,
    default: Duration,
) -> Option<Duration> {
    let Some(node) = f.get(key) else {
        return Some(default);
    };
    let value = d.duration(&node)?;
    if value.is_zero() {
        d.error(&node.path, "must be greater than 0s");
        return None;
    }
    Some(value)
}

fn decode_auth(d: &mut Decoder, node: &Node, service_ca: Option<&PathBuf>) -> Option<Auth> {
    let kinds = [
        ("bearer", "bearer"),
        ("api_key", "api_key"),
        ("basic", "basic"),
        ("oauth2", "oauth2"),
        ("github_app", "github_app"),
    ];
    if !node.value.is_mapping() {
        d.error(
            &node.path,
            "expected a mapping such as { kind: bearer, token: ... }",
        );
        return None;
    }
    // `kind` picks the variant; each variant then checks its own key set.
    let kind = match untagged_map_get(node, "kind") {
        Some(kind_node) => d.choice(&kind_node, &kinds)?,
        None => {
            d.error(
                &node.path.key("kind"),
                "is required (bearer, api_key, basic, oauth2 or github_app)",
            );
            return None;
        }
    };
    match kind {
        "bearer" => {
            let f = d.fields(node, &["kind", "token"])?;
            let token = d
                .required(&f, "token")
                .and_then(|n| non_empty_secret(d, &n))?;
            Some(Auth::Bearer { token })
        }
        "api_key" => {
            let f = d.fields(node, &["kind", "header", "query", "value"])?;
            let placement = match (f.get("header"), f.get("query")) {
                (Some(h), None) => d.parsed(&h, header_name).map(ApiKeyPlacement::Header),
                (None, Some(q)) => d.non_empty_string(&q).map(ApiKeyPlacement::Query),
                _ => {
                    d.error(
                        &f.path,
                        "set exactly one of `header` (e.g. X-Api-Key) or `query` (e.g. api_key)",
                    );
                    None
                }
            };
            let value = d
                .required(&f, "value")
                .and_then(|n| non_empty_secret(d, &n));
            Some(Auth::ApiKey {
                placement: placement?,
                value: value?,
            })
        }
        "basic" => {
            let f = d.fields(node, &["kind", "username", "password"])?;
            let username = d
                .required(&f, "username")
                .and_then(|n| d.non_empty_string(&n));
            let password = d.required(&f, "password").and_then(|n| d.secret(&n));
            if username.as_deref().is_some_and(|u| u.contains(':')) {
                d.error(
                    &f.path.key("username"),
                    "must not contain ':' (HTTP Basic separates user and password with it)",
                );
                return None;
            }
            Some(Auth::Basic {
                username: username?,
                password: password?,
            })
        }
        "github_app" => {
            let f = d.fields(node, &["kind", "app_id", "private_key"])?;
            let app_id = d
                .required(&f, "app_id")
                .and_then(|n| d.non_empty_string(&n));
            let private_key = d
                .required(&f, "private_key")
                .and_then(|n| d.parsed(&n, read_private_key));
            Some(Auth::GithubApp {
                app_id: app_id?,
                private_key: private_key?,
            })
        }
        _ => decode_oauth2(d, node, service_ca).map(Auth::OAuth2),
    }
}

/// `github_app.private_key`: the path of the PEM file GitHub issued (a
/// Kubernetes Secret mount), or the PEM itself (`${file:...}`,
/// `${env:...}`). Read and parsed here, so that `check` refuses a key the
/// egress could not sign with; a reload reads the file again.
fn read_private_key(value: &str) -> Result<RsaPrivateKey, ValueError> {
    let failed = |e: String| ValueError::PrivateKey(e);
    let pem = if value.trim_start().starts_with("-----BEGIN") {
        value.to_string()
    } else {
        let size = std::fs::metadata(value)
            .map_err(|e| failed(format!("cannot read {value}: {e}")))?
            .len();
        if size > MAX_PEM {
            return Err(failed(format!(
                "{value} is larger than a private key ({} KiB at most)",
                MAX_PEM / 1024
            )));
        }
        std::fs::read_to_string(value).map_err(|e| failed(format!("cannot read {value}: {e}")))?
    };
    RsaPrivateKey::from_pem(&pem).map_err(|e| failed(e.to_string()))
}

/// Reads one key of a mapping without checking the key set (used to pick the variant first).
fn untagged_map_get<'a>(node: &Node<'a>, key: &str) -> Option<Node<'a>> {
    node.value
        .get(key)
        .filter(|v| !v.is_null())
        .map(|value| Node {
            value,
            path: node.path.key(key),
        })
}

fn non_empty_secret(d: &mut Decoder, node: &Node) -> Option<Secret> {
    d.non_empty_string(node).map(Secret::new)
}

pub(crate) fn header_name(text: &str) -> Result<String, ValueError> {
    http::HeaderName::from_bytes(text.as_bytes())
        .map(|_| text.to_string())
        .map_err(|_| ValueError::HeaderName(text.into()))
}

fn decode_oauth2(d: &mut Decoder, node: &Node, service_ca: Option<&PathBuf>) -> Option<OAuth2> {
    let f = d.fields(
        node,
        &[
            "kind",
            "token_url",
            "client_id",
            "client_secret",
            "scopes",
            "audience",
            "params",
            "client_auth",
            "refresh_before",
            "ca_file",
        ],
    )?;
    let token_url = d
        .required(&f, "token_url")
        .and_then(|n| d.parsed(&n, UpstreamUrl::parse));
    let client_id = d
        .required(&f, "client_id")
        .and_then(|n| d.non_empty_string(&n));
    let client_secret = d
        .required(&f, "client_secret")
        .and_then(|n| non_empty_secret(d, &n));
    let scopes = d.or(&f, "scopes", Vec::new(), |d, n| {
        d.list(n, |d, item| d.non_empty_string(item))
    });
    let audience = f.get("audience").and_then(|n| d.non_empty_string(&n));
    let params = match f.get("params") {
        Some(n) => {
            let entries = d.entries(&n);
            entries
                .into_iter()
                .map(|(k, v)| d.secret(&v).map(|v| (k, v)))
                .collect::<Option<Vec<_>>>()
        }
        None => Some(Vec::new()),
    };
    let client_auth = d.choice_or(
        &f,
        "client_auth",
        &[("basic", ClientAuth::Basic), ("body", ClientAuth::Body)],
        ClientAuth::Basic,
    );
    let refresh_before = d.or(&f, "refresh_before", Duration::from_secs(60), |d, n| {
        d.duration(n)
    });
    let ca_file = match f.get("ca_file") {
        Some(n) => d.non_empty_string(&n).map(PathBuf::from),
        None => service_ca.cloned(),
    };
    Some(OAuth2 {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        scopes: scopes?,
        audience,
        params: params?,
        client_auth: client_auth?,
        refresh_before: refresh_before?,
        ca_file,
    })
}

fn decode_rate_limit(d: &mut Decoder, node: &Node, service_timeout: Duration) -> Option<RateLimit> {
    let f = d.fields(
        node,
        &[
            "requests",
            "per",
            "burst",
            "scope",
            "key",
            "on_limit",
            "max_wait",
            "on_store_error",
        ],
    )?;
    let requests = d
        .required(&f, "requests")
        .and_then(|n| d.integer(&n, 1, u32::MAX as u64))
        .map(|v| v as u32);
    let per = d.required(&f, "per").and_then(|n| d.duration(&n));
    if per.is_some_and(|p| p.is_zero()) {
        d.error(&f.path.key("per"), "must be greater than 0s");
    }
    let burst = match f.get("burst") {
        Some(n) => d.integer(&n, 1, u32::MAX as u64).map(|v| v as u32),
        None => requests,
    };
    let scope = d.choice_or(
        &f,
        "scope",
        &[("local", LimitScope::Local), ("global", LimitScope::Global)],
        LimitScope::Local,
    );
    let key = match f.get("key") {
        Some(n) if n.value.is_sequence() => d.list(&n, |d, item| d.parsed(item, limit_key)),
        Some(n) => d.parsed(&n, limit_key).map(|k| vec![k]),
        None => Some(vec![LimitKey::Service]),
    };
    let max_wait = f.get("max_wait").and_then(|n| d.duration(&n));
    let on_limit = match f.get("on_limit") {
        Some(n) => match d.choice(&n, &[("reject", false), ("wait", true)]) {
            Some(true) => Some(OnLimit::Wait {
                max_wait: max_wait.unwrap_or(service_timeout),
            }),
            Some(false) => {
                if f.has("max_wait") {
                    d.error(&f.path.key("max_wait"), "only applies with on_limit: wait");
                }
                Some(OnLimit::Reject)
            }
            None => None,
        },
        None => Some(OnLimit::Reject),
    };
    let on_store_error = d.choice_or(
        &f,
        "on_store_error",
        &[
            ("local", OnStoreError::Local),
            ("allow", OnStoreError::Allow),
            ("deny", OnStoreError::Deny),
        ],
        OnStoreError::Local,
    );
    Some(RateLimit {
        requests: requests?,
        per: per.filter(|p| !p.is_zero())?,
        burst: burst?,
        scope: scope?,
        key: key?,
        on_limit: on_limit?,
        on_store_error: on_store_error?,
    })
}

fn limit_key(text: &str) -> Result<LimitKey, ValueError> {
    if text == "service" {
        return Ok(LimitKey::Service);
    }
    match text.strip_prefix("header:") {
        Some(name) => header_name(name).map(LimitKey::Header),
        None => Err(ValueError::LimitKey(text.into())),
    }
}

pub fn decode_breaker(d: &mut Decoder, node: &Node) -> Option<CircuitBreaker> {
    let f = d.fields(
        node,
        &[
            "failure_threshold",
            "error_rate",
            "window",
            "min_requests",
            "open_for",
            "half_open_probes",
            "failure_statuses",
        ],
    )?;
    let count = |d: &mut Decoder, key: &str, default: u32| match f.get(key) {
        Some(n) => d.integer(&n, 1, 1_000_000).map(|v| v as u32),
        None => Some(default),
    };
    let failure_threshold = count(d, "failure_threshold", 5);
    let min_requests = count(d, "min_requests", 20);
    let half_open_probes = count(d, "half_open_probes", 1);
    let error_rate = d.or(&f, "error_rate", 0.5, |d, n| d.percent(n));
    let window = positive_duration(d, &f, "window", Duration::from_secs(10));
    let open_for = positive_duration(d, &f, "open_for", Duration::from_secs(30));
    let failure_statuses = d.or(&f, "failure_statuses", vec![500, 502, 503, 504], |d, n| {
        d.list(n, |d, item| d.integer(item, 100, 599).map(|v| v as u16))
    });
    Some(CircuitBreaker {
        failure_threshold: failure_threshold?,
        error_rate: error_rate?,
        window: window?,
        min_requests: min_requests?,
        open_for: open_for?,
        half_open_probes: half_open_probes?,
        failure_statuses: failure_statuses?,
    })
}

fn decode_retry(d: &mut Decoder, node: &Node) -> Option<Retry> {
    let f = d.fields(node, &["attempts", "retry_on", "budget", "backoff"])?;
    let attempts = d.or(&f, "attempts", 2, |d, n| {
        d.integer(n, 1, 10).map(|v| v as u32)
    });
    let retry_on = match f.get("retry_on") {
        Some(n) => d.list(&n, |d, item| d.parsed(item, retry_condition)),
        None => Some(vec![
            RetryOn::ConnectError,
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504),
        ]),
    };
    let budget = d.or(&f, "budget", 0.2, |d, n| d.percent(n));
    let backoff = match f.get("backoff") {
        Some(n) => decode_backoff(d, &n, Duration::from_millis(100), Duration::from_secs(2)),
        None => Some(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }),
    };
    Some(Retry {
        attempts: attempts?,
        retry_on: retry_on?,
        budget: budget?,
        backoff: backoff?,
    })
}

fn retry_condition(text: &str) -> Result<RetryOn, ValueError> {
    match text {
        "connect_error" => Ok(RetryOn::ConnectError),
        "timeout" => Ok(RetryOn::Timeout),
        status => match status.parse::<u16>() {
            Ok(code) if (400..=599).contains(&code) => Ok(RetryOn::Status(code)),
            _ => Err(ValueError::RetryCondition(text.into())),
        },
    }
}

pub(crate) fn decode_backoff(
    d: &mut Decoder,
    node: &Node,
    initial: Duration,
    max: Duration,
) -> Option<Backoff> {
    let f = d.fields(node, &["initial", "max"])?;
    let initial = positive_duration(d, &f, "initial", initial)?;
    let max = positive_duration(d, &f, "max", max)?;
    if max < initial {
        d.error(
            &f.path.key("max"),
            "must not be shorter than backoff.initial",
        );
        return None;
    }
    Some(Backoff { initial, max })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_urls_with_default_ports_and_base_paths() {
        let url = UpstreamUrl::parse("https://api.stripe.com").unwrap();
        assert_eq!(
            (url.tls, url.host.as_str(), url.port, url.base_path.as_str()),
            (true, "api.stripe.com", 443, "")
        );
        assert_eq!(url.authority(), "api.stripe.com");
        let url = UpstreamUrl::parse("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(
            (url.tls, url.port, url.base_path.as_str()),
            (false, 8080, "/base")
        );
        assert_eq!(url.authority(), "127.0.0.1:8080");
        let url = UpstreamUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            (url.host.as_str(), url.authority()),
            ("::1", "[::1]:9000".to_string())
        );
    }

    #[test]
    fn rejects_upstream_urls_that_would_be_misread() {
        for (bad, why) in [
            ("api.stripe.com", "scheme"),
            ("ftp://x.example", "scheme"),
            ("https://user:pw@x.example", "credentials"),
            ("https://x.example/?a=1", "query"),
        ] {
            let err = UpstreamUrl::parse(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }
}
