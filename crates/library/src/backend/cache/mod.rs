//! A node-local block cache in front of a (remote) backend: lazy remote reads of packs.
//!
//! [`CachedBackend`] wraps any [`Backend`]. Ranged reads of pack keys (`packs/<xx>/<score>`,
//! immutable and named by their contents) are served from fixed, aligned blocks kept in a local
//! directory; a miss fetches the missing blocks, adjacent ones in one ranged request, plus
//! read-ahead when a pack is read sequentially, and concurrent misses on one block fetch it
//! once. Blocks are verified by BLAKE3 on every read, the cache is bounded by a byte budget
//! with S3-FIFO eviction (a scan cannot flush it), and it survives restarts. Everything else
//! passes through: whole-object `get`s, `list`s (never cached; pack sizes are noted from them
//! and from [`Backend::note_size`]),
//! `put`s (written through; a new pack's blocks are also cached) and `delete`s (which drop the
//! key's blocks). See `docs/architecture.md`, "Block cache".

mod disk;
mod metered;
mod policy;
mod read;
mod shared;
#[cfg(test)]
mod tests;

pub use metered::{MeteredBackend, RequestCounts};
pub use shared::{RemoteCounts, SharedMeter};

use super::Backend;
use crate::store::{pack_key, PACKS};
use crate::{Error, Result, Score};
use bytes::Bytes;
use disk::BlockDir;
use policy::{BlockId, Policy};
use read::{Flight, Stream};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// Default block size: 256 KiB (see `docs/architecture.md` for the measurements).
pub const DEFAULT_BLOCK_SIZE: u64 = 256 << 10;

/// Default read-ahead: up to 32 blocks (8 MiB) past a sequential reader's request, fetched
/// in the background by requests of a few blocks at once (a remote store's latency, not its
/// bandwidth, limits one stream: see `docs/architecture.md`, "Block cache").
pub const DEFAULT_READAHEAD: u64 = 32;

/// How a [`CachedBackend`] caches.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The cache directory (created if missing), e.g. `DATA/cache/blocks`.
    pub dir: PathBuf,
    /// Most bytes of blocks kept on disk.
    pub budget: u64,
    /// Block size in bytes: a power of two from 4 KiB to 16 MiB. Changing it empties the cache.
    pub block_size: u64,
    /// Most blocks fetched ahead of a sequential reader (0: no read-ahead).
    pub readahead: u64,
}

impl CacheConfig {
    /// A cache in `dir` of at most `budget` bytes, with the default block size and read-ahead.
    pub fn new(dir: impl Into<PathBuf>, budget: u64) -> CacheConfig {
        CacheConfig {
            dir: dir.into(),
            budget,
            block_size: DEFAULT_BLOCK_SIZE,
            readahead: DEFAULT_READAHEAD,
        }
    }
}

/// A [`Backend`] that caches ranged reads of packs in a local directory (see the module docs).
pub struct CachedBackend {
    inner: Arc<dyn Backend>,
    disk: Arc<BlockDir>,
    block: u64,
    readahead: u64,
    state: Arc<Mutex<State>>,
}

/// What the cache knows, behind one lock (never held across I/O).
struct State {
    policy: Policy,
    /// Sizes of packs, noted from `list` and `put` (a pack's size never changes).
    sizes: HashMap<Score, u64>,
    /// Per pack: where its last miss was, for read-ahead.
    streams: HashMap<Score, Stream>,
    /// Blocks being fetched, and who waits for them.
    inflight: HashMap<BlockId, Arc<Flight>>,
    /// Read-ahead requests running now (at most `read::MAX_AHEAD`).
    ahead: usize,
}

