//! The admin listener: Prometheus metrics, probes, and the operator API.
//! `/admin/*` needs the admin token when one is set (compared in constant
//! time, revealing neither content nor length); `/metrics` and the probes
//! never do. Without a token (loopback only), a POST must say
//! `Content-Type: application/json`: a web page cannot send that
//! cross-site without a preflight, which this API never grants, so no
//! browser tab on an operator's machine can replay dead letters.
//! Never shows a secret.

pub mod console;
pub mod dead_letters;
pub mod events;
pub mod guard;
pub mod overview;
pub mod recent;
pub mod webhooks;

use crate::net::request_id;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::config::{Auth, Secret};
use crate::egress::EgressRoutes;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::problem::{ErrorCode, Problem};
use crate::runtime::snapshot::SnapshotHandle;
use crate::store::{Store, StoreReport};
use crate::time::unix_time;

pub struct AdminApp {
    /// The running snapshot: config and live state from the same reload.
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    /// None without webhooks: there is no event store then.
    store: Option<Arc<dyn Store>>,
    /// The event store's latest inspection (`/admin/store`).
    store_report: Option<Arc<arc_swap::ArcSwapOption<StoreReport>>>,
    /// Events in the last minutes, for the overview.
    recent: Arc<recent::Recent>,
    started: overview::Started,
    /// The bound egress, ingress and admin addresses (port 0 settled);
    /// the config's until told.
    listening: Option<[std::net::SocketAddr; 3]>,
    /// Gap repair, for a run an operator starts.
    gap_repair: Option<Arc<crate::webhooks::recover::GapRepair>>,
}

/// The store's APIs, behind the same token and request checks.
#[derive(Clone, Copy)]
enum Api {
    DeadLetters,
    Events,
    Webhooks,
}

/// What the admin API reads of a request.
pub struct AdminRequest<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authorization: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
}

impl AdminApp {
    pub fn new(
        snapshot: SnapshotHandle,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        store: Option<Arc<dyn Store>>,
        store_report: Option<Arc<arc_swap::ArcSwapOption<StoreReport>>>,
        recent: Arc<recent::Recent>,
    ) -> Self {
        Self {
            snapshot,
            metrics,
            lifecycle,
            store,
            store_report,
            recent,
            started: overview::Started::now(),
            listening: None,
            gap_repair: None,
        }
    }

    pub fn gap_repair(mut self, repair: Option<Arc<crate::webhooks::recover::GapRepair>>) -> Self {
        self.gap_repair = repair;
        self
    }

    /// The addresses the listeners are bound to: egress, ingress, admin.
    pub fn listening(mut self, addresses: [std::net::SocketAddr; 3]) -> Self {
        self.listening = Some(addresses);
        self
    }

    /// Every answer, refusals included, carries the security headers.
    pub async fn route(&self, request: &AdminRequest<'_>) -> http::Response<Vec<u8>> {
        let mut answer = self.route_checked(request).await;
        guard::secure(&mut answer);
        answer
    }

    /// The checks in order: the `Host` (421), the token unless the path is
    /// public (401), a state change while read-only (403), then the routes.
    async fn route_checked(&self, request: &AdminRequest<'_>) -> http::Response<Vec<u8>> {
        let (method, path) = (request.method, request.path);
        let config = Arc::clone(&self.snapshot.load().config);
        let admin = &config.admin;
        if !guard::host_allowed(path, request.host, &admin.hosts) {
            return Problem::new(
                ErrorCode::MisdirectedRequest,
                "this Host is not served here: use localhost (kubectl port-forward) or a name listed in admin.hosts",
            )
            .into_http_response();
        }
        if let Some(asset) = console::asset(path) {
            return match *method {
                http::Method::GET | http::Method::HEAD => {
                    let body = if asset.content_type.starts_with("text/html") {
                        console::page(admin.token.is_some(), admin.read_only)
                    } else {
                        asset.body.to_vec()
                    };
                    response(200, asset.content_type, body)
                }
                _ => get_only(path),
            };
        }
        if !guard::is_public(path) {
            if let Err(problem) = check_token(admin.token.as_ref(), request.authorization) {
                return problem.into_http_response();
            }
        }
        if admin.read_only && guard::changes_state(method) {
            return Problem::new(
                ErrorCode::Forbidden,
                format!("the admin API is read-only (admin.read_only): {method} is refused"),
            )
            .into_http_response();
        }
        if path == "/admin/overview" {
            return match *method {
                http::Method::GET | http::Method::HEAD => self.overview(&config).await,
                _ => get_only(path),
            };
        }
        let api = [
            ("/admin/dead-letters", Api::DeadLetters),
            ("/admin/events", Api::Events),
            ("/admin/webhooks", Api::Webhooks),
        ];
        for (prefix, api) in api {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            if !(rest.is_empty() || rest.starts_with('/')) {
                continue;
            }
            if let Err(problem) =
                check_simple_request(config.admin.token.is_some(), method, request.content_type)
            {
                return problem.into_http_response();
            }
            let Some(store) = &self.store else {
                return Problem::new(
                    ErrorCode::NotFound,
                    "no webhooks are configured, so there is no event store and no event",
                )
                .into_http_response();
            };
            let query = dead_letters::Query::parse(request.query);
            let now_ms = unix_time().as_millis() as u64;
            let answer = match api {
                Api::DeadLetters => {
                    dead_letters::handle(&**store, method, rest, &query, now_ms).await
                }
                Api::Events => events::handle(&**store, method, rest, &query, now_ms).await,
                Api::Webhooks => {
                    let snapshot = self.snapshot.load();
                    webhooks::handle(
                        &snapshot.webhooks,
                        &**store,
                        self.gap_repair.as_deref(),
                        method,
                        rest,
                        &query,
                    )
                    .await
                }
            };
            return match answer {
                Ok((status, value)) => json(status, &value),
                Err(problem) => problem.into_http_response(),
            };
        }
        self.route_get(method, path)
    }

