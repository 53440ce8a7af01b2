//! `DATA/envs/<env>/state.json`: what a new process needs to find, enter, save and boom a
//! running env; and the liveness check that guards against pid reuse.

pub use crate::proc::start_time;

use crate::error::{Context, Error, Result};
use crate::host::cgroup::Cgroup;
use crate::host::egress::Policy;
use crate::host::ids::IdRange;
use crate::host::net::{NatLink, Network};
use crate::host::runtime::Runtime;
use crate::proc::proc_stat;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The recorded state of one env.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvState {
    /// The env's name (its directory's name).
    pub name: String,
    /// The user the env belongs to.
    pub owner: String,
    /// The snapshot it was spawned from, when known (needed to save).
    pub snapshot: Option<String>,
    /// The lower directory as given (a snapfs mount or a plain directory).
    pub lower: PathBuf,
    /// Whether the write layer is disk-backed (`--disk`).
    pub disk: bool,
    /// Size limit of the write layer in bytes.
    pub write_size: u64,
    /// Host pid of the env's init (PID 1 inside); 0 while spawning.
    pub init_pid: i32,
    /// Start time of the init (field 22 of `/proc/PID/stat`), to detect pid reuse.
    pub init_start: u64,
    /// The env's cgroup directories.
    pub cgroups: Vec<PathBuf>,
    /// The env's host mount points, in mount order.
    pub mounts: Vec<PathBuf>,
    /// The id range root inside maps to.
    pub ids: IdRange,
    /// The host uid that owns the env's user namespace ([`crate::host::owners`]); absent from
    /// envs spawned before per-env owners (theirs is `ids.host_uid`).
    #[serde(default)]
    pub owner_uid: Option<u32>,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The env's network (absent from state files older than networks: `none`).
    #[serde(default)]
    pub network: Network,
    /// The `nat` network's veth pair and addresses, once set up.
    #[serde(default)]
    pub nat: Option<NatLink>,
    /// The `nat` network's egress policy (absent from older state files: the default).
    #[serde(default)]
    pub egress: Policy,
}

impl EnvState {
    /// Whether the env's init is still the process that was started (same pid, same start
    /// time) and has not exited (a zombie waiting for its parent to reap it is not alive).
    pub fn alive(&self) -> bool {
        self.init_pid > 0
            && proc_stat(self.init_pid).is_some_and(|(state, start)| {
                start == self.init_start && state != 'Z' && state != 'X'
            })
    }

    /// The env's write layer directory (`rw/upper`) on the host.
    pub fn upper(&self, rt: &Runtime) -> Result<PathBuf> {
        Ok(rt.env_dir(&self.name)?.join("rw/upper"))
    }
}

impl Cgroup {
    /// The cgroup of env `name` of `rt`'s node: the one recorded in its `state` (an env keeps
    /// the name it was spawned with, also across an upgrade of the node), else the one the
    /// node gives a new env.
    pub fn of_env(rt: &Runtime, name: &str, state: Option<&EnvState>) -> Cgroup {
        state
            .and_then(|st| Cgroup::recorded(&rt.cgroups, &st.cgroups))
            .unwrap_or_else(|| Cgroup::new(&rt.cgroups, name))
    }
}

/// The path of an env's state file.
fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Writes the state whole ([`library::atomic::replace`]: a reader sees the old or the new).
pub fn store(dir: &Path, state: &EnvState) -> Result<()> {
    let text = serde_json::to_vec_pretty(state).context("encoding the env's state")?;
    let path = state_file(dir);
    library::atomic::replace(&path, &text)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads env `name`'s state.
pub fn load(rt: &Runtime, name: &str) -> Result<EnvState> {
    load_dir(&rt.env_dir(name)?)
}

/// Reads the state in env directory `dir`.
pub fn load_dir(dir: &Path) -> Result<EnvState> {
    let file = state_file(dir);
    let text = match std::fs::read(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().into();
            return Err(Error::NoSuchEnv { name, file });
        }
        r => r.with_context(|| format!("reading {}", file.display()))?,
    };
    let state =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", file.display()))?;
    Ok(state)
}

/// Every env with a state file, by name; unreadable ones are skipped.
pub fn list(rt: &Runtime) -> Result<Vec<EnvState>> {
    let dir = rt.envs_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display()))?,
    };
    let mut out: Vec<EnvState> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| load(rt, &name).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
