//! The public webhook listener, connection by connection. Anyone on the
//! internet reaches it and the egress shares its process, so what a client
//! can hold is bounded before any webhook code runs:
//!
//! ```text
//! accept          over ingress.max_connections           -> 503 overloaded, closed
//!                 (idle connections close to make room)
//! header section  read here, at most 16 KiB              -> 431 headers_too_large
//!                 within request_timeout of its first byte -> 408 request_timeout
//! request         Pingora's HTTP/1 session from here on; the webhook answers
//!                 (routes, header checks, body budget, body within the same
//!                 deadline, verify, store) in `IngressApp::serve`
//! keep-alive      idle up to 60 s for the next request, less when the limit
//!                 is reached or the sidecar shuts down
//! ```
//! Each request counts as in flight for the lifecycle from its first byte
//! to its last answer byte, so a shutdown waits for the acks it started.

use crate::net::request_id;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::http::v1::server::HttpSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntCounterVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::IngressApp;
use crate::config::Ingress;
use crate::lifecycle::Lifecycle;
use crate::metrics::{RejectionReason, NO_WEBHOOK};
use crate::problem::{ErrorCode, Problem};

/// The largest header section read; Pingora would take a megabyte.
pub const MAX_HEAD: usize = 16 << 10;
/// How long a kept-alive connection may wait for its next request.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// How long a refusal may take to write before the connection is dropped.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
pub struct IngressListener {
    app: Arc<IngressApp>,
    connections: Arc<Semaphore>,
    request_timeout: Duration,
    /// Told when a connection is refused at the limit: idle connections
    /// close so that the next one finds room.
    make_room: Notify,
    lifecycle: Arc<Lifecycle>,
    rejections: IntCounterVec,
}

/// What reading a header section ended with.
enum Head {
    /// The whole header section (and whatever followed it), and when its
    /// first byte arrived.
    Ready(BytesMut, Instant),
    /// Nothing to answer: the client left, or an idle connection closes.
    Closed,
    Refused(Problem),
}

