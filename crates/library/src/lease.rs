//! Leases: shared for writers, exclusive for gc, stored as backend files ([`FileLeases`], the
//! default [`Coordinator`] of a library on one machine; a grid's is the catalog's).
//!
//! The backend has no locking primitive (it may be an S3 bucket), so a lease is a file
//! `locks/<host>-<pid>-<nanos>-<random>.<kind>` holding `{host, pid, time}` as JSON. To take
//! a lease a process writes its file, then lists `locks/`; if it sees a conflicting live lease
//! (an exclusive lease conflicts with every other lease) it deletes its own file, waits with
//! jitter and tries again. Because every process writes before it lists, of two conflicting
//! processes at least the later one sees the other's file, so they never both proceed.
//!
//! A lease is stale, and is ignored and deleted, when it was taken on this host by a process
//! that no longer exists, or on another host more than [`STALE_AFTER`] ago. A held lease is
//! renewed (rewritten with a new time) every [`RENEW_EVERY`] so a long import or gc on one
//! node never looks stale to another. Host clocks are assumed to agree within minutes.

use crate::backend::Backend;
pub use crate::coord::Lease;
use crate::coord::{Coordinator, Ledger};
use crate::{Error, Library, Result, Score};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Prefix of lease files.
const LOCKS: &str = "locks/";
/// A lease from another host not renewed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lease is renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);
/// The first retry delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a lease allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    /// Writers (import, save): many at once, but never during gc.
    Shared,
    /// gc: alone.
    Exclusive,
}

impl LeaseKind {
    fn suffix(self) -> &'static str {
        match self {
            LeaseKind::Shared => "shared",
            LeaseKind::Exclusive => "exclusive",
        }
    }

    fn from_suffix(s: &str) -> Option<LeaseKind> {
        [LeaseKind::Shared, LeaseKind::Exclusive]
            .into_iter()
            .find(|k| k.suffix() == s)
    }

    fn conflicts_with(self, other: LeaseKind) -> bool {
        self == LeaseKind::Exclusive || other == LeaseKind::Exclusive
    }

    /// Who typically holds a lease of this kind, for messages.
    fn holder(self) -> &'static str {
        match self {
            LeaseKind::Shared => "a writer",
            LeaseKind::Exclusive => "gc",
        }
    }
}

/// A held lease file; dropping it removes the file (and stops its renewal).
struct FileLease {
    backend: Arc<dyn Backend>,
    key: Arc<Mutex<String>>,
    stop: Option<Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl FileLease {
    fn start(backend: Arc<dyn Backend>, kind: LeaseKind, key: String) -> FileLease {
        let key = Arc::new(Mutex::new(key));
        let (stop, stopped) = mpsc::channel::<()>();
        let (b, k) = (backend.clone(), key.clone());
        let renewer = std::thread::Builder::new()
            .name("lease-renew".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RENEW_EVERY) {
                    renew(&*b, kind, &k);
                }
            })
            .ok();
        FileLease {
            backend,
            key,
            stop: Some(stop),
            renewer,
        }
    }
}

impl Drop for FileLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let key = self.key.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.backend.delete(&key) {
            tracing::warn!("could not remove lease {key}: {e}");
        }
    }
}

/// Replaces the lease file by one with the current time; keeps the old one if that fails.
fn renew(backend: &dyn Backend, kind: LeaseKind, key: &Mutex<String>) {
    let fresh = new_key(kind);
    if let Err(e) = backend.put(&fresh, &body()) {
        tracing::warn!("could not renew lease: {e}");
        return;
    }
    let old = std::mem::replace(&mut *key.lock().unwrap_or_else(|e| e.into_inner()), fresh);
    let _ = backend.delete(&old);
}

/// Another process's lease, parsed from its file name.
#[derive(Debug)]
struct Holder {
    key: String,
    kind: LeaseKind,
    host: String,
    pid: u32,
    nanos: u128,
}

impl Holder {
    /// Parses `locks/<host>-<pid>-<nanos>-<random>.<kind>` (the host may contain `-`).
    fn parse(key: &str) -> Option<Holder> {
        let (stem, suffix) = key.strip_prefix(LOCKS)?.rsplit_once('.')?;
        let mut parts = stem.rsplitn(4, '-');
        let (_random, nanos, pid, host) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        Some(Holder {
            key: key.to_string(),
            kind: LeaseKind::from_suffix(suffix)?,
            host: host.to_string(),
            pid: pid.parse().ok()?,
            nanos: nanos.parse().ok()?,
        })
    }

    fn age(&self) -> Duration {
        let ns = now_nanos().saturating_sub(self.nanos);
        Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
    }

    fn is_stale(&self) -> bool {
        if self.host == host() {
            !Path::new(&format!("/proc/{}", self.pid)).exists()
        } else {
            self.age() > STALE_AFTER
        }
    }

    /// "gc (pid 123 on host x)".
    fn describe(&self) -> String {
        format!(
            "{} (pid {} on host {})",
            self.kind.holder(),
            self.pid,
            self.host
        )
    }
}

