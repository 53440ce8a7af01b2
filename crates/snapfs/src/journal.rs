//! The backing-id journal: which passthrough backing id each node holds, kept in a file so a
//! restarted server can answer with the same ids.
//!
//! Backing ids belong to the FUSE connection, not to the process that registered them, and the
//! kernel refuses (`EBUSY`) a second backing file for an inode that still has files open on
//! another. So a server that adopts a live connection must open such inodes with the id its
//! predecessor registered. Each registration and each close appends one 16-byte record
//! (node id u64, backing id u32, op u32: 1 open, 0 close; little-endian) with a single write:
//! the page cache outlives a killed process, and a machine crash ends the connection anyway, so
//! nothing is synced. A close is journaled before the kernel forgets the id, so the journal
//! never names an id the kernel no longer has. The file is rewritten with the live ids when a
//! server adopts it and whenever it grows to many times the live set.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const RECORD: usize = 16;
/// Records beyond `COMPACT_FACTOR × live + COMPACT_SLACK` trigger a rewrite.
const COMPACT_FACTOR: usize = 4;
const COMPACT_SLACK: usize = 4096;

/// An open journal and the live ids it records.
pub struct Journal {
    path: PathBuf,
    file: File,
    live: HashMap<u64, u32>,
    records: usize,
}

fn record(node: u64, id: u32, open: bool) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&node.to_le_bytes());
    r[8..12].copy_from_slice(&id.to_le_bytes());
    r[12..].copy_from_slice(&u32::from(open).to_le_bytes());
    r
}

/// Replays journal bytes: the ids still registered, by node. A torn last record is ignored.
fn replay(raw: &[u8]) -> HashMap<u64, u32> {
    let mut live = HashMap::new();
    for r in raw.chunks_exact(RECORD) {
        let node = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
        let id = u32::from_le_bytes(r[8..12].try_into().expect("4 bytes"));
        if r[12] == 1 {
            live.insert(node, id);
        } else if live.get(&node) == Some(&id) {
            live.remove(&node);
        }
    }
    live
}

impl Journal {
    /// Starts an empty journal at `path` (a fresh connection has no ids).
    pub fn create(path: &Path) -> std::io::Result<Journal> {
        Journal::write_live(path, HashMap::new())
    }

    /// Opens the journal a previous server of the same connection left at `path` and returns
    /// the ids it still had registered (rewriting the file with just those).
    pub fn adopt(path: &Path) -> std::io::Result<(Journal, HashMap<u64, u32>)> {
        let live = match std::fs::read(path) {
            Ok(raw) => replay(&raw),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        let j = Journal::write_live(path, live.clone())?;
        Ok((j, live))
    }

    /// Rewrites `path` with `live` (temp file + rename, its directory made if missing) and
    /// opens it for appending.
    fn write_live(path: &Path, live: HashMap<u64, u32>) -> std::io::Result<Journal> {
        let named = |e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("backing-id journal {}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(named)?;
        }
        let mut buf = Vec::with_capacity(live.len() * RECORD);
        for (&node, &id) in &live {
            buf.extend_from_slice(&record(node, id, true));
        }
        library::atomic::replace(path, &buf).map_err(named)?;
        let file = OpenOptions::new().append(true).open(path).map_err(named)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            records: live.len(),
            live,
        })
    }

    fn append(&mut self, node: u64, id: u32, open: bool) {
        if let Err(e) = self.file.write_all(&record(node, id, open)) {
            tracing::warn!("backing-id journal {}: {e}", self.path.display());
        }
        self.records += 1;
        if self.records > COMPACT_FACTOR * self.live.len() + COMPACT_SLACK {
            match Journal::write_live(&self.path, self.live.clone()) {
                Ok(j) => *self = j,
                Err(e) => tracing::warn!("rewriting journal {}: {e}", self.path.display()),
            }
        }
    }

    /// Records that `node` now has backing id `id`.
    pub fn opened(&mut self, node: u64, id: u32) {
        self.live.insert(node, id);
        self.append(node, id, true);
    }

    /// Records that `node`'s backing id `id` is about to be closed.
    pub fn closed(&mut self, node: u64, id: u32) {
        if self.live.get(&node) == Some(&id) {
            self.live.remove(&node);
        }
        self.append(node, id, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopt_returns_what_is_still_open_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.ids");
        let mut j = Journal::create(&p).unwrap();
        j.opened(10, 1);
        j.opened(11, 2);
        j.closed(10, 1);
        j.opened(12, 3);
        // A close of an id the node no longer holds changes nothing.
        j.closed(12, 99);
        drop(j);
        // A torn record (a write cut short) is ignored.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[7u8; 5]).unwrap();
        let (_j, live) = Journal::adopt(&p).unwrap();
        assert_eq!(live, HashMap::from([(11, 2), (12, 3)]));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 * RECORD as u64);
        let (_j, again) = Journal::adopt(&p).unwrap();
        assert_eq!(again, live);
    }

    #[test]
    fn its_directory_is_made_if_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mounts/m.ids");
        let mut j = Journal::create(&p).unwrap();
        j.opened(1, 1);
        assert_eq!(Journal::adopt(&p).unwrap().1, HashMap::from([(1, 1)]));
    }

    #[test]
    fn grows_no_bigger_than_a_multiple_of_the_live_set() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.ids");
        let mut j = Journal::create(&p).unwrap();
        for i in 0..20_000u32 {
            j.opened(u64::from(i % 7), i);
            j.closed(u64::from(i % 7), i);
        }
        j.opened(5, 1);
        let len = std::fs::metadata(&p).unwrap().len() as usize;
        assert!(
            len <= (COMPACT_SLACK + 2) * RECORD,
            "journal is {len} bytes"
        );
        drop(j);
        assert_eq!(Journal::adopt(&p).unwrap().1, HashMap::from([(5, 1)]));
    }
}
