//! The JWT a GitHub App authenticates as itself with (RS256): issued a
//! minute in the past against clock drift, expiring 10 minutes after that
//! (GitHub refuses a longer one), `iss` the app's id.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

/// How far back `iat` is set: GitHub's own advice against clock drift.
pub const DRIFT_S: u64 = 60;
/// `exp - iat`: the longest GitHub takes.
pub const LIFETIME_S: u64 = 600;

#[derive(Debug, thiserror::Error)]
#[error("could not sign the GitHub App's JWT")]
pub struct SignError;

/// A JWT for `app_id` (its numeric id, or its client id), valid now.
pub fn github_app(app_id: &str, key: &RsaKeyPair, now_s: u64) -> Result<String, SignError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = now_s.saturating_sub(DRIFT_S);
    // A numeric app id is a number in the claims, a client id a string.
    let iss = match app_id.parse::<u64>() {
        Ok(id) => serde_json::Value::from(id),
        Err(_) => serde_json::Value::from(app_id),
    };
    let claims = serde_json::json!({ "iat": iat, "exp": iat + LIFETIME_S, "iss": iss });
    let mut token = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    token.push('.');
    token.push_str(&b64.encode(claims.to_string()));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        token.as_bytes(),
        &mut signature,
    )
    .map_err(|_| SignError)?;
    token.push('.');
    token.push_str(&b64.encode(signature));
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::private_key::RsaPrivateKey;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    /// A key made for these tests only (`openssl genrsa -traditional 2048`).
    const PKCS1: &str = include_str!("../../tests/fixtures/github_app_test_key.pem");
    const PKCS8: &str = include_str!("../../tests/fixtures/github_app_test_key.pkcs8.pem");
    const PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/github_app_test_key.pub.der");

    fn claims(token: &str) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            b64.decode(parts[0]).unwrap(),
            br#"{"alg":"RS256","typ":"JWT"}"#
        );
        let signed = &token[..parts[0].len() + 1 + parts[1].len()];
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, PUBLIC)
            .verify(signed.as_bytes(), &b64.decode(parts[2]).unwrap())
            .expect("signed with the app's key");
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap()
    }

    #[test]
    fn the_token_is_signed_rs256_and_lives_ten_minutes_from_a_minute_ago() {
        for pem in [PKCS1, PKCS8] {
            let key = RsaPrivateKey::from_pem(pem).unwrap();
            let token = github_app("123456", key.key(), 1_700_000_000).unwrap();
            assert_eq!(
                claims(&token),
                serde_json::json!({ "iat": 1_699_999_940u64, "exp": 1_700_000_540u64, "iss": 123456 })
            );
        }
        let key = RsaPrivateKey::from_pem(PKCS1).unwrap();
        let token = github_app("Iv23liABC", key.key(), 1_700_000_000).unwrap();
        assert_eq!(claims(&token)["iss"], "Iv23liABC", "a client id");
    }
}
