//! One service's resilience as the proxy uses it: before a request, the
//! provider's pause, the circuit breaker and the rate limit decide whether it
//! goes, waits or is answered by the sidecar; after it, the outcome feeds the
//! breaker and a provider's 429/503 starts a pause (shared through Redis
//! when there is a Redis store). Plain functions over the resilience types,
//! tested without a network; only the shared limit needs Redis.

use crate::names::ServiceName;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use prometheus::IntCounter;

use crate::config::services::{LimitScope, OnStoreError, Service};
use crate::metrics::{EgressRejection, Metrics};
use crate::problem::{ErrorCode, Problem};
use crate::resilience::breaker::{Admission, Breaker, Outcome, State};
use crate::resilience::cooldown::{parse_retry_after, Cooldown};
use crate::resilience::global::{share_pause, GlobalLimiter, SharedDecision};
use crate::resilience::ratelimit::{Decision, LocalLimiter};
use crate::store::redis::RedisStore;
use crate::time::{retry_after_seconds, Clock};

pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";

/// What the guard says about a request before it goes.
#[derive(Debug)]
pub enum Verdict {
    Go(Pass),
    /// Go after this delay (`on_limit: wait`); the slot is reserved.
    WaitThenGo(Duration, Pass),
    /// Answer this instead of calling the provider.
    Refuse(Problem),
}

/// What a request that goes carries to its end.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    pub admission: Option<Admission>,
    /// (remaining, seconds until the bucket is full) for the RateLimit header.
    pub rate: Option<(u64, u64)>,
    /// The shared (Redis) limit has yet to be asked: see [`Guard::admit_shared`].
    pub shared_limit_pending: bool,
}

struct Limit {
    /// The per-pod limiter; with `scope: global`, the fallback when Redis
    /// is unreachable and `on_store_error: local`.
    local: LocalLimiter,
    shared: Option<GlobalLimiter>,
    on_store_error: OnStoreError,
    policy: HeaderValue,
}

pub struct Guard {
    name: ServiceName,
    cooldown: Cooldown,
    breaker: Option<Breaker>,
    failure_statuses: Vec<u16>,
    limit: Option<Limit>,
    store: Option<Arc<RedisStore>>,
    rate_limited: IntCounter,
    provider_throttled: IntCounter,
    circuit_open: IntCounter,
}

