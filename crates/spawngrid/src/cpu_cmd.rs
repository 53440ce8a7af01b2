//! `spawngrid env cpu ENV`: an interactive shell (or command) on a terminal inside an env,
//! bridged to this process's terminal: raw mode while it runs, window size changes passed on,
//! the command's exit code returned. Works through pipes too (no raw mode; end of input is
//! sent as ^D).

use anyhow::{Context, Result};
use runtime::state::EnvState;
use runtime::tty::Tty;
use runtime::Runtime;
use rustix::termios::{self, OptionalActions, Termios};
use std::io::{Read, Write};
use std::process::ExitCode;

/// What runs when no command is given: bash as a login shell where the env has it, else sh.
const LOGIN_SHELL: &str = "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";

/// Restores the terminal's settings when dropped (also on errors).
struct RawMode(Termios);

impl RawMode {
    /// Puts stdin's terminal in raw mode; None if stdin is not a terminal.
    fn enter() -> Option<RawMode> {
        let saved = termios::tcgetattr(rustix::stdio::stdin()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.0);
    }
}

/// Runs `cmd` (or a login shell) in `st` on a terminal; returns the command's exit code.
pub fn cpu(rt: &Runtime, st: &EnvState, cmd: Vec<String>) -> Result<ExitCode> {
    let argv = if cmd.is_empty() {
        vec!["sh".into(), "-c".into(), LOGIN_SHELL.into()]
    } else {
        cmd
    };
    let (rows, cols) = termios::tcgetwinsize(rustix::stdio::stdin())
        .map(|w| (w.ws_row, w.ws_col))
        .unwrap_or((24, 80));
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    block_sigwinch();
    let mut tty = Tty::spawn(rt, st, &argv, &[("TERM".into(), term)], rows, cols)?;
    let raw = RawMode::enter();
    let interactive = raw.is_some();
    let master = tty.master.try_clone().context("duplicating the terminal")?;
    if interactive {
        let resize = tty.master.try_clone().context("duplicating the terminal")?;
        std::thread::spawn(move || forward_resizes(resize));
    }
    std::thread::spawn(move || forward_input(std::fs::File::from(master), interactive));
    let mut output = std::fs::File::from(tty.master.try_clone()?);
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16384];
    // Ends with EIO once the command and everything holding the terminal are gone.
    while let Ok(n @ 1..) = output.read(&mut buf) {
        if stdout
            .write_all(&buf[..n])
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    let code = tty.wait()?;
    drop(raw);
    Ok(ExitCode::from(code as u8))
}

/// Copies our stdin to the terminal; at its end sends ^D (EOF to a reading shell).
fn forward_input(mut to: std::fs::File, interactive: bool) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stdin.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    if !interactive {
        let _ = to.write_all(b"\x04");
    }
}

/// Blocks SIGWINCH in this thread (and the threads it starts), so [`forward_resizes`] can
/// take it with `sigwait`.
fn block_sigwinch() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// On every SIGWINCH, gives the env's terminal our terminal's size.
fn forward_resizes(master: rustix::fd::OwnedFd) {
    loop {
        let mut sig = 0;
        // SAFETY: as in block_sigwinch; sigwait writes the signal number into `sig`.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGWINCH);
            libc::sigwait(&set, &mut sig);
        }
        if let Ok(size) = termios::tcgetwinsize(rustix::stdio::stdin()) {
            let _ = termios::tcsetwinsize(&master, size);
        }
    }
}
