//! The hidden helper subcommands the runtime re-executes itself as.
//!
//! A binary that hosts the runtime calls [`run_if_requested`] first thing in `main`, before it
//! starts any thread: `BIN env-init CONFIG` sets up a new env and forks its init, `BIN env-enter
//! CONFIG` runs a command inside an env. CONFIG is one JSON argument. Doing this in a freshly
//! exec'd, single-threaded process makes `fork` and `setns(CLONE_NEWUSER)` safe, whatever
//! threads the caller (a tokio daemon, rayon pools) runs.

use std::process::ExitCode;

/// First argument of the env-init helper.
pub const INIT: &str = "env-init";
/// First argument of the env-enter helper.
pub const ENTER: &str = "env-enter";

/// If this process was started as a helper (`argv[1]` is [`INIT`] or [`ENTER`]), runs it and
/// returns its exit code; otherwise returns `None` and the binary carries on as usual.
pub fn run_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args().skip(1);
    let which = args.next()?;
    let config = args.next().unwrap_or_default();
    match which.as_str() {
        INIT => Some(crate::init::helper_main(&config)),
        ENTER => Some(crate::exec::helper_main(&config)),
        _ => None,
    }
}
