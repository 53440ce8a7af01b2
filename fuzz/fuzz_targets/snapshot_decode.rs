//! Fuzz target `snapshot_decode`: see `library::fuzzing::snapshot_decode`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| library::fuzzing::snapshot_decode(data));