/// Leases as files on the library's backend; gc deletes at once under an exclusive lease.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileLeases;

impl Coordinator for FileLeases {
    fn lease(
        &self,
        backend: &Arc<dyn Backend>,
        kind: LeaseKind,
        wait: Duration,
        on_wait: &dyn Fn(&str),
    ) -> Result<Lease> {
        let deadline = Instant::now() + wait;
        let mut delay = FIRST_BACKOFF;
        let mut told = false;
        loop {
            let key = new_key(kind);
            backend.put(&key, &body())?;
            let conflict = first_conflict(&**backend, &key, kind);
            if conflict.is_err() {
                let _ = backend.delete(&key);
            }
            let Some(holder) = conflict? else {
                let held = FileLease::start(backend.clone(), kind, key);
                return Ok(Lease::new(kind, None, held));
            };
            backend.delete(&key)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(locked(&**backend, &holder));
            }
            if !std::mem::replace(&mut told, true) {
                on_wait(&format!("waiting for {} to finish", holder.describe()));
            }
            std::thread::sleep(jittered(delay).min(left));
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    fn condemned(&self) -> Result<HashSet<Score>> {
        Ok(HashSet::new())
    }

    fn ledger(&self) -> Option<&dyn Ledger> {
        None
    }
}

impl Library {
    /// Takes a lease of `kind` from the library's coordinator, waiting up to `wait` for
    /// conflicting leases to go away.
    ///
    /// `on_wait` is called once, with a message naming the holder, if the lease is not free at
    /// the first try. Fails with [`Error::Locked`] when `wait` runs out. Once the lease is held
    /// the index is reloaded (with what gc condemned), so the caller sees every pack other
    /// processes wrote, and [`Library::written_packs`] starts empty.
    pub fn lease(&self, kind: LeaseKind, wait: Duration, on_wait: &dyn Fn(&str)) -> Result<Lease> {
        let lease = self
            .coordinator()
            .lease(self.backend(), kind, wait, on_wait)?;
        self.refresh()?;
        Ok(lease)
    }

    /// Takes a shared lease for a write that builds on snapshot `base` (a save's parent, an
    /// import's `--parent`), if any: [`Library::lease`], then, when gc has condemned packs,
    /// stores again whatever of `base` only those hold, so the write references nothing gc
    /// condemned before its lease (see `gc::grid`).
    pub fn write_lease(
        &self,
        base: Option<&Score>,
        wait: Duration,
        on_wait: &dyn Fn(&str),
    ) -> Result<Lease> {
        let lease = self.lease(LeaseKind::Shared, wait, on_wait)?;
        if let Some(base) = base.filter(|_| self.any_condemned()) {
            let n = crate::reach::revive(self, base)?;
            if n > 0 {
                tracing::info!(%base, "stored again {n} objects of the base only condemned packs held");
            }
        }
        Ok(lease)
    }
}

fn locked(backend: &dyn Backend, holder: &Holder) -> Error {
    Error::Locked(format!(
        "library is locked by {}, taken {}s ago; try again later or, if that process is \
         gone, remove the stale lock {} from {}",
        holder.describe(),
        holder.age().as_secs(),
        holder.key,
        backend.describe()
    ))
}

/// The first live lease other than `ours` that conflicts with `kind`; deletes stale ones.
fn first_conflict(backend: &dyn Backend, ours: &str, kind: LeaseKind) -> Result<Option<Holder>> {
    for (key, _) in backend.list(LOCKS)? {
        if key == ours {
            continue;
        }
        let Some(holder) = Holder::parse(&key) else {
            tracing::warn!("ignoring unrecognised lease file {key}");
            continue;
        };
        if holder.is_stale() {
            tracing::warn!("removing stale lease of {}", holder.describe());
            let _ = backend.delete(&key);
        } else if kind.conflicts_with(holder.kind) {
            return Ok(Some(holder));
        }
    }
    Ok(None)
}

/// This host's name, reduced to characters safe in a backend key.
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
        let raw = if rc == 0 { &buf[..] } else { b"unknown" };
        let name = raw.split(|&b| b == 0).next().unwrap_or_default();
        let safe = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
        name.iter()
            .map(|b| if safe(b) { char::from(*b) } else { '_' })
            .collect()
    })
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// 64 unpredictable-enough bits: BLAKE3 of the pid, the time and a process-wide counter.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&now_nanos().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// `delay` scaled by a random factor in [0.5, 1.5), so retrying processes fall out of step.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + (random() % 1000) as f64 / 1000.0)
}

fn new_key(kind: LeaseKind) -> String {
    format!(
        "{LOCKS}{}-{}-{}-{:016x}.{}",
        host(),
        std::process::id(),
        now_nanos(),
        random(),
        kind.suffix()
    )
}

