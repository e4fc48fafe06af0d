#![no_main]
//! See `wedsync_sidecar::fuzzing::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::config(data));
