//! Spawngrid runtime: turns a snapshot into a living, isolated environment on one node.
//!
//! An environment (env) is an overlay root (lower = the snapshot, upper = a size-limited write
//! layer), a set of namespaces (user, mount, pid, uts, ipc, cgroup, net) and a cgroup with
//! memory, pids and cpu limits, with a small init as PID 1. Its state lives in
//! `DATA/envs/<env>/state.json`, so a new process re-adopts running envs.
//!
//! The code is in two halves around one wire ([`protocol`]):
//!
//! - [`host`]: what the caller's process does (spawn, exec, save, boom, state, cgroups,
//!   networks); its public functions return the typed [`Error`].
//! - `inside`: the processes that run in an env (the env-init helper and the init, the
//!   env-enter helper, the init's exec service, terminals, SFTP). Namespace setup never
//!   happens in the (possibly multithreaded) caller: the host re-executes a helper binary
//!   (`/proc/self/exe` for the `spawngrid` binary) with a hidden subcommand, which is
//!   single-threaded when it forks ([`helper::run_if_requested`]).
//!
//! Both use the shared [`identity`], [`mounts`], [`proc`] and socket plumbing; neither half's
//! modules import each other in a circle (`tests/layers.rs` checks it).

pub mod error;
mod fdpass;
pub mod host;
pub mod identity;
mod inside;
pub mod mounts;
pub mod proc;
pub mod protocol;

// The paths callers have always used.
pub use error::{Error, Result};
pub use host::ids::IdRange;
pub use host::net::Network;
pub use host::runtime::{check_env_name, private_data_dir, Runtime};
pub use host::spawn::SpawnOptions;
pub use host::state::EnvState;
pub use host::{
    boom, cgroup, cpus, devices, egress, exec, freeze, ids, net, owners, policy, save, service,
    spawn, state, tty,
};
pub use inside::sftp;

/// The helper processes: what a binary hosting the runtime calls first thing in `main`, and
/// how the runtime names that binary.
pub mod helper {
    pub use crate::host::launch::self_exe;
    pub use crate::inside::run_if_requested;
    pub use crate::protocol::{ENTER, INIT};
}
