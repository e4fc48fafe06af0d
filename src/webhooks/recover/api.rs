//! A call to a provider's API through the egress listener: the service's
//! route in front of the provider's path, so that its credentials are
//! injected and its rate limit, breaker and pauses apply. Answers are read
//! whole, at most 1 MiB, within [`CALL_TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::net::client::{ClientError, ClientResponse, SmallClient};

/// A page's call, the egress's own timeouts inside it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Api<'a> {
    pub client: &'a SmallClient,
    pub egress: SocketAddr,
    /// The egress service's route (`/stripe`).
    pub route: &'a str,
}

impl Api<'_> {
    /// `path` under the service's route.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.route.trim_end_matches('/'))
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&'static str, &'static str)],
    ) -> Result<ClientResponse, ClientError> {
        let mut request = RequestHeader::build(method, path.as_bytes(), None)
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let host = self.egress.to_string();
        request
            .insert_header("host", host.as_str())
            .and_then(|_| request.insert_header("user-agent", "wedsync-sidecar"))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        for (name, value) in headers {
            request
                .insert_header(*name, *value)
                .map_err(|e| ClientError::Request(e.to_string()))?;
        }
        let peer = HttpPeer::new(self.egress, false, String::new());
        self.client
            .exchange(&peer, request, Bytes::new(), CALL_TIMEOUT)
            .await
    }
}

/// What a refusal says: the provider's message (Stripe's `error.message`,
/// GitHub's `message`), or the sidecar's own problem (`detail`) when the
/// egress answered itself (a breaker, a pause).
pub fn refusal(status: u16, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .or_else(|| v["detail"].as_str())
            .map(|m| m.chars().take(300).collect::<String>())
    });
    match message {
        Some(message) => format!("answered {status}: {message}"),
        None => format!("answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_what_the_provider_or_the_sidecar_said() {
        assert_eq!(
            refusal(
                429,
                br#"{"error":{"type":"rate_limit_error","message":"Too many requests"}}"#
            ),
            "answered 429: Too many requests"
        );
        assert_eq!(
            refusal(
                403,
                br#"{"message":"API rate limit exceeded for installation.","documentation_url":"https://docs.github.com/rest"}"#
            ),
            "answered 403: API rate limit exceeded for installation."
        );
        assert_eq!(
            refusal(
                503,
                br#"{"code":"circuit_open","detail":"the breaker is open"}"#
            ),
            "answered 503: the breaker is open"
        );
        assert_eq!(refusal(500, b"<html>"), "answered 500");
    }
}