impl CachedBackend {
    /// Opens the cache described by `config` (indexing the blocks already there) over `inner`.
    pub fn open(inner: Arc<dyn Backend>, config: &CacheConfig) -> Result<CachedBackend> {
        let block = config.block_size;
        if !block.is_power_of_two() || !(4 << 10..=16 << 20).contains(&block) {
            return Err(Error::BadInput(format!(
                "cache block size {block} is not a power of two from 4 KiB to 16 MiB"
            )));
        }
        if config.budget < 2 * block {
            return Err(Error::BadInput(format!(
                "cache budget {} is less than two blocks of {block} bytes",
                config.budget
            )));
        }
        let (disk, found) = BlockDir::open(&config.dir, block)?;
        let mut policy = Policy::new(config.budget, (config.budget / block) as usize);
        for f in found {
            for (id, hash) in policy.insert(f.id, f.len, f.hash, None) {
                disk.remove(&id, &hash);
            }
        }
        Ok(CachedBackend {
            inner,
            disk: Arc::new(disk),
            block,
            readahead: config.readahead,
            state: Arc::new(Mutex::new(State {
                policy,
                sizes: HashMap::new(),
                streams: HashMap::new(),
                inflight: HashMap::new(),
                ahead: 0,
            })),
        })
    }

    /// Bytes of blocks cached now.
    pub fn cached_bytes(&self) -> u64 {
        self.state().policy.bytes()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Caches a block's bytes (`start`: where the read that wanted it starts; `None` for
    /// read-ahead and new packs), evicting others as the budget requires.
    fn keep(&self, id: BlockId, bytes: &[u8], start: Option<u32>) {
        keep_block(&self.disk, &self.state, id, bytes, start);
    }

    /// Caches the blocks of `data` just written under `key`, if it is a pack.
    fn cache_new(&self, key: &str, data: &[u8]) {
        let Some(pack) = pack_of(key) else {
            return;
        };
        self.state().sizes.insert(pack, data.len() as u64);
        for (i, bytes) in data.chunks(self.block as usize).enumerate() {
            let id = (pack, i as u64);
            let busy = {
                let st = self.state();
                st.policy.hash(&id).is_some() || st.inflight.contains_key(&id)
            };
            if !busy {
                self.keep(id, bytes, None);
            }
        }
    }

    /// Drops a block whose file is missing or bad (unless it was replaced meanwhile).
    fn forget(&self, id: &BlockId, hash: &policy::Hash) {
        let mut st = self.state();
        if st.policy.hash(id).as_ref() == Some(hash) {
            st.policy.remove(id);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().expect("block cache lock")
}

/// [`CachedBackend::keep`] for whoever holds the cache's parts (read-ahead threads too).
fn keep_block(
    disk: &BlockDir,
    state: &Mutex<State>,
    id: BlockId,
    bytes: &[u8],
    start: Option<u32>,
) {
    match disk.write(&id, bytes) {
        Ok(hash) => {
            let len = bytes.len() as u64;
            let evicted = lock(state).policy.insert(id, len, hash, start);
            for (id, hash) in evicted {
                disk.remove(&id, &hash);
            }
        }
        Err(e) => tracing::warn!("not caching a block: {e}"),
    }
}

/// The pack a key names, if it is a pack key.
fn pack_of(key: &str) -> Option<Score> {
    let score = key.strip_prefix(PACKS)?.rsplit('/').next()?.parse().ok()?;
    (pack_key(&score) == key).then_some(score)
}

impl Backend for CachedBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.put(key, data)?;
        self.cache_new(key, data);
        Ok(())
    }

    fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        self.inner.put_bytes(key, data.clone())?;
        self.cache_new(key, &data);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        match pack_of(key) {
            Some(pack) => self.read_pack(pack, key, offset, len),
            None => self.inner.get_range(key, offset, len),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let keys = self.inner.list(prefix)?;
        let mut st = self.state();
        for (key, size) in &keys {
            if let Some(pack) = pack_of(key) {
                st.sizes.insert(pack, *size);
            }
        }
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)?;
        if let Some(pack) = pack_of(key) {
            let mut st = self.state();
            st.sizes.remove(&pack);
            st.streams.remove(&pack);
            let gone: Vec<_> = st
                .policy
                .blocks_of(&pack)
                .into_iter()
                .filter_map(|id| Some((id, st.policy.remove(&id)?)))
                .collect();
            drop(st);
            for (id, hash) in gone {
                self.disk.remove(&id, &hash);
            }
        }
        Ok(())
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn note_size(&self, key: &str, size: u64) {
        if let Some(pack) = pack_of(key) {
            self.state().sizes.insert(pack, size);
        }
    }
}
