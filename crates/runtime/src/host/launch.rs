//! Starting the env-init helper: the runtime re-executes its own binary
//! ([`self_exe`]) as `BIN env-init UID:GID` ([`crate::protocol::INIT`], [`Owner`]), whose
//! inside half is `inside::init`. A helper is *prepared* before its spawn configures it: owner
//! uid leased, exec'd, in its own user, uts, ipc, net, pid and mount namespaces with its ids
//! mapped and the env's `/dev` staged (`Prepared`). Long-lived callers keep one prepared ahead
//! of the next spawn (`Spare`).

use crate::error::{fail, Context, Result};
use crate::fdpass;
use crate::host::ids::{IdRange, OWNER_CLAIMS};
use crate::protocol::{InitReport, Mapped, Message, Owner, INIT};
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// This executable as the kernel knows it (`/proc/self/exe`), for re-executing ourselves:
/// unlike [`std::env::current_exe`] it still works after the file was replaced or deleted (an
/// upgrade installed under a running node), and it always runs the same build as the caller.
pub fn self_exe() -> std::path::PathBuf {
    std::path::PathBuf::from("/proc/self/exe")
}

/// An env-init helper waiting for its env's config (`inside::init`'s step 1 done). Dropped,
/// it is killed and reaped, and gives its owner uid back unless it was handed over.
pub(crate) struct Prepared {
    /// The helper.
    pub child: Child,
    /// The host's end of its stdin, a SOCK_SEQPACKET socket: [`Prepared::send`].
    control: OwnedFd,
    /// Its reports, a line each.
    reports: Lines<BufReader<ChildStdout>>,
    /// The owner of its user namespace: the env's owner uid, once handed over.
    pub owner: Owner,
    /// What holds the owner uid's claim until [`Prepared::hand_over`].
    holder: Option<PathBuf>,
}

impl Prepared {
    /// Starts `helper` owned by `owner` (whose uid's claim `holder` holds: see
    /// `host::owners`) in the node's envs directory `envs`, and waits until it is in its
    /// namespaces, its ids mapped to `ids`. The claim is given up if that fails.
    pub fn start(
        helper: &Path,
        envs: &Path,
        ids: IdRange,
        owner: Owner,
        holder: PathBuf,
    ) -> Result<Prepared> {
        let arg = String::from_utf8(owner.encode()).expect("digits and a colon");
        // Its working directory, where its staging tmpfs is mounted (`inside::rootfs::stage`),
        // must exist: the node's envs directory does.
        let pair = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .context("a socket pair for env-init");
        let child = std::fs::create_dir_all(envs)
            .with_context(|| format!("creating {}", envs.display()))
            .and(pair)
            .and_then(|(control, theirs)| {
                let started = Command::new(helper)
                    .args([INIT, &arg])
                    .current_dir(envs)
                    .stdin(Stdio::from(theirs))
                    .stdout(Stdio::piped())
                    .spawn();
                let started = started.with_context(|| format!("starting {}", helper.display()));
                started.map(|child| (child, control))
            });
        let (mut child, control) = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = OWNER_CLAIMS.unclaim(&owner.uid.to_string(), &holder);
                return Err(e);
            }
        };
        let stdout = child.stdout.take().expect("piped");
        let mut helper = Prepared {
            child,
            control,
            reports: BufReader::new(stdout).lines(),
            owner,
            holder: Some(holder),
        };
        match helper.next()? {
            InitReport::Userns => {}
            other => fail!("env-init reported {other:?} before its user namespace"),
        }
        let pid = helper.child.id();
        std::fs::write(format!("/proc/{pid}/uid_map"), ids.map_line(false))
            .context("writing uid_map")?;
        std::fs::write(format!("/proc/{pid}/gid_map"), ids.map_line(true))
            .context("writing gid_map")?;
        helper.send(&Mapped.encode(), &[])?;
        Ok(helper)
    }

    /// Sends the helper one message with `fds` attached; if it stopped reading, the error is
    /// its own report of why, if it made one.
    pub fn send(&mut self, msg: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        if let Err(e) = fdpass::send(&self.control, msg, fds) {
            self.next()?;
            return Err(e).context("writing to env-init");
        }
        Ok(())
    }

    /// The helper's next report; its [`InitReport::Error`] or an early end as an error.
    pub fn next(&mut self) -> Result<InitReport> {
        let line = match self.reports.next() {
            Some(line) => line.context("reading from env-init")?,
            None => fail!("env-init exited early"),
        };
        match InitReport::decode(line.as_bytes()).context("reading from env-init")? {
            InitReport::Error(e) => fail!("env-init: {e}"),
            report => Ok(report),
        }
    }

    /// Hands the owner uid's claim over to the env whose directory is `dir` (which records it
    /// and gives it up when boomed).
    pub fn hand_over(&mut self, dir: &Path) -> Result<()> {
        if let Some(holder) = &self.holder {
            OWNER_CLAIMS.hand_over(&self.owner.uid.to_string(), holder, dir)?;
            self.holder = None;
        }
        Ok(())
    }

    /// Gives the helper (and so the env it becomes) the calling thread's niceness.
    fn renice_as_caller(&self) -> Result<()> {
        let nice = rustix::process::getpriority_process(None).context("reading our niceness")?;
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        rustix::process::setpriority_process(pid, nice).context("renicing the env-init helper")?;
        Ok(())
    }

    /// Whether the helper still waits (it was not killed from outside).
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(holder) = &self.holder {
            let _ = OWNER_CLAIMS.unclaim(&self.owner.uid.to_string(), holder);
        }
    }
}

/// A helper prepared ahead of the next spawn, so a spawn waits neither for the exec and
/// start-up of this (large) binary, about 1.5 ms, nor for the making of its namespaces. Only
/// long-lived callers keep one ([`crate::Runtime::keep_spare_helper`]); a spare whose caller
/// dies reads end-of-file and exits, and its owner uid's claim goes stale.
#[derive(Default)]
pub(crate) struct Spare {
    keep: AtomicBool,
    helper: Mutex<Option<Prepared>>,
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare")
            .field("keep", &self.keep.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Spare {
    /// A prepared helper: the spare if one is alive, else one from `prepare`.
    pub(crate) fn take(&self, prepare: impl FnOnce() -> Result<Prepared>) -> Result<Prepared> {
        let spare = match self.helper.try_lock() {
            Ok(mut slot) => slot.take(),
            // A refill is preparing one right now: do not wait for it.
            Err(_) => None,
        };
        match spare {
            Some(mut h) => match h.alive() {
                // It may have been prepared at a lower priority than its env should run at.
                true => h.renice_as_caller().map(|()| h),
                // It died (killed from outside): dropping it reaps it.
                false => prepare(),
            },
            None => prepare(),
        }
    }

    /// Keeps a spare from now on, and prepares it with `prepare`.
    pub(crate) fn keep(&self, prepare: impl FnOnce() -> Result<Prepared>) {
        self.keep.store(true, Ordering::Relaxed);
        self.refill(prepare);
    }

    /// Whether spares are kept.
    pub(crate) fn kept(&self) -> bool {
        self.keep.load(Ordering::Relaxed)
    }

    /// Prepares a spare with `prepare` if spares are kept and there is none (after a spawn
    /// took it).
    pub(crate) fn refill(&self, prepare: impl FnOnce() -> Result<Prepared>) {
        if !self.keep.load(Ordering::Relaxed) {
            return;
        }
        // Blocks only another refill (a spawn that finds no spare prepares its own helper).
        let mut slot = self.helper.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            // No spare is no error: the next spawn prepares its own helper.
            *slot = prepare().ok();
        }
    }
}
