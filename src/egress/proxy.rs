//! The egress's Pingora callbacks, in the order a request meets them; each
//! hands the decision to the request's [`Exchange`] and does only the I/O:
//!
//! ```text
//! request_filter          route, request id, admit        -> 404 no_route, 429, 503, 502 credentials
//! upstream_peer           next attempt (backoff, shared limit), resolve, TLS, timeouts
//! connected_to_upstream   the cutoff at the exchange's deadline (headers and 1xx too)
//! upstream_request_filter path, Host, request id, idempotency key, credentials
//! upstream_response_filter the provider's answer: token, pause, retry?, RateLimit headers
//! body filters            the whole-response deadline    -> 504 upstream_timeout
//! fail_to_connect / error_while_proxy   retry, or the answer for the failure
//! fail_to_proxy           writes the sidecar's answer, when it has one
//! logging                 the breaker's outcome, metrics, one access-log line
//! ```

use std::sync::Arc;
use std::time::Duration;

use arc_swap::access::{Access, DynAccess};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use super::context::{exchange_of, EgressCtx};
use super::exchange::{Exchange, Step};
use super::headers::{set_request, set_response};
use super::publish::EventSink;
use super::service::Destination;
use super::{guard, routing, EgressRoutes, REQUEST_ID_HEADER};
use crate::access_log;
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, StatusCounters};
use crate::net::cutoff::Cutoffs;
use crate::net::request_id;
use crate::problem::{ErrorCode, Problem};
use crate::trace::export::{Span, SpanKind};
use crate::trace::state::TRACESTATE;
use crate::trace::{self, TraceContext, TRACEPARENT};

/// `R` reads the services of the running config (the runtime snapshot's).
/// A concrete type, not `Box<dyn DynAccess>`: its `load` is on every
/// request, and the boxed one allocates a guard each time.
pub struct EgressProxy<R = Box<dyn DynAccess<EgressRoutes> + Send + Sync>> {
    routes: R,
    /// Metrics of requests that matched no service, labelled `service="-"`.
    unrouted_requests: StatusCounters,
    unrouted_duration: prometheus::Histogram,
    lifecycle: Arc<Lifecycle>,
    publisher: Box<dyn EventSink>,
    /// Holds each attempt to what is left of its service's timeout.
    cutoffs: Arc<Cutoffs>,
}

impl<R: Access<EgressRoutes> + Send + Sync + 'static> EgressProxy<R> {
    pub fn new(
        routes: R,
        metrics: &Metrics,
        lifecycle: Arc<Lifecycle>,
        publisher: Box<dyn EventSink>,
    ) -> Self {
        Self {
            routes,
            unrouted_requests: StatusCounters::new(&metrics.egress_requests_total, "-"),
            unrouted_duration: metrics
                .egress_request_duration_seconds
                .with_label_values(&["-"]),
            lifecycle,
            publisher,
            cutoffs: Cutoffs::new(),
        }
    }
}

/// Every backend of the service's group is unhealthy or has its breaker
/// open: Envoy's "no healthy upstream", retried after a second.
fn no_backend(group: &str) -> Problem {
    Problem::new(
        ErrorCode::NoHealthyBackend,
        format!("no healthy backend in upstream {group}"),
    )
    .with_header("retry-after", "1")
}

/// Whether `response` is the whole answer (no body can follow it), so its
/// connection may be pooled as soon as the body filters would have ended.
fn ends_with_header(request: &RequestHeader, response: &ResponseHeader) -> bool {
    let status = response.status.as_u16();
    if response.status.is_informational() {
        return false;
    }
    request.method == http::Method::HEAD
        || status == 204
        || status == 304
        || response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
}

fn body_truncated(session: &Session) -> bool {
    session.as_ref().retry_buffer_truncated()
}

