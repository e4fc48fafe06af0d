#![no_main]
//! See `wedsync_sidecar::fuzzing::dead_letter_query`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::dead_letter_query(data));
