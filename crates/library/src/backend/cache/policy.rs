//! Which cached blocks stay: S3-FIFO over a byte budget.
//!
//! New blocks enter a small probationary FIFO (a tenth of the budget). A block leaving it moves
//! to the main FIFO if it was reused while there, and is otherwise dropped and remembered in a
//! ghost list (ids only); a block fetched again while remembered goes straight to main. The main
//! FIFO gives reused blocks second chances (a 2-bit counter, decremented at each pass). So a
//! scan, whose blocks are read once, only cycles through the small FIFO and never pushes out
//! what is used often.
//!
//! *Reuse* is a read that starts where an earlier read of the same block started (one bit per
//! 1/64 of a block). Reading the next frame of a pack from the same block is therefore not a
//! reuse (a sequential scan touches each block many times), reading the same frame again is.

use crate::Score;
use std::collections::{HashMap, HashSet, VecDeque};

/// A block: the pack it belongs to and its index (offset / block size).
pub(super) type BlockId = (Score, u64);

/// The BLAKE3 hash of a block's bytes.
pub(super) type Hash = [u8; 32];

/// Highest value of a block's reuse counter.
const MAX_FREQ: u8 = 3;

struct Entry {
    len: u64,
    hash: Hash,
    freq: u8,
    in_main: bool,
    /// Matches the entry's current place in a queue; older places are skipped when popped.
    gen: u64,
    /// Bit i: a read started in the i-th 1/64 of the block.
    starts: u64,
}

/// The cache's bookkeeping: what is cached, in which queue, and what to evict.
pub(super) struct Policy {
    budget: u64,
    entries: HashMap<BlockId, Entry>,
    small: VecDeque<(BlockId, u64)>,
    main: VecDeque<(BlockId, u64)>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: HashSet<BlockId>,
    ghost_order: VecDeque<BlockId>,
    ghost_cap: usize,
    gen: u64,
}

impl Policy {
    /// An empty policy keeping at most `budget` bytes and remembering up to `ghost_cap` ids.
    pub(super) fn new(budget: u64, ghost_cap: usize) -> Policy {
        Policy {
            budget,
            entries: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: HashSet::new(),
            ghost_order: VecDeque::new(),
            ghost_cap,
            gen: 0,
        }
    }

    /// The hash of a cached block.
    pub(super) fn hash(&self, id: &BlockId) -> Option<Hash> {
        self.entries.get(id).map(|e| e.hash)
    }

    /// Records a read of a cached block starting in its 1/64th `start` (`None`: not a read).
    pub(super) fn touch(&mut self, id: &BlockId, start: Option<u32>) {
        if let (Some(e), Some(bit)) = (self.entries.get_mut(id), start) {
            if e.starts & (1 << bit) != 0 {
                e.freq = (e.freq + 1).min(MAX_FREQ);
            }
            e.starts |= 1 << bit;
        }
    }

    /// Adds a block (read at `start`, or brought in unread) and returns the blocks evicted to
    /// stay within the budget, possibly including this one.
    pub(super) fn insert(
        &mut self,
        id: BlockId,
        len: u64,
        hash: Hash,
        start: Option<u32>,
    ) -> Vec<(BlockId, Hash)> {
        if self.entries.contains_key(&id) {
            return Vec::new();
        }
        let in_main = self.ghost.remove(&id);
        self.gen += 1;
        let starts = start.map_or(0, |b| 1 << b);
        self.entries.insert(
            id,
            Entry {
                len,
                hash,
                freq: 0,
                in_main,
                gen: self.gen,
                starts,
            },
        );
        if in_main {
            self.main.push_back((id, self.gen));
            self.main_bytes += len;
        } else {
            self.small.push_back((id, self.gen));
            self.small_bytes += len;
        }
        self.evict()
    }

    /// Forgets a block (it is gone or bad); returns its hash if it was cached.
    pub(super) fn remove(&mut self, id: &BlockId) -> Option<Hash> {
        let e = self.entries.remove(id)?;
        if e.in_main {
            self.main_bytes -= e.len;
        } else {
            self.small_bytes -= e.len;
        }
        Some(e.hash)
    }

