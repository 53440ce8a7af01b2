//! [`DataDir`]: the one place that knows a node's data directory layout.
//!
//! ```text
//! DATA/
//!   store.toml    the node's `[store]` table, so local commands on DATA use the same store
//!   library/      the local library's packs (embedded default; `[store] library = "file:…"`)
//!   catalog.db    the SQLite catalog (embedded default; `[store] catalog = "sqlite:…"`)
//!   cache/        decoded file contents read through snapfs, and blocks/ of a remote
//!                 library's packs (node-local, rebuildable), packs.idx: the remote
//!                 library's pack index (`library::packindex`), and remote-counts: the
//!                 remote library's traffic, summed over the node's processes
//!   mounts/       snapshot mounts (snapfs keepers and their journals)
//!   envs/ net/    the runtime's envs and network leases (see the runtime crate)
//!   tls/ ssh/     the node's certificate and SSH host key
//!   notices/      per-user notices (evictions)
//! ```
//!
//! Whatever the `[store]` table says, everything but `library/` and `catalog.db` is node-local.

use std::path::{Path, PathBuf};

/// A node's data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (not created here).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The embedded library's directory (local packs).
    pub fn library(&self) -> PathBuf {
        self.root.join("library")
    }

    /// The recorded `[store]` table (mode 0600: it may hold keys and passwords).
    pub fn store_toml(&self) -> PathBuf {
        self.root.join("store.toml")
    }

    /// The embedded catalog's SQLite file.
    pub fn catalog_db(&self) -> PathBuf {
        self.root.join("catalog.db")
    }

    /// The node-local cache of decoded file contents.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// The block cache of a remote library's packs.
    pub fn blocks(&self) -> PathBuf {
        self.root.join("cache/blocks")
    }

    /// The node-local index of a remote library's packs, shared by the node's processes.
    pub fn pack_index(&self) -> PathBuf {
        self.root.join("cache/packs.idx")
    }

    /// The counts of a remote library's traffic (requests and bytes), which every process on
    /// this data directory adds to (`library::backend::cache::SharedMeter`).
    pub fn remote_counts(&self) -> PathBuf {
        self.root.join("cache/remote-counts")
    }

    /// Where snapshot mounts live.
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// The node's TLS certificate and key.
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// The node's SSH host key.
    pub fn ssh(&self) -> PathBuf {
        self.root.join("ssh")
    }

    /// Per-user notices.
    pub fn notices(&self) -> PathBuf {
        self.root.join("notices")
    }
}
