//! `webhooks.<name>` and `delivery`: what the ingress accepts, how it verifies
//! it, and where the delivery workers send it.

use crate::names::WebhookName;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;

use http::uri::PathAndQuery;

use super::decode::{Decoder, Node};
use super::error::{SecretError, ValueError};
use super::http_types::{header_value, plain_path, request_path};
use super::pattern::{Glob, PayloadTemplate};
use super::secret::Secret;
use super::ser;
use super::services::{decode_backoff, header_name, positive_duration, Backoff};
use super::upstreams::unknown_group;

/// Shorter keys make brute-forcing a signature realistic.
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Webhook {
    pub name: WebhookName,
    pub path: String,
    pub verify: Verify,
    pub max_body: u64,
    pub event_id: Option<Field>,
    pub event_type: Option<Field>,
    pub context: Vec<(String, Field)>,
    pub priority: PriorityRules,
    pub routes: Vec<Route>,
    pub delivery: WebhookDelivery,
    #[serde(serialize_with = "ser::duration")]
    pub dedup_window: Duration,
    pub ack: Option<Ack>,
    /// `recover`: gap repair, what the provider sent while the sidecar
    /// could not take it, fetched back from its API.
    pub recover: Option<Recover>,
}

/// `webhooks.<name>.recover`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recover {
    pub kind: RecoverKind,
    /// The egress service the provider's API is called through (its
    /// credentials, rate limit, breaker and pauses apply).
    pub service: String,
    #[serde(serialize_with = "ser::duration")]
    pub every: Duration,
    /// How far before the checkpoint each run looks again (events whose
    /// `created` is a little older than when they became listable).
    #[serde(serialize_with = "ser::duration")]
    pub overlap: Duration,
    /// The furthest back a first run (or one after a long outage) looks,
    /// within the provider's retention.
    #[serde(serialize_with = "ser::duration")]
    pub lookback: Duration,
    /// Stripe: events rendered at another API version are skipped (and
    /// counted) instead of accepted.
    pub api_version: Option<String>,
    /// GitHub: the hook's API path (`/repos/OWNER/REPO/hooks/ID`,
    /// `/orgs/ORG/hooks/ID` or `/app/hook`), from `hook`.
    pub hook: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoverKind {
    /// Stripe's `GET /v1/events?delivery_success=false`.
    StripeEvents,
    /// GitHub's hook deliveries: failed ones are redelivered by GitHub.
    GithubDeliveries,
}

impl RecoverKind {
    /// How long the provider keeps what a run lists.
    pub fn retention(self) -> Duration {
        match self {
            Self::StripeEvents => Duration::from_secs(30 * 86_400),
            Self::GithubDeliveries => Duration::from_secs(3 * 86_400),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StripeEvents => "stripe_events",
            Self::GithubDeliveries => "github_deliveries",
        }
    }

