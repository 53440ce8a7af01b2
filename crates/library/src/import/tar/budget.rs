//! Parallel storing of file data read from a tar, with a bound on bytes in flight.

use super::IN_FLIGHT;
use crate::build::FileSlot;
use crate::pack::ObjectKind;
use crate::progress::Progress;
use crate::tree::FileData;
use crate::{file, Error, Library, Result, Score};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// A byte budget: how much file data may be read but not yet stored.
pub(super) struct Budget {
    pub(super) used: Mutex<u64>,
    pub(super) freed: Condvar,
}

impl Budget {
    /// Takes `n` bytes, waiting while other pieces hold too much (one piece always fits).
    pub(super) fn acquire(&self, n: u64) {
        let mut used = self.used.lock().expect("budget lock");
        while *used > 0 && *used + n > IN_FLIGHT {
            if rayon::current_thread_index().is_some() {
                // On a pool thread (a caller inside rayon): help run the jobs that free bytes.
                drop(used);
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::yield_now();
                }
                used = self.used.lock().expect("budget lock");
            } else {
                used = self.freed.wait(used).expect("budget lock");
            }
        }
        *used += n;
    }

    pub(super) fn release(&self, n: u64) {
        *self.used.lock().expect("budget lock") -= n;
        self.freed.notify_all();
    }
}

/// What storing jobs share.
pub(super) struct Store<'a> {
    pub(super) lib: &'a Library,
    pub(super) progress: &'a dyn Progress,
    pub(super) budget: Budget,
}

/// A file whose pieces (a whole small file, or FastCDC chunks) are being stored; whoever
/// finishes last fills the slot.
pub(super) struct Pieces {
    pub(super) slot: FileSlot,
    pub(super) stored: Mutex<Vec<Option<(Score, u32)>>>,
    pub(super) error: Mutex<Option<Error>>,
    /// Unfinished jobs, plus one while the reader is still adding pieces.
    pub(super) pending: AtomicUsize,
}

impl Pieces {
    pub(super) fn new() -> Arc<Pieces> {
        Arc::new(Pieces {
            slot: Arc::new(OnceLock::new()),
            stored: Mutex::default(),
            error: Mutex::default(),
            pending: AtomicUsize::new(1),
        })
    }

    /// Registers a new piece; returns its index.
    pub(super) fn add(&self) -> usize {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let mut stored = self.stored.lock().expect("pieces lock");
        stored.push(None);
        stored.len() - 1
    }

    pub(super) fn stored(&self, i: usize, result: Result<Score>, len: u32) {
        match result {
            Ok(s) => self.stored.lock().expect("pieces lock")[i] = Some((s, len)),
            Err(e) => {
                self.error.lock().expect("pieces lock").get_or_insert(e);
            }
        }
    }

    /// Drops one hold; the last one stores the chunk list if needed and fills the slot.
    pub(super) fn release(&self, lib: &Library) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.slot.set(self.finish(lib));
        }
    }

    pub(super) fn finish(&self, lib: &Library) -> Result<(u64, FileData)> {
        if let Some(e) = self.error.lock().expect("pieces lock").take() {
            return Err(e);
        }
        let stored = std::mem::take(&mut *self.stored.lock().expect("pieces lock"));
        let chunks: Vec<(Score, u32)> = stored.into_iter().map(|c| c.expect("stored")).collect();
        let total = chunks.iter().map(|c| u64::from(c.1)).sum();
        Ok(match chunks.as_slice() {
            [] => (0, FileData::Empty),
            [(s, _)] => (total, FileData::Blob(*s)),
            _ => {
                let list = lib.put(ObjectKind::ChunkList, &file::encode_chunks(&chunks))?;
                (total, FileData::Chunks(list))
            }
        })
    }
}

impl<'a> Store<'a> {
    pub(super) fn new(lib: &'a Library, progress: &'a dyn Progress) -> Self {
        Store {
            lib,
            progress,
            budget: Budget {
                used: Mutex::new(0),
                freed: Condvar::new(),
            },
        }
    }

    /// Reads a file's `size` bytes from `body`, cut as [`file::store_file`] cuts them, and
    /// queues their storing; returns the slot the result will be in.
    pub(super) fn file<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        body: &mut impl Read,
        size: u64,
    ) -> io::Result<FileSlot> {
        let cfg = self.lib.config();
        let pieces = Pieces::new();
        if size <= u64::from(cfg.chunk_threshold) {
            let mut buf = Vec::with_capacity(size as usize);
            body.read_to_end(&mut buf)?;
            self.piece(scope, &pieces, buf);
        } else {
            let cdc =
                fastcdc::v2020::StreamCDC::new(body, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max);
            for chunk in cdc {
                let chunk = chunk.map_err(|e| match e {
                    fastcdc::v2020::Error::IoError(e) => e,
                    other => io::Error::other(other.to_string()),
                })?;
                self.piece(scope, &pieces, chunk.data);
            }
        }
        let slot = pieces.slot.clone();
        pieces.release(self.lib);
        Ok(slot)
    }

    /// Stores one piece on the pool once the budget allows.
    pub(super) fn piece<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        pieces: &Arc<Pieces>,
        data: Vec<u8>,
    ) {
        let len = data.len() as u64;
        self.budget.acquire(len);
        let i = pieces.add();
        let pieces = pieces.clone();
        scope.spawn(move |_| {
            let result = self.lib.put(ObjectKind::Blob, &data);
            drop(data);
            self.budget.release(len);
            self.progress.bytes(len);
            pieces.stored(i, result, len as u32);
            pieces.release(self.lib);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_lets_one_piece_through_and_wakes_waiters() {
        let budget = Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
        };
        budget.acquire(IN_FLIGHT + 1);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| budget.acquire(1));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished());
            budget.release(IN_FLIGHT + 1);
            waiter.join().unwrap();
        });
        assert_eq!(*budget.used.lock().unwrap(), 1);
    }
}
