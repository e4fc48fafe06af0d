#![no_main]
//! See `wedsync_sidecar::fuzzing::store_records`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::store_records(data));
