#![no_main]
//! See `wedsync_sidecar::fuzzing::twilio_helpers`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| wedsync_sidecar::fuzzing::twilio_helpers(data));
