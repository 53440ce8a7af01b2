//! The keeper: a small process that makes one mount and lives exactly as long as it.
//!
//! It opens `/dev/fuse`, mounts it, and holds that connection while a separate server
//! process ([`crate::serve`]) answers the kernel on it. When the server dies (crash, `kill -9`,
//! OOM) the keeper starts another, which adopts the live connection: envs and open files carry
//! on, and calls that were in flight are answered by the new server. `SIGHUP` asks for the same
//! replacement on purpose (to run an upgraded binary). More than [`MAX_CRASHES`] deaths within
//! [`CRASH_WINDOW`] end the mount instead of looping. `SIGTERM`/`SIGINT` detach the mount and
//! stop. If the keeper itself is killed, its server is killed with it (`PR_SET_PDEATHSIG`) and
//! the mount answers `ENOTCONN` until mounted again.
//!
//! A keeper may also be started on standby ([`standby`]), before its mount is known: it opens
//! `/dev/fuse` and starts its server at once, and both wait; once told the snapshot and the
//! mount point they mount and serve, with the two process starts already behind them.
//!
//! The keeper must be single-threaded (it waits for signals with `sigwaitinfo`): run it in a
//! freshly executed process.

use crate::adopt::Offer;
use crate::mount::{Record, Registry};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Server deaths within [`CRASH_WINDOW`] after which the keeper gives the mount up.
pub const MAX_CRASHES: usize = 5;
/// See [`MAX_CRASHES`].
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// What the keeper mounts.
pub struct KeepOptions {
    /// The mount point (canonical path).
    pub dir: PathBuf,
    /// The source shown in the mount table.
    pub fsname: String,
    /// The snapshot's score (hex), for the record.
    pub score: String,
    /// The uid/gid offset the server presents, for the record.
    pub id_offset: u32,
}

/// The descriptors a server is started with (inherited, at these numbers).
pub struct Handoff {
    /// The FUSE connection.
    pub fuse: RawFd,
    /// Where the server writes, once it answers the kernel, a line with its [`Offer`] and the
    /// microseconds it took to get there.
    pub ready: RawFd,
    /// `None` for the first server; the kernel's offer for every later one.
    pub adopt: Option<Offer>,
    /// For a server started on standby: where it reads its mount, one line `SCORE DIR`
    /// (see [`read_work`]), once the connection is mounted.
    pub work: Option<RawFd>,
}

/// Signals the keeper waits for.
struct Signals(libc::sigset_t);

