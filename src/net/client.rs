//! A small HTTP/1.1 client over Pingora's own connector (pooled, same TLS stack
//! and CA handling as the proxy), for the sidecar's own calls such as OAuth2
//! token requests and event deliveries. Answers are read whole (at most
//! 1 MiB), so that the connection can be pooled.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::config::units::format_duration;
use crate::net::target::{ResolveError, UpstreamTarget};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Pingora's name for what went wrong on the connection.
    #[error("{0}")]
    Connection(&'static str),
    #[error("the request cannot be sent: {0}")]
    Request(String),
    #[error("response body larger than 1 MiB")]
    TooLarge,
    #[error("no complete answer within {}", format_duration(*.0))]
    Timeout(Duration),
}

pub struct ClientResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Caps what the sidecar reads from an endpoint it calls itself.
const MAX_RESPONSE_BODY: usize = 1 << 20;

pub struct SmallClient {
    connector: Connector,
}

impl Default for SmallClient {
    fn default() -> Self {
        Self {
            connector: Connector::new(None),
        }
    }
}

impl SmallClient {
    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(
        &self,
        target: &UpstreamTarget,
        mut request: RequestHeader,
        body: Bytes,
        timeout: Duration,
    ) -> Result<ClientResponse, ClientError> {
        let addr = target.resolve().await?;
        let peer = target.peer(addr, timeout, timeout);
        request
            .insert_header("host", target.url.authority())
            .map_err(|e| ClientError::Request(e.to_string()))?;
        self.exchange(&peer, request, body, timeout).await
    }

    /// Sends `request` (its Host set by the caller) with `body` to `peer`
    /// and reads the whole answer, all within `timeout`. The connection
    /// goes back to the pool once the answer is read.
    pub async fn exchange(
        &self,
        peer: &HttpPeer,
        mut request: RequestHeader,
        body: Bytes,
        timeout: Duration,
    ) -> Result<ClientResponse, ClientError> {
        request
            .insert_header("content-length", body.len())
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let exchange = async {
            let (mut session, _reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(describe)?;
            session.set_read_timeout(Some(timeout));
            session.set_write_timeout(Some(timeout));
            session
                .write_request_header(Box::new(request))
                .await
                .map_err(describe)?;
            if !body.is_empty() {
                session
                    .write_request_body(body, true)
                    .await
                    .map_err(describe)?;
            }
            session.finish_request_body().await.map_err(describe)?;
            // `1xx` answers come before the final one, as many as the
            // server likes: the deadline above bounds them.
            let (status, headers) = loop {
                session.read_response_header().await.map_err(describe)?;
                match session.response_header() {
                    Some(h) if h.status.is_informational() && h.status.as_u16() != 101 => {}
                    Some(h) => break (h.status.as_u16(), h.headers.clone()),
                    None => break Default::default(),
                }
            };
            let mut collected = Vec::new();
            while let Some(chunk) = session.read_response_body().await.map_err(describe)? {
                if collected.len() + chunk.len() > MAX_RESPONSE_BODY {
                    return Err(ClientError::TooLarge);
                }
                collected.extend_from_slice(&chunk);
            }
            self.connector
                .release_http_session(session, peer, Some(Duration::from_secs(60)))
                .await;
            Ok(ClientResponse {
                status,
                headers,
                body: Bytes::from(collected),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }
}

#[allow(clippy::boxed_local)] // Pingora hands errors over boxed
fn describe(err: pingora::BError) -> ClientError {
    ClientError::Connection(err.etype().as_str())
}
