//! The block cache's files: one file per block, named by pack, block index and BLAKE3 hash.
//!
//! ```text
//! DIR/VERSION                              "spawngrid-block-cache 1 block 262144"
//! DIR/<xx>/<pack hex>-<index>-<hash hex>   one block of pack <pack> (xx: its first 2 digits)
//! DIR/tmp/<pid>.<n>                        blocks being written (removed once the pid is dead)
//! ```
//!
//! A block is written to `tmp/` and renamed into place, and its bytes are hashed on every read:
//! a torn, truncated or damaged file is never served (it is deleted and fetched again), so no
//! fsync is needed. Another version or block size in `VERSION` empties the directory.

use super::policy::{BlockId, Hash};
use crate::{Error, Result, Score};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The first word of `VERSION`: the layout above, version 1.
const FORMAT: &str = "spawngrid-block-cache 1";

/// A block file found when the cache was opened.
pub(super) struct Found {
    pub(super) id: BlockId,
    pub(super) len: u64,
    pub(super) hash: Hash,
    pub(super) modified: SystemTime,
}

/// The cache directory.
pub(super) struct BlockDir {
    root: PathBuf,
    seq: AtomicU64,
}

impl BlockDir {
    /// Opens (creating, or emptying if its version or block size differ) the cache at `root`
    /// and lists the blocks it holds, oldest first.
    pub(super) fn open(root: &Path, block_size: u64) -> Result<(BlockDir, Vec<Found>)> {
        let version = format!("{FORMAT} block {block_size}");
        let file = root.join("VERSION");
        fs::create_dir_all(root.join("tmp")).map_err(|e| Error::io("creating", root, e))?;
        let current = fs::read_to_string(&file).unwrap_or_default();
        let dir = BlockDir {
            root: root.to_owned(),
            seq: AtomicU64::new(0),
        };
        if current.trim() != version {
            if !current.is_empty() {
                tracing::warn!(cache = %root.display(), "block cache is {:?}, not {version:?}; emptying it", current.trim());
            }
            for sub in dir.subdirs()? {
                fs::remove_dir_all(&sub).map_err(|e| Error::io("emptying", sub, e))?;
            }
            fs::write(&file, format!("{version}\n")).map_err(|e| Error::io("writing", &file, e))?;
        }
        dir.remove_dead_temps();
        let mut found = Vec::new();
        for sub in dir.subdirs()? {
            let rd = fs::read_dir(&sub).map_err(|e| Error::io("listing", &sub, e))?;
            for ent in rd.flatten() {
                let parsed = parse_name(&ent.file_name().to_string_lossy());
                match (parsed, ent.metadata()) {
                    (Some((id, hash)), Ok(md)) if md.is_file() && md.len() <= block_size => {
                        let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        let len = md.len();
                        found.push(Found {
                            id,
                            len,
                            hash,
                            modified,
                        });
                    }
                    _ => {
                        let _ = fs::remove_file(ent.path());
                    }
                }
            }
        }
        found.sort_by_key(|f| f.modified);
        Ok((dir, found))
    }

    /// The `<xx>` directories.
    fn subdirs(&self) -> Result<Vec<PathBuf>> {
        let rd = fs::read_dir(&self.root).map_err(|e| Error::io("listing", &self.root, e))?;
        Ok(rd
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .map(|e| e.path())
            .collect())
    }

    fn remove_dead_temps(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').next().and_then(|p| p.parse::<u32>().ok());
            if !pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
                let _ = fs::remove_file(ent.path());
            }
        }
    }

    fn path(&self, id: &BlockId, hash: &Hash) -> PathBuf {
        let pack = id.0.to_hex();
        self.root
            .join(&pack[..2])
            .join(format!("{pack}-{}-{}", id.1, hex::encode(hash)))
    }

    /// Stores a block (temp file, then rename) and returns its hash.
    pub(super) fn write(&self, id: &BlockId, bytes: &[u8]) -> Result<Hash> {
        let hash = *blake3::hash(bytes).as_bytes();
        let dest = self.path(id, &hash);
        let parent = dest.parent().expect("blocks are in a subdirectory");
        fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{n}", std::process::id()));
        let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &dest));
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("writing cache block", dest, e));
        }
        Ok(hash)
    }

    /// A block's bytes if its file is there and matches `hash`; a damaged file is deleted.
    pub(super) fn read(&self, id: &BlockId, hash: &Hash) -> Option<Vec<u8>> {
        let path = self.path(id, hash);
        match fs::read(&path) {
            Ok(bytes) if blake3::hash(&bytes).as_bytes() == hash => Some(bytes),
            Ok(_) => {
                tracing::warn!(file = %path.display(), "cache block does not match its hash; fetching it again");
                let _ = fs::remove_file(&path);
                None
            }
            Err(e) => {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), "reading cache block: {e}");
                }
                None
            }
        }
    }

    /// Deletes a block's file (a missing file is fine).
    pub(super) fn remove(&self, id: &BlockId, hash: &Hash) {
        let _ = fs::remove_file(self.path(id, hash));
    }
}

/// `<pack hex>-<index>-<hash hex>` → the block and its hash.
fn parse_name(name: &str) -> Option<(BlockId, Hash)> {
    let mut parts = name.split('-');
    let pack = parts.next()?.parse::<Score>().ok()?;
    let index = parts.next()?.parse::<u64>().ok()?;
    let hash = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    parts.next().is_none().then_some(((pack, index), hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strays_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let (dir, found) = BlockDir::open(t.path(), 4096).unwrap();
        assert!(found.is_empty());
        let id = (Score([9; 32]), 3);
        let hash = dir.write(&id, b"block").unwrap();
        fs::write(t.path().join("09").join("junk"), b"x").unwrap();
        let (dir, found) = BlockDir::open(t.path(), 4096).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].id, found[0].hash, found[0].len), (id, hash, 5));
        assert_eq!(dir.read(&id, &hash).unwrap(), b"block");
        assert!(!t.path().join("09").join("junk").exists());
    }

    #[test]
    fn another_block_size_empties_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let (dir, _) = BlockDir::open(t.path(), 4096).unwrap();
        dir.write(&(Score([9; 32]), 0), b"block").unwrap();
        let (_, found) = BlockDir::open(t.path(), 8192).unwrap();
        assert!(found.is_empty());
        let version = fs::read_to_string(t.path().join("VERSION")).unwrap();
        assert_eq!(version.trim(), "spawngrid-block-cache 1 block 8192");
    }
}
