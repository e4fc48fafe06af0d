//! The generic HMAC scheme for providers without a preset: a signature
//! header (with an optional prefix such as `sha256=`), SHA-1/256/512, hex or
//! base64, and a payload template over `{body}` and, with a
//! `timestamp_header`, `{timestamp}` (then checked against `tolerance`).

use std::time::Duration;

use super::{check_signature, check_timestamp, header, Head, Inbound, Rejection, Scheme, Signed};
use crate::config::webhooks::{HmacAlgorithm, HmacScheme, SignatureEncoding};
use crate::signing::mac::{decode_base64, decode_hex, encode_base64, encode_hex, hmac, Algorithm};

pub struct Generic {
    pub keys: Vec<Vec<u8>>,
    pub tolerance: Duration,
    pub scheme: HmacScheme,
}

impl Generic {
    fn algorithm(&self) -> Algorithm {
        match self.scheme.algorithm {
            HmacAlgorithm::Sha1 => Algorithm::Sha1,
            HmacAlgorithm::Sha256 => Algorithm::Sha256,
            HmacAlgorithm::Sha512 => Algorithm::Sha512,
        }
    }
}

impl Generic {
    /// The MAC and, with a `timestamp_header`, the timestamp it covers.
    fn parse<'a>(&self, request: &Head<'a>) -> Result<(Vec<u8>, Option<&'a str>), Rejection> {
        let value = header(
            request.headers,
            &self.scheme.header,
            Rejection::MissingSignature,
        )?;
        let encoded = value
            .strip_prefix(self.scheme.prefix.as_str())
            .ok_or(Rejection::MalformedSignature)?;
        let received = match self.scheme.encoding {
            SignatureEncoding::Hex => decode_hex(encoded),
            SignatureEncoding::Base64 => decode_base64(encoded),
        }
        .ok_or(Rejection::MalformedSignature)?;
        let timestamp = match &self.scheme.timestamp_header {
            Some(name) => {
                let text = header(request.headers, name, Rejection::MalformedSignature)?;
                if text.parse::<i64>().is_err() {
                    return Err(Rejection::MalformedSignature);
                }
                Some(text)
            }
            None => None,
        };
        Ok((received, timestamp))
    }

    fn check_time(&self, timestamp: Option<&str>, now: u64) -> Result<(), Rejection> {
        match timestamp {
            Some(text) => check_timestamp(text, now, self.tolerance),
            None => Ok(()),
        }
    }
}

impl Scheme for Generic {
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection> {
        let (_, timestamp) = self.parse(request)?;
        self.check_time(timestamp, request.now)
    }

    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection> {
        let (received, timestamp) = self.parse(&request.head())?;
        self.check_time(timestamp, request.now)?;
        let content = self
            .scheme
            .payload
            .fill(timestamp.unwrap_or(""), request.body);
        check_signature(self.algorithm(), &self.keys, &content, &[received])
    }

