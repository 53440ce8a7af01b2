//! The node-local file cache: whole files materialized from the library, verified, and kept
//! under a size limit with least-recently-used eviction of files nobody has open.
//!
//! Layout (format version in `VERSION`; a cache with another version is emptied on open):
//! ```text
//! CACHE/VERSION                 "spawngrid-snapfs-cache 1"
//! CACHE/files/<xx>/<score hex>  one file's bytes; score = the FileData score (blob or chunk list)
//! CACHE/tmp/<pid>.<n>           files being written (renamed into files/ when complete)
//! CACHE/fetching.lock           empty; a byte locked per file being fetched (see below)
//! ```
//! Processes sharing the directory (the mount servers of a node's snapshots, which share
//! most files) fetch a file once: a fetch holds an open-file-description lock on one byte of `fetching.lock` chosen by
//! the score, and an acquire of the same file in another process waits for it, then finds the
//! file in place. The kernel drops the lock when its holder dies (`kill -9` mid-fetch).
//! A file is written from objects the library verifies as it reads them, under a temporary
//! name, then renamed: a cache file is either complete and correct or absent. Files found at
//! start (left by an earlier process) are re-verified against their score the first time this
//! process opens them; a mismatch logs a warning naming the score and the file is fetched again.
//! Indexing those files (for the size limit and LRU order, oldest modification time first)
//! runs on a background thread so that opening the cache costs the same whatever it holds.
//!
//! A pinned file is never evicted by this process and always counted in its total: whoever
//! still holds a cache file (an open handle, a passthrough backing id the kernel keeps) holds a
//! pin on it ([`Pin`]), so the bytes the limit bounds are the bytes on disk. Pins count per
//! holder and survive a file being fetched again (each holder releases exactly its own).

use library::file::blobs;
use library::pack::ObjectKind;
use library::{FileData, Library, Score};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The cache format this code writes and reads.
pub const VERSION: &str = "spawngrid-snapfs-cache 1";

struct Slot {
    size: u64,
    /// Its place in the eviction order: files this process used count up from 1, files
    /// found on disk down from -1, so they go first.
    tick: i64,
    pins: u32,
    verified: bool,
    /// Whether the bytes verified are a chunked file's (else a blob's): one score may name
    /// both, a blob whose bytes equal a chunk list's, with other contents.
    chunked: bool,
}

#[derive(Default)]
struct State {
    files: HashMap<Score, Slot>,
    lru: BTreeMap<i64, Score>,
    tick: i64,
    /// The tick of the last file found on disk (counting down).
    found: i64,
    total: u64,
}

impl State {
    fn touch(&mut self, s: &Score) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.files.get_mut(s) {
            self.lru.remove(&slot.tick);
            slot.tick = tick;
            self.lru.insert(tick, *s);
        }
    }

    fn insert(&mut self, s: Score, size: u64, verified: bool) {
        self.tick += 1;
        self.place(s, size, verified, self.tick);
    }

    /// Adds a file an earlier process left, as older than every file this process used.
    fn insert_found(&mut self, s: Score, size: u64) {
        self.found -= 1;
        self.place(s, size, false, self.found);
    }

    /// Adds (or replaces) the slot of `s`, keeping the pins of a replaced slot: its holders
    /// each release once.
    fn place(&mut self, s: Score, size: u64, verified: bool, tick: i64) {
        let pins = self.remove(&s).map_or(0, |old| old.pins);
        self.files.insert(
            s,
            Slot {
                size,
                tick,
                pins,
                verified,
                chunked: false,
            },
        );
        self.lru.insert(tick, s);
        self.total += size;
    }

    /// Drops the slot of a file found bad or gone, unless it is pinned: then it only stops
    /// being trusted (and still counts, as what its holders keep).
    fn forget(&mut self, s: &Score) {
        match self.files.get_mut(s) {
            Some(slot) if slot.pins > 0 => slot.verified = false,
            _ => {
                self.remove(s);
            }
        }
    }

    fn remove(&mut self, s: &Score) -> Option<Slot> {
        let slot = self.files.remove(s)?;
        self.lru.remove(&slot.tick);
        self.total -= slot.size;
        Some(slot)
    }
}

/// The file cache of one server process (several processes may share a directory).
pub struct Cache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    fetching: Mutex<HashMap<Score, Arc<Mutex<()>>>>,
    fetch_lock: File,
}

