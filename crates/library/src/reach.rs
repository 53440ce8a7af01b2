//! Reachability: the walk over the object graph below some snapshots that gc (to mark live
//! objects) and verify (to judge which snapshots are whole) share.

use crate::file::decode_chunks;
use crate::pack::ObjectKind;
use crate::snapshot::Snapshot;
use crate::tree::{Content, FileData, Tree};
use crate::{Error, Library, Result, Score};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Stack size of the threads that walk trees (one recursion per directory level).
const WALK_STACK: usize = 64 << 20;

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

/// Stores again, outside condemned packs, every object reachable from `base` that only
/// condemned packs hold (reading it from them while they exist); returns how many. A writer
/// that builds on `base` (a save's parent) calls this under its lease, so that everything it
/// references is in packs gc had not condemned when the lease was taken (see `gc::grid`).
pub(crate) fn revive(lib: &Library, base: &Score) -> Result<usize> {
    let source = ReviveSource {
        lib,
        stored: AtomicUsize::new(0),
    };
    let walk = Walk::new(&source);
    walk.roots(&[*base]);
    let (_, broken) = walk.finish();
    match broken.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(source.stored.into_inner()),
    }
}

/// Reads through the library's index and stores again what only condemned packs hold.
struct ReviveSource<'a> {
    lib: &'a Library,
    stored: AtomicUsize,
}

impl ReviveSource<'_> {
    fn keep(&self, score: &Score, kind: ObjectKind, plain: &[u8]) -> Result<()> {
        if !self.lib.contains(score) {
            self.lib.put_scored(kind, *score, plain)?;
            self.stored.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Source for ReviveSource<'_> {
    fn read(&self, score: &Score, kind: ObjectKind) -> Result<Vec<u8>> {
        let plain = self.lib.get_kind(score, kind)?;
        self.keep(score, kind, &plain)?;
        Ok(plain)
    }

    fn check_blob(&self, score: &Score) -> Result<()> {
        if self.lib.contains(score) {
            return Ok(());
        }
        let plain = self.lib.get_kind(score, ObjectKind::Blob)?;
        self.keep(score, ObjectKind::Blob, &plain)
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
