//! `spawngrid lib mount NAME DIR` and `spawngrid lib umount DIR`: a snapshot as a lazy,
//! read-only filesystem served by a small detached process (see snapfs).

use anyhow::{bail, Context, Result};
use clap::Args;
use library::{Library, LocalBackend, Score};
use snapfs::mount::{self, Registry, ServeOptions, State};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `lib mount`.
#[derive(Args)]
pub struct MountArgs {
    /// A name or a score.
    name: String,
    /// The mount point (an existing directory).
    dir: PathBuf,
    /// Present every uid and gid plus N (for envs whose user namespace maps root to N).
    #[arg(long, default_value_t = 0)]
    uid_offset: u32,
    /// Limit of the node-local file cache (e.g. 500M, 10G).
    #[arg(long, default_value = "10G")]
    cache_size: String,
    /// The file cache directory (default DATA/cache).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Serve in this process instead of a detached one.
    #[arg(long)]
    foreground: bool,
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

/// Runs `lib mount`.
pub fn mount(data: &Path, owner: &str, a: MountArgs) -> Result<ExitCode> {
    let dir = mount_point(&a.dir)?;
    let cache_size = node::config::parse_size(&a.cache_size)?;
    let lib_dir = data.join("library");
    if !lib_dir.join("config").exists() {
        bail!("no library in {} (pass --data DIR)", data.display());
    }
    let lib = Arc::new(Library::open(Arc::new(LocalBackend::open(&lib_dir)?))?);
    let score = match a.name.parse::<Score>() {
        Ok(s) => s,
        Err(_) => catalog::Catalog::open(data.join("catalog.db"))?.resolve(owner, &a.name)?,
    };
    let snap = lib
        .snapshot(&score)
        .with_context(|| format!("reading snapshot {}", a.name))?;
    let registry = Registry::new(data);
    match mount::state(&dir) {
        State::Live => {
            let same = registry.get(&dir).filter(|r| {
                r.score == score.to_hex() && r.id_offset == a.uid_offset && mount::running(r.pid)
            });
            if let Some(r) = same {
                println!(
                    "{} is already mounted at {} (pid {})",
                    a.name,
                    dir.display(),
                    r.pid
                );
                return Ok(ExitCode::SUCCESS);
            }
            bail!(
                "{} is already a mount point of something else; umount it first",
                dir.display()
            );
        }
        State::Dead => {
            eprintln!(
                "spawngrid: the server of {} is gone; mounting again",
                dir.display()
            );
            let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
            registry.remove(&dir, None);
        }
        State::NotMounted => {}
    }
    if !dir.is_dir() {
        bail!("mount point {} is not a directory", dir.display());
    }
    let cache_dir = a.cache.clone().unwrap_or_else(|| data.join("cache"));
    if !a.foreground {
        return spawn_server(data, owner, &a, &score, &dir, &cache_dir, &registry);
    }
    let opts = ServeOptions {
        id_offset: a.uid_offset,
        cache_dir,
        cache_size,
        threads: 4,
    };
    mount::serve(lib, score, &snap, &dir, &registry, &opts, |r| {
        println!(
            "mounted {} at {} (pid {}, {} us)",
            score,
            dir.display(),
            r.pid,
            r.mount_us
        );
    })
    .with_context(|| format!("serving {} at {}", a.name, dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts a detached `lib mount --foreground` and waits until its mount is live.
fn spawn_server(
    data: &Path,
    owner: &str,
    a: &MountArgs,
    score: &Score,
    dir: &Path,
    cache_dir: &Path,
    registry: &Registry,
) -> Result<ExitCode> {
    let log_path = registry.log_path(dir);
    std::fs::create_dir_all(log_path.parent().expect("log dir"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let start = Instant::now();
    let mut child = Command::new(runtime::helper::self_exe())
        .arg("lib")
        .arg("--data")
        .arg(data)
        .args(["--owner", owner, "mount", &score.to_hex()])
        .arg(dir)
        .args(["--foreground", "--uid-offset", &a.uid_offset.to_string()])
        .args(["--cache-size", &a.cache_size])
        .arg("--cache")
        .arg(cache_dir)
        .env(
            "SPAWNGRID_LOG",
            std::env::var("SPAWNGRID_LOG").unwrap_or_else(|_| "warn,fuser=error".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount server")?;
    let deadline = start + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text.lines().last().unwrap_or("no output").to_string();
            bail!("mount server exited ({status}): {last}");
        }
        let rec = registry.get(dir).filter(|r| r.pid == child.id());
        if let Some(r) = rec.filter(|_| mount::state(dir) == State::Live) {
            println!(
                "mounted {} at {} (server pid {}, log {}, {:.1} ms)",
                a.name,
                dir.display(),
                r.pid,
                log_path.display(),
                start.elapsed().as_secs_f64() * 1e3
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
            bail!(
                "mount server did not come up within 30 s (see {})",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Runs `lib umount`.
pub fn umount(data: &Path, a: UmountArgs) -> Result<ExitCode> {
    let dir = mount_point(&a.dir)?;
    mount::unmount(&Registry::new(data), &dir, a.lazy)?;
    println!("unmounted {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
