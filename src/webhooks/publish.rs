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
use crate::problem::{write_whole, ErrorCode, Problem};
use crate::store::Store;
use crate::time::unix_time;

/// The whole body must arrive within this: the app is on the same host.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where published events go: the event store, and the delivery loop's
/// wake-up.
pub struct Publisher {
    pub store: Option<Arc<dyn Store>>,
    pub accepted: Arc<Notify>,
}

impl Publisher {
    /// Answers one publish request; the status written, for the log.
    pub async fn serve(&self, session: &mut Session, event: &IngressWebhook) -> u16 {
        let started = std::time::Instant::now();
        let response = match self.answer(session, event).await {
            Ok(response) => response,
            Err(problem) => {
                // The body may be left unread: the connection cannot be reused.
                session.set_keepalive(None);
                problem.into_http_response()
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
        let limit = event.config.max_body;
        let body = read_body(session, limit).await?;
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(Problem::new(
                ErrorCode::BadRequest,
                "a published event is a JSON document",
            ));
        }
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
