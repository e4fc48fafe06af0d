//! What the egress keeps for one request between Pingora's callbacks:
//! its id, its [`Exchange`] once a route matched, and the answer the
//! sidecar decided on, written by `fail_to_proxy`.

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use tokio::time::Instant;

use super::backend::GroupAttempts;
use super::exchange::{Exchange, Step};
use super::REQUEST_ID_HEADER;
use crate::lifecycle::InFlightGuard;
use crate::net::cutoff::Cutoff;
use crate::problem::{ErrorCode, Problem};
use crate::trace::TraceContext;

pub struct EgressCtx {
    pub(super) started: Instant,
    pub(super) request_id: http::HeaderValue,
    /// None until a route matched (and for requests that matched none).
    pub(super) exchange: Option<Exchange>,
    pub(super) upstream_path: Bytes,
    /// A problem decided in a sync callback, written by `fail_to_proxy`.
    pub(super) pending_answer: Option<Problem>,
    /// Set when the sidecar answered for itself, for the access log.
    pub(super) sidecar_error: Option<ErrorCode>,
    /// A provider status turned into an error only to be retried.
    pub(super) retrying_status: bool,
    /// This exchange's span: a child of the app's `traceparent`, or the
    /// root of a new trace; and the app's span id, when it sent one.
    /// None with `tracing.propagate: false`.
    pub(super) trace: Option<TraceContext>,
    pub(super) trace_parent: Option<[u8; 8]>,
    /// The `events.<name>` this request published to.
    pub(super) published: Option<crate::names::WebhookName>,
    /// The backends of a service on an upstream group.
    pub(super) backends: GroupAttempts,
    /// Holds the attempt under way to what is left of the service's
    /// timeout, while its headers arrive too.
    pub(super) cutoff: Option<Cutoff>,
    _in_flight: InFlightGuard,
}

impl EgressCtx {
    pub fn new(in_flight: InFlightGuard) -> Self {
        Self {
            started: Instant::now(),
            request_id: http::HeaderValue::from_static(""),
            exchange: None,
            upstream_path: Bytes::new(),
            pending_answer: None,
            sidecar_error: None,
            retrying_status: false,
            trace: None,
            trace_parent: None,
            published: None,
            backends: GroupAttempts::default(),
            cutoff: None,
            _in_flight: in_flight,
        }
    }

    /// Request ids are checked to be printable when taken, so this is exact.
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// Writes the sidecar's own answer, with the request id.
    pub async fn answer(
        &mut self,
        session: &mut Session,
        problem: Problem,
    ) -> pingora::Result<bool> {
        self.sidecar_error = Some(problem.code);
        problem
            .with_header(REQUEST_ID_HEADER, self.request_id_str())
            .write_to(session)
            .await?;
        Ok(true)
    }

    /// An error that ends the exchange with `problem` as its answer.
    pub fn refuse(&mut self, problem: Problem) -> Box<Error> {
        let mut error = Error::explain(
            ErrorType::HTTPStatus(problem.status()),
            "answered by the sidecar",
        );
        error.set_retry(false);
        self.pending_answer = Some(problem);
        error
    }

    /// The attempt's answer was read whole in time: its connection may go
    /// back to the pool, untouched by the cutoff.
    pub fn answer_read(&mut self) {
        // Dropping a cutoff disarms it.
        self.cutoff = None;
    }

    /// Whether the attempt that failed was cut off at the deadline (the
    /// cutoff is done with either way).
    pub fn cut_off(&mut self) -> bool {
        self.cutoff.take().is_some_and(|c| c.fired())
    }

    /// Applies what the exchange decided about a failed attempt to the
    /// error Pingora goes on with: retried, or ended with an answer.
    pub fn after_failure(&mut self, step: Step, error: &mut Error) {
        match step {
            Step::Wait(_) => error.set_retry(true),
            Step::Answer(problem) => {
                self.pending_answer = Some(problem);
                error.set_retry(false);
            }
            Step::Go => error.set_retry(false),
        }
    }
}

/// The exchange of a request whose route matched.
pub fn exchange_of(ctx: &mut EgressCtx) -> pingora::Result<&mut Exchange> {
    ctx.exchange
        .as_mut()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no service chosen"))
}
