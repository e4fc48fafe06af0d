//! One harness per parser of untrusted bytes, shared by the cargo-fuzz
//! targets (`fuzz/`, nightly, coverage-guided) and the property tests
//! below (stable, in `scripts/test`). Each takes raw bytes, reads them as
//! the structured input the parser meets (headers, bodies, queries,
//! config text) and checks what must hold for any input: no panic, and
//! where there is one, the round trip (what a scheme signs, it verifies).
//! Built only for tests and with the `fuzzing` feature.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::pattern::{Glob, PayloadTemplate};
use crate::config::webhooks::{
    Field, HmacAlgorithm, HmacScheme, PriorityRules, Route, SignatureEncoding, VerifyKind, Webhook,
};
use crate::webhooks::verify::{self, Head, Inbound, Scheme};

/// Splits fuzz input into fields at 0xFF bytes, so one byte string reads
/// as several values; missing fields are empty.
pub struct Fields<'a> {
    parts: Vec<&'a [u8]>,
    next: usize,
}

impl<'a> Fields<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            parts: data.split(|b| *b == 0xFF).collect(),
            next: 0,
        }
    }

    pub fn bytes(&mut self) -> &'a [u8] {
        let part = self.parts.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        part
    }

    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    pub fn number(&mut self) -> u64 {
        self.bytes()
            .iter()
            .fold(0u64, |n, b| n.wrapping_mul(251).wrapping_add(u64::from(*b)))
    }

    /// The rest, as (name, value) pairs of whatever parses as a header.
    pub fn headers(&mut self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        while self.next + 1 < self.parts.len() {
            let (name, value) = (self.bytes(), self.bytes());
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        headers
    }
}

const KINDS: [VerifyKind; 7] = [
    VerifyKind::Stripe,
    VerifyKind::Standard,
    VerifyKind::Github,
    VerifyKind::Shopify,
    VerifyKind::Slack,
    VerifyKind::Twilio,
    VerifyKind::Hmac,
];

fn scheme(kind: VerifyKind, payload: &str) -> Box<dyn Scheme> {
    let key = b"fuzzing-secret-0123456789".to_vec();
    let tolerance = Duration::from_secs(300);
    match kind {
        VerifyKind::Stripe => Box::new(verify::stripe::Stripe {
            keys: vec![key],
            tolerance,
        }),
        VerifyKind::Standard => Box::new(verify::standard::Standard {
            keys: vec![key],
            tolerance,
        }),
        VerifyKind::Github => Box::new(verify::github::Github {
            keys: vec![key],
            allow_sha1: true,
        }),
        VerifyKind::Shopify => Box::new(verify::shopify::Shopify { keys: vec![key] }),
        VerifyKind::Slack => Box::new(verify::slack::Slack {
            keys: vec![key],
            tolerance,
        }),
        VerifyKind::Twilio => Box::new(verify::twilio::Twilio {
            keys: vec![key],
            public_url: "https://hooks.example.net:8443/webhooks/twilio".into(),
        }),
        VerifyKind::App => Box::new(verify::app::App),
        VerifyKind::Hmac => Box::new(verify::hmac::Generic {
            keys: vec![key],
            tolerance,
            scheme: HmacScheme {
                header: "x-signature".into(),
                algorithm: HmacAlgorithm::Sha512,
                encoding: SignatureEncoding::Base64,
                prefix: "v1=".into(),
                timestamp_header: Some("x-timestamp".into()),
                // A template without {body} is refused at load; the body
                // is appended so that any fuzzed text still compiles.
                payload: PayloadTemplate::parse(payload)
                    .or_else(|_| PayloadTemplate::parse(&format!("{payload}{{body}}")))
                    .expect("a template with {body} compiles"),
            },
        }),
    }
}

/// Every verifier on arbitrary headers, body and query, and what each one
/// signs verifying.
pub fn verifiers(data: &[u8]) {
    let mut fields = Fields::new(data);
    let body = fields.bytes().to_vec();
    let query = fields.text();
    let now = fields.number() % (1 << 40);
    let headers = fields.headers();
    for kind in KINDS {
        let scheme = scheme(kind, "{timestamp}.{body}");
        let inbound = Inbound {
            headers: &headers,
            body: &body,
            query: Some(&query),
            now,
        };
        let _ = scheme.check_headers(&inbound.head());
        if scheme.verify(&inbound).is_ok() {
            let _ = scheme.identity(&inbound);
        }
        round_trip(scheme.as_ref(), &body, now, kind);
    }
}