/// One pin on a cache file, released when dropped: the file stays on disk (as far as this
/// process is concerned) and counted in [`Cache::total`] as long as the pin lives.
pub struct Pin {
    cache: Arc<Cache>,
    score: Score,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.cache.release(&self.score);
    }
}

/// Numbers this process's temporary files (named `PID.N`), across every [`Cache`] it opens:
/// two caches on one directory must not write one file.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn io(what: &'static str, path: &Path, e: std::io::Error) -> library::Error {
    library::Error::io(what, path, e)
}

/// Points inside [`Cache::acquire`] between which another process sharing the directory may
/// act; unit tests run code there (on the acquiring thread) to make such a race happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A cache file is open, not verified yet.
    Opened,
    /// This process holds the file's fetch lock and is about to fetch it.
    Fetching,
    /// A fetched file has just been renamed into place.
    Stored,
}

/// What a unit test runs at each [`Step`].
#[cfg(test)]
type StepHook = Box<dyn FnMut(Step)>;

#[cfg(test)]
thread_local! {
    /// What a unit test runs at each [`Step`] of this thread's acquires.
    static AT_STEP: std::cell::RefCell<Option<StepHook>> = const { std::cell::RefCell::new(None) };
}

/// Runs the test's code for `step`, if any (nothing outside unit tests).
fn at_step(step: Step) {
    #[cfg(test)]
    AT_STEP.with(|f| {
        if let Some(f) = f.borrow_mut().as_mut() {
            f(step)
        }
    });
    #[cfg(not(test))]
    let _ = step;
}

