//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body.
//! The legacy SHA-1 header counts only when `allow_sha1` is set and the
//! SHA-256 one is absent: never a downgrade by default.

use super::{check_signature, Head, Inbound, Rejection, Scheme, Signed};
use crate::signing::mac::{decode_hex, encode_hex, hmac, Algorithm};

pub struct Github {
    pub keys: Vec<Vec<u8>>,
    pub allow_sha1: bool,
}

impl Github {
    /// The algorithm and MAC of the strongest signature header allowed.
    fn parse(&self, request: &Head<'_>) -> Result<(Algorithm, Vec<u8>), Rejection> {
        let (algorithm, prefix, value) = match request.headers.get("x-hub-signature-256") {
            Some(value) => (Algorithm::Sha256, "sha256=", value),
            None => match request.headers.get("x-hub-signature") {
                Some(value) if self.allow_sha1 => (Algorithm::Sha1, "sha1=", value),
                _ => return Err(Rejection::MissingSignature),
            },
        };
        let received = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().strip_prefix(prefix))
            .and_then(decode_hex)
            .ok_or(Rejection::MalformedSignature)?;
        Ok((algorithm, received))
    }
}

impl Scheme for Github {
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection> {
        self.parse(request).map(drop)
    }

    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection> {
        let (algorithm, received) = self.parse(&request.head())?;
        check_signature(algorithm, &self.keys, &[request.body], &[received])
    }

    fn sign(&self, body: &[u8], _now: u64) -> Signed {
        let mac = hmac(Algorithm::Sha256, &self.keys[0], &[body]);
        Signed {
            headers: vec![(
                "X-Hub-Signature-256".into(),
                format!("sha256={}", encode_hex(&mac)),
            )],
            url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::verify::testing::headers;

    fn github(secrets: &[&str], allow_sha1: bool) -> Github {
        Github {
            keys: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            allow_sha1,
        }
    }

    fn check(scheme: &Github, pairs: &[(&str, &str)], body: &[u8]) -> Result<(), Rejection> {
        scheme.verify(&Inbound {
            headers: &headers(pairs),
            body,
            query: None,
            now: 0,
        })
    }

    const DOCS: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const DOCS_SHA1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";
    const SECRET: &str = "It's a Secret to Everybody";

    #[test]
    fn the_docs_and_octokit_vectors_verify() {
        let docs = github(&[SECRET], false);
        assert_eq!(
            check(&docs, &[("x-hub-signature-256", DOCS)], b"Hello, World!"),
            Ok(())
        );
        assert_eq!(docs.sign(b"Hello, World!", 0).headers[0].1, DOCS);
        let octokit = github(&["mysecret"], false);
        let sig = "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3";
        assert_eq!(
            check(
                &octokit,
                &[("x-hub-signature-256", sig)],
                br#"{"foo":"bar"}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn sha1_only_when_enabled_and_never_over_sha256() {
        let body = b"Hello, World!";
        assert_eq!(
            check(
                &github(&[SECRET], false),
                &[("x-hub-signature", DOCS_SHA1)],
                body
            ),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            check(
                &github(&[SECRET], true),
                &[("x-hub-signature", DOCS_SHA1)],
                body
            ),
            Ok(())
        );
        let bad_256 = format!("sha256={}", "0".repeat(64));
        assert_eq!(
            check(
                &github(&[SECRET], true),
                &[
                    ("x-hub-signature-256", &bad_256),
                    ("x-hub-signature", DOCS_SHA1)
                ],
                body
            ),
            Err(Rejection::SignatureMismatch),
            "a valid SHA-1 never rescues a wrong SHA-256"
        );
    }

    #[test]
    fn tampering_rotation_and_garbage() {
        let body = b"Hello, World!";
        assert_eq!(
            check(
                &github(&[SECRET], false),
                &[("x-hub-signature-256", DOCS)],
                b"Hello, World?"
            ),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(
                &github(&["another secret value", SECRET], false),
                &[("x-hub-signature-256", DOCS)],
                body
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &github(&["another secret value"], false),
                &[("x-hub-signature-256", DOCS)],
                body
            ),
            Err(Rejection::SignatureMismatch)
        );
        for garbled in [
            "",
            "sha256=",
            "757107ea",
            "sha256=xyz",
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
        ] {
            assert_eq!(
                check(
                    &github(&[SECRET], false),
                    &[("x-hub-signature-256", garbled)],
                    body
                ),
                Err(Rejection::MalformedSignature),
                "{garbled:?}"
            );
        }
        assert_eq!(
            check(
                &github(&[SECRET], false),
                &[("x-hub-signature-256", &DOCS[..39])],
                body
            ),
            Err(Rejection::SignatureMismatch),
            "truncated"
        );
        assert_eq!(
            check(&github(&[SECRET], false), &[], body),
            Err(Rejection::MissingSignature)
        );
    }
}
