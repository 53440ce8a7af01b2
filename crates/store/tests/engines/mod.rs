//! The real engines a grid test runs on: a fresh prefix in the Garage test bucket
//! (`SPAWNGRID_TEST_S3`) and a fresh schema in the test PostgreSQL (`SPAWNGRID_TEST_POSTGRES`),
//! dropped at the end (`catalog::testing`). Without them a test is skipped, saying so, unless
//! `SPAWNGRID_REQUIRE_ENGINES=1`, when it fails.

#![allow(dead_code)]

#[path = "../../../s3/tests/garage/mod.rs"]
mod garage;

use catalog::testing::Schema;
use std::collections::BTreeMap;
use std::path::Path;
use store::{DataDir, Store, StoreConfig};

/// One test's S3 prefix and PostgreSQL schema.
pub struct Engines {
    /// The `[store]` table every node of the test's grid uses.
    pub config: StoreConfig,
    _schema: Schema,
}

/// The engines for `test`, with catalog leases lasting `lease_secs`, or `None` (skipped).
pub fn engines(test: &str, lease_secs: u64) -> Option<Engines> {
    let g = garage::garage(test)?;
    let schema = Schema::new(test)?;
    let config = StoreConfig {
        library: Some(g.url(test)),
        catalog: Some(schema.url().to_string()),
        cache_bytes: Some(256 << 20),
        lease_secs: Some(lease_secs),
        s3: g.options(),
    };
    Some(Engines {
        config,
        _schema: schema,
    })
}
impl Engines {
    /// A node's store over the data directory `dir`.
    pub fn store(&self, dir: &Path) -> Store {
        Store::configure(DataDir::new(dir), &self.config).unwrap()
    }
}

/// `len` deterministic pseudo-random bytes for `seed` (xorshift).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every entry below `dir` by relative path: its mode, its modification time (files) and its
/// bytes (files), to compare an export with its source.
pub fn listing(dir: &Path) -> BTreeMap<String, (u32, i64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let (mtime, body) = if md.is_dir() {
                todo.push(p.clone());
                (0, Vec::new())
            } else {
                (md.mtime(), std::fs::read(&p).unwrap())
            };
            out.insert(rel, (md.mode(), mtime, body));
        }
    }
    out
}
