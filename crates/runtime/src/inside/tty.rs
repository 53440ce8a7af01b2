//! Interactive sessions, inside: a terminal opened in the env's own devpts ([`open`]), by
//! env-enter, which sends its master to the host ([`crate::host::tty`]) and runs the command
//! on it ([`attach`]), or by the init's exec service (`inside::service`).

use crate::fdpass;
use crate::inside::security;
use crate::protocol::{winsize, TTY_MASTER};
use anyhow::{Context, Result};
use rustix::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Inside the env (env-enter, after setns): opens a terminal, sends its master to the caller
/// over stdin (a Unix socket), points stdin at /dev/null, and prepares `cmd` to run as a
/// session leader on the slave.
pub fn attach(cmd: &mut Command, rows: u16, cols: u16) -> Result<()> {
    let (master, slave) = open(rows, cols)?;
    fdpass::send(rustix::stdio::stdin(), TTY_MASTER, &[master.as_fd()])?;
    drop(master);
    security::stdin_to_null()?;
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    // SAFETY: the closure runs in the forked child before exec and only makes two syscalls
    // (setsid, ioctl TIOCSCTTY) that are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    Ok(())
}

/// A new terminal of `rows` x `cols` in the devpts at /dev: its master and its slave (neither
/// the caller's controlling terminal; both close on exec).
pub fn open(rows: u16, cols: u16) -> Result<(OwnedFd, std::fs::File)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .context("opening /dev/ptmx")?;
    grantpt(&master).context("grantpt")?;
    unlockpt(&master).context("unlockpt")?;
    rustix::termios::tcsetwinsize(&master, winsize(rows, cols)).context("sizing the terminal")?;
    let name = ptsname(&master, Vec::new()).context("ptsname")?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))
        .context("opening the terminal's slave")?;
    Ok((master, slave))
}
