//! OAuth2 client-credentials tokens: cached until `expires_in - refresh_before`,
//! refreshed in the background while the old token is still valid, and fetched
//! by exactly one request at a time however many wait (single flight): waiters
//! share the outcome of the attempt they waited for. Tokens never reach a log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use pingora::http::RequestHeader;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::config::services::{ClientAuth, OAuth2};
use crate::net::client::SmallClient;
use crate::net::target::{CaError, UpstreamTarget};

/// Used when the token endpoint does not say how long a token lives.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest a token is trusted, whatever `expires_in` says: a huge
/// value would overflow the clock (and a day is plenty for a refresh).
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no token could be had; shared by every request that waited for
/// the attempt, so it is cloned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("token endpoint {endpoint}: {answer}")]
    Answer {
        endpoint: String,
        answer: AnswerError,
    },
}

/// What is wrong with a token endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Only a plain RFC 6749 error code is kept, never whatever else the
    /// endpoint sent: it reaches logs and problem details.
    #[error("answered {status} ({})", code.as_deref().unwrap_or("no recognised error code"))]
    Refused { status: u16, code: Option<String> },
    #[error("answer has no access_token")]
    NoAccessToken,
}

pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: Option<Duration>,
}

/// Where tokens come from; the HTTP implementation below, a fake in tests.
#[async_trait]
pub trait TokenEndpoint: Send + Sync {
    async fn fetch(&self) -> Result<IssuedToken, TokenError>;
}

#[derive(Clone)]
struct CachedToken {
    token: Arc<str>,
    refresh_at: Instant,
    expires_at: Instant,
}

pub struct RefreshCounters {
    pub success: IntCounter,
    pub failure: IntCounter,
}

pub struct TokenSource {
    endpoint: Box<dyn TokenEndpoint>,
    refresh_before: Duration,
    cached: RwLock<Option<CachedToken>>,
    /// Held for the whole of one token request.
    in_flight: Arc<tokio::sync::Mutex<()>>,
    /// Counts finished attempts, so a waiter can tell that one ran while it waited.
    attempts: AtomicU64,
    last_error: Mutex<Option<TokenError>>,
    counters: RefreshCounters,
}

