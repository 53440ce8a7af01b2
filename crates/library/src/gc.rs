//! Garbage collection: delete what no name and no in-progress write can reach.
//!
//! The caller holds an exclusive [`crate::lease::Lease`] (so no write is in progress) and passes
//! the scores of every bound name. gc then:
//! 1. marks every object reachable from those roots: each snapshot and its parent chain, trees,
//!    chunk lists and blobs (with the `Walk` that verify shares);
//! 2. plans each pack's fate from its trailer alone: all live → keep, none live → delete,
//!    partly live with more than a quarter dead → rewrite; small packs (see [`SMALL_PACK`])
//!    are merged when there are several. An object stored twice is live only in the pack the
//!    index reads it from, so duplicates left by a crash are reclaimed too;
//! 3. copies the live objects of packs to rewrite into new packs (checking each object's score
//!    on the way) and writes them durably;
//! 4. only then deletes the old packs, and reloads the index.
//!
//! A crash at any point leaves every live object readable: until step 4 all old packs exist,
//! and a new pack is complete or absent. A pack gc cannot list (damaged trailer), or that holds
//! a live object whose copy fails its check, is never deleted; verify reports those.

use crate::file::decode_chunks;
use crate::pack::{ObjectKind, PackBuilder, PackEntry};
use crate::progress::Progress;
use crate::snapshot::Snapshot;
use crate::store::pack_key;
use crate::tree::{Content, FileData, Tree};
use crate::{Error, Library, Result, Score};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Packs smaller than this are merged with other small packs.
pub const SMALL_PACK: u64 = 1 << 20;
/// Stack size of the threads that walk trees (one recursion per directory level).
const WALK_STACK: usize = 64 << 20;
/// Bytes a record costs beyond its stored bytes (header and trailer entry), for planning.
const RECORD_OVERHEAD: u64 = 42 + 46;

/// What a gc run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Packs before the run.
    pub packs_before: usize,
    /// Packs deleted because nothing in them was live.
    pub packs_deleted: usize,
    /// Packs whose live objects were copied into new packs, then deleted.
    pub packs_rewritten: usize,
    /// New packs written.
    pub packs_written: usize,
    /// Packs kept although they should have gone, because they are damaged (run verify).
    #[serde(serialize_with = "crate::stats::ser_scores")]
    pub damaged_packs_kept: Vec<Score>,
    /// Stored bytes before.
    pub bytes_before: u64,
    /// Stored bytes after.
    pub bytes_after: u64,
    /// Live objects (reachable from the roots and stored).
    pub objects_kept: usize,
    /// Objects removed.
    pub objects_removed: usize,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::stats::human;
        writeln!(
            f,
            "gc: {} -> {} ({} freed); {} objects kept, {} removed",
            human(self.bytes_before),
            human(self.bytes_after),
            human(self.bytes_before.saturating_sub(self.bytes_after)),
            self.objects_kept,
            self.objects_removed
        )?;
        writeln!(
            f,
            "packs: {} before, {} deleted, {} rewritten into {} new",
            self.packs_before, self.packs_deleted, self.packs_rewritten, self.packs_written
        )?;
        for p in &self.damaged_packs_kept {
            writeln!(f, "kept damaged pack {p} (run `spawngrid lib verify`)")?;
        }
        Ok(())
    }
}

/// Collects garbage: keeps everything reachable from `roots`, deletes the rest.
///
/// The caller must hold an exclusive lease and pass the score of every bound name.
pub fn gc(lib: &Library, roots: &[Score], progress: &dyn Progress) -> Result<GcReport> {
    let packs_before = lib.packs();
    let objects_before = lib.object_count();
    progress.phase("marking live objects");
    let live = mark(lib, roots)?;
    progress.phase("planning");
    let plan = Plan::make(lib, &live)?;
    progress.phase("copying live objects");
    let copied = plan.copy(lib, progress)?;
    progress.phase("deleting old packs");
    let deleted = plan.delete(lib, &copied)?;
    lib.reload_index()?;
    Ok(GcReport {
        packs_before: packs_before.len(),
        packs_deleted: deleted.dead,
        packs_rewritten: deleted.rewritten,
        packs_written: copied.written.len(),
        damaged_packs_kept: deleted.kept,
        bytes_before: packs_before.iter().map(|p| p.1).sum(),
        bytes_after: lib.packs().iter().map(|p| p.1).sum(),
        objects_kept: live.iter().filter(|s| lib.locate(s).is_some()).count(),
        objects_removed: objects_before.saturating_sub(lib.object_count()),
    })
}

