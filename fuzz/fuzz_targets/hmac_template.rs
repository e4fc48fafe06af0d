#![no_main]
//! See `wedsync_sidecar::fuzzing::hmac_template`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::hmac_template(data));