fn body() -> Vec<u8> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let v = serde_json::json!({"host": host(), "pid": std::process::id(), "time": secs});
    serde_json::to_vec(&v).expect("lease body serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use std::cell::Cell;

    const SHORT: Duration = Duration::from_millis(300);

    fn lock_files(lib: &Library) -> Vec<String> {
        let list = lib.backend().list(LOCKS).unwrap();
        list.into_iter().map(|(k, _)| k).collect()
    }

    fn plant(lib: &Library, host: &str, pid: u32, age: Duration, kind: LeaseKind) -> String {
        let nanos = now_nanos() - age.as_nanos();
        let key = format!("{LOCKS}{host}-{pid}-{nanos}-0.{}", kind.suffix());
        lib.backend().put(&key, b"{}").unwrap();
        key
    }

    #[test]
    fn shared_leases_coexist_and_clean_up() {
        let (_d, lib) = fixture::library();
        let a = lib
            .lease(LeaseKind::Shared, SHORT, &|_| panic!("no wait"))
            .unwrap();
        let b = lib
            .lease(LeaseKind::Shared, SHORT, &|_| panic!("no wait"))
            .unwrap();
        assert_eq!(lock_files(&lib).len(), 2);
        assert_eq!((a.kind(), b.kind()), (LeaseKind::Shared, LeaseKind::Shared));
        drop((a, b));
        assert!(lock_files(&lib).is_empty());
    }

    #[test]
    fn gc_waits_for_a_writer_then_proceeds() {
        let (_d, lib) = fixture::library();
        let root = fixture::snapshot(&lib, 1, 3);
        let (taken_tx, taken) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let lib = &lib;
            s.spawn(move || {
                let lease = lib.lease(LeaseKind::Shared, SHORT, &|_| {}).unwrap();
                taken_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                drop(lease);
            });
            taken.recv().unwrap();
            let calls = Cell::new(0);
            let msg = Mutex::new(String::new());
            let err = lib.lease(LeaseKind::Exclusive, SHORT, &|m| {
                calls.set(calls.get() + 1);
                *msg.lock().unwrap() = m.to_string();
            });
            let err = err.err().expect("gc must wait for the writer");
            assert!(matches!(err, Error::Locked(_)), "{err}");
            assert!(err.to_string().contains("try again later"), "{err}");
            assert_eq!(calls.get(), 1);
            let pid = std::process::id();
            assert!(msg
                .lock()
                .unwrap()
                .contains(&format!("a writer (pid {pid} on host")));
            release.send(()).unwrap();
        });
        let lease = lib.lease(LeaseKind::Exclusive, SHORT, &|_| {}).unwrap();
        let report = crate::gc::gc(&lib, &[root], &crate::progress::Silent).unwrap();
        assert!(report.objects_kept > 0);
        assert!(lib
            .lease(LeaseKind::Shared, Duration::ZERO, &|_| {})
            .is_err());
        drop(lease);
        fixture::check(&lib, &root, 1, 3);
    }

    #[test]
    fn stale_leases_are_ignored_and_removed() {
        let (_d, lib) = fixture::library();
        let dead = plant(
            &lib,
            host(),
            0x7fff_fff0,
            Duration::ZERO,
            LeaseKind::Exclusive,
        );
        let old = plant(&lib, "elsewhere", 1, STALE_AFTER * 2, LeaseKind::Shared);
        let lease = lib.lease(LeaseKind::Exclusive, SHORT, &|m| panic!("waited: {m}"));
        let keys = lock_files(&lib);
        assert!(!keys.contains(&dead) && !keys.contains(&old), "{keys:?}");
        assert_eq!(keys.len(), 1);
        drop(lease.unwrap());
    }

    #[test]
    fn a_fresh_lease_on_another_host_is_respected() {
        let (_d, lib) = fixture::library();
        plant(
            &lib,
            "other-node.example",
            42,
            Duration::from_secs(60),
            LeaseKind::Exclusive,
        );
        let err = lib.lease(LeaseKind::Shared, SHORT, &|_| {}).err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("gc (pid 42 on host other-node.example)"),
            "{msg}"
        );
    }

    #[test]
    fn renewal_replaces_the_file() {
        let (_d, lib) = fixture::library();
        let key = new_key(LeaseKind::Shared);
        lib.backend().put(&key, &body()).unwrap();
        let lease = FileLease::start(lib.backend().clone(), LeaseKind::Shared, key);
        let before = lock_files(&lib);
        renew(&**lib.backend(), LeaseKind::Shared, &lease.key);
        let after = lock_files(&lib);
        assert_eq!(after.len(), 1);
        assert_ne!(before, after);
        drop(lease);
        assert!(lock_files(&lib).is_empty());
    }

    #[test]
    fn holder_names_parse() {
        let h = Holder::parse("locks/my-host.lan-77-1234-abcd.exclusive").unwrap();
        assert_eq!((h.host.as_str(), h.pid, h.nanos), ("my-host.lan", 77, 1234));
        assert_eq!(h.kind, LeaseKind::Exclusive);
        assert!(Holder::parse("locks/junk").is_none());
        assert!(Holder::parse(&new_key(LeaseKind::Shared)).is_some());
    }
}
