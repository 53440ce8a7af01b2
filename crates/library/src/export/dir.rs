//! Exporting a snapshot to a new directory, restoring every piece of metadata the library keeps.
//!
//! Directories, symlinks and device nodes are made by one walking thread while a pool of
//! workers writes file contents; hardlinks are made once every file exists, and directory
//! metadata last, deepest first, so that creating children does not disturb parents' mtimes.
//! On failure the partly written destination is removed.
//!
//! With a [`FileSource`] (a node's file cache of whole files, already decompressed), a file's
//! contents are copied from there (`copy_file_range` where the kernel can) instead of being
//! read, decompressed and verified object by object; a cached file whose size is not the
//! file's, or whose bytes do not hash to its score, is ignored and the library is read instead.

use crate::pack::ObjectKind;
use crate::progress::Progress;
use crate::tree::{Content, Entry, FileData, Meta};
use crate::{file, Error, Library, Result, Score, Snapshot};
use crossbeam_channel::bounded;
use rustix::fs::{AtFlags, Mode, Timestamps, CWD};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Exported {
    /// Entries created (files, directories, links, nodes).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Of those, bytes copied from the [`FileSource`].
    pub bytes_from_source: u64,
}

/// A file's contents as a [`FileSource`] has them.
pub struct Materialized {
    /// An open file holding the contents.
    pub file: File,
    /// Whether the source checked these bytes against the score. If so the export only checks
    /// the size; if not, it re-hashes them (every chunk, for a chunked file) before copying.
    pub verified: bool,
}

/// Already-materialized file contents by score, e.g. a node's file cache (the library does not
/// know about caches: the caller supplies this).
pub trait FileSource: Sync {
    /// The contents of the file whose data is `data` (named by `score`: the blob, or the chunk
    /// list of a chunked file), or `None` to read them from the library.
    fn open(&self, lib: &Library, score: &Score, data: &FileData) -> Option<Materialized>;
}

struct FileJob {
    path: PathBuf,
    meta: Meta,
    size: u64,
    data: FileData,
}

/// Walk state: hardlinks to make at the end, directories to finish, counts.
#[derive(Default)]
struct Plan {
    first_of_group: HashMap<[u8; 16], PathBuf>,
    links: Vec<(PathBuf, PathBuf)>,
    dirs: Vec<(PathBuf, Meta)>,
    entries: u64,
}