    /// What the GET-only endpoints answer; the token was checked.
    fn route_get(&self, method: &http::Method, path: &str) -> http::Response<Vec<u8>> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return get_only(path);
        }
        match path {
            "/metrics" => response(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => json(200, &serde_json::json!({ "status": "ok" })),
            "/readyz" => match self.lifecycle.readiness() {
                Ok(()) => json(200, &serde_json::json!({ "status": "ready" })),
                Err(reason) => json(
                    503,
                    &serde_json::json!({ "status": "not_ready", "reason": reason.to_string() }),
                ),
            },
            _ if path.starts_with("/admin/") => {
                let snapshot = self.snapshot.load();
                match path {
                    "/admin/config" => json(200, &*snapshot.config),
                    "/admin/services" => json(200, &services_summary(&snapshot.egress)),
                    "/admin/upstreams" => json(
                        200,
                        &serde_json::json!({ "upstreams": snapshot.upstreams.summary() }),
                    ),
                    "/admin/store" => self.store_summary(),
                    _ => Problem::new(ErrorCode::NotFound, format!("no admin endpoint at {path}"))
                        .into_http_response(),
                }
            }
            _ => Problem::new(ErrorCode::NotFound, format!("no endpoint at {path}"))
                .into_http_response(),
        }
    }
}

impl AdminApp {
    /// `/admin/store`: what the event store is, how it keeps events (its
    /// settings, warnings, a refusal) and whether it answers now.
    fn store_summary(&self) -> http::Response<Vec<u8>> {
        match self.store_value() {
            Some(value) => json(200, &value),
            None => Problem::new(
                ErrorCode::NotFound,
                "no webhooks are configured, so there is no event store",
            )
            .into_http_response(),
        }
    }

    fn store_value(&self) -> Option<serde_json::Value> {
        let report = self.store_report.as_ref()?;
        let report = report.load_full();
        let state = self.lifecycle.store_state();
        let space = self.store.as_ref().map(|s| s.space()).unwrap_or_default();
        let settings: serde_json::Map<String, serde_json::Value> = report
            .as_deref()
            .map(|r| {
                r.settings
                    .iter()
                    .map(|(name, value)| (name.clone(), serde_json::Value::from(value.as_str())))
                    .collect()
            })
            .unwrap_or_default();
        Some(serde_json::json!({
                "kind": report.as_deref().map(|r| r.kind),
                "settings": settings,
                "warnings": report.as_deref().map(|r| r.warnings.clone()).unwrap_or_default(),
                "refusal": state.refusal,
                "answering": state.failing.is_none(),
                "failing_for_s": state.failing.as_ref().map(|(since, _)| since.elapsed().as_secs()),
                "last_error": state.failing.map(|(_, reason)| reason),
                "used_bytes": space.used_bytes,
                "capacity_bytes": space.capacity_bytes,
                "paused_for_space": space.paused,
        }))
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let header = session.req_header();
        let request = AdminRequest {
            method: &header.method,
            path: header.uri.path(),
            query: header.uri.query(),
            authorization: header
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            content_type: header
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            // HTTP/2 and absolute-form requests name it in the URI.
            host: header
                .headers
                .get(http::header::HOST)
                .map(|v| v.as_bytes())
                .or_else(|| header.uri.authority().map(|a| a.as_str().as_bytes())),
        };
        let id = request_id::shared().for_request(header.headers.get(request_id::HEADER));
        let mut response = self.route(&request).await;
        response.headers_mut().insert(request_id::HEADER, id);
        response
    }
}

