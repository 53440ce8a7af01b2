//! Inside a new mount namespace (as root of the env's user namespace): build the env's view
//! on top of its overlay root (the working directory: see [`crate::inside::init`]) — a minimal /dev, a
//! fresh /proc with the usual masked paths, no /sys — then `pivot_root` into it and drop the
//! host's tree. Paths are relative to the working directory: the env's ids may not be allowed
//! to look up the overlay's host path.

use crate::mounts::{ensure_dir, mount};
use anyhow::{Context, Result};
use rustix::fs::StatVfsMountFlags as St;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use std::path::Path;

/// Host device nodes bind-mounted into the env's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// /proc files that are hidden behind a read-only /dev/null.
const MASKED_FILES: [&str; 7] = [
    "kcore",
    "sysrq-trigger",
    "timer_list",
    "keys",
    "latency_stats",
    "sched_debug",
    "kallsyms",
];

/// /proc directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: [&str; 3] = ["acpi", "scsi", "asound"];

/// /proc directories that stay visible but read-only.
const READ_ONLY: [&str; 4] = ["sys", "bus", "fs", "irq"];

/// Builds /dev and /proc under the working directory (the root of the overlay) and pivots
/// into it.
pub fn setup() -> Result<()> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags};
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .context("making mounts private")?;
    // The overlay was copied from the host's namespace, so it is locked here and pivot_root
    // refuses it; a bind mount of it made in this namespace is not. Made detached, attached
    // on top of the overlay, then entered through its fd (`.` would stay below it).
    let bind = rustix::mount::open_tree(
        rustix::fs::CWD,
        ".",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .context("binding the root onto itself")?;
    rustix::mount::move_mount(
        &bind,
        "",
        rustix::fs::CWD,
        ".",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .context("attaching the root's bind")?;
    rustix::process::fchdir(&bind).context("entering the root's bind")?;
    make_dev(Path::new("dev"))?;
    make_proc(Path::new("proc"), Path::new("dev/null"))?;
    pivot()
}

/// A tmpfs /dev with bind-mounted host device nodes, a private devpts and /dev/shm.
fn make_dev(dev: &Path) -> Result<()> {
    ensure_dir(dev)?;
    let nosuid_noexec = MountFlags::NOSUID | MountFlags::NOEXEC;
    mount("tmpfs", dev, "tmpfs", nosuid_noexec, "mode=0755,size=65536").context("mounting /dev")?;
    for name in DEVICES {
        let node = dev.join(name);
        std::fs::File::create(&node).with_context(|| format!("creating {}", node.display()))?;
        rustix::mount::mount_bind(Path::new("/dev").join(name), &node)
            .with_context(|| format!("binding /dev/{name}"))?;
    }
    let pts = dev.join("pts");
    ensure_dir(&pts)?;
    mount(
        "devpts",
        &pts,
        "devpts",
        nosuid_noexec,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    .context("mounting /dev/pts")?;
    let shm = dev.join("shm");
    ensure_dir(&shm)?;
    mount(
        "tmpfs",
        &shm,
        "tmpfs",
        nosuid_noexec | MountFlags::NODEV,
        "mode=1777,size=67108864",
    )
    .context("mounting /dev/shm")?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .with_context(|| format!("linking /dev/{link}"))?;
    }
    Ok(())
}

/// A fresh /proc of the env's pid namespace, with sensitive paths masked or read-only.
fn make_proc(proc: &Path, null: &Path) -> Result<()> {
    ensure_dir(proc)?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount("proc", proc, "proc", flags, "").context("mounting /proc")?;
    let masks = MASKED_FILES
        .iter()
        .map(|n| (n, Some(null)))
        .chain(READ_ONLY.iter().map(|n| (n, None)));
    for (name, over) in masks {
        // A masked file shows /dev/null, a read-only directory itself; both then read-only.
        let p = proc.join(name);
        if !p.exists() {
            continue;
        }
        let src = over.unwrap_or(&p);
        rustix::mount::mount_bind(src, &p).with_context(|| format!("masking /proc/{name}"))?;
        remount_read_only(&p)?;
    }
    for name in MASKED_DIRS {
        let p = proc.join(name);
        if p.is_dir() {
            mount("tmpfs", &p, "tmpfs", MountFlags::RDONLY | flags, "size=0")
                .with_context(|| format!("masking /proc/{name}"))?;
        }
    }
    Ok(())
}

/// Remounts the bind mount at `p` read-only, keeping the flags the kernel locks in a user
/// namespace (nosuid, nodev, noexec, atime).
pub(crate) fn remount_read_only(p: &Path) -> Result<()> {
    let st = rustix::fs::statvfs(p).with_context(|| format!("statvfs {}", p.display()))?;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    for (s, m) in [
        (St::NOSUID, MountFlags::NOSUID),
        (St::NODEV, MountFlags::NODEV),
        (St::NOEXEC, MountFlags::NOEXEC),
        (St::NOATIME, MountFlags::NOATIME),
        (St::NODIRATIME, MountFlags::NODIRATIME),
        (St::RELATIME, MountFlags::RELATIME),
    ] {
        if st.f_flag.contains(s) {
            flags |= m;
        }
    }
    rustix::mount::mount_remount(p, flags, "")
        .with_context(|| format!("making {} read-only", p.display()))
}

/// `pivot_root` into the working directory and detach the old root.
fn pivot() -> Result<()> {
    rustix::process::pivot_root(".", ".").context("pivot_root")?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).context("detaching the old root")?;
    rustix::process::chdir("/").context("chdir /")
}
