//! `events.<name>`: the app publishes its own event on the egress listener
//! (`POST <path>` with a JSON body), which only the pod reaches; on the
//! public ingress the path does not exist. The egress hands such a request
//! here through its `EventSink` (wired in `runtime`). The event goes through the
//! webhook ack path without a signature check: stored durably with a job
//! per matching route, then answered 202 (200 for a duplicate id).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use tokio::sync::Notify;

use super::ack::IngressWebhook;
use crate::metrics::RejectionReason;
use crate::problem::{write_whole, ErrorCode, Problem};
use crate::resilience::memory::MemoryGuard;
use crate::store::Store;
use crate::time::unix_time;

/// The whole body must arrive within this: the app is on the same host.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where published events go: the event store, and the delivery loop's
/// wake-up.
pub struct Publisher {
    pub store: Option<Arc<dyn Store>>,
    pub accepted: Arc<Notify>,
    /// The budget that refuses new events before memory runs out.
    pub memory: Arc<MemoryGuard>,
}

impl Publisher {
    /// Answers one publish request; the status written, for the log.
    pub async fn serve(&self, session: &mut Session, event: &IngressWebhook) -> u16 {
        let started = std::time::Instant::now();
        let response = if self.memory.overloaded() {
            event.rejected(RejectionReason::Overloaded);
            // A small body is read away, so that the app's connection stays
            // in its pool: a refusal that closes it brings the next request
            // on a new connection, and a stream of those (the app retrying
            // at once) cost the sidecar more memory than it kept out.
            if !drain_small_body(session).await {
                session.set_keepalive(None);
            }
            super::memory_overloaded().into_http_response()
        } else {
            match self.answer(session, event).await {
                Ok(response) => response,
                Err(problem) => {
                    // The body may be left unread: the connection cannot be reused.
                    session.set_keepalive(None);
                    problem.into_http_response()
                }
            }
        };
        event.ack_duration.observe(started.elapsed().as_secs_f64());
        let status = response.status().as_u16();
        if write(session, response).await.is_err() {
            tracing::debug!(event = %event.config.name, "the app went away before its answer");
        }
        status
    }

    async fn answer(
        &self,
        session: &mut Session,
        event: &IngressWebhook,
    ) -> Result<http::Response<Vec<u8>>, Problem> {
        let request = session.req_header();
        if request.method != http::Method::POST {
            return Err(Problem::new(
                ErrorCode::MethodNotAllowed,
                "events are published with POST",
            )
            .with_header("allow", "POST"));
        }
        check_head(&request.headers)?;
        let limit = event.config.max_body;
        let body = read_body(session, limit).await?;
        check_body(&body)?;
        let request = session.req_header();
        Ok(event
            .acknowledge(
                self.store.as_deref(),
                &request.headers,
                body,
                request.uri.query(),
                unix_time(),
                &self.accepted,
            )
            .await)
    }
}

/// The longest `Idempotency-Key` taken: it stands for the event's id.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What is refused before the body is read: a content type other than
/// JSON (a page on a developer's machine could post a form or text
/// cross-site without a preflight; JSON needs one), and an
/// `Idempotency-Key` that could not stand as the event's id unchanged (the
/// same event published twice would otherwise be stored twice).
fn check_head(headers: &http::HeaderMap) -> Result<(), Problem> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Problem::new(
            ErrorCode::UnsupportedMediaType,
            "events are published with Content-Type: application/json",
        ));
    }
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.as_bytes();
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(Problem::new(
                ErrorCode::BadRequest,
                format!(
                    "Idempotency-Key is {} bytes long; it must have 1 to {MAX_IDEMPOTENCY_KEY}",
                    key.len()
                ),
            ));
        }
        if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(Problem::new(
                ErrorCode::BadRequest,
                "Idempotency-Key must be visible ASCII characters (no spaces or control characters)",
            ));
        }
    }
    Ok(())
}

/// A published event is a JSON object that reads whole: the app is the
/// sender and can fix what does not (nesting past 128 levels, invalid
/// UTF-8, a number out of range, a lone surrogate), where storing it would
/// lose its type, context and routing without a word.
fn check_body(body: &[u8]) -> Result<(), Problem> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(other) => Err(Problem::new(
            ErrorCode::BadRequest,
            format!(
                "a published event is a JSON object, not {}",
                json_kind(&other)
            ),
        )),
        Err(error) => Err(Problem::new(
            ErrorCode::BadRequest,
            format!("the event is not JSON that can be read: {error}"),
        )),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The largest body read away to keep a refused request's connection.
