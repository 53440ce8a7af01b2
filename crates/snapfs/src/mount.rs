//! Mounting: serving a snapshot at a directory, the mount registry, and unmounting.
//!
//! Each mount has a record `DATA/mounts/<key>.json` (`key` = first 16 hex digits of the
//! BLAKE3 of the mount point's canonical path) naming the mount point, the snapshot score,
//! the uid/gid offset, the keeper and the current server, a log `DATA/mounts/<key>.log` and a
//! backing-id journal `DATA/mounts/<key>.ids` ([`crate::journal`]). The record is written by
//! the keeper once the mount is live (again at each server restart) and removed when the
//! keeper exits or by `unmount`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `statfs` magic of FUSE filesystems.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// What the registry knows about one mount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The mount point (canonical path).
    pub dir: PathBuf,
    /// The snapshot shown.
    pub score: String,
    /// The uid/gid offset presented.
    pub id_offset: u32,
    /// The keeper: the process that made the mount and lives as long as it.
    pub pid: u32,
    /// The server answering the kernel now (the keeper replaces it if it dies).
    #[serde(default)]
    pub server: u32,
    /// How many servers the keeper has started after the first.
    #[serde(default)]
    pub restarts: u32,
    /// Microseconds to a live mount: the keeper's mount call plus the first server's time
    /// from its start on the snapshot to the kernel handshake (root tree decoded). Process
    /// starts and opening the library are not counted.
    pub mount_us: u64,
}

/// The state of a mount point.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Not a FUSE mount.
    NotMounted,
    /// A FUSE mount that answers.
    Live,
    /// A FUSE mount whose server is gone (`ENOTCONN`).
    Dead,
}

/// The registry of mounts of one data directory (`DATA/mounts/`).
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry in `data/mounts`.
    pub fn new(data: &Path) -> Registry {
        Registry {
            dir: data.join("mounts"),
        }
    }

    fn key(mountpoint: &Path) -> String {
        let h = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
        h.to_hex()[..16].to_string()
    }

    /// The record file of a mount point.
    pub fn record_path(&self, mountpoint: &Path) -> PathBuf {
        self.dir.join(format!("{}.json", Registry::key(mountpoint)))
    }

    /// The backing-id journal of a mount point.
    pub fn journal_path(&self, mountpoint: &Path) -> PathBuf {
        self.dir.join(format!("{}.ids", Registry::key(mountpoint)))
    }

    /// The server log of a mount point.
    pub fn log_path(&self, mountpoint: &Path) -> PathBuf {
        self.dir.join(format!("{}.log", Registry::key(mountpoint)))
    }

    /// The record of a mount point, if any.
    pub fn get(&self, mountpoint: &Path) -> Option<Record> {
        let raw = std::fs::read(self.record_path(mountpoint)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Every record in the registry (of live or dead mounts alike).
    pub fn records(&self) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let p = e.ok()?.path();
                if p.extension()? != "json" {
                    return None;
                }
                serde_json::from_slice(&std::fs::read(p).ok()?).ok()
            })
            .collect()
    }

    /// Writes a record (whole: [`library::atomic::replace`]).
    pub fn put(&self, rec: &Record) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.record_path(&rec.dir);
        library::atomic::replace(&path, &serde_json::to_vec_pretty(rec).expect("record json"))
    }

    /// Removes a mount point's record if it still names `pid` (or unconditionally if `None`).
    pub fn remove(&self, mountpoint: &Path, pid: Option<u32>) {
        if pid.is_none() || self.get(mountpoint).map(|r| r.pid) == pid {
            let _ = std::fs::remove_file(self.record_path(mountpoint));
            let _ = std::fs::remove_file(self.journal_path(mountpoint));
        }
    }
}

/// Whether `dir` is a live FUSE mount, a dead one, or not one at all.
pub fn state(dir: &Path) -> State {
    match rustix::fs::statfs(dir) {
        Ok(s) if s.f_type == FUSE_SUPER_MAGIC => State::Live,
        Ok(_) => State::NotMounted,
        Err(rustix::io::Errno::NOTCONN) => State::Dead,
        Err(_) => State::NotMounted,
    }
}

