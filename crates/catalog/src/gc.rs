//! What gc across a grid keeps in the catalog (schema version 6), and the bind that checks a
//! write's lease.
//!
//! `gc_packs(pack, state, since, fence)`: a pack gc *condemned* (a mark found nothing live in
//! it; `since` is the mark's time, `fence` a fence from the lease counter taken in the mark's
//! transaction, so larger than every lease taken before it), one a sweep is *sweeping* (claimed
//! for deletion; deleted from the library next), or one it *swept* (deleted; `since` and
//! `fence` are the deletion's, kept a while as a tombstone so writers never dedup into a pack a
//! lagging listing still shows). The algorithm and its argument are in the library's
//! `gc::grid`; this module only makes each step one transaction:
//! - [`Catalog::gc_view`]: drops expired leases, then reads the live leases, the bound names'
//!   scores and `gc_packs`, all at one instant;
//! - [`Catalog::condemn`], [`Catalog::claim`]: only while the caller's gc lease is live;
//! - [`Catalog::revive`]: a pack found live again is no longer condemned;
//! - [`Catalog::bind_leased`]: binds a saved snapshot's name only while the save's lease is
//!   live, and only if no pack the save wrote was swept after the save began.

use crate::engine::{Fault, Mode, Row};
use crate::grid::{lease_of, next_fence, Lease};
use crate::{check_name, check_owner, score_at, Catalog, Db, Error, Result};
pub use library::coord::{GcPack, PackState};
use library::Score;

/// What a gc run sees at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcView {
    /// The score of every bound name (sorted, without repeats).
    pub roots: Vec<Score>,
    /// The leases live at that instant, oldest first (expired ones were dropped).
    pub leases: Vec<Lease>,
    /// Every row of `gc_packs`.
    pub packs: Vec<GcPack>,
    /// That instant, seconds since the epoch, by the catalog's clock (the database's).
    pub now: i64,
}

fn gc_pack_of(r: &Row) -> Result<GcPack, Fault> {
    let state = match r.text(1)?.as_str() {
        "condemned" => PackState::Condemned,
        "sweeping" => PackState::Sweeping,
        "swept" => PackState::Swept,
        other => return Err(Fault::Corrupt(format!("a gc pack in state {other:?}"))),
    };
    Ok(GcPack {
        pack: score_at(r, 0)?,
        state,
        since: r.int(2)?,
        fence: r.int(3)?,
    })
}

const GC_PACKS: &str = "SELECT pack, state, since, fence FROM gc_packs ORDER BY pack";

/// The fence of live lease `id`, or [`Error::LeaseLost`].
fn live_fence(db: &mut Db<'_>, what: &'static str, id: &str) -> Result<i64> {
    let fence = db.rows(
        what,
        "SELECT fence FROM leases WHERE id = ?1 AND expires > unixepoch()",
        &[id.into()],
        |r| r.int(0),
    )?;
    fence
        .first()
        .copied()
        .ok_or_else(|| Error::LeaseLost { id: id.into() })
}

impl Catalog {
    /// Binds `name` of `owner` to `score`, saved under lease `lease`, in one transaction that
    /// checks the lease is live (else [`Error::LeaseLost`]) and, for each pack in `packs` (those
    /// the save wrote), that no sweep is deleting it or deleted it after the lease was taken
    /// (else [`Error::PackSwept`]); a condemned one of them is revived. Nothing is bound on
    /// any failure.
    pub fn bind_leased(
        &self,
        owner: &str,
        name: &str,
        score: Score,
        lease: &str,
        packs: &[Score],
    ) -> Result<()> {
        check_owner(owner)?;
        check_name(name)?;
        let what = "binding a saved name";
        self.db(Mode::Serial, |db| {
            let fence = live_fence(db, what, lease)?;
            for pack in packs {
                let hex = pack.to_hex();
                let row = db.rows(
                    what,
                    "SELECT pack, state, since, fence FROM gc_packs WHERE pack = ?1",
                    &[(&hex).into()],
                    gc_pack_of,
                )?;
                let Some(row) = row.first() else { continue };
                if row.state == PackState::Sweeping
                    || (row.state == PackState::Swept && row.fence > fence)
                {
                    return Err(Error::PackSwept { pack: hex });
                }
                db.execute(what, "DELETE FROM gc_packs WHERE pack = ?1", &[hex.into()])?;
            }
            db.insert_name(what, owner, name, score)
        })
    }