    /// The webhook verification this API's events arrive with.
    pub fn verified_by(self) -> VerifyKind {
        match self {
            Self::StripeEvents => VerifyKind::Stripe,
            Self::GithubDeliveries => VerifyKind::Github,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyKind {
    Stripe,
    Standard,
    Github,
    Shopify,
    Slack,
    Twilio,
    Hmac,
    /// `events.<name>`: published by the pod's own app on the egress
    /// listener, which only the pod reaches; nothing to verify.
    App,
}

impl VerifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Standard => "standard",
            Self::Github => "github",
            Self::Shopify => "shopify",
            Self::Slack => "slack",
            Self::Twilio => "twilio",
            Self::Hmac => "hmac",
            Self::App => "app",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HmacScheme {
    pub header: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub prefix: String,
    pub timestamp_header: Option<String>,
    /// What is signed, e.g. `{timestamp}.{body}`.
    pub payload: PayloadTemplate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verify {
    pub kind: VerifyKind,
    pub secrets: Vec<Secret>,
    #[serde(serialize_with = "ser::duration")]
    pub tolerance: Duration,
    /// GitHub only: also accept `X-Hub-Signature` (SHA-1). Off: no downgrade.
    pub allow_sha1: bool,
    /// Twilio only: the URL the provider was configured with.
    pub public_url: Option<String>,
    pub hmac: Option<HmacScheme>,
}

/// Where a value is read from: a JSON pointer into the body or a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Pointer(String),
    Header(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PriorityRules {
    pub high: Vec<Glob>,
    pub low: Vec<Glob>,
    pub wedding_day: Option<WeddingDay>,
}

/// `priority.wedding_day`: where the event's wedding date is, and in which
/// zone "today" is reckoned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeddingDay {
    /// A JSON pointer to a `YYYY-MM-DD` or RFC 3339 value.
    pub date: String,
    /// An IANA zone name, checked at load.
    pub timezone: String,
    #[serde(serialize_with = "ser::duration")]
    pub within: Duration,
}

impl WeddingDay {
    /// The rule, ready to match; the zone was checked when the config loaded.
    pub fn rule(&self) -> crate::wedding_day::WeddingDayRule {
        crate::wedding_day::WeddingDayRule {
            zone: jiff::tz::TimeZone::get(&self.timezone).unwrap_or(jiff::tz::TimeZone::UTC),
            within: self.within,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub events: Vec<Glob>,
    pub targets: Vec<String>,
}

impl Route {
    /// Whether events of `event_type` go to this route's targets.
    pub fn takes(&self, event_type: &str) -> bool {
        self.events.iter().any(|glob| glob.matches(event_type))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookDelivery {
    #[serde(serialize_with = "ser::display")]
    pub path: http::uri::PathAndQuery,
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    #[serde(serialize_with = "ser::duration")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ack {
    #[serde(serialize_with = "ser::status")]
    pub status: http::StatusCode,
    #[serde(serialize_with = "ser::header_value")]
    pub content_type: http::HeaderValue,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub signing_secret: Option<Secret>,
    pub workers: u32,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            signing_secret: None,
            workers: 32,
        }
    }
}

pub(super) const WEBHOOK_KEYS: &[&str] = &[
    "path",
    "verify",
    "max_body",
    "event_id",
    "event_type",
    "context",
    "priority",
    "routes",
    "delivery",
    "dedup_window",
    "ack",
    "recover",
];

/// What only a provider's webhook has: an app's own events are not signed
/// and take no custom answer.
const WEBHOOK_ONLY_KEYS: &[&str] = &["verify", "ack", "recover"];

/// The keys of `events.<name>`: a webhook's, without `verify` and `ack`.
pub(super) fn published_keys() -> Vec<&'static str> {
    WEBHOOK_KEYS
        .iter()
        .filter(|key| !WEBHOOK_ONLY_KEYS.contains(key))
        .copied()
        .collect()
}

pub fn decode_webhook(
    d: &mut Decoder,
    name: &str,
    node: &Node,
    upstreams: &[String],
) -> Option<Webhook> {
    decode_source(d, name, node, upstreams, false)
}

/// `events.<name>`: an event the app publishes; a webhook without a
/// signature to check.
pub fn decode_published(
    d: &mut Decoder,
    name: &str,
    node: &Node,
    upstreams: &[String],
) -> Option<Webhook> {
    decode_source(d, name, node, upstreams, true)
}

fn decode_source(
    d: &mut Decoder,
    name: &str,
    node: &Node,
    upstreams: &[String],
    published: bool,
) -> Option<Webhook> {
    let f = if published {
        d.fields(node, &published_keys())?
    } else {
        d.fields(node, WEBHOOK_KEYS)?
    };
    let path = d
        .required(&f, "path")
        .and_then(|n| d.parsed(&n, plain_path));
    let verify = if published {
        Some(Verify {
            kind: VerifyKind::App,
            secrets: Vec::new(),
            tolerance: Duration::ZERO,
            allow_sha1: false,
            public_url: None,
            hmac: None,
        })
    } else {
        d.required(&f, "verify").and_then(|n| decode_verify(d, &n))
    };
    let max_body = match f.get("max_body") {
        Some(n) => d.size(&n).filter(|size| {
            let ok = (1..=64 << 20).contains(size);
            if !ok {
                d.error(&n.path, "must be between 1B and 64MiB");
            }
            ok
        }),
        None => Some(1 << 20),
    };
    let event_id = f.get("event_id").and_then(|n| d.parsed(&n, field));
    let event_type = f.get("event_type").and_then(|n| d.parsed(&n, field));
    let context = match f.get("context") {
        Some(n) => d
            .entries(&n)
            .into_iter()
            .map(|(k, v)| d.parsed(&v, field).map(|f| (k, f)))
            .collect::<Option<Vec<_>>>(),
        None => Some(Vec::new()),
    };
    let priority = d.or(&f, "priority", PriorityRules::default(), |d, n| {
        decode_priority(d, n)
    });
    let routes = d
        .required(&f, "routes")
        .and_then(|n| d.list(&n, |d, item| decode_route(d, item, upstreams)));
    let delivery = d.or(&f, "delivery", default_delivery(name), |d, n| {
        decode_delivery(d, n, name)
    });
    let dedup_window = positive_duration(d, &f, "dedup_window", Duration::from_secs(72 * 3600))
        .filter(|w| {
            let ok = *w <= Duration::from_secs(30 * 86400);
            if !ok {
                d.error(&f.path.key("dedup_window"), "must be at most 30d");
            }
            ok
        });
    let ack = f.get("ack").and_then(|n| decode_ack(d, &n));
    let recover = match f.get("recover") {
        Some(n) => Some(decode_recover(d, &n, verify.as_ref().map(|v| v.kind))?),
        None => None,
    };
    Some(Webhook {
        name: name.into(),
        path: path?,
        verify: verify?,
        max_body: max_body?,
        event_id,
        event_type,
        context: context?,
        priority: priority?,
        routes: routes?,
        delivery: delivery?,
        dedup_window: dedup_window?,
        ack,
        recover,
    })
}

/// `recover`: which API, through which egress service, how often and how
/// far back. That the service exists is checked with the whole config.
fn decode_recover(d: &mut Decoder, node: &Node, verify: Option<VerifyKind>) -> Option<Recover> {
    let f = d.fields(
        node,
        &[
            "kind",
            "service",
            "every",
            "overlap",
            "lookback",
            "api_version",
            "hook",
        ],
    )?;
    let kind = d.required(&f, "kind").and_then(|n| {
        d.choice(
            &n,
            &[
                ("stripe_events", RecoverKind::StripeEvents),
                ("github_deliveries", RecoverKind::GithubDeliveries),
            ],
        )
    });
    if let (Some(kind), Some(verify)) = (kind, verify) {
        if verify != kind.verified_by() {
            d.error(
                &f.path.key("kind"),
                format!(
                    "{} recovers a webhook verified with kind: {}",
                    kind.as_str(),
                    kind.verified_by().as_str()
                ),
            );
        }
    }
    let hook = match (kind, f.get("hook")) {
        (Some(RecoverKind::GithubDeliveries), Some(n)) => d.parsed(&n, github_hook).map(Some),
        (Some(RecoverKind::GithubDeliveries), None) => {
            d.error(
                &f.path.key("hook"),
                "is required with github_deliveries: repos/OWNER/REPO/hooks/ID, orgs/ORG/hooks/ID or app",
            );
            None
        }
        (_, Some(n)) => {
            d.error(&n.path, "only github_deliveries has a hook");
            None
        }
        (_, None) => Some(None),
    };
    if let (Some(RecoverKind::GithubDeliveries), Some(n)) = (kind, f.get("api_version")) {
        d.error(&n.path, "only stripe_events has an api_version");
    }
    let service = d
        .required(&f, "service")
        .and_then(|n| d.non_empty_string(&n));
    let every = positive_duration(d, &f, "every", Duration::from_secs(600)).filter(|every| {
        let ok = *every >= Duration::from_secs(10);
        if !ok {
            d.error(
                &f.path.key("every"),
                "must be at least 10s (each run calls the provider's API)",
            );
        }
        ok
    });
    let overlap = match f.get("overlap") {
        Some(n) => d.duration(&n),
        None => Some(Duration::from_secs(600)),
    };
    let lookback = positive_duration(d, &f, "lookback", Duration::from_secs(72 * 3600));
    let api_version = f.get("api_version").and_then(|n| d.non_empty_string(&n));
    let kind = kind?;
    Some(Recover {
        kind,
        service: service?,
        every: every?,
        overlap: overlap?,
        // Never further back than the provider keeps events.
        lookback: lookback?.min(kind.retention()),
        api_version,
        hook: hook?,
    })
}

/// `hook`: which GitHub hook's deliveries, as the API path under which
/// they are listed.
fn github_hook(text: &str) -> Result<String, ValueError> {
    let name = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let id = |part: &str| {
        !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit())
    };
    let parts: Vec<&str> = text.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["app"] => Ok("/app/hook".into()),
        ["repos", owner, repo, "hooks", hook] if name(owner) && name(repo) && id(hook) => {
            Ok(format!("/repos/{owner}/{repo}/hooks/{hook}"))
        }
        ["orgs", org, "hooks", hook] if name(org) && id(hook) => {
            Ok(format!("/orgs/{org}/hooks/{hook}"))
        }
        _ => Err(ValueError::GithubHook(text.into())),
    }
}

pub(super) const VERIFY_KEYS: &[&str] =
    &["kind", "secrets", "tolerance", "allow_sha1", "public_url"];
/// Keys of the generic `hmac` kind only.
pub(super) const HMAC_KEYS: &[&str] = &[
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "timestamp_header",
    "payload",
];

fn decode_verify(d: &mut Decoder, node: &Node) -> Option<Verify> {
    let allowed: Vec<&str> = VERIFY_KEYS.iter().chain(HMAC_KEYS).copied().collect();
    let f = d.fields(node, &allowed)?;
    let kind = d.required(&f, "kind").and_then(|n| {
        d.choice(
            &n,
            &[
                ("stripe", VerifyKind::Stripe),
                ("standard", VerifyKind::Standard),
                ("github", VerifyKind::Github),
                ("shopify", VerifyKind::Shopify),
                ("slack", VerifyKind::Slack),
                ("twilio", VerifyKind::Twilio),
                ("hmac", VerifyKind::Hmac),
            ],
        )
    })?;
    let secrets = d.required(&f, "secrets").and_then(|n| {
        let secrets = d.list(&n, |d, item| signing_secret(d, item, kind))?;
        if secrets.is_empty() {
            d.error(&n.path, "must list at least one secret");
            return None;
        }
        Some(secrets)
    });
    let tolerance = positive_duration(d, &f, "tolerance", Duration::from_secs(300));
    let allow_sha1 = match f.get("allow_sha1") {
        Some(n) if kind == VerifyKind::Github => d.boolean(&n),
        Some(n) => {
            d.error(&n.path, "only applies to kind: github");
            None
        }
        None => Some(false),
    };
    let public_url = match (kind, f.get("public_url")) {
        (VerifyKind::Twilio, Some(n)) => d.parsed(&n, |url| {
            if url.starts_with("https://") || url.starts_with("http://") {
                Ok(Some(url.to_string()))
            } else {
                Err(ValueError::PublicUrl(url.into()))
            }
        }),
        (VerifyKind::Twilio, None) => {
            d.error(&f.path.key("public_url"), "is required for kind: twilio (Twilio signs the URL it was configured with; the request's Host is never trusted)");
            None
        }
        (_, Some(n)) => {
            d.error(&n.path, "only applies to kind: twilio");
            None
        }
        (_, None) => Some(None),
    };
    let hmac = if kind == VerifyKind::Hmac {
        decode_hmac(d, &f).map(Some)
    } else {
        for key in HMAC_KEYS.iter().filter(|k| f.has(k)) {
            d.error(&f.path.key(key), "only applies to kind: hmac");
        }
        Some(None)
    };
    Some(Verify {
        kind,
        secrets: secrets?,
        tolerance: tolerance?,
        allow_sha1: allow_sha1?,
        public_url: public_url?,
        hmac: hmac?,
    })
}

fn decode_hmac(d: &mut Decoder, f: &super::decode::Fields) -> Option<HmacScheme> {
    let header = d
        .required(f, "header")
        .and_then(|n| d.parsed(&n, header_name));
    let algorithm = d.choice_or(
        f,
        "algorithm",
        &[
            ("sha1", HmacAlgorithm::Sha1),
            ("sha256", HmacAlgorithm::Sha256),
            ("sha512", HmacAlgorithm::Sha512),
        ],
        HmacAlgorithm::Sha256,
    );
    let encoding = d.choice_or(
        f,
        "encoding",
        &[
            ("hex", SignatureEncoding::Hex),
            ("base64", SignatureEncoding::Base64),
        ],
        SignatureEncoding::Hex,
    );
    let prefix = f
        .get("prefix")
        .and_then(|n| d.string(&n))
        .unwrap_or_default();
    let timestamp_header = f
        .get("timestamp_header")
        .and_then(|n| d.parsed(&n, header_name));
    let payload = match f.get("payload") {
        Some(n) => d.parsed(&n, PayloadTemplate::parse),
        None => PayloadTemplate::parse("{body}").ok(),
    };
    let payload = payload?;
    if payload.uses_timestamp() && timestamp_header.is_none() {
        d.error(
            &f.path.key("timestamp_header"),
            "is required when payload contains {timestamp}",
        );
        return None;
    }
    Some(HmacScheme {
        header: header?,
        algorithm: algorithm?,
        encoding: encoding?,
        prefix,
        timestamp_header,
        payload,
    })
}

/// A secret whose key bytes, decoded as `kind` reads them, are long enough.
fn signing_secret(d: &mut Decoder, node: &Node, kind: VerifyKind) -> Option<Secret> {
    let secret = d.secret(node)?;
    match secret_key_bytes(kind, secret.expose()) {
        Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => Some(secret),
        Ok(bytes) => {
            let message = format!(
                "secret is {} bytes long; at least {MIN_SECRET_BYTES} are required",
                bytes.len()
            );
            d.error(&node.path, message);
            None
        }
        Err(error) => {
            d.error(&node.path, error.to_string());
            None
        }
    }
}

/// The key bytes a secret stands for: Standard Webhooks secrets are base64
/// after an optional `whsec_` prefix; every other scheme uses the string itself.
pub fn secret_key_bytes(kind: VerifyKind, secret: &str) -> Result<Vec<u8>, SecretError> {
    match kind {
        VerifyKind::Standard => {
            let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| SecretError::NotBase64)
        }
        _ => Ok(secret.as_bytes().to_vec()),
    }
}

fn field(text: &str) -> Result<Field, ValueError> {
    if let Some(name) = text.strip_prefix("header:") {
        return header_name(name).map(Field::Header);
    }
    if text.starts_with('/') {
        return Ok(Field::Pointer(text.to_string()));
    }
    Err(ValueError::Field(text.into()))
}

fn decode_priority(d: &mut Decoder, node: &Node) -> Option<PriorityRules> {
    let f = d.fields(node, &["high", "low", "wedding_day"])?;
    let globs = |d: &mut Decoder, key: &str| match f.get(key) {
        Some(n) => d.list(&n, glob),
        None => Some(Vec::new()),
    };
    let high = globs(d, "high");
    let low = globs(d, "low");
    let wedding_day = match f.get("wedding_day") {
        Some(n) => decode_wedding_day(d, &n).map(Some),
        None => Some(None),
    };
    Some(PriorityRules {
        high: high?,
        low: low?,
        wedding_day: wedding_day?,
    })
}

fn decode_wedding_day(d: &mut Decoder, node: &Node) -> Option<WeddingDay> {
    let f = d.fields(node, &["date", "timezone", "within"])?;
    let date = d.required(&f, "date").and_then(|n| {
        d.parsed(&n, |text| match field(text) {
            Ok(Field::Pointer(pointer)) => Ok(pointer),
            _ => Err(ValueError::Field(text.into())),
        })
    });
    let timezone = match f.get("timezone") {
        Some(n) => d.non_empty_string(&n).filter(|name| {
            let ok = jiff::tz::TimeZone::get(name).is_ok();
            if !ok {
                d.error(
                    &n.path,
                    format!("{name:?} is not an IANA time zone (e.g. Europe/London)"),
                );
            }
            ok
        }),
        None => Some("UTC".to_string()),
    };
    let within = d.or(&f, "within", Duration::from_secs(86_400), |d, n| {
        d.duration(n).filter(|w| {
            let ok = *w <= Duration::from_secs(30 * 86_400);
            if !ok {
                d.error(&n.path, "must be at most 30d");
            }
            ok
        })
    });
    Some(WeddingDay {
        date: date?,
        timezone: timezone?,
        within: within?,
    })
}

fn glob(d: &mut Decoder, node: &Node) -> Option<Glob> {
    d.non_empty_string(node).map(|text| Glob::new(&text))
}

fn decode_route(d: &mut Decoder, node: &Node, upstreams: &[String]) -> Option<Route> {
    let f = d.fields(node, &["events", "targets"])?;
    let events = d.required(&f, "events").and_then(|n| d.list(&n, glob));
    let targets = d.required(&f, "targets").and_then(|n| {
        let targets = d.list(&n, |d, item| {
            let target = d.non_empty_string(item)?;
            if !upstreams.contains(&target) {
                d.error(
                    &item.path,
                    format!("target {}", unknown_group(&target, upstreams)),
                );
                return None;
            }
            Some(target)
        })?;
        if targets.is_empty() {
            d.error(&n.path, "must name at least one upstream");
            return None;
        }
        Some(targets)
    });
    Some(Route {
        events: events?,
        targets: targets?,
    })
}

pub fn default_delivery(name: &str) -> WebhookDelivery {
    WebhookDelivery {
        // Names are letters, digits, '-' and '_': always a valid path.
        path: request_path(&format!("/events/{name}"))
            .unwrap_or_else(|_| PathAndQuery::from_static("/events")),
        timeout: Duration::from_secs(10),
        max_attempts: 10,
        backoff: Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
        },
        max_age: Duration::from_secs(72 * 3600),
    }
}

fn decode_delivery(d: &mut Decoder, node: &Node, name: &str) -> Option<WebhookDelivery> {
    let defaults = default_delivery(name);
    let f = d.fields(
        node,
        &["path", "timeout", "max_attempts", "backoff", "max_age"],
    )?;
    let path = d.or(&f, "path", defaults.path, |d, n| d.parsed(n, request_path));
    let timeout = positive_duration(d, &f, "timeout", defaults.timeout);
    let max_attempts = d.or(&f, "max_attempts", defaults.max_attempts, |d, n| {
        d.integer(n, 1, 1000).map(|v| v as u32)
    });
    let (initial, max) = (defaults.backoff.initial, defaults.backoff.max);
    let backoff = d.or(&f, "backoff", defaults.backoff, |d, n| {
        decode_backoff(d, n, initial, max)
    });
    let max_age = positive_duration(d, &f, "max_age", defaults.max_age);
    Some(WebhookDelivery {
        path: path?,
        timeout: timeout?,
        max_attempts: max_attempts?,
        backoff: backoff?,
        max_age: max_age?,
    })
}

fn decode_ack(d: &mut Decoder, node: &Node) -> Option<Ack> {
    let f = d.fields(node, &["status", "content_type", "body"])?;
    let status = match f.get("status") {
        Some(n) => d
            .integer(&n, 200, 299)
            .and_then(|v| http::StatusCode::from_u16(v as u16).ok()),
        None => Some(http::StatusCode::OK),
    };
    let content_type = match f.get("content_type") {
        Some(n) => d.parsed(&n, |text| match header_value(text) {
            Ok(value) if !text.is_empty() => Ok(value),
            _ => Err(ValueError::ContentType(text.into())),
        }),
        None => Some(http::HeaderValue::from_static("text/plain")),
    };
    let body = f.get("body").and_then(|n| d.string(&n)).unwrap_or_default();
    Some(Ack {
        status: status?,
        content_type: content_type?,
        body,
    })
}

pub fn decode_delivery_section(d: &mut Decoder, node: &Node) -> Option<Delivery> {
    let f = d.fields(node, &["signing_secret", "workers"])?;
    let signing_secret = match f.get("signing_secret") {
        // Deliveries are re-signed with Standard Webhooks, so the same key rules apply.
        Some(n) => Some(signing_secret(d, &n, VerifyKind::Standard)?),
        None => None,
    };
    let workers = match f.get("workers") {
        Some(n) => d.integer(&n, 1, 4096).map(|v| v as u32)?,
        None => 32,
    };
    Some(Delivery {
        signing_secret,
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_secrets_are_measured_after_base64_decoding() {
        let bytes = secret_key_bytes(
            VerifyKind::Standard,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        )
        .unwrap();
        assert_eq!(bytes.len(), 24);
        assert!(secret_key_bytes(VerifyKind::Standard, "whsec_not base64!").is_err());
        assert_eq!(
            secret_key_bytes(VerifyKind::Stripe, "whsec_abc").unwrap(),
            b"whsec_abc"
        );
    }
}
