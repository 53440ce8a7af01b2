//! Storage backends: where the library's files live.
//!
//! The trait is kept to what an S3-compatible object store can do: whole-object writes, whole
//! and ranged reads, listing by prefix and deletes. No rename, no append, no locking primitive.

pub mod cache;
mod local;

pub use local::LocalBackend;

use crate::Result;

/// A flat key-value store of immutable files, keyed by `/`-separated paths.
pub trait Backend: Send + Sync {
    /// Stores `data` under `key` atomically: readers see all of it or nothing.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Reads the whole of `key`.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Reads `len` bytes of `key` starting at `offset`.
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Lists keys starting with `prefix`, with their sizes in bytes.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// Deletes `key`; deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Whether `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Where this backend keeps its data, for messages.
    fn describe(&self) -> String;
}
