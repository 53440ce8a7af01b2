//! The host id range that root (and every other id) inside an env maps to, and the range of
//! host uids that own envs' user namespaces ([`OwnerRange`]).
//!
//! One range per node, shared by all envs: root inside is host uid `host_uid`, an unprivileged
//! id no host account uses. It is `spawngrid:START:COUNT` from `/etc/subuid` and `/etc/subgid`
//! when those lines exist, otherwise 100000 + 65536 (the usual first subordinate range).

use crate::error::{fail, Context, Result};
use crate::host::claims::Claims;
use serde::{Deserialize, Serialize};

/// A user-namespace mapping: ids `0..count` inside are `host_*..host_* + count` outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// Host uid of root inside.
    pub host_uid: u32,
    /// Host gid of root inside.
    pub host_gid: u32,
    /// Number of ids mapped.
    pub count: u32,
}

/// The range used when `/etc/subuid` has no `spawngrid` line.
pub const DEFAULT: IdRange = IdRange {
    host_uid: 100_000,
    host_gid: 100_000,
    count: 65536,
};

impl IdRange {
    /// The node's range: the `spawngrid` lines of `/etc/subuid` and `/etc/subgid`, or [`DEFAULT`].
    pub fn node_default() -> Result<IdRange> {
        let uid = sub_range("/etc/subuid", "spawngrid")?;
        let gid = sub_range("/etc/subgid", "spawngrid")?;
        Ok(match (uid, gid) {
            (Some((u, n)), Some((g, m))) => IdRange {
                host_uid: u,
                host_gid: g,
                count: n.min(m),
            },
            _ => DEFAULT,
        })
    }

    /// The text written to `/proc/PID/uid_map` (`gid = false`) or `gid_map`.
    pub fn map_line(&self, gid: bool) -> String {
        let host = if gid { self.host_gid } else { self.host_uid };
        format!("0 {host} {}\n", self.count)
    }

    /// The same range as the library's save-time shift.
    pub fn shift(&self) -> library::overlay::IdShift {
        library::overlay::IdShift {
            host_uid: self.host_uid,
            host_gid: self.host_gid,
            count: self.count,
        }
    }
}

/// The host uids that may own envs' user namespaces (one each: [`crate::host::owners`]):
/// `start..start + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerRange {
    /// The first uid.
    pub start: u32,
    /// How many (at most this many envs live on the host at once).
    pub count: u32,
}

/// Where the host-wide claims on owner uids live: `HOST_OWNERS/<uid>` ([`crate::host::owners`]).
pub const HOST_OWNERS: &str = "/run/spawngrid/owners";

/// The claims on owner uids.
pub(crate) const OWNER_CLAIMS: Claims = Claims { dir: HOST_OWNERS };

/// The owner range used when `/etc/subuid` has no `spawngrid-owners` line: 65536 uids from
/// 1879048192 (0x70000000), a range that systemd leaves unused (its container ranges end
/// below it, its "foreign" range starts above it) and that `useradd` never hands out.
pub const OWNERS_DEFAULT: OwnerRange = OwnerRange {
    start: 0x7000_0000,
    count: 65536,
};

impl OwnerRange {
    /// The node's range: the `spawngrid-owners` line of `/etc/subuid`, or [`OWNERS_DEFAULT`]; refused
    /// if it overlaps `ids`, the ids envs map to.
    pub fn node_default(ids: &IdRange) -> Result<OwnerRange> {
        let range = match sub_range("/etc/subuid", "spawngrid-owners")? {
            Some((start, count)) => OwnerRange { start, count },
            None => OWNERS_DEFAULT,
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

/// The `NAME:START:COUNT` line of a subordinate id file, if any.
fn sub_range(path: &str, name: &str) -> Result<Option<(u32, u32)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split(':').collect();
        if f.len() == 3 && f[0] == name {
            let (start, count) = (f[1].parse::<u32>(), f[2].parse::<u32>());
            match (start, count) {
                (Ok(s), Ok(c)) if s > 0 && c > 0 && s.checked_add(c).is_some() => {
                    return Ok(Some((s, c)))
                }
                _ => fail!("{path}: bad line {line:?}"),
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_must_not_overlap_the_mapped_ids() {
        let ids = DEFAULT;
        assert!(OWNERS_DEFAULT.check(&ids).is_ok());
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