    /// The cached blocks of one pack.
    pub(super) fn blocks_of(&self, pack: &Score) -> Vec<BlockId> {
        self.entries
            .keys()
            .filter(|id| id.0 == *pack)
            .copied()
            .collect()
    }

    /// Bytes cached.
    pub(super) fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    fn evict(&mut self) -> Vec<(BlockId, Hash)> {
        let mut out = Vec::new();
        while self.bytes() > self.budget {
            if self.small_bytes > self.budget / 10 || self.main_bytes == 0 {
                self.evict_small(&mut out);
            } else {
                self.evict_main(&mut out);
            }
        }
        out
    }

    /// Pops the oldest live entry of a queue.
    fn pop(&mut self, main: bool) -> Option<BlockId> {
        loop {
            let q = if main {
                &mut self.main
            } else {
                &mut self.small
            };
            let (id, gen) = q.pop_front()?;
            if self.entries.get(&id).is_some_and(|e| e.gen == gen) {
                return Some(id);
            }
        }
    }

    fn evict_small(&mut self, out: &mut Vec<(BlockId, Hash)>) {
        let Some(id) = self.pop(false) else { return };
        self.gen += 1;
        let e = self.entries.get_mut(&id).expect("popped entries exist");
        self.small_bytes -= e.len;
        if e.freq > 0 {
            (e.freq, e.in_main, e.gen) = (0, true, self.gen);
            self.main_bytes += e.len;
            self.main.push_back((id, self.gen));
            return;
        }
        out.push((id, e.hash));
        self.entries.remove(&id);
        if self.ghost.insert(id) {
            self.ghost_order.push_back(id);
        }
        while self.ghost_order.len() > self.ghost_cap {
            let old = self.ghost_order.pop_front().expect("not empty");
            self.ghost.remove(&old);
        }
    }

    fn evict_main(&mut self, out: &mut Vec<(BlockId, Hash)>) {
        let Some(id) = self.pop(true) else { return };
        self.gen += 1;
        let e = self.entries.get_mut(&id).expect("popped entries exist");
        if e.freq > 0 {
            (e.freq, e.gen) = (e.freq - 1, self.gen);
            self.main.push_back((id, self.gen));
            return;
        }
        self.main_bytes -= e.len;
        out.push((id, e.hash));
        self.entries.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> BlockId {
        (Score([7; 32]), n)
    }

    #[test]
    fn a_scan_does_not_push_out_reused_blocks() {
        let mut p = Policy::new(100, 100);
        for n in 0..5 {
            assert!(p.insert(id(n), 10, [0; 32], Some(0)).is_empty());
            p.touch(&id(n), Some(0));
        }
        for n in 100..400 {
            p.insert(id(n), 10, [0; 32], Some(0));
            p.touch(&id(n), Some(1)); // the next frame of the same block: not a reuse
        }
        assert!(p.bytes() <= 100);
        assert!((0..5).all(|n| p.hash(&id(n)).is_some()));
    }

    #[test]
    fn a_block_seen_again_after_eviction_goes_to_main() {
        let mut p = Policy::new(40, 100);
        for n in 0..10 {
            p.insert(id(n), 10, [0; 32], None);
        }
        assert!(p.hash(&id(0)).is_none());
        p.insert(id(0), 10, [0; 32], None);
        for n in 10..30 {
            p.insert(id(n), 10, [0; 32], None);
        }
        assert!(p.hash(&id(0)).is_some(), "ghost hit went to main");
    }

    #[test]
    fn removed_blocks_leave_no_trace_in_the_queues() {
        let mut p = Policy::new(30, 10);
        p.insert(id(1), 10, [1; 32], None);
        assert_eq!(p.remove(&id(1)), Some([1; 32]));
        p.insert(id(1), 10, [2; 32], None);
        for n in 2..4 {
            p.insert(id(n), 10, [0; 32], None);
        }
        assert_eq!(p.bytes(), 30);
        assert_eq!(p.blocks_of(&Score([7; 32])).len(), 3);
    }
}
