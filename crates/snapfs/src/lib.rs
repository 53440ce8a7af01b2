//! snapfs: any snapshot of the Spawngrid library, mounted instantly as a lazy, read-only
//! filesystem (what fossil was to venti in the 2018 grid).
//!
//! - [`nodes`]: deterministic node ids and directories decoded on demand;
//! - [`attr`]: library metadata as kernel attributes (hardlinks share an inode number);
//! - [`cache`]: the node-local file cache (verified, size-limited, LRU);
//! - [`fs`]: the FUSE filesystem (passthrough reads);
//! - [`journal`]: the backing ids a server registered, kept for its successor;
//! - [`adopt`]: a new server taking over a live FUSE connection;
//! - [`serve`]: the server process of one mount;
//! - [`warm`]: the loader, libc and shell fetched ahead when a mount goes live;
//! - [`keeper`]: the process that makes a mount, holds its connection and restarts its server;
//! - [`launch`]: starting a keeper from another process and waiting for its mount;
//! - [`mount`]: the per-mount registry under `DATA/mounts/`, mount states, and unmounting.
//!
//! The design and its promises are in `docs/architecture.md`, section *Snapshot filesystem*.

pub mod adopt;
pub mod attr;
pub mod cache;
pub mod fs;
pub mod journal;
pub mod keeper;
pub mod launch;
pub mod mount;
pub mod nodes;
pub mod serve;
pub mod warm;

pub use cache::Cache;
pub use fs::{FsOptions, SnapFs};
