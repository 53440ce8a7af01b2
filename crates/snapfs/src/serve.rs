//! The server: the process that answers the kernel for one mount, on a FUSE connection its
//! keeper ([`crate::keeper`]) made and handed it. A first server shakes hands with the kernel;
//! a later one adopts the live connection ([`crate::adopt`]) and the backing ids its
//! predecessor registered ([`crate::journal`]).

use crate::adopt::{self, Offer};
use crate::cache::Cache;
use crate::fs::{FsOptions, SnapFs};
use crate::journal::Journal;
use fuser::{Config, Session, SessionACL};
use library::{Library, Snapshot};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a server needs besides its connection.
pub struct ServeOptions {
    /// Presented uid/gid offset.
    pub id_offset: u32,
    /// The file cache directory.
    pub cache_dir: PathBuf,
    /// The file cache limit in bytes.
    pub cache_size: u64,
    /// FUSE worker threads.
    pub threads: usize,
    /// The mount's backing-id journal.
    pub journal: PathBuf,
}

/// How a server comes by its connection.
pub enum Connection {
    /// A connection just mounted: the kernel's INIT is waiting on it.
    Fresh(OwnedFd),
    /// A live connection whose first server is gone; the kernel made this offer at its INIT.
    Adopt(OwnedFd, Offer),
}

/// Serves `snap` on `conn` until the mount goes away. `ready` is called once the connection
/// is answered with the kernel's offer and the time this took (cache opened, root tree
/// decoded, handshake done).
pub fn serve(
    lib: Arc<Library>,
    snap: &Snapshot,
    conn: Connection,
    opts: &ServeOptions,
    ready: impl FnOnce(Offer, Duration),
) -> std::io::Result<()> {
    let start = Instant::now();
    let cache =
        Arc::new(Cache::open(&opts.cache_dir, opts.cache_size).map_err(std::io::Error::other)?);
    let (journal, inherited) = match &conn {
        Connection::Fresh(_) => (Journal::create(&opts.journal)?, HashMap::new()),
        Connection::Adopt(..) => Journal::adopt(&opts.journal)?,
    };
    let fs = SnapFs::new(
        lib.clone(),
        snap.root.clone(),
        cache.clone(),
        FsOptions {
            id_offset: opts.id_offset,
        },
        journal,
        inherited,
    );
    // A server fails early on a damaged snapshot: the root tree is the only one decoded now.
    fs.load_root().map_err(std::io::Error::other)?;
    let pins = fs.inherited_pins();
    let seen = fs.offer();
    let mut cfg = Config::default();
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(opts.threads.max(1));
    let (session, offer) = match conn {
        Connection::Fresh(fd) => {
            let session = Session::from_fd(fs, fd, SessionACL::All, cfg)?;
            let offer = *seen.get().expect("init records the offer");
            (session, offer)
        }
        Connection::Adopt(fd, offer) => (adopt::session(fs, fd, offer, cfg)?, offer),
    };
    cache.start_scan();
    if let Some(pins) = pins {
        if let Err(e) = std::thread::Builder::new()
            .name("inherited-pins".into())
            .spawn(pins)
        {
            tracing::warn!("cannot pin the previous server's cache files: {e}");
        }
    }
    ready(offer, start.elapsed());
    crate::warm::start(lib, snap.root.clone(), cache);
    session.run()
}
