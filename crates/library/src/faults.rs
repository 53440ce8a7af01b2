//! Named crash points on the write path (pack written, snapshot committed, env frozen, name
//! about to be bound), for the crash tests of `crates/spawngrid/tests/faults.rs`.
//!
//! Built with the test-only `faults` feature, [`point`] kills its own process with SIGKILL
//! (as `kill -9` or a power cut would: no destructor, no buffered write, no unlock) when the
//! environment variable `SPAWNGRID_FAULT` names that point, and stops it with SIGSTOP (a
//! frozen process: its leases go unrenewed until a test sends SIGCONT) when
//! `SPAWNGRID_FAULT_STOP` does. Without the feature it does nothing and costs nothing.

/// Every point, in the order a save passes them.
pub const POINTS: &[&str] = &[
    SAVE_FROZEN,
    PACK_TEMP,
    PACK_WRITTEN,
    SNAPSHOT_COMMITTED,
    BEFORE_BIND,
];

/// A save has frozen the env and not yet read its write layer (`runtime::save`).
pub const SAVE_FROZEN: &str = "save-frozen";
/// A pack's temporary file is written and synced, not yet renamed into `packs/`
/// ([`crate::LocalBackend`]).
pub const PACK_TEMP: &str = "pack-temp";
/// A pack is in `packs/` and indexed; the snapshot may need more.
pub const PACK_WRITTEN: &str = "pack-written";
/// The snapshot object is durable ([`crate::Library::commit`]), no name bound yet.
pub const SNAPSHOT_COMMITTED: &str = "snapshot-committed";
/// A save or an import is done and thawed, its name about to be bound (the node's save,
/// `env save`, `lib import`).
pub const BEFORE_BIND: &str = "before-bind";

/// Crashes here if this is the point `SPAWNGRID_FAULT` names, stops here if it is the one
/// `SPAWNGRID_FAULT_STOP` names (with the `faults` feature).
#[inline]
pub fn point(name: &'static str) {
    #[cfg(feature = "faults")]
    for (var, signal, doing) in [
        ("SPAWNGRID_FAULT", rustix::process::Signal::KILL, "killing"),
        (
            "SPAWNGRID_FAULT_STOP",
            rustix::process::Signal::STOP,
            "stopping",
        ),
    ] {
        if std::env::var_os(var).is_some_and(|v| v == name) {
            eprintln!("spawngrid: fault point {name}: {doing} this process");
            let _ = rustix::process::kill_process(rustix::process::getpid(), signal);
        }
    }
    #[cfg(not(feature = "faults"))]
    let _ = name;
}
