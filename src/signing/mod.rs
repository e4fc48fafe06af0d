//! Signatures, shared by the webhook verifiers and delivery's re-signing:
//! HMAC and digests over byte parts, hex and base64 codecs, constant-time
//! comparison (`mac`), and Standard Webhooks signing (`standard`). Never
//! logs or returns a key.

pub mod jwt;
pub mod mac;
pub mod standard;
