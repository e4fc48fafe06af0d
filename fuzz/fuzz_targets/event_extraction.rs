#![no_main]
//! See `wedsync_sidecar::fuzzing::event_extraction`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::event_extraction(data));
