//! The webhook ingress: POST to a configured path; everything that needs no
//! body is checked as soon as the headers are in (path, method, declared
//! size, signature header, timestamp), the body is read within the
//! request's deadline and the body budget, the signature verified, the
//! event stored durably, and only then answered 202 (200 for a duplicate).
//! Nothing here calls an internal service: delivery works from the store.
//! `listener` bounds each connection before a request reaches this.

pub mod ack;
pub mod budget;
pub mod extract;
pub mod json_pointer;
pub mod kept_headers;
pub mod listener;
pub mod publish;
pub mod recover;
pub mod verify;

use crate::net::request_id;
use std::sync::Arc;

use arc_swap::access::DynAccess;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::v1::server::HttpSession;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::webhooks::Webhook;
use crate::metrics::{Metrics, RejectionReason, NO_WEBHOOK};
use crate::problem::{ErrorCode, Problem};
use crate::resilience::memory::MemoryGuard;
use crate::store::Store;
use crate::time::unix_time;
use ack::IngressWebhook;
pub use ack::WebhookError;
use budget::{BodyBudget, Reservation};

pub struct IngressApp {
    /// The running config's webhooks (the runtime snapshot's); a request
    /// keeps the one it matched.
    webhooks: Box<dyn DynAccess<Webhooks> + Send + Sync>,
    metrics: Arc<Metrics>,
    store: Option<Arc<dyn Store>>,
    /// Told of every accepted event, so that delivery starts at once.
    accepted: Arc<Notify>,
    budget: Arc<BodyBudget>,
    memory: Arc<MemoryGuard>,
}

/// A refusal, and the rejection reason it counts under (when it is one).
struct Refusal {
    problem: Problem,
    reason: Option<RejectionReason>,
}

impl From<Problem> for Refusal {
    fn from(problem: Problem) -> Self {
        Self {
            problem,
            reason: None,
        }
    }
}

impl Refusal {
    fn counted(problem: Problem, reason: RejectionReason) -> Self {
        Self {
            problem,
            reason: Some(reason),
        }
    }
}

impl IngressApp {
    pub fn new(
        webhooks: Box<dyn DynAccess<Webhooks> + Send + Sync>,
        store: Option<Arc<dyn Store>>,
        metrics: &Arc<Metrics>,
        accepted: Arc<Notify>,
        max_buffered: u64,
        memory: Arc<MemoryGuard>,
    ) -> Self {
        Self {
            webhooks,
            metrics: Arc::clone(metrics),
            store,
            accepted,
            budget: BodyBudget::new(max_buffered),
            memory,
        }
    }

    /// Answers the request `session` has read; the session stays open for
    /// the next one only when its body was read whole.
    pub async fn serve(&self, session: &mut HttpSession, started: Instant, deadline: Instant) {
        // The provider's id when it sent a usable one, as the egress does.
        let request_id =
            request_id::shared().for_request(session.req_header().headers.get(request_id::HEADER));
        let (mut response, webhook) = match self.answer(session, deadline).await {
            Ok((response, webhook)) => (response, Some(webhook)),
            Err((refusal, webhook)) => {
                if let Some(reason) = refusal.reason {
                    match &webhook {
                        Some(webhook) => webhook.rejected(reason),
                        None => self
                            .metrics
                            .webhook_rejections_total
                            .with_label_values(&[NO_WEBHOOK, reason.as_str()])
                            .inc(),
                    }
                }
                // A refused body is never read (nor its read buffer
                // allocated): the connection closes after the answer.
                if !has_no_body(session) {
                    session.set_server_keepalive(None);
                }
                (refusal.problem.into_http_response(), webhook)
            }
        };
        if let Some(webhook) = webhook {
            webhook
                .ack_duration
                .observe(started.elapsed().as_secs_f64());
        }
        response
            .headers_mut()
            .insert(request_id::HEADER, request_id);
        write_response(session, response).await;
    }

