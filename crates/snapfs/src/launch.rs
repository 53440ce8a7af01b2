//! Making a mount from another process (`lib mount`, a node's spawn): the keeper
//! ([`crate::keeper`]) is started detached, its output appended to the mount's log, and the
//! caller waits until the mount is live and registered. No process sits between the caller
//! and the keeper.

use crate::mount::{self, Record, Registry, State};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a keeper may take to make its mount live.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Something else is mounted there.
    #[error("{0} is already a mount point of something else; umount it first")]
    Taken(PathBuf),
    /// The keeper could not be started, or its log opened.
    #[error("starting the mount keeper: {0}")]
    Start(#[from] std::io::Error),
    /// The keeper exited before its mount was live; `cause` is the first error it logged.
    #[error("mount keeper exited ({status}): {cause}")]
    Exited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// The first error line of its log (or its last line).
        cause: String,
    },
    /// The mount was not live within [`START_TIMEOUT`] (the keeper was killed).
    #[error("mount keeper did not come up within {} s (see {})", START_TIMEOUT.as_secs(), .0.display())]
    Timeout(PathBuf),
}

/// The record of a live mount of `score` (hex) with `id_offset` at `dir`, if there is one;
/// else clears the way for a new mount (a dead mount there, whose server is gone, is detached
/// and forgotten). Something else mounted there is an error.
pub fn existing(
    registry: &Registry,
    dir: &Path,
    score: &str,
    id_offset: u32,
) -> Result<Option<Record>, LaunchError> {
    match mount::state(dir) {
        State::Live => {
            let same = registry
                .get(dir)
                .filter(|r| r.score == score && r.id_offset == id_offset && mount::running(r.pid));
            return match same {
                Some(r) => Ok(Some(r)),
                None => Err(LaunchError::Taken(dir.to_path_buf())),
            };
        }
        State::Dead => {
            tracing::warn!("the server of {} is gone; mounting again", dir.display());
            let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
            registry.remove(dir, None);
        }
        State::NotMounted => {}
    }
    Ok(None)
}

/// Starts `keeper` (a command that runs [`crate::keeper::keep`] for `dir`) detached, in a
/// process group of its own with its output appended to the mount's log, and waits until the
/// mount is live and registered. Returns the keeper's record and the time it took; the keeper
/// is a child of this process, reaped by a thread of its own when it exits.
pub fn start(
    registry: &Registry,
    dir: &Path,
    mut keeper: Command,
) -> Result<(Record, Duration), LaunchError> {
    let log_path = registry.log_path(dir);
    std::fs::create_dir_all(log_path.parent().expect("the log is in the registry"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    // What this keeper and its server write starts here (the log is appended to).
    let logged_before = log.metadata().map_or(0, |m| m.len());
    let start = Instant::now();
    let mut child = keeper
        .env(
            "SPAWNGRID_LOG",
            std::env::var("SPAWNGRID_LOG").unwrap_or_else(|_| "info,fuser=error".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(LaunchError::Exited {
                status,
                cause: first_error(&log_path, logged_before),
            });
        }
        let rec = registry.get(dir).filter(|r| r.pid == child.id());
        if let Some(r) = rec.filter(|_| mount::state(dir) == State::Live) {
            let reaper = std::thread::Builder::new()
                .name("snapfs-keeper-reaper".into())
                .spawn(move || child.wait());
            if let Err(e) = reaper {
                tracing::warn!(
                    "cannot wait for the mount keeper (it stays a zombie once it exits): {e}"
                );
            }
            return Ok((r, start.elapsed()));
        }
        if start.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
            return Err(LaunchError::Timeout(log_path));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The first error line logged at or after byte `from` of the log at `path`: the cause (a
/// server that could not start logs why before its keeper says that it failed).
fn first_error(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let ours = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
    let lines: Vec<&str> = ours.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .find(|l| l.starts_with("spawngrid: "))
        .or(lines.last())
        .map_or_else(|| "no output".to_string(), |l| l.to_string())
}
