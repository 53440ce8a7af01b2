//! Fuzz target `pack_parse`: see `library::fuzzing::pack_parse`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| library::fuzzing::pack_parse(data));
