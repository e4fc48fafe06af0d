//! The request headers the event log keeps with an event: everything the
//! provider sent, with the values of signature and credential headers
//! replaced, so that the log (and the console that shows it) never holds
//! a signature to replay or a token to reuse.

use http::HeaderMap;

/// What a redacted value reads as.
pub const REDACTED: &str = "[redacted]";

/// Parts of a header name that mark its value as a signature or a secret.
const SECRET_PARTS: [&str; 6] = [
    "signature",
    "authorization",
    "cookie",
    "token",
    "secret",
    "api-key",
];

/// The headers in arrival order, names lowercase, values as text (bytes
/// that are not UTF-8 replaced), secrets redacted.
pub fn kept(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            let value = if is_secret(name) {
                REDACTED.to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.to_string(), value)
        })
        .collect()
}

fn is_secret(name: &str) -> bool {
    SECRET_PARTS.iter().any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_and_credentials_are_redacted_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("stripe-signature", "t=1,v1=abc".parse().unwrap());
        headers.insert("x-hub-signature-256", "sha256=abc".parse().unwrap());
        headers.insert("x-twilio-signature", "abc=".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("x-api-key", "k".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("user-agent", "Stripe/1.0".parse().unwrap());
        let kept = kept(&headers);
        let value = |name: &str| kept.iter().find(|(n, _)| n == name).unwrap().1.as_str();
        for secret in [
            "stripe-signature",
            "x-hub-signature-256",
            "x-twilio-signature",
            "authorization",
            "x-api-key",
        ] {
            assert_eq!(value(secret), REDACTED, "{secret}");
        }
        assert_eq!(value("content-type"), "application/json");
        assert_eq!(value("user-agent"), "Stripe/1.0");
    }
}
