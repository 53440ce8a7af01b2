//! Diff-apply: a parent snapshot plus an overlayfs upper directory makes the child snapshot.
//!
//! Only the upper directory is read, so the cost follows what changed, not the parent's size:
//! each directory present in the upper is merged with the parent's tree for that directory,
//! and every untouched subtree keeps its stored score. Overlay conventions:
//! - a character device 0/0 is a whiteout: the name is removed;
//! - a directory with `trusted.overlay.opaque=y` replaces the parent's directory instead of
//!   merging with it;
//! - `trusted.overlay.*` xattrs are overlay bookkeeping and are not stored. Environments'
//!   overlays are mounted by host root without `userxattr`, so the kernel interprets only the
//!   `trusted.` ones (which an environment cannot set); `user.overlay.*` xattrs an environment
//!   sets on its files are plain data to the kernel, and so they are here: stored like any other
//!   xattr, never read as a redirect, an opaque mark or a metacopy;
//! - renamed directories (`redirect_dir`) and metadata-only copy-ups (`metacopy`) are refused:
//!   environments mount their overlays with both off.
//!
//! The upper is read with the safe walker (`openat2` beneath the upper, no symlink followed,
//! no device or FIFO opened), so hostile content written by an environment cannot make the
//! host read outside the upper directory or block.

use crate::build::{Dir, Node};
use crate::import::ingest::{self, Ingest};
use crate::import::{ImportOptions, Imported};
use crate::tree::{Content, Entry, Meta};
use crate::walk::{self, meta_of, MAX_DEPTH};
use crate::{Error, Library, Result, Score};
use rustix::fd::OwnedFd;
use rustix::fs::FileType;
use std::path::Path;
use std::sync::Arc;

/// A user-namespace mapping to undo: host ids `host_uid..host_uid+count` are ids `0..count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdShift {
    /// Host uid that stands for uid 0 inside.
    pub host_uid: u32,
    /// Host gid that stands for gid 0 inside.
    pub host_gid: u32,
    /// Number of ids mapped.
    pub count: u32,
}

/// Makes the child of `parent` by applying the overlay upper directory `upper` to it.
///
/// The new snapshot's parent is `parent` (`opts.parent` is ignored). With `shift`, owners in
/// the upper are host ids of a user namespace and are mapped back to the ids seen inside.
pub fn apply_upper(
    lib: &Library,
    parent: Score,
    upper: &Path,
    opts: &ImportOptions,
    shift: Option<IdShift>,
) -> Result<Imported> {
    let base = lib.snapshot(&parent)?;
    let root_fd = Arc::new(walk::open_root(upper)?);
    let shown = upper.display().to_string();
    let st = rustix::fs::fstat(&*root_fd)
        .map_err(|e| Error::io("reading metadata of", upper, e.into()))?;
    let xattrs = walk::fd_xattrs(&*root_fd, &shown)?;
    let apply = Apply { lib, shift };
    let root_meta = apply.meta(&st, xattrs.clone(), &shown)?;
    opts.progress.phase("storing changes");
    let (mut root, warnings) = ingest::run(lib, opts, |ing| {
        apply.dir(ing, Some(&base.root), &root_fd, &xattrs, &shown, 0)
    })?;
    root.meta = root_meta;
    crate::import::commit(lib, &root, opts, Some(parent), warnings)
}

struct Apply<'a> {
    lib: &'a Library,
    shift: Option<IdShift>,
}

/// The prefix of the xattrs the kernel's overlayfs keeps its bookkeeping in (mounted without
/// `userxattr`, as environments' overlays are).
const OVERLAY_XATTRS: &[u8] = b"trusted.overlay.";

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(OVERLAY_XATTRS)
}

fn overlay_xattr<'x>(xattrs: &'x [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'x [u8]> {
    xattrs
        .iter()
        .find(|(k, _)| k.strip_prefix(OVERLAY_XATTRS) == Some(key))
        .map(|(_, v)| v.as_slice())
}

impl Apply<'_> {
    fn dir(
        &self,
        ing: &mut Ingest,
        lower: Option<&Entry>,
        fd: &Arc<OwnedFd>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        path: &str,
        depth: usize,
    ) -> Result<Dir> {
        if depth >= MAX_DEPTH {
            return Err(Error::BadInput(format!(
                "{path}: directories nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let opaque = overlay_xattr(xattrs, b"opaque") == Some(b"y");
        let mut out = match lower {
            Some(Entry {
                content: Content::Dir { tree, .. },
                ..
            }) if !opaque => Dir::from_tree(Meta::default(), self.lib.tree(tree)?),
            _ => Dir::default(),
        };
        for mut e in walk::list(fd, path)? {
            let child = walk::child(path, &e.name);
            let ft = e.file_type();
            if ft == FileType::CharacterDevice && e.stat.st_rdev == 0 {
                out.children.remove(&e.name);
                continue;
            }
            if ft == FileType::Directory {
                let sub_fd = Arc::new(walk::open_dir(fd, &e.name, &child)?);
                let sub_x = walk::fd_xattrs(&*sub_fd, &child)?;
                let below = match out.children.get(&e.name) {
                    Some(Node::Stored(s)) => Some(s.clone()),
                    _ => None,
                };
                let mut sub = self.dir(ing, below.as_ref(), &sub_fd, &sub_x, &child, depth + 1)?;
                sub.meta = self.meta(&e.stat, sub_x, &child)?;
                out.children.insert(e.name, Node::Dir(sub));
                continue;
            }
            let meta = self.meta(&e.stat, std::mem::take(&mut e.xattrs), &child)?;
            let name = e.name.clone();
            match ing.leaf(fd, e, meta, &child)? {
                Some(node) => out.children.insert(name, node),
                None => out.children.remove(&name),
            };
        }
        Ok(out)
    }

    /// Metadata to store for an upper entry: overlay xattrs dropped, ids shifted back.
    fn meta(
        &self,
        st: &rustix::fs::Stat,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        path: &str,
    ) -> Result<Meta> {
        for key in [&b"redirect"[..], b"metacopy"] {
            if overlay_xattr(&xattrs, key).is_some() {
                return Err(Error::BadInput(format!(
                    "{path} uses overlay {}; environments must mount with redirect_dir=off,metacopy=off",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        let kept = xattrs
            .into_iter()
            .filter(|(k, _)| !is_overlay_xattr(k))
            .collect();
        let mut meta = meta_of(st, kept);
        if let Some(s) = self.shift {
            let map = |id: u32, base: u32, what: &str| {
                id.checked_sub(base).filter(|i| *i < s.count).ok_or_else(|| {
                    Error::BadInput(format!("{path} is owned by host {what} {id}, outside the environment's id range"))
                })
            };
            meta.uid = map(meta.uid, s.host_uid, "uid")?;
            meta.gid = map(meta.gid, s.host_gid, "gid")?;
        }
        Ok(meta)
    }
}
