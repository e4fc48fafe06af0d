//! The answers the sidecar makes itself: RFC 9457 problem+json bodies with an
//! `x-sidecar-error` header, so an app can tell a sidecar decision from a
//! provider's answer. A detail never contains a secret or a token.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

pub const ERROR_HEADER: &str = "x-sidecar-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoRoute,
    UpstreamUnreachable,
    UpstreamTimeout,
    /// The connection to the provider broke after it was established.
    UpstreamFailed,
    CredentialsUnavailable,
    /// The service's own rate limit.
    RateLimited,
    /// The provider asked for a pause (429/503 with Retry-After).
    ProviderThrottled,
    CircuitOpen,
    /// Every backend of the service's upstream group is unhealthy or has
    /// its breaker open.
    NoHealthyBackend,
    /// The Redis store could not be reached and the config says to refuse.
    StoreUnavailable,
    /// The store keeps its remaining room for draining the queue: new
    /// events are refused until deliveries free some.
    StoreFull,
    /// A webhook whose signature did not verify; `detail` names the check.
    SignatureInvalid,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    BadRequest,
    /// The request is valid but the resource's state forbids it.
    Conflict,
    /// Headers and body did not arrive within `ingress.request_timeout`.
    RequestTimeout,
    /// The request's header section is over 16 KiB.
    HeadersTooLarge,
    /// The ingress is at its connection or body-memory bound; retry.
    Overloaded,
    /// An admin POST without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// A POST or DELETE to an admin listener set `read_only`.
    Forbidden,
    /// An admin request whose `Host` is not one the listener serves.
    MisdirectedRequest,
    Internal,
}

