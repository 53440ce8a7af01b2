//! The binary's end-to-end tests, one integration-test binary with a module per topic (as
//! ripgrep's `tests/tests.rs`), so the shared helpers in `common` compile once. Run one topic
//! with `cargo test --release -p spawngrid --test e2e cpu::` (as root, with the test root
//! filesystems: see scripts/test.sh).

mod common;

mod capacity;
mod cpu;
mod dos;
mod egress;
mod env_cli;
mod faults;
mod fork;
mod gc_grid;
mod grid;
mod invite;
mod library;
mod lifetime;
mod node;
mod orc;
mod preview;
mod schemathesis;
mod sftp;
mod ssh;
mod ssh_forward;
mod up;
mod views;
mod web;
