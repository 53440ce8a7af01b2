//! Fuzz target `layers`: see `library::fuzzing::layers`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| library::fuzzing::layers(data));
