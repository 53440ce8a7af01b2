//! Spawngrid's store seam: the one place that knows where a node keeps things.
//!
//! A node, and every local command, asks a [`Store`] for its library and its catalog and
//! never learns which engines they run on: the embedded default (a data directory with local
//! packs and a SQLite catalog) or a grid's (an S3 bucket and PostgreSQL). The data directory's
//! own layout is [`DataDir`]'s; the `[store]` configuration table is [`StoreConfig`].
//!
//! A node started with a `[store]` table records it in `DATA/store.toml` ([`Store::configure`]),
//! so every local command and helper process on that data directory ([`Store::open`]: `lib`,
//! `user`, the snapfs mount servers) reaches the same library and catalog as the node.
//!
//! A library on S3, or with a PostgreSQL catalog, is shared by a grid: it is coordinated by
//! the catalog ([`CatalogCoordinator`]: leases, and gc by mark and sweep), never by lease
//! files on the backend.

pub mod config;
pub mod coordinator;
pub mod layout;

pub use config::{CatalogAt, LibraryAt, StoreConfig};
pub use coordinator::{bind_written, CatalogCoordinator};
pub use layout::DataDir;

use anyhow::{bail, Context, Result};
use catalog::Catalog;
use library::backend::cache::{CacheConfig, CachedBackend, RemoteCounts, SharedMeter};
use library::coord::Coordinator;
use library::lease::FileLeases;
use library::{Backend, Library, LocalBackend, SharedIndex};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};

/// A node's data directory and where its library and catalog live. Clones share the
/// library's backend, opened once (an S3 client and its block cache are not made per call),
/// and the library's index (every [`Store::library`] after the first reads only new packs).
#[derive(Clone)]
pub struct Store {
    data: DataDir,
    library: LibraryAt,
    catalog: CatalogAt,
    config: StoreConfig,
    backend: Arc<OnceLock<Arc<dyn Backend>>>,
    index: SharedIndex,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data", &self.data)
            .field("library", &self.library)
            .field("catalog", &self.catalog)
            .finish()
    }
}

impl Store {
    /// The store a configuration describes, over the data directory `data`; missing keys take
    /// the embedded default. Nothing is opened yet.
    pub fn new(data: DataDir, config: &StoreConfig) -> Result<Store> {
        let library = match &config.library {
            Some(s) => LibraryAt::parse(s)?,
            None => LibraryAt::Dir(data.library()),
        };
        let catalog = match &config.catalog {
            Some(s) => CatalogAt::parse(s)?,
            None => CatalogAt::Sqlite(data.catalog_db()),
        };
        Ok(Store {
            data,
            library,
            catalog,
            config: config.clone(),
            backend: Arc::default(),
            index: SharedIndex::default(),
        })
    }

    /// The store recorded for `data` by its node ([`Store::configure`]), or the embedded
    /// default, `DATA/library` and `DATA/catalog.db`, when none was.
    pub fn open(data: DataDir) -> Result<Store> {
        let path = data.store_toml();
        let config = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| {
                format!("reading {} (the node's [store] table)", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreConfig::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Store::new(data, &config)
    }

    /// A node's store: its configuration's `[store]` table when it has one (recorded, see
    /// [`Store::configure`]), else what the data directory records ([`Store::open`]).
    pub fn for_node(data: DataDir, table: Option<&StoreConfig>) -> Result<Store> {
        match table {
            Some(table) => Store::configure(data, table),
            None => Store::open(data),
        }
    }

    /// The store `config` describes, recorded in `DATA/store.toml` (created with the data
    /// directory if missing, mode 0600, replaced atomically) for later [`Store::open`]s.
    pub fn configure(data: DataDir, config: &StoreConfig) -> Result<Store> {
        let store = Store::new(data, config)?;
        let dir = store.data.root();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = toml::to_string(config).context("writing the [store] table")?;
        let path = store.data.store_toml();
        let mut tmp = tempfile::Builder::new()
            .prefix(".store.toml.")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .with_context(|| format!("writing {}", path.display()))?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        tmp.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(store)
    }

    /// The node-local data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// Where the library lives.
    pub fn library_at(&self) -> &LibraryAt {
        &self.library
    }

    /// Where the catalog lives.
    pub fn catalog_at(&self) -> &CatalogAt {
        &self.catalog
    }

    /// The `[store]` table in force.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Opens the catalog (a SQLite catalog and its directory are created if missing; its file
    /// is made mode 0600, which SQLite gives its journal files too: it holds password hashes).
    pub fn catalog(&self) -> Result<Catalog> {
        match &self.catalog {
            CatalogAt::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                private_file(path)?;
                Ok(Catalog::open(path)?)
            }
            CatalogAt::Postgres(url) => Ok(Catalog::connect(url)?),
        }
    }

    /// The library's backend, opened on first use.
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        if let Some(b) = self.backend.get() {
            return Ok(b.clone());
        }
        let opened = self.open_backend()?;
        Ok(self.backend.get_or_init(|| opened).clone())
    }

