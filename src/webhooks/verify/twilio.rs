//! Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 keyed by the auth token,
//! over the URL Twilio was configured with (`public_url`, never the Host the
//! request claims, plus the query exactly as received) followed by each form
//! parameter as `name` + `value`, sorted, identical pairs once. A JSON body
//! is signed through the URL instead: its `bodySHA256` parameter must be the
//! body's SHA-256. Like the official SDKs, the URL also verifies with its
//! port removed and with the scheme's default port added.

use super::{header, Head, Inbound, Rejection, Scheme, Signed, SignedIdentity};
use crate::signing::mac::{
    any_key_signed, decode_base64, encode_base64, encode_hex, hmac, same, sha256, Algorithm,
};

pub struct Twilio {
    pub keys: Vec<Vec<u8>>,
    pub public_url: String,
}

const FORM: &str = "application/x-www-form-urlencoded";

impl Twilio {
    pub fn url(&self, query: Option<&str>) -> String {
        match query.filter(|q| !q.is_empty()) {
            None => self.public_url.clone(),
            Some(query) if self.public_url.contains('?') => format!("{}&{query}", self.public_url),
            Some(query) => format!("{}?{query}", self.public_url),
        }
    }
}

/// The form parameters, decoded, sorted by name then value, each pair once.
pub fn form_parameters(body: &[u8]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// What Twilio signs: the URL, then each parameter's name and value.
fn signed_content<'a>(url: &'a str, parameters: &'a [(String, String)]) -> Vec<&'a [u8]> {
    let mut content: Vec<&[u8]> = vec![url.as_bytes()];
    for (name, value) in parameters {
        content.push(name.as_bytes());
        content.push(value.as_bytes());
    }
    content
}

/// The URL as configured, without its port, and with the default port.
pub fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let host = host_without_port(authority);
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    for candidate in [
        format!("{scheme}://{host}{tail}"),
        format!("{scheme}://{host}:{default_port}{tail}"),
    ] {
        if !variants.contains(&candidate) {
            variants.push(candidate);
        }
    }
    variants
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`; no port: unchanged.
pub fn host_without_port(authority: &str) -> &str {
    let port_at = if authority.starts_with('[') {
        authority.find("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    match port_at {
        Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
        _ => authority,
    }
}

pub fn query_value<'a>(url: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// Is the body a form (the content type's case does not matter)?
pub fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with(FORM))
}

fn parse(request: &Head<'_>) -> Result<Vec<u8>, Rejection> {
    let value = header(
        request.headers,
        "x-twilio-signature",
        Rejection::MissingSignature,
    )?;
    decode_base64(value).ok_or(Rejection::MalformedSignature)
}

impl Twilio {
    /// The signed parameters: a form's, or none for a JSON body, which is
    /// signed through the URL's `bodySHA256` (checked here).
    fn parameters(
        &self,
        request: &Inbound<'_>,
        url: &str,
    ) -> Result<Vec<(String, String)>, Rejection> {
        if is_form(request.headers) {
            return Ok(form_parameters(request.body));
        }
        if !request.body.is_empty() {
            let claimed = query_value(url, "bodySHA256").ok_or(Rejection::SignatureMismatch)?;
            let actual = encode_hex(&sha256(request.body));
            if !same(actual.as_bytes(), claimed.to_ascii_lowercase().as_bytes()) {
                return Err(Rejection::SignatureMismatch);
            }
        }
        Ok(Vec::new())
    }
}

impl Scheme for Twilio {
    fn check_headers(&self, request: &Head<'_>) -> Result<(), Rejection> {
        parse(request).map(drop)
    }

    fn verify(&self, request: &Inbound<'_>) -> Result<(), Rejection> {
        let received = [parse(&request.head())?];
        let url = self.url(request.query);
        let parameters = self.parameters(request, &url)?;
        let matched = url_variants(&url).iter().any(|candidate| {
            let content = signed_content(candidate, &parameters);
            any_key_signed(Algorithm::Sha1, &self.keys, &content, &received)
        });
        matched.then_some(()).ok_or(Rejection::SignatureMismatch)
    }

    /// What Twilio signed, in canonical form (the configured URL, the query
    /// as received, the parameters sorted): the same request with its
    /// parameters reordered, its content type in other case or another
    /// `I-Twilio-Idempotency-Token` is the same event.
    fn identity(&self, request: &Inbound<'_>) -> SignedIdentity {
        let url = self.url(request.query);
        let parameters = self.parameters(request, &url).unwrap_or_default();
        let mut content = Vec::new();
        for part in signed_content(&url, &parameters) {
            // Length-prefixed, so that no two parameter lists run together.
            content.extend_from_slice(&(part.len() as u64).to_be_bytes());
            content.extend_from_slice(part);
        }
        SignedIdentity {
            id: None,
            digest: Some(sha256(&content)),
        }
    }

    /// Signs a form body as posted to `public_url`; any other body as JSON,
    /// with `bodySHA256` added to the URL.
    fn sign(&self, body: &[u8], _now: u64) -> Signed {
        let is_form = !body.is_empty()
            && !body.starts_with(b"{")
            && !body.starts_with(b"[")
            && body.contains(&b'=');
        let (url, parameters) = if is_form || body.is_empty() {
            (self.public_url.clone(), form_parameters(body))
        } else {
            let hash = encode_hex(&sha256(body));
            (self.url(Some(&format!("bodySHA256={hash}"))), Vec::new())
        };
        let mac = hmac(
            Algorithm::Sha1,
            &self.keys[0],
            &signed_content(&url, &parameters),
        );
        let content_type = if is_form { FORM } else { "application/json" };
        Signed {
            headers: vec![
                ("X-Twilio-Signature".into(), encode_base64(&mac)),
                ("Content-Type".into(), content_type.into()),
            ],
            url: Some(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::verify::testing::headers;

    const PARAMS: &[u8] = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
    const QUERY: &str = "foo=1&bar=2";

    fn twilio(public_url: &str) -> Twilio {
        Twilio {
            keys: vec![b"12345".to_vec()],
            public_url: public_url.into(),
        }
    }

    fn check(
        scheme: &Twilio,
        signature: &str,
        content_type: &str,
        body: &[u8],
        query: &str,
    ) -> Result<(), Rejection> {
        scheme.verify(&Inbound {
            headers: &headers(&[
                ("x-twilio-signature", signature),
                ("content-type", content_type),
            ]),
            body,
            query: Some(query),
            now: 0,
        })
    }

    #[test]
    fn the_sdk_vectors_verify_with_and_without_ports() {
        for (public_url, signature) in [
            (
                "https://mycompany.com/myapp.php",
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            ),
            (
                "https://mycompany.com:1234/myapp.php",
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            ),
            (
                "https://mycompany.com/myapp.php",
                "kvajT1Ptam85bY51eRf/AJRuM3w=",
            ),
            (
                "http://mycompany.com:1234/myapp.php",
                "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
            ),
            (
                "http://mycompany.com/myapp.php",
                "0ZXoZLH/DfblKGATFgpif+LLRf4=",
            ),
        ] {
            assert_eq!(
                check(&twilio(public_url), signature, FORM, PARAMS, QUERY),
                Ok(()),
                "{public_url} {signature}"
            );
        }
    }

    #[test]
    fn repeated_parameters_are_sorted_and_counted_once() {
        let body = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234&Digits=1234";
        assert_eq!(
            check(
                &twilio("https://mycompany.com/myapp.php"),
                "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
                FORM,
                body,
                QUERY
            ),
            Ok(())
        );
    }

    #[test]
    fn json_bodies_are_signed_through_body_sha256() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let query = format!("{QUERY}&bodySHA256={hash}");
        let scheme = twilio("https://mycompany.com/myapp.php");
        assert_eq!(
            check(
                &scheme,
                "a9nBmqA0ju/hNViExpshrM61xv4=",
                "application/json",
                body,
                &query
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &scheme,
                "a9nBmqA0ju/hNViExpshrM61xv4=",
                "application/json",
                br#"{"property": "other"}"#,
                &query
            ),
            Err(Rejection::SignatureMismatch),
            "the body does not match its hash"
        );
        assert_eq!(
            check(
                &scheme,
                "a9nBmqA0ju/hNViExpshrM61xv4=",
                "application/json",
                body,
                QUERY
            ),
            Err(Rejection::SignatureMismatch),
            "no bodySHA256"
        );
    }

    #[test]
    fn tampering_wrong_urls_tokens_and_garbage() {
        let scheme = twilio("https://mycompany.com/myapp.php");
        let good = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert_eq!(
            check(&scheme, good, FORM, b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=9999&From=%2B14158675309&To=%2B18005551212", QUERY),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(
                &twilio("https://evil.example/myapp.php"),
                good,
                FORM,
                PARAMS,
                QUERY
            ),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(&scheme, good, FORM, PARAMS, "foo=1"),
            Err(Rejection::SignatureMismatch)
        );
        let wrong_token = Twilio {
            keys: vec![b"54321".to_vec()],
            public_url: "https://mycompany.com/myapp.php".into(),
        };
        assert_eq!(
            check(&wrong_token, good, FORM, PARAMS, QUERY),
            Err(Rejection::SignatureMismatch)
        );
        for garbled in ["", "not base64!", "RSOYDt4T1cUTdK1PDd93/VVr8B8"] {
            assert_eq!(
                check(&scheme, garbled, FORM, PARAMS, QUERY),
                Err(Rejection::MalformedSignature),
                "{garbled:?}"
            );
        }
        assert_eq!(
            check(&scheme, "RSOYDt4T1cUTdK1P", FORM, PARAMS, QUERY),
            Err(Rejection::SignatureMismatch),
            "truncated"
        );
        let missing = scheme.verify(&Inbound {
            headers: &headers(&[("content-type", FORM)]),
            body: PARAMS,
            query: Some(QUERY),
            now: 0,
        });
        assert_eq!(missing, Err(Rejection::MissingSignature));
    }

    #[test]
    fn ports_are_found_in_names_and_ipv6_addresses() {
        assert_eq!(host_without_port("example.com:8443"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(
            url_variants("https://a.example:8443/x?y=1"),
            [
                "https://a.example:8443/x?y=1",
                "https://a.example/x?y=1",
                "https://a.example:443/x?y=1"
            ]
        );
    }

    #[test]
    fn what_it_signs_it_verifies() {
        let scheme = twilio("https://hooks.example.net/twilio/sms");
        let json: &[u8] = br#"{"MessageSid":"SM1"}"#;
        for body in [PARAMS, json] {
            let signed = scheme.sign(body, 0);
            let url = signed.url.clone().unwrap();
            let query = url.split_once('?').map(|(_, q)| q.to_string());
            let request = Inbound {
                headers: &crate::webhooks::verify::testing::signed_headers(&signed),
                body,
                query: query.as_deref(),
                now: 0,
            };
            assert_eq!(scheme.verify(&request), Ok(()), "{url}");
        }
    }
}
