//! What the ack path reads from a verified webhook: the event id (the dedup
//! key), its type, the context values forwarded to targets, its priority
//! and its targets. Per-kind defaults follow where each provider puts them
//! (webhook-schemes.md §1.8); `event_id`, `event_type` and `context` take a
//! JSON pointer or `header:Name`. Without an id the body's SHA-256 is the
//! id, so a replayed body still deduplicates.

use crate::names::UpstreamName;
use http::HeaderMap;
use serde_json::Value;

use crate::config::webhooks::{Field, VerifyKind, Webhook};
use crate::event::{EventMeta, Priority};
use crate::signing::mac::{encode_hex, sha256};
use crate::webhooks::verify::SignedIdentity;

/// The longest id an app's event keeps as it is.
const MAX_APP_ID_BYTES: usize = 255;

/// The parts of a request the defaults look in.
struct Sources<'a> {
    headers: &'a HeaderMap,
    json: Option<Value>,
    /// The body, for `json_pointer` when serde_json could not read it.
    body: &'a [u8],
    form: Vec<(String, String)>,
}

impl Sources<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn pointer(&self, pointer: &str) -> Option<String> {
        let Some(json) = self.json.as_ref() else {
            // A signed body serde_json cannot read whole (nested past 128
            // levels, invalid UTF-8, 1e400, a lone surrogate) still has
            // its id, type and context: never lose its routing silently.
            return super::json_pointer::scalar_at(self.body, pointer);
        };
        match json.pointer(pointer)? {
            Value::String(text) if !text.is_empty() => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        }
    }

    fn form(&self, name: &str) -> Option<String> {
        self.form
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.clone())
    }

    fn field(&self, field: &Field) -> Option<String> {
        match field {
            Field::Pointer(pointer) => self.pointer(pointer),
            Field::Header(name) => self.header(name),
        }
    }
}

/// Reads a verified request; `signed` is what its signature vouched for.
pub fn extract(
    webhook: &Webhook,
    headers: &HeaderMap,
    body: &[u8],
    signed: &SignedIdentity,
) -> EventMeta {
    extract_all(webhook, headers, body, signed).meta
}

/// What [`extract_all`] reads: the event's metadata, and the wedding date
/// its `priority.wedding_day` points at (a JSON string), read from the
/// document already parsed for the rest.
pub struct Extracted {
    pub meta: EventMeta,
    pub wedding_date: Option<String>,
}

pub fn extract_all(
    webhook: &Webhook,
    headers: &HeaderMap,
    body: &[u8],
    signed: &SignedIdentity,
) -> Extracted {
    let is_form = crate::webhooks::verify::twilio::is_form(headers);
    let sources = Sources {
        headers,
        // Whatever the content type claims (curl sends JSON as a form by
        // default), a body that parses as JSON is read as JSON.
        json: serde_json::from_slice(body).ok(),
        body,
        form: if is_form {
            form_urlencoded::parse(body).into_owned().collect()
        } else {
            Vec::new()
        },
    };
    let kind = webhook.verify.kind;
    let (id, dedup) = identity(webhook, &sources, body, signed);
    let event_type = match &webhook.event_type {
        Some(field) => sources.field(field),
        None => default_type(kind, &sources),
    }
    .unwrap_or_default();
    let context = webhook
        .context
        .iter()
        .filter_map(|(key, field)| Some((key.clone(), sources.field(field)?)))
        .collect();
    let priority = if webhook.priority.high.iter().any(|g| g.matches(&event_type)) {
        Priority::High
    } else if webhook.priority.low.iter().any(|g| g.matches(&event_type)) {
        Priority::Low
    } else {
        Priority::Normal
    };
    let mut targets: Vec<UpstreamName> = Vec::new();
    for route in &webhook.routes {
        if route.takes(&event_type) {
            for target in &route.targets {
                if !targets.iter().any(|t| t == target) {
                    targets.push(target.as_str().into());
                }
            }
        }
    }
    let wedding_date = webhook
        .priority
        .wedding_day
        .as_ref()
        .and_then(|rule| sources.pointer(&rule.date));
    Extracted {
        meta: EventMeta {
            id: id.into(),
            dedup,
            event_type,
            context,
            priority,
            targets,
            trace: None,
            recovered: false,
        },
        wedding_date,
    }
}

