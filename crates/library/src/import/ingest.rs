//! The shared machinery of directory imports and overlay diff-apply: a pool of workers that
//! store file contents in parallel while one thread walks the tree, and the conversion of
//! non-directory entries into tree nodes.

use crate::build::{FileSlot, Node};
use crate::import::ImportOptions;
use crate::progress::Progress;
use crate::tree::{Content, Entry, FileData, Meta};
use crate::walk::{self, RawEntry};
use crate::{file, Error, Library, Result};
use crossbeam_channel::{bounded, Sender};
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Stat};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// One regular file to store.
struct Job {
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    stat: Stat,
    path: String,
    slot: FileSlot,
}

/// Walk state: where file jobs go, hardlink groups seen so far, and warnings.
pub(crate) struct Ingest {
    jobs: Sender<Job>,
    links: HashMap<(u64, u64), u64>,
    /// Whether device nodes are kept ([`crate::import::ImportOptions::allow_devices`]).
    allow_devices: bool,
    /// Lines for the user about skipped entries.
    pub(crate) warnings: Vec<String>,
}

/// Runs `walk` on the calling thread with a pool of workers storing the files it finds,
/// reporting to `opts.progress` and keeping devices if `opts.allow_devices`.
///
/// Returns once every file job has finished. If `walk` fails, queued jobs are dropped.
pub(crate) fn run<R>(
    lib: &Library,
    opts: &ImportOptions,
    walk: impl FnOnce(&mut Ingest) -> Result<R>,
) -> Result<(R, Vec<String>)> {
    let progress = opts.progress;
    walk::raise_fd_limit();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = bounded::<Job>(256);
    let cancelled = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..workers {
            let rx = rx.clone();
            let cancelled = &cancelled;
            s.spawn(move || {
                for job in rx {
                    let result = if cancelled.load(Ordering::Relaxed) {
                        Err(Error::BadInput("cancelled".into()))
                    } else {
                        store_job(lib, &job, progress)
                    };
                    let _ = job.slot.set(result);
                }
            });
        }
        let mut ingest = Ingest {
            jobs: tx,
            links: HashMap::new(),
            allow_devices: opts.allow_devices,
            warnings: Vec::new(),
        };
        let result = walk(&mut ingest);
        if result.is_err() {
            cancelled.store(true, Ordering::Relaxed);
        }
        let Ingest { jobs, warnings, .. } = ingest;
        drop(jobs);
        result.map(|r| (r, warnings))
    })
}

fn store_job(lib: &Library, job: &Job, progress: &dyn Progress) -> Result<(u64, FileData)> {
    let f = walk::open_file(&job.dir, &job.name, &job.stat, &job.path)?;
    let stored = file::store_file(lib, f, job.stat.st_size as u64, &job.path)?;
    progress.bytes(stored.0);
    Ok(stored)
}

impl Ingest {
    /// Turns a non-directory entry of `dir` into a node (queueing a file job for regular files).
    ///
    /// Returns `None` for entries that are skipped with a warning (sockets; devices unless
    /// allowed).
    /// `meta` is the entry's metadata as it is to be stored (the caller may have filtered it).
    pub(crate) fn leaf(
        &mut self,
        dir: &Arc<OwnedFd>,
        e: RawEntry,
        meta: Meta,
        path: &str,
    ) -> Result<Option<Node>> {
        let group = self.group(&e.stat);
        let content = match FileType::from_raw_mode(e.stat.st_mode) {
            FileType::RegularFile if e.stat.st_size == 0 => Content::File {
                size: 0,
                data: FileData::Empty,
            },
            FileType::RegularFile => {
                let slot: FileSlot = Arc::new(OnceLock::new());
                let job = Job {
                    dir: dir.clone(),
                    name: e.name,
                    stat: e.stat,
                    path: path.to_string(),
                    slot: slot.clone(),
                };
                self.jobs.send(job).expect("workers outlive the walk");
                return Ok(Some(Node::File { meta, slot, group }));
            }
            FileType::Symlink => Content::Symlink(walk::read_link(dir, &e.name, path)?),
            FileType::CharacterDevice | FileType::BlockDevice if !self.allow_devices => {
                let kind = match FileType::from_raw_mode(e.stat.st_mode) {
                    FileType::BlockDevice => "block",
                    _ => "character",
                };
                self.warn(crate::import::dropped_device(path, kind, e.stat.st_rdev));
                return Ok(None);
            }
            FileType::CharacterDevice => Content::CharDev(e.stat.st_rdev),
            FileType::BlockDevice => Content::BlockDev(e.stat.st_rdev),
            FileType::Fifo => Content::Fifo,
            _ => {
                self.warn(format!("skipped socket {path}"));
                return Ok(None);
            }
        };
        let entry = Entry {
            name: Vec::new(),
            meta,
            content,
            link: None,
        };
        Ok(Some(Node::Leaf { entry, group }))
    }

    /// Records a warning line (also logged).
    pub(crate) fn warn(&mut self, line: String) {
        tracing::info!("{line}");
        self.warnings.push(line);
    }

    fn group(&mut self, st: &Stat) -> Option<u64> {
        if st.st_nlink < 2 {
            return None;
        }
        let next = self.links.len() as u64;
        Some(*self.links.entry((st.st_dev, st.st_ino)).or_insert(next))
    }
}
