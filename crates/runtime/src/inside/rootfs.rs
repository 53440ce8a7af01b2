//! The env's mount namespace, made in two parts (as root of the env's user namespace). Ahead
//! of the spawn, [`stage`]: a new mount namespace, a staging tmpfs with the env's minimal
//! `/dev` built on it, pivoted into, so the host's mounts are gone from the namespace before
//! the env needs it (copying them into a new namespace and dropping them again costs ~1 µs a
//! host mount each way). At the spawn, [`attach`] mounts the overlay root the spawner sent (a
//! detached `open_tree` clone) on the staging root's `/root`, and the init's [`setup`] moves
//! `/dev` onto it, mounts a fresh /proc with the usual masked paths (no /sys) and pivots into
//! it. Paths are relative to the working directory where they can be: the env's ids may not be
//! allowed to look up host paths.

use crate::mounts::{ensure_dir, mount};
use anyhow::{Context, Result};
use rustix::fd::OwnedFd;
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

/// Where the overlay root is attached under the staging root.
const ROOT: &str = "/root";

/// Ahead of the spawn, in a new mount namespace: makes its mounts private, mounts a staging
/// tmpfs on the working directory (any directory of the host's), builds `/dev` on it, makes
/// [`ROOT`] and pivots into it, dropping every host mount from the namespace but `/proc`.
pub fn stage() -> Result<()> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags,
        FsOpenFlags, MountAttrFlags, MoveMountFlags,
    };
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .context("making mounts private")?;
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).context("a staging tmpfs")?;
    fsconfig_set_string(&fs, "mode", "0755").context("a staging tmpfs")?;
    fsconfig_set_string(&fs, "size", "65536").context("a staging tmpfs")?;
    fsconfig_create(&fs).context("a staging tmpfs")?;
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let stage = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).context("a staging tmpfs")?;
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH;
    move_mount(&stage, "", rustix::fs::CWD, ".", flags).context("attaching the staging tmpfs")?;
    rustix::process::fchdir(&stage).context("entering the staging tmpfs")?;
    make_dev(Path::new("dev"))?;
    // The kernel lets a user namespace mount a proc only where one is fully visible already:
    // the host's, until the init's pivot drops the staging root with it.
    let proc = Path::new("proc");
    ensure_dir(proc)?;
    rustix::mount::mount_bind_recursive("/proc", proc).context("binding the host's /proc")?;
    ensure_dir(Path::new(ROOT.trim_start_matches('/')))?;
    pivot()
}

/// At the spawn: attaches the env's root `tree` (a detached mount) on [`ROOT`] and enters it.
pub fn attach(tree: OwnedFd) -> Result<()> {
    use rustix::mount::{move_mount, MoveMountFlags};
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH;
    move_mount(&tree, "", rustix::fs::CWD, ROOT, flags).context("attaching the env's root")?;
    rustix::process::fchdir(&tree).context("entering the env's root")
}

/// In the init (its root is the working directory, [`attach`]ed): moves the staged `/dev`
/// onto the root, mounts /proc and pivots into it.
pub fn setup() -> Result<()> {
    use rustix::mount::{move_mount, MoveMountFlags};
    let dev = Path::new("dev");
    ensure_dir(dev)?;
    move_mount(
        rustix::fs::CWD,
        "/dev",
        rustix::fs::CWD,
        dev,
        MoveMountFlags::empty(),
    )
    .context("moving /dev onto the env's root")?;
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