    /// The webhook's answer, or why the request is refused (and by which
    /// webhook, once one is known).
    async fn answer(
        &self,
        session: &mut HttpSession,
        deadline: Instant,
    ) -> Result<
        (http::Response<Vec<u8>>, Arc<IngressWebhook>),
        (Refusal, Option<Arc<IngressWebhook>>),
    > {
        let request = session.req_header();
        if request.method != http::Method::POST {
            let problem = Problem::new(
                ErrorCode::MethodNotAllowed,
                "webhooks are delivered with POST",
            )
            .with_header("allow", "POST");
            return Err((problem.into(), None));
        }
        let path = request.uri.path();
        let webhook = self.webhooks.load().at(path).cloned();
        let Some(webhook) = webhook else {
            let problem = Problem::new(
                ErrorCode::NotFound,
                format!("no webhook is configured at {path}"),
            );
            return Err((problem.into(), None));
        };
        let refuse = |refusal: Refusal| Err((refusal, Some(Arc::clone(&webhook))));
        if self.memory.overloaded() {
            return refuse(Refusal::counted(
                memory_overloaded(),
                RejectionReason::Overloaded,
            ));
        }
        let now = unix_time();
        if let Err(refusal) = self.check_head(&webhook, session, now.as_secs()) {
            return refuse(refusal);
        }
        let body = match self.read_body(&webhook, session, deadline).await {
            Ok(body) => body,
            Err(refusal) => return refuse(refusal),
        };
        let (body, _reservation) = body;
        let request = session.req_header();
        let response = webhook
            .acknowledge(
                self.store.as_deref(),
                &request.headers,
                body,
                request.uri.query(),
                now,
                &self.accepted,
            )
            .await;
        Ok((response, webhook))
    }

    /// Everything that needs no body: the declared size, the signature
    /// header and its timestamp. Answered before a byte of the body is read.
    fn check_head(
        &self,
        webhook: &IngressWebhook,
        session: &HttpSession,
        now_secs: u64,
    ) -> Result<(), Refusal> {
        let request = session.req_header();
        let limit = webhook.config.max_body;
        if declared_length(session).is_some_and(|length| length > limit) {
            return Err(Refusal::counted(
                too_large(limit),
                RejectionReason::PayloadTooLarge,
            ));
        }
        let head = verify::Head {
            headers: &request.headers,
            query: request.uri.query(),
            now: now_secs,
        };
        webhook.scheme.check_headers(&head).map_err(|rejection| {
            Refusal::counted(
                Problem::new(ErrorCode::SignatureInvalid, rejection.as_str()),
                rejection.reason(),
            )
        })
    }

    /// Reads the body within `deadline`, holding its bytes against the
    /// budget; more than `max_body` is refused without being buffered.
    async fn read_body(
        &self,
        webhook: &IngressWebhook,
        session: &mut HttpSession,
        deadline: Instant,
    ) -> Result<(Bytes, Reservation), Refusal> {
        let limit = webhook.config.max_body;
        let declared = declared_length(session);
        let overloaded = || {
            Refusal::counted(
                Problem::new(
                    ErrorCode::Overloaded,
                    "the webhook listener is reading as many bodies as it may hold; retry",
                )
                .with_header("retry-after", "1"),
                RejectionReason::Overloaded,
            )
        };
        let mut reservation = self
            .budget
            .reserve(declared.unwrap_or(0))
            .ok_or_else(overloaded)?;
        if expects_continue(session) {
            let _ = session.write_continue_response().await;
        }
        // A declared length is allocated once; a chunked body grows.
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        loop {
            let chunk = match tokio::time::timeout_at(deadline, session.read_body_bytes()).await {
                Err(_) => return Err(body_too_late()),
                Ok(Err(error)) => return Err(body_read_failed(&error)),
                Ok(Ok(None)) => return Ok((body.freeze(), reservation)),
                Ok(Ok(Some(chunk))) => chunk,
            };
            let size = body.len() as u64 + chunk.len() as u64;
            if size > limit {
                return Err(Refusal::counted(
                    too_large(limit),
                    RejectionReason::PayloadTooLarge,
                ));
            }
            if size > reservation.bytes() && !reservation.grow(size - reservation.bytes()) {
                return Err(overloaded());
            }
            body.extend_from_slice(&chunk);
        }
    }
}

/// The answer while resident memory is near `limits.memory`: nothing new
/// comes in until it falls (the store's writes, the deliveries and the
/// allocator's returns bring it down within seconds).
fn memory_overloaded() -> Problem {
    Problem::new(
        ErrorCode::Overloaded,
        "the sidecar is near its memory limit (limits.memory); retry",
    )
    .with_header("retry-after", "5")
}