/// Every object reachable from `roots`; fails if a snapshot, tree or chunk list among them
/// cannot be read, because what is below it would then look dead.
pub(crate) fn mark(lib: &Library, roots: &[Score]) -> Result<HashSet<Score>> {
    let source = IndexSource(lib);
    let walk = Walk::new(&source);
    walk.roots(roots);
    let (seen, broken) = walk.finish();
    match broken.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(seen.into_keys().collect()),
    }
}

/// Where a walk reads objects from.
pub(crate) trait Source: Sync {
    /// Reads a snapshot, tree or chunk list, checked against its score and kind.
    fn read(&self, score: &Score, kind: ObjectKind) -> Result<Vec<u8>>;
    /// Checks that a blob is available, without necessarily reading it.
    fn check_blob(&self, score: &Score) -> Result<()>;
}

/// Reads through the library's index; blobs are not read (gc only needs their scores).
struct IndexSource<'a>(&'a Library);

impl Source for IndexSource<'_> {
    fn read(&self, score: &Score, kind: ObjectKind) -> Result<Vec<u8>> {
        self.0.get_kind(score, kind)
    }

    fn check_blob(&self, _: &Score) -> Result<()> {
        Ok(())
    }
}

/// A walk over the object graph below some snapshots, visiting each object once.
///
/// For every object it records whether everything reachable from it could be read, so a
/// subtree shared by many snapshots is walked once and judged once.
pub(crate) struct Walk<'a> {
    source: &'a dyn Source,
    seen: Mutex<HashMap<Score, bool>>,
    broken: Mutex<Vec<(Score, Error)>>,
}

impl<'a> Walk<'a> {
    /// A walk reading from `source`.
    pub(crate) fn new(source: &'a dyn Source) -> Walk<'a> {
        Walk {
            source,
            seen: Mutex::default(),
            broken: Mutex::default(),
        }
    }

    /// Every object visited (with whether all below it was readable), and the objects that
    /// could not be read, each once.
    pub(crate) fn finish(self) -> (HashMap<Score, bool>, Vec<(Score, Error)>) {
        let mut broken = self.broken.into_inner().expect("walk lock");
        let mut once = HashSet::new();
        broken.retain(|(s, _)| once.insert(*s));
        (self.seen.into_inner().expect("walk lock"), broken)
    }

    fn memo(&self, score: &Score) -> Option<bool> {
        self.seen.lock().expect("walk lock").get(score).copied()
    }

    fn remember(&self, score: Score, good: bool) -> bool {
        self.seen.lock().expect("walk lock").insert(score, good);
        good
    }

    fn fail(&self, score: Score, e: Error) -> bool {
        self.broken.lock().expect("walk lock").push((score, e));
        false
    }

    /// Walks every root in parallel; returns, for each, whether all it reaches was readable.
    ///
    /// The walk recurses once per directory level, so it runs on threads with stacks deep
    /// enough for the deepest tree an import accepts.
    pub(crate) fn roots(&self, roots: &[Score]) -> Vec<bool> {
        let run = || roots.par_iter().map(|r| self.snapshot(*r)).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("walk-{i}"))
            .stack_size(WALK_STACK)
            .build();
        match pool {
            Ok(pool) => pool.install(run),
            Err(e) => {
                tracing::warn!("no thread pool for the walk ({e}); walking on the global one");
                run()
            }
        }
    }