    fn sign(&self, body: &[u8], now: u64) -> Signed {
        let timestamp = now.to_string();
        let mac = hmac(
            self.algorithm(),
            &self.keys[0],
            &self.scheme.payload.fill(&timestamp, body),
        );
        let encoded = match self.scheme.encoding {
            SignatureEncoding::Hex => encode_hex(&mac),
            SignatureEncoding::Base64 => encode_base64(&mac),
        };
        let mut headers = vec![(
            self.scheme.header.clone(),
            format!("{}{encoded}", self.scheme.prefix),
        )];
        if let Some(name) = &self.scheme.timestamp_header {
            headers.push((name.clone(), timestamp));
        }
        Signed { headers, url: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pattern::PayloadTemplate;
    use crate::webhooks::verify::testing::{headers, signed_headers};

    const SECRET: &str = "convoy-webhook-secret";
    const BODY: &[u8] = br#"{"event":"charge.success","amount":1000,"currency":"NGN"}"#;

    fn generic(
        encoding: SignatureEncoding,
        prefix: &str,
        timestamp: Option<&str>,
        payload: &str,
    ) -> Generic {
        Generic {
            keys: vec![SECRET.as_bytes().to_vec()],
            tolerance: Duration::from_secs(300),
            scheme: HmacScheme {
                header: "x-convoy-signature".into(),
                algorithm: HmacAlgorithm::Sha256,
                encoding,
                prefix: prefix.into(),
                timestamp_header: timestamp.map(Into::into),
                payload: PayloadTemplate::parse(payload).unwrap(),
            },
        }
    }

    fn check(
        scheme: &Generic,
        pairs: &[(&str, &str)],
        body: &[u8],
        now: u64,
    ) -> Result<(), Rejection> {
        scheme.verify(&Inbound {
            headers: &headers(pairs),
            body,
            query: None,
            now,
        })
    }

    #[test]
    fn the_convoy_vectors_verify() {
        let hex = "244449b7f48cbc2709060c9dcdc2b3aa47a78f540430579015c579fb12defbb4";
        let simple = generic(SignatureEncoding::Hex, "", None, "{body}");
        assert_eq!(
            check(&simple, &[("x-convoy-signature", hex)], BODY, 0),
            Ok(())
        );
        let base64 = generic(SignatureEncoding::Base64, "", None, "{body}");
        assert_eq!(
            check(
                &base64,
                &[(
                    "x-convoy-signature",
                    "JERJt/SMvCcJBgydzcKzqkenj1QEMFeQFcV5+xLe+7Q="
                )],
                BODY,
                0
            ),
            Ok(())
        );
        // Convoy's "advanced" form signs `timestamp,body`.
        let advanced = generic(
            SignatureEncoding::Hex,
            "v1=",
            Some("x-convoy-timestamp"),
            "{timestamp},{body}",
        );
        let signature = "v1=77b8b9269f25a199846a55a2bd25b3fba151c70fdae60bb1dcd87fbbc943c55c";
        let pairs = [
            ("x-convoy-signature", signature),
            ("x-convoy-timestamp", "1700000000"),
        ];
        assert_eq!(check(&advanced, &pairs, BODY, 1_700_000_000), Ok(()));
        assert_eq!(
            check(&advanced, &pairs, BODY, 1_700_000_301),
            Err(Rejection::TimestampOutOfTolerance)
        );
        assert_eq!(
            check(&advanced, &pairs, BODY, 1_699_999_699),
            Err(Rejection::TimestampOutOfTolerance)
        );
        assert_eq!(
            check(
                &advanced,
                &[("x-convoy-signature", signature)],
                BODY,
                1_700_000_000
            ),
            Err(Rejection::MalformedSignature),
            "the timestamp header is required"
        );
    }

    #[test]
    fn tampering_prefixes_and_garbage() {
        let hex = "244449b7f48cbc2709060c9dcdc2b3aa47a78f540430579015c579fb12defbb4";
        let prefixed = generic(SignatureEncoding::Hex, "sha256=", None, "{body}");
        assert_eq!(
            check(
                &prefixed,
                &[("x-convoy-signature", &format!("sha256={hex}"))],
                BODY,
                0
            ),
            Ok(())
        );
        assert_eq!(
            check(&prefixed, &[("x-convoy-signature", hex)], BODY, 0),
            Err(Rejection::MalformedSignature)
        );
        assert_eq!(
            check(
                &prefixed,
                &[("x-convoy-signature", &format!("sha256={hex}"))],
                b"{}",
                0
            ),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(&prefixed, &[], BODY, 0),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            check(
                &prefixed,
                &[("x-convoy-signature", &format!("sha256={}", &hex[..32]))],
                BODY,
                0
            ),
            Err(Rejection::SignatureMismatch),
            "truncated"
        );
    }

    #[test]
    fn templates_keep_literal_braces_and_what_it_signs_it_verifies() {
        let scheme = generic(
            SignatureEncoding::Base64,
            "",
            Some("x-ts"),
            "{v}{timestamp}:{body}",
        );
        assert_eq!(
            scheme.scheme.payload.fill("17", b"B"),
            [b"{v}".as_slice(), b"17", b":", b"B"]
        );
        let signed = scheme.sign(BODY, 1_700_000_000);
        let request = Inbound {
            headers: &signed_headers(&signed),
            body: BODY,
            query: None,
            now: 1_700_000_000,
        };
        assert_eq!(scheme.verify(&request), Ok(()));
    }
}
