//! From a name to a lower directory: resolving a name a user addresses (their own `NAME`, or
//! `OWNER/NAME` shared with them) to its snapshot score, and mounting that snapshot once per
//! node with snapfs (shared by every env spawned from it). `spawngrid env spawn` and the
//! node's API both spawn through these. Also the share and unshare routes: an owner gives
//! another user their name to list and spawn (not to share on).

use crate::error::{Error, Kind};
use crate::http::{blocking, ok, AuthUser, JsonBody};
use crate::Node;
use anyhow::{bail, Context, Result};
use api::{ShareRequest, ShareResponse};
use axum::extract::State;
use axum::response::Response;
use library::{Library, Score};
use runtime::Runtime;
use snapfs::launch::Standby;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The score of the name `user` addresses as `address` (their `NAME`, or `OWNER/NAME`
/// shared with them; another user's name not shared with them is not found, like a missing
/// one); with `allow_score`, a literal 64-digit score is taken as is (offline tools; the API
/// never allows it, so a score is no way around owners).
pub fn resolve(
    cat: &catalog::Catalog,
    user: &str,
    address: &str,
    allow_score: bool,
) -> Result<Score> {
    if allow_score {
        if let Ok(s) = address.parse::<Score>() {
            return Ok(s);
        }
    }
    Ok(cat.resolve_for(user, address)?)
}

/// Checks a name address given to the API (`NAME`, or `OWNER/NAME`) and returns its name
/// part; 400 if either part breaks the naming rule.
pub fn check_address<'a>(user: &str, address: &'a str) -> Result<&'a str, Error> {
    let bad = |e: catalog::Error| Error::invalid(format!("bad name {address:?}: {e}"));
    let (owner, name) = address.split_once('/').unwrap_or((user, address));
    // User names follow the names' rule; both parts are reported as parts of the name.
    catalog::check_name(owner).map_err(bad)?;
    catalog::check_name(name).map_err(bad)?;
    Ok(name)
}

/// `POST /api/share`: shares one of the caller's names with another user.
#[utoipa::path(
    post,
    path = api::routes::SHARE,
    summary = "share one of the caller's names with another user, who then sees it in scores and \
        spawns it as OWNER/NAME",
    request_body = api::ShareRequest,
    responses(
        (status = 200, body = api::ShareResponse,
            description = "shared (changed is false if it was already)"),
        (status = 403, description = "the name is shared with the caller, not theirs"),
        (status = 404, description = "no such user, or the caller has no such name"),
    ),
)]
pub async fn share(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    JsonBody(req): JsonBody<ShareRequest>,
) -> Result<Response, Error> {
    set_share(node, user, req, true).await
}

/// `POST /api/unshare`: stops sharing one of the caller's names with a user.
#[utoipa::path(
    post,
    path = api::routes::UNSHARE,
    summary = "stop sharing one of the caller's names with a user",
    request_body = api::ShareRequest,
    responses(
        (status = 200, body = api::ShareResponse,
            description = "unshared (changed is false if it was not shared)"),
        (status = 403, description = "the name is shared with the caller, not theirs"),
        (status = 404, description = "no such user, or the caller has no such name"),
    ),
)]
pub async fn unshare(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    JsonBody(req): JsonBody<ShareRequest>,
) -> Result<Response, Error> {
    set_share(node, user, req, false).await
}

/// Shares (`on`) or unshares `user`'s name `req.name` with `req.user`. A name shared with the
/// caller (`OWNER/NAME`) is refused: only its owner may share it.
async fn set_share(
    node: Arc<Node>,
    user: String,
    req: ShareRequest,
    on: bool,
) -> Result<Response, Error> {
    let resp = blocking(move || {
        let name = check_address(&user, &req.name)?;
        if name != req.name {
            // Someone else's name: the same answer whether it is shared with the caller or not.
            node.cat.resolve_for(&user, &req.name)?;
            return Err(Error::new(
                Kind::Forbidden,
                format!(
                    "{} is not yours: only its owner can share it (spawn it, save it as your \
                     own name, and share that)",
                    req.name
                ),
            ));
        }
        let everyone = req.user == catalog::shares::EVERYONE;
        if everyone && !node.cat.user(&user)?.is_some_and(|u| u.admin) {
            return Err(Error::new(
                Kind::Forbidden,
                "only admins share names with everyone ('*'); share with one user instead",
            ));
        }
        let changed = if on {
            node.cat.share(&user, name, &req.user)?
        } else {
            node.cat.unshare(&user, name, &req.user)?
        };
        let verb = if on { "shared" } else { "unshared" };
        tracing::info!(user = %user, name = %name, with = %req.user, changed, "{verb}");
        Ok(ShareResponse {
            address: catalog::shares::address(&req.user, &user, name),
            name: req.name,
            user: req.user,
            changed,
        })
    })
    .await?;
    Ok(ok(&resp))
}

