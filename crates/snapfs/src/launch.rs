//! Making a mount from another process (`lib mount`, a node's spawn): the keeper
//! ([`crate::keeper`]) is started detached, its output appended to the mount's log, and the
//! caller waits until the mount is live and registered. No process sits between the caller
//! and the keeper. A keeper may be started ahead, on standby ([`Standby`]), and told its
//! mount when one is needed.

use crate::mount::{self, Record, Registry, State};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
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
    /// A keeper on standby had exited before it could be told its mount (nothing was
    /// started for it: [`Standby::mount_or_start`] starts a keeper instead).
    #[error("the mount keeper on standby had exited before it was told its mount: {0}")]
    Gone(std::io::Error),
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
    keeper: Command,
) -> Result<(Record, Duration), LaunchError> {
    let (log, log_path, logged_before) = open_log(registry, dir)?;
    let start = Instant::now();
    let child = detached(keeper, log.try_clone()?.into(), log.into())?;
    wait_live(registry, dir, child, &log_path, logged_before, start)
}

/// A keeper started on standby ([`crate::keeper::standby`]): its server runs too, and both
/// wait to be told a mount. It ends, with its server, when this value is dropped unused.
pub struct Standby {
    /// The keeper and its stdin; taken by [`Standby::mount`].
    keeper: Option<(Child, ChildStdin)>,
}

impl Standby {
    /// Starts `keeper` (a command that runs [`crate::keeper::standby`] reading its mount from
    /// its stdin) detached, in a process group of its own; its output goes nowhere until it
    /// knows its mount, then to the mount's log.
    pub fn start(mut keeper: Command) -> std::io::Result<Standby> {
        keeper.stdin(Stdio::piped());
        let mut child = detached(keeper, Stdio::null(), Stdio::null())?;
        let work = child.stdin.take().expect("stdin is piped");
        Ok(Standby {
            keeper: Some((child, work)),
        })
    }

    /// Whether the keeper still waits (it has not exited).
    pub fn waiting(&mut self) -> bool {
        let keeper = self.keeper.as_mut().map(|(child, _)| child.try_wait());
        matches!(keeper, Some(Ok(None)))
    }

    /// Tells the keeper to mount snapshot `score` (hex) at `dir`, and waits as [`start`] does.
    pub fn mount(
        mut self,
        registry: &Registry,
        dir: &Path,
        score: &str,
    ) -> Result<(Record, Duration), LaunchError> {
        let line = format!("{score} {}\n", dir.display());
        if crate::keeper::parse_work(&line).is_none() {
            return Err(LaunchError::Start(std::io::Error::other(format!(
                "cannot tell a keeper the mount point {}",
                dir.display()
            ))));
        }
        let (_, log_path, logged_before) = open_log(registry, dir)?;
        let (mut child, mut work) = self.keeper.take().expect("a standby is used once");
        let start = Instant::now();
        let told = work.write_all(line.as_bytes());
        drop(work);
        if let Err(e) = told {
            // It has exited (its stdin is closed), or exits at the end of its stdin.
            let _ = child.wait();
            return Err(LaunchError::Gone(e));
        }
        wait_live(registry, dir, child, &log_path, logged_before, start)
    }

    /// [`Standby::mount`], or, if the keeper had exited before it was told (killed from
    /// outside between a [`Standby::waiting`] check and this call), [`start`] of `keeper`.
    pub fn mount_or_start(
        self,
        registry: &Registry,
        dir: &Path,
        score: &str,
        keeper: Command,
    ) -> Result<(Record, Duration), LaunchError> {
        match self.mount(registry, dir, score) {
            Err(LaunchError::Gone(e)) => {
                tracing::warn!("the mount keeper on standby is gone ({e}); starting another");
                start(registry, dir, keeper)
            }
            told => told,
        }
    }
}

impl Drop for Standby {
    /// An unused keeper reads the end of its stdin and exits: reaped by a thread of its own.
    fn drop(&mut self) {
        if let Some((mut child, work)) = self.keeper.take() {
            drop(work);
            let reaper = std::thread::Builder::new()
                .name("snapfs-standby-reaper".into())
                .spawn(move || child.wait());
            if let Err(e) = reaper {
                tracing::warn!("cannot wait for a standby mount keeper: {e}");
            }
        }
    }
}

/// Opens (appending) the log of the mount at `dir`; returns it, its path and its length.
fn open_log(registry: &Registry, dir: &Path) -> std::io::Result<(File, PathBuf, u64)> {
    let log_path = registry.log_path(dir);
    std::fs::create_dir_all(log_path.parent().expect("the log is in the registry"))?;
    let log = File::options().create(true).append(true).open(&log_path)?;
    // What this keeper and its server write starts here (the log is appended to).
    let logged_before = log.metadata().map_or(0, |m| m.len());
    Ok((log, log_path, logged_before))
}

/// Sends this process's output (stdout and stderr) to the end of the log at `path` (a keeper
/// or server started on standby, once it knows its mount).
pub fn log_to(path: &Path) -> std::io::Result<()> {
    let log = File::options().create(true).append(true).open(path)?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto a standard descriptor number from an open file.
        if unsafe { libc::dup2(log.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts `keeper` in a process group of its own (signals to the caller's group do not reach
/// it) with `out` and `err`, its log level from `SPAWNGRID_LOG` as the caller's.
fn detached(mut keeper: Command, out: Stdio, err: Stdio) -> std::io::Result<Child> {
    keeper
        .env(
            "SPAWNGRID_LOG",
            std::env::var("SPAWNGRID_LOG").unwrap_or_else(|_| "info,fuser=error".into()),
        )
        .stdout(out)
        .stderr(err)
        .process_group(0);
    keeper.spawn()
}

/// Waits until `child`, a keeper started at `start`, has made the mount at `dir` live and
/// registered it (see [`start`]); what it logs from `logged_before` on explains a failure.
fn wait_live(
    registry: &Registry,
    dir: &Path,
    mut child: Child,
    log_path: &Path,
    logged_before: u64,
    start: Instant,
) -> Result<(Record, Duration), LaunchError> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(LaunchError::Exited {
                status,
                cause: first_error(log_path, logged_before),
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
            return Err(LaunchError::Timeout(log_path.to_path_buf()));
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
