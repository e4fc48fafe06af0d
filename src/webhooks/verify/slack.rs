//! Slack: `X-Slack-Signature: v0=<hex>` over `v0:<timestamp>:<body>` with
//! `X-Slack-Request-Timestamp`, HMAC-SHA256 keyed by the signing secret.

use std::time::Duration;

use super::{check_signature, check_timestamp, header, Head, Inbound, Rejection, Scheme, Signed};
use crate::signing::mac::{decode_hex, encode_hex, hmac, Algorithm};

pub struct Slack {
    pub keys: Vec<Vec<u8>>,
    pub tolerance: Duration,
}

/// The MAC and the timestamp it covers.
fn parse<'a>(request: &Head<'a>) -> Result<(Vec<u8>, &'a str), Rejection> {
    let value = header(
        request.headers,
        "x-slack-signature",
        Rejection::MissingSignature,
    )?;
    let timestamp = header(
        request.headers,
        "x-slack-request-timestamp",
        Rejection::MalformedSignature,
    )?;
    let received = value
        .strip_prefix("v0=")
        .and_then(decode_hex)
        .ok_or(Rejection::MalformedSignature)?;
    if timestamp.parse::<i64>().is_err() {
        return Err(Rejection::MalformedSignature);
    }
    Ok((received, timestamp))
}

impl Scheme for Slack {
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection> {
        let (_, timestamp) = parse(request)?;
        check_timestamp(timestamp, request.now, self.tolerance)
    }

    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection> {
        let (received, timestamp) = parse(&request.head())?;
        check_timestamp(timestamp, request.now, self.tolerance)?;
        let content = [b"v0:".as_slice(), timestamp.as_bytes(), b":", request.body];
        check_signature(Algorithm::Sha256, &self.keys, &content, &[received])
    }

    fn sign(&self, body: &[u8], now: u64) -> Signed {
        let timestamp = now.to_string();
        let mac = hmac(
            Algorithm::Sha256,
            &self.keys[0],
            &[b"v0:", timestamp.as_bytes(), b":", body],
        );
        Signed {
            headers: vec![
                ("X-Slack-Request-Timestamp".into(), timestamp),
                (
                    "X-Slack-Signature".into(),
                    format!("v0={}", encode_hex(&mac)),
                ),
            ],
            url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::verify::testing::headers;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const NOW: u64 = 1_531_420_618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const GOLDEN: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn check(
        secrets: &[&str],
        pairs: &[(&str, &str)],
        body: &[u8],
        now: u64,
    ) -> Result<(), Rejection> {
        Slack {
            keys: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            tolerance: Duration::from_secs(300),
        }
        .verify(&Inbound {
            headers: &headers(pairs),
            body,
            query: None,
            now,
        })
    }

    fn signed(signature: &str) -> [(&'static str, String); 2] {
        [
            ("x-slack-request-timestamp", TS.to_string()),
            ("x-slack-signature", signature.to_string()),
        ]
    }

    fn pairs<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        owned.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    #[test]
    fn the_docs_vector_verifies_and_signs() {
        assert_eq!(check(&[SECRET], &pairs(&signed(GOLDEN)), BODY, NOW), Ok(()));
        let scheme = Slack {
            keys: vec![SECRET.as_bytes().to_vec()],
            tolerance: Duration::from_secs(300),
        };
        assert_eq!(scheme.sign(BODY, NOW).headers[1].1, GOLDEN);
    }

    #[test]
    fn tampering_time_rotation_and_garbage() {
        let good = signed(GOLDEN);
        assert_eq!(
            check(&[SECRET], &pairs(&good), b"token=x", NOW),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(
                &["another-signing-secret", SECRET],
                &pairs(&good),
                BODY,
                NOW
            ),
            Ok(())
        );
        assert_eq!(
            check(&["another-signing-secret"], &pairs(&good), BODY, NOW),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(&[SECRET], &pairs(&good), BODY, NOW + 301),
            Err(Rejection::TimestampOutOfTolerance)
        );
        assert_eq!(
            check(&[SECRET], &pairs(&good), BODY, NOW - 301),
            Err(Rejection::TimestampOutOfTolerance),
            "future timestamps are refused too"
        );
        assert_eq!(
            check(&[SECRET], &[("x-slack-request-timestamp", TS)], BODY, NOW),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            check(&[SECRET], &[("x-slack-signature", GOLDEN)], BODY, NOW),
            Err(Rejection::MalformedSignature)
        );
        for garbled in [
            "",
            "v0=",
            "a2114d57",
            "v1=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ] {
            assert_eq!(
                check(&[SECRET], &pairs(&signed(garbled)), BODY, NOW),
                Err(Rejection::MalformedSignature),
                "{garbled:?}"
            );
        }
        assert_eq!(
            check(&[SECRET], &pairs(&signed(&GOLDEN[..41])), BODY, NOW),
            Err(Rejection::SignatureMismatch),
            "truncated"
        );
    }
}