    /// Walks a snapshot, its parent chain and everything below them; returns whether all of
    /// it could be read.
    fn snapshot(&self, score: Score) -> bool {
        let mut chain = Vec::new();
        let mut next = Some(score);
        let mut rest = true;
        while let Some(s) = next {
            if let Some(good) = self.memo(&s) {
                rest = good;
                break;
            }
            let read = self.source.read(&s, ObjectKind::Snapshot);
            let (good, parent) = match read.and_then(|b| Snapshot::decode(&b)) {
                Ok(snap) => (self.tree(snap.tree()), snap.parent),
                Err(e) => (self.fail(s, e), None),
            };
            chain.push((s, good));
            next = parent;
        }
        for (s, good) in chain.into_iter().rev() {
            rest = self.remember(s, good && rest);
        }
        rest
    }

    fn tree(&self, score: Score) -> bool {
        if let Some(good) = self.memo(&score) {
            return good;
        }
        let read = self.source.read(&score, ObjectKind::Tree);
        let good = match read.and_then(|b| Tree::decode(&b)) {
            Ok(tree) => tree
                .entries
                .par_iter()
                .map(|e| self.content(&e.content))
                .reduce(|| true, |a, b| a && b),
            Err(e) => self.fail(score, e),
        };
        self.remember(score, good)
    }

    fn content(&self, content: &Content) -> bool {
        match content {
            Content::Dir { tree, .. } => self.tree(*tree),
            Content::File {
                data: FileData::Blob(s),
                ..
            } => self.blob(*s),
            Content::File {
                data: FileData::Chunks(s),
                ..
            } => self.chunks(*s),
            _ => true,
        }
    }

    fn chunks(&self, score: Score) -> bool {
        if let Some(good) = self.memo(&score) {
            return good;
        }
        let read = self.source.read(&score, ObjectKind::ChunkList);
        let good = match read.and_then(|b| decode_chunks(&b)) {
            Ok(list) => list.iter().fold(true, |ok, (s, _)| self.blob(*s) && ok),
            Err(e) => self.fail(score, e),
        };
        self.remember(score, good)
    }

    fn blob(&self, score: Score) -> bool {
        if let Some(good) = self.memo(&score) {
            return good;
        }
        let good = match self.source.check_blob(&score) {
            Ok(()) => true,
            Err(e) => self.fail(score, e),
        };
        self.remember(score, good)
    }
}

/// What happens to one pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    /// Kept because its trailer is unreadable: gc cannot tell what it holds.
    Unlisted,
    Delete,
    Rewrite,
}

/// One pack as gc sees it.
struct PackPlan {
    name: Score,
    size: u64,
    /// Every record, from the trailer.
    entries: Vec<PackEntry>,
    /// The records that are the copy of a live object the index reads.
    live: Vec<PackEntry>,
    fate: Fate,
}

impl PackPlan {
    fn make(lib: &Library, live: &HashSet<Score>, name: Score, size: u64) -> Result<PackPlan> {
        let Some(entries) = lib.read_trailer(&name, size)? else {
            let (entries, live) = (Vec::new(), Vec::new());
            let fate = Fate::Unlisted;
            return Ok(PackPlan {
                name,
                size,
                entries,
                live,
                fate,
            });
        };
        let home = |e: &&PackEntry| lib.locate(&e.score).is_some_and(|l| l.pack == name);
        let live: Vec<PackEntry> = entries
            .iter()
            .filter(|e| live.contains(&e.score))
            .filter(home)
            .copied()
            .collect();
        let live_bytes: u64 = live
            .iter()
            .map(|e| u64::from(e.stored_len) + RECORD_OVERHEAD)
            .sum();
        let fate = match () {
            _ if live.is_empty() => Fate::Delete,
            _ if size.saturating_sub(live_bytes) * 4 > size => Fate::Rewrite,
            _ => Fate::Keep,
        };
        Ok(PackPlan {
            name,
            size,
            entries,
            live,
            fate,
        })
    }

