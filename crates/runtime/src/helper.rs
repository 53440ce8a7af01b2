//! The hidden helper subcommands the runtime re-executes itself as.
//!
//! A binary that hosts the runtime calls [`run_if_requested`] first thing in `main`, before it
//! starts any thread: `BIN env-init CONFIG` sets up a new env and forks its init, `BIN env-enter
//! CONFIG` runs a command inside an env. CONFIG is one JSON argument. Doing this in a freshly
//! exec'd, single-threaded process makes `fork` and `setns(CLONE_NEWUSER)` safe, whatever
//! threads the caller (a tokio daemon, rayon pools) runs.

use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// First argument of the env-init helper.
pub const INIT: &str = "env-init";
/// First argument of the env-enter helper.
pub const ENTER: &str = "env-enter";

/// This executable as the kernel knows it (`/proc/self/exe`), for re-executing ourselves:
/// unlike [`std::env::current_exe`] it still works after the file was replaced or deleted (an
/// upgrade installed under a running node), and it always runs the same build as the caller.
pub fn self_exe() -> std::path::PathBuf {
    std::path::PathBuf::from("/proc/self/exe")
}

/// If this process was started as a helper (`argv[1]` is [`INIT`] or [`ENTER`]), runs it and
/// returns its exit code; otherwise returns `None` and the binary carries on as usual.
pub fn run_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args().skip(1);
    let which = args.next()?;
    let config = args.next().unwrap_or_default();
    let main: fn(&str) -> ExitCode = match which.as_str() {
        INIT => crate::init::helper_main,
        ENTER => crate::exec::helper_main,
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

/// An env-init helper started ahead of the next spawn: exec'd and waiting for its config on
/// stdin, so a spawn does not wait for the exec and start-up of this (large) binary, about
/// 1.5 ms. Only long-lived callers keep one ([`crate::Runtime::keep_spare_helper`]); a spare
/// whose caller dies reads end-of-file and exits.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    keep: AtomicBool,
    child: Mutex<Option<Child>>,
}

/// Starts an env-init helper that reads its config from stdin (`env-init -`).
fn start_init(helper: &Path) -> Result<Child> {
    Command::new(helper)
        .args([INIT, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", helper.display()))
}

impl Spare {
    /// An env-init helper waiting for its config: the spare if one is alive, else a new one.
    pub(crate) fn take(&self, helper: &Path) -> Result<Child> {
        let spare = match self.child.try_lock() {
            Ok(mut slot) => slot.take(),
            // A refill is starting one right now: do not wait for it.
            Err(_) => None,
        };
        match spare {
            Some(mut c) => match c.try_wait() {
                Ok(None) => Ok(c),
                // It died (killed from outside): reap it and start another.
                _ => {
                    let _ = c.wait();
                    start_init(helper)
                }
            },
            None => start_init(helper),
        }
    }

    /// Keeps a spare from now on, and starts it.
    pub(crate) fn keep(&self, helper: &Path) {
        self.keep.store(true, Ordering::Relaxed);
        self.refill(helper);
    }

    /// Starts a spare if spares are kept and there is none (after a spawn took it).
    pub(crate) fn refill(&self, helper: &Path) {
        if !self.keep.load(Ordering::Relaxed) {
            return;
        }
        // Blocks only another refill (a spawn that finds no spare starts its own helper).
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            // No spare is no error: the next spawn starts its own helper.
            *slot = start_init(helper).ok();
        }
    }
}
