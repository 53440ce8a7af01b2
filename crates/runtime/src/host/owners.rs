//! The host uid that owns an env's user namespace: one of its own per live env on the host.
//!
//! The kernel charges a user namespace's per-user counts (inotify instances and watches, user
//! namespaces, the processes RLIMIT_NPROC counts, ...) to the namespace's *owner* in the parent
//! namespace: the effective uid of the process that unshared it (see
//! `inside::security::own_next_user_namespace`). Envs with one owner would share one budget
//! (128 inotify instances between all of them), so each env gets an owner uid of its own, from
//! a range that no host account and no env's mapped ids use: the `spawngrid-owners:START:COUNT`
//! line of `/etc/subuid` (which also keeps `useradd` from handing the range out), else
//! [`DEFAULT`]. Only the owner is per env: root inside is still the node's
//! [`crate::IdRange`] (uid map `0 100000 65536`), so files made in an env have the same owners
//! as ever. No process ever runs as an owner uid (the helper only unshares with it as its
//! effective uid), and a process of the host running as one would hold every capability in
//! that env's namespaces: the range must be no host account's.
//!
//! Owner uids are host-wide (the nodes of one host draw from the same range) and leased per env
//! like `nat` subnets: a claim [`HOST_OWNERS`]`/<uid>` ([`crate::host::claims`]), a symbolic
//! link to the env's directory, made before the env's helper starts and recorded in its state
//! ([`crate::EnvState::owner_uid`]); boom gives it up. A claim is stale once its env directory is
//! gone or records another owner, or its init is dead: a restarted node's running envs keep
//! theirs, and the uids of envs that died with their node go back to the pool.

use crate::error::{fail, Result};
use crate::host::claims::Claims;
use crate::host::ids::{sub_range, IdRange};
use crate::host::state;
use std::path::Path;

/// Where the host-wide claims on owner uids live: `HOST_OWNERS/<uid>`.
pub const HOST_OWNERS: &str = "/run/spawngrid/owners";

const CLAIMS: Claims = Claims { dir: HOST_OWNERS };

/// The host uids that may own envs' user namespaces: `start..start + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerRange {
    /// The first uid.
    pub start: u32,
    /// How many (at most this many envs live on the host at once).
    pub count: u32,
}

/// The range used when `/etc/subuid` has no `spawngrid-owners` line: 65536 uids from
/// 1879048192 (0x70000000), a range that systemd leaves unused (its container ranges end
/// below it, its "foreign" range starts above it) and that `useradd` never hands out.
pub const DEFAULT: OwnerRange = OwnerRange {
    start: 0x7000_0000,
    count: 65536,
};

impl OwnerRange {
    /// The node's range: the `spawngrid-owners` line of `/etc/subuid`, or [`DEFAULT`]; refused
    /// if it overlaps `ids`, the ids envs map to.
    pub fn node_default(ids: &IdRange) -> Result<OwnerRange> {
        let range = match sub_range("/etc/subuid", "spawngrid-owners")? {
            Some((start, count)) => OwnerRange { start, count },
            None => DEFAULT,
        };
        range.check(ids)?;
        Ok(range)
    }

    /// Refuses a range that overlaps `ids`.
    pub fn check(&self, ids: &IdRange) -> Result<()> {
        let end = u64::from(self.start) + u64::from(self.count);
        for host in [ids.host_uid, ids.host_gid] {
            let mapped_end = u64::from(host) + u64::from(ids.count);
            if u64::from(self.start) < mapped_end && u64::from(host) < end {
                fail!(
                    "the env owner uids {}..{end} overlap the ids envs map to ({host}..{mapped_end}): \
                     give the `spawngrid-owners:START:COUNT` line of /etc/subuid a range of its own",
                    self.start
                );
            }
        }
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_must_not_overlap_the_mapped_ids() {
        let ids = crate::host::ids::DEFAULT;
        assert!(DEFAULT.check(&ids).is_ok());
        for (start, count) in [(100_000, 1), (90_000, 10_001), (165_535, 5), (0, u32::MAX)] {
            let err = OwnerRange { start, count }.check(&ids).unwrap_err();
            assert!(err.to_string().contains("spawngrid-owners"), "{err}");
        }
        assert!(OwnerRange {
            start: 165_536,
            count: 10
        }
        .check(&ids)
        .is_ok());
    }
}
