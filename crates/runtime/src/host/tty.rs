//! Interactive sessions, host side: a command on a pseudo-terminal allocated inside the env
//! (its own devpts, so `tty` names `/dev/pts/N` there, by `inside::tty`), with the
//! master handed to the caller.
//!
//! The caller gives the env-enter helper one end of a Unix socket pair as stdin; the helper
//! opens `/dev/ptmx` inside the env, sends the master over the socket (`SCM_RIGHTS`) and runs
//! the command as a session leader whose controlling terminal is the slave. The caller reads
//! and writes the master (the node bridges it to SSH or a WebSocket), resizes it, and gets the
//! exit status from the helper. ^C and friends reach the command through the line discipline.

use crate::error::{fail, Context, Result};
use crate::fdpass;
use crate::host::exec::{self, Identity};
use crate::host::runtime::Runtime;
use crate::host::state::EnvState;
use crate::protocol::{winsize, ENTER_FAILED, TTY_MASTER};
use rustix::fd::{AsFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::io::Read;
use std::process::{Child, Stdio};

/// A command running on a terminal inside an env.
pub struct Tty {
    /// The terminal's master side: read the command's output, write its input.
    pub master: OwnedFd,
    child: Child,
}

impl Tty {
    /// Starts `argv` inside env `state` on a new terminal of `rows` x `cols`, as root.
    pub fn spawn(
        rt: &Runtime,
        state: &EnvState,
        argv: &[String],
        env: &[(String, String)],
        rows: u16,
        cols: u16,
    ) -> Result<Tty> {
        Tty::spawn_as(rt, state, argv, env, None, rows, cols)
    }

    /// [`Tty::spawn`] as `user` of the env (their groups, home and login variables); the
    /// terminal is opened by that user, so they own it.
    pub fn spawn_as(
        rt: &Runtime,
        state: &EnvState,
        argv: &[String],
        env: &[(String, String)],
        user: Option<&Identity>,
        rows: u16,
        cols: u16,
    ) -> Result<Tty> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .context("socketpair for the terminal")?;
        let mut cmd = exec::command_with(rt, state, argv, env, Some((rows, cols)), user)?;
        let mut child = cmd
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting env-enter")?;
        drop(cmd);
        match receive_fd(&ours) {
            Ok(master) => Ok(Tty { master, child }),
            Err(e) => {
                let _ = child.kill();
                let mut msg = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut msg);
                }
                let _ = child.wait();
                Err(e).context(msg.trim().to_string())
            }
        }
    }

    /// Sets the terminal size (the command gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        resize(&self.master, rows, cols)
    }

    /// Waits for the command; its exit code (128 + N for signal N).
    pub fn wait(&mut self) -> Result<i32> {
        wait_child(&mut self.child)
    }

    /// Splits into the master and the command, so one task can use (and finally close) the
    /// master while another waits. Closing the master hangs the terminal up: the command gets
    /// SIGHUP, as when a terminal window is closed.
    pub fn into_parts(self) -> (OwnedFd, TtyCommand) {
        (self.master, TtyCommand(self.child))
    }
}

/// The command of a [`Tty`] without its master (see [`Tty::into_parts`]).
pub struct TtyCommand(Child);

impl TtyCommand {
    /// Waits for the command; its exit code (128 + N for signal N).
    pub fn wait(&mut self) -> Result<i32> {
        wait_child(&mut self.0)
    }

    /// The host pid of the env-enter helper running the command (not reaped before
    /// [`TtyCommand::wait`], so a pidfd of it is safe to open: async callers wait for that to
    /// be readable, then `wait` returns at once).
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

/// The exit code of env-enter; an error with its message if it could not start the command.
fn wait_child(child: &mut Child) -> Result<i32> {
    let status = child.wait().context("waiting for env-enter")?;
    let code = status.code().unwrap_or(ENTER_FAILED as i32);
    if code == ENTER_FAILED as i32 {
        let mut msg = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut msg);
        }
        let msg = msg.trim().trim_start_matches("spawngrid env-enter: ");
        if !msg.is_empty() {
            fail!("{msg}");
        }
    }
    Ok(code)
}

/// Sets the size of the terminal whose master is `master` (the command gets SIGWINCH).
pub fn resize(master: impl AsFd, rows: u16, cols: u16) -> Result<()> {
    rustix::termios::tcsetwinsize(master, winsize(rows, cols)).context("resizing the terminal")
}

/// Receives the terminal's master from the helper.
fn receive_fd(sock: &OwnedFd) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let (n, fds) = fdpass::recv(sock, &mut byte).context("receiving the terminal")?;
    match fds.into_iter().next() {
        Some(fd) if n > 0 && byte[..n] == *TTY_MASTER => Ok(fd),
        _ => fail!("env-enter exited before opening a terminal"),
    }
}
