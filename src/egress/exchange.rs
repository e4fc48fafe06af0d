//! One request's way through the egress, as a state machine the proxy
//! drives: admitted (or answered) before it goes, tried again when a
//! failure is worth it and safe, its breaker told how it went. Every
//! decision is a method that returns a [`Step`]; nothing here touches a
//! socket, so each is tested on tokio's paused time.
//!
//! ```text
//!  admit ──Go/Wait──► [attempt] ──ok──► on_status ──Go──► answer passes through
//!    │                  │  ▲                 │
//!  Answer         failure │ next_attempt   Wait (a provider status worth
//!  (429, 503)           ▼  │ (backoff,      retrying)
//!             on_connect_failure  shared limit)
//!             on_broken ──Wait──┘
//!                 │
//!               Answer (502, 504: `failure::problem_for`)
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora::http::RequestHeader;
use pingora::Error;
use tokio::time::Instant;

use super::failure;
use super::guard::{Pass, Verdict};
use super::headers::set_request;
use super::retrying::Attempt;
use super::service::EgressService;
use crate::config::services::RetryOn;
use crate::problem::{ErrorCode, Problem};
use crate::resilience::retry::{is_safe_to_repeat, IDEMPOTENCY_KEY};

/// What the proxy does next.
#[derive(Debug)]
pub enum Step {
    /// Go on (send the attempt, or let the answer through).
    Go,
    /// Wait this long, then go on (a slot reserved by `on_limit: wait`, or
    /// the backoff before a retry).
    Wait(Duration),
    /// Answer this instead of the provider.
    Answer(Problem),
}

pub struct Exchange {
    service: Arc<EgressService>,
    started: Instant,
    /// The breaker admission and rate-limit state of the attempt under way.
    pass: Pass,
    /// 1 for the first try.
    attempt: u32,
    /// The backoff a granted retry waits before it goes.
    retry_wait: Option<Duration>,
    /// Idempotent method or Idempotency-Key (the app's or ours).
    safe_to_repeat: bool,
    /// The key `idempotency_key: auto` made, the same on every attempt.
    idempotency_key: Option<HeaderValue>,
    /// The access token the attempts carry (OAuth2).
    token: Option<Arc<str>>,
    /// What the sidecar answered (or will), for the breaker and the log.
    answered: Option<ErrorCode>,
}

impl Exchange {
    /// A request for `service` that arrived at `started`; `method` and
    /// `headers` tell whether it may be repeated.
    pub fn new(
        service: Arc<EgressService>,
        started: Instant,
        method: &http::Method,
        headers: &HeaderMap,
    ) -> Self {
        let idempotency_key = (service.auto_idempotency_key
            && method == http::Method::POST
            && !headers.contains_key(IDEMPOTENCY_KEY))
        .then(|| {
            let key = uuid::Uuid::new_v4().hyphenated().to_string();
            HeaderValue::try_from(key).unwrap_or_else(|_| HeaderValue::from_static("-"))
        });
        let safe_to_repeat = idempotency_key.is_some() || is_safe_to_repeat(method, headers);
        if let Some(retry) = &service.retry {
            retry.record_request();
        }
        Self {
            service,
            started,
            pass: Pass::default(),
            attempt: 1,
            retry_wait: None,
            safe_to_repeat,
            idempotency_key,
            token: None,
            answered: None,
        }
    }

    pub fn service(&self) -> &Arc<EgressService> {
        &self.service
    }

