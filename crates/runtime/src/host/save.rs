//! Save: capture a running env's write layer as a new snapshot (diff-apply on its parent),
//! with the env frozen for a consistent point-in-time capture.
//!
//! The runtime knows nothing of names: [`save`] returns what it stored together with the
//! library lease that keeps gc away from it, and the caller binds a name before dropping it.

use crate::error::{fail, Context, Error, Result};
use crate::host::cgroup::Cgroup;
use crate::host::freeze::SaveLock;
use crate::host::runtime::Runtime;
use crate::host::state;
use library::import::{ImportOptions, Imported};
use library::lease::Lease;
use library::{Library, Score};
use std::time::Duration;

/// How long a save waits for a running gc to finish.
const LEASE_WAIT: Duration = Duration::from_secs(60);

/// What a save stored, and the shared lease that keeps gc from reclaiming it: hold it until
/// a name reaches the snapshot (then gc keeps it for the name's sake). On a grid, bind with
/// `store::bind_written`, which checks the lease is still live.
pub struct Saved {
    /// The new snapshot and what the import noticed.
    pub imported: Imported,
    /// The library lease taken for the save.
    pub lease: Lease,
}

/// Saves env `env` as a new snapshot, a child of the one it was spawned from. The env keeps
/// running.
pub fn save(rt: &Runtime, env: &str, lib: &Library) -> Result<Saved> {
    let st = state::load(rt, env)?;
    if !st.alive() {
        return Err(Error::NotRunning { name: env.into() });
    }
    let parent = match &st.snapshot {
        Some(hex) => hex
            .parse::<Score>()
            .with_context(|| format!("bad snapshot score in env {env}"))?,
        None => fail!(
            "env {env} was spawned from a plain directory, not a snapshot: nothing to save against"
        ),
    };
    let lease = lib.write_lease(Some(&parent), LEASE_WAIT, &|_| {})?;
    let cg = Cgroup::of_env(rt, env, Some(&st));
    // Held until thawed: a save that dies frozen is seen and undone (see crate::host::freeze).
    let _frozen = SaveLock::acquire(rt, &st)?;
    cg.freeze()?;
    library::faults::point(library::faults::SAVE_FROZEN);
    let captured = capture(rt, &st, lib, parent);
    let thawed = cg.thaw();
    let imported = captured?;
    thawed?;
    Ok(Saved { imported, lease })
}

/// Syncs and reads the (frozen) env's upper into a child snapshot of `parent`.
fn capture(rt: &Runtime, st: &state::EnvState, lib: &Library, parent: Score) -> Result<Imported> {
    let upper = st.upper(rt)?;
    let dir =
        std::fs::File::open(&upper).with_context(|| format!("opening {}", upper.display()))?;
    rustix::fs::syncfs(&dir).with_context(|| format!("syncfs {}", upper.display()))?;
    let opts = ImportOptions {
        author: st.owner.clone(),
        note: format!("saved from env {}", st.name),
        parent: None,
        progress: &library::progress::Silent,
        // An env cannot make a device node; one in its upper is a copy-up of its snapshot's,
        // which an import allowed.
        allow_devices: true,
    };
    Ok(library::overlay::apply_upper(
        lib,
        parent,
        &upper,
        &opts,
        Some(st.ids.shift()),
    )?)
}
