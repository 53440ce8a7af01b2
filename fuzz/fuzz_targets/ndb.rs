//! Fuzz target `ndb`: the grid file's parser, compiled from the client's own source file;
//! see its `fuzz` harness.
#![no_main]
#[path = "../../crates/spawngrid/src/client/ndb.rs"]
mod ndb;
libfuzzer_sys::fuzz_target!(|data: &[u8]| ndb::fuzz(data));