    /// Drops expired leases, then reads the live leases, the bound names' scores and every
    /// row of `gc_packs`, in one transaction.
    pub fn gc_view(&self) -> Result<GcView> {
        let what = "reading what gc needs";
        self.db(Mode::Serial, |db| {
            let now = db.now(what)?;
            db.execute(
                what,
                "DELETE FROM leases WHERE expires <= ?1",
                &[now.into()],
            )?;
            let leases = db.rows(
                what,
                "SELECT id, kind, holder, taken, expires, fence FROM leases ORDER BY fence",
                &[],
                lease_of,
            )?;
            let roots = db.rows(
                what,
                "SELECT score FROM names WHERE retired IS NULL \
                 UNION SELECT score FROM invites ORDER BY score",
                &[],
                |r| score_at(r, 0),
            )?;
            let packs = db.rows(what, GC_PACKS, &[], gc_pack_of)?;
            Ok(GcView {
                roots,
                leases,
                packs,
                now,
            })
        })
    }

    /// Every row of `gc_packs`: what writers must not dedup into, and readers should read
    /// from another copy if there is one.
    pub fn gc_packs(&self) -> Result<Vec<GcPack>> {
        self.rows("listing condemned packs", GC_PACKS, &[], gc_pack_of)
    }

    /// Condemns `packs` (those not in `gc_packs` already) while gc lease `gc` is live; returns
    /// the fence they were condemned with.
    pub fn condemn(&self, gc: &str, packs: &[Score]) -> Result<i64> {
        let what = "condemning packs";
        self.db(Mode::Serial, |db| {
            live_fence(db, what, gc)?;
            let fence = next_fence(db, what)?;
            let now = db.now(what)?;
            for pack in packs {
                db.execute(
                    what,
                    "INSERT INTO gc_packs (pack, state, since, fence) VALUES (?1, 'condemned', ?2, ?3) \
                     ON CONFLICT (pack) DO NOTHING",
                    &[pack.to_hex().into(), now.into(), fence.into()],
                )?;
            }
            Ok(fence)
        })
    }

    /// Forgets what gc said of `packs` (they are live, or were written again) unless a sweep
    /// is deleting them; returns how many rows went.
    pub fn revive(&self, packs: &[Score]) -> Result<usize> {
        let what = "reviving packs";
        self.db(Mode::Transaction, |db| {
            let mut n = 0;
            for pack in packs {
                n += db.execute(
                    what,
                    "DELETE FROM gc_packs WHERE pack = ?1 AND state IN ('condemned', 'swept')",
                    &[pack.to_hex().into()],
                )?;
            }
            Ok(n as usize)
        })
    }

    /// Claims condemned packs for deletion while gc lease `gc` is live: each `(pack, fence)`
    /// still condemned with that fence becomes *sweeping*; returns those that did.
    pub fn claim(&self, gc: &str, packs: &[(Score, i64)]) -> Result<Vec<Score>> {
        let what = "claiming packs to sweep";
        self.db(Mode::Serial, |db| {
            live_fence(db, what, gc)?;
            let mut claimed = Vec::new();
            for (pack, fence) in packs {
                let n = db.execute(
                    what,
                    "UPDATE gc_packs SET state = 'sweeping', since = unixepoch() \
                     WHERE pack = ?1 AND state = 'condemned' AND fence = ?2",
                    &[pack.to_hex().into(), (*fence).into()],
                )?;
                if n > 0 {
                    claimed.push(*pack);
                }
            }
            Ok(claimed)
        })
    }

    /// Records that sweeping `packs` were deleted: they become tombstones with a new fence.
    pub fn mark_swept(&self, packs: &[Score]) -> Result<()> {
        let what = "recording swept packs";
        self.db(Mode::Serial, |db| {
            let fence = next_fence(db, what)?;
            for pack in packs {
                db.execute(
                    what,
                    "UPDATE gc_packs SET state = 'swept', since = unixepoch(), fence = ?2 \
                     WHERE pack = ?1 AND state = 'sweeping'",
                    &[pack.to_hex().into(), fence.into()],
                )?;
            }
            Ok(())
        })
    }

    /// Forgets tombstones swept before `before` (seconds since the epoch by the catalog's
    /// clock: [`GcView::now`] less a grace) and before every live write (shared) lease was
    /// taken; returns how many.
    pub fn forget_swept(&self, before: i64) -> Result<usize> {
        let n = self.execute(
            "forgetting swept packs",
            "DELETE FROM gc_packs WHERE state = 'swept' AND since < ?1 AND fence < \
             COALESCE((SELECT MIN(fence) FROM leases WHERE expires > unixepoch() \
             AND kind = 'shared'), ?2)",
            &[before.into(), i64::MAX.into()],
        )?;
        Ok(n as usize)
    }
}
