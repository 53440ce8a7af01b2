//! Garbage collection: delete what no name and no in-progress write can reach.
//!
//! The caller holds an exclusive [`crate::lease::Lease`] (so no write is in progress) and passes
//! the scores of every bound name. gc then:
//! 1. marks every object reachable from those roots: each snapshot and its parent chain, trees,
//!    chunk lists and blobs (with the walk in `reach` that verify shares);
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
//!
//! This is gc for a library on one machine (coordinated by lease files). A library shared by
//! a grid has a [`crate::coord::Ledger`]; there [`gc`] refuses, and [`grid::collect`] marks
//! and sweeps across runs, with the same plan and copy steps, while writers go on.

pub mod grid;

use crate::pack::{self, EncodedFrame, Frame, PackBuilder, PackEntry};
use crate::progress::Progress;
use crate::reach::mark;
use crate::store::pack_key;
use crate::{Error, Library, Result, Score};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;

/// Packs smaller than this are merged with other small packs.
pub const SMALL_PACK: u64 = 1 << 20;
/// Bytes an object costs beyond its stored bytes (its share of a frame header and its trailer
/// entry), for planning.
const RECORD_OVERHEAD: u64 = 36 + 54;

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
        use human::size as human;
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
/// The caller must hold an exclusive lease and pass the score of every bound name. Refused
/// for a library shared by a grid (one with a gc ledger): use [`grid::collect`] there.
pub fn gc(lib: &Library, roots: &[Score], progress: &dyn Progress) -> Result<GcReport> {
    if lib.coordinator().ledger().is_some() {
        return Err(Error::BadInput(format!(
            "the library at {} is shared by a grid: gc there marks and sweeps \
             (spawngrid lib gc on a data directory of the grid), never deletes at once",
            lib.backend().describe()
        )));
    }
    let packs_before = lib.packs();
    let objects_before = lib.object_count();
    progress.phase("marking live objects");
    let live = mark(lib, roots)?;
    progress.phase("planning");
    let plan = Plan::make(lib, &live, lib.packs())?;
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

/// Whether pack `name` (of `size` bytes) holds the copy the index reads of an object in
/// `live`, or a copy of one whose indexed copy is in a pack of `going` (being deleted); `None`
/// when its trailer is unreadable, so that cannot be told.
fn holds_live(
    lib: &Library,
    live: &HashSet<Score>,
    name: Score,
    size: u64,
    going: &HashSet<Score>,
) -> Result<Option<bool>> {
    let p = PackPlan::make(lib, live, name, size)?;
    if p.fate == Fate::Unlisted {
        return Ok(None);
    }
    let indexed_going = |e: &PackEntry| {
        live.contains(&e.score)
            && lib
                .locate(&e.score)
                .is_some_and(|l| going.contains(&l.pack))
    };
    Ok(Some(
        !p.live.is_empty() || p.entries.iter().any(indexed_going),
    ))
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
        // An object's share of its frame's stored bytes, in proportion to its plain bytes.
        let share = |e: &PackEntry| {
            u64::from(e.stored_len) * u64::from(e.plain_len) / u64::from(e.frame_len.max(1))
        };
        let live_bytes: u64 = live.iter().map(|e| share(e) + RECORD_OVERHEAD).sum();
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
    /// Decides the fate of each of `packs` (name, size) from its trailer and the live set.
    pub(crate) fn make(
        lib: &Library,
        live: &HashSet<Score>,
        packs: Vec<(Score, u64)>,
    ) -> Result<Plan> {
        let mut packs: Vec<PackPlan> = packs
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
        let mut mover = Mover::default();
        for p in rewrite {
            let data = lib.backend().get(&pack_key(&p.name))?;
            for e in &p.live {
                match mover.copy(lib, (&p.name, &data), e, &mut builder) {
                    Ok(()) => {}
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
        mover.finish(lib, &mut builder);
        if !builder.is_empty() {
            out.written.insert(write(lib, builder)?);
        }
        Ok(out)
    }

    /// Deletes dead and rewritten packs, except any just written (same bytes, same name) and
    /// any holding a copy of a live object that could not be copied.
    fn delete(&self, lib: &Library, copied: &Copied) -> Result<Deleted> {
        let (going, mut done) = self.going(copied);
        for (name, fate) in going {
            lib.backend().delete(&pack_key(&name))?;
            match fate {
                Fate::Delete => done.dead += 1,
                _ => done.rewritten += 1,
            }
        }
        Ok(done)
    }

    /// The dead and rewritten packs that may go (with their fate), and the kept damaged ones:
    /// not a pack just written (same bytes, same name), nor one holding a copy of a live object
    /// that could not be copied.
    fn going(&self, copied: &Copied) -> (Vec<(Score, Fate)>, Deleted) {
        let mut done = Deleted {
            dead: 0,
            rewritten: 0,
            kept: self.of(Fate::Unlisted).map(|p| p.name).collect(),
        };
        let mut going = Vec::new();
        for p in self.of(Fate::Delete).chain(self.of(Fate::Rewrite)) {
            if copied.written.contains(&p.name) {
                continue;
            }
            if p.entries.iter().any(|e| copied.failed.contains(&e.score)) {
                done.kept.push(p.name);
                continue;
            }
            going.push((p.name, p.fate));
        }
        done.kept.sort();
        (going, done)
    }

    fn of(&self, fate: Fate) -> impl Iterator<Item = &PackPlan> {
        self.packs.iter().filter(move |p| p.fate == fate)
    }
}

/// Moves live objects into a new pack: an object alone in its frame is copied as stored; an
/// object of a shared frame is decoded (each frame once, as a pack's live objects come in frame
/// order) and gathered with the other small objects into new shared frames.
#[derive(Default)]
struct Mover {
    /// The last shared frame decoded: its pack and offset, its plain bytes.
    decoded: Option<((Score, u32), Vec<u8>)>,
    frame: Frame,
}

impl Mover {
    /// Copies `e` of `pack` (name, bytes) into `b`, after checking it against its score.
    fn copy(
        &mut self,
        lib: &Library,
        (name, data): (&Score, &[u8]),
        e: &PackEntry,
        b: &mut PackBuilder,
    ) -> Result<()> {
        let start = e.offset as usize;
        let stored = data
            .get(start..start + e.stored_len as usize)
            .ok_or_else(|| Error::corrupt(format!("object {}", e.score), "record out of bounds"))?;
        if e.whole_frame() {
            pack::decode_object(e, stored)?;
            b.add(&EncodedFrame::copied(e, stored));
            return Ok(());
        }
        let key = (*name, e.offset);
        if self.decoded.as_ref().is_none_or(|d| d.0 != key) {
            self.decoded = None;
            self.decoded = Some((key, pack::decode_frame(e, stored)?));
        }
        let frame = &self.decoded.as_ref().expect("just decoded").1;
        let plain = pack::object_from_frame(e, frame)?;
        self.frame.push(e.score, e.kind, &plain);
        if self.frame.len() >= lib.config().frame_target as usize {
            self.finish(lib, b);
        }
        Ok(())
    }

    /// Adds the gathered shared frame, if any, to `b`.
    fn finish(&mut self, lib: &Library, b: &mut PackBuilder) {
        let frame = std::mem::take(&mut self.frame);
        if !frame.is_empty() {
            b.add(&frame.encode(lib.config().zstd_level));
        }
    }
}

/// Writes a finished pack durably and points the index at it; returns its name.
fn write(lib: &Library, builder: PackBuilder) -> Result<Score> {
    let (name, data, entries) = builder.finish();
    lib.backend().put(&pack_key(&name), &data)?;
    lib.adopt_pack(name, data.len() as u64, &entries);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{self, check};
    use crate::progress::Silent;
    use crate::tree::{Content, Tree};
    use crate::Snapshot;

    /// On a grid's sweep, a condemned pack holding a live object counts as holding it when
    /// the index reads that object from a pack being deleted: both are condemned, so the index
    /// prefers neither, and deleting both loses the object.
    #[test]
    fn a_copy_counts_when_the_indexed_copy_is_going() {
        let (_dir, lib) = fixture::library();
        fixture::snapshot(&lib, 1, 4);
        let blob = fixture::blob_of(1, 4, 2);
        let first = lib.locate(&blob).unwrap().pack;
        let second = fixture::second_copy(&lib, &blob);
        lib.load_index([first, second].into()).unwrap();
        let indexed = lib.locate(&blob).unwrap().pack;
        let other = if indexed == first { second } else { first };
        let size = lib.packs().into_iter().find(|p| p.0 == other).unwrap().1;
        let live: HashSet<Score> = [blob].into();
        let none = HashSet::new();
        assert_eq!(
            holds_live(&lib, &live, other, size, &none).unwrap(),
            Some(false)
        );
        let going: HashSet<Score> = [indexed].into();
        assert_eq!(
            holds_live(&lib, &live, other, size, &going).unwrap(),
            Some(true),
            "the only copy left after the sweep would be deleted"
        );
    }

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
        let plan = Plan::make(&lib, &live, lib.packs()).unwrap();
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
        // A fresh process: this one may still hold the tree's frame, decoded before the damage.
        let lib = fixture::reopen(dir.path());
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