impl TokenSource {
    pub fn new(
        endpoint: Box<dyn TokenEndpoint>,
        refresh_before: Duration,
        counters: RefreshCounters,
    ) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            refresh_before,
            cached: RwLock::new(None),
            in_flight: Arc::new(tokio::sync::Mutex::new(())),
            attempts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            counters,
        })
    }

    /// A valid access token, or why none can be had.
    pub async fn token(self: &Arc<Self>) -> Result<Arc<str>, TokenError> {
        let now = Instant::now();
        if let Some(cached) = self.cached() {
            if now < cached.refresh_at {
                return Ok(cached.token);
            }
            if now < cached.expires_at {
                self.refresh_in_background();
                return Ok(cached.token);
            }
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let _turn = self.in_flight.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            // An attempt finished while we waited: share its outcome.
            return match self.cached() {
                Some(cached) if Instant::now() < cached.expires_at => Ok(cached.token),
                _ => Err(self.last_error()),
            };
        }
        self.attempt().await
    }

    /// Forgets `token` after the provider refused it (401), unless a newer one replaced it.
    pub fn invalidate(&self, token: &str) {
        let mut cached = self.cached.write().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().is_some_and(|c| &*c.token == token) {
            *cached = None;
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(turn) = Arc::clone(&self.in_flight).try_lock_owned() else {
            return;
        };
        let source = Arc::clone(self);
        tokio::spawn(async move {
            let _turn = turn;
            // Failure keeps the still-valid token; the next request past expiry retries.
            let _ = source.attempt().await;
        });
    }

    /// One token request; the caller holds `in_flight`.
    async fn attempt(&self) -> Result<Arc<str>, TokenError> {
        let started = Instant::now();
        let outcome = self.endpoint.fetch().await;
        let result = match outcome {
            Ok(issued) => {
                let lifetime = issued
                    .expires_in
                    .unwrap_or(DEFAULT_LIFETIME)
                    .min(MAX_LIFETIME);
                let token: Arc<str> = Arc::from(issued.access_token);
                let expires_at = started + lifetime;
                // A lifetime shorter than refresh_before refreshes at half-life instead of at once.
                let refresh_at = expires_at
                    .checked_sub(self.refresh_before)
                    .filter(|at| *at > started)
                    .unwrap_or(started + lifetime / 2);
                *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(CachedToken {
                    token: Arc::clone(&token),
                    refresh_at,
                    expires_at,
                });
                self.counters.success.inc();
                Ok(token)
            }
            Err(error) => {
                self.counters.failure.inc();
                tracing::warn!(error = %error, "OAuth2 token request failed");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
                Err(error)
            }
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        result
    }

    fn cached(&self) -> Option<CachedToken> {
        self.cached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the attempt just waited for failed with (an attempt that
    /// finished without a token always left its error here).
    fn last_error(&self) -> TokenError {
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        last.clone().unwrap_or_else(|| TokenError::Unreachable {
            endpoint: "-".into(),
            reason: "the token request ended without an answer".into(),
        })
    }
}

/// The token endpoint over HTTP: a form POST with client authentication.
pub struct HttpTokenEndpoint {
    target: UpstreamTarget,
    path: String,
    form: String,
    basic: Option<String>,
    client: SmallClient,
}

impl HttpTokenEndpoint {
    pub fn new(config: &OAuth2) -> Result<Self, CaError> {
        let target = UpstreamTarget::new(config.token_url.clone(), config.ca_file.as_deref())?;
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !config.scopes.is_empty() {
            form.append_pair("scope", &config.scopes.join(" "));
        }
        if let Some(audience) = &config.audience {
            form.append_pair("audience", audience);
        }
        for (name, value) in &config.params {
            form.append_pair(name, value.expose());
        }
        let basic = match config.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: both parts are form-encoded before joining.
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!(
                    "{}:{}",
                    encode(&config.client_id),
                    encode(config.client_secret.expose())
                );
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            ClientAuth::Body => {
                form.append_pair("client_id", &config.client_id);
                form.append_pair("client_secret", config.client_secret.expose());
                None
            }
        };
        let path = if config.token_url.base_path.is_empty() {
            "/".to_string()
        } else {
            config.token_url.base_path.clone()
        };
        Ok(Self {
            target,
            path,
            form: form.finish(),
            basic,
            client: SmallClient::default(),
        })
    }
}

#[async_trait]
impl TokenEndpoint for HttpTokenEndpoint {
    async fn fetch(&self) -> Result<IssuedToken, TokenError> {
        let unreachable = |reason: String| TokenError::Unreachable {
            endpoint: self.target.url.to_string(),
            reason,
        };
        let mut request = RequestHeader::build("POST", self.path.as_bytes(), None)
            .map_err(|e| unreachable(e.to_string()))?;
        let basic = self.basic.as_deref().map(|b| ("authorization", b));
        let headers = [
            Some(("content-type", "application/x-www-form-urlencoded")),
            Some(("accept", "application/json")),
            basic,
        ];
        for (name, value) in headers.into_iter().flatten() {
            request
                .insert_header(name, value)
                .map_err(|e| unreachable(e.to_string()))?;
        }
        let response = self
            .client
            .send(
                &self.target,
                request,
                Bytes::from(self.form.clone()),
                TOKEN_REQUEST_TIMEOUT,
            )
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        parse_token_response(response.status, &response.body).map_err(|answer| TokenError::Answer {
            endpoint: self.target.url.to_string(),
            answer,
        })
    }
}

/// Reads an RFC 6749 §5.1 answer; an error answer's `error` code is kept, nothing else.
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<IssuedToken, AnswerError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        // The code reaches logs and problem details: only a plain RFC 6749
        // error code is repeated, never whatever else the endpoint sent.
        let code = json
            .get("error")
            .and_then(|e| e.as_str())
            .filter(|code| {
                (1..=64).contains(&code.len())
                    && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .map(str::to_string);
        return Err(AnswerError::Refused { status, code });
    }
    let access_token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or(AnswerError::NoAccessToken)?;
    let expires_in = match json.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(IssuedToken {
        access_token: access_token.to_string(),
        expires_in: expires_in.map(|seconds| Duration::from_secs(seconds).min(MAX_LIFETIME)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct FakeEndpoint {
        calls: Arc<AtomicUsize>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        delay: Duration,
        lifetime: Duration,
    }

    #[async_trait]
    impl TokenEndpoint for FakeEndpoint {
        async fn fetch(&self) -> Result<IssuedToken, TokenError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(TokenError::Answer {
                    endpoint: "https://auth.test/token".into(),
                    answer: AnswerError::Refused {
                        status: 503,
                        code: Some("temporarily_unavailable".into()),
                    },
                });
            }
            Ok(IssuedToken {
                access_token: format!("token-{n}"),
                expires_in: Some(self.lifetime),
            })
        }
    }

    struct Fixture {
        source: Arc<TokenSource>,
        calls: Arc<AtomicUsize>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    fn fixture(lifetime: Duration, refresh_before: Duration) -> Fixture {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let endpoint = FakeEndpoint {
            calls: Arc::clone(&calls),
            fail: Arc::clone(&fail),
            delay: Duration::from_millis(50),
            lifetime,
        };
        let counters = RefreshCounters {
            success: IntCounter::new("s", "s").unwrap(),
            failure: IntCounter::new("f", "f").unwrap(),
        };
        Fixture {
            source: TokenSource::new(Box::new(endpoint), refresh_before, counters),
            calls,
            fail,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_concurrent_requests_cause_one_token_request() {
        let f = fixture(Duration::from_secs(3600), Duration::from_secs(60));
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let source = Arc::clone(&f.source);
                tokio::spawn(async move { source.token().await })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(&*waiter.await.unwrap().unwrap(), "token-1");
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn caches_until_the_refresh_window_then_refreshes_in_the_background() {
        let f = fixture(Duration::from_secs(300), Duration::from_secs(60));
        assert_eq!(&*f.source.token().await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(239)).await;
        assert_eq!(&*f.source.token().await.unwrap(), "token-1");
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Inside the window: the old token is served while the new one is fetched.
        assert_eq!(&*f.source.token().await.unwrap(), "token-1");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(&*f.source.token().await.unwrap(), "token-2");
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_share_a_failed_attempt_and_a_later_request_recovers() {
        let f = fixture(Duration::from_secs(3600), Duration::from_secs(60));
        f.fail.store(true, Ordering::SeqCst);
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let source = Arc::clone(&f.source);
                tokio::spawn(async move { source.token().await })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(
                waiter.await.unwrap().unwrap_err().to_string(),
                "token endpoint https://auth.test/token: answered 503 (temporarily_unavailable)"
            );
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        f.fail.store(false, Ordering::SeqCst);
        assert_eq!(&*f.source.token().await.unwrap(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_forces_a_new_token_but_ignores_stale_tokens() {
        let f = fixture(Duration::from_secs(3600), Duration::from_secs(60));
        let first = f.source.token().await.unwrap();
        f.source.invalidate("some-older-token");
        assert_eq!(f.source.token().await.unwrap(), first);
        f.source.invalidate(&first);
        assert_eq!(&*f.source.token().await.unwrap(), "token-2");
    }

    #[test]
    fn parses_token_answers_and_error_codes_without_echoing_bodies() {
        let ok = parse_token_response(
            200,
            br#"{"access_token":"at","token_type":"Bearer","expires_in":"120"}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.access_token.as_str(), ok.expires_in),
            ("at", Some(Duration::from_secs(120)))
        );
        let err = parse_token_response(
            401,
            br#"{"error":"invalid_client","error_description":"secret xyz wrong"}"#,
        )
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "answered 401 (invalid_client)");
        assert_eq!(
            parse_token_response(200, b"{}").err().unwrap(),
            AnswerError::NoAccessToken
        );
    }

    #[test]
    fn a_lifetime_near_the_end_of_time_is_cut_to_a_day() {
        let huge = format!(r#"{{"access_token":"at","expires_in":{}}}"#, u64::MAX - 1);
        let issued = parse_token_response(200, huge.as_bytes()).unwrap();
        assert_eq!(issued.expires_in, Some(MAX_LIFETIME));
    }

    #[test]
    fn an_unusual_error_code_is_not_repeated() {
        let err = parse_token_response(400, br#"{"error":"<script>Bearer abc</script>"}"#)
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "answered 400 (no recognised error code)");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_promising_forever_is_refreshed_within_a_day() {
        let f = fixture(Duration::from_secs(u64::MAX / 2), Duration::from_secs(60));
        assert_eq!(&*f.source.token().await.unwrap(), "token-1");
        tokio::time::advance(MAX_LIFETIME).await;
        assert_eq!(&*f.source.token().await.unwrap(), "token-2");
    }
}
