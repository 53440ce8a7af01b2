//! Safe directory reading: every lookup is relative to an already-open directory, no symlink is
//! ever followed and no device or FIFO is ever opened.
//!
//! Used for trusted imports and for hostile overlay upper directories alike: a directory is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from its parent's descriptor, a
//! regular file first as `O_PATH | O_NOFOLLOW`, checked with `fstat`, and only then re-opened
//! for reading through `/proc/self/fd`, so a name swapped for a FIFO or a symlink between the
//! listing and the read can neither hang the reader nor lead it outside the tree.

use crate::tree::Meta;
use crate::{Error, Result};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Directories nested deeper than this are refused (each level holds one descriptor).
pub(crate) const MAX_DEPTH: usize = 1024;

/// One entry of a directory listing: its name, `lstat` and xattrs.
pub(crate) struct RawEntry {
    pub(crate) name: Vec<u8>,
    pub(crate) stat: Stat,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    pub(crate) fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

/// Builds entry metadata from an `lstat` result and xattrs.
pub(crate) fn meta_of(st: &Stat, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs,
    }
}

fn io_err(what: &'static str, path: &str, e: rustix::io::Errno) -> Error {
    Error::io(what, path, std::io::Error::from(e))
}

/// Raises the soft open-files limit to the hard limit (deep trees hold one fd per level).
pub(crate) fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// Opens the root directory of a walk (the caller's path may itself be a symlink).
pub(crate) fn open_root(path: &Path) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(path, flags, Mode::empty())
        .map_err(|e| io_err("opening directory", &path.display().to_string(), e))
}

/// Opens the subdirectory `name` of `dir` without following any symlink.
pub(crate) fn open_dir(dir: &OwnedFd, name: &[u8], path: &str) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve)
        .map_err(|e| io_err("opening directory", path, e))
}

/// Lists `dir`: every entry but `.` and `..`, with `lstat` and xattrs, in no particular order.
pub(crate) fn list(dir: &OwnedFd, path: &str) -> Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    let entries = rustix::fs::Dir::read_from(dir).map_err(|e| io_err("listing", path, e))?;
    for ent in entries {
        let ent = ent.map_err(|e| io_err("listing", path, e))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("reading metadata of", &child(path, name), e))?;
        let xattrs = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            Vec::new() // read from the directory's own descriptor when it is opened
        } else {
            let proc_path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            let full = [proc_path.as_slice(), name].concat();
            path_xattrs(std::ffi::OsStr::from_bytes(&full), &child(path, name))?
        };
        out.push(RawEntry {
            name: name.to_vec(),
            stat,
            xattrs,
        });
    }
    Ok(out)
}

/// `path/name` for messages.
pub(crate) fn child(path: &str, name: &[u8]) -> String {
    format!(
        "{}/{}",
        path.trim_end_matches('/'),
        String::from_utf8_lossy(name)
    )
}

/// The xattrs of an open file or directory, sorted by name.
pub(crate) fn fd_xattrs(fd: impl AsFd, path: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let fd = fd.as_fd();
    let names = xattr_names(|buf| rustix::fs::flistxattr(fd, buf), path)?;
    collect_xattrs(
        &names,
        |name, val| rustix::fs::fgetxattr(fd, name, val),
        path,
    )
}

fn path_xattrs(p: &std::ffi::OsStr, path: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = xattr_names(|buf| rustix::fs::llistxattr(p, buf), path)?;
    collect_xattrs(
        &names,
        |name, val| rustix::fs::lgetxattr(p, name, val),
        path,
    )
}

/// The NUL-separated xattr names `list` returns, in a buffer grown only when needed (most
/// files have none, and zeroing a large buffer per file is a measurable share of an import).
fn xattr_names(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    path: &str,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match list(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => {
                buf = vec![0u8; buf.len() * 16];
            }
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing xattrs of", path, e)),
        }
    }
}

fn collect_xattrs(
    names: &[u8],
    get: impl Fn(&std::ffi::CStr, &mut [u8]) -> rustix::io::Result<usize>,
    path: &str,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if names.is_empty() {
        return Ok(out);
    }
    let mut val = vec![0u8; 65536];
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).expect("split on NUL");
        match get(&cname, &mut val) {
            Ok(n) => out.push((name.to_vec(), val[..n].to_vec())),
            Err(rustix::io::Errno::NODATA) => {} // removed since listing
            Err(e) => return Err(io_err("reading xattrs of", path, e)),
        }
    }
    out.sort();
    Ok(out)
}

/// Opens the regular file `name` in `dir` for reading, refusing anything that is not the
/// regular file `expect` described (same device and inode).
pub(crate) fn open_file(dir: &OwnedFd, name: &[u8], expect: &Stat, path: &str) -> Result<File> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let pinned = rustix::fs::openat(dir, name, flags, Mode::empty())
        .map_err(|e| io_err("opening", path, e))?;
    let st = rustix::fs::fstat(&pinned).map_err(|e| io_err("reading metadata of", path, e))?;
    let same = st.st_dev == expect.st_dev && st.st_ino == expect.st_ino;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || !same {
        return Err(Error::BadInput(format!(
            "{path} changed while being read; try again"
        )));
    }
    let proc = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let fd = rustix::fs::open(
        proc.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("opening", path, e))?;
    Ok(File::from(fd))
}

/// Reads a symlink's target without following it.
pub(crate) fn read_link(dir: &OwnedFd, name: &[u8], path: &str) -> Result<Vec<u8>> {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|t| t.into_bytes())
        .map_err(|e| io_err("reading link", path, e))
}
