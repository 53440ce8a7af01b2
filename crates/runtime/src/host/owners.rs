//! The host uid that owns an env's user namespace: one of its own per live env on the host.
//!
//! The kernel charges a user namespace's per-user counts (inotify instances and watches, user
//! namespaces, the processes RLIMIT_NPROC counts, ...) to the namespace's *owner* in the parent
//! namespace: the effective uid of the process that unshared it (see
//! `inside::security::own_next_user_namespace`). Envs with one owner would share one budget
//! (128 inotify instances between all of them), so each env gets an owner uid of its own, from
//! a range that no host account and no env's mapped ids use: the `spawngrid-owners:START:COUNT`
//! line of `/etc/subuid` (which also keeps `useradd` from handing the range out), else
//! [`crate::host::ids::OWNERS_DEFAULT`] ([`OwnerRange`]). Only the owner is per env: root
//! inside is still the node's [`crate::IdRange`] (uid map `0 100000 65536`), so files made in
//! an env have the same owners as ever. No process ever runs as an owner uid (the helper only unshares with it as its
//! effective uid), and a process of the host running as one would hold every capability in
//! that env's namespaces: the range must be no host account's.
//!
//! Owner uids are host-wide (the nodes of one host draw from the same range) and leased per env
//! like `nat` subnets: a claim [`HOST_OWNERS`]`/<uid>` (`host::claims`), a symbolic
//! link to the env's directory, recorded in its state ([`crate::EnvState::owner_uid`]); boom
//! gives it up. The env's helper is started with its owner uid, perhaps ahead of the spawn
//! (`host::launch`): the uid is leased for a [`helper_holder`] first and handed over to the
//! env's directory when the spawn takes the helper (`launch::Prepared::hand_over`). A claim is stale once its
//! env directory is gone or records another owner, or its init is dead, or, for a helper's
//! holder, once the process that prepared it is gone: a restarted node's running envs keep
//! theirs, and the uids of envs (and helpers) that died with their node go back to the pool.

use crate::error::{fail, Result};
use crate::host::ids::{OwnerRange, OWNER_CLAIMS as CLAIMS};
use crate::host::state;
use crate::proc::start_time;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::host::ids::HOST_OWNERS;

/// The directory under a data directory whose (never made) entries hold owner uids for helpers.
const HELPERS: &str = "helpers";

/// A new holder for the owner uid of a helper prepared by this process, on data directory
/// `data`: `DATA/helpers/PID-START-N` (a name, no file is made), with this process's pid and
/// start time, so a claim left by a process that died is stale.
pub fn helper_holder(data: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // This process's "PID-START", read once (not on every spawn).
    static US: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let us = US.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_time(pid as i32).unwrap_or(0))
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    data.join(HELPERS).join(format!("{us}-{n}"))
}

/// Whether the process that made helper holder `holder` ([`helper_holder`]) still runs, or
/// `None` if `holder` is no helper's.
fn helper_alive(holder: &Path) -> Option<bool> {
    if holder.parent()?.file_name()? != HELPERS {
        return None;
    }
    let name = holder.file_name()?.to_str()?;
    let mut parts = name.splitn(3, '-');
    let pid: i32 = parts.next()?.parse().ok()?;
    let start: u64 = parts.next()?.parse().ok()?;
    Some(start_time(pid) == Some(start))
}

/// Leases an owner uid for `holder` (an env's directory, or a [`helper_holder`]): one that no
/// other live env or helper of the host holds. Fails, saying so, when every uid of `range` is held.
pub fn lease(range: &OwnerRange, holder: &Path) -> Result<u32> {
    // Probing from a different place each time keeps spawns from queueing on the same uids.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let first = (nanos ^ std::process::id()) % range.count.max(1);
    for i in 0..range.count {
        let uid = range.start + (first + i) % range.count;
        if CLAIMS.claim(&uid.to_string(), holder, |held| stale(held, uid))? {
            return Ok(uid);
        }
    }
    fail!(
        "no free env owner uid: all {} uids from {} are held by live envs on this host; boom \
         envs, or give the `spawngrid-owners:START:COUNT` line of /etc/subuid more uids",
        range.count,
        range.start
    )
}

/// Gives up the owner uid of `holder` (an env's directory, or a [`helper_holder`]): `recorded`
/// (from its state), or, for an env whose state is unreadable (a spawn that died early),
/// whichever it holds.
pub fn release(holder: &Path, recorded: Option<u32>) -> Result<()> {
    if let Some(uid) = recorded {
        return CLAIMS.unclaim(&uid.to_string(), holder);
    }
    for key in CLAIMS.keys()? {
        if CLAIMS.holder(&key)?.as_deref() == Some(holder) {
            CLAIMS.unclaim(&key, holder)?;
        }
    }
    Ok(())
}

/// Whether the claim on `uid` by `holder` is stale: a helper holder whose process is gone, or
/// an env directory that is gone, or records another owner, or whose init is dead. A directory
/// without a state yet is a spawn under way (it records its owner right after the lease).
fn stale(holder: &Path, uid: u32) -> bool {
    if let Some(alive) = helper_alive(holder) {
        return !alive;
    }
    if !holder.is_dir() {
        return true;
    }
    match state::load_dir(holder) {
        Ok(st) => st.owner_uid != Some(uid) || (st.init_pid > 0 && !st.alive()),
        Err(_) => false,
    }
}
