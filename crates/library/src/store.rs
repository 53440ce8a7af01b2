//! The [`Library`]: objects in, objects out, deduplicated by score and packed into pack files.

use crate::backend::Backend;
use crate::config::{Config, FORMAT, VERSION};
use crate::pack::{self, ObjectKind, PackBuilder, PackEntry};
use crate::snapshot::Snapshot;
use crate::tree::Tree;
use crate::{Error, Result, Score};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// Key of the config file.
const CONFIG_KEY: &str = "config";
/// Prefix of pack keys.
pub(crate) const PACKS: &str = "packs/";

/// The backend key of the pack named `name`.
pub(crate) fn pack_key(name: &Score) -> String {
    let hex = name.to_hex();
    format!("{PACKS}{}/{hex}", &hex[..2])
}

/// Where an object is: which pack, and the record inside it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Location {
    pub(crate) pack: Score,
    pub(crate) entry: PackEntry,
}

/// An index slot: a pack number and the record's fields, without repeating the score
/// (~20 bytes beside the 32-byte key, instead of ~80).
#[derive(Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    stored_len: u32,
    plain_len: u32,
    kind: ObjectKind,
    encoding: pack::Encoding,
}

/// The in-memory index: every stored object's location, loaded from the packs' trailers.
#[derive(Default)]
pub(crate) struct Index {
    objects: HashMap<Score, Slot>,
    /// Pack names by number (numbers are never reused while the index lives).
    names: Vec<Score>,
    /// Pack sizes and numbers by name.
    packs: HashMap<Score, (u64, u32)>,
}

impl Index {
    /// Adds a pack's entries; with `replace`, entries move to this pack even if known elsewhere.
    fn add(&mut self, name: Score, size: u64, entries: &[PackEntry], replace: bool) {
        let next = self.names.len() as u32;
        let number = self.packs.entry(name).or_insert((size, next)).1;
        if number == next {
            self.names.push(name);
        }
        for e in entries {
            let slot = Slot {
                pack: number,
                offset: e.offset,
                stored_len: e.stored_len,
                plain_len: e.plain_len,
                kind: e.kind,
                encoding: e.encoding,
            };
            if replace {
                self.objects.insert(e.score, slot);
            } else {
                self.objects.entry(e.score).or_insert(slot);
            }
        }
    }

    fn locate(&self, score: &Score) -> Option<Location> {
        let s = self.objects.get(score)?;
        let entry = PackEntry {
            score: *score,
            kind: s.kind,
            encoding: s.encoding,
            offset: s.offset,
            stored_len: s.stored_len,
            plain_len: s.plain_len,
        };
        Some(Location {
            pack: self.names[s.pack as usize],
            entry,
        })
    }
}

/// A content-addressed, deduplicating object store over a [`Backend`].
///
/// Objects are immutable byte strings named by their [`Score`]. `put` is safe to call from many
/// threads at once; objects become readable once the pack holding them is written (every
/// `pack_target` bytes, and on [`Library::flush`]).
pub struct Library {
    backend: Arc<dyn Backend>,
    config: Config,
    index: RwLock<Index>,
    open_pack: Mutex<PackBuilder>,
    pending: Mutex<HashSet<Score>>,
}

impl Library {
    /// Creates a new library on `backend` with `config`; fails if one already exists there.
    pub fn init(backend: Arc<dyn Backend>, config: Config) -> Result<Library> {
        if backend.exists(CONFIG_KEY)? {
            return Err(Error::BadInput(format!(
                "a library already exists at {}",
                backend.describe()
            )));
        }
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        backend.put(CONFIG_KEY, &json)?;
        Library::open(backend)
    }

