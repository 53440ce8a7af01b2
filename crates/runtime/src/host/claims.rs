//! Host-wide claims on numbered resources that several nodes (data directories) of one host
//! draw from the same pool: `DIR/<key>`, a symbolic link to whatever holds the resource (a
//! node's lease file, an env's directory), made atomically with `symlink(2)`, so its target
//! names the owning data directory. A claim is stale when its holder is gone (the caller says
//! how to tell); a stale claim may be replaced. Claims are made without a lock but removed
//! only under an exclusive lock on `DIR`, after reading their holder again, so a claim made
//! meanwhile by another node is never removed in place of a stale one. `DIR` is under `/run`
//! (a tmpfs): claims go with a reboot, as envs do.
//!
//! Used for `nat` subnets ([`crate::host::net`]) and for the host uids that own envs' user
//! namespaces ([`crate::host::owners`]).

use crate::error::{Context, Result};
use std::path::{Path, PathBuf};

/// The claims in one directory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claims {
    /// Where they live (created on the first claim).
    pub dir: &'static str,
}

impl Claims {
    /// The claim on `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        Path::new(self.dir).join(key)
    }

    /// Claims `key` for `holder`: true if the claim is `holder`'s (now, or already), false if
    /// someone else holds it. A claim whose holder is `stale` is replaced.
    pub fn claim(&self, key: &str, holder: &Path, stale: impl Fn(&Path) -> bool) -> Result<bool> {
        std::fs::create_dir_all(self.dir).with_context(|| format!("creating {}", self.dir))?;
        let claim = self.path(key);
        for _ in 0..3 {
            match std::os::unix::fs::symlink(holder, &claim) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", claim.display())),
            }
            let verdict = self.locked(|| {
                let Some(current) = self.holder(key)? else {
                    return Ok(None);
                };
                if current == holder {
                    return Ok(Some(true));
                }
                if stale(&current) {
                    remove(&claim)?;
                    return Ok(None);
                }
                Ok(Some(false))
            })?;
            if let Some(ours) = verdict {
                return Ok(ours);
            }
        }
        Ok(false)
    }

    /// Gives up the claim on `key` if `holder` holds it.
    pub fn unclaim(&self, key: &str, holder: &Path) -> Result<()> {
        if !Path::new(self.dir).exists() {
            return Ok(());
        }
        self.locked(|| match self.holder(key)? {
            Some(current) if current == holder => remove(&self.path(key)),
            _ => Ok(()),
        })
    }

    /// Moves the claim on `key` from `from` to `to`, atomically (a new link renamed over the
    /// claim); fails if `from` does not hold it.
    pub fn hand_over(&self, key: &str, from: &Path, to: &Path) -> Result<()> {
        let claim = self.path(key);
        self.locked(|| {
            if self.holder(key)?.as_deref() != Some(from) {
                crate::error::fail!("{} is not held by {}", claim.display(), from.display());
            }
            // A name `keys` skips, made and renamed under the lock.
            let next = Path::new(self.dir).join(format!(".{key}.next"));
            remove(&next)?;
            std::os::unix::fs::symlink(to, &next)
                .with_context(|| format!("creating {}", next.display()))?;
            std::fs::rename(&next, &claim).with_context(|| format!("replacing {}", claim.display()))
        })
    }

    /// What holds `key`, if it is claimed.
    pub fn holder(&self, key: &str) -> Result<Option<PathBuf>> {
        let claim = self.path(key);
        match std::fs::read_link(&claim) {
            Ok(holder) => Ok(Some(holder)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", claim.display())),
        }
    }

    /// Every claimed key.
    pub fn keys(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir)),
        };
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|key| !key.starts_with('.'))
            .collect())
    }

    /// Runs `f` holding an exclusive lock on the claims directory.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let dir = std::fs::File::open(self.dir).with_context(|| format!("opening {}", self.dir))?;
        rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", self.dir))?;
        f()
    }
}

/// Removes a file; a missing one is fine.
pub(crate) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
