//! Importers: turn a directory or a tar stream into a snapshot in the library.
//!
//! The caller holds a shared [`crate::lease::Lease`] for the whole import and binds a name to
//! the returned score before releasing it, so a concurrent gc cannot reclaim what it reuses.

pub mod dir;
pub(crate) mod ingest;
pub mod oci;
pub mod tar;

use crate::progress::Progress;
use crate::{Score, Snapshot};

/// How an import labels the snapshot it makes.
pub struct ImportOptions<'a> {
    /// Recorded as the snapshot's author.
    pub author: String,
    /// Recorded as the snapshot's note.
    pub note: String,
    /// Recorded as the snapshot's parent.
    pub parent: Option<Score>,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// Keep character and block device nodes; otherwise each is dropped with a warning (a
    /// snapshot is mounted `nodev` wherever it is used, but holds no devices unless asked).
    pub allow_devices: bool,
}

/// The warning for a device node an import dropped (`kind`: "character" or "block").
pub(crate) fn dropped_device(path: &str, kind: &str, rdev: u64) -> String {
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    format!("dropped {kind} device {path} ({major}:{minor}); import with --allow-devices to keep device nodes")
}

/// What an import produced.
#[derive(Debug)]
pub struct Imported {
    /// The new snapshot's score.
    pub score: Score,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Things skipped or repaired, one line each (sockets, duplicate tar entries, ...).
    pub warnings: Vec<String>,
}

/// Stores the trees of `root` and commits the snapshot: the last step of every import.
pub(crate) fn commit(
    lib: &crate::Library,
    root: &crate::build::Dir,
    opts: &ImportOptions,
    parent: Option<Score>,
    warnings: Vec<String>,
) -> crate::Result<Imported> {
    opts.progress.phase("storing trees");
    let snapshot = Snapshot {
        root: root.store(lib)?,
        parent,
        author: opts.author.clone(),
        time_ns: now_ns(),
        note: opts.note.clone(),
    };
    let score = lib.commit(&snapshot)?;
    Ok(Imported {
        score,
        snapshot,
        warnings,
    })
}

/// The current time in nanoseconds since the epoch.
fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_nanos() as i64
}