/// Writes `snap` into `dest`, which must not exist or be an empty directory.
pub fn export_dir(
    lib: &Library,
    snap: &Snapshot,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<Exported> {
    export_dir_from(lib, snap, dest, progress, None)
}

/// [`export_dir`], copying file contents from `source` where it has them.
pub fn export_dir_from(
    lib: &Library,
    snap: &Snapshot,
    dest: &Path,
    progress: &dyn Progress,
    source: Option<&dyn FileSource>,
) -> Result<Exported> {
    let created = prepare_dest(dest)?;
    progress.total(snap.bytes());
    let result = write_all(lib, snap, dest, progress, source);
    if result.is_err() {
        cleanup(dest, created);
    }
    result
}

fn prepare_dest(dest: &Path) -> Result<bool> {
    match fs::read_dir(dest).map(|d| d.count()) {
        Ok(0) => Ok(false),
        Ok(_) => Err(Error::BadInput(format!(
            "{} is not empty; export into a new directory",
            dest.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(dest).map_err(|e| Error::io("creating", dest, e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io("opening", dest, e)),
    }
}

fn cleanup(dest: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(dest);
    } else if let Ok(d) = fs::read_dir(dest) {
        for e in d.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

fn write_all(
    lib: &Library,
    snap: &Snapshot,
    dest: &Path,
    progress: &dyn Progress,
    source: Option<&dyn FileSource>,
) -> Result<Exported> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = bounded::<FileJob>(256);
    let mut plan = Plan::default();
    let (bytes, bytes_from_source) = std::thread::scope(|s| -> Result<(u64, u64)> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || -> Result<(u64, u64)> {
                    let (mut n, mut copied) = (0, 0);
                    for job in rx {
                        let (written, from_source) = write_file(lib, &job, source)?;
                        progress.bytes(written);
                        n += written;
                        copied += if from_source { written } else { 0 };
                    }
                    Ok((n, copied))
                })
            })
            .collect();
        drop(rx);
        let walked = walk(lib, &snap.tree(), dest, &mut plan, &mut |job| {
            tx.send(job)
                .map_err(|_| Error::BadInput("export stopped".into()))
        });
        drop(tx);
        let mut total = (0, 0);
        for h in handles {
            let (n, copied) = h.join().expect("export worker panicked")?;
            total = (total.0 + n, total.1 + copied);
        }
        walked.map(|()| total)
    })?;
    for (link, target) in &plan.links {
        fs::hard_link(target, link).map_err(|e| Error::io("linking", link, e))?;
    }
    for (path, meta) in plan.dirs.iter().rev() {
        set_meta(path, meta, false)?;
    }
    set_meta(dest, &snap.root.meta, false)?;
    Ok(Exported {
        entries: plan.entries,
        bytes,
        bytes_from_source,
    })
}

fn walk(
    lib: &Library,
    tree: &Score,
    dir: &Path,
    plan: &mut Plan,
    send: &mut dyn FnMut(FileJob) -> Result<()>,
) -> Result<()> {
    for e in lib.tree(tree)?.entries {
        let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
        plan.entries += 1;
        if let Some(tag) = e.link {
            if let Some(first) = plan.first_of_group.get(&tag) {
                plan.links.push((path, first.clone()));
                continue;
            }
            plan.first_of_group.insert(tag, path.clone());
        }
        create(lib, e, path, plan, send)?;
    }
    Ok(())
}

fn create(
    lib: &Library,
    e: Entry,
    path: PathBuf,
    plan: &mut Plan,
    send: &mut dyn FnMut(FileJob) -> Result<()>,
) -> Result<()> {
    let node = |kind: rustix::fs::FileType, rdev: u64| {
        rustix::fs::mknodat(CWD, &path, kind, Mode::from_raw_mode(0o600), rdev)
            .map_err(|err| Error::io("creating", &path, err.into()))
    };
    match e.content {
        Content::File { size, data } => {
            return send(FileJob {
                path,
                meta: e.meta,
                size,
                data,
            })
        }
        Content::Dir { tree, .. } => {
            fs::create_dir(&path).map_err(|err| Error::io("creating", &path, err))?;
            walk(lib, &tree, &path, plan, send)?;
            plan.dirs.push((path, e.meta));
            return Ok(());
        }
        Content::Symlink(target) => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                .map_err(|err| Error::io("creating", &path, err))?
        }
        Content::CharDev(rdev) => node(rustix::fs::FileType::CharacterDevice, rdev)?,
        Content::BlockDev(rdev) => node(rustix::fs::FileType::BlockDevice, rdev)?,
        Content::Fifo => node(rustix::fs::FileType::Fifo, 0)?,
    }
    let symlink = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    set_meta(&path, &e.meta, symlink)
}

/// Creates one file with its contents and metadata; returns its bytes and whether they came
/// from the source.
fn write_file(
    lib: &Library,
    job: &FileJob,
    source: Option<&dyn FileSource>,
) -> Result<(u64, bool)> {
    let shown = job.path.display().to_string();
    let f = File::options()
        .write(true)
        .create_new(true)
        .open(&job.path)
        .map_err(|e| Error::io("creating", &job.path, e))?;
    let copied = match source {
        Some(src) => copy_from_source(lib, src, job, &f)?,
        None => false,
    };
    // Each object is written with one write call: no buffering needed.
    let n = if copied {
        job.size
    } else {
        file::write_file(lib, &job.data, &f, &shown)?
    };
    let m = &job.meta;
    let io = |what, e: rustix::io::Errno| Error::io(what, &job.path, e.into());
    rustix::fs::fchown(&f, Some(uid(m.uid)), Some(gid(m.gid)))
        .map_err(|e| io("changing owner of", e))?;
    rustix::fs::fchmod(&f, Mode::from_raw_mode(m.mode)).map_err(|e| io("changing mode of", e))?;
    for (k, v) in &m.xattrs {
        rustix::fs::fsetxattr(&f, k.as_slice(), v, rustix::fs::XattrFlags::empty())
            .map_err(|e| io("setting xattr on", e))?;
    }
    rustix::fs::futimens(&f, &times(m)).map_err(|e| io("setting times of", e))?;
    Ok((n, copied))
}

