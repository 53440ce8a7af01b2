//! Tests of the pack index file: its format, and a library opened with one over a metered
//! backend (what it asks of the backend when the file is warm, stale, damaged or names a
//! pack gc deleted).

use super::*;
use crate::backend::cache::{MeteredBackend, RequestCounts};
use crate::backend::Backend;
use crate::lease::{FileLeases, LeaseKind};
use crate::pack::{Encoding, ObjectKind};
use crate::{fixture, Library, LocalBackend};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

fn entry(i: u8) -> PackEntry {
    PackEntry {
        score: Score::of(&[i]),
        kind: ObjectKind::Blob,
        encoding: Encoding::Zstd,
        offset: 16 + u32::from(i) * 10,
        stored_len: 10,
        frame_len: 40,
        start: 4,
        plain_len: 20,
    }
}

fn packs() -> Vec<KnownPack> {
    (0..3u8)
        .map(|p| KnownPack {
            name: Score::of(&[b'p', p]),
            size: 4096,
            entries: Arc::new((0..p * 5).map(|i| entry(p * 50 + i)).collect()),
        })
        .collect()
}

/// What is encoded decodes to the same; any truncation or flipped byte is refused.
#[test]
fn round_trip_and_damage() {
    let bytes = encode(b"{\"format\":1}", &packs());
    let back = decode(&bytes).unwrap();
    assert_eq!(back.config, b"{\"format\":1}");
    assert_eq!(back.packs, packs());
    for cut in [0, 1, 8, bytes.len() / 2, bytes.len() - 1] {
        assert!(decode(&bytes[..cut]).is_none(), "truncated at {cut}");
    }
    for i in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(decode(&bad).is_none(), "flipped byte {i}");
    }
}

/// A library directory, its pack index file's path (in another directory, as on a node),
/// and a writer on it.
struct Setup {
    dir: tempfile::TempDir,
    node: tempfile::TempDir,
    lib: Library,
}

impl Setup {
    fn new() -> Setup {
        let (dir, lib) = fixture::library();
        Setup {
            dir,
            node: tempfile::tempdir().unwrap(),
            lib,
        }
    }

    fn index(&self) -> std::path::PathBuf {
        self.node.path().join("cache/packs.idx")
    }

    /// A reader with the pack index file, over a fresh metered backend.
    fn reader(&self) -> (Arc<MeteredBackend>, Library) {
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(self.dir.path()).unwrap());
        let metered = Arc::new(MeteredBackend::new(local, Duration::ZERO));
        let lib = Library::open_reader(metered.clone(), Arc::new(FileLeases), Some(self.index()))
            .unwrap();
        (metered, lib)
    }
}

/// Lists (counted with puts, deletes and exists) made so far.
fn lists(m: &MeteredBackend) -> u64 {
    m.counts().others
}

fn packs_in(dir: &Path) -> usize {
    let local = LocalBackend::open(dir).unwrap();
    local.list(crate::store::PACKS).unwrap().len()
}

/// A reader opened over a warm index file asks nothing of the backend: no config, no
/// listing, no trailer; reading an object is one ranged read. A writer opened with it lists
/// the packs but reads no trailer.
#[test]
fn a_warm_index_opens_with_no_request() {
    let s = Setup::new();
    let a = fixture::snapshot(&s.lib, 1, 3);
    let b = fixture::snapshot(&s.lib, 2, 3);
    let packs = packs_in(s.dir.path()) as u64;
    assert!(packs >= 2);

    let (cold, _) = s.reader();
    let c = cold.counts();
    assert_eq!(
        (c.gets, lists(&cold), c.ranges),
        (1, 1, 2 * packs),
        "cold open"
    );
    assert!(s.index().exists());

    let (warm, reader) = s.reader();
    assert_eq!(warm.counts(), RequestCounts::default(), "warm open");
    reader.snapshot(&a).unwrap();
    assert_eq!((lists(&warm), warm.counts().ranges), (0, 1));
    fixture::check(&reader, &a, 1, 3);
    fixture::check(&reader, &b, 2, 3);
    assert_eq!(lists(&warm), 0);

    let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(s.dir.path()).unwrap());
    let metered = Arc::new(MeteredBackend::new(local, Duration::ZERO));
    Library::open_indexed(metered.clone(), Arc::new(FileLeases), Some(s.index())).unwrap();
    let c = metered.counts();
    assert_eq!(
        (c.gets, lists(&metered), c.ranges),
        (1, 1, 0),
        "writer open"
    );
}

/// A pack written after the index file was: the first read of one of its objects lists the
/// packs once and reads only the new pack's trailer; its other objects need nothing more,
/// and the file learns the pack.
#[test]
fn a_pack_written_elsewhere_is_found_by_one_refresh() {
    let s = Setup::new();
    let a = fixture::snapshot(&s.lib, 1, 3);
    s.reader();
    let (m, reader) = s.reader();
    fixture::check(&reader, &a, 1, 3);
    assert_eq!(lists(&m), 0);

    let b = fixture::snapshot(&s.lib, 2, 3);
    let before = m.counts();
    reader.snapshot(&b).unwrap();
    let after = m.counts();
    assert_eq!(lists(&m), 1);
    // The new pack's tail and trailer, then the snapshot object.
    assert_eq!(after.ranges - before.ranges, 3);
    fixture::check(&reader, &b, 2, 3);
    assert_eq!(lists(&m), 1, "one listing, not one per object");

    let (m, reader) = s.reader();
    fixture::check(&reader, &b, 2, 3);
    assert_eq!(lists(&m), 0, "the file knows the new pack");
}

