//! The [`Runtime`] of one node (where env state lives, how helpers start), and the rules for
//! env names and the data directory.

use crate::error::{Context, Error, Result};
use crate::host::cgroup::{favor_dynamic_moves, Layout};
use crate::host::ids::{IdRange, OwnerRange};
use crate::host::launch::Spare;
use std::path::{Path, PathBuf};

/// The runtime of one node: where env state lives and how helpers are started.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// The node's data directory; envs live in `DATA/envs/`.
    pub data: PathBuf,
    /// The node's id on this host: 12 hex digits of the BLAKE3 hash of the (canonical) data
    /// directory. It names what the node makes in host-wide namespaces (its cgroups' parent),
    /// so nodes with different data directories never collide there.
    pub node_id: String,
    /// An executable that runs `inside::run_if_requested` first thing in `main`.
    pub helper: PathBuf,
    /// The host uid/gid range that ids inside every env map to.
    pub ids: IdRange,
    /// The host uids that own envs' user namespaces, one per env ([`crate::host::owners`]).
    pub owners: OwnerRange,
    /// Where env cgroups are created.
    pub cgroups: Layout,
    /// The env-init helper prepared ahead of the next spawn, if kept (shared by clones; see
    /// [`Runtime::keep_spare_helper`], with the spawn that prepares it).
    pub(crate) spare: std::sync::Arc<Spare>,
}

impl Runtime {
    /// A runtime on `data` (created if missing, made private: see [`private_data_dir`], and
    /// made canonical: mount points are matched against `/proc/self/mountinfo`, which shows
    /// resolved paths) whose helper is `helper`, with the node's default id range and the
    /// host's cgroup layout. Turns on the host's cheap cgroup migrations
    /// ([`favor_dynamic_moves`]). Fails if the env owner uids overlap the mapped ids.
    pub fn new(data: impl Into<PathBuf>, helper: impl Into<PathBuf>) -> Result<Runtime> {
        let data = data.into();
        private_data_dir(&data)?;
        let data = data
            .canonicalize()
            .with_context(|| format!("resolving {}", data.display()))?;
        favor_dynamic_moves();
        let node_id = node_id(&data);
        let ids = IdRange::node_default()?;
        Ok(Runtime {
            cgroups: Layout::detect(&node_id),
            node_id,
            data,
            helper: helper.into(),
            ids,
            owners: OwnerRange::node_default(&ids)?,
            spare: Default::default(),
        })
    }

    /// The directory of env `name` (which need not exist).
    pub fn env_dir(&self, name: &str) -> Result<PathBuf> {
        check_env_name(name)?;
        Ok(self.envs_dir().join(name))
    }

    /// The directory holding every env's directory.
    pub fn envs_dir(&self) -> PathBuf {
        self.data.join("envs")
    }
}

/// Creates the data directory `data` (and its parents) if missing, and makes it mode 0700:
/// it holds every env's files (setuid programs of an env's user included), its write layers'
/// disk images and the catalog, none of them for host users other than root. Envs never
/// need to traverse it (see `inside::init`).
pub fn private_data_dir(data: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .with_context(|| format!("creating {}", data.display()))?;
    let mode = std::fs::metadata(data)
        .with_context(|| format!("reading {}", data.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (mode 0700)", data.display()))?;
    }
    Ok(())
}

/// The id of the node whose data directory is `data` (canonical): see [`Runtime::node_id`].
fn node_id(data: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    library::Score::of(data.as_os_str().as_bytes()).short()
}

/// Checks an env name: the catalog's name syntax (no `/`, no `..`), and nothing that overlayfs
/// or mount options would misread; or two such names joined by one `+` (`ENV+USER`, how a node
/// keeps each user's envs apart).
pub fn check_env_name(name: &str) -> Result<()> {
    let bad = |rule: String| {
        Err(Error::BadName {
            name: name.into(),
            rule,
        })
    };
    if name.len() > 255 {
        return bad("longer than 255 bytes".into());
    }
    let parts: Vec<&str> = name.split('+').collect();
    if parts.len() > 2 {
        return bad("at most one '+' (ENV+USER)".into());
    }
    for part in parts {
        if let Some(rule) = library::names::rule_broken(part) {
            return bad(format!("invalid name {part:?}: {rule}"));
        }
        if part.contains([',', ':']) {
            return bad("no ',' or ':' (they separate overlay options)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_env_name;

    #[test]
    fn env_names_are_names_or_env_plus_user() {
        for ok in ["base", "base+alice", "a.b-c_d@e+bob"] {
            assert!(check_env_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a+b+c", "+alice", "base+", "../x", "a/b+c", "a,b", "a:b+c", "x+..",
        ] {
            assert!(check_env_name(bad).is_err(), "{bad}");
        }
        assert!(check_env_name(&format!("{}+{}", "a".repeat(128), "b".repeat(128))).is_err());
    }
}
