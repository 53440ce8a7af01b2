//! Starting the env-init helper: the runtime re-executes its own binary
//! ([`self_exe`]) as `BIN env-init -` ([`crate::protocol::INIT`]), whose inside half is
//! `inside::init`; one may be started ahead of the next spawn (`Spare`).

use crate::error::{Context, Result};
use crate::protocol::INIT;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// This executable as the kernel knows it (`/proc/self/exe`), for re-executing ourselves:
/// unlike [`std::env::current_exe`] it still works after the file was replaced or deleted (an
/// upgrade installed under a running node), and it always runs the same build as the caller.
pub fn self_exe() -> std::path::PathBuf {
    std::path::PathBuf::from("/proc/self/exe")
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
    let child = Command::new(helper)
        .args([INIT, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", helper.display()))?;
    Ok(child)
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