impl Signals {
    /// Blocks SIGCHLD, SIGHUP, SIGTERM and SIGINT in this (only) thread.
    fn block() -> std::io::Result<Signals> {
        // SAFETY: plain libc calls on a local, zero-initialised sigset.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGCHLD, libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
                libc::sigaddset(&mut set, s);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            Ok(Signals(set))
        }
    }

    fn wait(&self) -> std::io::Result<i32> {
        loop {
            // SAFETY: the set is initialised; no siginfo is asked for.
            let s = unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) };
            if s >= 0 {
                return Ok(s);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// How an attempt to replace a dead server ended.
enum Replacement {
    /// A new server answers the kernel.
    Started(Child),
    /// The mount went away meanwhile.
    Unmounted,
    /// Too many deaths in too little time.
    GaveUp,
}

/// Whether the connection has ended (the filesystem was unmounted and its users are gone).
fn disconnected(fuse: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fuse.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLERR != 0
}

fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; failure is reported.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A server that answers the kernel.
struct Started {
    child: Child,
    offer: Offer,
    /// The server's own time to answer (from its start on the snapshot to its handshake).
    took_us: u64,
}

/// Starts a server with `cmd` on `fuse` and waits until it answers the kernel.
fn start(
    server: &impl Fn(&Handoff) -> Command,
    fuse: &OwnedFd,
    adopt: Option<Offer>,
) -> std::io::Result<Started> {
    let (child, ready) = spawn(server, fuse, adopt, None)?;
    wait_ready(child, ready)
}

/// Starts a server on `fuse` (and `work`, for one on standby); returns it and the pipe on
/// which it says it answers the kernel.
fn spawn(
    server: &impl Fn(&Handoff) -> Command,
    fuse: &OwnedFd,
    adopt: Option<Offer>,
    work: Option<&OwnedFd>,
) -> std::io::Result<(Child, std::io::PipeReader)> {
    let (r, w) = std::io::pipe()?;
    let w = OwnedFd::from(w);
    let (f, wfd) = (fuse.as_raw_fd(), w.as_raw_fd());
    let work = work.map(|w| w.as_raw_fd());
    let mut cmd = server(&Handoff {
        fuse: f,
        ready: wfd,
        adopt,
        work,
    });
    // SAFETY: only async-signal-safe calls between fork and exec.
    let keeper = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            clear_cloexec(f)?;
            clear_cloexec(wfd)?;
            if let Some(fd) = work {
                clear_cloexec(fd)?;
            }
            // The server dies with its keeper: a mount has one keeper, or none.
            // (No allocation here: errors are plain errno values.)
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != keeper
            {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok((child, r))
}

/// Waits until `child` says on `ready` that it answers the kernel.
fn wait_ready(mut child: Child, ready: std::io::PipeReader) -> std::io::Result<Started> {
    let mut line = String::new();
    std::io::BufReader::new(ready).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let offer = words.next().and_then(|w| w.parse::<Offer>().ok());
    let took_us = words.next().and_then(|w| w.parse::<u64>().ok());
    match offer.zip(took_us) {
        Some((offer, took_us)) => Ok(Started {
            child,
            offer,
            took_us,
        }),
        None => {
            let status = child.wait()?;
            Err(std::io::Error::other(format!(
                "the server exited before serving ({status}; its log says why)"
            )))
        }
    }
}

/// Reads a standby server's mount from its `work` descriptor: the snapshot's score (hex) and
/// the mount point, or `None` if its keeper ended without one.
pub fn read_work(work: OwnedFd) -> std::io::Result<Option<(String, PathBuf)>> {
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::from(work)).read_line(&mut line)?;
    Ok(parse_work(&line))
}

/// A work line `SCORE DIR` (the directory may hold spaces; the line ends with a newline).
pub fn parse_work(line: &str) -> Option<(String, PathBuf)> {
    let (score, dir) = line.strip_suffix('\n')?.split_once(' ')?;
    (!score.is_empty() && dir.starts_with('/')).then(|| (score.to_string(), PathBuf::from(dir)))
}

/// Opens a new FUSE connection (not mounted yet).
fn open_fuse() -> std::io::Result<OwnedFd> {
    rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| std::io::Error::other(format!("opening /dev/fuse: {e}")))
}

/// Mounts the connection `fuse` at `opts.dir`; returns the microseconds it took.
fn mount_fuse(opts: &KeepOptions, fuse: &OwnedFd) -> std::io::Result<u64> {
    let data = std::ffi::CString::new(format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions,allow_other",
        fuse.as_raw_fd(),
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw()
    ))
    .expect("no NUL in mount options");
    let begin = Instant::now();
    rustix::mount::mount(
        opts.fsname.as_str(),
        &opts.dir,
        "fuse.snapfs",
        // nodev, nosuid: a snapshot's device nodes and setuid files are data, never devices
        // or privileges, on the host or under an env's overlay.
        rustix::mount::MountFlags::RDONLY
            | rustix::mount::MountFlags::NOATIME
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOSUID,
        data.as_c_str(),
    )
    .map_err(|e| std::io::Error::other(format!("mounting {}: {e}", opts.dir.display())))?;
    Ok(begin.elapsed().as_micros() as u64)
}

/// Detaches the mount at `dir` (lazily: its users keep it until they go).
fn detach_at(dir: &Path) {
    let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
}

/// Mounts a FUSE connection at `opts.dir`, keeps a server (made by `server`) answering it, and
/// returns when the mount is gone. `ready` is called once the mount is live and registered.
pub fn keep(
    opts: &KeepOptions,
    registry: &Registry,
    server: impl Fn(&Handoff) -> Command,
    ready: impl FnOnce(&Record),
) -> std::io::Result<()> {
    let signals = Signals::block()?;
    let fuse = open_fuse()?;
    let mount_us = mount_fuse(opts, &fuse)?;
    let first = start(&server, &fuse, None).inspect_err(|_| detach_at(&opts.dir))?;
    keep_serving(
        opts, registry, &signals, &fuse, first, mount_us, server, ready,
    )
}

