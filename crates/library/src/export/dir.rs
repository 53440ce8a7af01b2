//! Exporting a snapshot to a new directory, restoring every piece of metadata the library keeps.
//!
//! Directories, symlinks and device nodes are made by one walking thread while a pool of
//! workers writes file contents; hardlinks are made once every file exists, and directory
//! metadata last, deepest first, so that creating children does not disturb parents' mtimes.
//! On failure the partly written destination is removed.

use crate::progress::Progress;
use crate::tree::{Content, Entry, FileData, Meta};
use crate::{file, Error, Library, Result, Score, Snapshot};
use crossbeam_channel::bounded;
use rustix::fs::{AtFlags, Mode, Timestamps, CWD};
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Exported {
    /// Entries created (files, directories, links, nodes).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
}

struct FileJob {
    path: PathBuf,
    meta: Meta,
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
    let created = prepare_dest(dest)?;
    progress.total(snap.bytes());
    let result = write_all(lib, snap, dest, progress);
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
) -> Result<Exported> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = bounded::<FileJob>(256);
    let mut plan = Plan::default();
    let bytes = std::thread::scope(|s| -> Result<u64> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || -> Result<u64> {
                    let mut n = 0;
                    for job in rx {
                        let written = write_file(lib, &job)?;
                        progress.bytes(written);
                        n += written;
                    }
                    Ok(n)
                })
            })
            .collect();
        drop(rx);
        let walked = walk(lib, &snap.tree(), dest, &mut plan, &mut |job| {
            tx.send(job)
                .map_err(|_| Error::BadInput("export stopped".into()))
        });
        drop(tx);
        let mut total = 0;
        for h in handles {
            total += h.join().expect("export worker panicked")?;
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
        Content::File { data, .. } => {
            return send(FileJob {
                path,
                meta: e.meta,
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

fn write_file(lib: &Library, job: &FileJob) -> Result<u64> {
    let shown = job.path.display().to_string();
    let f = File::options()
        .write(true)
        .create_new(true)
        .open(&job.path)
        .map_err(|e| Error::io("creating", &job.path, e))?;
    // Each object is written with one write call: no buffering needed.
    let n = file::write_file(lib, &job.data, &f, &shown)?;
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
    Ok(n)
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