    fn open_backend(&self) -> Result<Arc<dyn Backend>> {
        match &self.library {
            LibraryAt::Dir(dir) => {
                Ok(Arc::new(LocalBackend::open(dir).with_context(|| {
                    format!("opening library in {}", dir.display())
                })?))
            }
            LibraryAt::S3 { .. } => {
                let url = self.library.describe();
                let backend = s3::S3Backend::open(&url, &self.config.s3)
                    .with_context(|| format!("opening the library at {url}"))?;
                // Its traffic is counted for the node's /metrics; remote packs are read
                // lazily through a node-local block cache.
                let counts = self.data.remote_counts();
                let metered = SharedMeter::open(Arc::new(backend), &counts)
                    .with_context(|| format!("opening {}", counts.display()))?;
                let cache = CacheConfig::new(self.data.blocks(), self.config.cache_bytes());
                let cached = CachedBackend::open(Arc::new(metered), &cache)
                    .with_context(|| format!("opening the block cache {}", cache.dir.display()))?;
                Ok(Arc::new(cached))
            }
        }
    }

    /// Requests and bytes this data directory's processes sent to a remote library so far
    /// (`None` for a local library, which is not counted).
    pub fn remote_counts(&self) -> Result<Option<RemoteCounts>> {
        match self.library {
            LibraryAt::Dir(_) => Ok(None),
            LibraryAt::S3 { .. } => Ok(Some(RemoteCounts::read(&self.data.remote_counts())?)),
        }
    }

    /// Opens the existing library; one line saying how to make one when there is none.
    pub fn library(&self) -> Result<Library> {
        let backend = self.backend()?;
        if !Library::exists_at(backend.as_ref())? {
            bail!(
                "no library in {} (import something first, or pass --data DIR)",
                self.library.describe()
            );
        }
        // A remote library keeps its pack index file (no trailer read twice across
        // processes); a local one shares this process's index between its opens.
        Ok(match self.pack_index() {
            Some(file) => Library::open_indexed(backend, self.coordinator(), Some(file))?,
            None => Library::open_shared(backend, self.coordinator(), &self.index)?,
        })
    }

    /// Opens the existing library to read from it (a snapfs mount server): no catalog
    /// connection before the first read, and for a remote library whose pack index this node
    /// already keeps, no request at all ([`Library::open_reader`]).
    pub fn library_reader(&self) -> Result<Library> {
        Ok(Library::open_reader(
            self.backend()?,
            self.coordinator(),
            self.pack_index(),
        )?)
    }

    /// Opens the library, creating an empty one if there is none.
    pub fn library_or_init(&self) -> Result<Library> {
        Ok(Library::open_or_init_with(
            self.backend()?,
            self.coordinator(),
            self.pack_index(),
        )?)
    }

    /// The node-local pack index file of a remote library (`None` for a library in a local
    /// directory, whose listing and trailers are local reads already).
    fn pack_index(&self) -> Option<std::path::PathBuf> {
        match self.library {
            LibraryAt::Dir(_) => None,
            LibraryAt::S3 { .. } => Some(self.data.pack_index()),
        }
    }

    /// Whether the library is shared by a grid: on S3, or with a PostgreSQL catalog.
    pub fn is_shared(&self) -> bool {
        matches!(self.library, LibraryAt::S3 { .. })
            || matches!(self.catalog, CatalogAt::Postgres(_))
    }

    /// What coordinates the library's writers and gc: the catalog for a shared library, lease
    /// files on the backend otherwise.
    fn coordinator(&self) -> Arc<dyn Coordinator> {
        if !self.is_shared() {
            return Arc::new(FileLeases);
        }
        let ttl = self
            .config
            .lease_secs
            .map_or(coordinator::DEFAULT_LEASE, std::time::Duration::from_secs);
        Arc::new(CatalogCoordinator::new(self.clone(), ttl))
    }
}

/// Creates `path` empty with mode 0600 if missing (an empty file is an empty SQLite database),
/// or takes group and other access away from it.
fn private_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mode = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("making {} private (mode 0600)", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_table_is_what_local_commands_open() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("data"));
        let embedded = Store::open(data.clone()).unwrap();
        assert_eq!(embedded.library_at(), &LibraryAt::Dir(data.library()));
        assert_eq!(embedded.catalog_at(), &CatalogAt::Sqlite(data.catalog_db()));
        let table = StoreConfig {
            library: Some("s3://grid/lib".into()),
            catalog: Some(format!("sqlite:{}", dir.path().join("shared.db").display())),
            cache_bytes: None,
            lease_secs: None,
            s3: s3::S3Options {
                secret_access_key: Some("k".into()),
                ..s3::S3Options::default()
            },
        };
        Store::configure(data.clone(), &table).unwrap();
        let mode = std::fs::metadata(data.store_toml()).unwrap().permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        let reopened = Store::open(data.clone()).unwrap();
        assert_eq!(reopened.library_at().describe(), "s3://grid/lib");
        assert_eq!(reopened.config().s3.secret_access_key.as_deref(), Some("k"));
        // A node without a [store] table keeps what was recorded.
        let node = Store::for_node(data.clone(), None).unwrap();
        assert_eq!(node.catalog_at(), reopened.catalog_at());
        node.catalog()
            .unwrap()
            .bind("a", "b", library::Score::of(b"x"))
            .unwrap();
        assert!(dir.path().join("shared.db").exists() && !data.catalog_db().exists());
    }

    #[test]
    fn a_missing_library_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(DataDir::new(dir.path())).unwrap();
        let err = store.library().err().unwrap().to_string();
        assert!(err.starts_with("no library in file:"), "{err}");
        store.library_or_init().unwrap();
        store.library().unwrap();
    }
}
