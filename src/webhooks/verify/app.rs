//! Events the pod's own app publishes (`events.<name>`): served on the
//! egress listener, which only the pod reaches, so there is no signature
//! to check. The id an app gives in `Idempotency-Key` stands for the
//! event when the body names none.

use super::{Head, Inbound, Rejection, Scheme, Signed, SignedIdentity};

/// The longest `Idempotency-Key` taken as an event id; a longer one is a
/// mistake, and the event gets a generated id instead.
const MAX_KEY_BYTES: usize = 255;

pub struct App;

impl Scheme for App {
    fn check_headers(&self, _request: &Head<'_>) -> Result<(), Rejection> {
        Ok(())
    }

    fn verify(&self, _request: &Inbound<'_>) -> Result<(), Rejection> {
        Ok(())
    }

    fn identity(&self, request: &Inbound<'_>) -> SignedIdentity {
        SignedIdentity {
            id: request
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|key| !key.is_empty() && key.len() <= MAX_KEY_BYTES)
                .map(str::to_string),
            digest: None,
        }
    }

    fn sign(&self, _body: &[u8], _now: u64) -> Signed {
        Signed {
            headers: Vec::new(),
            url: None,
        }
    }
}