/// Mounts `score` once per node at `DATA/mounts/<score>/root` with snapfs, owners shifted into
/// the node's id range; an existing live mount is reused. The mount's keeper is this
/// executable (`spawngrid lib mount SCORE DIR --keep`), started detached by this process
/// (`snapfs::launch`), which waits until the mount is live; `starting` is called just before
/// a keeper is needed (not when a live mount is reused) and may return a keeper started ahead
/// ([`refill_standby`]), which is then told the mount instead.
pub fn mount(
    rt: &Runtime,
    score: Score,
    starting: impl FnOnce() -> Option<Standby>,
) -> Result<PathBuf> {
    if rt.ids.host_uid != rt.ids.host_gid {
        bail!("snapfs shifts uids and gids by one offset; the node's uid and gid ranges differ");
    }
    let dir = mount_dir(rt, score);
    let hex = score.to_hex();
    let offset = rt.ids.host_uid;
    let registry = snapfs::mount::Registry::new(&rt.data);
    let mounting = || format!("mounting snapshot {score}");
    // Already served: no process started (what every spawn after the first one sees).
    if snapfs::launch::existing(&registry, &dir, &hex, offset)
        .with_context(mounting)?
        .is_some()
    {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut keeper = spawngrid_lib(rt);
    keeper
        .args(["mount", &hex])
        .arg(&dir)
        .args(["--uid-offset", &offset.to_string(), "--keep"]);
    match starting() {
        Some(standby) => standby.mount_or_start(&registry, &dir, &hex, keeper),
        None => snapfs::launch::start(&registry, &dir, keeper),
    }
    .with_context(mounting)?;
    Ok(dir)
}

/// `spawngrid lib --data DATA` for `rt`'s data dir.
fn spawngrid_lib(rt: &Runtime) -> Command {
    let mut cmd = Command::new(runtime::helper::self_exe());
    cmd.args(["lib", "--data"]).arg(&rt.data);
    cmd
}

/// `spawngrid lib standby` for `rt`: a mount keeper on standby for [`mount`] (its two process
/// starts are then behind the next spawn of a snapshot not mounted yet).
fn standby_command(rt: &Runtime) -> Command {
    let mut cmd = spawngrid_lib(rt);
    cmd.args(["standby", "--uid-offset", &rt.ids.host_uid.to_string()]);
    cmd
}

/// Where [`mount`] mounts `score`.
fn mount_dir(rt: &Runtime, score: Score) -> PathBuf {
    rt.data.join("mounts").join(score.to_hex()).join("root")
}

/// Unmounts the mount of `score` made by [`mount`] unless an env of `rt` was spawned from it
/// (what a failed spawn leaves). A busy mount stays (an idle sweep takes it later).
pub fn unmount_unused(rt: &Runtime, score: Score) -> Result<()> {
    let hex = score.to_hex();
    if runtime::state::list(rt)?
        .iter()
        .any(|st| st.snapshot.as_deref() == Some(hex.as_str()))
    {
        return Ok(());
    }
    let registry = snapfs::mount::Registry::new(&rt.data);
    match snapfs::mount::unmount(&registry, &mount_dir(rt, score), false) {
        Ok(()) | Err(snapfs::mount::UnmountError::NotMounted(_)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unmounting snapshot {}", score.short())),
    }
}

/// When each snapshot's mount was last asked for (by a spawn) or seen in use (by a sweep);
/// and, behind a lock that makes concurrent spawns of a snapshot not mounted yet mount it
/// once, the mount keeper on standby ([`refill_standby`]), if there is one.
#[derive(Default)]
pub struct MountUses(Mutex<HashMap<Score, Instant>>, Arc<Mutex<Option<Standby>>>);

/// How long after a new mount the next keeper on standby is started: not while the spawn that
/// took the last one is still making its env and running its first command (the two process
/// starts compete with them for CPU).
const STANDBY_AFTER: Duration = Duration::from_millis(250);

impl MountUses {
    fn touch(&self, score: Score) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(score, Instant::now());
    }
}

/// [`mount`] for a spawn of the node: the mount counts as used now, so a sweep leaves it
/// while the env is being made; a new mount is made by the keeper on standby if one waits
/// (another is started a moment later), else by a new keeper while the node reads the
/// snapshot ahead ([`crate::ahead`]).
pub fn mount_for(node: &Node, score: Score) -> Result<PathBuf> {
    node.mount_uses.touch(score);
    let mut standby = node.mount_uses.1.lock().unwrap_or_else(|e| e.into_inner());
    let mut took = false;
    let dir = mount(&node.rt, score, || {
        took = true;
        let waiting = standby.take().and_then(|mut s| s.waiting().then_some(s));
        // A server on standby reads the snapshot as soon as this node would.
        if waiting.is_none() {
            crate::ahead::start(&node.store, score);
        }
        waiting
    });
    drop(standby);
    if took {
        refill_standby(node, STANDBY_AFTER);
    }
    dir
}

/// Starts the next mount keeper on standby for the node's spawns after `delay`, on a thread
/// of its own, unless one waits by then. Failures are logged (spawns then start keepers).
pub fn refill_standby(node: &Node, delay: Duration) {
    let slot = node.mount_uses.1.clone();
    let keeper = standby_command(&node.rt);
    let spawned = std::thread::Builder::new()
        .name("mount-standby".into())
        .spawn(move || {
            std::thread::sleep(delay);
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            if slot.as_mut().is_some_and(|s| s.waiting()) {
                return;
            }
            match Standby::start(keeper) {
                Ok(s) => *slot = Some(s),
                Err(e) => tracing::warn!("starting a mount keeper on standby: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("starting a mount keeper on standby: {e}");
    }
}

/// Unmounts the node's snapshot mounts that no env has used for `mount_idle_secs` (a mount
/// first seen unused starts its clock then, so a restarted node waits the whole time too).
/// Runs under the admission lock; the mounts of envs and of spawns being made are in use. An
/// unmount that finds the mount busy leaves it.
pub fn sweep_mounts(node: &Node) -> Result<()> {
    let idle = Duration::from_secs(node.config.mount_idle_secs);
    let pending = node.admission.lock();
    let mut live: HashSet<Score> = runtime::state::list(&node.rt)?
        .iter()
        .filter_map(|st| st.snapshot.as_deref()?.parse().ok())
        .collect();
    live.extend(pending.iter().filter_map(|p| p.snapshot));
    let registry = snapfs::mount::Registry::new(&node.rt.data);
    let now = Instant::now();
    let mut uses = node.mount_uses.0.lock().unwrap_or_else(|e| e.into_inner());
    for rec in registry.records() {
        let Ok(score) = rec.score.parse::<Score>() else {
            continue;
        };
        // Only the node's own mounts (`lib mount` elsewhere is an admin's business).
        if rec.dir != mount_dir(&node.rt, score) {
            continue;
        }
        if live.contains(&score) {
            uses.insert(score, now);
            continue;
        }
        let last = *uses.entry(score).or_insert(now);
        if now.duration_since(last) < idle {
            continue;
        }
        match snapfs::mount::unmount(&registry, &rec.dir, false) {
            Ok(()) => {
                tracing::info!(snapshot = %score.short(), "unmounted an idle snapshot");
                uses.remove(&score);
            }
            Err(e) => tracing::debug!("sweeping an idle snapshot mount: {e}"),
        }
    }
    Ok(())
}

/// Sweeps idle snapshot mounts now and then (see [`sweep_mounts`]), unless
/// `mount_idle_secs` is 0.
pub fn start_sweeping(node: Arc<Node>) {
    let idle = node.config.mount_idle_secs;
    if idle == 0 {
        return;
    }
    let every = Duration::from_secs((idle / 2).clamp(1, 60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = node.clone();
            match tokio::task::spawn_blocking(move || sweep_mounts(&n)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("sweeping idle snapshot mounts: {e:#}"),
                Err(e) => tracing::warn!("sweeping idle snapshot mounts: {e}"),
            }
        }
    });
}

/// Restarts the server of every snapshot mount that runs a binary since replaced on disk (the
/// node was upgraded): envs keep their mounts, which then run the new code. Failures are
/// logged; a mount whose restart failed keeps its old server or ends (its keeper's log says).
pub fn upgrade_mounts(rt: &Runtime) {
    let registry = snapfs::mount::Registry::new(&rt.data);
    for rec in registry.records() {
        if !snapfs::mount::running(rec.pid) || !snapfs::mount::outdated(&rec) {
            continue;
        }
        match snapfs::mount::restart(&registry, &rec.dir) {
            Ok((old, new)) => tracing::info!(
                dir = %rec.dir.display(),
                "upgraded the mount's server (pid {} -> {})",
                old.server,
                new.server
            ),
            Err(e) => tracing::warn!("upgrading a mount's server: {e}"),
        }
    }
}

/// Logical sizes of snapshots, read from the library once each (a snapshot never changes).
/// The library is opened on first use and its index reloaded when a snapshot is not in it
/// (imported or repacked by another process since).
pub struct Sizes {
    store: store::Store,
    lib: Mutex<Option<Arc<Library>>>,
    known: Mutex<HashMap<Score, u64>>,
}

impl Sizes {
    /// Sizes of the snapshots in `store`'s library.
    pub fn new(store: store::Store) -> Sizes {
        Sizes {
            store,
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
        let lib = self.library()?;
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

    /// The library, opened on first use (`None` while there is none).
    pub fn library(&self) -> Option<Arc<Library>> {
        let mut slot = self.lib.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = self.store.library().ok().map(Arc::new);
        }
        slot.clone()
    }
}
