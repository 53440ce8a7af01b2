//! The block cache against a counting local backend: exact bytes, request counts, eviction,
//! damage, restarts and concurrent readers.

use super::*;
use crate::LocalBackend;
use std::time::Duration;

const BLOCK: u64 = 4096;

/// A local backend holding one pack, counted, and a cache over it.
struct Fixture {
    dir: tempfile::TempDir,
    metered: Arc<MeteredBackend>,
    cache: CachedBackend,
}

fn random(len: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut out);
    out
}

impl Fixture {
    fn new(budget_blocks: u64, readahead: u64, latency: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalBackend::open(dir.path().join("lib")).unwrap());
        let metered = Arc::new(MeteredBackend::new(local, latency));
        let cache = Fixture::open_cache(&dir, &metered, budget_blocks, readahead);
        Fixture {
            dir,
            metered,
            cache,
        }
    }

    fn open_cache(
        dir: &tempfile::TempDir,
        metered: &Arc<MeteredBackend>,
        budget_blocks: u64,
        readahead: u64,
    ) -> CachedBackend {
        let config = CacheConfig {
            dir: dir.path().join("cache"),
            budget: budget_blocks * BLOCK,
            block_size: BLOCK,
            readahead,
        };
        CachedBackend::open(metered.clone(), &config).unwrap()
    }

    /// Stores a pack straight into the backend (not through the cache); returns its key.
    fn pack(&self, data: &[u8]) -> String {
        let key = pack_key(&Score::of(data));
        self.metered.put(&key, data).unwrap();
        key
    }

    fn ranges(&self) -> u64 {
        self.metered.counts().ranges
    }

    /// Reads `[from, to)` in pieces of `piece` bytes; returns the ranged requests it cost.
    fn scan(&self, key: &str, from: u64, to: u64, piece: u64) -> u64 {
        let before = self.ranges();
        for off in (from..to).step_by(piece as usize) {
            let len = piece.min(to - off) as usize;
            self.cache.get_range(key, off, len).unwrap();
        }
        self.ranges() - before
    }
}

#[test]
fn reads_are_exact_at_every_edge() {
    let f = Fixture::new(64, DEFAULT_READAHEAD, Duration::ZERO);
    let data = random(10 * BLOCK as usize + 100, 1);
    let key = f.pack(&data);
    let size = data.len() as u64;
    let offsets = [
        0,
        1,
        4095,
        4096,
        4097,
        8191,
        8192,
        size - 4097,
        size - 100,
        size - 1,
    ];
    let lens = [0, 1, 100, 4095, 4096, 4097, 8192, 3 * 4096 + 5];
    for pass in 0..2 {
        for off in offsets.into_iter().chain([size, size + 10]) {
            for len in lens {
                let want = f.metered.get_range(&key, off, len);
                let got = f.cache.get_range(&key, off, len);
                match (want, got) {
                    (Ok(want), Ok(got)) => assert!(want == got, "pass {pass} at {off}+{len}"),
                    (Err(_), Err(_)) => {}
                    (want, got) => panic!("at {off}+{len}: {want:?} vs {got:?}"),
                }
            }
        }
    }
    assert_eq!(f.cache.get_range(&key, 0, data.len()).unwrap(), data);
}

#[test]
fn adjacent_misses_are_fetched_in_one_request() {
    let f = Fixture::new(64, 0, Duration::ZERO);
    let key = f.pack(&random(16 * BLOCK as usize, 2));
    assert_eq!(f.scan(&key, 0, 3 * BLOCK, 3 * BLOCK), 1);
    assert_eq!(f.scan(&key, 0, 10 * BLOCK, 10 * BLOCK), 1, "blocks 3..10");
    assert_eq!(f.scan(&key, 11 * BLOCK, 12 * BLOCK, BLOCK), 1);
    assert_eq!(f.scan(&key, 13 * BLOCK, 14 * BLOCK, BLOCK), 1);
    assert_eq!(
        f.scan(&key, 10 * BLOCK, 16 * BLOCK, 6 * BLOCK),
        3,
        "10, 12, 14..16"
    );
    assert_eq!(f.scan(&key, 0, 16 * BLOCK, 16 * BLOCK), 0);
}

#[test]
fn sequential_reads_grow_the_readahead() {
    let with = Fixture::new(256, 8, Duration::ZERO);
    let key = with.pack(&random(100 * BLOCK as usize, 3));
    // The window grows 1, 2, 4, 8 blocks and is fetched ahead in requests of at most PIECE
    // blocks, extended whenever the reader is in its second half: every byte once, in about a
    // request per PIECE blocks (the plan counts blocks in flight as there, so this is exact).
    assert_eq!(with.scan(&key, 0, 100 * BLOCK, 1024), 29);
    assert_eq!(with.metered.counts().range_bytes, 100 * BLOCK);
    let without = Fixture::new(256, 0, Duration::ZERO);
    let key = without.pack(&random(100 * BLOCK as usize, 3));
    assert_eq!(without.scan(&key, 0, 100 * BLOCK, 1024), 100);
}

