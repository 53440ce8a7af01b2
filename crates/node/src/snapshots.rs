//! From a name to a lower directory: resolving a user's name to its snapshot score, and
//! mounting that snapshot once per node with snapfs (shared by every env spawned from it).
//! `spawngrid env spawn` and the node's API both spawn through these.

use anyhow::{bail, Context, Result};
use library::Score;
use runtime::Runtime;
use std::path::PathBuf;
use std::process::Command;

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
