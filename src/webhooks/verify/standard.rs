//! Standard Webhooks (Svix, Resend and others): `webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64> [v1,<base64> ...]`
//! (or the same under `svix-*`), HMAC-SHA256 of `id.timestamp.body` keyed by
//! the base64 after `whsec_`. Unknown versions (`v1a`) are skipped.

use std::time::Duration;

use super::{
    check_signature, check_timestamp, Head, Inbound, Rejection, Scheme, Signed, SignedIdentity,
};
use crate::signing::mac::{decode_base64, Algorithm};
use crate::signing::standard::{content, Signer};

pub struct Standard {
    pub keys: Vec<Vec<u8>>,
    pub tolerance: Duration,
}

impl Standard {
    /// A signer with the first key: what `sign` (and the CLI) send.
    fn signer(&self) -> Signer {
        Signer::new(self.keys[0].clone())
    }
}

/// The three headers under one naming: `webhook-*` first, then `svix-*`.
/// The naming that holds a signature is the one that is verified, and its
/// id the event's; the other naming's headers are never read.
fn headers<'a>(request: &Head<'a>) -> Result<(&'a str, &'a str, &'a str), Rejection> {
    for prefix in ["webhook", "svix"] {
        let get = |field: &str| {
            request
                .headers
                .get(format!("{prefix}-{field}"))
                .map(|v| v.to_str().map_err(|_| Rejection::MalformedSignature))
        };
        if let Some(signature) = get("signature") {
            let id = get("id").ok_or(Rejection::MalformedSignature)??;
            let timestamp = get("timestamp").ok_or(Rejection::MalformedSignature)??;
            return Ok((id, timestamp, signature?));
        }
    }
    Err(Rejection::MissingSignature)
}

/// (id, timestamp, `v1` MACs) of the header set that carries a signature.
fn parse<'a>(request: &Head<'a>) -> Result<(&'a str, &'a str, Vec<Vec<u8>>), Rejection> {
    let (id, timestamp, value) = headers(request)?;
    // The spec forbids dots in both: they would make the fields ambiguous.
    if id.is_empty() || id.contains('.') || timestamp.parse::<i64>().is_err() {
        return Err(Rejection::MalformedSignature);
    }
    let mut signatures = Vec::new();
    for entry in value.split_whitespace() {
        let (version, encoded) = entry.split_once(',').ok_or(Rejection::MalformedSignature)?;
        if version == "v1" {
            signatures.push(decode_base64(encoded).ok_or(Rejection::MalformedSignature)?);
        }
    }
    if signatures.is_empty() {
        return Err(Rejection::MalformedSignature);
    }
    Ok((id, timestamp, signatures))
}

impl Scheme for Standard {
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection> {
        let (_, timestamp, _) = parse(request)?;
        check_timestamp(timestamp, request.now, self.tolerance)
    }

    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection> {
        let (id, timestamp, signatures) = parse(&request.head())?;
        check_timestamp(timestamp, request.now, self.tolerance)?;
        let content = content(id.as_bytes(), timestamp.as_bytes(), request.body);
        check_signature(Algorithm::Sha256, &self.keys, &content, &signatures)
    }

    /// The id of the header set that verified: an extra, unsigned
    /// `webhook-id` beside signed `svix-*` headers never changes it.
    fn identity(&self, request: &Inbound<'_>) -> SignedIdentity {
        SignedIdentity {
            id: headers(&request.head())
                .ok()
                .map(|(id, _, _)| id.to_string()),
            digest: None,
        }
    }

    fn sign(&self, body: &[u8], now: u64) -> Signed {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        Signed {
            headers: self
                .signer()
                .headers(&id, now, body)
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect(),
            url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::webhooks::{secret_key_bytes, VerifyKind};
    use crate::webhooks::verify::testing::{headers, signed_headers};

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: &str = "1649367553";
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const GOLDEN: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    const NOW: u64 = 1_649_367_553;

    fn standard(secrets: &[&str]) -> Standard {
        Standard {
            keys: secrets
                .iter()
                .map(|s| secret_key_bytes(VerifyKind::Standard, s).unwrap())
                .collect(),
            tolerance: Duration::from_secs(300),
        }
    }

    fn check(prefix: &str, signature: &str, body: &[u8], now: u64) -> Result<(), Rejection> {
        standard(&[SECRET]).verify(&Inbound {
            headers: &headers(&[
                (&format!("{prefix}-id"), ID),
                (&format!("{prefix}-timestamp"), TS),
                (&format!("{prefix}-signature"), signature),
            ]),
            body,
            query: None,
            now,
        })
    }

    #[test]
    fn the_published_vector_verifies_under_both_header_names() {
        assert_eq!(check("webhook", GOLDEN, BODY, NOW), Ok(()));
        assert_eq!(check("svix", GOLDEN, BODY, NOW), Ok(()));
    }

    #[test]
    fn several_signatures_and_unknown_versions() {
        let value = format!("v1a,AAAA v1,{} {GOLDEN}", "A".repeat(43) + "=");
        assert_eq!(check("webhook", &value, BODY, NOW), Ok(()));
        assert_eq!(
            check("webhook", "v1a,AAAA", BODY, NOW),
            Err(Rejection::MalformedSignature),
            "no version we verify"
        );
    }

    #[test]
    fn tampering_staleness_and_garbage() {
        assert_eq!(
            check("webhook", GOLDEN, b"{}", NOW),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check("webhook", GOLDEN, BODY, NOW + 301),
            Err(Rejection::TimestampOutOfTolerance)
        );
        assert_eq!(
            check("webhook", GOLDEN, BODY, NOW - 301),
            Err(Rejection::TimestampOutOfTolerance)
        );
        for garbled in [
            "",
            "v1",
            "v1,not base64!",
            "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ] {
            assert_eq!(
                check("webhook", garbled, BODY, NOW),
                Err(Rejection::MalformedSignature),
                "{garbled:?}"
            );
        }
        assert_eq!(
            check(
                "webhook",
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3",
                BODY,
                NOW
            ),
            Err(Rejection::SignatureMismatch),
            "truncated"
        );
        let missing = standard(&[SECRET]).verify(&Inbound {
            headers: &headers(&[("webhook-id", ID)]),
            body: BODY,
            query: None,
            now: NOW,
        });
        assert_eq!(missing, Err(Rejection::MissingSignature));
    }

    #[test]
    fn rotation_and_wrong_secrets() {
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let rotated = standard(&[other, SECRET]);
        let request = |scheme: &Standard| {
            scheme.verify(&Inbound {
                headers: &headers(&[
                    ("webhook-id", ID),
                    ("webhook-timestamp", TS),
                    ("webhook-signature", GOLDEN),
                ]),
                body: BODY,
                query: None,
                now: NOW,
            })
        };
        assert_eq!(request(&rotated), Ok(()));
        assert_eq!(
            request(&standard(&[other])),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn what_it_signs_it_verifies() {
        let scheme = standard(&[SECRET]);
        let signed = scheme.sign(BODY, NOW);
        let request = Inbound {
            headers: &signed_headers(&signed),
            body: BODY,
            query: None,
            now: NOW,
        };
        assert_eq!(scheme.verify(&request), Ok(()));
    }
}