/// The contents of a file of `size` bytes whose data is `data`, from `src`, if it has them with
/// the right size and (unless the source verified them) the right hash: `None` means read the
/// library. `path` names the file in warnings. The file is read from its start.
pub(crate) fn from_source(
    lib: &Library,
    src: &dyn FileSource,
    data: &FileData,
    size: u64,
    path: &str,
) -> Result<Option<File>> {
    let score = match data {
        FileData::Empty => return Ok(None),
        FileData::Blob(s) | FileData::Chunks(s) => *s,
    };
    let Some(m) = src.open(lib, &score, data) else {
        return Ok(None);
    };
    if m.file.metadata().map(|md| md.len()).ok() != Some(size) {
        tracing::warn!(%score, %path, "cached file has the wrong size; reading the library");
        return Ok(None);
    }
    if !m.verified && !matches_score(lib, data, size, &m.file)? {
        tracing::warn!(%score, %path, "cached file does not match its score; reading the library");
        return Ok(None);
    }
    Ok(Some(m.file))
}

/// Copies the job's contents from `src` into the new, empty `dest` if the source has them
/// (see [`from_source`]); returns whether it did. A copy that fails half-way is an error (the
/// export is then removed).
fn copy_from_source(
    lib: &Library,
    src: &dyn FileSource,
    job: &FileJob,
    dest: &File,
) -> Result<bool> {
    let shown = job.path.display().to_string();
    let Some(file) = from_source(lib, src, &job.data, job.size, &shown)? else {
        return Ok(false);
    };
    // std's copy uses copy_file_range (then sendfile, then read/write) for file to file.
    let copied = std::io::copy(&mut (&file).take(job.size), &mut &*dest)
        .map_err(|e| Error::io("copying into", &job.path, e))?;
    if copied != job.size {
        return Err(Error::BadInput(format!(
            "{}: the cached copy shrank while being copied; export again",
            job.path.display()
        )));
    }
    Ok(true)
}

/// Whether `f` holds exactly the `size` bytes of `data`: the whole file hashes to the blob's
/// score, or each chunk's range to the chunk's score.
fn matches_score(lib: &Library, data: &FileData, size: u64, f: &File) -> Result<bool> {
    let pieces = match data {
        FileData::Empty => return Ok(size == 0),
        FileData::Blob(s) => vec![(*s, size)],
        FileData::Chunks(s) => file::decode_chunks(&lib.get_kind(s, ObjectKind::ChunkList)?)?
            .into_iter()
            .map(|(s, len)| (s, u64::from(len)))
            .collect(),
    };
    let mut buf = vec![0u8; (size.min(1 << 20)) as usize];
    let mut at = 0u64;
    for (want, len) in pieces {
        let mut h = blake3::Hasher::new();
        let end = at + len;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            match f.read_at(&mut buf[..n], at) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    h.update(&buf[..n]);
                    at += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(false),
            }
        }
        if Score(*h.finalize().as_bytes()) != want {
            return Ok(false);
        }
    }
    Ok(at == size)
}

/// Applies owner, mode, xattrs and mtime to a path without following it if it is a symlink.
fn set_meta(path: &Path, m: &Meta, symlink: bool) -> Result<()> {
    let io = |what, e: rustix::io::Errno| Error::io(what, path, e.into());
    rustix::fs::chownat(
        CWD,
        path,
        Some(uid(m.uid)),
        Some(gid(m.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io("changing owner of", e))?;
    if !symlink {
        rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(m.mode), AtFlags::empty())
            .map_err(|e| io("changing mode of", e))?;
    }
    for (k, v) in &m.xattrs {
        rustix::fs::lsetxattr(path, k.as_slice(), v, rustix::fs::XattrFlags::empty())
            .map_err(|e| io("setting xattr on", e))?;
    }
    rustix::fs::utimensat(CWD, path, &times(m), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io("setting times of", e))
}

fn times(m: &Meta) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: m.mtime_sec,
        tv_nsec: m.mtime_nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid(u: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u)
}

fn gid(g: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(g)
}