#[async_trait]
impl<R: Access<EgressRoutes> + Send + Sync + 'static> ProxyHttp for EgressProxy<R> {
    /// Boxed: Pingora keeps the context by value in each request's future,
    /// which it boxes and moves (a memcpy of the whole future, about 15 kB
    /// per request); 8 bytes there instead of the context's 528, held in
    /// more than one of the future's slots, save more than the allocation costs.
    type CTX = Box<EgressCtx>;

    fn new_ctx(&self) -> Box<EgressCtx> {
        Box::new(EgressCtx::new(self.lifecycle.enter()))
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let request = session.req_header();
        ctx.request_id = request_id::shared().for_request(request.headers.get(REQUEST_ID_HEADER));
        let (published, found, propagate) = {
            let routes = self.routes.load();
            match routes.published.at(request.uri.path()) {
                Some(source) => (Some(source.clone()), None, routes.propagate),
                None => (
                    None,
                    routes
                        .find(request.uri.path())
                        .map(|(s, rest)| (Arc::clone(s), rest.to_string())),
                    routes.propagate,
                ),
            }
        };
        if propagate {
            let (trace, parent) = TraceContext::continue_or_start(
                TraceContext::from_headers(&request.headers),
                trace::sample,
            );
            ctx.trace = Some(trace);
            ctx.trace_parent = parent;
        }
        if let Some(source) = published {
            self.publisher.serve(session, &source).await;
            ctx.published = Some(source);
            return Ok(true);
        }
        let Some((service, rest)) = found else {
            let detail = format!("no service route matches {}", request.uri.path());
            return ctx
                .answer(session, Problem::new(ErrorCode::NoRoute, detail))
                .await;
        };
        ctx.upstream_path = routing::upstream_path(
            service.config.upstream.base_path(),
            &rest,
            request.uri.query(),
        )
        .into();
        let mut exchange = Exchange::new(service, ctx.started, &request.method, &request.headers);
        let step = exchange.admit(&session.req_header().headers).await;
        if exchange.may_buffer_body() {
            // Pingora keeps up to 64 KiB of the body to send again; a longer
            // body is marked truncated and never retried.
            session.enable_retry_buffering();
        }
        ctx.exchange = Some(exchange);
        match step {
            Step::Go => Ok(false),
            Step::Wait(delay) => {
                tokio::time::sleep(delay).await;
                Ok(false)
            }
            Step::Answer(problem) => ctx.answer(session, problem).await,
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        let exchange = exchange_of(ctx)?;
        match exchange.next_attempt(&session.req_header().headers).await {
            Step::Go => {}
            Step::Wait(delay) => tokio::time::sleep(delay).await,
            Step::Answer(problem) => return Err(ctx.refuse(problem)),
        }
        let exchange = exchange_of(ctx)?;
        let service = Arc::clone(exchange.service());
        let remaining = exchange.time_left().max(Duration::from_millis(1));
        match &service.destination {
            Destination::Provider(target) => {
                let addr = target.resolve().await.map_err(|e| {
                    let mut error = Error::explain(ErrorType::ConnectNoRoute, e.to_string());
                    error.esource = ErrorSource::Upstream;
                    error
                })?;
                Ok(Box::new(target.peer(
                    addr,
                    service.connect_timeout,
                    remaining,
                )))
            }
            Destination::Group(group) => {
                match ctx
                    .backends
                    .next_peer(group, service.connect_timeout, remaining)
                {
                    Some(peer) => Ok(Box::new(peer)),
                    None => Err(ctx.refuse(no_backend(group.name()))),
                }
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        // Pingora's read timeout restarts with every byte and bounds
        // neither the headers nor a run of 1xx answers: the cutoff ends
        // the attempt when the exchange's time is up, wherever it is.
        if let Some(exchange) = &ctx.exchange {
            ctx.cutoff = match self.cutoffs.arm(fd, exchange.time_left()) {
                Ok(cutoff) => Some(cutoff),
                Err(error) => {
                    tracing::warn!(%error, "no deadline cutoff for an upstream connection");
                    None
                }
            };
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        // The provider sees this exchange's span as its parent; the app's
        // `tracestate` goes on with it, as one list, only when the app's
        // `traceparent` was valid (a new trace has no state yet).
        if let Some(trace) = &ctx.trace {
            set_request(request, TRACEPARENT, trace.header_value())?;
            if request.headers.contains_key(TRACESTATE) {
                let state = ctx
                    .trace_parent
                    .and_then(|_| trace::state::forwarded(&request.headers));
                request.remove_header(TRACESTATE);
                if let Some(state) = state {
                    set_request(request, TRACESTATE, state)?;
                }
            }
        }
        match &ctx.exchange {
            Some(exchange) => exchange.write_request(
                request,
                &ctx.upstream_path,
                &ctx.request_id,
                ctx.backends.host(),
            ),
            None => Ok(()),
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if ends_with_header(session.req_header(), response) {
            ctx.answer_read();
        }
        if let Some(exchange) = ctx.exchange.as_mut() {
            let status = response.status.as_u16();
            ctx.backends.answered(status);
            let service = Arc::clone(exchange.service());
            let tokens = service.tokens.as_deref().zip(exchange.token());
            service
                .guard
                .after_response(
                    status,
                    response.headers.get(http::header::RETRY_AFTER),
                    tokens,
                )
                .await;
            if let Some(seconds) = service
                .guard
                .capped_retry_after(status, response.headers.get(http::header::RETRY_AFTER))
            {
                set_response(response, http::header::RETRY_AFTER, seconds.into())?;
            }
            if let Step::Wait(_) = exchange.on_status(
                status,
                &session.req_header().headers,
                body_truncated(session),
            ) {
                // Dropping this answer unread makes Pingora try again.
                ctx.retrying_status = true;
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "provider status to be retried",
                );
            }
            if let Some((policy, current)) = exchange.rate_headers() {
                set_response(response, guard::RATELIMIT_POLICY, policy)?;
                set_response(response, guard::RATELIMIT, current)?;
            }
        }
        set_response(response, REQUEST_ID_HEADER, ctx.request_id.clone())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Option<Duration>> {
        // `timeout` bounds the whole response, not only each read.
        let late = ctx
            .exchange
            .as_ref()
            .is_some_and(|e| e.time_left().is_zero());
        if !end && late {
            return Error::e_explain(ErrorType::ReadTimedout, "whole-response timeout");
        }
        if end {
            ctx.answer_read();
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut error: Box<Error>,
    ) -> Box<Error> {
        ctx.backends.failed();
        let Some(exchange) = ctx.exchange.as_mut() else {
            return error;
        };
        let headers = &session.req_header().headers;
        let step = exchange.on_connect_failure(&error, headers, body_truncated(session));
        ctx.after_failure(step, &mut error);
        error
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut error = error.more_context(format!("Peer: {peer}"));
        if ctx.cut_off() {
            // The cutoff shut the socket: whatever Pingora saw (a closed
            // connection, a failed write), the provider ran out of time.
            error = Error::because(
                ErrorType::ReadTimedout,
                "the exchange's deadline passed",
                error,
            )
            .into_up();
        }
        if error.esource() == &ErrorSource::Upstream {
            ctx.backends.failed();
        } else {
            ctx.backends.end();
        }
        let Some(exchange) = ctx.exchange.as_mut() else {
            error.set_retry(false);
            return error;
        };
        if std::mem::take(&mut ctx.retrying_status) {
            error.set_retry(true);
            return error;
        }
        let truncated = body_truncated(session);
        let is_timeout = matches!(
            error.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) && error.esource() == &ErrorSource::Upstream;
        if is_timeout {
            let step = exchange.on_broken(&error, &session.req_header().headers, truncated);
            ctx.after_failure(step, &mut error);
        } else if exchange.may_reconnect(truncated) {
            // Pingora's own rule: a safe request whose pooled connection
            // turned out to be closed is sent again on a new one.
            error.retry.decide_reuse(client_reused);
        } else {
            error.set_retry(false);
        }
        error
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let problem = match ctx.pending_answer.take() {
            Some(problem) => Some(problem),
            None => match ctx.exchange.as_mut() {
                Some(exchange) => exchange.failure_answer(error),
                None => super::failure::problem_for(error, "the provider", Duration::ZERO),
            },
        };
        let Some(problem) = problem else {
            // The app went away: nobody to answer.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = problem.status();
        // The connection is not reused after a failure (the request's body
        // may be half read): the answer says so, or the app's pool would
        // send its next request into a closing connection.
        session.set_keepalive(None);
        // Once the provider's final answer has started, only closing the
        // connection is left; after `1xx` answers a final one may follow.
        let answer_started = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        if !answer_started {
            if let Err(e) = ctx.answer(session, problem).await {
                tracing::debug!(error = %e, "could not send the error answer");
            }
        } else {
            ctx.sidecar_error = Some(problem.code);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        ctx.backends.end();
        let service = match ctx.exchange.as_mut() {
            Some(exchange) => {
                exchange.finish(status);
                Some(Arc::clone(exchange.service()))
            }
            None => None,
        };
        // A published event is counted by its source's webhook metrics.
        if ctx.published.is_none() {
            let (requests, duration) = match service.as_deref() {
                Some(s) => (&s.requests, &s.duration),
                None => (&self.unrouted_requests, &self.unrouted_duration),
            };
            requests.inc(status);
            duration.observe(elapsed.as_secs_f64());
        }
        let request = session.req_header();
        let source = ctx.published.as_ref().map(|name| name.as_str());
        let trace_id = ctx.trace.map(|t| t.trace_id_text());
        if let Some(trace) = ctx
            .trace
            .filter(|_| trace::export::enabled() && ctx.published.is_none())
        {
            trace::export::record(Span {
                context: trace,
                parent: ctx.trace_parent,
                name: "egress",
                kind: SpanKind::Client,
                start: std::time::SystemTime::now() - elapsed,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    (
                        "egress.service",
                        service
                            .as_deref()
                            .map_or("-", |s| s.name.as_str())
                            .to_string(),
                    ),
                    ("http.request.method", request.method.to_string()),
                    ("http.response.status_code", status.to_string()),
                ],
                error: status == 0 || status >= 500,
            });
        }
        access_log::record(&access_log::Entry {
            request_id: ctx.request_id_str(),
            service: service
                .as_deref()
                .map(|s| s.name.as_str())
                .or(source)
                .unwrap_or("-"),
            backend: ctx.backends.last(),
            trace_id: trace_id.as_ref().map(|t| t.as_str()),
            method: request.method.as_str(),
            path: request.uri.path(),
            status,
            duration: elapsed,
            sidecar_error: ctx.sidecar_error.map(ErrorCode::as_str),
            error: error.map(|e| e.etype().as_str()),
        });
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // The access-log line above already records every failure once.
        true
    }
}