    /// Opens an existing library and loads its index.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Library> {
        let raw = backend
            .get(CONFIG_KEY)
            .map_err(|e| Error::BadInput(format!("no library at {} ({e})", backend.describe())))?;
        let config: Config = serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt("library config", e.to_string()))?;
        if config.format != FORMAT || config.version > VERSION {
            return Err(Error::BadInput(format!(
                "library at {} has format {} v{}; this spawngrid reads {FORMAT} up to v{VERSION}",
                backend.describe(),
                config.format,
                config.version
            )));
        }
        let lib = Library {
            backend,
            config,
            index: RwLock::default(),
            open_pack: Mutex::default(),
            pending: Mutex::default(),
        };
        lib.reload_index()?;
        Ok(lib)
    }

    /// Opens the library at `backend`, creating it with default parameters if there is none.
    pub fn open_or_init(backend: Arc<dyn Backend>) -> Result<Library> {
        if backend.exists(CONFIG_KEY)? {
            Library::open(backend)
        } else {
            Library::init(backend, Config::default())
        }
    }

    /// The parameters this library was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend the library is stored on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Re-reads the list of packs and their indexes (after another process changed them).
    ///
    /// A pack whose trailer is damaged is indexed by scanning its records.
    pub fn reload_index(&self) -> Result<()> {
        let packs = self.backend.list(PACKS)?;
        let loaded: Vec<(Score, u64, Vec<PackEntry>)> = packs
            .par_iter()
            .filter_map(|(key, size)| {
                let name = key.rsplit('/').next()?.parse::<Score>().ok()?;
                Some((name, *size))
            })
            .map(|(name, size)| Ok((name, size, self.read_pack_index(&name, size)?)))
            .collect::<Result<_>>()?;
        let mut idx = Index::default();
        for (name, size, entries) in loaded {
            idx.add(name, size, &entries, false);
        }
        *self.index.write().expect("index lock") = idx;
        Ok(())
    }

    fn read_pack_index(&self, name: &Score, size: u64) -> Result<Vec<PackEntry>> {
        if let Some(entries) = self.read_trailer(name, size)? {
            return Ok(entries);
        }
        let key = pack_key(name);
        tracing::warn!(pack = %name, "pack trailer unreadable; rebuilding its index by scanning");
        let (entries, err) = pack::scan(&self.backend.get(&key)?);
        if let Some(err) = err {
            tracing::warn!(pack = %name, "pack damaged: {err}");
        }
        Ok(entries)
    }

    /// Whether an object is stored (or being stored by this process).
    pub fn contains(&self, score: &Score) -> bool {
        self.index
            .read()
            .expect("index lock")
            .objects
            .contains_key(score)
            || self.pending.lock().expect("pending lock").contains(score)
    }

    /// Stores `plain` as an object of `kind`; returns its score. Deduplicates.
    pub fn put(&self, kind: ObjectKind, plain: &[u8]) -> Result<Score> {
        let score = Score::of(plain);
        self.put_scored(kind, score, plain)?;
        Ok(score)
    }

    /// Stores `plain` whose score the caller already computed.
    pub fn put_scored(&self, kind: ObjectKind, score: Score, plain: &[u8]) -> Result<()> {
        if self
            .index
            .read()
            .expect("index lock")
            .objects
            .contains_key(&score)
        {
            return Ok(());
        }
        if !self.pending.lock().expect("pending lock").insert(score) {
            return Ok(());
        }
        let (encoding, stored) = pack::encode_object(plain, self.config.zstd_level);
        let full = {
            let mut open = self.open_pack.lock().expect("pack lock");
            open.add(score, kind, encoding, plain.len() as u32, &stored);
            if open.len() >= self.config.pack_target as usize {
                Some(std::mem::take(&mut *open))
            } else {
                None
            }
        };
        if let Some(p) = full {
            self.write_pack(p)?;
        }
        Ok(())
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<()> {
        let (name, data, entries) = builder.finish();
        let result = self.backend.put(&pack_key(&name), &data);
        let mut pending = self.pending.lock().expect("pending lock");
        if result.is_ok() {
            let mut idx = self.index.write().expect("index lock");
            idx.add(name, data.len() as u64, &entries, false);
        }
        for entry in &entries {
            pending.remove(&entry.score);
        }
        result
    }

    /// Writes out the partly filled pack, making every object put so far readable.
    pub fn flush(&self) -> Result<()> {
        let open = std::mem::take(&mut *self.open_pack.lock().expect("pack lock"));
        if open.is_empty() {
            return Ok(());
        }
        self.write_pack(open)
    }

    pub(crate) fn locate(&self, score: &Score) -> Option<Location> {
        self.index.read().expect("index lock").locate(score)
    }

    /// Reads an object, checking its bytes against its score.
    pub fn get(&self, score: &Score) -> Result<(ObjectKind, Vec<u8>)> {
        match self.read_located(score) {
            // Another process (gc) may have moved it to a new pack: look again once.
            Err(Error::Missing(_)) | Err(Error::Io { .. }) if self.reload_index().is_ok() => {
                self.read_located(score)
            }
            other => other,
        }
    }

    fn read_located(&self, score: &Score) -> Result<(ObjectKind, Vec<u8>)> {
        let loc = self.locate(score).ok_or(Error::Missing(*score))?;
        let e = loc.entry;
        let key = pack_key(&loc.pack);
        let stored = self
            .backend
            .get_range(&key, e.offset.into(), e.stored_len as usize)?;
        Ok((e.kind, pack::decode_object(&e, &stored)?))
    }

    /// Reads an object that must be of `kind`.
    pub fn get_kind(&self, score: &Score, kind: ObjectKind) -> Result<Vec<u8>> {
        let (k, data) = self.get(score)?;
        if k != kind {
            return Err(Error::corrupt(
                format!("object {score}"),
                format!("is a {k:?}, expected a {kind:?}"),
            ));
        }
        Ok(data)
    }

    /// Reads and decodes a tree object.
    pub fn tree(&self, score: &Score) -> Result<Tree> {
        Tree::decode(&self.get_kind(score, ObjectKind::Tree)?)
    }

    /// Reads and decodes a snapshot object.
    pub fn snapshot(&self, score: &Score) -> Result<Snapshot> {
        Snapshot::decode(&self.get_kind(score, ObjectKind::Snapshot)?)
    }

    /// Encodes and stores a tree.
    pub fn put_tree(&self, tree: &Tree) -> Result<Score> {
        self.put(ObjectKind::Tree, &tree.encode())
    }

    /// Stores a snapshot and flushes, so that the snapshot is durable when this returns.
    pub fn commit(&self, snapshot: &Snapshot) -> Result<Score> {
        let score = self.put(ObjectKind::Snapshot, &snapshot.encode())?;
        self.flush()?;
        Ok(score)
    }

    /// A copy of the current index's pack list (name and size).
    pub(crate) fn packs(&self) -> Vec<(Score, u64)> {
        let idx = self.index.read().expect("index lock");
        let mut v: Vec<_> = idx.packs.iter().map(|(k, v)| (*k, v.0)).collect();
        v.sort();
        v
    }

    /// Total bytes of all packs in the index.
    pub fn stored_bytes(&self) -> u64 {
        self.index
            .read()
            .expect("index lock")
            .packs
            .values()
            .map(|v| v.0)
            .sum()
    }

    /// Number of distinct objects in the index.
    pub fn object_count(&self) -> usize {
        self.index.read().expect("index lock").objects.len()
    }

    /// A pack's entries as listed by its trailer, or `None` if the trailer is unreadable.
    /// (Used by the index loader, and by gc, which never deletes a pack it cannot list.)
    pub(crate) fn read_trailer(&self, name: &Score, size: u64) -> Result<Option<Vec<PackEntry>>> {
        if size < pack::TAIL_LEN as u64 {
            return Ok(None);
        }
        let key = pack_key(name);
        let tail = self
            .backend
            .get_range(&key, size - pack::TAIL_LEN as u64, pack::TAIL_LEN)?;
        let Some((start, len)) = pack::trailer_span(size, &tail) else {
            return Ok(None);
        };
        let data = self.backend.get_range(&key, start, len)?;
        Ok(pack::parse_trailer(&data, size))
    }

    /// Makes a pack that gc wrote part of the index, pointing every one of `entries` at it
    /// even when the index already locates that object elsewhere (in a pack gc is about to
    /// delete), so readers in this process move to the new copy before the old one goes.
    pub(crate) fn adopt_pack(&self, name: Score, size: u64, entries: &[PackEntry]) {
        let mut idx = self.index.write().expect("index lock");
        idx.add(name, size, entries, true);
    }
}