/// The event's id and its dedup key. The id is the provider's (configured
/// field or per-kind default), else the body's digest. It deduplicates
/// itself only when signed bytes carry it: a value of the (signed) body,
/// or Standard Webhooks' signed id. An id from a header outside the
/// signature deduplicates by what the signature covers instead.
fn identity(
    webhook: &Webhook,
    sources: &Sources<'_>,
    body: &[u8],
    signed: &SignedIdentity,
) -> (String, String) {
    let kind = webhook.verify.kind;
    let signed_id = signed.id.clone().filter(|id| !id.is_empty());
    if kind == VerifyKind::App {
        // The pod's own app is trusted with its ids: the configured field,
        // else its Idempotency-Key, else a new id (no dedup possible). An id
        // longer than a key should be stands as its SHA-256: still the same
        // for the same id, and bounded.
        let id = webhook
            .event_id
            .as_ref()
            .and_then(|field| sources.field(field))
            .or(signed_id)
            .map(|id| {
                if id.len() > MAX_APP_ID_BYTES {
                    format!("sha256:{}", encode_hex(&sha256(id.as_bytes())))
                } else {
                    id
                }
            })
            .unwrap_or_else(|| format!("evt_{}", uuid::Uuid::new_v4().simple()));
        return (id.clone(), id);
    }
    let (found, id_is_signed) = match &webhook.event_id {
        Some(Field::Pointer(pointer)) => (sources.pointer(pointer), true),
        Some(Field::Header(name)) => (sources.header(name), false),
        None if kind == VerifyKind::Standard => (signed_id.clone(), true),
        None => (
            default_id(kind, sources),
            matches!(kind, VerifyKind::Stripe | VerifyKind::Slack),
        ),
    };
    let body_digest = || format!("sha256:{}", encode_hex(&sha256(body)));
    match found.filter(|id| !id.is_empty()) {
        Some(id) if id_is_signed => (id.clone(), id),
        Some(id) => {
            let dedup = match (signed_id, &signed.digest) {
                (Some(signed_id), _) => signed_id,
                (None, Some(digest)) => format!("sha256:{}", encode_hex(digest)),
                (None, None) => body_digest(),
            };
            (id, dedup)
        }
        None => (body_digest(), body_digest()),
    }
}

fn default_id(kind: VerifyKind, sources: &Sources<'_>) -> Option<String> {
    match kind {
        VerifyKind::Stripe => sources.pointer("/id"),
        // The id of the header set that verified (see `extract`), never
        // whichever id header comes first.
        VerifyKind::Standard => None,
        VerifyKind::Github => sources.header("x-github-delivery"),
        VerifyKind::Shopify => sources
            .header("x-shopify-webhook-id")
            .or_else(|| sources.header("shopify-webhook-id")),
        VerifyKind::Slack => sources.pointer("/event_id"),
        VerifyKind::Twilio => sources.header("i-twilio-idempotency-token").or_else(|| {
            // A status callback: one event per (message, status).
            let sid = sources
                .form("MessageSid")
                .or_else(|| sources.form("CallSid"))?;
            let status = sources
                .form("MessageStatus")
                .or_else(|| sources.form("CallStatus"))
                .unwrap_or_default();
            Some(format!("{sid}:{status}"))
        }),
        VerifyKind::Hmac | VerifyKind::App => None,
    }
}