/// Whether process `pid` is running (exists and is not a zombie waiting to be reaped).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// Why an unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    /// Nothing is mounted there.
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    /// The mount is in use.
    #[error("{0} is busy (files open or a mount on top); close them or pass --lazy")]
    Busy(PathBuf),
    /// Another failure of umount(2).
    #[error("unmounting {0}: {1}")]
    Other(PathBuf, std::io::Error),
    /// The keeper did not exit in time.
    #[error("unmounted {0}, but its keeper (pid {1}) did not exit within 10 s")]
    Linger(PathBuf, u32),
}

/// Why a server restart failed.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// No keeper runs for that mount point.
    #[error("{0} has no running keeper (mount it with `spawngrid lib mount`)")]
    NoKeeper(PathBuf),
    /// The mount was made by a spawngrid without keepers: its server cannot be replaced.
    #[error("{0} was mounted by an older spawngrid whose server cannot be replaced; umount it and mount it again")]
    Old(PathBuf),
    /// The keeper could not be signalled.
    #[error("signalling keeper {0}: {1}")]
    Signal(u32, std::io::Error),
    /// The mount ended instead (the replacement failed too often).
    #[error("the mount at {0} ended while restarting (see {1})")]
    Ended(PathBuf, PathBuf),
    /// No replacement was registered in time.
    #[error("the server of {0} was not replaced within 30 s (see {1})")]
    Timeout(PathBuf, PathBuf),
}

/// Whether the server of `rec` runs a binary that has since been replaced on disk (an
/// upgrade renamed a new file over it).
pub fn outdated(rec: &Record) -> bool {
    std::fs::read_link(format!("/proc/{}/exe", rec.server))
        .is_ok_and(|p| p.to_string_lossy().ends_with(" (deleted)"))
}

/// Asks the keeper of `dir` to replace its server with one started from the binary now on disk
/// (`SIGHUP`), and waits until it has. Returns the records before and after.
pub fn restart(registry: &Registry, dir: &Path) -> Result<(Record, Record), RestartError> {
    let Some(rec) = registry.get(dir).filter(|r| running(r.pid)) else {
        return Err(RestartError::NoKeeper(dir.to_path_buf()));
    };
    if rec.server == 0 {
        return Err(RestartError::Old(dir.to_path_buf()));
    }
    let pid = rustix::process::Pid::from_raw(rec.pid as i32).expect("pid > 0");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .map_err(|e| RestartError::Signal(rec.pid, e.into()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match registry.get(dir) {
            Some(r) if r.restarts > rec.restarts => return Ok((rec, r)),
            Some(_) => {}
            None => {
                return Err(RestartError::Ended(
                    dir.to_path_buf(),
                    registry.log_path(dir),
                ))
            }
        }
        if Instant::now() > deadline {
            return Err(RestartError::Timeout(
                dir.to_path_buf(),
                registry.log_path(dir),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Unmounts `dir` (lazily with `lazy`), waits for its keeper to exit, removes its record.
pub fn unmount(registry: &Registry, dir: &Path, lazy: bool) -> Result<(), UnmountError> {
    let rec = registry.get(dir);
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    if state(dir) == State::NotMounted {
        registry.remove(dir, None);
        return Err(UnmountError::NotMounted(dir.to_path_buf()));
    }
    match rustix::mount::unmount(dir, flags) {
        Ok(()) => {}
        Err(rustix::io::Errno::BUSY) => return Err(UnmountError::Busy(dir.to_path_buf())),
        Err(rustix::io::Errno::INVAL) => {
            registry.remove(dir, None);
            return Err(UnmountError::NotMounted(dir.to_path_buf()));
        }
        Err(e) => return Err(UnmountError::Other(dir.to_path_buf(), e.into())),
    }
    if let Some(rec) = rec {
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(rec.pid) {
            if Instant::now() > deadline {
                return Err(UnmountError::Linger(dir.to_path_buf(), rec.pid));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    registry.remove(dir, None);
    Ok(())
}