#[test]
fn a_big_scan_does_not_flush_the_hot_blocks() {
    let f = Fixture::new(64, 8, Duration::ZERO);
    let hot = f.pack(&random(16 * BLOCK as usize, 4));
    let big = f.pack(&random(300 * BLOCK as usize, 5));
    assert!(f.scan(&hot, 0, 16 * BLOCK, 1024) > 0);
    assert_eq!(f.scan(&hot, 0, 16 * BLOCK, 1024), 0);
    assert!(f.scan(&big, 0, 300 * BLOCK, 1024) > 0);
    assert!(f.cache.cached_bytes() <= 64 * BLOCK);
    assert_eq!(f.scan(&hot, 0, 16 * BLOCK, 1024), 0, "hot set still cached");
    assert!(
        f.scan(&big, 0, 300 * BLOCK, 1024) > 0,
        "the scan was not kept"
    );
}

/// The cached block files of a pack, by block index.
fn block_files(f: &Fixture, key: &str) -> Vec<(u64, PathBuf)> {
    let hex = key.rsplit('/').next().unwrap();
    let dir = f.dir.path().join("cache").join(&hex[..2]);
    let mut out: Vec<_> = fs_entries(&dir)
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let index = name.strip_prefix(hex)?.split('-').nth(1)?.parse().ok()?;
            Some((index, p))
        })
        .collect();
    out.sort();
    out
}

fn fs_entries(dir: &std::path::Path) -> Vec<PathBuf> {
    let rd = std::fs::read_dir(dir).unwrap();
    rd.map(|e| e.unwrap().path()).collect()
}

#[test]
fn a_damaged_block_is_dropped_and_fetched_again() {
    let f = Fixture::new(64, 0, Duration::ZERO);
    let data = random(4 * BLOCK as usize, 6);
    let key = f.pack(&data);
    assert_eq!(f.scan(&key, 0, 4 * BLOCK, 4 * BLOCK), 1);
    let files = block_files(&f, &key);
    assert_eq!(files.len(), 4);
    let mut bad = std::fs::read(&files[2].1).unwrap();
    bad[100] ^= 1;
    std::fs::write(&files[2].1, bad).unwrap();
    let before = f.ranges();
    assert_eq!(f.cache.get_range(&key, 0, data.len()).unwrap(), data);
    assert_eq!(f.ranges() - before, 1);
    assert_eq!(f.cache.get_range(&key, 0, data.len()).unwrap(), data);
    assert_eq!(f.ranges() - before, 1);
}

#[test]
fn the_cache_survives_a_restart() {
    let f = Fixture::new(64, 8, Duration::ZERO);
    let data = random(10 * BLOCK as usize + 7, 7);
    let key = f.pack(&data);
    assert!(f.scan(&key, 0, data.len() as u64, 1000) > 0);
    let bytes = f.cache.cached_bytes();
    let temp = f.dir.path().join("cache/tmp/1999999999.0");
    std::fs::write(&temp, b"half a block").unwrap();
    let reopened = Fixture::open_cache(&f.dir, &f.metered, 64, 8);
    assert_eq!(reopened.cached_bytes(), bytes);
    assert!(!temp.exists(), "a dead writer's temp file is removed");
    let before = f.ranges();
    assert_eq!(reopened.get_range(&key, 0, data.len()).unwrap(), data);
    assert_eq!(f.ranges(), before, "all hits after the restart");
}

#[test]
fn concurrent_readers_fetch_each_block_once() {
    let f = Fixture::new(256, 8, Duration::from_millis(1));
    let data = random(64 * BLOCK as usize + 5, 8);
    let key = f.pack(&data);
    f.cache.list("packs/").unwrap();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let (f, key, data) = (&f, &key, &data);
            s.spawn(move || {
                let mut off = t * 3000;
                while off < data.len() as u64 {
                    let len = (20_000 + t * 10).min(data.len() as u64 - off);
                    let got = f.cache.get_range(key, off, len as usize).unwrap();
                    assert!(got == data[off as usize..(off + len) as usize]);
                    off += 10_000;
                }
            });
        }
    });
    assert_eq!(f.metered.counts().range_bytes, data.len() as u64);
}

#[test]
fn puts_fill_the_cache_and_deletes_empty_it() {
    let f = Fixture::new(64, 0, Duration::ZERO);
    let data = random(5 * BLOCK as usize, 9);
    let key = pack_key(&Score::of(&data));
    f.cache.put(&key, &data).unwrap();
    assert_eq!(f.scan(&key, 0, data.len() as u64, 1000), 0);
    assert_eq!(block_files(&f, &key).len(), 5);
    f.cache.delete(&key).unwrap();
    assert_eq!(f.cache.cached_bytes(), 0);
    assert!(block_files(&f, &key).is_empty());
    assert!(f.cache.get_range(&key, 0, 10).is_err());
}

#[test]
fn other_keys_pass_through() {
    let f = Fixture::new(64, 8, Duration::ZERO);
    f.cache.put("config", b"{}").unwrap();
    for _ in 0..3 {
        assert_eq!(f.cache.get_range("config", 0, 2).unwrap(), b"{}");
    }
    assert_eq!(f.ranges(), 3);
    assert_eq!(f.cache.cached_bytes(), 0);
}
