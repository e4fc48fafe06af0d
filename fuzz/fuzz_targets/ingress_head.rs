#![no_main]
//! See `wedsync_sidecar::fuzzing::ingress_head`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::ingress_head(data));
