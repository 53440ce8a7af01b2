//! Entry metadata as the kernel sees it: `FileAttr` from a library entry.
//!
//! `st_ino` is the node id (all members of a hardlink group share one, see [`crate::nodes`]).
//! A hardlinked file reports `st_nlink` 2
//! (the exact group size is not known without walking the whole snapshot; 2 says "linked" to
//! tools like tar and rsync, which then match members by inode number); other files 1, and
//! directories 1 (the btrfs/"unknown" convention: `find` then does not assume leaf counts).

use crate::nodes::Node;
use fuser::{FileAttr, FileType, INodeNo};
use library::Content;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The kernel's file type for an entry.
pub fn kind(c: &Content) -> FileType {
    match c {
        Content::File { .. } => FileType::RegularFile,
        Content::Dir { .. } => FileType::Directory,
        Content::Symlink(_) => FileType::Symlink,
        Content::CharDev(_) => FileType::CharDevice,
        Content::BlockDev(_) => FileType::BlockDevice,
        Content::Fifo => FileType::NamedPipe,
    }
}

/// A glibc `dev_t` in the kernel's "new" 32-bit encoding, which FUSE attributes carry.
fn kernel_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

/// The attributes of `node`, owners shifted up by `id_offset`.
pub fn attr(node: &Node, id_offset: u32) -> FileAttr {
    let e = &node.entry;
    let size = match &e.content {
        Content::File { size, .. } => *size,
        Content::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    let rdev = match &e.content {
        Content::CharDev(d) | Content::BlockDev(d) => kernel_rdev(*d),
        _ => 0,
    };
    let t = time(e.meta.mtime_sec, e.meta.mtime_nsec);
    FileAttr {
        ino: INodeNo(node.id),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: kind(&e.content),
        perm: (e.meta.mode & 0o7777) as u16,
        nlink: if e.link.is_some() { 2 } else { 1 },
        uid: e.meta.uid.saturating_add(id_offset),
        gid: e.meta.gid.saturating_add(id_offset),
        rdev,
        blksize: 4096,
        flags: 0,
    }
}
