//! The FUSE filesystem: answers the kernel from the snapshot's trees and the file cache.
//!
//! Everything is immutable, so entries and attributes are given a TTL of years and the kernel
//! caches them. Regular files are opened by materializing them in the [`Cache`] and handing the
//! kernel the cache file for passthrough: reads and mmap then never reach this process. Without
//! passthrough (old kernel, or the kernel refuses), reads are served from the cache file here.
//! Directory listings are cached by the kernel too: `opendir` answers ENOSYS once when the
//! kernel supports `FUSE_NO_OPENDIR_SUPPORT` (it then never sends opendir/releasedir and caches
//! listings), else it returns `FOPEN_CACHE_DIR`.
//!
//! Every holder of a cache file holds a cache pin on it ([`Pin`]): a handle that opened the
//! file, and each backing id (for as long as the kernel has it registered, open handles or
//! not). So the cache never unlinks a file the kernel still holds, and counts it against its
//! limit; the backing ids kept after their files close are bounded by bytes as well as by
//! count (`RECENT`, `RECENT_SHARE`), so that their pins leave the cache most of its room.
//!
//! Backing ids are journaled ([`Journal`]) and a restarted server reuses the ones its
//! predecessor left registered, since the kernel allows one backing file per inode at a time.
//! State a predecessor held and this process lacks is rebuilt on demand: handles of files it
//! opened are read through the node id, and hardlink node ids are found by walking the tree.