/// A truncated, damaged or foreign index file is not trusted: the reader lists and reads
/// every trailer, reads right, and writes the file anew.
#[test]
fn a_damaged_index_file_is_rebuilt() {
    let s = Setup::new();
    let a = fixture::snapshot(&s.lib, 1, 3);
    let packs = packs_in(s.dir.path()) as u64;
    s.reader();
    let good = std::fs::read(s.index()).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    let damaged = [
        good[..good.len() / 2].to_vec(),
        flipped,
        b"SGPKIX99".to_vec(),
        Vec::new(),
    ];
    for bad in damaged {
        std::fs::write(s.index(), bad).unwrap();
        let (m, reader) = s.reader();
        assert_eq!((lists(&m), m.counts().ranges), (1, 2 * packs));
        fixture::check(&reader, &a, 1, 3);
        assert_eq!(std::fs::read(s.index()).unwrap(), good);
        let (m, _) = s.reader();
        assert_eq!(m.counts(), RequestCounts::default());
    }
}

/// gc rewrites or deletes every pack the index file names: a reader over the stale file
/// reads every live object after one refresh, a deleted object is a clean error, and the
/// file then names only the pack that exists.
#[test]
fn a_pack_gc_deleted_is_refreshed_away() {
    let s = Setup::new();
    let a = fixture::snapshot(&s.lib, 1, 3);
    let b = fixture::snapshot(&s.lib, 2, 3);
    let c = fixture::snapshot(&s.lib, 3, 3);
    s.reader();
    let (m, stale) = s.reader();

    // b's pack goes; a's and c's, small, are merged into a new one.
    let lease = s
        .lib
        .lease(LeaseKind::Exclusive, Duration::ZERO, &|_| {})
        .unwrap();
    let report = crate::gc::gc(&s.lib, &[a, c], &crate::progress::Silent).unwrap();
    drop(lease);
    assert_eq!(
        (report.packs_deleted, report.packs_rewritten),
        (1, 2),
        "{report}"
    );

    fixture::check(&stale, &a, 1, 3);
    fixture::check(&stale, &c, 3, 3);
    assert_eq!(lists(&m), 1, "one refresh");
    let err = fixture::read_files(&stale, &b).unwrap_err();
    assert!(matches!(err, crate::Error::Missing(_)), "{err}");

    let (m, fresh) = s.reader();
    assert_eq!(m.counts(), RequestCounts::default());
    assert_eq!(fresh.packs().len(), 1);
    let listed: Vec<(Score, u64)> = LocalBackend::open(s.dir.path())
        .unwrap()
        .list(crate::store::PACKS)
        .unwrap()
        .into_iter()
        .map(|(k, n)| (k.rsplit('/').next().unwrap().parse().unwrap(), n))
        .collect();
    assert_eq!(fresh.packs(), listed);
    fixture::check(&fresh, &a, 1, 3);
    assert_eq!(lists(&m), 0);
}

/// A backend whose next listing, once armed, is held after it was read until the test says
/// go: what is written meanwhile is missing from it.
struct HeldListing {
    inner: Arc<dyn Backend>,
    armed: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Backend for HeldListing {
    fn put(&self, key: &str, data: &[u8]) -> crate::Result<()> {
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> crate::Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: usize) -> crate::Result<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }
    fn list(&self, prefix: &str) -> crate::Result<Vec<(String, u64)>> {
        let listed = self.inner.list(prefix);
        let armed = self.armed.lock().unwrap().take();
        if let Some((read, go)) = armed {
            read.send(()).unwrap();
            go.recv().unwrap();
        }
        listed
    }
    fn delete(&self, key: &str) -> crate::Result<()> {
        self.inner.delete(key)
    }
    fn exists(&self, key: &str) -> crate::Result<bool> {
        self.inner.exists(key)
    }
    fn describe(&self) -> String {
        "a held listing".into()
    }
}

/// A writer with the pack index file refreshes while it writes a snapshot: the packs it wrote
/// after the listing was read stay in its index (reading them needs no listing again).
#[test]
fn packs_written_during_a_refresh_stay_indexed() {
    let s = Setup::new();
    let a = fixture::snapshot(&s.lib, 1, 3);
    let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(s.dir.path()).unwrap());
    let metered = Arc::new(MeteredBackend::new(local, Duration::ZERO));
    let held = Arc::new(HeldListing {
        inner: metered.clone(),
        armed: Mutex::default(),
    });
    let writer =
        Library::open_indexed(held.clone(), Arc::new(FileLeases), Some(s.index())).unwrap();
    let (read, listing_read) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    *held.armed.lock().unwrap() = Some((read, wait));
    let b = std::thread::scope(|scope| {
        let refresh = scope.spawn(|| writer.refresh());
        listing_read.recv().unwrap();
        let b = fixture::snapshot(&writer, 2, 3);
        go.send(()).unwrap();
        refresh.join().unwrap().unwrap();
        b
    });
    let listed = lists(&metered);
    fixture::check(&writer, &b, 2, 3);
    fixture::check(&writer, &a, 1, 3);
    assert_eq!(lists(&metered), listed, "no listing to find what it wrote");
}