/// Signs `body` and checks that the signed request verifies, headers
/// first, then whole.
fn round_trip(scheme: &dyn Scheme, body: &[u8], now: u64, kind: VerifyKind) {
    let signed = scheme.sign(body, now);
    let mut headers = HeaderMap::new();
    for (name, value) in &signed.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("signed header names are valid"),
            HeaderValue::from_str(value).expect("signed header values are valid"),
        );
    }
    let query = signed
        .url
        .as_deref()
        .and_then(|url| url.split_once('?'))
        .map(|(_, query)| query.to_string());
    let head = Head {
        headers: &headers,
        query: query.as_deref(),
        now,
    };
    assert_eq!(scheme.check_headers(&head), Ok(()), "{kind:?}");
    let inbound = Inbound {
        headers: &headers,
        body,
        query: query.as_deref(),
        now,
    };
    assert_eq!(scheme.verify(&inbound), Ok(()), "{kind:?}: {signed:?}");
}

/// The generic HMAC scheme with an arbitrary payload template.
pub fn hmac_template(data: &[u8]) {
    let mut fields = Fields::new(data);
    let template = fields.text();
    let body = fields.bytes().to_vec();
    let now = fields.number() % (1 << 40);
    let headers = fields.headers();
    let scheme = scheme(VerifyKind::Hmac, &template);
    let _ = scheme.verify(&Inbound {
        headers: &headers,
        body: &body,
        query: None,
        now,
    });
    round_trip(scheme.as_ref(), &body, now, VerifyKind::Hmac);
}

/// Twilio's form and URL helpers.
pub fn twilio_helpers(data: &[u8]) {
    let mut fields = Fields::new(data);
    let form = fields.bytes();
    let url = fields.text();
    let name = fields.text();
    let parameters = verify::twilio::form_parameters(form);
    assert!(
        parameters.windows(2).all(|w| w[0] < w[1]),
        "sorted, once each"
    );
    let variants = verify::twilio::url_variants(&url);
    assert_eq!(variants[0], url);
    let _ = verify::twilio::host_without_port(&url);
    let _ = verify::twilio::query_value(&url, &name);
}

/// The MAC decoders: anything decodes or is refused, and what is encoded
/// decodes back.
pub fn mac_decoders(data: &[u8]) {
    use crate::signing::mac::{decode_base64, decode_hex, encode_base64, encode_hex};
    let text = String::from_utf8_lossy(data);
    let _ = decode_hex(&text);
    let _ = decode_base64(&text);
    // Empty is no signature at all: refused, by design.
    if !data.is_empty() {
        assert_eq!(decode_hex(&encode_hex(data)).as_deref(), Some(data));
        assert_eq!(decode_base64(&encode_base64(data)).as_deref(), Some(data));
    }
}

/// Event extraction and event-type globs.
pub fn event_extraction(data: &[u8]) {
    let mut fields = Fields::new(data);
    let kind = KINDS[fields.number() as usize % KINDS.len()];
    let body = fields.bytes().to_vec();
    let pattern = fields.text();
    let text = fields.text();
    let pointer = format!("/{}", fields.text());
    let header = fields.text();
    let headers = fields.headers();
    let _ = Glob::new(&pattern).matches(&text);
    let mut webhook = sample_webhook(kind);
    webhook.event_type = Some(Field::Pointer(pointer.clone()));
    webhook.context = vec![("wedding_id".into(), Field::Pointer(pointer))];
    if HeaderName::from_bytes(header.as_bytes()).is_ok() {
        webhook.event_id = Some(Field::Header(header));
    }
    webhook.priority.high = vec![Glob::new(&pattern)];
    webhook.routes = vec![Route {
        events: vec![Glob::new(&pattern), Glob::new("*")],
        targets: vec!["notify".into()],
    }];
    let signed = verify::SignedIdentity {
        id: Some(text),
        digest: None,
    };
    let meta = crate::webhooks::extract::extract(&webhook, &headers, &body, &signed);
    assert!(!meta.id.is_empty() && !meta.dedup.is_empty());
    assert_eq!(meta.targets, ["notify"], "`*` matches every type");
}

