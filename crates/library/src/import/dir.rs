//! Importing a directory tree (see the module docs of `import`).

use super::ingest::{self, Ingest};
use super::{ImportOptions, Imported};
use crate::build::{Dir, Node};
use crate::walk::{self, meta_of, MAX_DEPTH};
use crate::{Error, Library, Result};
use rustix::fd::OwnedFd;
use rustix::fs::FileType;
use std::path::Path;
use std::sync::Arc;

/// Imports the directory at `path` as a new snapshot, storing only objects not yet stored.
///
/// Symlinks inside the tree are stored, never followed; sockets (and device nodes unless
/// `opts.allow_devices`) are skipped with a warning.
pub fn import_dir(lib: &Library, path: &Path, opts: &ImportOptions) -> Result<Imported> {
    let root_fd = Arc::new(walk::open_root(path)?);
    let shown = path.display().to_string();
    let st = rustix::fs::fstat(&*root_fd)
        .map_err(|e| Error::io("reading metadata of", path, e.into()))?;
    let xattrs = walk::fd_xattrs(&*root_fd, &shown)?;
    opts.progress.phase("storing files");
    let (mut root, warnings) = ingest::run(lib, opts, |ing| walk_dir(ing, &root_fd, &shown, 0))?;
    root.meta = meta_of(&st, xattrs);
    super::commit(lib, &root, opts, opts.parent, warnings)
}

fn walk_dir(ing: &mut Ingest, dir: &Arc<OwnedFd>, path: &str, depth: usize) -> Result<Dir> {
    if depth >= MAX_DEPTH {
        return Err(Error::BadInput(format!(
            "{path}: directories nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut out = Dir::default();
    let mut entries = walk::list(dir, path)?;
    // In name order, as export reads them: files stored together share compressed frames.
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    for mut e in entries {
        let child = walk::child(path, &e.name);
        let name = e.name.clone();
        let node = if e.file_type() == FileType::Directory {
            let fd = Arc::new(walk::open_dir(dir, &e.name, &child)?);
            let xattrs = walk::fd_xattrs(&*fd, &child)?;
            let mut sub = walk_dir(ing, &fd, &child, depth + 1)?;
            sub.meta = meta_of(&e.stat, xattrs);
            Some(Node::Dir(sub))
        } else {
            let meta = meta_of(&e.stat, std::mem::take(&mut e.xattrs));
            ing.leaf(dir, e, meta, &child)?
        };
        if let Some(node) = node {
            out.children.insert(name, node);
        }
    }
    Ok(out)
}
