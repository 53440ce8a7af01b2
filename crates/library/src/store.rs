//! The [`Library`]: objects in, objects out, deduplicated by score and packed into pack files.

use crate::backend::Backend;
use crate::config::{Config, FORMAT, VERSION};
use crate::coord::Coordinator;
use crate::lease::FileLeases;
use crate::pack::{self, EncodedFrame, Frame, ObjectKind, PackBuilder, PackEntry};
use crate::packindex::{KnownPack, PackIndexFile};
use crate::snapshot::Snapshot;
use crate::tree::Tree;
use crate::{Error, Result, Score};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// An index slot: a pack number and the entry's fields, without repeating the score
/// (~28 bytes beside the 32-byte key, instead of ~90).
#[derive(Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    stored_len: u32,
    frame_len: u32,
    start: u32,
    plain_len: u32,
    kind: ObjectKind,
    encoding: pack::Encoding,
}

/// The in-memory index: every stored object's location, loaded from the packs' trailers.
///
/// Packs gc condemned (see [`crate::coord`]) are indexed too, so what only they hold stays
/// readable until a sweep deletes them, but an object is located in a pack that is not
/// condemned whenever one holds it, and dedup ([`Library::contains`]) counts only those.
#[derive(Default)]
pub(crate) struct Index {
    objects: HashMap<Score, Slot>,
    /// Pack names by number (numbers are never reused while the index lives).
    names: Vec<Score>,
    /// Whether each pack (by number) is condemned.
    doomed: Vec<bool>,
    /// Pack sizes and numbers by name.
    packs: HashMap<Score, (u64, u32)>,
    /// The packs gc condemned, is deleting or deleted lately, when the index was loaded.
    condemned: HashSet<Score>,
    /// How many times the index was loaded whole (while it stays the same, pack numbers only
    /// grow).
    generation: u64,
}

/// What an index held before a listing of the packs began: its generation and its number of
/// packs (the packs it may call gone if the listing lacks them; later ones were written since).
type Before = (u64, usize);

impl Index {
    /// Adds a pack's entries; with `replace`, entries move to this pack even if known elsewhere
    /// (and, without, they move from a condemned pack to one that is not).
    fn add(&mut self, name: Score, size: u64, entries: &[PackEntry], replace: bool) {
        let next = self.names.len() as u32;
        let number = self.packs.entry(name).or_insert((size, next)).1;
        if number == next {
            self.names.push(name);
            self.doomed.push(self.condemned.contains(&name));
        }
        let doomed = self.doomed[number as usize];
        for e in entries {
            let slot = Slot {
                pack: number,
                offset: e.offset,
                stored_len: e.stored_len,
                frame_len: e.frame_len,
                start: e.start,
                plain_len: e.plain_len,
                kind: e.kind,
                encoding: e.encoding,
            };
            match self.objects.get(&e.score) {
                Some(old) if !replace && (doomed || !self.doomed[old.pack as usize]) => {}
                _ => {
                    self.objects.insert(e.score, slot);
                }
            }
        }
    }

    /// The packs numbered from `held` on that `listed` lacks, with the entries the index
    /// locates in them: packs this process wrote or adopted while a listing ran.
    fn written_since(&self, held: usize, listed: &HashSet<Score>) -> Vec<KnownPack> {
        let numbers: HashMap<u32, Score> = (held..self.names.len())
            .map(|n| (n as u32, self.names[n]))
            .filter(|(_, name)| !listed.contains(name))
            .collect();
        let mut entries: HashMap<u32, Vec<PackEntry>> = HashMap::new();
        if !numbers.is_empty() {
            for (score, slot) in &self.objects {
                if numbers.contains_key(&slot.pack) {
                    entries.entry(slot.pack).or_default().push(PackEntry {
                        score: *score,
                        kind: slot.kind,
                        encoding: slot.encoding,
                        offset: slot.offset,
                        stored_len: slot.stored_len,
                        frame_len: slot.frame_len,
                        start: slot.start,
                        plain_len: slot.plain_len,
                    });
                }
            }
        }
        numbers
            .into_iter()
            .map(|(n, name)| KnownPack {
                name,
                size: self.packs[&name].0,
                entries: Arc::new(entries.remove(&n).unwrap_or_default()),
            })
            .collect()
    }

    /// Whether `score` is stored in a pack that is not condemned.
    fn holds(&self, score: &Score) -> bool {
        self.objects
            .get(score)
            .is_some_and(|s| !self.doomed[s.pack as usize])
    }

    fn locate(&self, score: &Score) -> Option<Location> {
        let s = self.objects.get(score)?;
        let entry = PackEntry {
            score: *score,
            kind: s.kind,
            encoding: s.encoding,
            offset: s.offset,
            stored_len: s.stored_len,
            frame_len: s.frame_len,
            start: s.start,
            plain_len: s.plain_len,
        };
        Some(Location {
            pack: self.names[s.pack as usize],
            entry,
        })
    }
}

/// An index shared by the [`Library`] values one process opens on one backend (a node's
/// saves, reads and listings: [`Library::open_shared`]). Loaded once; a reload then reads only
/// the trailers of packs it has not seen, so opening a library costs one listing, not a read
/// of every pack, and concurrent writers hold one index between them, not one each.
#[derive(Clone, Default)]
pub struct SharedIndex(Arc<RwLock<Index>>);

