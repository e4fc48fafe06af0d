//! An RSA private key from a PEM (`services.<name>.auth.private_key` of a
//! GitHub App): parsed when the config is read, so that `check` refuses a
//! key nothing could sign with, and kept parsed for the egress. Never
//! printed: Debug and Serialize show `<redacted>`.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use ring::signature::RsaKeyPair;

use super::secret::REDACTED;

/// The most a PEM file may hold: an RSA-8192 key is under 7 KiB.
pub const MAX_PEM: u64 = 64 * 1024;

#[derive(Clone)]
pub struct RsaPrivateKey {
    pem: Arc<str>,
    key: Arc<RsaKeyPair>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a PEM private key: expected -----BEGIN RSA PRIVATE KEY----- (as GitHub issues it) or -----BEGIN PRIVATE KEY-----")]
    NotPem,
    #[error("the PEM's base64 is damaged")]
    Base64,
    #[error("not a usable RSA private key ({0}); GitHub Apps use RSA keys of 2048 bits or more")]
    Rejected(String),
}

impl RsaPrivateKey {
    /// PKCS#1 (`RSA PRIVATE KEY`, what GitHub's "Generate a private key"
    /// downloads) or PKCS#8 (`PRIVATE KEY`, what `openssl pkcs8` makes).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_block(pem)?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            _ => return Err(KeyError::NotPem),
        }
        .map_err(|e| KeyError::Rejected(e.to_string()))?;
        Ok(Self {
            pem: pem.into(),
            key: Arc::new(key),
        })
    }

    pub fn key(&self) -> &RsaKeyPair {
        &self.key
    }
}

/// The first PEM block's label and bytes.
fn pem_block(pem: &str) -> Result<(String, Vec<u8>), KeyError> {
    let mut lines = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "));
    let label = lines
        .next()
        .and_then(|l| l.strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or(KeyError::NotPem)?
        .to_string();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended {
        return Err(KeyError::NotPem);
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| KeyError::Base64)?;
    Ok((label, der))
}

impl PartialEq for RsaPrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.pem == other.pem
    }
}

impl fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for RsaPrivateKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_pem_key_is_refused_with_its_reason() {
        assert_eq!(
            RsaPrivateKey::from_pem("ghp_not_a_key").unwrap_err(),
            KeyError::NotPem
        );
        assert_eq!(
            RsaPrivateKey::from_pem("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n").unwrap_err(),
            KeyError::NotPem,
            "no end line"
        );
        assert_eq!(
            RsaPrivateKey::from_pem(
                "-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n"
            )
            .unwrap_err(),
            KeyError::Base64
        );
        assert!(matches!(
            RsaPrivateKey::from_pem(
                "-----BEGIN RSA PRIVATE KEY-----\nMIIBAA==\n-----END RSA PRIVATE KEY-----\n"
            ),
            Err(KeyError::Rejected(_))
        ));
        assert_eq!(
            RsaPrivateKey::from_pem(
                "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n"
            )
            .unwrap_err(),
            KeyError::NotPem
        );
    }
}
