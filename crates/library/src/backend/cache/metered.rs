//! A backend wrapper that counts requests and can add a fixed latency to each one: what the
//! cache's tests count and what its benchmark uses to stand in for a remote object store.

use crate::backend::Backend;
use crate::Result;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Requests seen by a [`MeteredBackend`] so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Whole-object reads.
    pub gets: u64,
    /// Ranged reads.
    pub ranges: u64,
    /// Bytes asked for by ranged reads.
    pub range_bytes: u64,
    /// Everything else: puts, lists, deletes, exists.
    pub others: u64,
}

/// Wraps a backend, counting requests and sleeping `latency` before each.
pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    latency: Duration,
    gets: AtomicU64,
    ranges: AtomicU64,
    range_bytes: AtomicU64,
    others: AtomicU64,
}

impl MeteredBackend {
    /// Counts the requests to `inner`, delaying each by `latency` (zero: no delay).
    pub fn new(inner: Arc<dyn Backend>, latency: Duration) -> MeteredBackend {
        MeteredBackend {
            inner,
            latency,
            gets: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
            range_bytes: AtomicU64::new(0),
            others: AtomicU64::new(0),
        }
    }

    /// The requests made so far.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            gets: self.gets.load(Ordering::Relaxed),
            ranges: self.ranges.load(Ordering::Relaxed),
            range_bytes: self.range_bytes.load(Ordering::Relaxed),
            others: self.others.load(Ordering::Relaxed),
        }
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            std::thread::sleep(self.latency);
        }
    }
}

impl Backend for MeteredBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.count(&self.others);
        self.inner.put(key, data)
    }

    fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        self.count(&self.others);
        self.inner.put_bytes(key, data)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.count(&self.gets);
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.range_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.count(&self.ranges);
        self.inner.get_range(key, offset, len)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.count(&self.others);
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.count(&self.others);
        self.inner.delete(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.count(&self.others);
        self.inner.exists(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
