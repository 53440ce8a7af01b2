//! `spawngrid lib mount NAME DIR`, `lib umount DIR` and `lib restart DIR`: a snapshot as a
//! lazy, read-only filesystem. A detached keeper process (`lib mount --keep`, see
//! snapfs::keeper) makes the mount and runs its server (`lib mount --serve-fd`), replacing the
//! server if it dies or when asked to. A node starts its next keeper ahead (`lib standby`, see
//! snapfs::keeper::standby) and tells it the snapshot and mount point when a spawn needs them.

use anyhow::{bail, Context, Result};
use clap::Args;
use library::Score;
use snapfs::adopt::Offer;
use snapfs::keeper::{self, Handoff, KeepOptions};
use snapfs::launch;
use snapfs::mount::{self, Registry};
use snapfs::serve::{self, Connection, ServeOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;

/// Arguments of `lib mount`.
#[derive(Args)]
pub struct MountArgs {
    /// A name or a score.
    name: String,
    /// The mount point (an existing directory).
    dir: PathBuf,
    #[command(flatten)]
    opts: MountOptions,
    /// Keep the mount in this process (its keeper) instead of a detached one.
    #[arg(long)]
    foreground: bool,
    /// Be the keeper (internal: NAME is a score, already checked).
    #[arg(long, hide = true)]
    keep: bool,
    /// Be the server on this inherited FUSE connection (internal, started by the keeper).
    #[arg(long, hide = true, requires = "ready_fd")]
    serve_fd: Option<i32>,
    /// Where the server reports it is answering (internal).
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
    /// The kernel's offer when the connection was made: adopt it (internal).
    #[arg(long, hide = true)]
    adopt: Option<Offer>,
}

impl MountArgs {
    /// Whether this is a keeper (`--keep`) or a server (`--serve-fd`), not the user's command.
    pub fn is_keeper_or_server(&self) -> bool {
        self.keep || self.serve_fd.is_some()
    }
}

/// How a mount is served (`lib mount` and `lib standby`).
#[derive(Args)]
pub struct MountOptions {
    /// Present every uid and gid plus N (for envs whose user namespace maps root to N).
    #[arg(long, default_value_t = 0)]
    uid_offset: u32,
    /// Limit of the node-local file cache (e.g. 500M, 10G).
    #[arg(long, default_value = "10G")]
    cache_size: String,
    /// The file cache directory (default DATA/cache).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Arguments of `lib standby`: a mount keeper started before its mount is known, which reads
/// `SCORE DIR` (one line) from stdin, then mounts as `lib mount SCORE DIR --keep` would; at
/// the end of stdin it exits (internal: a node keeps one ahead).
#[derive(Args)]
pub struct StandbyArgs {
    #[command(flatten)]
    opts: MountOptions,
    /// Be the keeper's server on this inherited FUSE connection, not mounted yet (internal).
    #[arg(long, requires_all = ["ready_fd", "work_fd"])]
    serve_fd: Option<i32>,
    /// Where the server reports it is answering (internal).
    #[arg(long)]
    ready_fd: Option<i32>,
    /// Where the server reads its mount once it is made (internal).
    #[arg(long)]
    work_fd: Option<i32>,
}

/// Arguments of `lib umount`.
#[derive(Args)]
pub struct UmountArgs {
    /// The mount point.
    dir: PathBuf,
    /// Detach now even if busy (the mount goes away when its last user does).
    #[arg(long)]
    lazy: bool,
}

/// The canonical mount point path, without touching the mount point itself (a dead FUSE
/// mount answers every stat with ENOTCONN).
fn mount_point(dir: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        bail!("cannot mount on {}", dir.display());
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("resolving {}", parent.display()))?;
    Ok(parent.join(name))
}

/// Arguments of `lib restart`.
#[derive(Args)]
pub struct RestartArgs {
    /// The mount point.
    dir: PathBuf,
}

/// Runs `lib mount`.
pub fn mount(store: &Store, owner: &str, a: MountArgs) -> Result<ExitCode> {
    let data = store.data().root();
    let dir = mount_point(&a.dir)?;
    if let (Some(fd), Some(ready)) = (a.serve_fd, a.ready_fd) {
        let score = a
            .name
            .parse()
            .map_err(|_| anyhow::anyhow!("--serve-fd takes a score, not {:?}", a.name))?;
        // SAFETY: the keeper hands these descriptors over to this process alone.
        let (fuse, ready) = unsafe { (OwnedFd::from_raw_fd(fd), OwnedFd::from_raw_fd(ready)) };
        let conn = match a.adopt {
            Some(offer) => Connection::Adopt(fuse, offer),
            None => Connection::Fresh(fuse),
        };
        return serve_mount(store, &a.opts, score, &dir, conn, ready);
    }
    let cache_dir = a.opts.cache_dir(store);
    if a.keep {
        return keep_mount(data, owner, &a.opts, &a.name, &dir, &cache_dir);
    }
    // The library is opened by the server only (each open lists the packs and reads what gc
    // condemned); a snapshot it cannot read makes the keeper fail with the server's error.
    let score = match a.name.parse::<Score>() {
        Ok(s) => s,
        Err(_) => store.catalog()?.resolve(owner, &a.name)?,
    };
    let registry = Registry::new(data);
    if let Some(r) = launch::existing(&registry, &dir, &score.to_hex(), a.opts.uid_offset)? {
        println!(
            "{} is already mounted at {} (pid {})",
            a.name,
            dir.display(),
            r.pid
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !dir.is_dir() {
        bail!("mount point {} is not a directory", dir.display());
    }
    let mut keeper = spawngrid_lib(&runtime::helper::self_exe(), data, owner);
    keeper.args(["mount", &score.to_hex()]).arg(&dir);
    a.opts.add_to(&mut keeper, &cache_dir);
    keeper.arg("--keep");
    if a.foreground {
        // The keeper waits for signals: it must be a fresh, single-threaded process.
        let err = keeper.exec();
        bail!("starting the keeper: {err}");
    }
    let (r, took) = launch::start(&registry, &dir, keeper)?;
    println!(
        "mounted {} at {} (keeper pid {}, server pid {}, log {}, {:.1} ms)",
        a.name,
        dir.display(),
        r.pid,
        r.server,
        registry.log_path(&dir).display(),
        took.as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

/// `EXE lib --data DATA --owner OWNER`.
fn spawngrid_lib(exe: &Path, data: &Path, owner: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("lib")
        .arg("--data")
        .arg(data)
        .args(["--owner", owner]);
    cmd
}

impl MountOptions {
    /// The file cache directory: `--cache`, else the data dir's.
    fn cache_dir(&self, store: &Store) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| store.data().cache())
    }

    /// Adds these options to `cmd` (a keeper's or a server's), the cache at `cache_dir`.
    fn add_to(&self, cmd: &mut Command, cache_dir: &Path) {
        cmd.args(["--uid-offset", &self.uid_offset.to_string()])
            .args(["--cache-size", &self.cache_size])
            .arg("--cache")
            .arg(cache_dir);
    }
}

/// The spawngrid binary on disk: the file this process was started from if it is still there
/// (replaced by an upgrade, its path now names the new one), else this process's own image.
fn exe_on_disk() -> PathBuf {
    let me = Path::new("/proc/self/exe");
    match std::fs::read_link(me) {
        Ok(p) => {
            let s = p.to_string_lossy();
            let p = PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s));
            if p.is_file() {
                p
            } else {
                me.to_path_buf()
            }
        }
        Err(_) => me.to_path_buf(),
    }
}

/// The command of a server for the mount of `score` (hex) at `dir` handed `h` by its keeper.
fn server_command(
    data: &Path,
    owner: &str,
    opts: &MountOptions,
    cache_dir: &Path,
    (score, dir): (&str, &Path),
    h: &Handoff,
) -> Command {
    let mut cmd = spawngrid_lib(&exe_on_disk(), data, owner);
    cmd.args(["mount", score]).arg(dir);
    opts.add_to(&mut cmd, cache_dir);
    cmd.args(["--serve-fd", &h.fuse.to_string()])
        .args(["--ready-fd", &h.ready.to_string()]);
    if let Some(offer) = h.adopt {
        cmd.args(["--adopt", &offer.to_string()]);
    }
    cmd
}

/// Prints the line a keeper prints once its mount is live.
fn mounted(score: &Score, dir: &Path, r: &mount::Record) {
    println!(
        "mounted {} at {} (keeper pid {}, server pid {}, {} us)",
        score,
        dir.display(),
        r.pid,
        r.server,
        r.mount_us
    );
}

/// The keeper (`lib mount --keep`): mounts, runs servers, returns when the mount is gone.
fn keep_mount(
    data: &Path,
    owner: &str,
    mopts: &MountOptions,
    name: &str,
    dir: &Path,
    cache_dir: &Path,
) -> Result<ExitCode> {
    let score: Score = name
        .parse()
        .map_err(|_| anyhow::anyhow!("--keep takes a score, not {name:?}"))?;
    let opts = keep_options(score, dir, mopts);
    let server = |h: &Handoff| server_command(data, owner, mopts, cache_dir, (&opts.score, dir), h);
    keeper::keep(&opts, &Registry::new(data), server, |r| {
        mounted(&score, dir, r)
    })
    .with_context(|| format!("keeping the mount at {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// What a keeper of `score` at `dir` mounts.
fn keep_options(score: Score, dir: &Path, mopts: &MountOptions) -> KeepOptions {
    KeepOptions {
        dir: dir.to_path_buf(),
        fsname: format!("spawngrid:{}", score.short()),
        score: score.to_hex(),
        id_offset: mopts.uid_offset,
    }
}

/// Runs `lib standby`: the keeper on standby, or (`--serve-fd`) its server.
pub fn standby(store: &Store, owner: &str, a: StandbyArgs) -> Result<ExitCode> {
    let data = store.data().root();
    if let (Some(fd), Some(ready), Some(work)) = (a.serve_fd, a.ready_fd, a.work_fd) {
        // SAFETY: the keeper hands these descriptors over to this process alone.
        let (fuse, ready, work) = unsafe {
            (
                OwnedFd::from_raw_fd(fd),
                OwnedFd::from_raw_fd(ready),
                OwnedFd::from_raw_fd(work),
            )
        };
        // The backend is made while the keeper waits; its error, if any, is reported once
        // the mount is known (this process's output goes to the mount's log only then).
        let backend = store.backend().map(|_| ());
        let Some((score, dir)) = keeper::read_work(work)? else {
            return Ok(ExitCode::SUCCESS);
        };
        launch::log_to(&Registry::new(data).log_path(&dir))?;
        backend?;
        let score = score
            .parse()
            .map_err(|_| anyhow::anyhow!("the keeper sent a bad score {score:?}"))?;
        return serve_mount(store, &a.opts, score, &dir, Connection::Fresh(fuse), ready);
    }
    let cache_dir = a.opts.cache_dir(store);
    let registry = Registry::new(data);
    let known: std::cell::RefCell<Option<(Score, PathBuf)>> = Default::default();
    let server = |h: &Handoff| match &*known.borrow() {
        // A replacement, after the mount was made.
        Some((score, dir)) => {
            server_command(data, owner, &a.opts, &cache_dir, (&score.to_hex(), dir), h)
        }
        None => {
            let mut cmd = spawngrid_lib(&exe_on_disk(), data, owner);
            cmd.arg("standby");
            a.opts.add_to(&mut cmd, &cache_dir);
            cmd.args(["--serve-fd", &h.fuse.to_string()])
                .args(["--ready-fd", &h.ready.to_string()]);
            if let Some(w) = h.work {
                cmd.args(["--work-fd", &w.to_string()]);
            }
            cmd
        }
    };
    let work = || {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let Some((score, dir)) = keeper::parse_work(&line) else {
            return Ok(None);
        };
        let score: Score = score
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad score {score:?}")))?;
        let opts = keep_options(score, &dir, &a.opts);
        *known.borrow_mut() = Some((score, dir));
        Ok(Some(opts))
    };
    let ready = |r: &mount::Record| {
        if let Some((score, dir)) = &*known.borrow() {
            mounted(score, dir, r);
        }
    };
    keeper::standby(&registry, server, work, ready).context("keeping a mount on standby")?;
    Ok(ExitCode::SUCCESS)
}

/// The server (`lib mount --serve-fd N --ready-fd M [--adopt OFFER]`, or a standby's server
/// once told its mount): serves snapshot `score` at `dir` on `conn`, and says so on `ready`.
fn serve_mount(
    store: &Store,
    mopts: &MountOptions,
    score: Score,
    dir: &Path,
    conn: Connection,
    ready: OwnedFd,
) -> Result<ExitCode> {
    let data = store.data().root();
    let began = Instant::now();
    store.backend()?;
    let backend = began.elapsed();
    let lib = Arc::new(store.library_reader()?);
    let opened = began.elapsed();
    let snap = lib
        .snapshot(&score)
        .with_context(|| format!("reading snapshot {score}"))?;
    let read = began.elapsed();
    let opts = ServeOptions {
        id_offset: mopts.uid_offset,
        cache_dir: mopts.cache_dir(store),
        cache_size: human::parse_size(&mopts.cache_size)?,
        threads: 4,
        journal: Registry::new(data).journal_path(dir),
    };
    serve::serve(lib, &snap, conn, &opts, |offer, took| {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            "serving {}: backend {:.1} ms, library {:.1} ms, snapshot {:.1} ms, handshake {:.1} ms",
            score.short(),
            ms(backend),
            ms(opened - backend),
            ms(read - opened),
            ms(took)
        );
        let mut ready = std::fs::File::from(ready);
        if let Err(e) = writeln!(ready, "{offer} {}", took.as_micros()) {
            tracing::error!("telling the keeper the mount is served: {e}");
        }
    })
    .with_context(|| format!("serving {} at {}", score, dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `lib umount`.
pub fn umount(data: &Path, a: UmountArgs) -> Result<ExitCode> {
    let dir = mount_point(&a.dir)?;
    mount::unmount(&Registry::new(data), &dir, a.lazy)?;
    println!("unmounted {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs `lib restart`: the keeper of DIR replaces its server with one started from the
/// spawngrid binary now on disk; the mount, its users and their open files carry on.
pub fn restart(data: &Path, a: RestartArgs) -> Result<ExitCode> {
    let dir = mount_point(&a.dir)?;
    let (old, new) = mount::restart(&Registry::new(data), &dir)?;
    println!(
        "restarted the server of {} (pid {} -> {})",
        dir.display(),
        old.server,
        new.server
    );
    Ok(ExitCode::SUCCESS)
}
