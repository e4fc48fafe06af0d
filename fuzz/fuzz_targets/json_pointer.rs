#![no_main]
//! See `wedsync_sidecar::fuzzing::json_pointer`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::json_pointer(data));
