//! The host id range that root (and every other id) inside an env maps to.
//!
//! One range per node, shared by all envs: root inside is host uid `host_uid`, an unprivileged
//! id no host account uses. It is `spawngrid:START:COUNT` from `/etc/subuid` and `/etc/subgid`
//! when those lines exist, otherwise 100000 + 65536 (the usual first subordinate range).

use crate::error::{fail, Context, Result};
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

/// The `NAME:START:COUNT` line of a subordinate id file, if any.
pub(crate) fn sub_range(path: &str, name: &str) -> Result<Option<(u32, u32)>> {
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