/// The lenient JSON pointer reader on any bytes and any pointer: never a
/// panic, and wherever serde_json reads the whole document, the same
/// string or boolean as serde_json's own pointer.
pub fn json_pointer(data: &[u8]) {
    let mut fields = Fields::new(data);
    let body = fields.bytes().to_vec();
    let pointer = format!("/{}", fields.text());
    let lenient = crate::webhooks::json_pointer::scalar_at(&body, &pointer);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
        match value.pointer(&pointer) {
            Some(serde_json::Value::String(text)) if !text.is_empty() => {
                assert_eq!(lenient.as_deref(), Some(text.as_str()))
            }
            Some(serde_json::Value::Bool(flag)) => {
                assert_eq!(lenient, Some(flag.to_string()))
            }
            Some(serde_json::Value::Number(_)) => assert!(lenient.is_some()),
            _ => assert_eq!(lenient, None),
        }
    }
}

fn sample_webhook(kind: VerifyKind) -> Webhook {
    let yaml = "upstreams:\n  notify: { backends: [127.0.0.1:9] }\nwebhooks:\n  w:\n    path: /w\n    verify: { kind: github, secrets: [fuzzing-secret-0123456789] }\n    routes: [{ events: [\"*\"], targets: [notify] }]\n";
    let mut webhook = crate::config::Config::from_yaml(
        yaml,
        "fuzz.yaml",
        &crate::config::interpolate::MapLookup::default(),
    )
    .expect("the sample config is valid")
    .webhooks
    .remove(0);
    webhook.verify.kind = kind;
    webhook.priority = PriorityRules::default();
    webhook
}

/// Dead-letter ids, cursors and list queries from the admin API.
pub fn dead_letter_query(data: &[u8]) {
    use crate::admin::dead_letters::{parse_id, Query};
    use crate::store::records::{order_key, parse_cursor};
    let mut fields = Fields::new(data);
    let query = fields.text();
    let segment = fields.text();
    let (at, id) = (fields.number(), fields.number());
    let parsed = Query::parse(Some(&query));
    let _ = parsed.filter();
    let _ = parsed.limit();
    if let Some(cursor) = parsed.get("cursor") {
        let _ = parse_cursor(cursor);
    }
    let _ = parse_cursor(&segment);
    let _ = parse_id(&segment);
    assert_eq!(parse_cursor(&order_key(at, id)).ok(), Some((at, id)));
}

/// Numbers from providers and targets: Retry-After, pause announcements,
/// OAuth2 token answers, and the retry time a delivery answer leads to.
pub fn provider_numbers(data: &[u8]) {
    use crate::delivery::outcome::{decide, Answer, Decision};
    let mut fields = Fields::new(data);
    let retry_after = fields.text();
    let message = fields.text();
    let status = (fields.number() % 600) as u16;
    let body = fields.bytes();
    let now_ms = fields.number();
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms % (1 << 45));
    let asked = crate::resilience::cooldown::parse_retry_after(&retry_after, now);
    let _ = crate::resilience::global::parse_pause_message(&message);
    if let Ok(token) = crate::egress::oauth2::parse_token_response(status, body) {
        assert!(token.expires_in.unwrap_or_default() <= crate::egress::oauth2::MAX_LIFETIME);
    }
    let policy = sample_webhook(VerifyKind::Github).delivery;
    let answer = Answer::Status {
        status,
        retry_after: asked,
    };
    if let Decision::Retry { due_ms } = decide(&answer, 1, &policy, now_ms, now_ms, 0.5) {
        assert!(due_ms >= now_ms, "a retry is never due in the past");
        let longest = policy.backoff.max.as_millis() as u64;
        assert!(due_ms - now_ms <= longest, "never later than backoff.max");
    }
}