impl Guard {
    pub fn new(
        service: &Service,
        metrics: &Metrics,
        clock: Arc<dyn Clock>,
        store: Option<Arc<RedisStore>>,
    ) -> Self {
        let name = service.name.clone();
        let rejected = |reason: EgressRejection| {
            metrics
                .egress_rejected_total
                .with_label_values(&[name.as_str(), reason.as_str()])
        };
        let breaker = service.circuit_breaker.as_ref().map(|settings| {
            let gauge = metrics.circuit_state.with_label_values(&[name.as_str()]);
            gauge.set(State::Closed.gauge());
            let transitions = metrics.circuit_transitions_total.clone();
            let service = name.clone();
            Breaker::new(
                settings,
                Arc::clone(&clock),
                Box::new(move |to: State| {
                    gauge.set(to.gauge());
                    transitions
                        .with_label_values(&[service.as_str(), to.as_str()])
                        .inc();
                    tracing::warn!(service = %service, state = to.as_str(), "circuit breaker changed state");
                }),
            )
        });
        let limit = service.rate_limit.as_ref().map(|settings| Limit {
            local: LocalLimiter::new(settings, Arc::clone(&clock)),
            shared: match (&store, settings.scope) {
                (Some(store), LimitScope::Global) => {
                    Some(GlobalLimiter::new(&name, settings, Arc::clone(store)))
                }
                _ => None,
            },
            on_store_error: settings.on_store_error,
            policy: HeaderValue::try_from(format!(
                "\"{name}\";q={};w={}",
                settings.requests,
                settings.per.as_secs().max(1)
            ))
            .expect("service names are header-safe"),
        });
        Self {
            cooldown: Cooldown::new(clock, service.max_pause),
            failure_statuses: service
                .circuit_breaker
                .as_ref()
                .map(|b| b.failure_statuses.clone())
                .unwrap_or_default(),
            breaker,
            limit,
            store,
            rate_limited: rejected(EgressRejection::RateLimited),
            provider_throttled: rejected(EgressRejection::ProviderThrottled),
            circuit_open: rejected(EgressRejection::CircuitOpen),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts (or extends) a provider pause another replica announced.
    pub fn pause(&self, length: Duration) {
        self.cooldown.start(length);
    }

    pub fn breaker_state(&self) -> Option<State> {
        self.breaker.as_ref().map(Breaker::state)
    }

    /// Milliseconds left of a provider's requested pause, if one runs.
    /// Requests this pod's rate limit would let through at once now (see
    /// `LocalLimiter::service_remaining`); None without a limit or keyed
    /// by a header.
    pub fn rate_limit_remaining(&self) -> Option<u64> {
        self.limit.as_ref()?.local.service_remaining()
    }

    pub fn provider_pause_ms(&self) -> Option<u64> {
        self.cooldown.remaining_ms()
    }

    /// Decides before the request goes, the shared limit included.
    /// `time_left` is what remains of the service timeout: a request never
    /// waits for its slot longer than that.
    pub async fn admit_attempt(&self, headers: &HeaderMap, time_left: Duration) -> Verdict {
        match self.admit_in_pod(headers, time_left) {
            Verdict::Go(pass) if pass.shared_limit_pending => {
                self.admit_shared(pass, headers, time_left).await
            }
            verdict => verdict,
        }
    }

    /// Everything that needs no network: the pause, the breaker and a
    /// per-pod limit. A shared limit is left pending in the pass.
    pub fn admit_in_pod(&self, headers: &HeaderMap, time_left: Duration) -> Verdict {
        if let Some(left) = self.cooldown.remaining_ms() {
            return Verdict::Refuse(self.provider_paused(left));
        }
        let admission = match &self.breaker {
            None => None,
            Some(breaker) => match breaker.admit() {
                Ok(admission) => Some(admission),
                Err(rejected) => {
                    self.circuit_open.inc();
                    let seconds = retry_after_seconds(rejected.retry_after_ms);
                    let detail = format!(
                        "the circuit breaker for {} is open after repeated failures; retry in {seconds} s",
                        self.name
                    );
                    return Verdict::Refuse(
                        Problem::new(ErrorCode::CircuitOpen, detail)
                            .with_header("retry-after", seconds.to_string()),
                    );
                }
            },
        };
        let pass = Pass {
            admission,
            ..Pass::default()
        };
        match &self.limit {
            None => Verdict::Go(pass),
            Some(limit) if limit.shared.is_some() => Verdict::Go(Pass {
                shared_limit_pending: true,
                ..pass
            }),
            Some(limit) => self.limit_verdict(limit, limit.local.decide(headers, time_left), pass),
        }
    }

    /// Asks the shared limit in Redis; on a store failure, does what
    /// `on_store_error` says.
    pub async fn admit_shared(
        &self,
        pass: Pass,
        headers: &HeaderMap,
        time_left: Duration,
    ) -> Verdict {
        let pass = Pass {
            shared_limit_pending: false,
            ..pass
        };
        let Some(limit) = &self.limit else {
            return Verdict::Go(pass);
        };
        let Some(shared) = &limit.shared else {
            return Verdict::Go(pass);
        };
        match shared.decide(headers, time_left).await {
            Ok(SharedDecision::Limit(decision)) => self.limit_verdict(limit, decision, pass),
            Ok(SharedDecision::ProviderPaused { remaining_ms }) => {
                // Another replica (or an older version) may have stored more.
                let remaining_ms = u64::try_from(
                    self.cooldown
                        .clamp(Duration::from_millis(remaining_ms))
                        .as_millis(),
                )
                .unwrap_or(u64::MAX);
                self.finish(pass.admission, Outcome::Unknown);
                // Seen once, kept here too: the next requests need no Redis to know.
                self.cooldown.start(Duration::from_millis(remaining_ms));
                Verdict::Refuse(self.provider_paused(remaining_ms))
            }
            Err(error) => match limit.on_store_error {
                OnStoreError::Local => {
                    self.limit_verdict(limit, limit.local.decide(headers, time_left), pass)
                }
                OnStoreError::Allow => Verdict::Go(pass),
                OnStoreError::Deny => {
                    self.finish(pass.admission, Outcome::Unknown);
                    Verdict::Refuse(
                        Problem::new(
                            ErrorCode::StoreUnavailable,
                            format!(
                                "the shared rate limit of {} cannot be checked: {error}",
                                self.name
                            ),
                        )
                        .with_header("retry-after", "1"),
                    )
                }
            },
        }
    }

    fn provider_paused(&self, left_ms: u64) -> Problem {
        self.provider_throttled.inc();
        let seconds = retry_after_seconds(left_ms);
        Problem::new(
            ErrorCode::ProviderThrottled,
            format!("{} asked for a pause; {seconds} s left", self.name),
        )
        .with_header("retry-after", seconds.to_string())
    }

    fn limit_verdict(&self, limit: &Limit, decision: Decision, pass: Pass) -> Verdict {
        match decision {
            Decision::Allow {
                remaining,
                reset_ms,
            } => Verdict::Go(Pass {
                rate: Some((remaining, retry_after_seconds(reset_ms))),
                ..pass
            }),
            Decision::Wait { delay_ms, reset_ms } => Verdict::WaitThenGo(
                Duration::from_millis(delay_ms),
                Pass {
                    rate: Some((0, retry_after_seconds(reset_ms))),
                    ..pass
                },
            ),
            Decision::Reject { retry_after_ms } => {
                // The breaker's slot (a half-open probe) goes back unused.
                self.finish(pass.admission, Outcome::Unknown);
                self.rate_limited.inc();
                let seconds = retry_after_seconds(retry_after_ms);
                let detail = format!(
                    "the rate limit of {} is reached; retry in {seconds} s",
                    self.name
                );
                Verdict::Refuse(
                    Problem::new(ErrorCode::RateLimited, detail)
                        .with_header("retry-after", seconds.to_string())
                        .with_header(RATELIMIT_POLICY, policy_text(&limit.policy))
                        .with_header(RATELIMIT, format!("\"{}\";r=0;t={seconds}", self.name)),
                )
            }
        }
    }

    /// The RateLimit-Policy and RateLimit values for an answer, when limited.
    pub fn rate_headers(&self, pass: &Pass) -> Option<(HeaderValue, HeaderValue)> {
        let limit = self.limit.as_ref()?;
        let (remaining, reset) = pass.rate?;
        // Written by hand: `format!` was a tenth of the egress's own cost
        // per request.
        let mut current = Vec::with_capacity(self.name.len() + 32);
        current.push(b'"');
        current.extend_from_slice(self.name.as_bytes());
        current.extend_from_slice(b"\";r=");
        push_decimal(&mut current, remaining);
        current.extend_from_slice(b";t=");
        push_decimal(&mut current, reset);
        let current = HeaderValue::from_maybe_shared(bytes::Bytes::from(current))
            .expect("service names are header-safe");
        Some((limit.policy.clone(), current))
    }

    /// What a provider's answer means for the service, before the app sees
    /// it: a 401 drops the access token it was sent with (the next request
    /// fetches a new one); a 429 or 503 with `Retry-After` starts a pause,
    /// shared with every replica through Redis.
    pub async fn after_response(
        &self,
        status: u16,
        retry_after: Option<&HeaderValue>,
        tokens: Option<(&super::oauth2::TokenSource, &str)>,
    ) {
        if status == 401 {
            if let Some((tokens, token)) = tokens {
                tokens.invalidate(token);
                tracing::info!(service = %self.name, "provider answered 401: the cached OAuth2 token is dropped");
            }
        }
        if let Some(pause) = self.provider_answered(status, retry_after) {
            self.share_pause(pause).await;
        }
    }

    /// A provider's 429 or 503 with Retry-After starts a pause; with a Redis
    /// store every replica learns of it. Returns the pause started, if any.
    pub fn provider_answered(
        &self,
        status: u16,
        retry_after: Option<&HeaderValue>,
    ) -> Option<Duration> {
        if status != 429 && status != 503 {
            return None;
        }
        let pause = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .filter(|p| !p.is_zero())
            .map(|p| self.cooldown.clamp(p))?;
        tracing::warn!(service = %self.name, status, pause_s = pause.as_secs(), "provider asked for a pause");
        self.cooldown.start(pause);
        Some(pause)
    }

    /// The `Retry-After` the app gets in place of a provider's that asks
    /// for longer than `max_pause` (the pause honoured, in seconds), so
    /// that the app's first answer says what every later one will; None
    /// when the provider's stands.
    pub fn capped_retry_after(
        &self,
        status: u16,
        retry_after: Option<&HeaderValue>,
    ) -> Option<u64> {
        if status != 429 && status != 503 {
            return None;
        }
        let asked = parse_retry_after(retry_after?.to_str().ok()?, SystemTime::now())?;
        let honoured = self.cooldown.clamp(asked);
        (honoured < asked).then(|| honoured.as_secs().max(1))
    }

    /// Tells the other replicas of a pause (a no-op without a Redis store).
    pub async fn share_pause(&self, pause: Duration) {
        if let Some(store) = &self.store {
            if let Err(error) = share_pause(store, &self.name, pause).await {
                tracing::debug!(service = %self.name, %error, "could not share the provider's pause");
            }
        }
    }

    /// Tells the breaker how an admitted request went.
    pub fn finish(&self, admission: Option<Admission>, outcome: Outcome) {
        if let (Some(breaker), Some(admission)) = (&self.breaker, admission) {
            breaker.record(admission, outcome);
        }
    }

    /// The breaker's view of a finished request: the status the app got
    /// (0 if none) and the sidecar's own error code if it answered itself.
    pub fn outcome(&self, status: u16, sidecar_error: Option<ErrorCode>) -> Outcome {
        match sidecar_error {
            Some(
                ErrorCode::UpstreamUnreachable
                | ErrorCode::UpstreamTimeout
                | ErrorCode::UpstreamFailed,
            ) => Outcome::Failure,
            Some(_) => Outcome::Unknown,
            None if status == 0 => Outcome::Unknown,
            None if self.failure_statuses.contains(&status) => Outcome::Failure,
            None => Outcome::Success,
        }
    }
}

fn policy_text(policy: &HeaderValue) -> String {
    policy.to_str().unwrap_or_default().to_string()
}

/// A `stripe` service for unit tests, with `extra` YAML lines under it.
/// `n` in decimal, appended.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
pub(crate) fn stripe_service(extra: &str) -> Service {
    let yaml = format!(
        "services:\n  stripe:\n    route: /stripe\n    upstream: https://api.stripe.com\n{extra}"
    );
    crate::config::Config::from_yaml(
        &yaml,
        "test.yaml",
        &crate::config::interpolate::MapLookup::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .services
    .remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    fn guard(service_yaml: &str) -> (Guard, Arc<ManualClock>, Arc<Metrics>) {
        let clock = Arc::new(ManualClock::default());
        clock.advance(Duration::from_secs(1000));
        let metrics = Arc::new(Metrics::new());
        let guard = Guard::new(&stripe_service(service_yaml), &metrics, clock.clone(), None);
        (guard, clock, metrics)
    }

    fn refused(verdict: Verdict) -> Problem {
        match verdict {
            Verdict::Refuse(problem) => problem,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn header<'a>(problem: &'a Problem, name: &str) -> &'a str {
        problem
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {problem:?}"))
    }

    #[test]
    fn a_rate_limited_request_is_refused_with_retry_after_and_ratelimit_fields() {
        let (guard, _, metrics) = guard("    rate_limit: { requests: 2, per: 10s }\n");
        let none = HeaderMap::new();
        let Verdict::Go(pass) = guard.admit_in_pod(&none, Duration::MAX) else {
            panic!()
        };
        let (policy, current) = guard.rate_headers(&pass).unwrap();
        assert_eq!(policy, "\"stripe\";q=2;w=10");
        assert_eq!(current, "\"stripe\";r=1;t=5");
        assert!(matches!(
            guard.admit_in_pod(&none, Duration::MAX),
            Verdict::Go(_)
        ));
        let problem = refused(guard.admit_in_pod(&none, Duration::MAX));
        assert_eq!(problem.code, ErrorCode::RateLimited);
        assert_eq!(header(&problem, "retry-after"), "5");
        assert_eq!(header(&problem, RATELIMIT), "\"stripe\";r=0;t=5");
        assert_eq!(header(&problem, RATELIMIT_POLICY), "\"stripe\";q=2;w=10");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(
            "sidecar_egress_rejected_total{egress_service=\"stripe\",reason=\"rate_limited\"} 1"
        ));
    }

    #[test]
    fn a_provider_429_with_retry_after_pauses_the_service() {
        let (guard, clock, _) = guard("");
        let none = HeaderMap::new();
        guard.provider_answered(429, Some(&HeaderValue::from_static("7")));
        let problem = refused(guard.admit_in_pod(&none, Duration::MAX));
        assert_eq!(problem.code, ErrorCode::ProviderThrottled);
        assert_eq!(header(&problem, "retry-after"), "7");
        clock.advance(Duration::from_millis(6_500));
        assert_eq!(
            header(
                &refused(guard.admit_in_pod(&none, Duration::MAX)),
                "retry-after"
            ),
            "1"
        );
        clock.advance(Duration::from_millis(500));
        assert!(matches!(
            guard.admit_in_pod(&none, Duration::MAX),
            Verdict::Go(_)
        ));
        // Without Retry-After, or on another status, nothing pauses.
        guard.provider_answered(503, None);
        guard.provider_answered(500, Some(&HeaderValue::from_static("60")));
        assert!(matches!(
            guard.admit_in_pod(&none, Duration::MAX),
            Verdict::Go(_)
        ));
    }

    #[test]
    fn the_apps_retry_after_is_capped_like_the_pause() {
        let (capped, _, _) = guard("    max_pause: 3s\n");
        let value = |v: &'static str| HeaderValue::from_static(v);
        assert_eq!(capped.capped_retry_after(429, Some(&value("100"))), Some(3));
        assert_eq!(capped.capped_retry_after(503, Some(&value("100"))), Some(3));
        assert_eq!(
            capped.capped_retry_after(429, Some(&value("2"))),
            None,
            "within"
        );
        assert_eq!(capped.capped_retry_after(200, Some(&value("100"))), None);
        assert_eq!(capped.capped_retry_after(429, Some(&value("soon"))), None);
        assert_eq!(capped.capped_retry_after(429, None), None);
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(
            capped.capped_retry_after(429, Some(&HeaderValue::from_str(&later).unwrap())),
            Some(3),
            "an HTTP-date"
        );
    }

    #[test]
    fn a_provider_pause_is_never_longer_than_max_pause() {
        let (capped, _, _) = guard("    max_pause: 2m\n");
        let asked = capped.provider_answered(429, Some(&HeaderValue::from_static("315360000")));
        assert_eq!(asked, Some(Duration::from_secs(120)), "what is shared");
        let problem = refused(capped.admit_in_pod(&HeaderMap::new(), Duration::MAX));
        assert_eq!(header(&problem, "retry-after"), "120");
        let (default, _, _) = guard("");
        let asked = default.provider_answered(503, Some(&HeaderValue::from_static("86400")));
        assert_eq!(asked, Some(Duration::from_secs(15 * 60)), "15m by default");
    }

    #[test]
    fn an_open_breaker_refuses_with_the_seconds_until_half_open() {
        let (guard, clock, metrics) =
            guard("    circuit_breaker: { failure_threshold: 2, open_for: 30s }\n");
        let none = HeaderMap::new();
        for _ in 0..2 {
            let Verdict::Go(pass) = guard.admit_in_pod(&none, Duration::MAX) else {
                panic!()
            };
            guard.finish(pass.admission, guard.outcome(503, None));
        }
        clock.advance(Duration::from_millis(10_200));
        let problem = refused(guard.admit_in_pod(&none, Duration::MAX));
        assert_eq!(problem.code, ErrorCode::CircuitOpen);
        assert_eq!(problem.status(), 503);
        assert_eq!(header(&problem, "retry-after"), "20");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("sidecar_circuit_state{egress_service=\"stripe\"} 2"));
        assert!(text.contains(
            "sidecar_circuit_transitions_total{egress_service=\"stripe\",to=\"open\"} 1"
        ));
    }

    #[test]
    fn outcomes_count_provider_failures_only() {
        let (guard, _, _) = guard("    circuit_breaker: { failure_statuses: [500, 503] }\n");
        assert_eq!(guard.outcome(200, None), Outcome::Success);
        assert_eq!(
            guard.outcome(404, None),
            Outcome::Success,
            "a 4xx is the app's problem"
        );
        assert_eq!(guard.outcome(503, None), Outcome::Failure);
        assert_eq!(guard.outcome(502, None), Outcome::Success, "not listed");
        assert_eq!(
            guard.outcome(504, Some(ErrorCode::UpstreamTimeout)),
            Outcome::Failure
        );
        assert_eq!(
            guard.outcome(502, Some(ErrorCode::CredentialsUnavailable)),
            Outcome::Unknown
        );
        assert_eq!(guard.outcome(0, None), Outcome::Unknown);
    }

    #[test]
    fn a_rate_limited_probe_gives_its_slot_back() {
        let (guard, clock, _) = guard(
            "    circuit_breaker: { failure_threshold: 1, open_for: 1s, half_open_probes: 1 }\n    rate_limit: { requests: 1, per: 1h }\n",
        );
        let none = HeaderMap::new();
        let Verdict::Go(pass) = guard.admit_in_pod(&none, Duration::MAX) else {
            panic!()
        };
        guard.finish(pass.admission, Outcome::Failure);
        clock.advance(Duration::from_secs(1));
        // The probe is admitted by the breaker, then refused by the limiter.
        assert_eq!(
            refused(guard.admit_in_pod(&none, Duration::MAX)).code,
            ErrorCode::RateLimited
        );
        assert_eq!(
            refused(guard.admit_in_pod(&none, Duration::MAX)).code,
            ErrorCode::RateLimited,
            "the probe slot is free again: the breaker lets it through"
        );
    }
}
