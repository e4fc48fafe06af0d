//! The request a target receives: `POST <delivery.path>` with the original
//! body and content type, the contract's `x-*` headers, and Standard
//! Webhooks signatures when `delivery.signing_secret` is set, so internal
//! services verify one scheme whatever the provider.

use http::uri::PathAndQuery;
use pingora::http::RequestHeader;

use crate::signing::standard::Signer;
use crate::store::StoredEvent;

/// What a delivery request is made of, besides its body.
pub struct Delivery<'a> {
    pub path: &'a PathAndQuery,
    /// The Host header: the group's name for its backends.
    pub host: &'a str,
    pub event: &'a StoredEvent,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Unix seconds, for the signature's timestamp.
    pub now_secs: u64,
    /// This attempt's `traceparent`: a child of the span that accepted
    /// the event (none when the event has no trace context).
    pub traceparent: Option<&'a str>,
    /// An operator queued it again: `x-redelivery: true`.
    pub redelivery: bool,
}

/// A header value from text that may hold anything: bytes outside visible
/// ASCII are percent-encoded rather than refused, so an odd event id never
/// blocks a delivery.
fn header_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            safe.push(byte as char);
        } else {
            safe.push_str(&format!("%{byte:02X}"));
        }
    }
    safe
}

/// The request for one attempt. The path was parsed at load and every
/// value is made header-safe, so an error here is a bug, reported as one
/// (the job is dead-lettered `internal_error`), never a panic.
pub fn build(
    delivery: &Delivery<'_>,
    signer: Option<&Signer>,
    body: &[u8],
) -> pingora::Result<RequestHeader> {
    let event = delivery.event;
    let mut request = RequestHeader::build("POST", delivery.path.as_str().as_bytes(), Some(8))?;
    let content_type = event
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), header_safe(delivery.host)),
        // Records come back from the store: even what was a header value
        // once is made safe again, never trusted to be.
        ("content-type".into(), header_safe(content_type)),
        ("x-webhook-source".into(), header_safe(&event.webhook)),
        ("x-event-id".into(), header_safe(&event.id)),
        ("x-delivery-attempt".into(), delivery.attempt.to_string()),
    ];
    if delivery.event.recovered {
        headers.push(("x-webhook-recovered".into(), "true".into()));
    }
    if delivery.redelivery {
        headers.push(("x-redelivery".into(), "true".into()));
    }
    if let Some(traceparent) = delivery.traceparent {
        headers.push(("traceparent".into(), header_safe(traceparent)));
    }
    if !event.event_type.is_empty() {
        headers.push(("x-event-type".into(), header_safe(&event.event_type)));
    }
    for (key, value) in &event.context {
        headers.push((format!("x-{}", key.replace('_', "-")), header_safe(value)));
    }
    if let Some(signer) = signer {
        // The event id is the message id: the same on every attempt, so a
        // receiver's Standard Webhooks library deduplicates retries too.
        let id = format!("{}:{}", event.webhook, event.id);
        headers.extend(
            signer
                .headers(&header_safe(&id), delivery.now_secs, body)
                .map(|(name, value)| (name.to_string(), value)),
        );
    }
    for (name, value) in headers {
        // Every value is visible ASCII by now, and names come from the
        // config's checked keys.
        request.insert_header(name, value)?;
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::verify::{Inbound, Scheme};
    use std::time::Duration;

    fn event() -> StoredEvent {
        StoredEvent {
            webhook: "stripe".into(),
            id: "evt_1".into(),
            event_type: "payment_intent.succeeded".into(),
            content_type: Some("application/json".into()),
            context: vec![("wedding_id".into(), "w-42".into())],
            received_at_ms: 0,
            trace: None,
            targets: Vec::new(),
            priority: None,
            size: 0,
            headers: Vec::new(),
            finished_at_ms: None,
            recovered: false,
        }
    }

    fn header<'a>(request: &'a RequestHeader, name: &str) -> &'a str {
        request.headers.get(name).unwrap().to_str().unwrap()
    }

    #[test]
    fn a_delivery_carries_the_contract_headers() {
        let event = event();
        let path = PathAndQuery::from_static("/events/stripe");
        let delivery = Delivery {
            path: &path,
            host: "127.0.0.1:7001",
            event: &event,
            attempt: 3,
            now_secs: 1_700_000_000,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            redelivery: false,
        };
        let request = build(&delivery, None, b"{}").unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri.path(), "/events/stripe");
        assert_eq!(header(&request, "host"), "127.0.0.1:7001");
        assert_eq!(header(&request, "content-type"), "application/json");
        assert_eq!(header(&request, "x-webhook-source"), "stripe");
        assert_eq!(header(&request, "x-event-id"), "evt_1");
        assert_eq!(header(&request, "x-event-type"), "payment_intent.succeeded");
        assert_eq!(header(&request, "x-delivery-attempt"), "3");
        assert_eq!(header(&request, "x-wedding-id"), "w-42");
        assert!(request.headers.get("webhook-signature").is_none());
    }

    #[test]
    fn a_signed_delivery_verifies_as_standard_webhooks() {
        let key = crate::config::webhooks::secret_key_bytes(
            crate::config::webhooks::VerifyKind::Standard,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        )
        .unwrap();
        let signer = Signer::new(key.clone());
        let verifier = crate::webhooks::verify::standard::Standard {
            keys: vec![key],
            tolerance: Duration::from_secs(300),
        };
        let event = event();
        let now = 1_700_000_000;
        let path = PathAndQuery::from_static("/events");
        let delivery = Delivery {
            path: &path,
            host: "127.0.0.1:7001",
            event: &event,
            attempt: 1,
            now_secs: now,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            redelivery: false,
        };
        let body = br#"{"id":"evt_1"}"#;
        let request = build(&delivery, Some(&signer), body).unwrap();
        assert_eq!(header(&request, "webhook-id"), "stripe:evt_1");
        let inbound = Inbound {
            headers: &request.headers,
            body,
            query: None,
            now,
        };
        assert_eq!(verifier.verify(&inbound), Ok(()));
    }

    #[test]
    fn odd_bytes_in_values_are_percent_encoded() {
        assert_eq!(header_safe("evt\n1%é"), "evt%0A1%25%C3%A9");
    }
}
