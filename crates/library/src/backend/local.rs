//! The local-directory backend: each key is a file below a root directory.

use super::{check_key, Backend};
use crate::{Error, Result};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Stores keys as files under a root directory.
///
/// A put writes `tmp/<unique>.tmp`, syncs it, renames it into place and syncs the directory, so
/// a crash leaves either the whole file or none (plus, at worst, a temporary file that the next
/// open of the backend removes once its writer is dead).
pub struct LocalBackend {
    root: PathBuf,
    seq: AtomicU64,
}

impl LocalBackend {
    /// Opens (creating if needed) a backend rooted at `root`, removing dead writers' temp files.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalBackend> {
        let root = root.into();
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        let backend = LocalBackend {
            root,
            seq: AtomicU64::new(0),
        };
        backend.remove_dead_temps()?;
        Ok(backend)
    }

    fn remove_dead_temps(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        let dir = fs::read_dir(&tmp).map_err(|e| Error::io("listing", &tmp, e))?;
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = fs::remove_file(ent.path());
            }
        }
        Ok(())
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

impl Backend for LocalBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(key)?;
        let parent = dest.parent().expect("keys have a parent");
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
            sync_dir(parent.parent().unwrap_or(&self.root))?;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{n}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("writing", &dest, e));
        }
        if key.starts_with(crate::store::PACKS) {
            crate::faults::point(crate::faults::PACK_TEMP);
        }
        fs::rename(&tmp, &dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("renaming into", &dest, e)
        })?;
        sync_dir(parent)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.path(key)?;
        fs::read(&p).map_err(|e| Error::io("reading", p, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let p = self.path(key)?;
        let f = File::open(&p).map_err(|e| Error::io("opening", &p, e))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io("reading", &p, e))?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        // Keys are listed by walking the directory that holds the prefix.
        let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut out = Vec::new();
        let mut stack = vec![self.root.join(dir)];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("listing", &d, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| Error::io("listing", &d, e))?;
                let md = match ent.metadata() {
                    Ok(md) => md,
                    // Deleted since the directory was read (a lease that ended): not listed.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("listing", ent.path(), e)),
                };
                if md.is_dir() {
                    stack.push(ent.path());
                    continue;
                }
                let rel = ent
                    .path()
                    .strip_prefix(&self.root)
                    .expect("below root")
                    .to_owned();
                let key = rel.to_string_lossy().into_owned();
                if key.starts_with(prefix) && !key.starts_with("tmp/") {
                    out.push((key, md.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io("deleting", p, e)),
            _ => Ok(()),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.exists())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Keys put and deleted while another process lists (leases of concurrent saves): the
    /// listing never fails on a key gone between the directory read and its size.
    #[test]
    fn listing_survives_keys_deleted_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(dir.path().join("lib")).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("locks/k{}", n % 64);
                    b.put(&key, b"x").unwrap();
                    b.delete(&key).unwrap();
                    n += 1;
                }
            });
            for _ in 0..20_000 {
                if let Err(e) = b.list("locks/") {
                    stop.store(true, Ordering::Relaxed);
                    panic!("listing while keys go: {e}");
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