impl Cache {
    /// Opens (creating or upgrading) the cache in `dir`, limited to `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> library::Result<Cache> {
        let version = dir.join("VERSION");
        let current = std::fs::read_to_string(&version).unwrap_or_default();
        if current.trim() != VERSION {
            if !current.is_empty() {
                tracing::warn!(cache = %dir.display(), "cache format {current:?} is not {VERSION:?}; emptying it");
            }
            let _ = std::fs::remove_dir_all(dir.join("files"));
            let _ = std::fs::remove_dir_all(dir.join("tmp"));
        }
        for d in ["files", "tmp"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| io("creating", dir, e))?;
        }
        if current.trim() != VERSION {
            std::fs::write(&version, format!("{VERSION}\n"))
                .map_err(|e| io("writing", &version, e))?;
        }
        let lock_path = dir.join("fetching.lock");
        let fetch_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("opening", &lock_path, e))?;
        let cache = Cache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::default(),
            fetching: Mutex::default(),
            fetch_lock,
        };
        Ok(cache)
    }

    /// Cleans temporary files and indexes files left by earlier processes on a background
    /// thread (until then they are found by path when opened).
    pub fn start_scan(self: &Arc<Self>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("cache-scan".into())
            .spawn(move || {
                me.clean_tmp();
                me.scan();
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the cache scan: {e}");
        }
    }

    /// Removes temporary files whose writer process is gone.
    fn clean_tmp(&self) {
        let Ok(rd) = std::fs::read_dir(self.dir.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').next().unwrap_or("");
            if !Path::new("/proc").join(pid).exists() || pid.is_empty() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Indexes files left by earlier processes, as older than every file this process used
    /// (the scan runs after the mount went live and the first files were fetched), among
    /// themselves by modification time.
    fn scan(&self) {
        let mut found = Vec::new();
        for sub in std::fs::read_dir(self.dir.join("files"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let (Ok(score), Ok(md)) = (
                    f.file_name().to_string_lossy().parse::<Score>(),
                    f.metadata(),
                ) else {
                    continue;
                };
                found.push((md.modified().ok(), score, md.len()));
            }
        }
        found.sort();
        let mut st = self.state.lock().expect("cache state");
        for (_, score, size) in found.into_iter().rev() {
            if !st.files.contains_key(&score) {
                st.insert_found(score, size);
            }
        }
        drop(st);
        self.evict();
    }

    /// Where the cache file for `score` lives.
    pub fn path(&self, score: &Score) -> PathBuf {
        let hex = score.to_hex();
        self.dir.join("files").join(&hex[..2]).join(hex)
    }

    /// Bytes currently held.
    pub fn total(&self) -> u64 {
        self.state.lock().expect("cache state").total
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// [`Cache::acquire`] with its pin as a value: unpinned when the [`Pin`] is dropped.
    pub fn hold(
        self: &Arc<Self>,
        lib: &Library,
        score: Score,
        data: &FileData,
    ) -> library::Result<(File, Pin)> {
        let file = self.acquire(lib, score, data)?;
        Ok((file, self.pinned(score)))
    }

    /// Pins `score` without opening it, for a holder of a cache file this process did not
    /// acquire (a backing id a previous server registered): a file the cache does not list
    /// is added as `size` bytes, to be verified before it is served.
    pub fn pin(self: &Arc<Self>, score: Score, size: u64) -> Pin {
        let mut st = self.state.lock().expect("cache state");
        if !st.files.contains_key(&score) {
            st.insert(score, size, false);
        }
        st.files.get_mut(&score).expect("just listed").pins += 1;
        drop(st);
        self.evict();
        self.pinned(score)
    }

    /// The [`Pin`] for a pin of `score` already taken.
    fn pinned(self: &Arc<Self>, score: Score) -> Pin {
        Pin {
            cache: self.clone(),
            score,
        }
    }

    /// Opens file data `data` (score `score`) for reading, fetching it from `lib` if needed,
    /// and pins it against eviction until [`Cache::release`].
    pub fn acquire(&self, lib: &Library, score: Score, data: &FileData) -> library::Result<File> {
        let lock = self
            .fetching
            .lock()
            .expect("fetching")
            .entry(score)
            .or_default()
            .clone();
        let result = {
            let _one_fetch = lock.lock().expect("fetch lock");
            let _one_process = FetchLock::take(&self.fetch_lock, &score)
                .map_err(|e| io("locking", &self.dir.join("fetching.lock"), e))?;
            self.acquire_locked(lib, score, data)
        };
        let mut f = self.fetching.lock().expect("fetching");
        if Arc::strong_count(&lock) == 2 {
            f.remove(&score);
        }
        result
    }

    fn acquire_locked(
        &self,
        lib: &Library,
        score: Score,
        data: &FileData,
    ) -> library::Result<File> {
        let path = self.path(&score);
        let chunked = matches!(data, FileData::Chunks(_));
        let known = self
            .state
            .lock()
            .expect("cache state")
            .files
            .get(&score)
            .map(|s| s.verified && s.chunked == chunked)
            .or_else(|| path.exists().then_some(false));
        if let Some(verified) = known {
            // From here on only this descriptor is read, never the path again: an eviction
            // (by this process, or by another sharing the directory) may unlink the path at
            // any moment, and an open file stays readable.
            let opened = File::open(&path);
            at_step(Step::Opened);
            match opened {
                Ok(f) if verified || self.check(lib, &score, data, &f, &path)? => {
                    let mut st = self.state.lock().expect("cache state");
                    if !st.files.contains_key(&score) {
                        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                        st.insert(score, size, true);
                    }
                    if let Some(slot) = st.files.get_mut(&score) {
                        slot.pins += 1;
                        slot.verified = true;
                        slot.chunked = chunked;
                    }
                    st.touch(&score);
                    return Ok(f);
                }
                Ok(_) => {
                    tracing::warn!(%score, "cached file does not match its score; fetching it again")
                }
                Err(e) => tracing::debug!(%score, "cached file gone ({e}); fetching it again"),
            }
            self.state.lock().expect("cache state").forget(&score);
            let _ = std::fs::remove_file(&path);
        }
        at_step(Step::Fetching);
        let (f, size) = self.fetch(lib, &score, data, &path)?;
        at_step(Step::Stored);
        {
            let mut st = self.state.lock().expect("cache state");
            st.insert(score, size, true);
            let slot = st.files.get_mut(&score).expect("just inserted");
            slot.pins += 1;
            slot.chunked = chunked;
        }
        self.evict();
        Ok(f)
    }

    /// Writes the file's bytes (verified by the library) to a temporary file, then renames it;
    /// returns the file, opened for reading before the rename (so an eviction that unlinks
    /// the path right after cannot take it away), and its size.
    fn fetch(
        &self,
        lib: &Library,
        score: &Score,
        data: &FileData,
        path: &Path,
    ) -> library::Result<(File, u64)> {
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> library::Result<(File, u64)> {
            // Never another writer's file: a name in use is an error, not a shared inode.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| io("creating", &tmp, e))?;
            let n = match data {
                FileData::Chunks(_) => fetch_chunks(lib, &blobs(lib, data)?, &f, &tmp)?,
                _ => {
                    let mut w = BufWriter::with_capacity(1 << 20, &f);
                    let n = library::file::write_file(lib, data, &mut w, &score.to_hex())?;
                    w.flush().map_err(|e| io("writing", &tmp, e))?;
                    n
                }
            };
            let done = File::open(&tmp).map_err(|e| io("opening", &tmp, e))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
            }
            std::fs::rename(&tmp, path).map_err(|e| io("renaming", &tmp, e))?;
            Ok((done, n))
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Whether `f` (the cache file at `path`) holds exactly the bytes `score` names.
    fn check(
        &self,
        lib: &Library,
        score: &Score,
        data: &FileData,
        f: &File,
        path: &Path,
    ) -> library::Result<bool> {
        let pieces = match data {
            FileData::Blob(_) => vec![(*score, u32::MAX)],
            _ => blobs(lib, data)?,
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        let read = |buf: &mut [u8], at: u64| f.read_at(buf, at).map_err(|e| io("reading", path, e));
        for (want, len) in pieces {
            let mut h = blake3::Hasher::new();
            let mut left = u64::from(len);
            while left > 0 {
                let n = read(&mut buf[..left.min(1 << 20) as usize], at)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                left -= n as u64;
                at += n as u64;
            }
            if (len != u32::MAX && left != 0) || Score(*h.finalize().as_bytes()) != want {
                return Ok(false);
            }
        }
        Ok(read(&mut buf[..1], at)? == 0)
    }

    /// Marks `score` as just used (for LRU order) without pinning it.
    pub fn touch(&self, score: &Score) {
        self.state.lock().expect("cache state").touch(score);
    }

    /// Unpins file data acquired with [`Cache::acquire`] (or pinned by [`Cache::pin`]). A
    /// pinned file never verified here that is gone from disk stops counting with its last pin.
    pub fn release(&self, score: &Score) {
        let mut st = self.state.lock().expect("cache state");
        if let Some(slot) = st.files.get_mut(score) {
            slot.pins = slot.pins.saturating_sub(1);
            if slot.pins == 0 && !slot.verified && !self.path(score).exists() {
                st.remove(score);
            }
        }
        drop(st);
        self.evict();
    }

    /// Deletes least recently used unpinned files until the cache is within its limit.
    fn evict(&self) {
        let mut st = self.state.lock().expect("cache state");
        let mut victims = Vec::new();
        let mut total = st.total;
        for s in st.lru.values() {
            if total <= self.limit {
                break;
            }
            let slot = &st.files[s];
            if slot.pins == 0 {
                total -= slot.size;
                victims.push(*s);
            }
        }
        for s in &victims {
            st.remove(s);
        }
        drop(st);
        for s in victims {
            tracing::debug!(score = %s, "evicting cached file");
            let _ = std::fs::remove_file(self.path(&s));
        }
    }

    /// Opens the cached file for `score` if the cache holds one, without fetching, pinning or
    /// verifying it (read-only: for another process, such as `lib export`, reading the cache).
    /// A present file is complete (written from verified library reads under a temporary name,
    /// then renamed); whether its bytes are still right is the caller's to check.
    pub fn open_existing(&self, score: &Score) -> Option<File> {
        File::open(self.path(score)).ok()
    }
}

/// The byte of `fetching.lock` standing for one file, write-locked (an open-file-description
/// lock: it conflicts with every other open of the file, in this process or another, and the
/// kernel drops it with its last descriptor) until dropped.
struct FetchLock<'a> {
    file: &'a File,
    at: i64,
}

impl<'a> FetchLock<'a> {
    /// Waits for and takes the lock of `score` on `file`.
    fn take(file: &'a File, score: &Score) -> std::io::Result<FetchLock<'a>> {
        let first: [u8; 8] = score.0[..8].try_into().expect("8 bytes");
        let lock = FetchLock {
            file,
            at: (u64::from_le_bytes(first) >> 1) as i64,
        };
        while let Err(e) = lock.set(libc::F_WRLCK, libc::F_OFD_SETLKW) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(lock)
    }

    fn set(&self, kind: i32, cmd: i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed flock is valid; the fields the call reads are set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = self.at;
        fl.l_len = 1;
        // SAFETY: fcntl on an open descriptor with a pointer to a live flock.
        if unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &fl) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for FetchLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.set(libc::F_UNLCK, libc::F_OFD_SETLK) {
            tracing::warn!("releasing a cache fetch lock: {e}");
        }
    }
}

/// Writes a chunked file's chunks at their offsets, fetched and verified by one worker per
/// core (reading, decompressing and hashing dominate a first open). Chunks stored near one
/// another are read together ([`Library::runs`]): a file of a remote library costs a request
/// per megabyte or so, not one per chunk.
fn fetch_chunks(
    lib: &Library,
    chunks: &[(Score, u32)],
    f: &File,
    path: &Path,
) -> library::Result<u64> {
    let mut offsets = Vec::with_capacity(chunks.len());
    let mut total = 0u64;
    for (_, len) in chunks {
        offsets.push(total);
        total += u64::from(*len);
    }
    let scores: Vec<Score> = chunks.iter().map(|(s, _)| *s).collect();
    let runs = lib.runs(&scores);
    let next = AtomicU64::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8)
        .min(runs.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> library::Result<()> {
                    loop {
                        let Some(run) = runs.get(next.fetch_add(1, Ordering::Relaxed) as usize)
                        else {
                            return Ok(());
                        };
                        let want: Vec<Score> = run.iter().map(|&i| scores[i]).collect();
                        let got = lib.get_run(&want, ObjectKind::Blob)?;
                        for (&i, b) in run.iter().zip(got) {
                            let len = chunks[i].1;
                            if b.len() != len as usize {
                                return Err(library::Error::corrupt(
                                    format!("object {}", chunks[i].0),
                                    format!("is {} bytes, its chunk list says {len}", b.len()),
                                ));
                            }
                            f.write_all_at(&b, offsets[i])
                                .map_err(|e| io("writing", path, e))?;
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("fetch worker panicked"))
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use library::LocalBackend;
    use std::io::Read;

    fn setup(dir: &Path, n: usize) -> (Library, Vec<(Score, FileData, Vec<u8>)>) {
        let lib =
            Library::open_or_init(Arc::new(LocalBackend::open(dir.join("lib")).unwrap())).unwrap();
        let files = (0..n)
            .map(|i| {
                let bytes: Vec<u8> = (0..1000u32).map(|j| (j * 7 + i as u32) as u8).collect();
                let (_, data) = library::file::store_bytes(&lib, &bytes).unwrap();
                let FileData::Blob(s) = data else {
                    panic!("small file is one blob")
                };
                (s, data, bytes)
            })
            .collect();
        lib.flush().unwrap();
        (lib, files)
    }

    fn read(mut f: File) -> Vec<u8> {
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    /// A blob whose bytes equal a chunk list's has that list's score: the cache must not
    /// serve one file's contents for the other's.
    #[test]
    fn a_blob_and_a_chunked_file_of_one_score_each_read_their_own_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = Library::open_or_init(Arc::new(
            LocalBackend::open(tmp.path().join("lib")).unwrap(),
        ))
        .unwrap();
        let mut big = vec![0u8; 3 << 20];
        blake3::Hasher::new().finalize_xof().fill(&mut big);
        let (_, chunked) = library::file::store_bytes(&lib, &big).unwrap();
        let FileData::Chunks(s) = chunked else {
            panic!("a 3 MiB file is chunked");
        };
        lib.flush().unwrap();
        let list = lib.get(&s).unwrap().1;
        let (_, blob) = library::file::store_bytes(&lib, &list).unwrap();
        assert_eq!(blob, FileData::Blob(s));
        lib.flush().unwrap();
        let cache = Cache::open(&tmp.path().join("cache"), 1 << 30).unwrap();
        for _ in 0..2 {
            assert_eq!(read(cache.acquire(&lib, s, &blob).unwrap()), list);
            cache.release(&s);
            assert!(read(cache.acquire(&lib, s, &chunked).unwrap()) == big);
            cache.release(&s);
        }
    }

    #[test]
    fn two_caches_on_one_directory_write_their_own_temporary_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, files) = setup(tmp.path(), 64);
        let dir = tmp.path().join("cache");
        let caches = [
            Cache::open(&dir, 1 << 30).unwrap(),
            Cache::open(&dir, 1 << 30).unwrap(),
        ];
        std::thread::scope(|s| {
            for (half, cache) in files.chunks(32).zip(&caches) {
                let lib = &lib;
                s.spawn(move || {
                    for f in half {
                        assert_eq!(read(cache.acquire(lib, f.0, &f.1).unwrap()), f.2);
                        cache.release(&f.0);
                    }
                });
            }
        });
        for f in &files {
            assert_eq!(std::fs::read(caches[0].path(&f.0)).unwrap(), f.2);
        }
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn files_found_on_disk_go_before_the_files_this_process_used() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, files) = setup(tmp.path(), 3);
        let dir = tmp.path().join("cache");
        {
            let earlier = Cache::open(&dir, 1 << 20).unwrap();
            for f in &files {
                earlier.acquire(&lib, f.0, &f.1).unwrap();
                earlier.release(&f.0);
            }
        }
        // A new process uses the oldest file on disk first (a mount's first command), then
        // finds the others: the limit holds two, and the one it used must stay.
        let cache = Cache::open(&dir, 2500).unwrap();
        let used = &files[0];
        assert_eq!(read(cache.acquire(&lib, used.0, &used.1).unwrap()), used.2);
        cache.release(&used.0);
        cache.scan();
        assert!(
            cache.path(&used.0).exists(),
            "the file just used was evicted"
        );
        assert!(cache.total() <= 2500);
        let kept = files[1..]
            .iter()
            .filter(|f| cache.path(&f.0).exists())
            .count();
        assert_eq!(kept, 1);
    }

    #[test]
    fn evicts_least_recently_used_unpinned_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, files) = setup(tmp.path(), 3);
        let cache = Cache::open(&tmp.path().join("cache"), 2500).unwrap();
        let [a, b, c] = [&files[0], &files[1], &files[2]];
        assert_eq!(read(cache.acquire(&lib, a.0, &a.1).unwrap()), a.2);
        assert_eq!(read(cache.acquire(&lib, b.0, &b.1).unwrap()), b.2);
        cache.release(&a.0);
        // b is still open (pinned): bringing c in must evict a, the unpinned one.
        assert_eq!(read(cache.acquire(&lib, c.0, &c.1).unwrap()), c.2);
        assert!(!cache.path(&a.0).exists());
        assert!(cache.path(&b.0).exists() && cache.path(&c.0).exists());
        assert_eq!(cache.total(), 2000);
        // a comes back (fetched again) and c, least recently used once released, goes.
        cache.release(&c.0);
        assert_eq!(read(cache.acquire(&lib, a.0, &a.1).unwrap()), a.2);
        assert!(!cache.path(&c.0).exists() && cache.path(&b.0).exists());
    }

    /// A file fetched again while pinned (another process evicted it) keeps its holders'
    /// pins: each release takes back one, and the file stays until the last (the refetch used
    /// to reset the count to one, so the first release made a file still open evictable).
    #[test]
    fn pins_outlive_a_fetch_again_and_each_holder_releases_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, files) = setup(tmp.path(), 4);
        let cache = Cache::open(&tmp.path().join("cache"), 2500).unwrap();
        let [a, b, c, d] = [&files[0], &files[1], &files[2], &files[3]];
        for _ in 0..2 {
            assert_eq!(read(cache.acquire(&lib, a.0, &a.1).unwrap()), a.2);
        }
        std::fs::remove_file(cache.path(&a.0)).unwrap();
        assert_eq!(read(cache.acquire(&lib, a.0, &a.1).unwrap()), a.2);
        cache.release(&a.0);
        cache.release(&a.0);
        for f in [b, c] {
            assert_eq!(read(cache.acquire(&lib, f.0, &f.1).unwrap()), f.2);
            cache.release(&f.0);
        }
        assert!(cache.path(&a.0).exists(), "a file still held was evicted");
        assert_eq!(cache.total(), 2000);
        cache.release(&a.0);
        assert_eq!(read(cache.acquire(&lib, d.0, &d.1).unwrap()), d.2);
        cache.release(&d.0);
        assert!(
            !cache.path(&a.0).exists(),
            "the last release left it pinned"
        );
        assert_eq!(cache.total(), 2000);
    }

    /// A pin on a file the cache does not list (a previous server's backing file) counts it,
    /// keeps it, lets an acquire verify and serve it, and is given back when dropped; a pin
    /// on a file gone from disk counts what the kernel still holds until it is dropped.
    #[test]
    fn a_pin_on_an_unlisted_file_counts_and_keeps_it_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, files) = setup(tmp.path(), 4);
        let dir = tmp.path().join("cache");
        let [a, b, c, d] = [&files[0], &files[1], &files[2], &files[3]];
        Cache::open(&dir, 1 << 20)
            .unwrap()
            .acquire(&lib, a.0, &a.1)
            .unwrap();
        let cache = Arc::new(Cache::open(&dir, 2500).unwrap());
        let on_disk = cache.pin(a.0, 1000);
        let gone = cache.pin(d.0, 1000);
        assert_eq!(cache.total(), 2000);
        for f in [b, c] {
            assert_eq!(read(cache.acquire(&lib, f.0, &f.1).unwrap()), f.2);
            cache.release(&f.0);
        }
        assert!(cache.path(&a.0).exists(), "a pinned file was evicted");
        assert!(
            !cache.path(&c.0).exists(),
            "the pinned files left room for one"
        );
        assert_eq!(cache.total(), 2000);
        let (f, pin) = cache.hold(&lib, a.0, &a.1).unwrap();
        assert_eq!(read(f), a.2);
        drop((on_disk, pin, gone));
        assert_eq!(cache.total(), 1000, "only the file on disk counts");
        assert_eq!(read(cache.acquire(&lib, b.0, &b.1).unwrap()), b.2);
        cache.release(&b.0);
        assert_eq!(cache.total(), 2000);
    }

    /// Runs `acquire` with `act` run once when it reaches `step` (on this thread).
    fn with_step<T>(step: Step, act: impl FnOnce() + 'static, acquire: impl FnOnce() -> T) -> T {
        let mut act = Some(act);
        AT_STEP.with(|f| {
            *f.borrow_mut() = Some(Box::new(move |at| {
                if at == step {
                    if let Some(act) = act.take() {
                        act();
                    }
                }
            }))
        });
        let out = acquire();
        AT_STEP.with(|f| f.borrow_mut().take());
        out
    }

    /// Another process sharing the cache directory (a second `Cache` on it, on its own
    /// thread) evicts a file in the middle of this one's acquire of it: once between opening
    /// a cached file and verifying it, once between storing a fetched file and serving it.
    /// Either way this one serves the file's bytes (it used to fail, an EIO at the mount).
    #[test]
    fn a_file_evicted_by_another_process_mid_acquire_is_still_served() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, files) = setup(tmp.path(), 6);
        let dir = tmp.path().join("cache");
        // Room for two of the 1000-byte files in each process.
        let mine = Cache::open(&dir, 2500).unwrap();
        let other = Cache::open(&dir, 2500).unwrap();
        let use_files = |cache: &Cache, which: &[usize]| {
            for &i in which {
                let (s, data, bytes) = &files[i];
                assert_eq!(read(cache.acquire(&lib, *s, data).unwrap()), *bytes);
                cache.release(s);
            }
        };
        std::thread::scope(|scope| {
            let (ask, asked) = std::sync::mpsc::channel::<Vec<usize>>();
            let (tell, done) = std::sync::mpsc::sync_channel::<()>(0);
            let other = &other;
            scope.spawn(move || {
                for which in asked {
                    use_files(other, &which);
                    tell.send(()).unwrap();
                }
            });
            // The other process acts, and this thread waits for it.
            let (ask, done) = (Arc::new(Mutex::new(ask)), Arc::new(Mutex::new(done)));
            let act = |which: Vec<usize>, gone: PathBuf| {
                let (ask, done) = (ask.clone(), done.clone());
                move || {
                    ask.lock().unwrap().send(which).unwrap();
                    done.lock().unwrap().recv().unwrap();
                    assert!(
                        !gone.exists(),
                        "the other process evicted {}",
                        gone.display()
                    );
                }
            };
            let run = |which: Vec<usize>| act(which, PathBuf::from("/nonexistent"))();

            // 0 is cached by the other process; it evicts 0 once this one has opened it.
            run(vec![0]);
            let (s, data, bytes) = &files[0];
            let f = with_step(Step::Opened, act(vec![1, 2], mine.path(s)), || {
                mine.acquire(&lib, *s, data)
            });
            assert_eq!(read(f.unwrap()), *bytes);
            mine.release(s);

            // The other process still lists 3 after this one evicted it; when this one
            // fetches 3 again, the other evicts it as the new file lands.
            run(vec![3]);
            use_files(&mine, &[3, 4, 5]);
            assert!(!mine.path(&files[3].0).exists());
            let (s, data, bytes) = &files[3];
            let f = with_step(Step::Stored, act(vec![2, 0], mine.path(s)), || {
                mine.acquire(&lib, *s, data)
            });
            assert_eq!(read(f.unwrap()), *bytes);
            mine.release(s);
            drop(ask);
        });
    }

    /// Two processes sharing the directory (two `Cache`s, each with its own lock descriptor)
    /// want the same file at once: the second waits for the first one's fetch and reads the
    /// file it stored, so the library is read once (it was read twice: two new mounts of
    /// snapshots sharing libc each fetched it).
    #[test]
    fn a_file_another_process_is_fetching_is_waited_for_not_fetched_again() {
        use library::backend::cache::MeteredBackend;
        let tmp = tempfile::tempdir().unwrap();
        let (_, files) = setup(tmp.path(), 1);
        let local: Arc<dyn library::Backend> =
            Arc::new(LocalBackend::open(tmp.path().join("lib")).unwrap());
        let metered = Arc::new(MeteredBackend::new(local, std::time::Duration::ZERO));
        let lib = Arc::new(Library::open(metered.clone()).unwrap());
        let dir = tmp.path().join("cache");
        let mine = Cache::open(&dir, 1 << 20).unwrap();
        let other = Arc::new(Cache::open(&dir, 1 << 20).unwrap());
        let (s, data, bytes) = files[0].clone();
        let before = metered.counts();
        let theirs = Arc::new(Mutex::new(None));
        // When this one is about to fetch, the other process asks for the same file; it is
        // given time to finish (what it does without the lock: fetch the file itself).
        let act = {
            let (lib, theirs) = (lib.clone(), theirs.clone());
            move || {
                let (done, finished) = std::sync::mpsc::channel();
                let t = std::thread::spawn(move || {
                    let f = other.acquire(&lib, s, &data).map(read);
                    let _ = done.send(());
                    f
                });
                let _ = finished.recv_timeout(std::time::Duration::from_millis(300));
                *theirs.lock().unwrap() = Some(t);
            }
        };
        let f = with_step(Step::Fetching, act, || mine.acquire(&lib, s, &data));
        assert_eq!(read(f.unwrap()), bytes);
        let t = theirs
            .lock()
            .unwrap()
            .take()
            .expect("the other process asked");
        assert_eq!(t.join().unwrap().unwrap(), bytes);
        let after = metered.counts();
        assert_eq!(
            (after.gets + after.ranges) - (before.gets + before.ranges),
            1,
            "the file's object is read from the library once"
        );
    }

    #[test]
    fn a_restarted_cache_re_verifies_and_refetches_a_bad_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, files) = setup(tmp.path(), 1);
        let (s, data, bytes) = &files[0];
        let dir = tmp.path().join("cache");
        let cache = Cache::open(&dir, 1 << 20).unwrap();
        drop(cache.acquire(&lib, *s, data).unwrap());
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        std::fs::write(cache.path(s), &bad).unwrap();
        // The same process trusts what it verified itself...
        assert_eq!(read(cache.acquire(&lib, *s, data).unwrap()), bad);
        // ...a new one (a restart) checks the score and fetches the file again.
        let cache = Cache::open(&dir, 1 << 20).unwrap();
        assert_eq!(read(cache.acquire(&lib, *s, data).unwrap()), *bytes);
    }

    #[test]
    fn another_format_version_empties_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let cache = Cache::open(&dir, 1 << 20).unwrap();
        let stale = cache.path(&Score::of(b"x"));
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(dir.join("VERSION"), "spawngrid-snapfs-cache 0\n").unwrap();
        Cache::open(&dir, 1 << 20).unwrap();
        assert!(!stale.exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("VERSION")).unwrap().trim(),
            VERSION
        );
    }
}
