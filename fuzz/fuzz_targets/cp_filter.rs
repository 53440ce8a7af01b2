//! Fuzz target `cp_filter`: the node's `cp` upload filter, compiled from the node's own source
//! file; see its `fuzz` harness.
#![no_main]
#[path = "../../crates/node/src/files/tarfilter.rs"]
mod tarfilter;
libfuzzer_sys::fuzz_target!(|data: &[u8]| tarfilter::fuzz(data));
