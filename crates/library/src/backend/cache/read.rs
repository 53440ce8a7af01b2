//! Ranged reads of a pack through the block cache: which blocks a read needs, which of them to
//! fetch (missing ones, merged into runs, plus read-ahead), one fetch per block however many
//! readers want it, and the bytes put together.

use super::policy::Hash;
use super::CachedBackend;
use crate::{Error, Result, Score};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

/// Streams remembered at most (the map is cleared beyond this).
const MAX_STREAMS: usize = 4096;

/// Attempts at a read before going to the inner backend directly (a block can disappear
/// between planning and reading it: evicted, deleted, or found damaged).
const ATTEMPTS: usize = 3;

/// Per pack: the last block fetched and the current read-ahead window.
#[derive(Default)]
pub(super) struct Stream {
    frontier: Option<u64>,
    window: u64,
}

/// A block being fetched: its bytes once there (`None` inside: the fetch failed).
#[derive(Default)]
pub(super) struct Flight {
    done: Mutex<Option<Option<Arc<Vec<u8>>>>>,
    cv: Condvar,
}

impl Flight {
    fn finish(&self, bytes: Option<Arc<Vec<u8>>>) {
        *self.done.lock().expect("flight lock") = Some(bytes);
        self.cv.notify_all();
    }

    fn wait(&self) -> Option<Arc<Vec<u8>>> {
        let mut done = self.done.lock().expect("flight lock");
        loop {
            if let Some(bytes) = &*done {
                return bytes.clone();
            }
            done = self.cv.wait(done).expect("flight lock");
        }
    }
}

/// Where each block of a read comes from.
enum Source {
    Disk(Hash),
    Wait(Arc<Flight>),
    Fetch,
}

/// The blocks this read fetches itself; whatever is left unfinished when it is dropped (an
/// error, a panic) is finished as failed, so no waiter waits forever.
struct Owned<'a> {
    cache: &'a CachedBackend,
    pack: Score,
    blocks: Vec<u64>,
}

impl Owned<'_> {
    fn finish(&mut self, index: u64, bytes: Option<Arc<Vec<u8>>>) {
        let flight = self.cache.state().inflight.remove(&(self.pack, index));
        if let Some(f) = flight {
            f.finish(bytes);
        }
        self.blocks.retain(|&b| b != index);
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        for index in std::mem::take(&mut self.blocks) {
            self.finish(index, None);
        }
    }
}

/// One read: `[offset, end)` of a pack of `size` bytes.
struct Read<'a> {
    key: &'a str,
    pack: Score,
    offset: u64,
    end: u64,
    size: u64,
}

