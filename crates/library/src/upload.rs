//! Pack uploads in the background: a filled pack is named and written to the backend by an
//! upload thread while the writers go on reading, chunking, hashing and compressing.
//!
//! At most [`IN_FLIGHT`] packs are being uploaded at once; a writer that fills one more waits
//! for a slot, so memory stays bounded (about `IN_FLIGHT + 1` packs). The first failure is
//! kept: every later upload and every [`Uploads::wait`] reports it, so a save whose pack was
//! lost fails at its flush (binding nothing) instead of committing a snapshot that refers to
//! objects no pack holds.

use crate::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many packs may be uploading at once. Two keep an S3 store busy on both of a small
/// machine's cores while a third pack fills (see `bench/README.md`, "save").
pub(crate) const IN_FLIGHT: usize = 2;

/// The uploads of one library: how many are running, and the first failure.
#[derive(Default)]
pub(crate) struct Uploads {
    state: Arc<(Mutex<State>, Condvar)>,
}

#[derive(Default)]
struct State {
    running: usize,
    failure: Option<Error>,
    stats: UploadStats,
}

/// What a library's pack uploads did so far (the node logs it for each save).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UploadStats {
    /// Packs written.
    pub packs: u64,
    /// Bytes of the packs written.
    pub bytes: u64,
    /// Time the uploads took, summed (naming each pack, and its `put`).
    pub busy: Duration,
    /// Time writers waited for uploads: for a free slot, and in [`Uploads::wait`].
    pub waited: Duration,
}

impl Uploads {
    /// Runs `upload` (which returns the bytes it wrote) on a thread of its own once fewer than
    /// [`IN_FLIGHT`] uploads run, waiting for one to finish if need be. Fails, without running
    /// it, if an earlier upload failed.
    pub(crate) fn start(
        &self,
        upload: impl FnOnce() -> Result<u64> + Send + 'static,
    ) -> Result<()> {
        let (lock, changed) = &*self.state;
        {
            let t0 = Instant::now();
            let mut st = lock.lock().expect("uploads lock");
            while st.running >= IN_FLIGHT && st.failure.is_none() {
                st = changed.wait(st).expect("uploads lock");
            }
            st.stats.waited += t0.elapsed();
            if let Some(e) = &st.failure {
                return Err(e.duplicate());
            }
            st.running += 1;
        }
        let state = self.state.clone();
        let spawned = std::thread::Builder::new()
            .name("pack-upload".into())
            .spawn(move || {
                let t0 = Instant::now();
                let result = upload();
                let (lock, changed) = &*state;
                let mut st = lock.lock().expect("uploads lock");
                st.running -= 1;
                st.stats.busy += t0.elapsed();
                match result {
                    Ok(bytes) => {
                        st.stats.packs += 1;
                        st.stats.bytes += bytes;
                    }
                    Err(e) => {
                        st.failure.get_or_insert(e);
                    }
                }
                changed.notify_all();
            });
        if let Err(e) = spawned {
            let mut st = lock.lock().expect("uploads lock");
            st.running -= 1;
            changed.notify_all();
            return Err(Error::io("starting a pack upload thread for", "packs/", e));
        }
        Ok(())
    }

    /// Waits until no upload runs; fails if any upload (since this library was opened) failed.
    pub(crate) fn wait(&self) -> Result<()> {
        let (lock, changed) = &*self.state;
        let t0 = Instant::now();
        let mut st = lock.lock().expect("uploads lock");
        while st.running > 0 {
            st = changed.wait(st).expect("uploads lock");
        }
        st.stats.waited += t0.elapsed();
        st.failure.as_ref().map_or(Ok(()), |e| Err(e.duplicate()))
    }

    /// What the uploads did so far.
    pub(crate) fn stats(&self) -> UploadStats {
        self.state.0.lock().expect("uploads lock").stats
    }
}

impl Drop for Uploads {
    /// No upload outlives its library.
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Never more than [`IN_FLIGHT`] at once; all done by `wait`.
    #[test]
    fn uploads_are_bounded_and_awaited() {
        let uploads = Uploads::default();
        let (now, most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        for _ in 0..8 {
            let (now, most, done) = (now.clone(), most.clone(), done.clone());
            uploads
                .start(move || {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    now.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok(10)
                })
                .unwrap();
        }
        uploads.wait().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 8);
        assert!(most.load(Ordering::SeqCst) <= IN_FLIGHT);
        let stats = uploads.stats();
        assert_eq!((stats.packs, stats.bytes), (8, 80));
    }

    /// A failure is reported by `wait` and refuses later uploads, every time.
    #[test]
    fn a_failure_sticks() {
        let uploads = Uploads::default();
        uploads
            .start(|| Err(Error::BadInput("the store said no".into())))
            .unwrap();
        for _ in 0..2 {
            let e = uploads.wait().unwrap_err();
            assert!(e.to_string().contains("the store said no"), "{e}");
        }
        assert!(uploads.start(|| Ok(0)).is_err());
    }
}
