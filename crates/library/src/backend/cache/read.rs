//! Ranged reads of a pack through the block cache: which blocks a read needs, which of them to
//! fetch (missing ones, merged into runs), one fetch per block however many readers want it,
//! and the bytes put together. A sequential reader's read-ahead is fetched on threads of its
//! own, in requests of [`PIECE`] blocks running at once, and extended while the reader is
//! still inside the window fetched earlier: the reader waits for its own blocks only, and a
//! store whose every request costs tens of milliseconds still streams.

use super::disk::BlockDir;
use super::policy::{BlockId, Hash};
use super::{keep_block, lock, CachedBackend, State};
use crate::backend::Backend;
use crate::{Error, Result, Score};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

/// Most blocks in one read-ahead request.
const PIECE: u64 = 4;

/// Most read-ahead requests running at once, over all readers (each has a thread): past
/// this, a sequential reader gets no further read-ahead until some finish.
pub(super) const MAX_AHEAD: usize = 32;

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

/// The blocks a read (or a read-ahead thread) fetches itself; whatever is left unfinished when
/// it is dropped (an error, a panic) is finished as failed, so no waiter waits forever.
struct Owned {
    state: Arc<Mutex<State>>,
    pack: Score,
    blocks: Vec<u64>,
}

impl Owned {
    fn finish(&mut self, index: u64, bytes: Option<Arc<Vec<u8>>>) {
        let flight = lock(&self.state).inflight.remove(&(self.pack, index));
        if let Some(f) = flight {
            f.finish(bytes);
        }
        self.blocks.retain(|&b| b != index);
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        for index in std::mem::take(&mut self.blocks) {
            self.finish(index, None);
        }
    }
}

/// What a read does: where each of its blocks comes from, the missing ones it fetches itself,
/// and the read-ahead requests (runs of at most [`PIECE`] blocks) to start in the background.
struct Plan {
    sources: Vec<Source>,
    fetch: Vec<u64>,
    ahead: Vec<Range<u64>>,
}

/// One read-ahead request: blocks `piece` of a pack, fetched and cached on a thread of its own.
struct Ahead {
    inner: Arc<dyn Backend>,
    disk: Arc<BlockDir>,
    key: String,
    size: u64,
    block: u64,
    piece: Range<u64>,
    owned: Owned,
}

impl Ahead {
    fn run(mut self) {
        let start = self.piece.start * self.block;
        let len = (self.piece.end * self.block).min(self.size) - start;
        match self.inner.get_range(&self.key, start, len as usize) {
            Ok(data) if data.len() as u64 == len => {
                for (i, bytes) in self.piece.clone().zip(data.chunks(self.block as usize)) {
                    let id: BlockId = (self.owned.pack, i);
                    keep_block(&self.disk, &self.owned.state, id, bytes, None);
                    self.owned.finish(i, Some(Arc::new(bytes.to_vec())));
                }
            }
            // Readers waiting for these blocks try again, and fetch them themselves.
            Ok(data) => tracing::debug!("read-ahead of {len} bytes got {}", data.len()),
            Err(e) => tracing::debug!("read-ahead failed: {e}"),
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        lock(&self.owned.state).ahead -= 1;
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

    /// Decides where each block of `r` comes from and what to fetch ahead; registers the
    /// blocks to fetch as in flight.
    fn plan(&self, r: &Read) -> Plan {
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
        if st.streams.len() >= MAX_STREAMS && !st.streams.contains_key(&r.pack) {
            st.streams.clear();
        }
        let stream = st.streams.entry(r.pack).or_default();
        let sequential = match (fetch.first(), stream.frontier) {
            // A miss right past the blocks fetched so far.
            (Some(&miss), Some(f)) => miss == f + 1,
            // A hit in the second half of the window fetched ahead: time to fetch further.
            (None, Some(f)) => stream.window > 0 && last <= f && f - last <= stream.window / 2,
            (_, None) => false,
        };
        if fetch.is_empty() && !sequential {
            return Plan {
                sources,
                fetch,
                ahead: Vec::new(),
            };
        }
        stream.window = match sequential {
            true => (stream.window * 2).max(1).min(self.readahead),
            false => 0,
        };
        let from = match (sequential, stream.frontier) {
            (true, Some(f)) => (f + 1).max(last + 1),
            _ => last + 1,
        };
        let to = (last + 1 + stream.window).min(r.size.div_ceil(self.block));
        let missing: Vec<u64> = (from..to)
            .filter(|&i| st.policy.hash(&(r.pack, i)).is_none())
            .filter(|&i| !st.inflight.contains_key(&(r.pack, i)))
            .collect();
        let pieces: Vec<Range<u64>> = runs(&missing).into_iter().flat_map(split).collect();
        let room = MAX_AHEAD.saturating_sub(st.ahead);
        let ahead: Vec<Range<u64>> = pieces.iter().take(room).cloned().collect();
        st.ahead += ahead.len();
        // The frontier is the last block fetched or on its way (not one left out for lack of
        // room, so that the reader's miss there counts as sequential).
        let stream = st.streams.get_mut(&r.pack).expect("added above");
        stream.frontier = match (sequential, ahead.len() < pieces.len()) {
            (true, false) => stream.frontier.max(to.checked_sub(1)),
            (true, true) => stream.frontier.max(ahead.last().map(|p| p.end - 1)),
            (false, _) => fetch.last().copied(),
        };
        for i in fetch
            .iter()
            .copied()
            .chain(ahead.iter().flat_map(Range::clone))
        {
            st.inflight.insert((r.pack, i), Arc::default());
        }
        Plan {
            sources,
            fetch,
            ahead,
        }
    }

    /// Starts the read-ahead requests `pieces` (their blocks registered in flight, counted in
    /// `State::ahead`), one thread each. A thread that cannot start fails its blocks at once.
    fn fetch_ahead(&self, r: &Read, pieces: Vec<Range<u64>>) {
        for piece in pieces {
            let job = Ahead {
                inner: self.inner.clone(),
                disk: self.disk.clone(),
                key: r.key.to_owned(),
                size: r.size,
                block: self.block,
                owned: Owned {
                    state: self.state.clone(),
                    pack: r.pack,
                    blocks: piece.clone().collect(),
                },
                piece,
            };
            let spawned = std::thread::Builder::new()
                .name("block-readahead".into())
                .spawn(move || job.run());
            if let Err(e) = spawned {
                tracing::debug!("no read-ahead thread: {e}");
            }
        }
    }

    /// One attempt at a read; `None` if a block vanished or was bad (try again).
    fn try_read(&self, r: &Read) -> Result<Option<Vec<u8>>> {
        let Plan {
            sources,
            fetch,
            ahead,
        } = self.plan(r);
        self.fetch_ahead(r, ahead);
        let first = r.offset / self.block;
        let mut owned = Owned {
            state: self.state.clone(),
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
                self.keep((r.pack, i), bytes, Some(self.start_in(r.offset, i)));
                let bytes = Arc::new(bytes.to_vec());
                owned.finish(i, Some(bytes.clone()));
                fetched.insert(i, bytes);
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

/// A run of blocks as read-ahead requests of at most [`PIECE`] blocks.
fn split(run: Range<u64>) -> Vec<Range<u64>> {
    (run.start..run.end)
        .step_by(PIECE as usize)
        .map(|s| s..(s + PIECE).min(run.end))
        .collect()
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
