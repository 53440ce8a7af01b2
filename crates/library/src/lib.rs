//! The Spawngrid library: a deduplicating, content-addressed store of filesystem snapshots.
//!
//! This crate is what venti was to the 2018 grid. Everything stored is an immutable object
//! named by its [`Score`] (BLAKE3-256 of its plain bytes): file data (whole small files, or
//! FastCDC chunks of large ones), chunk lists, directory [`Tree`]s and [`Snapshot`]s. Objects are
//! zstd-compressed where that pays and packed into pack files on a [`Backend`]; an in-memory
//! index, rebuilt from the packs alone, maps scores to pack records.
//!
//! The main entry points:
//! - [`Library`]: open or create a library, put and get objects;
//! - [`import`]: turn a directory or a tar stream into a snapshot;
//! - [`export`]: write a snapshot out as a directory or a tar stream;
//! - [`overlay`]: apply an overlayfs upper directory to a parent snapshot (what `save` uses);
//! - [`diff`], [`verify`], [`gc`], [`stats`]: inspection and maintenance.
//!
//! The on-disk format is specified in `docs/architecture.md` and versioned by [`config::VERSION`].

pub mod atomic;
pub mod backend;
pub mod build;
mod codec;
pub mod config;
pub mod coord;
pub mod diff;
mod error;
pub mod export;
pub mod faults;
pub mod file;
#[cfg(test)]
mod fixture;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gc;
pub mod import;
pub mod lease;
pub mod names;
pub mod overlay;
pub mod pack;
mod packindex;
pub mod progress;
mod reach;
mod score;
pub mod snapshot;
pub mod stats;
mod store;
pub mod tree;
pub mod verify;
mod walk;

pub use backend::{Backend, LocalBackend};
pub use config::Config;
pub use error::{Error, Result};
pub use score::{ParseScoreError, Score};
pub use snapshot::Snapshot;
pub use store::{Library, SharedIndex};
pub use tree::{Content, Entry, FileData, Meta, Tree};
