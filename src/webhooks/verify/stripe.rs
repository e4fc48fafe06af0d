//! Stripe: `Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256
//! of `t.body` keyed by the secret as text (`whsec_` included). Only `v1`
//! counts (`v0` is a deliberate decoy); more than one `t` is refused.

use std::time::Duration;

use super::{check_signature, check_timestamp, header, Head, Inbound, Rejection, Scheme, Signed};
use crate::signing::mac::{decode_hex, encode_hex, hmac, Algorithm};

pub const HEADER: &str = "stripe-signature";

pub struct Stripe {
    pub keys: Vec<Vec<u8>>,
    pub tolerance: Duration,
}

/// The `Stripe-Signature` header: its one timestamp and its `v1` MACs.
fn parse<'a>(request: &Head<'a>) -> Result<(&'a str, Vec<Vec<u8>>), Rejection> {
    let value = header(request.headers, HEADER, Rejection::MissingSignature)?;
    let mut timestamps = Vec::new();
    let mut signatures = Vec::new();
    for item in value.split(',') {
        let (key, text) = item
            .trim()
            .split_once('=')
            .ok_or(Rejection::MalformedSignature)?;
        match key {
            "t" => timestamps.push(text),
            "v1" => signatures.push(decode_hex(text).ok_or(Rejection::MalformedSignature)?),
            _ => {} // v0 and unknown schemes never count
        }
    }
    let [timestamp] = timestamps[..] else {
        return Err(Rejection::MalformedSignature);
    };
    if signatures.is_empty() || timestamp.parse::<i64>().is_err() {
        return Err(Rejection::MalformedSignature);
    }
    Ok((timestamp, signatures))
}

impl Scheme for Stripe {
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection> {
        let (timestamp, _) = parse(request)?;
        check_timestamp(timestamp, request.now, self.tolerance)
    }

    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection> {
        let (timestamp, signatures) = parse(&request.head())?;
        check_timestamp(timestamp, request.now, self.tolerance)?;
        let content = [timestamp.as_bytes(), b".", request.body];
        check_signature(Algorithm::Sha256, &self.keys, &content, &signatures)
    }

    fn sign(&self, body: &[u8], now: u64) -> Signed {
        let timestamp = now.to_string();
        let mac = hmac(
            Algorithm::Sha256,
            &self.keys[0],
            &[timestamp.as_bytes(), b".", body],
        );
        Signed {
            headers: vec![(
                "Stripe-Signature".into(),
                format!("t={timestamp},v1={}", encode_hex(&mac)),
            )],
            url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::verify::testing::headers;

    const BODY: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    const GOLDEN: &str = "d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";

    fn stripe(secrets: &[&str]) -> Stripe {
        Stripe {
            keys: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            tolerance: Duration::from_secs(300),
        }
    }

    fn check(scheme: &Stripe, value: &str, body: &[u8], now: u64) -> Result<(), Rejection> {
        scheme.verify(&Inbound {
            headers: &headers(&[(HEADER, value)]),
            body,
            query: None,
            now,
        })
    }

    #[test]
    fn the_golden_vector_verifies_and_signs() {
        let scheme = stripe(&["whsec_test_secret"]);
        let value = format!("t=1700000000,v1={GOLDEN}");
        assert_eq!(check(&scheme, &value, BODY, 1_700_000_000), Ok(()));
        assert_eq!(scheme.sign(BODY, 1_700_000_000).headers[0].1, value);
    }

    #[test]
    fn tampering_wrong_secrets_and_decoys_are_mismatches() {
        let scheme = stripe(&["whsec_test_secret"]);
        let value = format!("t=1700000000,v1={GOLDEN}");
        let now = 1_700_000_000;
        assert_eq!(
            check(&scheme, &value, b"{}", now),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(&stripe(&["whsec_other_secret"]), &value, BODY, now),
            Err(Rejection::SignatureMismatch)
        );
        let decoy_only = format!("t=1700000000,v0={GOLDEN}");
        assert_eq!(
            check(&scheme, &decoy_only, BODY, now),
            Err(Rejection::MalformedSignature)
        );
        let signed_later = format!("t=1700000001,v1={GOLDEN}");
        assert_eq!(
            check(&scheme, &signed_later, BODY, now),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn rotation_and_several_signatures_pass() {
        let scheme = stripe(&["whsec_new_secret_value", "whsec_test_secret"]);
        let value = format!("t=1700000000,v1={},v1={GOLDEN},v0=00", "ab".repeat(32));
        assert_eq!(check(&scheme, &value, BODY, 1_700_000_000), Ok(()));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let scheme = stripe(&["whsec_test_secret"]);
        let value = format!("t=1700000000,v1={GOLDEN}");
        assert_eq!(check(&scheme, &value, BODY, 1_700_000_300), Ok(()));
        assert_eq!(
            check(&scheme, &value, BODY, 1_700_000_301),
            Err(Rejection::TimestampOutOfTolerance)
        );
        assert_eq!(
            check(&scheme, &value, BODY, 1_699_999_699),
            Err(Rejection::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn missing_garbled_empty_and_truncated_headers() {
        let scheme = stripe(&["whsec_test_secret"]);
        let now = 1_700_000_000;
        let none = scheme.verify(&Inbound {
            headers: &headers(&[]),
            body: BODY,
            query: None,
            now,
        });
        assert_eq!(none, Err(Rejection::MissingSignature));
        for garbled in [
            "",
            "garbage",
            &format!("v1={GOLDEN}"),
            &format!("t=1700000000,t=1700000000,v1={GOLDEN}"),
            &format!("t=1700000000,v1={}", &GOLDEN[..63]),
            "t=1700000000,v1=zz",
            &format!("t=soon,v1={GOLDEN}"),
        ] {
            assert_eq!(
                check(&scheme, garbled, BODY, now),
                Err(Rejection::MalformedSignature),
                "{garbled}"
            );
        }
        let truncated = format!("t=1700000000,v1={}", &GOLDEN[..62]);
        assert_eq!(
            check(&scheme, &truncated, BODY, now),
            Err(Rejection::SignatureMismatch)
        );
    }
}
