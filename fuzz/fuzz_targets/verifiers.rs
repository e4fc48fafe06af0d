#![no_main]
//! See `wedsync_sidecar::fuzzing::verifiers`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::verifiers(data));
