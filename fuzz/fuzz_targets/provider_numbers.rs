#![no_main]
//! See `wedsync_sidecar::fuzzing::provider_numbers`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::provider_numbers(data));
