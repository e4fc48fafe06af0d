//! Shopify: `X-Shopify-Hmac-Sha256` (or the newer un-prefixed
//! `shopify-hmac-sha256`, read first), base64 HMAC-SHA256 of the body keyed
//! by the app's client secret. No timestamp: dedup stops replays.

use super::{check_signature, Head, Inbound, Rejection, Scheme, Signed};
use crate::signing::mac::{decode_base64, encode_base64, hmac, Algorithm};

pub struct Shopify {
    pub keys: Vec<Vec<u8>>,
}

fn parse(request: &Head<'_>) -> Result<Vec<u8>, Rejection> {
    let value = request
        .headers
        .get("shopify-hmac-sha256")
        .or_else(|| request.headers.get("x-shopify-hmac-sha256"))
        .ok_or(Rejection::MissingSignature)?;
    value
        .to_str()
        .ok()
        .and_then(|v| decode_base64(v.trim()))
        .ok_or(Rejection::MalformedSignature)
}

impl Scheme for Shopify {
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection> {
        parse(request).map(drop)
    }

    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection> {
        let received = parse(&request.head())?;
        check_signature(Algorithm::Sha256, &self.keys, &[request.body], &[received])
    }

    fn sign(&self, body: &[u8], _now: u64) -> Signed {
        let mac = hmac(Algorithm::Sha256, &self.keys[0], &[body]);
        Signed {
            headers: vec![("X-Shopify-Hmac-Sha256".into(), encode_base64(&mac))],
            url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::verify::testing::headers;

    const BODY: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    const GOLDEN: &str = "m72AsY8Tri/FnNAECj0zphiQiDio/g5yAPcgD53MjOw=";

    fn check(secrets: &[&str], pairs: &[(&str, &str)], body: &[u8]) -> Result<(), Rejection> {
        Shopify {
            keys: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        }
        .verify(&Inbound {
            headers: &headers(pairs),
            body,
            query: None,
            now: 0,
        })
    }

    #[test]
    fn the_computed_vector_verifies_under_both_header_names() {
        assert_eq!(
            check(
                &["shpss_test_secret"],
                &[("x-shopify-hmac-sha256", GOLDEN)],
                BODY
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &["shpss_test_secret"],
                &[("shopify-hmac-sha256", GOLDEN)],
                BODY
            ),
            Ok(())
        );
        let scheme = Shopify {
            keys: vec![b"shpss_test_secret".to_vec()],
        };
        assert_eq!(scheme.sign(BODY, 0).headers[0].1, GOLDEN);
    }

    #[test]
    fn tampering_rotation_and_garbage() {
        let header = [("x-shopify-hmac-sha256", GOLDEN)];
        assert_eq!(
            check(&["shpss_test_secret"], &header, b"{}"),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(&["shpss_new_secret_1", "shpss_test_secret"], &header, BODY),
            Ok(())
        );
        assert_eq!(
            check(&["shpss_new_secret_1"], &header, BODY),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(&["shpss_test_secret"], &[], BODY),
            Err(Rejection::MissingSignature)
        );
        for garbled in [
            "",
            "not base64!",
            "m72AsY8Tri/FnNAECj0zphiQiDio/g5yAPcgD53MjOw",
        ] {
            assert_eq!(
                check(
                    &["shpss_test_secret"],
                    &[("x-shopify-hmac-sha256", garbled)],
                    BODY
                ),
                Err(Rejection::MalformedSignature),
                "{garbled:?}"
            );
        }
        assert_eq!(
            check(
                &["shpss_test_secret"],
                &[("x-shopify-hmac-sha256", "m72AsY8Tri/FnNAECj0zphiQ")],
                BODY
            ),
            Err(Rejection::SignatureMismatch),
            "truncated"
        );
    }
}
