#![no_main]
//! See `wedsync_sidecar::fuzzing::mac_decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::mac_decoders(data));