impl ErrorCode {
    /// Every code, for the README's table to be held to.
    pub const ALL: &'static [ErrorCode] = &[
        Self::NoRoute,
        Self::UpstreamUnreachable,
        Self::UpstreamTimeout,
        Self::UpstreamFailed,
        Self::CredentialsUnavailable,
        Self::RateLimited,
        Self::ProviderThrottled,
        Self::CircuitOpen,
        Self::NoHealthyBackend,
        Self::StoreUnavailable,
        Self::StoreFull,
        Self::SignatureInvalid,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Unauthorized,
        Self::BadRequest,
        Self::Conflict,
        Self::RequestTimeout,
        Self::HeadersTooLarge,
        Self::Overloaded,
        Self::UnsupportedMediaType,
        Self::Forbidden,
        Self::MisdirectedRequest,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::NoHealthyBackend => "no_healthy_backend",
            Self::UpstreamFailed => "upstream_failed",
            Self::CredentialsUnavailable => "credentials_unavailable",
            Self::RateLimited => "rate_limited",
            Self::ProviderThrottled => "provider_throttled",
            Self::CircuitOpen => "circuit_open",
            Self::StoreUnavailable => "store_unavailable",
            Self::StoreFull => "store_full",
            Self::SignatureInvalid => "signature_invalid",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::BadRequest => "bad_request",
            Self::Conflict => "conflict",
            Self::RequestTimeout => "request_timeout",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Overloaded => "overloaded",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Forbidden => "forbidden",
            Self::MisdirectedRequest => "misdirected_request",
            Self::Internal => "internal_error",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::NoRoute | Self::NotFound => 404,
            Self::UpstreamUnreachable | Self::UpstreamFailed | Self::CredentialsUnavailable => 502,
            Self::UpstreamTimeout => 504,
            Self::RateLimited | Self::ProviderThrottled => 429,
            Self::CircuitOpen
            | Self::StoreUnavailable
            | Self::StoreFull
            | Self::NoHealthyBackend => 503,
            Self::SignatureInvalid => 401,
            Self::PayloadTooLarge => 413,
            Self::MethodNotAllowed => 405,
            Self::Unauthorized => 401,
            Self::BadRequest => 400,
            Self::Conflict => 409,
            Self::RequestTimeout => 408,
            Self::HeadersTooLarge => 431,
            Self::Overloaded => 503,
            Self::UnsupportedMediaType => 415,
            Self::Forbidden => 403,
            Self::MisdirectedRequest => 421,
            Self::Internal => 500,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::NoRoute => "No route matches this path",
            Self::UpstreamUnreachable => "The provider could not be reached",
            Self::UpstreamTimeout => "The provider did not answer in time",
            Self::UpstreamFailed => "The connection to the provider failed",
            Self::CredentialsUnavailable => "Credentials for the provider are unavailable",
            Self::RateLimited => "Rate limit reached for this provider",
            Self::ProviderThrottled => "The provider asked for a pause",
            Self::CircuitOpen => "The provider is failing; requests are paused",
            Self::NoHealthyBackend => "No backend of the upstream group can take the request",
            Self::StoreUnavailable => "The store is unavailable",
            Self::StoreFull => "The store is full; its room is kept for deliveries",
            Self::SignatureInvalid => "The webhook signature is invalid",
            Self::PayloadTooLarge => "The body is larger than this webhook accepts",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unauthorized => "Unauthorized",
            Self::BadRequest => "Bad request",
            Self::Conflict => "Conflict",
            Self::RequestTimeout => "The request did not arrive in time",
            Self::HeadersTooLarge => "The request headers are too large",
            Self::Overloaded => "The sidecar is busy; retry",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Forbidden => "Forbidden",
            Self::MisdirectedRequest => "Misdirected request",
            Self::Internal => "Internal error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub code: ErrorCode,
    pub detail: String,
    /// Extra response headers such as `Retry-After` or `Allow`.
    pub headers: Vec<(&'static str, String)>,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": format!("urn:wedsync-sidecar:error:{}", self.code.as_str()),
            "title": self.code.title(),
            "status": self.status(),
            "detail": self.detail,
        }))
        .unwrap_or_default()
    }

    pub fn response_header(&self, body_len: usize) -> pingora::Result<ResponseHeader> {
        let mut header = ResponseHeader::build(self.status(), Some(4 + self.headers.len()))?;
        header.insert_header("content-type", "application/problem+json")?;
        header.insert_header(ERROR_HEADER, self.code.as_str())?;
        header.insert_header("cache-control", "no-store")?;
        header.set_content_length(body_len)?;
        for (name, value) in &self.headers {
            header.insert_header(*name, value.as_str())?;
        }
        Ok(header)
    }

    /// Writes the whole answer on a proxy session.
    pub async fn write_to(&self, session: &mut Session) -> pingora::Result<()> {
        let body = self.body();
        let header = self.response_header(body.len())?;
        write_whole(session, header, body).await
    }

    /// The whole answer as HTTP/1.1 bytes that close the connection, for a
    /// client refused before a request could be read (no session exists).
    pub fn to_http1_closing(&self) -> Vec<u8> {
        let body = self.body();
        let reason = http::StatusCode::from_u16(self.status())
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/problem+json\r\n{ERROR_HEADER}: {}\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.status(),
            self.code.as_str(),
            body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// The same answer for `ServeHttp` services (admin, ingress).
    pub fn into_http_response(self) -> http::Response<Vec<u8>> {
        let body = self.body();
        let mut builder = http::Response::builder()
            .status(self.status())
            .header("content-type", "application/problem+json")
            .header(ERROR_HEADER, self.code.as_str())
            .header("cache-control", "no-store")
            .header("content-length", body.len());
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.as_str());
        }
        builder
            .body(body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}

/// Writes a whole answer the sidecar made itself (header, then body) on a
/// proxy session.
pub async fn write_whole(
    session: &mut Session,
    header: ResponseHeader,
    body: Vec<u8>,
) -> pingora::Result<()> {
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9457_fields_and_the_error_header() {
        let problem = Problem::new(
            ErrorCode::UpstreamTimeout,
            "stripe did not answer within 30s",
        );
        let body: serde_json::Value = serde_json::from_slice(&problem.body()).unwrap();
        assert_eq!(body["status"], 504);
        assert_eq!(body["type"], "urn:wedsync-sidecar:error:upstream_timeout");
        assert_eq!(body["detail"], "stripe did not answer within 30s");
        let response = problem.into_http_response();
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[ERROR_HEADER], "upstream_timeout");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }

    #[test]
    fn a_closing_answer_is_a_whole_http1_message() {
        let problem = Problem::new(ErrorCode::Overloaded, "busy").with_header("retry-after", "1");
        let text = String::from_utf8(problem.to_http1_closing()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nx-sidecar-error: overloaded\r\n"));
        assert!(head.contains("\r\nretry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["status"],
            503
        );
    }
}
