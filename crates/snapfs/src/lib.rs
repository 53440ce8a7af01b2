//! snapfs: any snapshot of the Spawngrid library, mounted instantly as a lazy, read-only
//! filesystem (what fossil was to venti in the 2018 grid).
//!
//! - [`nodes`]: deterministic node ids and directories decoded on demand;
//! - [`attr`]: library metadata as kernel attributes (hardlinks share an inode number);
//! - [`cache`]: the node-local file cache (verified, size-limited, LRU);
//! - [`fs`]: the FUSE filesystem (passthrough reads);
//! - [`mount`]: mounting, the per-mount registry under `DATA/mounts/`, and unmounting.
//!
//! The design and its promises are in `docs/architecture.md`, section *Snapshot filesystem*.

#![warn(missing_docs)]

pub mod attr;
pub mod cache;
pub mod fs;
pub mod mount;
pub mod nodes;

pub use cache::Cache;
pub use fs::{FsOptions, SnapFs};
