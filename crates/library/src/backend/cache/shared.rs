//! Traffic to a remote backend, counted in a small file that every process of a data directory
//! adds to: a node, its `lib` commands and its snapfs mount servers all read the library, and
//! the node's `/metrics` reports the sum (`DATA/cache/remote-counts`, see the store's layout).
//!
//! The file holds four little-endian u64s (read requests, bytes read, write requests, bytes
//! written). Each update takes a mutex (threads of one process share one open file, and
//! `flock` does not exclude them) and an exclusive `flock` (other processes), then reads,
//! adds and writes the 32 bytes in place. Counting never fails a request: an update that
//! cannot be written is logged and dropped.

use crate::backend::Backend;
use crate::{Error, Result};
use bytes::Bytes;
use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Requests to a remote backend and their bytes, summed over every process that counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteCounts {
    /// Whole and ranged reads.
    pub read_requests: u64,
    /// Bytes those reads returned.
    pub read_bytes: u64,
    /// Whole-object writes.
    pub write_requests: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

const LEN: usize = 32;

impl RemoteCounts {
    fn decode(b: &[u8; LEN]) -> RemoteCounts {
        let n = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        RemoteCounts {
            read_requests: n(0),
            read_bytes: n(1),
            write_requests: n(2),
            write_bytes: n(3),
        }
    }

    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        let all = [
            self.read_requests,
            self.read_bytes,
            self.write_requests,
            self.write_bytes,
        ];
        for (i, v) in all.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The counts in the file at `path`; zero if there is none yet.
    pub fn read(path: &Path) -> Result<RemoteCounts> {
        let read = || {
            let f = File::open(path)?;
            flock(&f, FlockOperation::LockShared)?;
            read_counts(&f)
        };
        match read() {
            Ok(c) => Ok(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RemoteCounts::default()),
            Err(e) => Err(Error::io("reading", path, e)),
        }
    }
}

fn read_counts(f: &File) -> std::io::Result<RemoteCounts> {
    let mut b = [0u8; LEN];
    let mut got = 0;
    while got < LEN {
        match f.read_at(&mut b[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(RemoteCounts::decode(&b))
}

/// Wraps a remote backend, adding its reads and writes to a counts file shared by processes.
pub struct SharedMeter {
    inner: Arc<dyn Backend>,
    file: Mutex<File>,
}

impl SharedMeter {
    /// Counts the traffic to `inner` in the file at `path` (created, with its directory, if
    /// missing).
    pub fn open(inner: Arc<dyn Backend>, path: &Path) -> Result<SharedMeter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        Ok(SharedMeter {
            inner,
            file: Mutex::new(file),
        })
    }

    fn add(&self, delta: RemoteCounts) {
        let f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let update = || -> std::io::Result<()> {
            flock(&*f, FlockOperation::LockExclusive)?;
            let c = read_counts(&f)?;
            let sum = RemoteCounts {
                read_requests: c.read_requests + delta.read_requests,
                read_bytes: c.read_bytes + delta.read_bytes,
                write_requests: c.write_requests + delta.write_requests,
                write_bytes: c.write_bytes + delta.write_bytes,
            };
            f.write_all_at(&sum.encode(), 0)
        };
        if let Err(e) = update() {
            tracing::warn!("not counting remote library traffic: {e}");
        }
        let _ = flock(&*f, FlockOperation::Unlock);
    }

    /// Counts one write of `len` bytes.
    fn wrote(&self, len: usize) {
        self.add(RemoteCounts {
            write_requests: 1,
            write_bytes: len as u64,
            ..RemoteCounts::default()
        });
    }

    fn read<T: AsRef<[u8]>>(&self, got: Result<T>) -> Result<T> {
        if let Ok(data) = &got {
            self.add(RemoteCounts {
                read_requests: 1,
                read_bytes: data.as_ref().len() as u64,
                ..RemoteCounts::default()
            });
        }
        got
    }
}

impl Backend for SharedMeter {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.put(key, data)?;
        self.wrote(data.len());
        Ok(())
    }

    fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        let len = data.len();
        self.inner.put_bytes(key, data)?;
        self.wrote(len);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.read(self.inner.get(key))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read(self.inner.get_range(key, offset, len))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBackend;

    /// Two meters on one file (two processes, say) add up; reads count returned bytes.
    #[test]
    fn meters_on_one_file_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path().join("b")).unwrap());
        let path = dir.path().join("c/remote-counts");
        assert_eq!(RemoteCounts::read(&path).unwrap(), RemoteCounts::default());
        let a = SharedMeter::open(inner.clone(), &path).unwrap();
        let b = SharedMeter::open(inner, &path).unwrap();
        a.put("k", &[7u8; 1000]).unwrap();
        assert_eq!(b.get_range("k", 10, 100).unwrap().len(), 100);
        assert_eq!(a.get("k").unwrap().len(), 1000);
        assert!(b.get("missing").is_err());
        b.list("").unwrap();
        let want = RemoteCounts {
            read_requests: 2,
            read_bytes: 1100,
            write_requests: 1,
            write_bytes: 1000,
        };
        assert_eq!(RemoteCounts::read(&path).unwrap(), want);
    }
}
