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
//! link to the env's directory, made before the env's helper starts and recorded in its state
//! ([`crate::EnvState::owner_uid`]); boom gives it up. A claim is stale once its env directory is
//! gone or records another owner, or its init is dead: a restarted node's running envs keep
//! theirs, and the uids of envs that died with their node go back to the pool.

use crate::error::{fail, Result};
use crate::host::claims::Claims;
use crate::host::ids::OwnerRange;
use crate::host::state;
use std::path::Path;

/// Where the host-wide claims on owner uids live: `HOST_OWNERS/<uid>`.
pub const HOST_OWNERS: &str = "/run/spawngrid/owners";

const CLAIMS: Claims = Claims { dir: HOST_OWNERS };

/// Leases an owner uid for the env whose directory is `dir`: one that no other live env of the
/// host holds. Fails, saying so, when every uid of `range` is held.
pub fn lease(range: &OwnerRange, dir: &Path) -> Result<u32> {
    // Probing from a different place each time keeps spawns from queueing on the same uids.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let first = (nanos ^ std::process::id()) % range.count.max(1);
    for i in 0..range.count {
        let uid = range.start + (first + i) % range.count;
        if CLAIMS.claim(&uid.to_string(), dir, |holder| stale(holder, uid))? {
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

/// Gives up the owner uid of the env whose directory is `dir`: `recorded` (from its state),
/// or, for an env whose state is unreadable (a spawn that died early), whichever it holds.
pub fn release(dir: &Path, recorded: Option<u32>) -> Result<()> {
    if let Some(uid) = recorded {
        return CLAIMS.unclaim(&uid.to_string(), dir);
    }
    for key in CLAIMS.keys()? {
        if CLAIMS.holder(&key)?.as_deref() == Some(dir) {
            CLAIMS.unclaim(&key, dir)?;
        }
    }
    Ok(())
}

/// Whether the claim on `uid` by env directory `holder` is stale: the directory is gone, or
/// records another owner, or its init is dead. A directory without a state yet is a spawn under
/// way (it records its owner right after the lease).
fn stale(holder: &Path, uid: u32) -> bool {
    if !holder.is_dir() {
        return true;
    }
    match state::load_dir(holder) {
        Ok(st) => st.owner_uid != Some(uid) || (st.init_pid > 0 && !st.alive()),
        Err(_) => false,
    }
}