use crate::adopt::Offer;
use crate::attr::{attr, kind};
use crate::cache::{Cache, Pin};
use crate::journal::Journal;
use crate::nodes::{Node, NodeError, Nodes};
use fuser::{
    BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use library::{Content, FileData, Library, Score};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How long the kernel may trust entries and attributes: the snapshot never changes.
const TTL: Duration = Duration::from_secs(10 * 365 * 86400);

/// Options of one mount.
#[derive(Clone, Debug, Default)]
pub struct FsOptions {
    /// Added to every uid and gid shown (for envs whose user namespace maps root elsewhere).
    pub id_offset: u32,
}

struct Handle {
    /// The node it was opened on (the kernel names it again in every call on the handle).
    node: u64,
    file: Option<Arc<File>>,
    /// The pin of `file` (a handle on a live backing id has neither: the backing's pin
    /// covers it). Released with the handle.
    _pin: Option<Pin>,
    _backing: Option<Arc<Backing>>,
}

/// A backing id registered for one node, pinning its cache file. Dropping it journals the
/// close, then closes it, then unpins the file (fields drop in order).
struct Backing {
    node: u64,
    raw: u32,
    id: BackingId,
    journal: Arc<Mutex<Journal>>,
    /// The file's size: what keeping the id costs the cache.
    bytes: u64,
    _pin: Pin,
}

impl Drop for Backing {
    fn drop(&mut self) {
        self.journal
            .lock()
            .expect("journal")
            .closed(self.node, self.raw);
    }
}

/// How many backing ids stay registered with the kernel after their files are closed, so that
/// re-opening a recently used file costs one map lookup here.
const RECENT: usize = 1024;

/// The share of the cache's limit the recently used backing ids may pin, as a divisor: their
/// files are counted and never evicted while registered, so without a byte bound they could
/// fill the cache (or, when they did not pin, keep unlinked files the cache no longer counted
/// on disk). A quarter leaves most of the cache to other files; a file bigger than that is
/// not kept after it closes.
const RECENT_SHARE: u64 = 4;

#[derive(Default)]
struct Handles {
    next: u64,
    open: HashMap<u64, Handle>,
    backing: HashMap<u64, Weak<Backing>>,
    recent: VecDeque<Arc<Backing>>,
    /// The bytes of the files of `recent`.
    recent_bytes: u64,
    /// Ids a previous server of this connection left registered, by node.
    inherited: HashMap<u64, u32>,
    /// Pins on the cache files of `inherited` ids (the kernel holds those files), taken in
    /// the background after adoption ([`SnapFs::inherited_pins`]); an id taken over is pinned
    /// by its [`Backing`] instead.
    inherited_pins: HashMap<u64, Pin>,
}

impl Handles {
    /// Keeps `b` as `node`'s backing id; the last [`RECENT`] ids, up to `budget` bytes of
    /// files, stay registered after their files are closed.
    fn remember(&mut self, node: u64, b: Arc<Backing>, budget: u64) {
        self.recent_bytes += b.bytes;
        self.recent.push_back(b.clone());
        self.backing.insert(node, Arc::downgrade(&b));
        let mut dropped = false;
        while self.recent.len() > RECENT || self.recent_bytes > budget {
            let Some(old) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= old.bytes;
            dropped = true;
        }
        if dropped {
            self.backing.retain(|_, w| w.strong_count() > 0);
        }
    }
}

/// The snapshot filesystem served to the kernel.
pub struct SnapFs {
    lib: Arc<Library>,
    nodes: Arc<Nodes>,
    cache: Arc<Cache>,
    opts: FsOptions,
    passthrough: AtomicBool,
    no_opendir: bool,
    handles: Arc<Mutex<Handles>>,
    journal: Arc<Mutex<Journal>>,
    offer: Arc<OnceLock<Offer>>,
}

fn errno(e: NodeError) -> Errno {
    match e {
        NodeError::NotFound => Errno::ENOENT,
        NodeError::NotDir => Errno::ENOTDIR,
        NodeError::Stale => Errno::ESTALE,
        NodeError::Library(e) => {
            tracing::error!("reading a directory: {e}");
            Errno::EIO
        }
    }
}

/// The number just before this server's first file handle: the wall clock in nanoseconds. A
/// server taking over a connection must not hand out a number its predecessor did (the kernel
/// still holds those handles), and no server opens more than a file per nanosecond.
fn first_handle() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl SnapFs {
    /// A filesystem showing the tree under `root` (a snapshot's root entry), journaling its
    /// backing ids in `journal`; `inherited` are the ids a previous server of the same
    /// connection left registered (empty for a new mount).
    pub fn new(
        lib: Arc<Library>,
        root: library::Entry,
        cache: Arc<Cache>,
        opts: FsOptions,
        journal: Journal,
        inherited: HashMap<u64, u32>,
    ) -> SnapFs {
        SnapFs {
            nodes: Arc::new(Nodes::new(lib.clone(), root)),
            lib,
            cache,
            opts,
            passthrough: AtomicBool::new(false),
            no_opendir: false,
            handles: Arc::new(Mutex::new(Handles {
                next: first_handle(),
                inherited,
                ..Handles::default()
            })),
            journal: Arc::new(Mutex::new(journal)),
            offer: Arc::default(),
        }
    }

    /// The work of pinning the cache files of the backing ids a previous server left
    /// registered, to run on a thread of its own once the connection is served (`None` when
    /// there are none). The kernel holds those files, so the cache must count them and not
    /// unlink them; their nodes are resolved from the snapshot, which may read trees. Ids
    /// taken over meanwhile are pinned by their backing already.
    pub fn inherited_pins(&self) -> Option<impl FnOnce() + Send + 'static> {
        let ids: Vec<u64> = {
            let hs = self.handles.lock().expect("handles");
            hs.inherited.keys().copied().collect()
        };
        if ids.is_empty() {
            return None;
        }
        let (nodes, cache, handles) =
            (self.nodes.clone(), self.cache.clone(), self.handles.clone());
        Some(move || {
            let mut pinned = 0;
            for id in ids {
                let node = match nodes.get(id) {
                    Ok(node) => node,
                    Err(e) => {
                        tracing::warn!(node = id, "a backing id left registered: {e}");
                        continue;
                    }
                };
                let Content::File {
                    data: FileData::Blob(score) | FileData::Chunks(score),
                    size,
                } = &node.entry.content
                else {
                    continue;
                };
                let mut hs = handles.lock().expect("handles");
                if hs.inherited.contains_key(&id) {
                    hs.inherited_pins.insert(id, cache.pin(*score, *size));
                    pinned += 1;
                }
            }
            tracing::info!("pinned {pinned} cache files the previous server's backing ids hold");
        })
    }

    /// Where `init` records what the kernel offered (needed to restart the server later).
    pub fn offer(&self) -> Arc<OnceLock<Offer>> {
        self.offer.clone()
    }

    /// Decodes the root directory (so that a mount fails early on a damaged snapshot).
    pub fn load_root(&self) -> Result<(), NodeError> {
        self.nodes.dir(self.nodes.root()).map(|_| ())
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>, Errno> {
        self.nodes.get(ino.0).map_err(errno)
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let mut hs = self.handles.lock().expect("handles");
        hs.next += 1;
        let fh = hs.next;
        hs.open.insert(fh, h);
        fh
    }

    /// The backing id for `file`, the cache file of `node` (score `score`): shared by every
    /// open handle of that inode.
    fn backing(
        &self,
        reply: &ReplyOpen,
        node: &Node,
        score: Score,
        file: &File,
    ) -> std::io::Result<Arc<Backing>> {
        let mut hs = self.handles.lock().expect("handles");
        if let Some(b) = hs.backing.get(&node.id).and_then(Weak::upgrade) {
            return Ok(b);
        }
        let raw = reply.open_backing(file)?.into_raw();
        self.journal.lock().expect("journal").opened(node.id, raw);
        // SAFETY: `raw` was just registered on this connection and is owned by nothing else.
        Ok(unsafe { self.own(&mut hs, reply, node, score, raw) })
    }

    /// Takes ownership of backing id `raw` of `node`, whose cache file is `score`: pins the
    /// file until the id is closed (when the last handle and the recent list let go of it).
    ///
    /// # Safety
    ///
    /// `raw` must be registered on this connection and owned by nothing else in this process.
    unsafe fn own(
        &self,
        hs: &mut Handles,
        reply: &ReplyOpen,
        node: &Node,
        score: Score,
        raw: u32,
    ) -> Arc<Backing> {
        let bytes = node.entry.content.bytes();
        let b = Arc::new(Backing {
            node: node.id,
            raw,
            // SAFETY: the caller's contract: `raw` is registered here and owned by nothing else.
            id: unsafe { reply.wrap_backing(raw) },
            journal: self.journal.clone(),
            bytes,
            _pin: self.cache.pin(score, bytes),
        });
        hs.remember(node.id, b.clone(), self.cache.limit() / RECENT_SHARE);
        b
    }

    /// A backing id of `node` (cache file `score`) the kernel still has registered: one this
    /// process holds, or one its predecessor left (which must be reused while the inode has
    /// files open on it, and is pinned from now on: it was the predecessor's to count).
    fn live_backing(&self, reply: &ReplyOpen, node: &Node, score: Score) -> Option<Arc<Backing>> {
        let mut hs = self.handles.lock().expect("handles");
        if let Some(b) = hs.backing.get(&node.id).and_then(Weak::upgrade) {
            return Some(b);
        }
        let raw = hs.inherited.remove(&node.id)?;
        // SAFETY: the journal says the previous server registered `raw` for this node and never
        // closed it (closes are journaled first); nothing else here holds it.
        let b = unsafe { self.own(&mut hs, reply, node, score, raw) };
        // The backing pins the file now.
        hs.inherited_pins.remove(&node.id);
        Some(b)
    }

    /// The cache file of node `ino`, for a handle this process did not open (its predecessor
    /// did): `None` for an empty file.
    fn reopen(&self, ino: INodeNo) -> Result<Option<Arc<File>>, Errno> {
        let node = self.node(ino)?;
        let Content::File { data, .. } = &node.entry.content else {
            return Err(Errno::EBADF);
        };
        let (FileData::Blob(score) | FileData::Chunks(score)) = data else {
            return Ok(None);
        };
        let file = self.cache.acquire(&self.lib, *score, data).map_err(|e| {
            tracing::error!(%score, node = node.id, "cannot open file: {e}");
            Errno::EIO
        })?;
        // The open file stays readable even if the cache evicts it.
        self.cache.release(score);
        Ok(Some(Arc::new(file)))
    }

    fn open_file(&self, node: &Node, data: &FileData, reply: ReplyOpen) {
        let score = match data {
            FileData::Empty => {
                let fh = self.add_handle(Handle {
                    node: node.id,
                    file: None,
                    _pin: None,
                    _backing: None,
                });
                return reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
                );
            }
            FileData::Blob(s) | FileData::Chunks(s) => *s,
        };
        if self.passthrough.load(Ordering::Relaxed) {
            if let Some(b) = self.live_backing(&reply, node, score) {
                // Open before, or recently: the kernel holds the cache file, pinned by the
                // backing id this handle keeps; no fetch.
                self.cache.touch(&score);
                let fh = self.add_handle(Handle {
                    node: node.id,
                    file: None,
                    _pin: None,
                    _backing: Some(b.clone()),
                });
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b.id);
            }
        }
        let (file, pin) = match self.cache.hold(&self.lib, score, data) {
            Ok((f, pin)) => (Arc::new(f), pin),
            Err(e) => {
                tracing::error!(%score, node = node.id, "cannot open file: {e}");
                return reply.error(Errno::EIO);
            }
        };
        let backing = if self.passthrough.load(Ordering::Relaxed) {
            match self.backing(&reply, node, score, &file) {
                Ok(id) => Some(id),
                Err(e) => {
                    if self.passthrough.swap(false, Ordering::Relaxed) {
                        tracing::warn!("FUSE passthrough refused ({e}); serving reads in user space from now on");
                    }
                    None
                }
            }
        } else {
            None
        };
        let fh = self.add_handle(Handle {
            node: node.id,
            file: Some(file),
            _pin: Some(pin),
            _backing: backing.clone(),
        });
        match backing {
            Some(b) => reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b.id),
            None => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }
}