/// Egress routing, the upstream path, API-key query replacement, and the
/// headers of a delivery built from stored event fields.
pub fn request_building(data: &[u8]) {
    use crate::delivery::request::{build, Delivery};
    use crate::egress::routing::{upstream_path, RouteTable};
    use crate::store::StoredEvent;
    let mut fields = Fields::new(data);
    let prefixes = [fields.text(), fields.text(), "/".into()];
    let path = fields.text();
    let base = fields.text();
    let query = fields.text();
    let name = fields.text();
    let event = StoredEvent {
        webhook: fields.text().into(),
        id: fields.text().into(),
        event_type: fields.text(),
        content_type: Some(fields.text()),
        context: vec![("wedding_id".into(), fields.text())],
        received_at_ms: fields.number(),
        trace: None,
        targets: Vec::new(),
        priority: None,
        size: 0,
        headers: Vec::new(),
        finished_at_ms: None,
        recovered: false,
    };
    let table = RouteTable::new(prefixes.iter().map(String::as_str));
    let (_, rest) = table.find(&path).expect("`/` matches every path");
    let _ = upstream_path(&base, rest, Some(&query));
    let _ = crate::egress::auth::replace_query_param(Some(&query), &name, "v");
    let delivery_path = http::uri::PathAndQuery::from_static("/events");
    let delivery = Delivery {
        path: &delivery_path,
        host: "127.0.0.1:7001",
        event: &event,
        attempt: 1,
        now_secs: 0,
        traceparent: None,
        redelivery: false,
    };
    build(&delivery, None, b"{}").expect("any stored event makes a request");
}

/// Records as the Redis store reads them back.
pub fn store_records(data: &[u8]) {
    use crate::store::{DeadLetter, Job, StoredEvent};
    if let Ok(job) = serde_json::from_slice::<Job>(data) {
        let again: Job = serde_json::from_slice(&serde_json::to_vec(&job).unwrap()).unwrap();
        assert_eq!(again, job);
    }
    if let Ok(letter) = serde_json::from_slice::<DeadLetter>(data) {
        let _ = letter.last_error();
        let _ = crate::store::records::parse_cursor(&letter.order_key());
    }
    let _ = serde_json::from_slice::<StoredEvent>(data);
}

/// Where the ingress's own reader ends a header section.
pub fn ingress_head(data: &[u8]) {
    if let Some(end) = crate::webhooks::listener::head_end(data) {
        assert!(end <= data.len());
        let head = &data[..end];
        assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"));
    }
}

/// A config file, then every runtime part built from it: whatever `check`
/// accepts must build, never panic.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lookup = crate::config::interpolate::MapLookup::default();
    if let Ok(config) = crate::config::Config::from_yaml(&text, "fuzz.yaml", &lookup) {
        if let Err(error) = crate::runtime::server::build_check(&config) {
            // Only the file system can fail what the file's own text passed.
            let message = error.to_string();
            assert!(
                message.contains("ca_file") || message.contains("CA"),
                "a config that loads failed to build: {message}"
            );
        }
    }
}

/// Joins fields the way [`Fields`] splits them.
fn joined(fields: &[&[u8]]) -> Vec<u8> {
    fields.join(&0xFFu8)
}

