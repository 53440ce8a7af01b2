//! Freezing an env safely across crashes. A save freezes the env's cgroup for a point-in-time
//! capture; if the saving process dies (kill -9 of the node) before it thaws, the env would
//! stay frozen forever and every exec or attach would hang without a word.
//!
//! So a save holds an exclusive `flock` on `DATA/envs/<env>/save.lock` from before it freezes
//! until after it thaws ([`SaveLock`]); the kernel drops the lock when its holder dies. A
//! frozen env whose lock is free was left frozen by a save that died: [`recover`] thaws it (a
//! restarting node does so for every env), and so does [`wait_thawed`], which every exec and
//! attach passes first: it waits a bounded time for a save in progress, then fails with one
//! clear line instead of hanging.

use crate::error::{Context, Error, Result};
use crate::host::cgroup::Cgroup;
use crate::host::runtime::Runtime;
use crate::host::state::{self, EnvState};
use rustix::fs::FlockOperation;
use std::fs::File;
use std::time::{Duration, Instant};

/// How long an exec or attach waits for a save in progress to thaw the env.
pub const FROZEN_WAIT: Duration = Duration::from_secs(60);

/// The exclusive lock a save holds while the env may be frozen (released when dropped, or
/// when its holder dies).
pub struct SaveLock {
    _file: File,
}

/// Opens env `st`'s lock file.
fn lock_file(rt: &Runtime, st: &EnvState) -> Result<File> {
    let path = rt.env_dir(&st.name)?.join("save.lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

impl SaveLock {
    /// Takes env `st`'s save lock, waiting for another save of it to finish.
    pub fn acquire(rt: &Runtime, st: &EnvState) -> Result<SaveLock> {
        let file = lock_file(rt, st)?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .with_context(|| format!("locking env {} for a save", st.name))?;
        Ok(SaveLock { _file: file })
    }

    /// Takes the lock if no save holds it.
    fn try_acquire(rt: &Runtime, st: &EnvState) -> Result<Option<SaveLock>> {
        let file = lock_file(rt, st)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(SaveLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("locking env {}", st.name)),
        }
    }
}

/// Thaws env `st` if it is frozen and no save is running (one died mid-way); returns whether
/// it did.
pub fn recover(rt: &Runtime, st: &EnvState) -> Result<bool> {
    let cg = Cgroup::of_env(rt, &st.name, Some(st));
    if !cg.frozen()? {
        return Ok(false);
    }
    // Held while thawing, so no save starts in between.
    let Some(_lock) = SaveLock::try_acquire(rt, st)? else {
        return Ok(false);
    };
    cg.thaw()?;
    Ok(true)
}

/// Returns once env `st` is not frozen: at once if it is not; after thawing it if the save
/// that froze it died; after the save in progress thaws it, or an error once `limit` has
/// passed.
pub fn wait_thawed(rt: &Runtime, st: &EnvState, limit: Duration) -> Result<()> {
    let cg = Cgroup::of_env(rt, &st.name, Some(st));
    let deadline = Instant::now() + limit;
    while cg.frozen()? {
        if recover(rt, st)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Frozen {
                name: st.name.clone(),
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Thaws every running env of `rt` that a save left frozen (for a node starting after a
/// crash); one line for each env thawed or that could not be checked.
pub fn recover_all(rt: &Runtime) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for st in state::list(rt)?.iter().filter(|st| st.alive()) {
        match recover(rt, st) {
            Ok(true) => lines.push(format!(
                "thawed env {}, left frozen by a save that died",
                st.name
            )),
            Ok(false) => {}
            Err(e) => lines.push(format!("checking whether env {} is frozen: {e:#}", st.name)),
        }
    }
    Ok(lines)
}
