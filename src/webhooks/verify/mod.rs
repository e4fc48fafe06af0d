//! Provider signature verification, exactly as each provider signs
//! (`../shared/design/webhook-schemes.md`): over the raw body bytes, with
//! every configured secret, comparing decoded MACs in constant time, never
//! accepting a weaker scheme than configured. A rejection names the check
//! that failed and never carries the expected signature or a secret.
//!
//! Each scheme can also sign, which `wedsync-sidecar sign` uses to make a
//! realistic test request.

pub mod app;
pub mod github;
pub mod hmac;
pub mod shopify;
pub mod slack;
pub mod standard;
pub mod stripe;
pub mod twilio;

use std::time::Duration;

use http::HeaderMap;

use crate::config::error::SecretError;
use crate::config::webhooks::{secret_key_bytes, Verify, VerifyKind};
use crate::metrics::RejectionReason;

/// Which check failed; `as_str` is the problem `detail` and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MissingSignature,
    MalformedSignature,
    TimestampOutOfTolerance,
    SignatureMismatch,
}

impl Rejection {
    /// The rejection reason it counts under.
    pub fn reason(self) -> RejectionReason {
        match self {
            Self::MissingSignature => RejectionReason::MissingSignature,
            Self::MalformedSignature => RejectionReason::MalformedSignature,
            Self::TimestampOutOfTolerance => RejectionReason::TimestampOutOfTolerance,
            Self::SignatureMismatch => RejectionReason::SignatureMismatch,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::MalformedSignature => "malformed_signature",
            Self::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
            Self::SignatureMismatch => "signature_mismatch",
        }
    }
}

/// A received webhook request, as much of it as verification reads.
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The query string exactly as received (Twilio signs it).
    pub query: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
}

impl<'a> Inbound<'a> {
    pub fn head(&self) -> Head<'a> {
        Head {
            headers: self.headers,
            query: self.query,
            now: self.now,
        }
    }
}

/// What a request shows before its body arrives: enough to refuse one with
/// no signature header or a stale timestamp without reading (or buffering)
/// a byte of its body.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
}

/// What a verified signature vouches for, beyond the body: the event's
/// identity must come from signed bytes only, or a captured request resent
/// with a new id header would be a new event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedIdentity {
    /// An event id inside the signed content (Standard Webhooks signs
    /// `webhook-id`: the id of the header set that verified).
    pub id: Option<String>,
    /// The SHA-256 of the signed content, when that is more than the body
    /// (Twilio: the URL's query and the sorted parameters). Otherwise the
    /// body's own SHA-256 stands for it.
    pub digest: Option<Vec<u8>>,
}

/// What makes a request valid: headers to send and, for Twilio, the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub url: Option<String>,
}

pub trait Scheme: Send + Sync {
    /// The checks that need no body: a signature header that parses and,
    /// for timestamped schemes, a timestamp within tolerance. `verify` makes
    /// them again.
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection>;
    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection>;
    /// What the signature of a request that passed `verify` covers.
    fn identity(&self, _request: &Inbound<'_>) -> SignedIdentity {
        SignedIdentity::default()
    }
    /// Signs `body` at `now` with the first secret.
    fn sign(&self, body: &[u8], now: u64) -> Signed;
}

/// The verifier a webhook's config describes. Secrets are decoded here
/// (config loading has already checked them).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("verify.public_url is required for twilio")]
    NoPublicUrl,
    #[error("verify.header is required for kind: hmac")]
    NoHmacScheme,
}

