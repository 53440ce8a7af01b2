//! From a name to a lower directory: resolving a user's name to its snapshot score, and
//! mounting that snapshot once per node with snapfs (shared by every env spawned from it).
//! `spawngrid env spawn` and the node's API both spawn through these.

use anyhow::{bail, Context, Result};
use library::{Library, Score};
use runtime::Runtime;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The score `name` of `owner` is bound to; with `allow_score`, a literal 64-digit score is
/// taken as is (offline tools; the API never allows it, so a score is no way around owners).
pub fn resolve(
    cat: &catalog::Catalog,
    owner: &str,
    name: &str,
    allow_score: bool,
) -> Result<Score> {
    if allow_score {
        if let Ok(s) = name.parse::<Score>() {
            return Ok(s);
        }
    }
    Ok(cat.resolve(owner, name)?)
}

/// Mounts `score` once per node at `DATA/mounts/<score>/root` with snapfs, owners shifted into
/// the node's id range (`spawngrid lib mount ... --uid-offset`); an existing live mount is
/// reused. The mount server is this executable (`spawngrid lib mount`), detached.
pub fn mount(rt: &Runtime, score: Score) -> Result<PathBuf> {
    if rt.ids.host_uid != rt.ids.host_gid {
        bail!("snapfs shifts uids and gids by one offset; the node's uid and gid ranges differ");
    }
    let dir = rt.data.join("mounts").join(score.to_hex()).join("root");
    // Already served: no second process (what every spawn after the first one sees).
    let served = snapfs::mount::Registry::new(&rt.data)
        .get(&dir)
        .filter(|r| {
            r.score == score.to_hex()
                && r.id_offset == rt.ids.host_uid
                && snapfs::mount::running(r.pid)
        });
    if served.is_some() && snapfs::mount::state(&dir) == snapfs::mount::State::Live {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = Command::new(std::env::current_exe().context("finding this executable")?)
        .args(["lib", "--data"])
        .arg(&rt.data)
        .args(["mount", &score.to_hex()])
        .arg(&dir)
        .args(["--uid-offset", &rt.ids.host_uid.to_string()])
        .output()
        .context("running spawngrid lib mount")?;
    if !out.status.success() {
        bail!(
            "mounting snapshot {score}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(dir)
}

/// Logical sizes of snapshots, read from the library once each (a snapshot never changes).
/// The library is opened on first use and its index reloaded when a snapshot is not in it
/// (imported or repacked by another process since).
pub struct Sizes {
    data: PathBuf,
    lib: Mutex<Option<Arc<Library>>>,
    known: Mutex<HashMap<Score, u64>>,
}

impl Sizes {
    /// Sizes of the snapshots in `DATA/library`.
    pub fn new(data: &Path) -> Sizes {
        Sizes {
            data: data.to_path_buf(),
            lib: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The logical size of `score`'s files, if the snapshot can be read.
    pub fn size(&self, score: &Score) -> Option<u64> {
        if let Some(n) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(score)
        {
            return Some(*n);
        }
        let lib = {
            let mut slot = self.lib.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = crate::envs::open_library(&self.data).ok().map(Arc::new);
            }
            slot.clone()?
        };
        let snap = match lib.snapshot(score) {
            Ok(s) => s,
            Err(_) => {
                lib.reload_index().ok()?;
                lib.snapshot(score).ok()?
            }
        };
        let n = snap.bytes();
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*score, n);
        Some(n)
    }
}