    /// Whether this pack is kept but small enough to merge: under [`SMALL_PACK`] and under
    /// half the library's pack size (so the full packs gc writes are never small).
    fn small(&self, lib: &Library) -> bool {
        let limit = SMALL_PACK.min(u64::from(lib.config().pack_target) / 2);
        self.fate == Fate::Keep && self.size < limit
    }
}

/// The fate of every pack.
pub(crate) struct Plan {
    packs: Vec<PackPlan>,
}

/// What the copy step wrote, and which live objects it could not copy.
pub(crate) struct Copied {
    written: HashSet<Score>,
    failed: HashSet<Score>,
}

/// What the delete step did.
struct Deleted {
    dead: usize,
    rewritten: usize,
    kept: Vec<Score>,
}

impl Plan {
    /// Decides each pack's fate from its trailer and the live set.
    pub(crate) fn make(lib: &Library, live: &HashSet<Score>) -> Result<Plan> {
        let mut packs: Vec<PackPlan> = lib
            .packs()
            .into_par_iter()
            .map(|(name, size)| PackPlan::make(lib, live, name, size))
            .collect::<Result<_>>()?;
        let small = packs.iter().filter(|p| p.small(lib)).count();
        let rewrites = packs.iter().any(|p| p.fate == Fate::Rewrite);
        if small >= 2 || (small == 1 && rewrites) {
            for p in packs.iter_mut().filter(|p| p.small(lib)) {
                p.fate = Fate::Rewrite;
            }
        }
        Ok(Plan { packs })
    }

    /// Copies the live objects of packs to rewrite into new, durable packs.
    pub(crate) fn copy(&self, lib: &Library, progress: &dyn Progress) -> Result<Copied> {
        let mut out = Copied {
            written: HashSet::new(),
            failed: HashSet::new(),
        };
        let rewrite: Vec<&PackPlan> = self.of(Fate::Rewrite).collect();
        progress.total(rewrite.iter().map(|p| p.size).sum());
        let mut builder = PackBuilder::default();
        for p in rewrite {
            let data = lib.backend().get(&pack_key(&p.name))?;
            for e in &p.live {
                match copy_record(&data, e) {
                    Ok(stored) => add_record(&mut builder, e, stored),
                    Err(err) => {
                        tracing::error!("gc: live object {} in pack {}: {err}", e.score, p.name);
                        out.failed.insert(e.score);
                    }
                }
                if builder.len() >= lib.config().pack_target as usize {
                    out.written
                        .insert(write(lib, std::mem::take(&mut builder))?);
                }
            }
            progress.bytes(p.size);
        }
        if !builder.is_empty() {
            out.written.insert(write(lib, builder)?);
        }
        Ok(out)
    }

    /// Deletes dead and rewritten packs, except any just written (same bytes, same name) and
    /// any holding a copy of a live object that could not be copied.
    fn delete(&self, lib: &Library, copied: &Copied) -> Result<Deleted> {
        let mut done = Deleted {
            dead: 0,
            rewritten: 0,
            kept: self.of(Fate::Unlisted).map(|p| p.name).collect(),
        };
        for p in self.of(Fate::Delete).chain(self.of(Fate::Rewrite)) {
            if copied.written.contains(&p.name) {
                continue;
            }
            if p.entries.iter().any(|e| copied.failed.contains(&e.score)) {
                done.kept.push(p.name);
                continue;
            }
            lib.backend().delete(&pack_key(&p.name))?;
            match p.fate {
                Fate::Delete => done.dead += 1,
                _ => done.rewritten += 1,
            }
        }
        done.kept.sort();
        Ok(done)
    }

    fn of(&self, fate: Fate) -> impl Iterator<Item = &PackPlan> {
        self.packs.iter().filter(move |p| p.fate == fate)
    }
}