    pub fn idempotency_key(&self) -> Option<&HeaderValue> {
        self.idempotency_key.as_ref()
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The provider's request: its path, Host, the request id, the
    /// idempotency key and the credentials. Every attempt builds it again
    /// from the same parts (`path` is cloned, not taken).
    pub fn write_request(
        &self,
        request: &mut RequestHeader,
        path: &Bytes,
        request_id: &HeaderValue,
        group_host: Option<&HeaderValue>,
    ) -> pingora::Result<()> {
        let uri = http::Uri::from_maybe_shared(path.clone()).map_err(|e| {
            Error::because(
                pingora::ErrorType::InternalError,
                "building the upstream path",
                e,
            )
        })?;
        request.set_uri(uri);
        if let Some(host) = self.service.host.as_ref().or(group_host) {
            set_request(request, http::header::HOST, host.clone())?;
        }
        set_request(request, super::REQUEST_ID_HEADER, request_id.clone())?;
        if let Some(key) = &self.idempotency_key {
            set_request(request, IDEMPOTENCY_KEY, key.clone())?;
        }
        self.service.auth.apply(request, self.token())
    }

    /// What the sidecar answered itself, if it did.
    pub fn answered(&self) -> Option<ErrorCode> {
        self.answered
    }

    /// Whether a retry may replay the body (Pingora keeps 64 KiB of it).
    pub fn may_buffer_body(&self) -> bool {
        self.service.retry.is_some()
    }

    /// What remains of the service's timeout, which bounds the whole
    /// exchange, retries included.
    pub fn time_left(&self) -> Duration {
        self.service.timeout.saturating_sub(self.started.elapsed())
    }

    /// Before the first attempt: the provider's pause, the breaker, the
    /// rate limits (the shared one through Redis), then the credentials.
    pub async fn admit(&mut self, headers: &HeaderMap) -> Step {
        let step = match self
            .service
            .guard
            .admit_attempt(headers, self.time_left())
            .await
        {
            Verdict::Go(pass) => {
                self.pass = pass;
                Step::Go
            }
            Verdict::WaitThenGo(delay, pass) => {
                self.pass = pass;
                Step::Wait(delay)
            }
            Verdict::Refuse(problem) => return self.answer(problem),
        };
        if let Some(tokens) = &self.service.tokens {
            match tokens.token().await {
                Ok(token) => self.token = Some(token),
                Err(error) => {
                    let detail = format!("no access token for {}: {error}", self.service.name);
                    return self.answer(Problem::new(ErrorCode::CredentialsUnavailable, detail));
                }
            }
        }
        step
    }

    /// At the start of every attempt after the first: the shared rate
    /// limit (which needs Redis, so it could not be asked where the retry
    /// was decided), then the granted backoff.
    pub async fn next_attempt(&mut self, headers: &HeaderMap) -> Step {
        let Some(backoff) = self.retry_wait.take() else {
            return Step::Go;
        };
        if !self.pass.shared_limit_pending {
            return Step::Wait(backoff);
        }
        let time_left = self.time_left().saturating_sub(backoff);
        match self
            .service
            .guard
            .admit_shared(self.pass, headers, time_left)
            .await
        {
            Verdict::Go(pass) => {
                self.pass = pass;
                Step::Wait(backoff)
            }
            Verdict::WaitThenGo(wait, pass) => {
                self.pass = pass;
                Step::Wait(wait.max(backoff))
            }
            Verdict::Refuse(problem) => {
                self.pass = Pass::default();
                self.answer(problem)
            }
        }
    }

    /// The connection failed: nothing reached the provider, so any method
    /// may be retried if `connect_error` is configured.
    pub fn on_connect_failure(
        &mut self,
        error: &Error,
        headers: &HeaderMap,
        body_truncated: bool,
    ) -> Step {
        if self.grant_retry(RetryOn::ConnectError, headers, body_truncated) {
            return self.retry_step();
        }
        self.give_up(error)
    }

    /// The provider answered `status`: retried when configured and safe,
    /// otherwise passed through.
    pub fn on_status(&mut self, status: u16, headers: &HeaderMap, body_truncated: bool) -> Step {
        if self.grant_retry(RetryOn::Status(status), headers, body_truncated) {
            return self.retry_step();
        }
        Step::Go
    }

    /// The exchange broke after it was established (a timeout, a reset).
    /// Only a timeout may be retried (`retry_on: timeout`), and only while
    /// time is left; anything else is answered.
    pub fn on_broken(&mut self, error: &Error, headers: &HeaderMap, body_truncated: bool) -> Step {
        let timed_out = matches!(
            error.etype(),
            pingora::ErrorType::ReadTimedout | pingora::ErrorType::WriteTimedout
        ) && error.esource() == &pingora::ErrorSource::Upstream;
        if timed_out && self.grant_retry(RetryOn::Timeout, headers, body_truncated) {
            return self.retry_step();
        }
        self.give_up(error)
    }

    /// Whether Pingora may send a safe request again on a fresh connection
    /// after a pooled one turned out closed (its own rule).
    pub fn may_reconnect(&self, body_truncated: bool) -> bool {
        self.safe_to_repeat && !body_truncated
    }

    /// The answer for the failure that ended the exchange: the one decided
    /// already, or the failure's own.
    pub fn failure_answer(&mut self, error: &Error) -> Option<Problem> {
        let problem = failure::problem_for(error, &self.service.name, self.service.timeout)?;
        self.answered.get_or_insert(problem.code);
        Some(problem)
    }

    /// The RateLimit-Policy and RateLimit values an answer carries.
    pub fn rate_headers(&self) -> Option<(HeaderValue, HeaderValue)> {
        self.service.guard.rate_headers(&self.pass)
    }

    /// The exchange is over: the breaker hears how the last attempt went
    /// (`status` is what the app got, 0 if nothing).
    pub fn finish(&mut self, status: u16) {
        let outcome = self.service.guard.outcome(status, self.answered);
        self.service
            .guard
            .finish(self.pass.admission.take(), outcome);
    }

    fn answer(&mut self, problem: Problem) -> Step {
        self.answered = Some(problem.code);
        Step::Answer(problem)
    }

    fn give_up(&mut self, error: &Error) -> Step {
        match self.failure_answer(error) {
            Some(problem) => Step::Answer(problem),
            // The app itself went away: nobody to answer.
            None => Step::Go,
        }
    }

    fn retry_step(&self) -> Step {
        Step::Wait(self.retry_wait.unwrap_or_default())
    }

    /// Whether the attempt that just failed for `reason` is tried again;
    /// when it is, the next attempt's wait and admission are kept here.
    fn grant_retry(&mut self, reason: RetryOn, headers: &HeaderMap, body_truncated: bool) -> bool {
        let Some(retry) = &self.service.retry else {
            return false;
        };
        let attempt = Attempt {
            number: self.attempt,
            reason,
            safe_to_repeat: self.safe_to_repeat && !body_truncated,
            time_left: self.time_left(),
            headers,
        };
        let Some(granted) = retry.decide(&self.service.guard, &mut self.pass, &attempt) else {
            return false;
        };
        tracing::debug!(service = %self.service.name, attempt = self.attempt, ?reason, "retrying");
        self.attempt += 1;
        self.pass = granted.pass;
        self.retry_wait = Some(granted.delay);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::time::ManualClock;
    use crate::upstreams::UpstreamGroups;
    use pingora::ErrorType;

    fn service(extra: &str) -> Arc<EgressService> {
        let config = super::super::guard::stripe_service(extra);
        let clock: Arc<dyn crate::time::Clock> = Arc::new(ManualClock::default());
        Arc::new(
            EgressService::new(
                &config,
                &UpstreamGroups::default(),
                &Metrics::new(),
                &clock,
                None,
                None,
            )
            .unwrap(),
        )
    }

    fn exchange(service: &Arc<EgressService>, method: http::Method) -> Exchange {
        Exchange::new(
            Arc::clone(service),
            Instant::now(),
            &method,
            &HeaderMap::new(),
        )
    }

    const RETRY: &str = "    timeout: 2s\n    retry: { attempts: 3, retry_on: [connect_error, 503, timeout], backoff: { initial: 100ms, max: 400ms } }\n";

    fn waits(step: Step) -> Duration {
        match step {
            Step::Wait(d) => d,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    fn answer(step: Step) -> Problem {
        match step {
            Step::Answer(problem) => problem,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_answers_before_anything_goes() {
        let service = service("    circuit_breaker: { failure_threshold: 1, open_for: 30s }\n");
        let mut first = exchange(&service, http::Method::GET);
        assert!(matches!(first.admit(&HeaderMap::new()).await, Step::Go));
        first.finish(503);
        let mut second = exchange(&service, http::Method::GET);
        let problem = answer(second.admit(&HeaderMap::new()).await);
        assert_eq!(problem.code, ErrorCode::CircuitOpen);
        assert_eq!(second.answered(), Some(ErrorCode::CircuitOpen));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_in_wait_mode_reserves_a_slot_and_says_how_long() {
        let service =
            service("    rate_limit: { requests: 1, per: 1s, on_limit: wait, max_wait: 2s }\n");
        let none = HeaderMap::new();
        assert!(matches!(
            exchange(&service, http::Method::GET).admit(&none).await,
            Step::Go
        ));
        let wait = waits(exchange(&service, http::Method::GET).admit(&none).await);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_failure_is_retried_for_any_method_then_answered() {
        let service = service(RETRY);
        let none = HeaderMap::new();
        let mut post = exchange(&service, http::Method::POST);
        assert!(matches!(post.admit(&none).await, Step::Go));
        let refused = Error::new_up(ErrorType::ConnectRefused);
        let backoff = waits(post.on_connect_failure(&refused, &none, false));
        assert!(backoff >= Duration::from_millis(50) && backoff <= Duration::from_millis(100));
        assert_eq!(waits(post.next_attempt(&none).await), backoff);
        assert!(matches!(post.next_attempt(&none).await, Step::Go), "once");
        waits(post.on_connect_failure(&refused, &none, false));
        let problem = answer(post.on_connect_failure(&refused, &none, false));
        assert_eq!(problem.code, ErrorCode::UpstreamUnreachable, "attempts: 3");
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_status_is_retried_only_when_configured_and_safe() {
        let service = service(RETRY);
        let none = HeaderMap::new();
        let mut get = exchange(&service, http::Method::GET);
        get.admit(&none).await;
        assert!(
            matches!(get.on_status(502, &none, false), Step::Go),
            "502 is not listed"
        );
        waits(get.on_status(503, &none, false));
        let mut post = exchange(&service, http::Method::POST);
        post.admit(&none).await;
        assert!(
            matches!(post.on_status(503, &none, false), Step::Go),
            "a POST without a key"
        );
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        let mut post = Exchange::new(
            Arc::clone(&service),
            Instant::now(),
            &http::Method::POST,
            &keyed,
        );
        post.admit(&keyed).await;
        waits(post.on_status(503, &keyed, false));
        assert!(
            matches!(post.on_status(503, &keyed, true), Step::Go),
            "a body over 64 KiB cannot be replayed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_is_retried_only_while_time_is_left() {
        let service = service(RETRY);
        let none = HeaderMap::new();
        let timeout = Error::new_up(ErrorType::ReadTimedout);
        let mut get = exchange(&service, http::Method::GET);
        get.admit(&none).await;
        waits(get.on_broken(&timeout, &none, false));
        tokio::time::advance(Duration::from_millis(1950)).await;
        let problem = answer(get.on_broken(&timeout, &none, false));
        assert_eq!(
            problem.code,
            ErrorCode::UpstreamTimeout,
            "50 ms left: less than any backoff"
        );
        assert_eq!(problem.detail, "stripe did not answer within 2s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_is_answered_not_retried() {
        let service = service(RETRY);
        let none = HeaderMap::new();
        let mut get = exchange(&service, http::Method::GET);
        get.admit(&none).await;
        let problem =
            answer(get.on_broken(&Error::new_up(ErrorType::ConnectionClosed), &none, false));
        assert_eq!(problem.code, ErrorCode::UpstreamFailed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_auto_idempotency_key_makes_a_post_repeatable_with_one_key() {
        let service = service(&format!("{RETRY}    idempotency_key: auto\n"));
        let none = HeaderMap::new();
        let mut post = exchange(&service, http::Method::POST);
        let key = post.idempotency_key().cloned().unwrap();
        assert_eq!(key.len(), 36, "a UUID");
        post.admit(&none).await;
        waits(post.on_status(503, &none, false));
        assert_eq!(post.idempotency_key(), Some(&key), "the same on the retry");
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_hears_each_failed_attempt_and_the_last_outcome() {
        let service = service(&format!(
            "{RETRY}    circuit_breaker: {{ failure_threshold: 2, open_for: 30s }}\n"
        ));
        let none = HeaderMap::new();
        let mut get = exchange(&service, http::Method::GET);
        get.admit(&none).await;
        waits(get.on_status(503, &none, false));
        get.finish(503);
        let problem = answer(exchange(&service, http::Method::GET).admit(&none).await);
        assert_eq!(
            problem.code,
            ErrorCode::CircuitOpen,
            "two failures: the retried one and the last"
        );
    }
}
