//! Fuzz target `tree_decode`: see `library::fuzzing::tree_decode`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| library::fuzzing::tree_decode(data));