impl Filesystem for SnapFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        // Depth 1: backing files live on a plain filesystem, and this mount can itself be the
        // lower layer of an overlay (which adds the second and last level).
        let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        if !ok {
            tracing::warn!("kernel lacks FUSE passthrough; serving reads in user space");
        }
        self.passthrough.store(ok, Ordering::Relaxed);
        let _ = self.offer.set(Offer::of(config));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .node(parent)
            .and_then(|p| self.nodes.lookup(&p, name.as_bytes()).map_err(errno));
        match found {
            Ok(n) => reply.entry(&TTL, &attr(&n, self.opts.id_offset), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &attr(&n, self.opts.id_offset)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|n| n.entry.content.clone()) {
            Ok(Content::Symlink(t)) => reply.data(&t),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino) {
            Ok(n) => match &n.entry.content {
                Content::File { data, .. } => self.open_file(&n, data, reply),
                Content::Dir { .. } => reply.error(Errno::EISDIR),
                _ => reply.error(Errno::ENXIO),
            },
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // A handle this server did not give out on this node (a predecessor's, which the
        // kernel kept) is read by its node.
        let file = self
            .handles
            .lock()
            .expect("handles")
            .open
            .get(&fh.0)
            .filter(|h| h.node == ino.0)
            .map(|h| h.file.clone());
        let file = match file {
            Some(f) => f,
            None => match self.reopen(ino) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            },
        };
        let Some(file) = file else {
            return reply.data(&[]);
        };
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!("reading cache file: {e}");
                    return reply.error(Errno::EIO);
                }
            }
        }
        reply.data(&buf[..n]);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut hs = self.handles.lock().expect("handles");
        // A handle of another node is a predecessor's (the kernel kept it): nothing of ours.
        let h = match hs.open.get(&fh.0) {
            Some(h) if h.node == ino.0 => hs.open.remove(&fh.0),
            _ => None,
        };
        drop(hs);
        // Unpins its file (and its backing id's, if it was the last holder), unlocked.
        drop(h);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            // Directories never change: the kernel may keep their listings in its page cache.
            // With "no opendir" (ENOSYS once) it stops asking and caches listings by itself.
            Ok(n) if matches!(n.entry.content, Content::Dir { .. }) && self.no_opendir => {
                reply.error(Errno::ENOSYS)
            }
            Ok(n) if matches!(n.entry.content, Content::Dir { .. }) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (node, dir) = match self
            .node(ino)
            .and_then(|n| Ok((n.clone(), self.nodes.dir(&n).map_err(errno)?)))
        {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let dots = [(node.id, "."), (node.id, "..")];
        let total = 2 + dir.tree.entries.len() as u64;
        for off in offset..total {
            let full = if off < 2 {
                let (id, name) = dots[off as usize];
                reply.add(INodeNo(id), off + 1, fuser::FileType::Directory, name)
            } else {
                // The name comes from the directory: a hardlink group's node carries the
                // entry of whichever member was seen first.
                let e = &dir.tree.entries[(off - 2) as usize];
                let child = self.nodes.child(&node, &dir, (off - 2) as usize);
                reply.add(
                    INodeNo(child.id),
                    off + 1,
                    kind(&e.content),
                    OsStr::from_bytes(&e.name),
                )
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (node, dir) = match self
            .node(ino)
            .and_then(|n| Ok((n.clone(), self.nodes.dir(&n).map_err(errno)?)))
        {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let total = 2 + dir.tree.entries.len() as u64;
        for off in offset..total {
            let (child, name) = if off < 2 {
                (node.clone(), if off == 0 { &b"."[..] } else { &b".."[..] })
            } else {
                let c = self.nodes.child(&node, &dir, (off - 2) as usize);
                let name = dir.tree.entries[(off - 2) as usize].name.as_slice();
                (c, name)
            };
            let a = attr(&child, self.opts.id_offset);
            if reply.add(
                INodeNo(child.id),
                off + 1,
                OsStr::from_bytes(name),
                &TTL,
                &a,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.nodes.root().entry.content.bytes().div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.nodes.count(), 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let found = node
            .entry
            .meta
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes());
        match found {
            None => reply.error(Errno::ENODATA),
            Some((_, v)) => xattr_reply(v, size, reply),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for (k, _) in &node.entry.meta.xattrs {
            names.extend_from_slice(k);
            names.push(0);
        }
        xattr_reply(&names, size, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// Replies with an xattr value or list: its size when `size` is 0, else the bytes or ERANGE.
fn xattr_reply(v: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
