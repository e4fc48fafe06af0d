//! The egress gateway: the app calls `127.0.0.1:15001/<route>/...` with no
//! secret and the sidecar forwards to the provider with credentials injected,
//! under the service's timeouts. Request phases, in order:
//!
//! ```text
//! request_filter    route, request id                    -> 404 no_route
//!                   cool-down, breaker, rate limit       -> 429 provider_throttled / 503 circuit_open
//!                                                           / 429 rate_limited (or wait for the slot)
//!                   OAuth2 token                         -> 502 credentials_unavailable
//! upstream_peer     resolve, TLS/SNI/CA, timeouts         -> 502 upstream_unreachable
//! upstream_request  rewrite path and Host, inject credentials
//! upstream_response 401 invalidates the OAuth2 token; 429/503 + Retry-After
//!                   starts a cool-down; RateLimit headers added
//! body filters      whole-response deadline               -> 504 upstream_timeout
//! logging           breaker outcome, metrics, one access-log line (never a
//!                   query value or a header)
//! ```
//! Bodies stream both ways; nothing is buffered whole.

pub mod auth;
pub mod failure;
pub mod guard;
pub mod oauth2;
pub mod pause_sync;
pub mod request_id;
pub mod retrying;
pub mod routing;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use tokio::time::Instant;

use crate::access_log;
use crate::config::services::RetryOn;
use crate::config::units::format_duration;
use crate::config::{Config, StoreKind};
use crate::lifecycle::{InFlightGuard, Lifecycle};
use crate::metrics::{Metrics, StatusCounters};
use crate::problem::{ErrorCode, Problem};
use crate::resilience::retry::{is_safe_to_repeat, IDEMPOTENCY_KEY};
use crate::store::redis::RedisStore;
use crate::time::MonotonicClock;
use guard::{Guard, Pass, Verdict};
use request_id::RequestIds;
use retrying::Attempt;
use routing::RouteTable;
use service::EgressService;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The services and their route table as one config made them; swapped
/// whole on reload, so a request sees one config from start to end.
pub struct EgressRoutes {
    services: Vec<Arc<EgressService>>,
    routes: RouteTable,
}

/// Each service's live resilience state, in config order: the admin API
/// and the provider-pause listener read it, reloads replace it.
pub type Guards = Arc<ArcSwap<Vec<Arc<Guard>>>>;

pub struct EgressProxy {
    current: Arc<ArcSwap<EgressRoutes>>,
    reload: EgressReload,
    store: Option<Arc<RedisStore>>,
    /// Metrics of requests that matched no service, labelled `service="-"`.
    unrouted_requests: StatusCounters,
    unrouted_duration: prometheus::Histogram,
    lifecycle: Arc<Lifecycle>,
    request_ids: RequestIds,
}

pub struct EgressCtx {
    started: Instant,
    service: Option<Arc<EgressService>>,
    upstream_path: Bytes,
    request_id: http::HeaderValue,
    token: Option<Arc<str>>,
    /// The breaker admission and rate-limit state of a request that went.
    pass: Pass,
    /// 1 for the first try.
    attempt: u32,
    /// Set when a retry was granted: the wait before the next attempt.
    retry_delay: Option<Duration>,
    /// A provider status turned into an error only to be retried.
    retrying_status: bool,
    /// Idempotent method or Idempotency-Key (the app's or ours).
    safe_to_repeat: bool,
    /// The key generated for `idempotency_key: auto`, the same on every attempt.
    idempotency_key: Option<http::HeaderValue>,
    /// Set when the sidecar answered for itself, for the access log.
    sidecar_error: Option<ErrorCode>,
    _in_flight: Option<InFlightGuard>,
}

