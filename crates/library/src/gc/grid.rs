//! gc across a grid: mark in one run, sweep in a later one, while every node goes on writing.
//!
//! The library is shared by nodes (on S3, which is never a lock: Garage ignores conditional
//! PUTs and lists eventually); the catalog, through the library's [`Ledger`](crate::coord::Ledger), is the only
//! coordinator. Every lease, mark and sweep step draws a *fence* from one counter in the
//! catalog, so fences order them: a fence larger than another was drawn by a transaction that
//! came later.
//!
//! **Writers** (import, save) hold a shared lease `L` (fence `F_L`), renewed while they run and
//! expiring when their node dies, freezes or loses the catalog. After taking `L` a writer
//! re-reads the ledger and lists the packs ([`Library::refresh`]); it never dedups into a pack
//! the ledger names ([`Library::contains`]), and stores again whatever of its base snapshot only
//! such packs hold ([`Library::write_lease`]). So:
//!
//! > (W) everything a writer references is in a pack the ledger did not name when `L` was taken.
//!
//! Its name is bound by the catalog in one transaction that requires `L` to still be
//! in the catalog and unexpired, and refuses if a pack the writer wrote is being swept, or was
//! swept after `L` was taken (a pack's name is the hash of its bytes: a writer may write again
//! a pack gc condemned); a pack it wrote that is merely condemned is revived there.
//!
//! **A run** ([`collect`]) takes the one gc lease of the grid (a second gc is told who runs),
//! then reads in one transaction (the *view*): it drops expired leases for good (their holders
//! can never bind), and reads the live leases, every bound name and the ledger. It lists the
//! packs and marks what the names reach. Then:
//! 1. *sweep* each condemned pack `P` (fence `F_P`, condemned by an earlier run): if it holds
//!    the copy of a live object the index reads (or any copy of one the index reads from a
//!    pack being deleted: the index prefers no condemned pack to another), it is *revived* (a
//!    save that began before the mark and deduped into it has since bound its name); else if
//!    the grace has not passed it waits; else if a lease live in the view has a fence below `F_P` it is kept for that
//!    lease; else it is *claimed* (condemned → sweeping, in a transaction that requires the gc
//!    lease live and `P` still condemned with `F_P`), deleted, and recorded swept (a tombstone
//!    with a new fence, forgotten after the grace once no write lease is older);
//! 2. *mark* the other listed packs as local gc plans them: a dead pack is condemned; a partly
//!    dead one has its live objects copied into new packs first, then is condemned (not
//!    deleted: a reader elsewhere whose index still names it reads it until a later sweep, and
//!    when it is gone reloads its index, which prefers packs not condemned). Condemning draws
//!    its fence in its own transaction, after the listing.
//!
//! **Why nothing bound is lost.** Take a pack `P` a sweep deletes, and a name `N` whose
//! snapshot reaches an object `X` whose only copy is in `P`. `N` was not bound in the view
//! (else mark would have found `X` live in `P` and revived it). So `N` is bound after the view,
//! by a writer with lease `L` live then (a bind requires a live lease, and the view dropped
//! every expired one for good). If `F_L < F_P`, `L` was in the view and kept `P`. So
//! `F_L > F_P`: `L` was taken after `P` was condemned, and by (W) the writer references
//! nothing in `P` as the ledger then named it — unless it wrote `P` again itself, and then its
//! bind found `P` sweeping or swept after `L` and refused. A save that started before the mark
//! (`F_L < F_P`) and references `P` keeps it while `L` lives; it binds (and the next sweep
//! revives `P`) or its lease expires and its bind is refused: nothing bound dangles either way.
//! The condemn fence is drawn after the listing, so a writer of a pack the mark saw has a
//! smaller fence; a pack a lagging listing misses is not condemned at all. Tombstones keep
//! writers from deduping into a deleted pack that a lagging listing still shows.
//!
//! **Limits.** A gc frozen past its lease's expiry is fenced out of claiming and condemning,
//! but a delete it already had in flight is not (S3 has no conditional delete); it could
//! delete a pack that a later writer wrote again byte for byte. Lease expiry is judged by each
//! node's clock against the catalog's rows; the view's deletion of expired leases is what makes
//! expiry final.

use super::{holds_live, Plan};
use crate::coord::{GcPack, PackState};
use crate::progress::Progress;
use crate::reach::mark;
use crate::store::pack_key;
use crate::{Error, Library, Result, Score};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What a mark-and-sweep run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GridReport {
    /// Packs condemned by this run's mark (dead ones and rewritten ones).
    pub marked: usize,
    /// Of those, packs whose live objects were copied into new packs first.
    pub rewritten: usize,
    /// New packs written by the copies.
    pub packs_written: usize,
    /// Condemned packs deleted by this run's sweep.
    pub swept: usize,
    /// Their bytes.
    pub bytes_swept: u64,
    /// Condemned packs found live again (a write that began before their mark bound them).
    pub revived: usize,
    /// Condemned packs kept because a lease older than their condemnation is live.
    pub kept_because_lease: usize,
    /// Condemned packs still within the grace period.
    pub in_grace: usize,
    /// Packs kept because their trailer is unreadable (run verify).
    #[serde(serialize_with = "crate::stats::ser_scores")]
    pub damaged_packs_kept: Vec<Score>,
    /// Bytes of the packs listed at the start.
    pub bytes_before: u64,
    /// Bytes of the packs listed at the end.
    pub bytes_after: u64,
}

