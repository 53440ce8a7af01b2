//! Mounts of an env, shared by both sides: [`mount`] and [`ensure_dir`] (which the init also
//! uses inside, `inside::rootfs`), and the host side's mounts, all under the env's
//! directory `DATA/envs/<env>/`:
//!
//! ```text
//! rw/            the write layer: a tmpfs, or an ext4 image (disk.img) on a loop device
//! rw/upper       the overlay upper (owned by the env's root), rw/work its workdir
//! lower/         an idmapped, read-only bind of the lower directory (when it is not shifted)
//! root/          the overlay: the env's root filesystem
//! ```
//!
//! Lower owners must look, from the host, like the env's ids (in-snapshot uid + the range
//! start). A snapfs mount does that itself (`--uid-offset`); a plain directory (an export) is
//! bind-mounted with an id mapping (`mount_setattr(MOUNT_ATTR_IDMAP)`) taken from the env's
//! user namespace, so nothing is copied or chowned.

use crate::error::{fail, Context, Result};
use rustix::fd::{AsFd, AsRawFd};
use rustix::mount::{MountFlags, UnmountFlags};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Mounts a tmpfs of `size` bytes at `dir` whose root belongs to `uid:gid`.
pub fn mount_tmpfs(dir: &Path, size: u64, uid: u32, gid: u32) -> Result<()> {
    let opts = format!("size={size},mode=0755,uid={uid},gid={gid}");
    mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        &opts,
    )
    .with_context(|| format!("mounting a tmpfs on {}", dir.display()))
}

/// Creates a sparse ext4 image of `size` bytes at `image` (mode 0600; root owned by `uid:gid`)
/// and mounts it at `dir` through a loop device that is freed when the mount goes (autoclear).
pub fn mount_disk(image: &Path, dir: &Path, size: u64, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {}", image.display()))?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg(format!("root_owner={uid}:{gid},lazy_itable_init=1"))
        .arg(image))?;
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
        .arg(image)
        .arg(dir))
}

/// mount(2) of a filesystem of type `fstype` with the option string `data`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> std::io::Result<()> {
    let data = std::ffi::CString::new(data).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    Ok(rustix::mount::mount(
        source,
        target,
        fstype,
        flags,
        Some(data.as_c_str()),
    )?)
}

/// Runs a host tool, failing with its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        fail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The kernel's `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY`, `_NOSUID`, `_NODEV` and `_IDMAP` from linux/mount.h.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Bind-mounts `src` read-only, nosuid and nodev at `dst`, with ids mapped through the user
/// namespace `userns` (an open `/proc/PID/ns/user`): in-snapshot id N is seen as host id N +
/// range start.
pub fn idmapped_bind(src: &Path, dst: &Path, userns: impl AsFd) -> Result<()> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags};
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .with_context(|| format!("cloning mount of {}", src.display()))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_fd().as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) with a valid fd, a NUL-terminated empty path and a pointer to a
    // correctly sized, initialised `struct mount_attr` that outlives the call. rustix has no
    // wrapper for this syscall.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("id-mapping {} (mount_setattr)", src.display()));
    }
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .with_context(|| format!("attaching id-mapped {} at {}", src.display(), dst.display()))
}

/// Mounts the overlay `root` = `lower` + `upper` (workdir `work`), with the options the
/// library's diff-apply requires (no redirect_dir, no metacopy, no index, no xino), `nodev`
/// (a device node in a snapshot opens nothing, in the env or on the host) and `nosuid` (a
/// setuid file of the env gives no host user its owner's id).
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, root: &Path) -> Result<()> {
    for p in [lower, upper, work] {
        let s = p.to_str().context("non-UTF-8 overlay path")?;
        if s.contains([',', ':', '\\']) {
            fail!("overlay layer path {s:?} contains ',', ':' or '\\'");
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off,xino=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    let flags = MountFlags::NOSUID | MountFlags::NODEV;
    mount("overlay", root, "overlay", flags, &opts)
        .with_context(|| format!("mounting the overlay on {}", root.display()))
}

/// Mount points at or below `dir`, in mount order (from `/proc/self/mountinfo`).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_path)
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// A mount point as `/proc/self/mountinfo` prints it, unescaped.
pub(crate) fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(unescape(field))
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or below `dir`, last mounted first; busy mounts are detached.
/// Fails if anything is still mounted there afterwards.
pub fn unmount_under(dir: &Path) -> Result<()> {
    for m in mounts_under(dir)?.iter().rev() {
        if rustix::mount::unmount(m, UnmountFlags::NOFOLLOW).is_err() {
            // Already gone (EINVAL) or busy: detach; the check below catches real failures.
            let _ = rustix::mount::unmount(m, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
        }
    }
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        fail!("still mounted after unmounting: {left:?}");
    }
    Ok(())
}

/// Creates `dir` (mode 0755) if it is missing.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("creating {}", dir.display()))
            .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b/c\\134d"), "/a b/c\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }

    #[test]
    fn overlay_refuses_option_separators_in_paths() {
        let bad = Path::new("/x,upperdir=/etc");
        let ok = Path::new("/tmp");
        assert!(mount_overlay(bad, ok, ok, ok).is_err());
    }
}