/// The stored bytes of record `e` in pack `data`, after checking they decode to its score.
fn copy_record<'d>(data: &'d [u8], e: &PackEntry) -> Result<&'d [u8]> {
    let start = e.offset as usize;
    let stored = data
        .get(start..start + e.stored_len as usize)
        .ok_or_else(|| Error::corrupt(format!("object {}", e.score), "record out of bounds"))?;
    crate::pack::decode_object(e, stored)?;
    Ok(stored)
}

fn add_record(builder: &mut PackBuilder, e: &PackEntry, stored: &[u8]) {
    builder.add(e.score, e.kind, e.encoding, e.plain_len, stored);
}

/// Writes a finished pack durably and points the index at it; returns its name.
fn write(lib: &Library, builder: PackBuilder) -> Result<Score> {
    let (name, data, entries) = builder.finish();
    lib.backend().put(&pack_key(&name), &data)?;
    lib.adopt_pack(name, data.len() as u64, &entries);
    Ok(name)
}

/// Shared test helpers: small libraries with snapshots built from generated data.
#[cfg(test)]
pub(crate) mod fixture {
    use crate::build::{Dir, Node};
    use crate::file::{store_bytes, write_file};
    use crate::tree::{Content, Entry, Meta};
    use crate::{Config, Library, LocalBackend, Score, Snapshot};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    /// A library with small chunks (so tests see many) and one pack per commit.
    pub(crate) fn library() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            chunk_threshold: 16 << 10,
            chunk_min: 2 << 10,
            chunk_avg: 4 << 10,
            chunk_max: 8 << 10,
            pack_target: 4 << 20,
            ..Config::default()
        };
        let backend = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let lib = Library::init(backend, config).unwrap();
        (dir, lib)
    }

    /// The same library opened afresh, as another process would.
    pub(crate) fn reopen(dir: &Path) -> Library {
        Library::open(Arc::new(LocalBackend::open(dir).unwrap())).unwrap()
    }

    /// Incompressible bytes determined by `seed`.
    pub(crate) fn bytes(seed: &str, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// The files of sample `seed`: `n` files of its own (the first one chunked) and one
    /// file every sample shares.
    pub(crate) fn files(seed: u32, n: usize) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        out.insert("common/shared".into(), bytes("shared", 20 << 10));
        for i in 0..n {
            let len = if i == 0 { 40 << 10 } else { 3000 * (i + 1) };
            out.insert(format!("own/f{i}"), bytes(&format!("{seed}/{i}"), len));
        }
        out
    }

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            ..Meta::default()
        }
    }

    /// Stores the files and trees of sample `seed`; returns its root entry (not yet durable).
    pub(crate) fn tree(lib: &Library, seed: u32, n: usize) -> Entry {
        let mut root = Dir::new(meta(0o755));
        for (path, data) in files(seed, n) {
            let (dir, name) = path.split_once('/').unwrap();
            let sub = root
                .children
                .entry(dir.as_bytes().to_vec())
                .or_insert_with(|| Node::Dir(Dir::new(meta(0o755))));
            let Node::Dir(sub) = sub else { unreachable!() };
            let (size, data) = store_bytes(lib, &data).unwrap();
            let entry = Entry {
                name: name.as_bytes().to_vec(),
                meta: meta(0o644),
                content: Content::File { size, data },
                link: None,
            };
            sub.children
                .insert(entry.name.clone(), Node::Leaf { entry, group: None });
        }
        root.store(lib).unwrap()
    }

    /// Commits a snapshot of `root` (from [`tree`] of sample `seed`) with `parent`.
    pub(crate) fn commit(lib: &Library, root: Entry, seed: u32, parent: Option<Score>) -> Score {
        let snap = Snapshot {
            root,
            parent,
            author: "test".into(),
            time_ns: i64::from(seed),
            note: format!("sample {seed}"),
        };
        lib.commit(&snap).unwrap()
    }

    /// Stores sample `seed` as a snapshot with `parent` (in packs of its own); returns its score.
    pub(crate) fn snapshot_with(
        lib: &Library,
        seed: u32,
        n: usize,
        parent: Option<Score>,
    ) -> Score {
        commit(lib, tree(lib, seed, n), seed, parent)
    }

    /// Stores sample `seed` as a snapshot without a parent.
    pub(crate) fn snapshot(lib: &Library, seed: u32, n: usize) -> Score {
        snapshot_with(lib, seed, n, None)
    }

    /// Stores several samples so that their objects share one pack (all but the last
    /// snapshot object, which its commit writes alone).
    pub(crate) fn snapshots_in_one_pack(lib: &Library, seeds: &[u32], n: usize) -> Vec<Score> {
        let roots: Vec<Entry> = seeds.iter().map(|s| tree(lib, *s, n)).collect();
        roots
            .into_iter()
            .zip(seeds)
            .map(|(r, s)| commit(lib, r, *s, None))
            .collect()
    }

    /// Every file of a snapshot, read back through the library.
    pub(crate) fn read_files(
        lib: &Library,
        score: &Score,
    ) -> crate::Result<BTreeMap<String, Vec<u8>>> {
        let snap = lib.snapshot(score)?;
        let mut out = BTreeMap::new();
        read_dir(lib, &snap.tree(), "", &mut out)?;
        Ok(out)
    }

    fn read_dir(
        lib: &Library,
        tree: &Score,
        at: &str,
        out: &mut BTreeMap<String, Vec<u8>>,
    ) -> crate::Result<()> {
        for e in lib.tree(tree)?.entries {
            let path = format!("{at}{}", String::from_utf8_lossy(&e.name));
            match e.content {
                Content::Dir { tree, .. } => read_dir(lib, &tree, &format!("{path}/"), out)?,
                Content::File { data, .. } => {
                    let mut buf = Vec::new();
                    write_file(lib, &data, &mut buf, &path)?;
                    out.insert(path, buf);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Asserts that snapshot `score` holds exactly the files of sample `seed`.
    pub(crate) fn check(lib: &Library, score: &Score, seed: u32, n: usize) {
        assert_eq!(
            read_files(lib, score).unwrap(),
            files(seed, n),
            "sample {seed}"
        );
    }

    /// The file holding the pack that the index reads `score` from.
    pub(crate) fn pack_file(dir: &Path, lib: &Library, score: &Score) -> PathBuf {
        let loc = lib.locate(score).expect("object is stored");
        dir.join(crate::store::pack_key(&loc.pack))
    }

    /// Flips one bit in the middle of the stored bytes of `score`.
    pub(crate) fn damage(dir: &Path, lib: &Library, score: &Score) {
        let e = lib.locate(score).unwrap().entry;
        let path = pack_file(dir, lib, score);
        let mut data = std::fs::read(&path).unwrap();
        data[(e.offset + e.stored_len / 2) as usize] ^= 0x10;
        std::fs::write(&path, data).unwrap();
    }

    /// The score of a blob holding file `i` of sample `seed` (unchunked files only).
    pub(crate) fn blob_of(seed: u32, n: usize, i: usize) -> Score {
        Score::of(&files(seed, n)[&format!("own/f{i}")])
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{self, check};
    use super::*;
    use crate::progress::Silent;

    #[test]
    fn gc_reclaims_dropped_roots_and_keeps_the_rest() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 6);
        let b = fixture::snapshot(&lib, 2, 6);
        let c = fixture::snapshot_with(&lib, 3, 6, Some(a));
        let before: u64 = lib.packs().iter().map(|p| p.1).sum();
        let report = gc(&lib, &[c], &Silent).unwrap();
        assert!(report.bytes_after < before, "{report}");
        assert_eq!(report.bytes_before, before);
        assert!(report.objects_removed > 0 && report.damaged_packs_kept.is_empty());
        for (s, seed) in [(a, 1), (c, 3)] {
            check(&lib, &s, seed, 6);
            check(&fixture::reopen(dir.path()), &s, seed, 6);
        }
        assert!(!lib.contains(&b) && !lib.contains(&fixture::blob_of(2, 6, 3)));
        assert!(lib.contains(&fixture::blob_of(1, 6, 3)));
        let again = gc(&lib, &[c], &Silent).unwrap();
        assert_eq!(
            (again.packs_deleted, again.packs_rewritten),
            (0, 0),
            "{again}"
        );
        assert_eq!(again.objects_kept, report.objects_kept);
    }

    #[test]
    fn gc_with_no_roots_empties_the_library() {
        let (_dir, lib) = fixture::library();
        fixture::snapshot(&lib, 1, 3);
        let report = gc(&lib, &[], &Silent).unwrap();
        assert_eq!((report.bytes_after, lib.object_count()), (0, 0), "{report}");
    }

    #[test]
    fn crash_after_copy_before_delete_loses_nothing() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshots_in_one_pack(&lib, &[1, 2], 8)[0];
        let live = mark(&lib, &[a]).unwrap();
        let plan = Plan::make(&lib, &live).unwrap();
        let copied = plan.copy(&lib, &Silent).unwrap();
        assert!(!copied.written.is_empty());
        drop(lib); // the crash: old packs were never deleted
        let lib = fixture::reopen(dir.path());
        check(&lib, &a, 1, 8);
        let report = gc(&lib, &[a], &Silent).unwrap();
        check(&lib, &a, 1, 8);
        check(&fixture::reopen(dir.path()), &a, 1, 8);
        let again = gc(&lib, &[a], &Silent).unwrap();
        assert_eq!(
            (again.packs_deleted, again.packs_rewritten),
            (0, 0),
            "{report}\n{again}"
        );
    }

    /// A snapshot whose tree is `depth` directories deep, built without recursion.
    fn deep_snapshot(lib: &Library, depth: u64) -> Score {
        let dir = |tree, entries| crate::Entry {
            name: b"d".to_vec(),
            meta: crate::Meta {
                mode: 0o755,
                ..Default::default()
            },
            content: Content::Dir {
                tree,
                bytes: 0,
                entries,
            },
            link: None,
        };
        let mut top = lib.put_tree(&Tree::default()).unwrap();
        for level in 0..depth {
            top = lib
                .put_tree(&Tree {
                    entries: vec![dir(top, level)],
                })
                .unwrap();
        }
        let mut root = dir(top, depth);
        root.name.clear();
        let snap = Snapshot {
            root,
            parent: None,
            author: "t".into(),
            time_ns: 0,
            note: String::new(),
        };
        lib.commit(&snap).unwrap()
    }

    #[test]
    fn very_deep_trees_are_walked() {
        let (_dir, lib) = fixture::library();
        let deep = deep_snapshot(&lib, 1100);
        assert_eq!(mark(&lib, &[deep]).unwrap().len(), 1102);
        let roots = [("deep".to_string(), deep)];
        assert!(crate::verify::verify(&lib, &roots, &Silent)
            .unwrap()
            .is_clean());
    }

    #[test]
    fn gc_stops_when_a_live_tree_is_unreadable() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 3);
        fixture::snapshot(&lib, 2, 3);
        let tree = lib.snapshot(&a).unwrap().tree();
        fixture::damage(dir.path(), &lib, &tree);
        let packs = lib.packs();
        assert!(gc(&lib, &[a], &Silent).is_err());
        assert_eq!(lib.backend().list("packs/").unwrap().len(), packs.len());
    }

    #[test]
    fn gc_keeps_a_pack_whose_live_object_is_damaged() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshots_in_one_pack(&lib, &[1, 2], 3)[0];
        let blob = fixture::blob_of(1, 3, 2);
        let pack = lib.locate(&blob).unwrap().pack;
        fixture::damage(dir.path(), &lib, &blob);
        let report = gc(&lib, &[a], &Silent).unwrap();
        assert!(report.damaged_packs_kept.contains(&pack), "{report}");
        assert!(lib.backend().exists(&pack_key(&pack)).unwrap());
    }
}