impl std::fmt::Display for GridReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use human::size as human;
        writeln!(
            f,
            "gc: {} -> {}; swept {} packs ({}), marked {} ({} rewritten into {} new)",
            human(self.bytes_before),
            human(self.bytes_after),
            self.swept,
            human(self.bytes_swept),
            self.marked,
            self.rewritten,
            self.packs_written
        )?;
        writeln!(
            f,
            "condemned packs: {} revived, {} kept for older leases, {} within the grace period",
            self.revived, self.kept_because_lease, self.in_grace
        )?;
        for p in &self.damaged_packs_kept {
            writeln!(f, "kept damaged pack {p} (run `spawngrid lib verify`)")?;
        }
        Ok(())
    }
}

/// Runs one mark-and-sweep pass on a library shared by a grid: sweeps what earlier runs
/// condemned at least `grace` ago and is still dead, then condemns what is dead now.
pub fn collect(lib: &Library, grace: Duration, progress: &dyn Progress) -> Result<GridReport> {
    let ledger = lib.coordinator().ledger().ok_or_else(|| {
        Error::BadInput(format!(
            "the library at {} is not shared by a grid (no gc ledger): use gc::gc",
            lib.backend().describe()
        ))
    })?;
    progress.phase("taking the gc lease");
    let gc = ledger.begin()?;
    let token = gc
        .token()
        .cloned()
        .ok_or_else(|| Error::Coordination("the gc ledger gave a lease without a fence".into()))?;
    progress.phase("reading names, leases and condemned packs");
    let view = ledger.view()?;
    let named: HashSet<Score> = view.packs.iter().map(|p| p.pack).collect();
    lib.load_index(named.clone())?;
    let listed: HashMap<Score, u64> = lib.packs().into_iter().collect();
    let mut report = GridReport {
        bytes_before: listed.values().sum(),
        ..GridReport::default()
    };
    progress.phase("marking live objects");
    let live = mark(lib, &view.roots)?;

    progress.phase("sweeping condemned packs");
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let mut revive = Vec::new();
    let mut claim = Vec::new();
    let mut again = Vec::new();
    // Packs being deleted: the index prefers none of the ledger's packs to another, so a live
    // object's indexed copy may be in one of these while a condemned pack holds it too.
    let going: HashSet<Score> = view
        .packs
        .iter()
        .filter(|p| p.state != PackState::Condemned)
        .map(|p| p.pack)
        .collect();
    for p in &view.packs {
        match p.state {
            PackState::Condemned => {}
            // A sweep that stopped between its claim and its delete: finish it.
            PackState::Sweeping => {
                again.push(p.pack);
                continue;
            }
            PackState::Swept => continue,
        }
        match fate(lib, &live, &listed, p, &going)? {
            None => report.damaged_packs_kept.push(p.pack),
            Some(true) => revive.push(p.pack),
            Some(false) if view.now.saturating_sub(p.since) < grace => report.in_grace += 1,
            Some(false) if view.leases.iter().any(|l| l.fence < p.fence) => {
                report.kept_because_lease += 1
            }
            Some(false) => claim.push((p.pack, p.fence)),
        }
    }
    ledger.revive(&revive)?;
    report.revived = revive.len();
    let mut doomed = ledger.claim(&token, &claim)?;
    doomed.extend(again);
    for p in &doomed {
        lib.backend().delete(&pack_key(p))?;
        report.bytes_swept += listed.get(p).copied().unwrap_or(0);
    }
    ledger.swept(&doomed)?;
    report.swept = doomed.len();
    ledger.forget(view.now.saturating_sub(grace))?;

    progress.phase("planning");
    let fresh: Vec<(Score, u64)> = listed
        .iter()
        .filter(|(n, _)| !named.contains(n))
        .map(|(n, s)| (*n, *s))
        .collect();
    let plan = Plan::make(lib, &live, fresh)?;
    progress.phase("copying live objects");
    let copied = plan.copy(lib, progress)?;
    let written: Vec<Score> = copied.written.iter().copied().collect();
    ledger.revive(&written)?;
    let (going, kept) = plan.going(&copied);
    progress.phase("condemning dead packs");
    let condemn: Vec<Score> = going.iter().map(|(n, _)| *n).collect();
    if !condemn.is_empty() {
        ledger.condemn(&token, &condemn)?;
    }
    report.marked = going.len();
    report.rewritten = going
        .iter()
        .filter(|(_, f)| *f != super::Fate::Delete)
        .count();
    report.packs_written = written.len();
    report.damaged_packs_kept.extend(kept.kept);
    report.damaged_packs_kept.sort();
    report.bytes_after = lib.packed_bytes()?;
    lib.reload_index()?;
    drop(gc);
    Ok(report)
}

/// Whether condemned pack `p` holds a live object's copy (is reachable again): the one the
/// index reads, or any when the index reads it from a pack of `going`; `None` when its trailer
/// cannot be read. A pack no longer listed holds nothing.
fn fate(
    lib: &Library,
    live: &HashSet<Score>,
    listed: &HashMap<Score, u64>,
    p: &GcPack,
    going: &HashSet<Score>,
) -> Result<Option<bool>> {
    match listed.get(&p.pack) {
        Some(size) => holds_live(lib, live, p.pack, *size, going),
        None => Ok(Some(false)),
    }
}