impl EgressProxy {
    async fn charge_shared_limit(
        &self,
        session: &mut Session,
        ctx: &mut EgressCtx,
    ) -> pingora::Result<()> {
        let Some(service) = self.service(ctx) else {
            return Ok(());
        };
        let time_left = service.timeout.saturating_sub(ctx.started.elapsed());
        let verdict = service
            .guard
            .check_shared(ctx.pass, &session.req_header().headers, time_left)
            .await;
        match verdict {
            Verdict::Go(pass) => ctx.pass = pass,
            Verdict::WaitThenGo(delay, pass) => {
                ctx.pass = pass;
                tokio::time::sleep(delay).await;
            }
            Verdict::Refuse(problem) => {
                ctx.pass = Pass::default();
                self.answer(session, ctx, problem).await?;
                let mut error = Error::explain(
                    ErrorType::HTTPStatus(429),
                    "a retry was refused by the shared rate limit",
                );
                error.set_retry(false);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Whether the attempt that just failed for `reason` is tried again;
    /// when it is, the next attempt's wait and admission go into `ctx`.
    fn grant_retry(&self, session: &Session, ctx: &mut EgressCtx, reason: RetryOn) -> bool {
        let Some(service) = self.service(ctx) else {
            return false;
        };
        let Some(retry) = &service.retry else {
            return false;
        };
        if session.response_written().is_some() {
            return false;
        }
        let attempt = Attempt {
            number: ctx.attempt,
            reason,
            safe_to_repeat: ctx.safe_to_repeat && !session.as_ref().retry_buffer_truncated(),
            time_left: service.timeout.saturating_sub(ctx.started.elapsed()),
            headers: &session.req_header().headers,
        };
        let Some(granted) = retry.decide(&service.guard, &mut ctx.pass, &attempt) else {
            return false;
        };
        tracing::debug!(service = %service.name, attempt = ctx.attempt, ?reason, "retrying");
        ctx.attempt += 1;
        ctx.pass = granted.pass;
        ctx.retry_delay = Some(granted.delay);
        true
    }
}

impl EgressCtx {
    /// Request ids are checked to be printable when taken, so this is exact.
    fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// The services of `config`, reusing the guard of each `previous` service
/// whose resilience settings are unchanged.
fn build_routes(
    config: &Config,
    metrics: &Metrics,
    clock: &Arc<dyn crate::time::Clock>,
    store: Option<&Arc<RedisStore>>,
    previous: &[Arc<EgressService>],
) -> Result<EgressRoutes, String> {
    let mut services = Vec::with_capacity(config.services.len());
    for service in &config.services {
        let kept_guard = previous
            .iter()
            .find(|old| {
                old.name == service.name && old.resilience == EgressService::resilience_of(service)
            })
            .map(|old| Arc::clone(&old.guard));
        services.push(Arc::new(EgressService::new(
            service, metrics, clock, store, kept_guard,
        )?));
    }
    Ok(EgressRoutes {
        services,
        routes: RouteTable::new(config.services.iter().map(|s| s.route.as_str())),
    })
}

/// The egress side of a config reload.
#[derive(Clone)]
pub struct EgressReload {
    current: Arc<ArcSwap<EgressRoutes>>,
    guards: Guards,
    metrics: Arc<Metrics>,
    clock: Arc<dyn crate::time::Clock>,
    store: Option<Arc<RedisStore>>,
}

impl EgressReload {
    /// Builds the services of `config`; the returned step swaps them in
    /// for new requests (requests in flight finish on the services they
    /// started with). A service whose rate limit and breaker are unchanged
    /// keeps its live state (breaker, buckets, pause). Nothing changes if
    /// building fails.
    pub fn prepare(&self, config: &Config) -> Result<impl FnOnce() + Send + 'static, String> {
        let old = self.current.load();
        let next = build_routes(
            config,
            &self.metrics,
            &self.clock,
            self.store.as_ref(),
            &old.services,
        )?;
        let (current, guards) = (Arc::clone(&self.current), Arc::clone(&self.guards));
        Ok(move || {
            guards.store(Arc::new(guards_of(&next)));
            current.store(Arc::new(next));
        })
    }
}

fn guards_of(routes: &EgressRoutes) -> Vec<Arc<Guard>> {
    routes
        .services
        .iter()
        .map(|s| Arc::clone(&s.guard))
        .collect()
}

impl EgressProxy {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
    ) -> Result<Self, String> {
        let clock = MonotonicClock::shared();
        let store = match &config.store.kind {
            StoreKind::Redis { urls } => Some(Arc::new(RedisStore::new(
                urls[0].expose(),
                &config.store.prefix,
                Arc::clone(&clock),
                metrics.store_errors_total.clone(),
            )?)),
            StoreKind::Local { .. } => None,
        };
        let current = build_routes(config, &metrics, &clock, store.as_ref(), &[])?;
        let guards = Arc::new(ArcSwap::from_pointee(guards_of(&current)));
        let current = Arc::new(ArcSwap::from_pointee(current));
        Ok(Self {
            reload: EgressReload {
                current: Arc::clone(&current),
                guards,
                metrics: Arc::clone(&metrics),
                clock,
                store: store.clone(),
            },
            current,
            store,
            unrouted_requests: StatusCounters::new(&metrics.egress_requests_total, "-"),
            unrouted_duration: metrics
                .egress_request_duration_seconds
                .with_label_values(&["-"]),
            lifecycle,
            request_ids: RequestIds::default(),
        })
    }

    /// What a config reload swaps in this proxy.
    pub fn reload_handle(&self) -> EgressReload {
        self.reload.clone()
    }

    /// The Redis store, when the config has one.
    pub fn store(&self) -> Option<Arc<RedisStore>> {
        self.store.clone()
    }

    /// Each service's live resilience state, in config order, kept current
    /// across reloads.
    pub fn guards(&self) -> Guards {
        Arc::clone(&self.reload.guards)
    }

    /// The request's service (shared, so `ctx` stays free to change).
    fn service(&self, ctx: &EgressCtx) -> Option<Arc<EgressService>> {
        ctx.service.clone()
    }

    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut EgressCtx,
        problem: Problem,
    ) -> pingora::Result<bool> {
        ctx.sidecar_error = Some(problem.code);
        problem
            .with_header(REQUEST_ID_HEADER, ctx.request_id_str())
            .write_to(session)
            .await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for EgressProxy {
    type CTX = EgressCtx;

    fn new_ctx(&self) -> EgressCtx {
        EgressCtx {
            started: Instant::now(),
            service: None,
            upstream_path: Bytes::new(),
            request_id: http::HeaderValue::from_static(""),
            token: None,
            pass: Pass::default(),
            attempt: 1,
            retry_delay: None,
            retrying_status: false,
            safe_to_repeat: false,
            idempotency_key: None,
            sidecar_error: None,
            _in_flight: Some(self.lifecycle.enter()),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut EgressCtx,
    ) -> pingora::Result<bool> {
        ctx.request_id = self
            .request_ids
            .for_request(session.req_header().headers.get(REQUEST_ID_HEADER));
        let request = session.req_header();
        let current = self.current.load();
        let Some((index, rest)) = current.routes.find(request.uri.path()) else {
            let detail = format!("no service route matches {}", request.uri.path());
            return self
                .answer(session, ctx, Problem::new(ErrorCode::NoRoute, detail))
                .await;
        };
        let service = Arc::clone(&current.services[index]);
        drop(current);
        ctx.service = Some(Arc::clone(&service));
        ctx.upstream_path =
            routing::upstream_path(&service.target.url.base_path, rest, request.uri.query()).into();
        let time_left = service.timeout.saturating_sub(ctx.started.elapsed());
        match service.guard.check(&request.headers, time_left).await {
            Verdict::Go(pass) => ctx.pass = pass,
            Verdict::WaitThenGo(delay, pass) => {
                ctx.pass = pass;
                tokio::time::sleep(delay).await;
            }
            Verdict::Refuse(problem) => return self.answer(session, ctx, problem).await,
        }
        let request = session.req_header();
        if service.auto_idempotency_key
            && request.method == http::Method::POST
            && !request.headers.contains_key(IDEMPOTENCY_KEY)
        {
            let key = uuid::Uuid::new_v4().hyphenated().to_string();
            ctx.idempotency_key =
                Some(http::HeaderValue::try_from(key).expect("a UUID is a header value"));
        }
        ctx.safe_to_repeat =
            ctx.idempotency_key.is_some() || is_safe_to_repeat(&request.method, &request.headers);
        if let Some(retry) = &service.retry {
            retry.record_request();
            // Pingora keeps up to 64 KiB of the body to send again; a longer
            // body is marked truncated and never retried.
            session.enable_retry_buffering();
        }
        if let Some(tokens) = &service.tokens {
            match tokens.token().await {
                Ok(token) => ctx.token = Some(token),
                Err(error) => {
                    let detail = format!("no access token for {}: {error}", service.name);
                    return self
                        .answer(
                            session,
                            ctx,
                            Problem::new(ErrorCode::CredentialsUnavailable, detail),
                        )
                        .await;
                }
            }
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut EgressCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        if let Some(delay) = ctx.retry_delay.take() {
            tokio::time::sleep(delay).await;
        }
        if ctx.pass.shared_limit_pending {
            // A retry's turn in the shared limit, which needs Redis and so
            // could not be asked where the retry was decided.
            self.charge_shared_limit(session, ctx).await?;
        }
        let service = self
            .service(ctx)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no service chosen"))?;
        let addr = service.target.resolve().await.map_err(|e| {
            let mut error = Error::explain(ErrorType::ConnectNoRoute, e);
            error.esource = ErrorSource::Upstream;
            error
        })?;
        let elapsed = ctx.started.elapsed();
        let remaining = service
            .timeout
            .saturating_sub(elapsed)
            .max(Duration::from_millis(1));
        Ok(Box::new(service.target.peer(
            addr,
            service.connect_timeout,
            remaining,
        )))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut EgressCtx,
    ) -> pingora::Result<()> {
        let Some(service) = self.service(ctx) else {
            return Ok(());
        };
        // Cloned, not taken: a retried attempt builds its request again.
        let uri = http::Uri::from_maybe_shared(ctx.upstream_path.clone()).map_err(|e| {
            Error::because(ErrorType::InternalError, "building the upstream path", e)
        })?;
        request.set_uri(uri);
        request.insert_header(http::header::HOST, service.host.clone())?;
        request.insert_header(REQUEST_ID_HEADER, ctx.request_id.clone())?;
        if let Some(key) = &ctx.idempotency_key {
            request.insert_header(IDEMPOTENCY_KEY, key.clone())?;
        }
        service.auth.apply(request, ctx.token.as_deref())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut EgressCtx,
    ) -> pingora::Result<()> {
        if response.status.as_u16() == 401 {
            if let (Some(service), Some(token)) = (self.service(ctx), ctx.token.as_deref()) {
                if let Some(tokens) = &service.tokens {
                    tokens.invalidate(token);
                    tracing::info!(service = %service.name, "provider answered 401: the cached OAuth2 token is dropped");
                }
            }
        }
        if let Some(service) = self.service(ctx) {
            let status = response.status.as_u16();
            let pause = service
                .guard
                .provider_answered(status, response.headers.get(http::header::RETRY_AFTER));
            if let Some(pause) = pause {
                service.guard.share_pause(pause).await;
            }
            if self.grant_retry(session, ctx, RetryOn::Status(status)) {
                // Dropping this answer unread makes Pingora try again.
                ctx.retrying_status = true;
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "provider status to be retried",
                );
            }
            if let Some((policy, current)) = service.guard.rate_headers(&ctx.pass) {
                response.insert_header(guard::RATELIMIT_POLICY, policy)?;
                response.insert_header(guard::RATELIMIT, current)?;
            }
        }
        response.insert_header(REQUEST_ID_HEADER, ctx.request_id.clone())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut EgressCtx,
    ) -> pingora::Result<Option<Duration>> {
        // `timeout` bounds the whole response, not only each read.
        if let Some(service) = self.service(ctx) {
            if !end && ctx.started.elapsed() > service.timeout {
                return Error::e_explain(ErrorType::ReadTimedout, "whole-response timeout");
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut EgressCtx,
    ) -> FailToProxy {
        if let (Some(code), Some(_)) = (ctx.sidecar_error, session.response_written()) {
            // The sidecar already answered for itself (a retry refused by
            // the shared rate limit).
            return FailToProxy {
                error_code: code.status(),
                can_reuse_downstream: false,
            };
        }
        let Some(code) = failure::classify(error) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let service = self.service(ctx);
        let name = service
            .as_deref()
            .map(|s| s.name.as_str())
            .unwrap_or("the provider");
        let detail = match code {
            // Our own failures (DNS, say) carry the reason as context;
            // Pingora's connect errors are told by their type.
            ErrorCode::UpstreamUnreachable => match &error.context {
                Some(reason) if error.etype() == &ErrorType::ConnectNoRoute => {
                    format!("cannot reach {name}: {}", reason.as_str())
                }
                _ => format!("cannot reach {name}: {}", error.etype().as_str()),
            },
            ErrorCode::UpstreamTimeout => {
                let limit = self
                    .service(ctx)
                    .map(|s| format_duration(s.timeout))
                    .unwrap_or_default();
                format!("{name} did not answer within {limit}")
            }
            ErrorCode::UpstreamFailed => format!(
                "the connection to {name} failed: {}",
                error.etype().as_str()
            ),
            ErrorCode::BadRequest => {
                format!("the request could not be read: {}", error.etype().as_str())
            }
            _ => "the sidecar failed to proxy this request".to_string(),
        };
        ctx.sidecar_error = Some(code);
        // Once the provider's answer has started, only closing the connection is left.
        if session.response_written().is_none() {
            let problem =
                Problem::new(code, detail).with_header(REQUEST_ID_HEADER, ctx.request_id_str());
            if let Err(e) = problem.write_to(session).await {
                tracing::debug!(error = %e, "could not send the error answer");
            }
        }
        FailToProxy {
            error_code: code.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut EgressCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        if let Some(service) = self.service(ctx) {
            let outcome = service.guard.outcome(status, ctx.sidecar_error);
            service.guard.finish(ctx.pass.admission.take(), outcome);
        }
        let service = self.service(ctx);
        let (requests, duration) = match service.as_deref() {
            Some(s) => (&s.requests, &s.duration),
            None => (&self.unrouted_requests, &self.unrouted_duration),
        };
        requests.inc(status);
        duration.observe(elapsed.as_secs_f64());
        let request = session.req_header();
        access_log::record(&access_log::Entry {
            request_id: ctx.request_id_str(),
            service: service.as_deref().map_or("-", |s| s.name.as_str()),
            method: request.method.as_str(),
            path: request.uri.path(),
            status,
            duration: elapsed,
            sidecar_error: ctx.sidecar_error.map(ErrorCode::as_str),
            error: error.map(|e| e.etype().as_str()),
        });
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut EgressCtx,
        mut error: Box<Error>,
    ) -> Box<Error> {
        let retry = self.grant_retry(session, ctx, RetryOn::ConnectError);
        error.set_retry(retry);
        error
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        ctx: &mut EgressCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut error = error.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.retrying_status) {
            error.set_retry(true);
        } else if matches!(
            error.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) && error.esource() == &ErrorSource::Upstream
        {
            let retry = self.grant_retry(session, ctx, RetryOn::Timeout);
            error.set_retry(retry);
        } else if ctx.safe_to_repeat && !session.as_ref().retry_buffer_truncated() {
            // Pingora's own rule: a safe request whose pooled connection
            // turned out to be closed is sent again on a new one.
            error.retry.decide_reuse(client_reused);
        } else {
            error.set_retry(false);
        }
        error
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &EgressCtx, _error: &Error) -> bool {
        // The access-log line above already records every failure once.
        true
    }
}
