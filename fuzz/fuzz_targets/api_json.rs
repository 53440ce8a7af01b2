//! Fuzz target `api_json`: the API's JSON request bodies; see `api::fuzzing`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| api::fuzzing::fuzz(data));
