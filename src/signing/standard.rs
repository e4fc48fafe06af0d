//! Standard Webhooks signing (the scheme of Svix, Resend and others):
//! `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the bytes
//! after `whsec_`. The webhook verifier checks these signatures; delivery
//! makes them, so every internal service verifies one scheme.

use super::mac::{encode_base64, hmac, Algorithm};

/// What the MAC covers: the message id, the timestamp and the body, each
/// joined by a dot.
pub fn content<'a>(id: &'a [u8], timestamp: &'a [u8], body: &'a [u8]) -> [&'a [u8]; 5] {
    [id, b".", timestamp, b".", body]
}

/// Signs with one key; delivery holds one per `delivery.signing_secret`.
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// `webhook-id`, `webhook-timestamp` and `webhook-signature` for a
    /// message.
    pub fn headers(&self, id: &str, now: u64, body: &[u8]) -> [(&'static str, String); 3] {
        let timestamp = now.to_string();
        let mac = hmac(
            Algorithm::Sha256,
            &self.key,
            &content(id.as_bytes(), timestamp.as_bytes(), body),
        );
        [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", format!("v1,{}", encode_base64(&mac))),
        ]
    }
}