fn too_large(limit: u64) -> Problem {
    Problem::new(
        ErrorCode::PayloadTooLarge,
        format!("this webhook accepts bodies of at most {limit} bytes"),
    )
}

/// The body's declared length; none for a chunked body (Pingora has
/// already refused a request whose lengths disagree or do not parse).
fn declared_length(session: &HttpSession) -> Option<u64> {
    declared_body_length(&session.req_header().headers)
}

/// The same for a request's headers, whichever listener read them.
fn declared_body_length(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn has_no_body(session: &HttpSession) -> bool {
    let headers = &session.req_header().headers;
    !headers.contains_key(http::header::TRANSFER_ENCODING)
        && declared_length(session).unwrap_or(0) == 0
}

/// Why reading the body failed, as the client hears it: a read timeout is
/// the same late body as the deadline (see [`read_timed_out`]).
fn body_read_failed(error: &pingora::Error) -> Refusal {
    if read_timed_out(error) {
        return body_too_late();
    }
    Problem::new(
        ErrorCode::BadRequest,
        format!("the body could not be read: {}", error.etype().as_str()),
    )
    .into()
}

/// Whether a read failed on Pingora's own per-read timeout. The listener
/// sets it to the same `request_timeout` as the request's deadline, started
/// a moment later; when both have expired by the time the task runs (under
/// load), the read inside the deadline is polled first and its timeout
/// wins. The client was as late either way: the answer is the same 408.
fn read_timed_out(error: &pingora::Error) -> bool {
    matches!(error.etype(), pingora::ErrorType::ReadTimedout)
}

/// The body did not arrive within `request_timeout` of the request's first byte.
fn body_too_late() -> Refusal {
    let problem = Problem::new(
        ErrorCode::RequestTimeout,
        "the request's body did not arrive in time",
    );
    Refusal::counted(problem, RejectionReason::RequestTimeout)
}

fn expects_continue(session: &HttpSession) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Writes a whole answer; a client that went away is no error of ours.
async fn write_response(session: &mut HttpSession, response: http::Response<Vec<u8>>) {
    let (parts, body) = response.into_parts();
    let header: ResponseHeader = parts.into();
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        session.set_server_keepalive(None);
        return;
    }
    if !body.is_empty() && session.write_body(&body).await.is_err() {
        session.set_server_keepalive(None);
        return;
    }
    if session.finish_body().await.is_err() {
        session.set_server_keepalive(None);
    }
}

/// The webhooks of one config, built (secrets, routes, priorities, ack
/// answers); part of the runtime snapshot.
#[derive(Default)]
pub struct Webhooks(Vec<Arc<IngressWebhook>>);

impl Webhooks {
    /// `propagate` is `tracing.propagate`: whether accepted events keep a
    /// trace context for their deliveries.
    pub fn build(
        webhooks: &[Webhook],
        propagate: bool,
        metrics: &Metrics,
    ) -> Result<Self, WebhookError> {
        webhooks
            .iter()
            .map(|w| IngressWebhook::new(w, metrics).map(|w| Arc::new(w.propagating(propagate))))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<IngressWebhook>> {
        self.0.iter()
    }

    /// The source named `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<IngressWebhook>> {
        self.0.iter().find(|w| w.config.name == name)
    }

    /// The webhook configured at `path`.
    pub fn at(&self, path: &str) -> Option<&Arc<IngressWebhook>> {
        self.0.iter().find(|w| w.config.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_pingoras_read_timeout_cut_off_is_a_request_timeout_and_others_are_bad_requests()
    {
        let late = body_read_failed(&pingora::Error::new(pingora::ErrorType::ReadTimedout));
        assert_eq!(late.problem.code, ErrorCode::RequestTimeout);
        assert_eq!(late.reason, Some(RejectionReason::RequestTimeout));

        let cut = body_read_failed(&pingora::Error::new(pingora::ErrorType::ConnectionClosed));
        assert_eq!(cut.problem.code, ErrorCode::BadRequest);
        assert!(
            cut.problem.detail.contains("ConnectionClosed"),
            "{}",
            cut.problem.detail
        );
    }
}
