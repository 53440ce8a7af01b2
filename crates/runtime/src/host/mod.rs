//! The host side of the runtime: what runs in the caller's process (a node, the CLI), one
//! module per operation or resource. It starts the processes of `inside` and talks
//! to them only through [`crate::protocol`].

pub mod boom;
pub mod cgroup;
pub(crate) mod claims;
pub mod cpus;
pub mod devices;
pub mod egress;
pub mod exec;
pub mod freeze;
pub mod ids;
pub mod launch;
pub mod net;
pub mod owners;
pub mod policy;
pub mod runtime;
pub mod save;
pub mod service;
pub mod spawn;
pub mod state;
pub mod tty;
