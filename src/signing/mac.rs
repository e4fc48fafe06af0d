//! The arithmetic every scheme shares: HMACs, strict decoding of received
//! signatures, and a constant-time comparison on decoded bytes of equal
//! length (a length mismatch is rejected first, which reveals nothing).

use base64::Engine;
use ring::hmac;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

pub fn hmac(algorithm: Algorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let algorithm = match algorithm {
        Algorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        Algorithm::Sha256 => hmac::HMAC_SHA256,
        Algorithm::Sha512 => hmac::HMAC_SHA512,
    };
    let mut context = hmac::Context::with_key(&hmac::Key::new(algorithm, key));
    for part in parts {
        context.update(part);
    }
    context.sign().as_ref().to_vec()
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// Lowercase or uppercase hex; None for anything else (empty or odd
/// length included).
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty()
        || !text.len().is_multiple_of(2)
        || !text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard alphabet, padded, canonical: a non-canonical encoding is
/// refused rather than normalised. Empty is no signature at all.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether any key's MAC of `content` equals any of the received
/// signatures: rotation (several secrets) and schemes that send several
/// signatures at once.
pub fn any_key_signed(
    algorithm: Algorithm,
    keys: &[Vec<u8>],
    content: &[&[u8]],
    signatures: &[Vec<u8>],
) -> bool {
    keys.iter().any(|key| {
        let expected = hmac(algorithm, key, content);
        signatures.iter().any(|received| same(&expected, received))
    })
}

/// Equal length first, then every byte, in constant time.
pub fn same(expected: &[u8], received: &[u8]) -> bool {
    expected.len() == received.len() && bool::from(expected.ct_eq(received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_are_strict() {
        assert_eq!(decode_hex("00ff"), Some(vec![0, 255]));
        assert_eq!(decode_hex("00FF"), Some(vec![0, 255]));
        for bad in ["", "0", "0g", "+1", "zz"] {
            assert_eq!(decode_hex(bad), None, "{bad}");
        }
        assert_eq!(decode_base64("AAE="), Some(vec![0, 1]));
        for bad in ["", "AAE", "AAF=", "A-E=", "AB=="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn comparison_needs_equal_length_and_bytes() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
