//! The inside of an env: the code of the processes the host side starts there, each a
//! re-execution of the host's binary with a hidden subcommand ([`crate::protocol`]).
//!
//! A binary that hosts the runtime calls [`run_if_requested`] first thing in `main`, before it
//! starts any thread: `BIN env-init CONFIG` sets up a new env and forks its init ([`init`],
//! which then serves [`service`]), `BIN env-enter CONFIG` runs a command inside an env
//! ([`enter`], with [`tty`] or [`sftp`]). Doing this in a freshly exec'd, single-threaded
//! process makes `fork` and `setns(CLONE_NEWUSER)` safe, whatever threads the caller (a tokio
//! daemon, rayon pools) runs. Nothing here imports [`crate::host`].

pub mod bpf;
pub mod clock;
pub mod cpustat;
pub mod enter;
pub mod init;
pub mod load;
pub mod loopback;
pub mod rootfs;
pub mod seccomp;
pub mod security;
pub mod service;
pub mod sftp;
pub mod tty;
pub mod views;

use crate::protocol::{ENTER, INIT};
use std::process::ExitCode;

/// If this process was started as a helper (`argv[1]` is [`INIT`] or [`ENTER`]), runs it and
/// returns its exit code; otherwise returns `None` and the binary carries on as usual.
pub fn run_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args().skip(1);
    let which = args.next()?;
    let config = args.next().unwrap_or_default();
    let main: fn(&str) -> ExitCode = match which.as_str() {
        INIT => init::helper_main,
        ENTER => enter::helper_main,
        _ => return None,
    };
    default_signal_dispositions();
    Some(main(&config))
}

/// Gives every signal its default disposition and unblocks them all. Ignored and blocked
/// signals survive `exec`: without this, an env's commands would inherit whatever the caller
/// ignored (SIGPIPE, which Rust programs ignore; SIGINT and SIGQUIT, which a shell ignores for
/// its background jobs) or blocked, so `yes | head` or a ^C inside an env would not behave.
fn default_signal_dispositions() {
    // Blocked signals survive `exec` too (a caller that blocked SIGWINCH for a signal thread
    // would pass that on): unblock everything.
    // SAFETY: sigemptyset initializes the set; sigprocmask with a valid set and no old-set
    // pointer; the helper is single-threaded here.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    // The kernel's `struct sigaction` for rt_sigaction(2): handler, flags, restorer, mask.
    // glibc's own wrappers refuse its internal signals (32, 33), so this is the raw call.
    let dfl: [libc::c_ulong; 4] = [libc::SIG_DFL as libc::c_ulong, 0, 0, 0];
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: rt_sigaction with a valid kernel sigaction (SIG_DFL, no flags, empty
            // mask) and no old-action pointer; the helper is single-threaded here.
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize) };
        }
    }
}
