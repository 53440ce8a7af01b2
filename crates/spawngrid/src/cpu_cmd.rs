//! `spawngrid env cpu ENV`: an interactive shell (or command) on a terminal inside an env,
//! bridged to this process's terminal: raw mode while it runs, window size changes passed on,
//! the command's exit code returned. Works through pipes too (no raw mode; end of input is
//! sent as ^D). The terminal handling is [`crate::term`]'s, shared with `spawngrid cpu`.

use crate::term;
use anyhow::{Context, Result};
use runtime::state::EnvState;
use runtime::tty::Tty;
use runtime::Runtime;
use std::io::{Read, Write};
use std::process::ExitCode;

/// Runs `cmd` (or root's login shell) in `st` on a terminal; returns the command's exit code.
pub fn cpu(rt: &Runtime, st: &EnvState, cmd: Vec<String>) -> Result<ExitCode> {
    let argv = if cmd.is_empty() {
        node::pty::login_shell()
    } else {
        cmd
    };
    let (rows, cols) = term::size();
    let term_name = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let mut tty = Tty::spawn(rt, st, &argv, &[("TERM".into(), term_name)], rows, cols)?;
    let interactive = term::interactive();
    if interactive {
        // After the spawn, so the command does not inherit a blocked SIGWINCH.
        let resize = tty.master.try_clone().context("duplicating the terminal")?;
        term::watch_size(move |rows, cols| {
            let size = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let _ = rustix::termios::tcsetwinsize(&resize, size);
        });
    }
    let raw = term::RawMode::enter();
    let mut input =
        std::fs::File::from(tty.master.try_clone().context("duplicating the terminal")?);
    term::forward_input(interactive, move |bytes| input.write_all(bytes));
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