/// `405` for a path that answers GET (and HEAD) only.
fn get_only(path: &str) -> http::Response<Vec<u8>> {
    Problem::new(
        ErrorCode::MethodNotAllowed,
        format!("{path} answers GET only"),
    )
    .with_header("allow", "GET, HEAD")
    .into_http_response()
}

fn check_token(expected: Option<&Secret>, authorization: Option<&[u8]>) -> Result<(), Problem> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    // Digests of equal length, compared in constant time: neither a byte of
    // the token nor its length shows in how long a refusal takes.
    let digest = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes);
    let matches = digest(presented)
        .as_ref()
        .ct_eq(digest(expected.expose().as_bytes()).as_ref());
    if bool::from(matches) {
        return Ok(());
    }
    let detail = if authorization.is_none() {
        "this endpoint needs Authorization: Bearer <admin.token>"
    } else {
        "the admin token does not match"
    };
    Err(Problem::new(ErrorCode::Unauthorized, detail)
        .with_header("www-authenticate", "Bearer realm=\"wedsync-sidecar admin\""))
}

/// Without a token, a POST must carry `Content-Type: application/json`,
/// which a cross-site page can only send after a preflight; with one, the
/// `Authorization` header already forces the preflight.
fn check_simple_request(
    token_set: bool,
    method: &http::Method,
    content_type: Option<&[u8]>,
) -> Result<(), Problem> {
    if token_set || method != http::Method::POST {
        return Ok(());
    }
    let is_json = content_type
        .and_then(|v| v.split(|b| *b == b';').next())
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"application/json"));
    if is_json {
        return Ok(());
    }
    Err(Problem::new(
        ErrorCode::UnsupportedMediaType,
        "without admin.token, POST needs Content-Type: application/json",
    )
    .with_header("accept-post", "application/json"))
}

fn services_summary(egress: &EgressRoutes) -> serde_json::Value {
    let services: Vec<serde_json::Value> = egress
        .services
        .iter()
        .map(|service| {
            let (s, guard) = (&service.config, &service.guard);
            let auth = match &s.auth {
                None => "none",
                Some(Auth::Bearer { .. }) => "bearer",
                Some(Auth::ApiKey { .. }) => "api_key",
                Some(Auth::Basic { .. }) => "basic",
                Some(Auth::OAuth2(_)) => "oauth2",
                Some(Auth::GithubApp { .. }) => "github_app",
            };
            serde_json::json!({
                "name": s.name,
                "route": s.route,
                "upstream": s.upstream.to_string(),
                "auth": auth,
                "connect_timeout": crate::config::units::format_duration(s.connect_timeout),
                "timeout": crate::config::units::format_duration(s.timeout),
                "circuit_breaker": guard.breaker_state().map(|state| serde_json::json!({ "state": state.as_str() })),
                "rate_limit": s.rate_limit.as_ref().map(|limit| serde_json::json!({
                    "requests": limit.requests,
                    "per": crate::config::units::format_duration(limit.per),
                    "burst": limit.burst,
                    "scope": limit.scope,
                    "remaining": guard.rate_limit_remaining(),
                })),
                "provider_pause_ms": guard.provider_pause_ms(),
            })
        })
        .collect();
    serde_json::json!({ "services": services })
}

fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> http::Response<Vec<u8>> {
    response(
        status,
        "application/json",
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    )
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| http::Response::new(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_required_when_set() {
        let token = Secret::new("admin-token-0123456789");
        assert!(check_token(None, None).is_ok());
        assert!(check_token(Some(&token), Some(b"Bearer admin-token-0123456789")).is_ok());
        assert_eq!(
            check_token(Some(&token), None).unwrap_err().detail,
            "this endpoint needs Authorization: Bearer <admin.token>"
        );
        assert_eq!(
            check_token(Some(&token), Some(b"Bearer admin-token-012345678"))
                .unwrap_err()
                .detail,
            "the admin token does not match"
        );
        assert!(check_token(Some(&token), Some(b"admin-token-0123456789")).is_err());
        assert!(check_token(Some(&token), Some(b"Bearer admin-token-0123456789-longer")).is_err());
    }

    #[test]
    fn without_a_token_a_post_must_say_it_sends_json() {
        let post = http::Method::POST;
        assert!(check_simple_request(false, &post, Some(b"application/json")).is_ok());
        assert!(
            check_simple_request(false, &post, Some(b"Application/JSON; charset=utf-8")).is_ok()
        );
        for simple in [
            None,
            Some(&b"text/plain"[..]),
            Some(b"application/x-www-form-urlencoded"),
        ] {
            let problem = check_simple_request(false, &post, simple).unwrap_err();
            assert_eq!(problem.status(), 415, "{simple:?}");
        }
        assert!(
            check_simple_request(true, &post, None).is_ok(),
            "the token forces a preflight"
        );
        assert!(check_simple_request(false, &http::Method::DELETE, None).is_ok());
    }
}
