#![no_main]
//! See `wedsync_sidecar::fuzzing::request_building`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::request_building(data));