const DRAINED_AT_MOST: u64 = 64 << 10;

/// Reads and drops the body when it declares at most [`DRAINED_AT_MOST`]
/// bytes and arrives within a second; whether the connection may be kept.
async fn drain_small_body(session: &mut Session) -> bool {
    let declared = super::declared_body_length(&session.req_header().headers);
    if declared.is_none_or(|length| length > DRAINED_AT_MOST) {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(1), session.drain_request_body()).await,
        Ok(Ok(()))
    )
}

/// The body, at most `limit` bytes (a longer declared one is refused
/// unread), within [`READ_TIMEOUT`].
async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            ErrorCode::PayloadTooLarge,
            format!("this event source accepts bodies of at most {limit} bytes"),
        )
    };
    let declared = super::declared_body_length(&session.req_header().headers);
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let read = async {
        while let Some(chunk) = session.read_request_body().await.map_err(|e| {
            Problem::new(
                ErrorCode::BadRequest,
                format!("the body could not be read: {}", e.etype().as_str()),
            )
        })? {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Problem::new(
                ErrorCode::RequestTimeout,
                "the event's body did not arrive in time",
            ))
        }
    }
    Ok(body.freeze())
}

async fn write(session: &mut Session, response: http::Response<Vec<u8>>) -> pingora::Result<()> {
    let (parts, body) = response.into_parts();
    write_whole(session, parts.into(), body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(value).unwrap(),
                )
            })
            .collect()
    }

    fn code(result: Result<(), Problem>) -> Option<ErrorCode> {
        result.err().map(|p| p.code)
    }

    #[test]
    fn only_json_is_published() {
        for accepted in ["application/json", "Application/JSON; charset=utf-8"] {
            let head = headers(&[("content-type", accepted.as_bytes())]);
            assert_eq!(code(check_head(&head)), None, "{accepted}");
        }
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
        ] {
            let head = headers(&[("content-type", refused.as_bytes())]);
            assert_eq!(
                code(check_head(&head)),
                Some(ErrorCode::UnsupportedMediaType),
                "{refused}"
            );
        }
        assert_eq!(
            code(check_head(&http::HeaderMap::new())),
            Some(ErrorCode::UnsupportedMediaType),
            "none at all"
        );
    }

    #[test]
    fn an_idempotency_key_is_1_to_255_visible_ascii_bytes() {
        let with_key = |key: &[u8]| {
            code(check_head(&headers(&[
                ("content-type", b"application/json"),
                ("idempotency-key", key),
            ])))
        };
        assert_eq!(with_key(b"pay-42"), None);
        assert_eq!(with_key("k".repeat(255).as_bytes()), None);
        assert_eq!(
            with_key("k".repeat(256).as_bytes()),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(with_key(b"pay 42"), Some(ErrorCode::BadRequest));
        assert_eq!(with_key(b"caf\xc3\xa9"), Some(ErrorCode::BadRequest));
        assert_eq!(with_key(b""), Some(ErrorCode::BadRequest));
    }

    #[test]
    fn a_body_that_does_not_read_whole_as_an_object_is_refused_with_the_reason() {
        assert_eq!(code(check_body(br#"{"type":"payment.made"}"#)), None);
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        let bad: [(&[u8], &str); 7] = [
            (b"42", "not a number"),
            (b"[]", "not an array"),
            (deep.as_bytes(), "recursion limit"),
            (b"{\"amount\":1e400}", "number out of range"),
            (br#"{"note":"\ud800"}"#, "hex escape"),
            (b"{\"note\":\"\xff\"}", "invalid unicode"),
            (b"{", "EOF"),
        ];
        for (body, reason) in bad {
            let problem = check_body(body).unwrap_err();
            assert_eq!(problem.code, ErrorCode::BadRequest);
            let expected = reason.strip_prefix("not ").unwrap_or(reason);
            assert!(
                problem.detail.contains(expected),
                "{reason}: {}",
                problem.detail
            );
        }
    }
}
