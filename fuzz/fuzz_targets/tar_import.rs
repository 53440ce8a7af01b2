//! Fuzz target `tar_import`: see `library::fuzzing::tar_import`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| library::fuzzing::tar_import(data));