impl CachedBackend {
    /// Reads `len` bytes at `offset` of the pack `pack` (stored under `key`).
    pub(super) fn read_pack(
        &self,
        pack: Score,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let end = offset.checked_add(len as u64);
        let size = self.size_of(pack, key)?;
        let (Some(end), Some(size)) = (end, size) else {
            return self.inner.get_range(key, offset, len);
        };
        if end > size {
            return self.inner.get_range(key, offset, len);
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let read = Read {
            key,
            pack,
            offset,
            end,
            size,
        };
        for _ in 0..ATTEMPTS {
            if let Some(bytes) = self.try_read(&read)? {
                return Ok(bytes);
            }
        }
        self.inner.get_range(key, offset, len)
    }

    /// A pack's size: noted from `list` or `put`, else asked of the inner backend.
    fn size_of(&self, pack: Score, key: &str) -> Result<Option<u64>> {
        if let Some(size) = self.state().sizes.get(&pack) {
            return Ok(Some(*size));
        }
        let size = self.inner.list(key)?.into_iter().find(|(k, _)| k == key);
        let size = size.map(|(_, size)| size);
        if let Some(size) = size {
            self.state().sizes.insert(pack, size);
        }
        Ok(size)
    }

    /// Which 1/64th of block `index` a read starting at `offset` starts in.
    fn start_in(&self, offset: u64, index: u64) -> u32 {
        let block_start = index * self.block;
        ((offset.max(block_start) - block_start) * 64 / self.block) as u32
    }

    /// Decides where each block of `r` comes from; registers the blocks to fetch as in flight.
    fn plan(&self, r: &Read) -> (Vec<Source>, Vec<u64>) {
        let (first, last) = (r.offset / self.block, (r.end - 1) / self.block);
        let mut st = self.state();
        let mut sources = Vec::new();
        let mut fetch = Vec::new();
        for i in first..=last {
            let id = (r.pack, i);
            if let Some(hash) = st.policy.hash(&id) {
                st.policy.touch(&id, Some(self.start_in(r.offset, i)));
                sources.push(Source::Disk(hash));
            } else if let Some(f) = st.inflight.get(&id) {
                sources.push(Source::Wait(f.clone()));
            } else {
                sources.push(Source::Fetch);
                fetch.push(i);
            }
        }
        let Some(&miss) = fetch.first() else {
            return (sources, fetch);
        };
        if st.streams.len() >= MAX_STREAMS {
            st.streams.clear();
        }
        let stream = st.streams.entry(r.pack).or_default();
        let sequential = stream.frontier.is_some_and(|f| miss == f + 1);
        stream.window = match sequential {
            true => (stream.window * 2).max(1).min(self.readahead),
            false => 0,
        };
        let ahead = last + 1..(last + 1 + stream.window).min(r.size.div_ceil(self.block));
        for i in ahead {
            let id = (r.pack, i);
            if st.policy.hash(&id).is_none() && !st.inflight.contains_key(&id) {
                fetch.push(i);
            }
        }
        let frontier = *fetch.last().expect("not empty");
        st.streams.get_mut(&r.pack).expect("just added").frontier = Some(frontier);
        for &i in &fetch {
            st.inflight.insert((r.pack, i), Arc::default());
        }
        (sources, fetch)
    }

    /// One attempt at a read; `None` if a block vanished or was bad (try again).
    fn try_read(&self, r: &Read) -> Result<Option<Vec<u8>>> {
        let (sources, fetch) = self.plan(r);
        let first = r.offset / self.block;
        let mut owned = Owned {
            cache: self,
            pack: r.pack,
            blocks: fetch.clone(),
        };
        let mut fetched = HashMap::new();
        for run in runs(&fetch) {
            let start = run.start * self.block;
            let len = (run.end * self.block).min(r.size) - start;
            let data = self.inner.get_range(r.key, start, len as usize)?;
            if data.len() as u64 != len {
                let detail = format!("a read of {len} bytes at {start} returned {}", data.len());
                return Err(Error::corrupt(format!("pack {}", r.pack), detail));
            }
            for (i, bytes) in (run.start..).zip(data.chunks(self.block as usize)) {
                let wanted = i < first + sources.len() as u64;
                let start = wanted.then(|| self.start_in(r.offset, i));
                self.keep((r.pack, i), bytes, start);
                let bytes = Arc::new(bytes.to_vec());
                owned.finish(i, Some(bytes.clone()));
                if wanted {
                    fetched.insert(i, bytes);
                }
            }
        }
        drop(owned);
        let mut out = Vec::with_capacity((r.end - r.offset) as usize);
        for (i, source) in (first..).zip(sources) {
            let block_start = i * self.block;
            let block_len = (block_start + self.block).min(r.size) - block_start;
            let bytes = match source {
                Source::Fetch => fetched.remove(&i).expect("fetched above"),
                Source::Wait(f) => match f.wait() {
                    Some(bytes) => bytes,
                    None => return Ok(None),
                },
                Source::Disk(hash) => match self.disk.read(&(r.pack, i), &hash) {
                    Some(bytes) if bytes.len() as u64 == block_len => Arc::new(bytes),
                    _ => {
                        self.forget(&(r.pack, i), &hash);
                        return Ok(None);
                    }
                },
            };
            if bytes.len() as u64 != block_len {
                return Ok(None);
            }
            let from = (r.offset.max(block_start) - block_start) as usize;
            let to = (r.end.min(block_start + self.block) - block_start) as usize;
            out.extend_from_slice(&bytes[from..to]);
        }
        Ok(Some(out))
    }
}

/// Consecutive block indexes grouped into ranges.
fn runs(blocks: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(r) if r.end == b => r.end += 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}