fn default_type(kind: VerifyKind, sources: &Sources<'_>) -> Option<String> {
    match kind {
        VerifyKind::Stripe | VerifyKind::Standard | VerifyKind::App => sources.pointer("/type"),
        VerifyKind::Github => {
            let event = sources.header("x-github-event")?;
            Some(match sources.pointer("/action") {
                Some(action) => format!("{event}.{action}"),
                None => event,
            })
        }
        VerifyKind::Shopify => sources
            .header("x-shopify-topic")
            .or_else(|| sources.header("shopify-topic")),
        VerifyKind::Slack => sources
            .pointer("/event/type")
            .or_else(|| sources.pointer("/type")),
        VerifyKind::Twilio => sources
            .form("MessageStatus")
            .or_else(|| sources.form("CallStatus"))
            .or_else(|| sources.form("SmsStatus")),
        VerifyKind::Hmac => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::config::pattern::Glob;
    use crate::config::services::Backoff;
    use crate::config::webhooks::{PriorityRules, Route, Verify, WebhookDelivery};
    use crate::config::Secret;
    use crate::webhooks::verify::testing::headers;

    fn webhook(kind: VerifyKind) -> Webhook {
        Webhook {
            name: "test".into(),
            path: "/webhooks/test".into(),
            verify: Verify {
                kind,
                secrets: vec![Secret::new("0123456789abcdef")],
                tolerance: Duration::from_secs(300),
                allow_sha1: false,
                public_url: None,
                hmac: None,
            },
            max_body: 1 << 20,
            event_id: None,
            event_type: None,
            context: Vec::new(),
            priority: PriorityRules::default(),
            routes: Vec::new(),
            delivery: WebhookDelivery {
                path: http::uri::PathAndQuery::from_static("/"),
                timeout: Duration::from_secs(10),
                max_attempts: 10,
                backoff: Backoff {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(60),
                },
                max_age: Duration::from_secs(86_400),
            },
            dedup_window: Duration::from_secs(72 * 3600),
            ack: None,
            recover: None,
        }
    }

    #[test]
    fn stripe_defaults_context_priority_and_fan_out() {
        let mut stripe = webhook(VerifyKind::Stripe);
        stripe.context = vec![(
            "wedding_id".into(),
            Field::Pointer("/data/object/metadata/wedding_id".into()),
        )];
        stripe.priority = PriorityRules {
            high: vec![Glob::new("payment_intent.succeeded")],
            low: vec![Glob::new("*.updated")],
            wedding_day: None,
        };
        stripe.routes = vec![
            Route {
                events: vec![Glob::new("payment_intent.*")],
                targets: vec!["notify".into(), "analytics".into()],
            },
            Route {
                events: vec![Glob::new("*")],
                targets: vec!["analytics".into(), "audit".into()],
            },
        ];
        let body = br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"metadata":{"wedding_id":"w-42"}}}}"#;
        let meta = extract(
            &stripe,
            &headers(&[("content-type", "application/json")]),
            body,
            &unsigned(),
        );
        assert_eq!(meta.id, "evt_1");
        assert_eq!(meta.event_type, "payment_intent.succeeded");
        assert_eq!(
            meta.context,
            [("wedding_id".to_string(), "w-42".to_string())]
        );
        assert_eq!(meta.priority, Priority::High);
        assert_eq!(meta.targets, ["notify", "analytics", "audit"]);

        let updated = br#"{"id":"evt_2","type":"customer.updated"}"#;
        let as_form = [("content-type", "application/x-www-form-urlencoded")];
        let meta = extract(&stripe, &headers(&as_form), updated, &unsigned());
        assert_eq!(
            meta.id, "evt_2",
            "JSON is JSON whatever the content type says"
        );
        assert_eq!((meta.priority, meta.targets.len()), (Priority::Low, 2));
        assert!(
            meta.context.is_empty(),
            "absent context values are left out"
        );
    }

    #[test]
    fn per_kind_default_ids_and_types() {
        // (kind, headers, body, expected id, expected type)
        type Case<'a> = (
            VerifyKind,
            Vec<(&'a str, &'a str)>,
            &'a [u8],
            &'a str,
            &'a str,
        );
        let cases: [Case; 6] = [
            (
                VerifyKind::Standard,
                vec![("svix-id", "msg_0"), ("webhook-id", "msg_unsigned")],
                br#"{"type":"email.delivered"}"#,
                "msg_1",
                "email.delivered",
            ),
            (
                VerifyKind::Github,
                vec![
                    ("x-github-delivery", "guid-1"),
                    ("x-github-event", "issues"),
                ],
                br#"{"action":"opened"}"#,
                "guid-1",
                "issues.opened",
            ),
            (
                VerifyKind::Github,
                vec![("x-github-delivery", "guid-2"), ("x-github-event", "push")],
                b"{}",
                "guid-2",
                "push",
            ),
            (
                VerifyKind::Shopify,
                vec![
                    ("x-shopify-webhook-id", "w-1"),
                    ("x-shopify-topic", "orders/create"),
                ],
                b"{}",
                "w-1",
                "orders/create",
            ),
            (
                VerifyKind::Slack,
                vec![],
                br#"{"event_id":"Ev1","type":"event_callback","event":{"type":"app_mention"}}"#,
                "Ev1",
                "app_mention",
            ),
            (
                VerifyKind::Twilio,
                vec![("content-type", "application/x-www-form-urlencoded")],
                b"MessageSid=SM1&MessageStatus=delivered",
                "SM1:delivered",
                "delivered",
            ),
        ];
        for (kind, pairs, body, id, event_type) in cases {
            // Standard Webhooks' id is the one its verified header set signed.
            let signed = SignedIdentity {
                id: (kind == VerifyKind::Standard).then(|| "msg_1".to_string()),
                digest: None,
            };
            let meta = extract(&webhook(kind), &headers(&pairs), body, &signed);
            assert_eq!(
                (meta.id.as_str(), meta.event_type.as_str()),
                (id, event_type),
                "{kind:?}"
            );
        }
        let token = extract(
            &webhook(VerifyKind::Twilio),
            &headers(&[("i-twilio-idempotency-token", "tok-1")]),
            b"",
            &unsigned(),
        );
        assert_eq!(token.id, "tok-1");
    }

    #[test]
    fn overrides_and_the_body_hash_fallback() {
        let mut generic = webhook(VerifyKind::Hmac);
        let meta = extract(&generic, &headers(&[]), b"payload", &unsigned());
        assert_eq!(
            meta.id,
            format!("sha256:{}", encode_hex(&sha256(b"payload")))
        );
        assert_eq!(meta.event_type, "");
        generic.event_id = Some(Field::Header("x-event-id".into()));
        generic.event_type = Some(Field::Pointer("/kind".into()));
        let meta = extract(
            &generic,
            &headers(&[("x-event-id", "e-9")]),
            br#"{"kind":"booking.confirmed"}"#,
            &unsigned(),
        );
        assert_eq!(
            (meta.id.as_str(), meta.event_type.as_str()),
            ("e-9", "booking.confirmed")
        );
        assert!(meta.targets.is_empty(), "no route matched: unrouted");
        assert_eq!(
            meta.dedup,
            format!(
                "sha256:{}",
                encode_hex(&sha256(br#"{"kind":"booking.confirmed"}"#))
            ),
            "an id from an unsigned header never deduplicates"
        );
    }

    fn unsigned() -> SignedIdentity {
        SignedIdentity::default()
    }

    #[test]
    fn an_id_header_outside_the_signature_never_changes_identity() {
        let body = br#"{"action":"opened"}"#;
        let github = webhook(VerifyKind::Github);
        let first = extract(
            &github,
            &headers(&[("x-github-delivery", "a")]),
            body,
            &unsigned(),
        );
        let resent = extract(
            &github,
            &headers(&[("x-github-delivery", "b")]),
            body,
            &unsigned(),
        );
        assert_eq!(
            (first.id.as_str(), resent.id.as_str()),
            ("a", "b"),
            "x-event-id stays the provider's"
        );
        assert_eq!(first.dedup, resent.dedup, "one event");
        let signed = SignedIdentity {
            id: Some("msg_signed".into()),
            digest: None,
        };
        let standard = extract(
            &webhook(VerifyKind::Standard),
            &headers(&[("webhook-id", "msg_forged")]),
            b"{}",
            &signed,
        );
        assert_eq!(
            (standard.id.as_str(), standard.dedup.as_str()),
            ("msg_signed", "msg_signed")
        );
        let stripe = extract(
            &webhook(VerifyKind::Stripe),
            &headers(&[]),
            br#"{"id":"evt_1"}"#,
            &unsigned(),
        );
        assert_eq!(stripe.dedup, "evt_1", "Stripe's id is in the signed body");
    }

    #[test]
    fn a_twilio_form_reads_the_same_whatever_the_content_type_case() {
        let twilio = webhook(VerifyKind::Twilio);
        let body = b"MessageSid=SM1&MessageStatus=sent";
        let lower = extract(
            &twilio,
            &headers(&[("content-type", "application/x-www-form-urlencoded")]),
            body,
            &unsigned(),
        );
        let mixed = extract(
            &twilio,
            &headers(&[("content-type", "Application/X-WWW-Form-Urlencoded")]),
            body,
            &unsigned(),
        );
        assert_eq!(lower.id, "SM1:sent");
        assert_eq!((lower.id, lower.dedup), (mixed.id, mixed.dedup));
    }

    #[test]
    fn an_apps_event_id_is_its_field_or_key_bounded_else_new() {
        let mut app = webhook(VerifyKind::App);
        app.event_id = Some(Field::Pointer("/event_id".into()));
        let meta = extract(&app, &headers(&[]), br#"{"event_id":"pay-1"}"#, &unsigned());
        assert_eq!((meta.id.as_str(), meta.dedup.as_str()), ("pay-1", "pay-1"));
        let keyed = SignedIdentity {
            id: Some("key-7".into()),
            digest: None,
        };
        let meta = extract(&app, &headers(&[]), b"{}", &keyed);
        assert_eq!(meta.id.as_str(), "key-7");
        let long = format!(r#"{{"event_id":"{}"}}"#, "x".repeat(300));
        let first = extract(&app, &headers(&[]), long.as_bytes(), &unsigned());
        let again = extract(&app, &headers(&[]), long.as_bytes(), &unsigned());
        assert!(
            first.id.starts_with("sha256:") && first.id.len() < 80,
            "{}",
            first.id
        );
        assert_eq!(first.dedup, again.dedup, "the same long id deduplicates");
        let fresh = extract(&app, &headers(&[]), b"{}", &unsigned());
        let other = extract(&app, &headers(&[]), b"{}", &unsigned());
        assert!(fresh.id.starts_with("evt_"));
        assert_ne!(fresh.id, other.id, "no id: each event is new");
    }
}
