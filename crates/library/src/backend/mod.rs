//! Storage backends: where the library's files live.
//!
//! The trait is kept to what an S3-compatible object store can do: whole-object writes, whole
//! and ranged reads, listing by prefix and deletes. No rename, no append, no locking primitive.

pub mod cache;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod local;

pub use local::LocalBackend;

use crate::{Error, Result};
use bytes::Bytes;

/// Checks that `key` is a valid backend key: non-empty `/`-separated components, none of them
/// empty, `.` or `..` (so a key never escapes a backend's root or prefix).
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::BadInput(format!("invalid backend key {key:?}")))
    }
}

/// A flat key-value store of immutable files, keyed by `/`-separated paths.
pub trait Backend: Send + Sync {
    /// Stores `data` under `key` atomically: readers see all of it or nothing.
    ///
    /// The library writes content-named, write-once keys (packs); the only keys it rewrites
    /// are its `config` (on upgrade) and lease files, always with a plain overwrite.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// [`Backend::put`] of bytes the caller gives away (a whole pack): a backend that hands
    /// them to a client (S3) sends them without copying them first. By default, `put`.
    fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        self.put(key, &data)
    }
    /// Reads the whole of `key`. A missing key is an error for which
    /// [`Error::is_not_found`] holds.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Reads `len` bytes of `key` starting at `offset`; a range past the end is an error.
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Lists keys starting with `prefix` (a string prefix, not only whole components), with
    /// their sizes in bytes, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// Deletes `key`; deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Whether `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Where this backend keeps its data, for messages.
    fn describe(&self) -> String;
    /// Tells the backend that the immutable `key` is `size` bytes long, as learned elsewhere
    /// than from its own listing (a node-local pack index), so that a caching backend need not
    /// ask. Ignored by default.
    fn note_size(&self, _key: &str, _size: u64) {}
}