pub fn build(verify: &Verify) -> Result<Box<dyn Scheme>, BuildError> {
    let keys = verify
        .secrets
        .iter()
        .map(|s| secret_key_bytes(verify.kind, s.expose()))
        .collect::<Result<Vec<_>, _>>()?;
    let tolerance = verify.tolerance;
    Ok(match verify.kind {
        VerifyKind::Stripe => Box::new(stripe::Stripe { keys, tolerance }),
        VerifyKind::Standard => Box::new(standard::Standard { keys, tolerance }),
        VerifyKind::Github => Box::new(github::Github {
            keys,
            allow_sha1: verify.allow_sha1,
        }),
        VerifyKind::Shopify => Box::new(shopify::Shopify { keys }),
        VerifyKind::Slack => Box::new(slack::Slack { keys, tolerance }),
        VerifyKind::Twilio => Box::new(twilio::Twilio {
            keys,
            public_url: verify.public_url.clone().ok_or(BuildError::NoPublicUrl)?,
        }),
        VerifyKind::Hmac => Box::new(hmac::Generic {
            keys,
            tolerance,
            scheme: verify.hmac.clone().ok_or(BuildError::NoHmacScheme)?,
        }),
        VerifyKind::App => Box::new(app::App),
    })
}

/// `signature_mismatch` unless some key signed `content` as one of `signatures`.
pub(crate) fn check_signature(
    algorithm: crate::signing::mac::Algorithm,
    keys: &[Vec<u8>],
    content: &[&[u8]],
    signatures: &[Vec<u8>],
) -> Result<(), Rejection> {
    if crate::signing::mac::any_key_signed(algorithm, keys, content, signatures) {
        Ok(())
    } else {
        Err(Rejection::SignatureMismatch)
    }
}

/// A signed timestamp no further than `tolerance` from now, either way.
pub(crate) fn check_timestamp(text: &str, now: u64, tolerance: Duration) -> Result<(), Rejection> {
    let timestamp: i64 = text
        .trim()
        .parse()
        .map_err(|_| Rejection::MalformedSignature)?;
    let distance = (now as i64).abs_diff(timestamp);
    if distance > tolerance.as_secs() {
        return Err(Rejection::TimestampOutOfTolerance);
    }
    Ok(())
}

/// A header's value as text, or the given rejection when it is absent.
pub(crate) fn header<'a>(
    headers: &'a HeaderMap,
    name: &str,
    absent: Rejection,
) -> Result<&'a str, Rejection> {
    match headers.get(name) {
        None => Err(absent),
        Some(value) => value
            .to_str()
            .map(str::trim)
            .map_err(|_| Rejection::MalformedSignature),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use http::{HeaderMap, HeaderName, HeaderValue};

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    pub fn signed_headers(signed: &super::Signed) -> HeaderMap {
        let pairs: Vec<(&str, &str)> = signed
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        headers(&pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn verify(kind: VerifyKind, secret: &str) -> Verify {
        Verify {
            kind,
            secrets: vec![Secret::new(secret)],
            tolerance: Duration::from_secs(300),
            allow_sha1: false,
            public_url: None,
            hmac: None,
        }
    }

    #[test]
    fn built_verifiers_decode_secrets_per_kind() {
        // A Standard Webhooks secret is base64 after whsec_; Stripe's is the text itself.
        let standard = build(&verify(
            VerifyKind::Standard,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ))
        .unwrap();
        let signed = standard.sign(b"{}", 1);
        let body: &[u8] = b"{}";
        let request = Inbound {
            headers: &testing::signed_headers(&signed),
            body,
            query: None,
            now: 1,
        };
        assert_eq!(standard.verify(&request), Ok(()));
        let stripe = build(&verify(VerifyKind::Stripe, "whsec_test_secret")).unwrap();
        assert!(stripe.sign(b"{}", 1).headers[0].1.starts_with("t=1,v1="));
    }

    #[test]
    fn twilio_and_hmac_need_their_settings() {
        assert!(matches!(
            build(&verify(VerifyKind::Twilio, "0123456789abcdef")),
            Err(BuildError::NoPublicUrl)
        ));
        assert!(matches!(
            build(&verify(VerifyKind::Hmac, "0123456789abcdef")),
            Err(BuildError::NoHmacScheme)
        ));
    }

    #[test]
    fn rejections_have_the_contract_names() {
        let names: Vec<_> = [
            Rejection::MissingSignature,
            Rejection::MalformedSignature,
            Rejection::TimestampOutOfTolerance,
            Rejection::SignatureMismatch,
        ]
        .iter()
        .map(|r| r.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "missing_signature",
                "malformed_signature",
                "timestamp_out_of_tolerance",
                "signature_mismatch"
            ]
        );
    }
}