/// How many decoded shared frames a library keeps for reads of their other objects.
const FRAME_CACHE: usize = 64;

/// Most stored bytes [`Library::get_run`] reads with one request.
const RUN_BYTES: u64 = 1 << 20;

/// Most bytes between two objects of one run of [`Library::runs`]: a gap is read with them.
const RUN_GAP: u64 = 256 << 10;

/// Recently decoded shared frames (pack, offset → plain bytes), most recent first: reading the
/// small files of one directory one by one decodes each of their frames once, not once per file.
#[derive(Default)]
struct FrameCache(VecDeque<(FrameAt, Arc<Vec<u8>>)>);

/// A frame's place: its pack and the offset of its stored bytes.
type FrameAt = (Score, u32);

impl FrameCache {
    fn get(&mut self, key: &FrameAt) -> Option<Arc<Vec<u8>>> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        let hit = self.0.remove(i).expect("position is in range");
        self.0.push_front(hit.clone());
        Some(hit.1)
    }

    fn insert(&mut self, key: FrameAt, frame: Arc<Vec<u8>>) {
        if self.0.len() >= FRAME_CACHE {
            self.0.pop_back();
        }
        self.0.push_front((key, frame));
    }
}

/// A content-addressed, deduplicating object store over a [`Backend`].
///
/// Objects are immutable byte strings named by their [`Score`]. `put` is safe to call from many
/// threads at once; objects become readable once the pack holding them is written (every
/// `pack_target` bytes, and on [`Library::flush`]). Small objects are gathered into shared
/// frames of `frame_target` bytes before they are compressed.
pub struct Library {
    backend: Arc<dyn Backend>,
    config: Config,
    index: Arc<RwLock<Index>>,
    open_frame: Mutex<Frame>,
    open_pack: Mutex<PackBuilder>,
    pending: Mutex<HashSet<Score>>,
    /// Whether the stored config is at [`VERSION`] (a version-1 library is upgraded before
    /// the first version-2 pack is written into it).
    current: AtomicBool,
    frames: Mutex<FrameCache>,
    coordinator: Arc<dyn Coordinator>,
    /// Packs this library wrote since its last lease was taken.
    written: Mutex<Vec<Score>>,
    /// The node-local pack index file, if this library keeps one (the node-local pack index file: docs/architecture.md, "Pack index file").
    local: Option<PackIndexFile>,
    /// How many times a failed read reloaded the index: concurrent failed reads reload once.
    reloads: Mutex<u64>,
    /// Opened by [`Library::open_reader`]: an object it does not locate lists the packs
    /// again without asking the coordinator what gc condemned.
    reader: bool,
}

impl Library {
    /// Creates a new library on `backend` with `config`; fails if one already exists there.
    pub fn init(backend: Arc<dyn Backend>, config: Config) -> Result<Library> {
        Library::init_with(backend, config, Arc::new(FileLeases))
    }

    /// [`Library::init`], coordinated by `coordinator`.
    pub fn init_with(
        backend: Arc<dyn Backend>,
        config: Config,
        coordinator: Arc<dyn Coordinator>,
    ) -> Result<Library> {
        if backend.exists(CONFIG_KEY)? {
            return Err(Error::BadInput(format!(
                "a library already exists at {}",
                backend.describe()
            )));
        }
        config
            .check()
            .map_err(|e| Error::BadInput(format!("library config: {e}")))?;
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        backend.put(CONFIG_KEY, &json)?;
        Library::open_with(backend, coordinator)
    }

