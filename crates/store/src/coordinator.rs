//! The catalog as the library's coordinator on a grid: leases with expiry, renewal and fences
//! in the catalog's `leases` table, and the gc ledger in `gc_packs` (schema 6).
//!
//! A library on S3 must never be locked with files on S3 (Garage ignores conditional PUTs and
//! lists eventually), so [`crate::Store`] gives such a library (and any library whose catalog
//! is PostgreSQL) this coordinator instead of the library's lease files. Its catalog is opened
//! on first use, so a node reads its library even while PostgreSQL is away. The algorithm it
//! serves is the library's `gc::grid`.

use crate::Store;
use catalog::{Catalog, LeaseKind as CatKind};
use library::coord::{Coordinator, GcView, Lease, LeaseToken, Ledger, LiveLease};
use library::lease::LeaseKind;
use library::{Backend, Error, Library, Result, Score};
use std::collections::HashSet;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a catalog lease lasts unless renewed, by default (`[store] lease_secs`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Leases and the gc ledger in the catalog of `store`.
pub struct CatalogCoordinator {
    store: Store,
    ttl: Duration,
    catalog: OnceLock<Arc<Catalog>>,
}

/// A catalog error as the library reports it: one line, a held lease as [`Error::Locked`].
fn lib_error(e: catalog::Error) -> Error {
    match e {
        catalog::Error::LeaseHeld { .. } => Error::Locked(e.to_string()),
        e => Error::Coordination(e.to_string()),
    }
}

/// "KIND by pid N on HOST", for the `holder` column.
fn holder(what: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{what} by pid {} on {}", std::process::id(), host.trim())
}

impl CatalogCoordinator {
    /// The coordinator of `store`'s library, its leases lasting `ttl` unless renewed.
    pub fn new(store: Store, ttl: Duration) -> CatalogCoordinator {
        CatalogCoordinator {
            store,
            ttl,
            catalog: OnceLock::new(),
        }
    }

    fn catalog(&self) -> Result<Arc<Catalog>> {
        if let Some(c) = self.catalog.get() {
            return Ok(c.clone());
        }
        let opened = self
            .store
            .catalog()
            .map_err(|e| Error::Coordination(format!("{e:#}")))?;
        Ok(self.catalog.get_or_init(|| Arc::new(opened)).clone())
    }

    /// Takes a catalog lease of `kind` and starts renewing it.
    fn take(&self, kind: CatKind, lib_kind: LeaseKind, what: &str) -> Result<Lease> {
        let cat = self.catalog()?;
        let lease = cat
            .take_lease(kind, &holder(what), self.ttl)
            .map_err(lib_error)?;
        let token = LeaseToken {
            id: lease.id.clone(),
            fence: lease.fence,
        };
        let held = Renewed::start(cat, lease.id, self.ttl);
        Ok(Lease::new(lib_kind, Some(token), held))
    }
}

/// A catalog lease renewed every third of its life until dropped, then released.
struct Renewed {
    catalog: Arc<Catalog>,
    id: String,
    stop: Option<Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl Renewed {
    fn start(catalog: Arc<Catalog>, id: String, ttl: Duration) -> Renewed {
        let (stop, stopped) = mpsc::channel::<()>();
        let (cat, lease) = (catalog.clone(), id.clone());
        let every = (ttl / 3).max(Duration::from_millis(200));
        let renewer = std::thread::Builder::new()
            .name("lease-renew".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    match cat.renew_lease(&lease, ttl) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("lease {lease} expired; its write will not bind");
                            return;
                        }
                        Err(e) => tracing::warn!("renewing lease {lease}: {e}"),
                    }
                }
            })
            .ok();
        Renewed {
            catalog,
            id,
            stop: Some(stop),
            renewer,
        }
    }
}

impl Drop for Renewed {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if let Err(e) = self.catalog.release_lease(&self.id) {
            tracing::warn!("releasing lease {}: {e} (it expires by itself)", self.id);
        }
    }
}

impl Coordinator for CatalogCoordinator {
    fn lease(
        &self,
        backend: &Arc<dyn Backend>,
        kind: LeaseKind,
        wait: Duration,
        on_wait: &dyn Fn(&str),
    ) -> Result<Lease> {
        if kind == LeaseKind::Exclusive {
            return Err(Error::BadInput(format!(
                "the library at {} is shared by a grid: nothing takes it alone, and gc marks \
                 and sweeps (spawngrid lib gc)",
                backend.describe()
            )));
        }
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            match self.take(CatKind::Shared, kind, "write") {
                Err(Error::Locked(msg)) if Instant::now() < deadline => {
                    if !std::mem::replace(&mut told, true) {
                        on_wait(&msg);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    fn condemned(&self) -> Result<HashSet<Score>> {
        let rows = self.catalog()?.gc_packs().map_err(lib_error)?;
        Ok(rows.into_iter().map(|r| r.pack).collect())
    }

    fn ledger(&self) -> Option<&dyn Ledger> {
        Some(self)
    }
}

impl Ledger for CatalogCoordinator {
    fn begin(&self) -> Result<Lease> {
        self.take(CatKind::Gc, LeaseKind::Exclusive, "gc")
    }

    fn view(&self) -> Result<GcView> {
        let v = self.catalog()?.gc_view().map_err(lib_error)?;
        Ok(GcView {
            roots: v.roots,
            leases: v
                .leases
                .into_iter()
                .filter(|l| l.kind == CatKind::Shared)
                .map(|l| LiveLease {
                    holder: l.holder,
                    fence: l.fence,
                })
                .collect(),
            packs: v.packs,
            now: v.now,
        })
    }

    fn condemn(&self, gc: &LeaseToken, packs: &[Score]) -> Result<()> {
        self.catalog()?.condemn(&gc.id, packs).map_err(lib_error)?;
        Ok(())
    }

    fn revive(&self, packs: &[Score]) -> Result<()> {
        self.catalog()?.revive(packs).map_err(lib_error)?;
        Ok(())
    }

    fn claim(&self, gc: &LeaseToken, packs: &[(Score, i64)]) -> Result<Vec<Score>> {
        self.catalog()?.claim(&gc.id, packs).map_err(lib_error)
    }

    fn swept(&self, packs: &[Score]) -> Result<()> {
        self.catalog()?.mark_swept(packs).map_err(lib_error)
    }

    fn forget(&self, before: i64) -> Result<usize> {
        self.catalog()?.forget_swept(before).map_err(lib_error)
    }
}

/// Binds `owner`'s `name` to `score`, which `lib` wrote under `lease`: for a catalog lease,
/// in one transaction that checks the lease is live and no pack the write stored was swept
/// ([`Catalog::bind_leased`]); for a lease file, a plain bind.
pub fn bind_written(
    cat: &Catalog,
    lib: &Library,
    lease: &Lease,
    owner: &str,
    name: &str,
    score: Score,
) -> catalog::Result<()> {
    match lease.token() {
        Some(t) => cat.bind_leased(owner, name, score, &t.id, &lib.written_packs()),
        None => cat.bind(owner, name, score),
    }
}