/// Starting inputs for each target: the published golden vectors of every
/// scheme, the test fixtures' headers and bodies, and the shipped config.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let stripe_body: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    let standard_body: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    let slack_body: &[u8] =
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&command=%2Fwebhook-collect&text=";
    let twilio_form: &[u8] = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
    let mut seeds = vec![
        ("verifiers", joined(&[stripe_body, b"", b"1700000000", b"stripe-signature", b"t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990"])),
        ("verifiers", joined(&[standard_body, b"", b"1649367553", b"webhook-id", b"msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", b"webhook-timestamp", b"1649367553", b"webhook-signature", b"v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="])),
        ("verifiers", joined(&[b"Hello, World!", b"", b"0", b"x-hub-signature-256", b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"])),
        ("verifiers", joined(&[stripe_body, b"", b"0", b"x-shopify-hmac-sha256", b"m72AsY8Tri/FnNAECj0zphiQiDio/g5yAPcgD53MjOw="])),
        ("verifiers", joined(&[slack_body, b"", b"1531420618", b"x-slack-request-timestamp", b"1531420618", b"x-slack-signature", b"v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"])),
        ("verifiers", joined(&[twilio_form, b"foo=1&bar=2", b"0", b"x-twilio-signature", b"RSOYDt4T1cUTdK1PDd93/VVr8B8=", b"content-type", b"application/x-www-form-urlencoded"])),
        ("verifiers", joined(&[br#"{"a":1}"#, b"bodySHA256=0f1e", b"0", b"x-twilio-signature", b"AAAA", b"content-type", b"application/json"])),
        ("hmac_template", joined(&[b"{timestamp}.{body}", br#"{"event":"charge.success"}"#, b"1700000000", b"x-signature", b"v1=AAAA", b"x-timestamp", b"1700000000"])),
        ("hmac_template", joined(&[b"{body}{{timestamp}}{", b"x"])),
        ("twilio_helpers", joined(&[twilio_form, b"https://mycompany.com:1234/myapp.php?foo=1&bar=2", b"bar"])),
        ("twilio_helpers", joined(&[b"a=1&a=1&b", b"https://[::1]:8443/x?bodySHA256=abc", b"bodySHA256"])),
        ("mac_decoders", b"757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_vec()),
        ("mac_decoders", b"tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=".to_vec()),
        ("json_pointer", joined(&[br#"{"id":"evt_1","type":"t","data":{"object":{"metadata":{"wedding_id":"w-1"}},"list":[1,"two",true]}}"#, b"data/object/metadata/wedding_id"])),
        ("json_pointer", joined(&[br#"{"x":[[[[1]]]],"n":1e400,"s":"\ud800","type":"t"}"#, b"type"])),
        // What the fuzz target found: `+0` is not an array index.
        ("json_pointer", joined(&[b"[0]", b"+0"])),
        ("event_extraction", joined(&[b"1", br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"metadata":{"wedding_id":"w-1"}}}}"#, b"payment_intent.*", b"payment_intent.succeeded", b"data/object/metadata/wedding_id", b"x-github-delivery", b"x-github-delivery", b"guid-1"])),
        ("event_extraction", joined(&[b"5", b"MessageSid=SM1&MessageStatus=delivered", b"*.updated", b"customer.updated", b"type", b"i-twilio-idempotency-token", b"content-type", b"Application/X-WWW-Form-Urlencoded"])),
        ("dead_letter_query", joined(&[b"webhook=stripe&target=notify&limit=500&cursor=00000000001795784645123.00000000000000000042", b"42", b"1795784645123", b"42"])),
        ("provider_numbers", joined(&[b"315360000", b"stripe\t30000", b"429", br#"{"access_token":"at","expires_in":18446744073709551614}"#, b"1795784645123"])),
        ("provider_numbers", joined(&[b"Fri, 27 Nov 2026 10:01:30 GMT", b"resend\t", b"400", br#"{"error":"invalid_client"}"#, b""])),
        ("request_building", joined(&[b"/stripe", b"/stripe/v1", b"/stripe/v1/charges", b"/base", b"api_key=old&x=1", b"api_key", b"stripe", b"evt_1\n", b"payment_intent.succeeded", b"application/json", b"w-1", b"0"])),
        ("store_records", br#"{"id":12,"event":11,"webhook":"stripe","event_id":"evt","event_type":"t","target":"notify","priority":"high","received_at_ms":7,"due_ms":7,"attempts":0,"lease":0,"leased":false}"#.to_vec()),
        ("store_records", br#"{"job":{"id":3,"event":2,"webhook":"stripe","event_id":"e","event_type":"t","target":"","priority":"low","received_at_ms":1,"due_ms":1,"attempts":2,"history":[{"at_ms":1,"duration_ms":2,"backend":"127.0.0.1:7001","status":503,"error":null}],"lease":1,"leased":false},"reason":"unrouted","dead_at_ms":5}"#.to_vec()),
        ("ingress_head", b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}".to_vec()),
        ("ingress_head", b"\r\nPOST / HTTP/1.1\nA: b\n\nbody".to_vec()),
    ];
    seeds.push(("config", include_bytes!("../conf/sidecar.yaml").to_vec()));
    seeds.push((
        "config",
        include_bytes!("../k8s/base/sidecar.yaml").to_vec(),
    ));
    seeds.push((
        "config",
        b"upstreams:\n  u: { backends: [127.0.0.1:1], health_check: { path: /h } }\nwebhooks:\n  w:\n    path: /w\n    verify: { kind: twilio, secrets: [twilio-token-0123456789], public_url: \"https://x.example/w\" }\n    ack: { status: 200, content_type: text/xml, body: \"<Response/>\" }\n    routes: [{ events: [\"*\"], targets: [u] }]\n    delivery: { path: /events/w }\n".to_vec(),
    ));
    seeds
}

#[cfg(test)]
mod tests {
    //! The same harnesses on random input, on stable, in every test run.
    use super::*;
    use proptest::prelude::*;

    /// Bytes with the field separator common enough to make several fields.
    fn input() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![3 => any::<u8>(), 1 => Just(0xFFu8), 1 => proptest::sample::select(b"{}=&,.:/?tv1 ".to_vec())],
            0..512,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn verifiers_never_panic_and_what_they_sign_verifies(data in input()) {
            verifiers(&data);
        }

        #[test]
        fn any_hmac_template_round_trips(data in input()) {
            hmac_template(&data);
        }

        #[test]
        fn twilio_helpers_hold(data in input()) {
            twilio_helpers(&data);
        }

        #[test]
        fn mac_decoders_round_trip(data in input()) {
            mac_decoders(&data);
        }

        #[test]
        fn event_extraction_holds(data in input()) {
            event_extraction(&data);
        }

        #[test]
        fn json_pointers_agree_with_serde_json(data in input()) {
            json_pointer(&data);
        }

        #[test]
        fn dead_letter_queries_hold(data in input()) {
            dead_letter_query(&data);
        }

        #[test]
        fn provider_numbers_are_clamped(data in input()) {
            provider_numbers(&data);
        }

        #[test]
        fn requests_always_build(data in input()) {
            request_building(&data);
        }

        #[test]
        fn store_records_round_trip(data in input()) {
            store_records(&data);
        }

        #[test]
        fn ingress_heads_end_at_an_empty_line(data in input()) {
            ingress_head(&data);
        }

        #[test]
        fn configs_that_load_build(yaml in config_text()) {
            config(yaml.as_bytes());
        }
    }

    #[test]
    fn every_seed_passes_its_harness() {
        for (target, data) in seeds() {
            let harness: fn(&[u8]) = match target {
                "verifiers" => verifiers,
                "hmac_template" => hmac_template,
                "twilio_helpers" => twilio_helpers,
                "mac_decoders" => mac_decoders,
                "event_extraction" => event_extraction,
                "json_pointer" => json_pointer,
                "dead_letter_query" => dead_letter_query,
                "provider_numbers" => provider_numbers,
                "request_building" => request_building,
                "store_records" => store_records,
                "ingress_head" => ingress_head,
                "config" => config,
                other => panic!("no harness {other}"),
            };
            harness(&data);
        }
    }

    /// YAML made of real keys and values, so that many inputs load.
    fn config_text() -> impl Strategy<Value = String> {
        let path = prop_oneof![
            Just("/events/a".to_string()),
            Just("/a b".to_string()),
            "/[a-z%?=&]{0,8}",
        ];
        (path.clone(), path, "[a-z_]{1,8}", 1u32..70_000)
            .prop_map(|(delivery, health, name, port)| {
                format!(
                    "upstreams:\n  {name}: {{ backends: [127.0.0.1:{port}], health_check: {{ path: \"{health}\" }} }}\nwebhooks:\n  w:\n    path: /w\n    verify: {{ kind: stripe, secrets: [fuzzing-secret-0123456789] }}\n    routes: [{{ events: [\"*\"], targets: [{name}] }}]\n    delivery: {{ path: \"{delivery}\" }}\nservices:\n  {name}:\n    route: /{name}\n    upstream: http://127.0.0.1:{port}\n"
                )
            })
    }
}