    /// Opens an existing library and loads its index; leases are files on the backend.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Library> {
        Library::open_with(backend, Arc::new(FileLeases))
    }

    /// Opens an existing library coordinated by `coordinator` and loads its index.
    pub fn open_with(
        backend: Arc<dyn Backend>,
        coordinator: Arc<dyn Coordinator>,
    ) -> Result<Library> {
        Library::open_indexed(backend, coordinator, None)
    }

    /// [`Library::open_with`], keeping the node-local pack index file `index` (when given):
    /// the packs are listed, but only the trailers of packs the file does not know are read,
    /// and the file is updated to the listing (docs/architecture.md, "Pack index file").
    pub fn open_indexed(
        backend: Arc<dyn Backend>,
        coordinator: Arc<dyn Coordinator>,
        index: Option<PathBuf>,
    ) -> Result<Library> {
        let local = index.map(PackIndexFile::new);
        if let Some(l) = &local {
            // What the file knows; the config is the backend's (a writer may upgrade it).
            l.load();
        }
        let lib = Library::configured(backend, coordinator, local)?;
        lib.reload_index()?;
        Ok(lib)
    }

    /// [`Library::open_with`], with the index `shared` with other libraries of this process
    /// on the same backend (only packs it has not seen yet are read).
    pub fn open_shared(
        backend: Arc<dyn Backend>,
        coordinator: Arc<dyn Coordinator>,
        shared: &SharedIndex,
    ) -> Result<Library> {
        let mut lib = Library::configured(backend, coordinator, None)?;
        lib.index = shared.0.clone();
        lib.reload_index()?;
        Ok(lib)
    }

    /// Opens an existing library to read from it (a snapfs mount server): its index is loaded
    /// from the packs without asking `coordinator` which packs gc condemned (for a grid, a
    /// catalog connection before the first read). A reader may then read an object from a
    /// condemned pack; once gc sweeps that pack the read fails, and [`Library::get`] reloads
    /// the index, condemned packs included, and reads the copy gc made.
    ///
    /// With a node-local pack index file `index` that is valid, nothing is asked of the
    /// backend: the config and the index come from the file, and an object it does not
    /// locate makes [`Library::get`] list the packs and read the trailers of the new ones.
    pub fn open_reader(
        backend: Arc<dyn Backend>,
        coordinator: Arc<dyn Coordinator>,
        index: Option<PathBuf>,
    ) -> Result<Library> {
        let local = index.map(PackIndexFile::new);
        let loaded = local.as_ref().and_then(PackIndexFile::load);
        if let Some(contents) = loaded {
            let mut lib = Library::with_config(backend, coordinator, &contents.config, local)?;
            lib.reader = true;
            for p in &contents.packs {
                lib.backend.note_size(&pack_key(&p.name), p.size);
            }
            let before = lib.before();
            lib.install_index(before, HashSet::new(), contents.packs);
            return Ok(lib);
        }
        let mut lib = Library::configured(backend, coordinator, local)?;
        lib.reader = true;
        lib.load_index(HashSet::new())?;
        Ok(lib)
    }

    /// A library over `backend` with the stored config checked, and no index yet.
    fn configured(
        backend: Arc<dyn Backend>,
        coordinator: Arc<dyn Coordinator>,
        local: Option<PackIndexFile>,
    ) -> Result<Library> {
        let raw = backend
            .get(CONFIG_KEY)
            .map_err(|e| Error::BadInput(format!("no library at {} ({e})", backend.describe())))?;
        Library::with_config(backend, coordinator, &raw, local)
    }

    /// A library over `backend` whose stored config is `raw`, checked; no index yet.
    fn with_config(
        backend: Arc<dyn Backend>,
        coordinator: Arc<dyn Coordinator>,
        raw: &[u8],
        local: Option<PackIndexFile>,
    ) -> Result<Library> {
        let config: Config = serde_json::from_slice(raw)
            .map_err(|e| Error::corrupt("library config", e.to_string()))?;
        if config.format != FORMAT || config.version > VERSION {
            return Err(Error::BadInput(format!(
                "library at {} has format {} v{}; this spawngrid reads {FORMAT} up to v{VERSION} (upgrade spawngrid)",
                backend.describe(),
                config.format,
                config.version
            )));
        }
        config.check().map_err(|e| {
            Error::BadInput(format!("library config at {}: {e}", backend.describe()))
        })?;
        Ok(Library {
            backend,
            current: AtomicBool::new(config.version == VERSION),
            config,
            index: Arc::default(),
            open_frame: Mutex::default(),
            open_pack: Mutex::default(),
            pending: Mutex::default(),
            frames: Mutex::default(),
            coordinator,
            written: Mutex::default(),
            local,
            reloads: Mutex::default(),
            reader: false,
        })
    }

    /// Whether `backend` holds a library (its configuration).
    pub fn exists_at(backend: &dyn Backend) -> Result<bool> {
        backend.exists(CONFIG_KEY)
    }

    /// Opens the library at `backend`, creating it with default parameters if there is none.
    pub fn open_or_init(backend: Arc<dyn Backend>) -> Result<Library> {
        Library::open_or_init_with(backend, Arc::new(FileLeases), None)
    }

    /// [`Library::open_or_init`], coordinated by `coordinator`, keeping the pack index file
    /// `index` when given ([`Library::open_indexed`]).
    pub fn open_or_init_with(
        backend: Arc<dyn Backend>,
        coordinator: Arc<dyn Coordinator>,
        index: Option<PathBuf>,
    ) -> Result<Library> {
        if backend.exists(CONFIG_KEY)? {
            Library::open_indexed(backend, coordinator, index)
        } else {
            Library::init_with(backend, Config::default(), coordinator)
        }
    }

    /// What coordinates this library's writers and gc.
    pub fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coordinator
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
    /// A pack whose trailer is damaged is indexed by scanning its records. What gc condemned
    /// is asked of the coordinator; if it cannot say, what it said last is used (a reader
    /// goes on; a writer calls [`Library::refresh`], which fails instead).
    pub fn reload_index(&self) -> Result<()> {
        let before = self.before();
        let (condemned, packs) = rayon::join(|| self.coordinator.condemned(), || self.list_packs());
        let condemned = match condemned {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading what gc condemned: {e}; using what was read before");
                self.index.read().expect("index lock").condemned.clone()
            }
        };
        self.update_index(before, condemned, packs?)
    }

    /// Re-reads what gc condemned, then the packs and their indexes; forgets the packs written
    /// so far ([`Library::written_packs`]). Taking a lease does this.
    pub fn refresh(&self) -> Result<()> {
        // Both at once: one waits on the catalog, the other on the backend.
        let before = self.before();
        let (condemned, packs) = rayon::join(|| self.coordinator.condemned(), || self.list_packs());
        self.update_index(before, condemned?, packs?)?;
        self.written.lock().expect("written lock").clear();
        Ok(())
    }

    /// The packs this library wrote since its last lease was taken (a bind shows them).
    pub fn written_packs(&self) -> Vec<Score> {
        self.written.lock().expect("written lock").clone()
    }

    /// Whether any pack in the index is condemned.
    pub(crate) fn any_condemned(&self) -> bool {
        self.index
            .read()
            .expect("index lock")
            .doomed
            .contains(&true)
    }

    /// Loads the index from a listing of the packs, with `condemned` the packs gc condemned.
    pub(crate) fn load_index(&self, condemned: HashSet<Score>) -> Result<()> {
        let before = self.before();
        let packs = self.list_packs()?;
        self.update_index(before, condemned, packs)
    }

    /// The packs `listed` with their entries: from the pack index file when it knows the
    /// pack, else from the pack's trailer (and the file is then updated to the listing).
    fn read_packs(&self, listed: Vec<(Score, u64)>) -> Result<Vec<KnownPack>> {
        let packs = listed
            .into_par_iter()
            .map(|(name, size)| {
                let known = self.local.as_ref().and_then(|l| l.get(&name, size));
                let entries = match known {
                    Some(entries) => entries,
                    None => Arc::new(self.read_pack_index(&name, size)?),
                };
                Ok(KnownPack {
                    name,
                    size,
                    entries,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(local) = &self.local {
            let config = serde_json::to_vec(&self.config).expect("config serializes");
            local.store(&config, &packs);
        }
        Ok(packs)
    }

    /// Makes `packs` ([`Library::read_packs`], from a listing begun `before`) the index, with
    /// `condemned` the packs gc condemned. Packs the index gained since the listing began were
    /// written by this process meanwhile and may be missing from it: they are kept.
    fn install_index(
        &self,
        (generation, held): Before,
        condemned: HashSet<Score>,
        packs: Vec<KnownPack>,
    ) {
        let mut fresh = Index {
            condemned,
            ..Index::default()
        };
        let listed: HashSet<Score> = packs.iter().map(|p| p.name).collect();
        for p in packs {
            fresh.add(p.name, p.size, &p.entries, false);
        }
        let mut idx = self.index.write().expect("index lock");
        // Reloaded whole meanwhile: what was gained since is not known (at worst a reload).
        if idx.generation == generation {
            for p in idx.written_since(held, &listed) {
                fresh.add(p.name, p.size, &p.entries, false);
            }
        }
        fresh.generation = idx.generation + 1;
        *idx = fresh;
    }

    /// What the index holds now, taken before a listing (see [`Before`]).
    fn before(&self) -> Before {
        let idx = self.index.read().expect("index lock");
        (idx.generation, idx.names.len())
    }

    /// Every pack listed by the backend, with its size.
    fn list_packs(&self) -> Result<Vec<(Score, u64)>> {
        let packs = self.backend.list(PACKS)?;
        Ok(packs
            .iter()
            .filter_map(|(key, size)| Some((key.rsplit('/').next()?.parse::<Score>().ok()?, *size)))
            .collect())
    }

    /// Brings the index up to `listed` (the packs in the backend) with `condemned` the packs
    /// gc condemned. Packs are immutable and named by their contents, so while no indexed pack
    /// is gone and gc condemned nothing new, only the packs not indexed yet are read;
    /// otherwise the index is loaded again from every pack (where an object is depends on
    /// which copies are condemned).
    fn update_index(
        &self,
        (generation, held): Before,
        condemned: HashSet<Score>,
        listed: Vec<(Score, u64)>,
    ) -> Result<()> {
        if self.local.is_some() {
            // The pack index file is rewritten from the whole listing: load it whole.
            let packs = self.read_packs(listed)?;
            self.install_index((generation, held), condemned, packs);
            return Ok(());
        }
        let (unseen, rebuild) = {
            let idx = self.index.read().expect("index lock");
            let names: HashSet<Score> = listed.iter().map(|(name, _)| *name).collect();
            // A pack indexed since the listing began may be missing from it and is not gone:
            // only the packs the index held before count (all of them if it was reloaded
            // whole meanwhile: at worst one load too many).
            let held = if idx.generation == generation {
                held
            } else {
                idx.names.len()
            };
            let gone = idx.names[..held].iter().any(|name| !names.contains(name));
            let rebuild = gone || condemned != idx.condemned;
            let unseen: Vec<(Score, u64)> = listed
                .into_iter()
                .filter(|(name, _)| rebuild || !idx.packs.contains_key(name))
                .collect();
            (unseen, rebuild)
        };
        let read: Vec<(Score, u64, Vec<PackEntry>)> = unseen
            .par_iter()
            .map(|&(name, size)| Ok((name, size, self.read_pack_index(&name, size)?)))
            .collect::<Result<_>>()?;
        let mut idx = self.index.write().expect("index lock");
        if rebuild {
            *idx = Index {
                condemned,
                generation: idx.generation + 1,
                ..Index::default()
            };
        }
        for (name, size, entries) in read {
            if !idx.packs.contains_key(&name) {
                idx.add(name, size, &entries, false);
            }
        }
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

    /// Whether an object is stored in a pack gc has not condemned (or is being stored by this
    /// process): what a writer may dedup against.
    pub fn contains(&self, score: &Score) -> bool {
        self.index.read().expect("index lock").holds(score)
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
        if self.index.read().expect("index lock").holds(&score) {
            return Ok(());
        }
        if !self.pending.lock().expect("pending lock").insert(score) {
            return Ok(());
        }
        let level = self.config.zstd_level;
        let target = self.config.frame_target as usize;
        let frame = if plain.len() < target {
            let full = {
                let mut open = self.open_frame.lock().expect("frame lock");
                open.push(score, kind, plain);
                (open.len() >= target).then(|| std::mem::take(&mut *open))
            };
            match full {
                Some(f) => f.encode(level),
                None => return Ok(()),
            }
        } else {
            EncodedFrame::single(score, kind, plain, level)
        };
        let full = {
            let mut open = self.open_pack.lock().expect("pack lock");
            open.add(&frame);
            (open.len() >= self.config.pack_target as usize).then(|| std::mem::take(&mut *open))
        };
        match full {
            Some(p) => self.write_pack(p),
            None => Ok(()),
        }
    }

    /// Rewrites a version-1 config at [`VERSION`], once, before the first newer pack is written.
    fn upgrade_config(&self) -> Result<()> {
        if self.current.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = Config {
            version: VERSION,
            ..self.config.clone()
        };
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        self.backend.put(CONFIG_KEY, &json)?;
        self.current.store(true, Ordering::Release);
        Ok(())
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<()> {
        self.upgrade_config()?;
        let (name, data, entries) = builder.finish();
        let size = data.len() as u64;
        let result = self.backend.put_bytes(&pack_key(&name), data.into());
        let mut pending = self.pending.lock().expect("pending lock");
        if result.is_ok() {
            let mut idx = self.index.write().expect("index lock");
            idx.add(name, size, &entries, false);
            self.written.lock().expect("written lock").push(name);
            crate::faults::point(crate::faults::PACK_WRITTEN);
        }
        for entry in &entries {
            pending.remove(&entry.score);
        }
        result
    }

    /// Writes out the partly filled frame and pack, making every object put so far readable.
    pub fn flush(&self) -> Result<()> {
        let frame = std::mem::take(&mut *self.open_frame.lock().expect("frame lock"));
        let frame = (!frame.is_empty()).then(|| frame.encode(self.config.zstd_level));
        let open = {
            let mut open = self.open_pack.lock().expect("pack lock");
            if let Some(f) = &frame {
                open.add(f);
            }
            std::mem::take(&mut *open)
        };
        if open.is_empty() {
            return Ok(());
        }
        self.write_pack(open)
    }

    pub(crate) fn locate(&self, score: &Score) -> Option<Location> {
        self.index.read().expect("index lock").locate(score)
    }

    /// Reads an object, checking its bytes against its score.
    ///
    /// An object the index does not locate, or whose pack cannot be read, makes the index
    /// reload once (another process may have written it, or gc moved it and deleted the
    /// pack); reads failing at the same time share that one reload. A reader's reload for an
    /// object it does not locate only lists the packs (no catalog connection on the way to a
    /// snapshot saved elsewhere).
    pub fn get(&self, score: &Score) -> Result<(ObjectKind, Vec<u8>)> {
        let seen = *self.reloads.lock().expect("reloads lock");
        match self.read_located(score) {
            Err(e @ (Error::Missing(_) | Error::Io { .. })) => {
                let packs_only = self.reader && matches!(e, Error::Missing(_));
                match self.reload_after(seen, packs_only) {
                    Ok(()) => self.read_located(score),
                    Err(_) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Reloads the index (with `packs_only`, keeping what gc condemned as last known) unless
    /// it was reloaded since the reload count was `seen`.
    fn reload_after(&self, seen: u64, packs_only: bool) -> Result<()> {
        let mut reloads = self.reloads.lock().expect("reloads lock");
        if *reloads != seen {
            return Ok(());
        }
        if packs_only {
            let condemned = self.index.read().expect("index lock").condemned.clone();
            self.load_index(condemned)?;
        } else {
            self.reload_index()?;
        }
        *reloads += 1;
        Ok(())
    }

    fn read_located(&self, score: &Score) -> Result<(ObjectKind, Vec<u8>)> {
        let loc = self.locate(score).ok_or(Error::Missing(*score))?;
        let e = loc.entry;
        let cache_key = (loc.pack, e.offset);
        if !e.whole_frame() {
            let cached = self.frames.lock().expect("frame cache").get(&cache_key);
            if let Some(frame) = cached {
                return Ok((e.kind, pack::object_from_frame(&e, &frame)?));
            }
        }
        let key = pack_key(&loc.pack);
        let stored = self
            .backend
            .get_range(&key, e.offset.into(), e.stored_len as usize)?;
        if e.whole_frame() {
            return Ok((e.kind, pack::decode_object(&e, &stored)?));
        }
        let frame = Arc::new(pack::decode_frame(&e, &stored)?);
        let plain = pack::object_from_frame(&e, &frame)?;
        self.frames
            .lock()
            .expect("frame cache")
            .insert(cache_key, frame);
        Ok((e.kind, plain))
    }

    /// Reads an object to be used as a `kind`. The kind its stored copy was written as may
    /// differ: equal scores are equal bytes, so a tree whose bytes a file stored earlier (as a
    /// blob) is read from that copy. Requiring the kind would let anyone able to import a file
    /// make a later snapshot unreadable: store, first, a blob with the bytes of one of its
    /// trees or chunk lists, and the later import dedups against it.
    pub fn get_kind(&self, score: &Score, kind: ObjectKind) -> Result<Vec<u8>> {
        let (stored, data) = self.get(score)?;
        if stored != kind {
            tracing::debug!(%score, "read as a {kind:?}, stored as a {stored:?}");
        }
        Ok(data)
    }

    /// Groups `scores` into runs that [`Library::get_run`] reads with one request each:
    /// objects of one pack lying within 1 MiB of stored bytes (`RUN_BYTES`), at most 256 KiB
    /// apart (`RUN_GAP`: reading a gap costs less than another request). Each run lists indexes
    /// into `scores`, in pack order; an object the index does not locate is a run of its own.
    pub fn runs(&self, scores: &[Score]) -> Vec<Vec<usize>> {
        let index = self.index.read().expect("index lock");
        let mut placed: Vec<(Score, u64, u64, usize)> = Vec::new();
        let mut runs = Vec::new();
        for (i, score) in scores.iter().enumerate() {
            match index.locate(score) {
                Some(l) => {
                    let at = u64::from(l.entry.offset);
                    placed.push((l.pack, at, at + u64::from(l.entry.stored_len), i));
                }
                None => runs.push(vec![i]),
            }
        }
        placed.sort_unstable();
        let mut open: Option<(Score, u64, u64)> = None; // pack, run start, run end
        for (pack, at, end, i) in placed {
            match (&mut open, runs.last_mut()) {
                (Some((p, start, last)), Some(run))
                    if *p == pack && at <= *last + RUN_GAP && end - *start <= RUN_BYTES =>
                {
                    *last = (*last).max(end);
                    run.push(i);
                }
                _ => {
                    runs.push(vec![i]);
                    open = Some((pack, at, end));
                }
            }
        }
        runs
    }

    /// Reads the objects `scores`, all of `kind`, each checked against its score: a run from
    /// [`Library::runs`] with one ranged read of its pack. Objects not stored together (any
    /// more: gc may have moved them) are read one by one.
    pub fn get_run(&self, scores: &[Score], kind: ObjectKind) -> Result<Vec<Vec<u8>>> {
        let one_by_one = || scores.iter().map(|s| self.get_kind(s, kind)).collect();
        let locs: Option<Vec<Location>> = scores.iter().map(|s| self.locate(s)).collect();
        let Some(locs) = locs.filter(|l| l.len() > 1) else {
            return one_by_one();
        };
        let span = |l: &Location| {
            let at = u64::from(l.entry.offset);
            (at, at + u64::from(l.entry.stored_len))
        };
        let start = locs.iter().map(|l| span(l).0).min().unwrap_or(0);
        let end = locs.iter().map(|l| span(l).1).max().unwrap_or(0);
        let together = locs.iter().all(|l| l.pack == locs[0].pack) && end - start <= RUN_BYTES;
        if !together || locs.iter().any(|l| !l.entry.whole_frame()) {
            return one_by_one();
        }
        let key = pack_key(&locs[0].pack);
        let Ok(stored) = self.backend.get_range(&key, start, (end - start) as usize) else {
            return one_by_one();
        };
        locs.iter()
            .map(|l| {
                let (at, to) = span(l);
                pack::decode_object(
                    &l.entry,
                    &stored[(at - start) as usize..(to - start) as usize],
                )
            })
            .collect()
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
        crate::faults::point(crate::faults::SNAPSHOT_COMMITTED);
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

    /// Bytes of every pack in the backend now (one listing; the index may be older).
    pub fn packed_bytes(&self) -> Result<u64> {
        Ok(self.backend.list(PACKS)?.iter().map(|(_, n)| n).sum())
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
        let Some(t) = pack::trailer_span(size, &tail) else {
            return Ok(None);
        };
        let data = self.backend.get_range(&key, t.start, t.len)?;
        Ok(pack::parse_trailer(&data, size, t.version))
    }

    /// Makes a pack that gc wrote part of the index, pointing every one of `entries` at it
    /// even when the index already locates that object elsewhere (in a pack gc is about to
    /// delete), so readers in this process move to the new copy before the old one goes.
    pub(crate) fn adopt_pack(&self, name: Score, size: u64, entries: &[PackEntry]) {
        let mut idx = self.index.write().expect("index lock");
        idx.add(name, size, entries, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::tests::v1_pack;
    use crate::LocalBackend;

    /// Leases as files, counting the times it is asked what gc condemned.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl Coordinator for Counting {
        fn lease(
            &self,
            backend: &Arc<dyn Backend>,
            kind: crate::lease::LeaseKind,
            wait: std::time::Duration,
            on_wait: &dyn Fn(&str),
        ) -> Result<crate::coord::Lease> {
            FileLeases.lease(backend, kind, wait, on_wait)
        }

        fn condemned(&self) -> Result<HashSet<Score>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(HashSet::new())
        }

        fn ledger(&self) -> Option<&dyn crate::coord::Ledger> {
            None
        }
    }

    /// A reader opens and reads without asking what gc condemned, and an object it does not
    /// locate only makes it list the packs again; a read of a pack that fails (gc deleted
    /// it) reloads the index and asks then. A writer's open asks at once.
    #[test]
    fn a_reader_asks_what_gc_condemned_only_when_a_pack_read_fails() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let lib = Library::open_or_init(backend.clone()).unwrap();
        let score = lib.put(ObjectKind::Blob, b"some bytes").unwrap();
        let big = lib.put(ObjectKind::Blob, &[7u8; 300 << 10]).unwrap();
        lib.flush().unwrap();
        let counting = Arc::new(Counting::default());
        let asked = || counting.0.load(Ordering::Relaxed);
        let reader = Library::open_reader(backend.clone(), counting.clone(), None).unwrap();
        assert_eq!(
            reader.get_kind(&score, ObjectKind::Blob).unwrap(),
            b"some bytes"
        );
        assert_eq!(asked(), 0);
        assert!(reader.get(&Score::of(b"never stored")).is_err());
        assert_eq!(asked(), 0);
        backend
            .delete(&pack_key(&reader.locate(&big).unwrap().pack))
            .unwrap();
        assert!(reader.get(&big).is_err());
        assert_eq!(asked(), 1);
        Library::open_with(backend, counting.clone()).unwrap();
        assert_eq!(asked(), 2);
    }

    /// Objects stored near one another are read with one request, in whatever order they are
    /// asked for, each checked; an object of another pack or an unknown one is a run of its own.
    #[test]
    fn a_run_of_nearby_objects_is_read_with_one_request() {
        use crate::backend::cache::MeteredBackend;
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let metered = Arc::new(MeteredBackend::new(local, std::time::Duration::ZERO));
        let lib = Library::open_or_init(metered.clone()).unwrap();
        // Incompressible objects, each big enough to be a frame of its own.
        let noise = |seed: u8| {
            let mut out = vec![0u8; 200 << 10];
            blake3::Hasher::new()
                .update(&[seed])
                .finalize_xof()
                .fill(&mut out);
            out
        };
        let objects: Vec<Vec<u8>> = (0..3).map(noise).collect();
        let put = |o: &Vec<u8>| lib.put(ObjectKind::Blob, o).unwrap();
        let scores: Vec<Score> = objects.iter().map(put).collect();
        lib.flush().unwrap();
        let elsewhere = put(&noise(9));
        lib.flush().unwrap();
        let lib = Library::open(metered.clone()).unwrap();

        let asked = [
            scores[2],
            elsewhere,
            scores[0],
            Score::of(b"nowhere"),
            scores[1],
        ];
        let mut runs = lib.runs(&asked);
        runs.iter_mut().for_each(|r| r.sort());
        runs.sort();
        assert_eq!(runs, vec![vec![0, 2, 4], vec![1], vec![3]]);

        let before = metered.counts();
        let got = lib
            .get_run(&[scores[2], scores[0], scores[1]], ObjectKind::Blob)
            .unwrap();
        assert_eq!(
            got,
            vec![objects[2].clone(), objects[0].clone(), objects[1].clone()]
        );
        let after = metered.counts();
        assert_eq!(
            (after.ranges - before.ranges, after.gets - before.gets),
            (1, 0)
        );
    }

    /// A library written by the first format (version-1 config and pack) opens, reads, takes
    /// new objects (upgrading its config to version 2 first) and reads both afterwards.
    #[test]
    fn version_1_library_is_read_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let v1 = r#"{ "format": "spawngrid-library", "version": 1,
            "chunk_threshold": 524288, "chunk_min": 131072, "chunk_avg": 524288,
            "chunk_max": 2097152, "pack_target": 33554432, "zstd_level": 3 }"#;
        backend.put(CONFIG_KEY, v1.as_bytes()).unwrap();
        let old: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'a' + i; 700]).collect();
        let list: Vec<_> = old.iter().map(|o| (ObjectKind::Blob, &o[..])).collect();
        let (name, data) = v1_pack(&list);
        backend.put(&pack_key(&name), &data).unwrap();

        let lib = Library::open(backend.clone()).unwrap();
        assert_eq!(lib.config().frame_target, 128 << 10);
        for o in &old {
            assert_eq!(&lib.get(&Score::of(o)).unwrap().1, o);
        }
        let new = b"written after the upgrade".repeat(10);
        let score = lib.put(ObjectKind::Blob, &new).unwrap();
        lib.flush().unwrap();
        let config: Config = serde_json::from_slice(&backend.get(CONFIG_KEY).unwrap()).unwrap();
        assert_eq!(config.version, VERSION);

        let lib = Library::open(backend).unwrap();
        assert_eq!(lib.get(&score).unwrap().1, new);
        for o in &old {
            assert_eq!(&lib.get(&Score::of(o)).unwrap().1, o);
        }
        assert_eq!(lib.object_count(), 4);
    }

    /// A blob stored first with the bytes of a tree serves that tree when a later import
    /// stores it (and dedups against the blob).
    #[test]
    fn an_object_serves_every_kind_its_bytes_are() {
        let (_d1, lib) = crate::fixture::library();
        let snap = crate::fixture::snapshot(&lib, 1, 5);
        let crate::Content::Dir { tree, .. } = lib.snapshot(&snap).unwrap().root.content else {
            panic!("the root is not a directory");
        };
        let bytes = lib.get(&tree).unwrap().1;
        let (_d2, other) = crate::fixture::library();
        other.put(ObjectKind::Blob, &bytes).unwrap();
        other.flush().unwrap();
        assert_eq!(other.put(ObjectKind::Tree, &bytes).unwrap(), tree);
        assert_eq!(other.tree(&tree).unwrap(), lib.tree(&tree).unwrap());
    }

    /// Sizes a pack's u32 offsets cannot reach are refused at init (nothing written) and in
    /// a stored config.
    #[test]
    fn sizes_past_a_packs_offsets_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(t.path()).unwrap());
        let huge = Config {
            pack_target: u32::MAX,
            ..Config::default()
        };
        let err = Library::init(backend.clone(), huge.clone()).err().unwrap();
        assert!(err.to_string().contains("pack_target"), "{err}");
        assert!(!backend.exists(CONFIG_KEY).unwrap());
        backend
            .put(CONFIG_KEY, &serde_json::to_vec(&huge).unwrap())
            .unwrap();
        let err = Library::open(backend).err().unwrap();
        assert!(err.to_string().contains("at most"), "{err}");
    }

    /// Small objects share frames, large ones get their own; every one reads back, also from
    /// a fresh process (no frame cache).
    #[test]
    fn shared_frames_read_back() {
        let (dir, lib) = crate::fixture::library();
        let objects: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                format!("object {i} ")
                    .repeat(1 + (i as usize * 37) % 2000)
                    .into_bytes()
            })
            .collect();
        let scores: Vec<Score> = objects
            .iter()
            .map(|o| lib.put(ObjectKind::Blob, o).unwrap())
            .collect();
        lib.flush().unwrap();
        let shared = scores
            .iter()
            .filter(|s| !lib.locate(s).unwrap().entry.whole_frame())
            .count();
        assert!(
            shared > 50 && shared < 200,
            "{shared} of 200 in shared frames"
        );
        for lib in [lib, crate::fixture::reopen(dir.path())] {
            for (s, o) in scores.iter().zip(&objects).rev() {
                assert_eq!(&lib.get(s).unwrap().1, o);
            }
        }
    }

    /// Libraries opened on a shared index read only the packs it has not seen: a second open
    /// costs one listing, a pack another library wrote is seen without a reload, and a new
    /// pack written elsewhere is read once.
    #[test]
    fn a_shared_index_reads_each_pack_once() {
        use crate::backend::cache::MeteredBackend;
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let elsewhere = Library::open_or_init(local.clone()).unwrap();
        let first = elsewhere.put(ObjectKind::Blob, b"first").unwrap();
        elsewhere.flush().unwrap();
        let metered = Arc::new(MeteredBackend::new(local, std::time::Duration::ZERO));
        let backend: Arc<dyn Backend> = metered.clone();
        let shared = SharedIndex::default();
        let a = Library::open_shared(backend.clone(), Arc::new(FileLeases), &shared).unwrap();
        let after_a = metered.counts();
        assert!(after_a.ranges > 0, "the first open reads the trailer");
        let b = Library::open_shared(backend.clone(), Arc::new(FileLeases), &shared).unwrap();
        assert_eq!(
            metered.counts().ranges,
            after_a.ranges,
            "no trailer read again"
        );
        let by_b = b.put(ObjectKind::Blob, b"by b").unwrap();
        b.flush().unwrap();
        assert!(a.contains(&by_b), "a sees b's pack at once");
        assert_eq!(a.get_kind(&by_b, ObjectKind::Blob).unwrap(), b"by b");
        let later = elsewhere.put(ObjectKind::Blob, b"later").unwrap();
        elsewhere.flush().unwrap();
        let before = metered.counts().ranges;
        assert_eq!(a.get_kind(&later, ObjectKind::Blob).unwrap(), b"later");
        // The miss reloads: two ranged reads for the new pack's tail and trailer, one for
        // the object; none for the packs already indexed.
        assert_eq!(metered.counts().ranges - before, 3);
        assert_eq!(b.object_count(), 3);
        assert!(b.contains(&first) && b.contains(&later));
    }

    /// Where an object is depends on which packs gc condemned and which are gone: when either
    /// changes, a shared index is loaded whole again (no stale location survives).
    #[test]
    fn a_shared_index_reloads_whole_when_a_pack_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let shared = SharedIndex::default();
        Library::open_or_init(backend.clone()).unwrap();
        let a = Library::open_shared(backend.clone(), Arc::new(FileLeases), &shared).unwrap();
        let gone = a.put(ObjectKind::Blob, b"in a pack gc deletes").unwrap();
        a.flush().unwrap();
        let kept = a.put(ObjectKind::Blob, b"kept").unwrap();
        a.flush().unwrap();
        let pack = a.locate(&gone).unwrap().pack;
        backend.delete(&pack_key(&pack)).unwrap();
        let b = Library::open_shared(backend, Arc::new(FileLeases), &shared).unwrap();
        assert!(
            !b.contains(&gone) && !a.contains(&gone),
            "the deleted pack is forgotten"
        );
        assert!(matches!(a.get(&gone), Err(Error::Missing(_))));
        assert_eq!(b.get_kind(&kept, ObjectKind::Blob).unwrap(), b"kept");
        assert_eq!(a.packs().len(), 1);
    }
}