impl IngressListener {
    pub fn new(app: Arc<IngressApp>, limits: &Ingress, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            rejections: app.metrics.webhook_rejections_total.clone(),
            app,
            connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
            request_timeout: limits.request_timeout,
            make_room: Notify::new(),
            lifecycle,
        }
    }

    fn refused(&self, reason: RejectionReason, code: ErrorCode, detail: String) -> Problem {
        self.rejections
            .with_label_values(&[NO_WEBHOOK, reason.as_str()])
            .inc();
        Problem::new(code, detail)
    }

    /// Serves requests on one connection until it closes.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut first = true;
        loop {
            let (head, started) = match self.read_head(&mut stream, first, shutdown).await {
                Head::Ready(head, started) => (head, started),
                Head::Closed => return,
                Head::Refused(problem) => return refuse(stream, &problem).await,
            };
            first = false;
            let _in_flight = self.lifecycle.enter();
            let deadline = started + self.request_timeout;
            let mut session = HttpSession::new(stream);
            session.set_pipelined_prefix(head);
            session.set_read_timeout(Some(self.request_timeout));
            session.set_write_timeout(Some(self.request_timeout));
            let problem = match tokio::time::timeout_at(deadline, session.read_request()).await {
                Ok(Ok(Some(_))) => None,
                Ok(Ok(None)) => return,
                Ok(Err(error)) if !super::read_timed_out(&error) => Some(self.refused(
                    RejectionReason::BadRequest,
                    ErrorCode::BadRequest,
                    format!("the request could not be read: {}", error.etype().as_str()),
                )),
                // The deadline, or Pingora's own read timeout that beat it.
                _ => Some(self.timed_out()),
            };
            if let Some(problem) = problem {
                return refuse(session.into_inner(), &problem).await;
            }
            if *shutdown.borrow() {
                session.set_server_keepalive(None);
            }
            self.app.serve(&mut session, started, deadline).await;
            match session.reuse().await {
                Ok(Some(reusable)) => stream = reusable.into_parts().0,
                _ => return,
            }
        }
    }

    fn timed_out(&self) -> Problem {
        self.refused(
            RejectionReason::RequestTimeout,
            ErrorCode::RequestTimeout,
            format!(
                "the request's headers and body must arrive within {} of its first byte",
                crate::config::units::format_duration(self.request_timeout)
            ),
        )
    }

    /// Reads one header section, bounded in size and time. Before its first
    /// byte the connection is idle: it closes after `request_timeout` (a new
    /// connection) or [`KEEPALIVE_IDLE`], at shutdown, or to make room.
    async fn read_head(&self, stream: &mut Stream, first: bool, shutdown: &ShutdownWatch) -> Head {
        let mut buffer = BytesMut::new();
        let idle = if first {
            self.request_timeout
        } else {
            KEEPALIVE_IDLE
        };
        let mut shutdown = shutdown.clone();
        let mut first_read = (&mut buffer).limit(MAX_HEAD + 1);
        let read = tokio::select! {
            read = stream.read_buf(&mut first_read) => read,
            _ = tokio::time::sleep(idle) => return Head::Closed,
            _ = self.make_room.notified() => return Head::Closed,
            _ = shutdown.wait_for(|stopping| *stopping) => return Head::Closed,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Head::Closed;
        }
        let started = Instant::now();
        let deadline = started + self.request_timeout;
        loop {
            match head_end(&buffer) {
                Some(end) if end <= MAX_HEAD => return Head::Ready(buffer, started),
                _ if buffer.len() > MAX_HEAD => {
                    return Head::Refused(self.refused(
                        RejectionReason::HeadersTooLarge,
                        ErrorCode::HeadersTooLarge,
                        format!("the request's header section is over {MAX_HEAD} bytes"),
                    ))
                }
                _ => {}
            }
            let room = MAX_HEAD + 1 - buffer.len();
            let mut limited = (&mut buffer).limit(room);
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut limited)).await {
                Err(_) => return Head::Refused(self.timed_out()),
                Ok(Ok(0) | Err(_)) => return Head::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Where the header section in `buffer` ends (just past its empty line),
/// if it has. Empty lines before the request line are skipped, as HTTP/1.1
/// allows; bare LF line ends count, as Pingora's parser takes them.
pub fn head_end(buffer: &[u8]) -> Option<usize> {
    let start = buffer.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let rest = &buffer[start..];
    let lf_lf = rest.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let lf_crlf = rest.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3);
    let end = match (lf_lf, lf_crlf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(start + end)
}

/// Answers a client that gets no session (or no more of it), then closes.
/// Its request was not read (or not whole): its id is a new one.
async fn refuse(mut stream: Stream, problem: &Problem) {
    let id = request_id::shared().for_request(None);
    let answer = problem
        .clone()
        .with_header(request_id::HEADER, id.to_str().unwrap_or_default())
        .to_http1_closing();
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(&answer).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

#[async_trait]
impl ServerApp for IngressListener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The ingress's own runtime thread yields to delivery under
        // contention (`os::yield_to_delivery`); set once per thread.
        thread_local!(static YIELDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        if !YIELDS.get() {
            crate::os::yield_to_delivery();
            YIELDS.set(true);
        }
        let Ok(_connection) = Arc::clone(&self.connections).try_acquire_owned() else {
            self.make_room.notify_waiters();
            let problem = self
                .refused(
                    RejectionReason::Overloaded,
                    ErrorCode::Overloaded,
                    "the webhook listener is at its connection limit; retry".into(),
                )
                .with_header("retry-after", "1");
            refuse(stream, &problem).await;
            return None;
        };
        self.serve(stream, shutdown).await;
        // Every request of the connection was served here; Pingora gets
        // nothing back to reuse.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_section_ends_at_its_first_empty_line() {
        assert_eq!(head_end(b"POST / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(25));
        assert_eq!(
            head_end(b"\r\nPOST / HTTP/1.1\r\n\r\n"),
            Some(21),
            "leading CRLF"
        );
        assert_eq!(
            head_end(b"POST / HTTP/1.1\nA: b\n\nbody"),
            Some(22),
            "bare LF"
        );
        assert_eq!(head_end(b"POST / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"\r\n\r\n"), None, "no request line yet");
        assert_eq!(head_end(b""), None);
    }
}