/// [`keep`] for a mount not known yet: opens the connection and starts its server at once
/// (the server waits for its [`Handoff::work`]), then asks `work` for the mount (`None`: there
/// is none, the server is stopped and this returns). Once it knows the mount, this process's
/// output goes to the mount's log.
pub fn standby(
    registry: &Registry,
    server: impl Fn(&Handoff) -> Command,
    work: impl FnOnce() -> std::io::Result<Option<KeepOptions>>,
    ready: impl FnOnce(&Record),
) -> std::io::Result<()> {
    let signals = Signals::block()?;
    let fuse = open_fuse()?;
    let (from_keeper, to_server) = std::io::pipe()?;
    let (mut child, ready_pipe) = spawn(&server, &fuse, None, Some(&from_keeper.into()))?;
    let made = (|| {
        let Some(opts) = work()? else {
            return Ok(None);
        };
        crate::launch::log_to(&registry.log_path(&opts.dir))?;
        let mount_us = mount_fuse(&opts, &fuse)?;
        Ok(Some((opts, mount_us)))
    })();
    let (opts, mount_us) = match made {
        Ok(Some(made)) => made,
        // No mount (or none made): the server waiting for one goes too.
        other => {
            let _ = child.kill();
            let _ = child.wait();
            return other.map(|_| ());
        }
    };
    let told = {
        let mut to_server = to_server;
        writeln!(to_server, "{} {}", opts.score, opts.dir.display())
    };
    let first = told
        .and_then(|()| wait_ready(child, ready_pipe))
        .inspect_err(|_| detach_at(&opts.dir))?;
    keep_serving(
        &opts, registry, &signals, &fuse, first, mount_us, server, ready,
    )
}

/// Registers the mount at `opts.dir`, now served by `first`, and keeps a server answering it
/// until it is gone (see [`keep`]).
#[allow(clippy::too_many_arguments)]
fn keep_serving(
    opts: &KeepOptions,
    registry: &Registry,
    signals: &Signals,
    fuse: &OwnedFd,
    first: Started,
    mount_us: u64,
    server: impl Fn(&Handoff) -> Command,
    ready: impl FnOnce(&Record),
) -> std::io::Result<()> {
    let detach = || detach_at(&opts.dir);
    let Started {
        mut child,
        offer,
        took_us,
    } = first;
    let mut rec = Record {
        dir: opts.dir.clone(),
        score: opts.score.clone(),
        id_offset: opts.id_offset,
        pid: std::process::id(),
        server: child.id(),
        restarts: 0,
        mount_us: mount_us + took_us,
    };
    if let Err(e) = registry.put(&rec) {
        detach();
        let _ = child.kill();
        return Err(e);
    }
    ready(&rec);
    let mut crashes = VecDeque::new();
    let result = loop {
        let replace = match signals.wait()? {
            libc::SIGCHLD => match child.try_wait()? {
                None => continue,
                Some(_) if disconnected(fuse) => break Ok(()),
                Some(status) => {
                    tracing::warn!(
                        pid = child.id(),
                        "the server died ({status}); starting another"
                    );
                    true
                }
            },
            libc::SIGHUP => {
                tracing::info!(pid = child.id(), "restart asked for; replacing the server");
                let _ = child.kill();
                child.wait()?;
                false
            }
            _ => {
                tracing::info!("stopping: detaching the mount");
                detach();
                let _ = child.kill();
                child.wait()?;
                break Ok(());
            }
        };
        // Start a replacement; a replacement that fails counts as a crash too.
        let mut crashed = replace;
        let started = loop {
            // Unmounted meanwhile: nothing left to serve.
            if disconnected(fuse) {
                break Replacement::Unmounted;
            }
            if crashed {
                let now = Instant::now();
                crashes.push_back(now);
                while crashes.front().is_some_and(|t| now - *t > CRASH_WINDOW) {
                    crashes.pop_front();
                }
                if crashes.len() > MAX_CRASHES {
                    break Replacement::GaveUp;
                }
            }
            match start(&server, fuse, Some(offer)) {
                Ok(s) => break Replacement::Started(s.child),
                Err(e) => {
                    tracing::error!("starting a server: {e}");
                    crashed = true;
                }
            }
        };
        let c = match started {
            Replacement::Started(c) => c,
            Replacement::Unmounted => break Ok(()),
            Replacement::GaveUp => {
                tracing::error!(
                    "the server died more than {MAX_CRASHES} times in {} s: giving the mount up",
                    CRASH_WINDOW.as_secs()
                );
                detach();
                break Err(std::io::Error::other("server crash loop"));
            }
        };
        child = c;
        rec.server = child.id();
        rec.restarts += 1;
        // The mount is served again whatever happens to its record.
        if let Err(e) = registry.put(&rec) {
            tracing::warn!("updating the mount's record: {e}");
        }
        tracing::info!(pid = child.id(), restarts = rec.restarts, "serving again");
    };
    registry.remove(&opts.dir, Some(rec.pid));
    result
}
