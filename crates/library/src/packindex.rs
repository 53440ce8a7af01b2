//! The node-local pack index file: the library's config and every pack a node has seen (its
//! name, size and the entries of its trailer), kept on the node so that a reader of a remote
//! library (a snapfs mount server) opens it with no request at all, and a writer lists the
//! packs but reads only the trailers of packs the file does not know.
//!
//! Packs are immutable and named by their contents, so an entry never goes stale. A pack gc
//! deleted stays in the file until the next listing drops it: a read of it fails, and the
//! library refreshes its index then ([`crate::Library::get`]). The file is shared by every
//! process of a node (written whole and renamed into place by [`crate::atomic`]; the last
//! writer wins, and what it lacks is read again on a miss).
//!
//! Format, version 1 (integers little-endian):
//!
//! ```text
//! magic          "SGPKIX01"            8 bytes (the version is in the magic)
//! config length  u32, then the library's config as stored (JSON)
//! pack count     u32
//! per pack:      name (32 bytes), size u64, entry count u32
//! per pack, in the same order: its entries, 54 bytes each, laid out as in a version-2
//!                pack trailer (score, kind, encoding, offset, stored_len, frame_len, start,
//!                plain_len)
//! check          BLAKE3 of every byte above (32 bytes)
//! ```
//!
//! Loading is one read, one hash and a copy of fixed-size records (no varints, no
//! decompression). A file that is short, has another magic, fails its check or does not
//! decode is not trusted: the library lists the packs and reads their trailers as if there
//! were none, and writes a new file.

use crate::pack::{self, PackEntry, PackVersion};
use crate::Score;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The magic of format version 1.
const MAGIC: &[u8; 8] = b"SGPKIX01";
/// Bytes of one pack's header: name, size, entry count.
const PACK_HEAD: usize = 32 + 8 + 4;
/// Bytes of one entry (as in a version-2 pack trailer).
const ENTRY: usize = 32 + 1 + 1 + 4 * 5;
/// Bytes of the check.
const CHECK: usize = 32;

/// A pack as the index knows it: its size and its trailer's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KnownPack {
    pub(crate) name: Score,
    pub(crate) size: u64,
    pub(crate) entries: Arc<Vec<PackEntry>>,
}

/// What a valid file holds.
pub(crate) struct Contents {
    /// The library's config as stored (JSON).
    pub(crate) config: Vec<u8>,
    pub(crate) packs: Vec<KnownPack>,
}

/// A pack index file and the packs this process last read from it or wrote to it.
pub(crate) struct PackIndexFile {
    path: PathBuf,
    known: Mutex<HashMap<Score, KnownPack>>,
}

impl PackIndexFile {
    /// The index file at `path` (nothing is read yet).
    pub(crate) fn new(path: impl Into<PathBuf>) -> PackIndexFile {
        PackIndexFile {
            path: path.into(),
            known: Mutex::default(),
        }
    }

    /// Reads the file; `None` (logged unless it is missing) when there is none or it is not
    /// valid. What it holds becomes what this process knows.
    pub(crate) fn load(&self) -> Option<Contents> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    "reading the pack index {}: {e}; rebuilding it",
                    self.path.display()
                );
                return None;
            }
        };
        let Some(contents) = decode(&bytes) else {
            tracing::warn!(
                "the pack index {} is damaged or of another version; rebuilding it",
                self.path.display()
            );
            return None;
        };
        *self.known() = contents.packs.iter().map(|p| (p.name, p.clone())).collect();
        Some(contents)
    }

    /// What this process knows of `name`, if its size is `size`.
    pub(crate) fn get(&self, name: &Score, size: u64) -> Option<Arc<Vec<PackEntry>>> {
        let known = self.known();
        let p = known.get(name).filter(|p| p.size == size)?;
        Some(p.entries.clone())
    }

    /// Makes `packs` (a whole listing) what the file holds, with `config`, unless it holds
    /// exactly those packs already. A failure to write is logged: the file only saves work.
    pub(crate) fn store(&self, config: &[u8], packs: &[KnownPack]) {
        {
            let mut known = self.known();
            let same = known.len() == packs.len()
                && packs
                    .iter()
                    .all(|p| known.get(&p.name).is_some_and(|k| k.size == p.size));
            if same {
                return;
            }
            *known = packs.iter().map(|p| (p.name, p.clone())).collect();
        }
        let write = || {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::atomic::replace(&self.path, &encode(config, packs))
        };
        if let Err(e) = write() {
            tracing::warn!("writing the pack index {}: {e}", self.path.display());
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<Score, KnownPack>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The file's bytes for `config` and `packs`.
fn encode(config: &[u8], packs: &[KnownPack]) -> Vec<u8> {
    let entries: usize = packs.iter().map(|p| p.entries.len()).sum();
    let mut out = Vec::with_capacity(
        8 + 4 + config.len() + 4 + packs.len() * PACK_HEAD + entries * ENTRY + CHECK,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(config.len() as u32).to_le_bytes());
    out.extend_from_slice(config);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(p.name.as_bytes());
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
    }
    for e in packs.iter().flat_map(|p| p.entries.iter()) {
        crate::pack::put_v2_entry(&mut out, e);
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(check.as_bytes());
    out
}

/// Decodes a file's bytes; `None` unless every check passes.
fn decode(bytes: &[u8]) -> Option<Contents> {
    let body_len = bytes.len().checked_sub(CHECK)?;
    let (body, check) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != check {
        return None;
    }
    let mut r = body.strip_prefix(MAGIC)?;
    let config_len = take_u32(&mut r)? as usize;
    let config = take(&mut r, config_len)?.to_vec();
    let count = take_u32(&mut r)? as usize;
    let mut heads = Vec::with_capacity(count.min(r.len() / PACK_HEAD));
    for _ in 0..count {
        let name = Score(take(&mut r, 32)?.try_into().ok()?);
        let size = u64::from_le_bytes(take(&mut r, 8)?.try_into().ok()?);
        let n = take_u32(&mut r)? as usize;
        heads.push((name, size, n));
    }
    let mut packs = Vec::with_capacity(heads.len());
    for (name, size, n) in heads {
        let raw = take(&mut r, n.checked_mul(ENTRY)?)?;
        let entries = pack::parse_trailer(raw, size, PackVersion::V2)?;
        packs.push(KnownPack {
            name,
            size,
            entries: Arc::new(entries),
        });
    }
    r.is_empty().then_some(Contents { config, packs })
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, rest) = r.split_at(n);
    *r = rest;
    Some(head)
}

fn take_u32(r: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(r, 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests;
