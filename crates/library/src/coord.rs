//! The coordination seam: who may write or collect at once, and what gc has condemned.
//!
//! A [`Library`](crate::Library) asks its [`Coordinator`] for leases and for the packs gc
//! condemned. The default, [`crate::lease::FileLeases`], keeps leases as files on the backend
//! and has gc delete at once under an exclusive lease: right for a library on one machine. A
//! library shared by a grid (on S3, which must never be used as a lock) gets a coordinator
//! backed by the catalog from the store crate (the library does not know the catalog); it also
//! offers a [`Ledger`], and then gc marks and sweeps across runs (`gc::grid`) instead.

use crate::backend::Backend;
use crate::lease::LeaseKind;
use crate::{Result, Score};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What a catalog lease is known by: its id, and its fence (larger than every earlier one's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseToken {
    /// The lease's id.
    pub id: String,
    /// The lease's fence.
    pub fence: i64,
}

/// A held lease; dropping it releases it (and stops its renewal).
pub struct Lease {
    kind: LeaseKind,
    token: Option<LeaseToken>,
    _held: Box<dyn Send + Sync>,
}

impl Lease {
    /// A lease of `kind`, known by `token` if the coordinator gives one; `held` releases it
    /// when dropped.
    pub fn new(
        kind: LeaseKind,
        token: Option<LeaseToken>,
        held: impl Send + Sync + 'static,
    ) -> Lease {
        Lease {
            kind,
            token,
            _held: Box::new(held),
        }
    }

    /// The kind of this lease.
    pub fn kind(&self) -> LeaseKind {
        self.kind
    }

    /// Its id and fence, for a catalog lease (a bind shows them); `None` for a lease file.
    pub fn token(&self) -> Option<&LeaseToken> {
        self.token.as_ref()
    }
}

/// Decides who may write or collect, and says which packs gc condemned.
pub trait Coordinator: Send + Sync {
    /// Takes a lease of `kind` on the library on `backend`, waiting up to `wait` for
    /// conflicting leases (calling `on_wait` once with a message naming the holder if it
    /// waits); fails with [`crate::Error::Locked`] when the wait runs out.
    fn lease(
        &self,
        backend: &Arc<dyn Backend>,
        kind: LeaseKind,
        wait: Duration,
        on_wait: &dyn Fn(&str),
    ) -> Result<Lease>;

    /// The packs gc condemned, is deleting, or deleted lately: writers never dedup into them,
    /// readers read another copy of an object if there is one.
    fn condemned(&self) -> Result<HashSet<Score>>;

    /// The gc ledger, when gc marks and sweeps across runs (a grid); `None` when gc deletes at
    /// once under an exclusive lease.
    fn ledger(&self) -> Option<&dyn Ledger>;
}

/// Where a pack is on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackState {
    /// A mark found nothing live in it; a later sweep may delete it.
    Condemned,
    /// A sweep claimed it and deletes it now.
    Sweeping,
    /// Deleted (a tombstone, forgotten after a while).
    Swept,
}

impl PackState {
    /// The word the ledger stores.
    pub fn as_str(self) -> &'static str {
        match self {
            PackState::Condemned => "condemned",
            PackState::Sweeping => "sweeping",
            PackState::Swept => "swept",
        }
    }
}

/// A pack in the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcPack {
    /// The pack's name.
    pub pack: Score,
    /// Condemned, sweeping or swept.
    pub state: PackState,
    /// When it entered that state, seconds since the epoch.
    pub since: i64,
    /// The fence of the step that put it in that state.
    pub fence: i64,
}

/// A live lease as gc sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveLease {
    /// Who holds it.
    pub holder: String,
    /// Its fence.
    pub fence: i64,
}

/// What a gc run sees at one instant.
#[derive(Clone, Debug, Default)]
pub struct GcView {
    /// The snapshot of every bound name.
    pub roots: Vec<Score>,
    /// The leases live at that instant (expired ones were dropped for good).
    pub leases: Vec<LiveLease>,
    /// Every pack in the ledger.
    pub packs: Vec<GcPack>,
    /// That instant, seconds since the epoch.
    pub now: i64,
}

/// The gc ledger of a grid: each call is one catalog transaction (see `gc::grid`).
pub trait Ledger: Send + Sync {
    /// Takes the one gc lease of the grid (renewed while held); fails naming its holder when
    /// another gc runs.
    fn begin(&self) -> Result<Lease>;
    /// Drops expired leases, then reads the live leases, the bound names' snapshots and the
    /// ledger's packs at one instant.
    fn view(&self) -> Result<GcView>;
    /// Condemns `packs` with a new fence while `gc` is live.
    fn condemn(&self, gc: &LeaseToken, packs: &[Score]) -> Result<()>;
    /// Forgets what the ledger says of `packs` unless they are being swept.
    fn revive(&self, packs: &[Score]) -> Result<()>;
    /// Claims condemned `(pack, fence)`s for deletion while `gc` is live; returns the claimed.
    fn claim(&self, gc: &LeaseToken, packs: &[(Score, i64)]) -> Result<Vec<Score>>;
    /// Records that claimed `packs` are deleted.
    fn swept(&self, packs: &[Score]) -> Result<()>;
    /// Forgets tombstones older than `before` (seconds since the epoch) and older than every
    /// live write lease; returns how many.
    fn forget(&self, before: i64) -> Result<usize>;
}
