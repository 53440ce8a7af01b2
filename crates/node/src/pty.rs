//! An async terminal session inside an env: [`Pty`] puts a [`runtime::tty::Tty`] (a command on
//! a pseudo-terminal allocated inside the env) on tokio — non-blocking reads and writes of the
//! terminal's master through [`AsyncFd`], resizes, the exit code — and makes sure a session
//! the caller lets go of early leaves no process behind.
//!
//! Used by the WebSocket `cpu` route ([`crate::cpu`]); made for any other bridge (the SSH
//! gateway's shell and pty-exec channels) too:
//!
//! ```ignore
//! let pty = Pty::spawn(&node.rt, &st, pty::login_shell(), vec![], 24, 80).await?;
//! pty.write_all(b"ls\n").await?;          // keyboard → command
//! let n = pty.read(&mut buf).await?;      // command → screen; 0 once the terminal is closed
//! pty.resize(50, 120)?;                   // the command gets SIGWINCH
//! let code = pty.wait().await?;           // its exit code (128 + N for signal N)
//! ```
//!
//! Every method takes `&self`, so one task can read while another writes. Dropping a `Pty`
//! whose command has not exited kills the command's whole session: SIGKILL (through a pidfd)
//! to every process whose session is the terminal's, repeated until none is left and the
//! command is reaped. A process that made a session of its own (`setsid`) is not followed.

use anyhow::{Context, Result};
use runtime::state::EnvState;
use runtime::tty::{Tty, TtyCommand};
use runtime::Runtime;
use rustix::fd::{AsFd, OwnedFd};
use std::io;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// The script behind [`login_shell`]: root's shell from the env's `/etc/passwd` when it is
/// executable, else bash, else sh; run as a login shell.
const LOGIN_SHELL: &str = r#"s=$(sed -n 's/^root:\([^:]*:\)\{5\}//p' /etc/passwd 2>/dev/null)
case $s in */nologin|*/false) s= ;; esac
if [ -z "$s" ] || [ ! -x "$s" ]; then s=$(command -v bash) || s=sh; fi
exec "$s" -l"#;

/// The command of a session that names none: root's login shell in the env (its shell in the
/// env's `/etc/passwd` when executable there, else bash, else sh), run with `-l`.
pub fn login_shell() -> Vec<String> {
    vec!["sh".into(), "-c".into(), LOGIN_SHELL.into()]
}

/// The exit code of a terminal's command, awaited on a pidfd of its env-enter helper (opened
/// now; no thread waits meanwhile). Used by [`Pty`] and the SSH gateway's terminals.
pub fn exited(mut cmd: TtyCommand) -> Result<impl std::future::Future<Output = Result<i32>>> {
    exited_with(cmd.id(), move || Ok(cmd.wait()?))
}

/// The exit code of process `pid`, a child not reaped yet (so its pid is still its own),
/// awaited on a pidfd; `wait` reaps it once it has exited and says its code.
pub fn exited_with(
    pid: u32,
    wait: impl FnOnce() -> Result<i32> + Send,
) -> Result<impl std::future::Future<Output = Result<i32>> + Send> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("env-enter has no pid")?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .context("opening a pidfd of env-enter")?;
    Ok(async move {
        crate::bridge::readable(pidfd).await?;
        wait()
    })
}

/// A command running on a terminal inside an env, for async code.
pub struct Pty {
    /// The terminal's master, non-blocking.
    master: AsyncFd<OwnedFd>,
    /// The command's exit code once the env-enter helper has been reaped.
    exit: watch::Receiver<Option<i32>>,
}

impl Pty {
    /// Starts `argv` inside env `st` on a new terminal of `rows` x `cols`, with `env` added to
    /// its environment (`TERM` defaults to `xterm-256color`).
    pub async fn spawn(
        rt: &Runtime,
        st: &EnvState,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        rows: u16,
        cols: u16,
    ) -> Result<Pty> {
        let (rt, st) = (rt.clone(), st.clone());
        let tty =
            tokio::task::spawn_blocking(move || Tty::spawn(&rt, &st, &argv, &env, rows, cols))
                .await
                .context("the terminal's starter failed")??;
        Pty::new(tty)
    }

    /// Takes over a started [`Tty`] (needs a tokio runtime): its master goes non-blocking and
    /// a task waits for the command (on a pidfd: no thread is held).
    pub fn new(tty: Tty) -> Result<Pty> {
        let (helper_master, cmd) = tty.into_parts();
        let fd = helper_master
            .try_clone()
            .context("duplicating the terminal")?;
        rustix::io::ioctl_fionbio(&fd, true).context("making the terminal non-blocking")?;
        // SAFETY: an OwnedFd's raw fd is valid, open and the same until it is dropped, which
        // only the AsyncFd owning it does.
        let master = unsafe { AsyncFd::register(fd) }
            .map_err(io::Error::from)
            .context("registering the terminal with tokio")?;
        let (tx, exit) = watch::channel(None);
        let exited = exited(cmd)?;
        tokio::spawn(async move {
            let code = exited.await.unwrap_or_else(|e| {
                tracing::warn!("terminal session: {e:#}");
                i32::from(runtime::exec::ENTER_FAILED)
            });
            // The helper's copy of the master goes before anyone hears of the exit.
            drop(helper_master);
            let _ = tx.send(Some(code));
        });
        Ok(Pty { master, exit })
    }

    /// Reads what the command wrote to the terminal; 0 once nothing holds the terminal open
    /// any more (the command and everything it started are gone).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.master.readable().await?;
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *buf)?)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `bytes` to the terminal (the command's keyboard input); waits while the
    /// terminal's input queue is full.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.master.writable().await?;
            match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), bytes)?)) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Sets the terminal's size (the command gets SIGWINCH). Zero rows or columns become 1.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let size = rustix::termios::Winsize {
            ws_row: rows.max(1),
            ws_col: cols.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        Ok(rustix::termios::tcsetwinsize(self.master.get_ref(), size)?)
    }

    /// Waits for the command's exit code (128 + N if signal N killed it;
    /// [`runtime::exec::ENTER_FAILED`] if it could not be started).
    pub async fn wait(&self) -> Result<i32> {
        let mut exit = self.exit.clone();
        let code = exit
            .wait_for(Option::is_some)
            .await
            .context("lost the terminal session's exit status")?;
        Ok(code.unwrap_or(i32::from(runtime::exec::ENTER_FAILED)))
    }

    /// The exit code, if the command has exited.
    pub fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        match self.master.get_ref().try_clone() {
            Ok(master) => {
                let exit = self.exit.clone();
                std::thread::spawn(move || end_session(master, exit));
            }
            Err(e) => {
                // Without a copy of the master, one sweep now is all that can be done.
                tracing::warn!("ending a terminal session: duplicating its terminal: {e}");
                if let Ok(sid) = rustix::termios::tcgetsid(self.master.get_ref()) {
                    kill_session(sid.as_raw_nonzero().get());
                }
            }
        }
    }
}

/// Kills the session of `master`'s terminal until no process of it is left and the command
/// has been reaped. The session is found with `TIOCGSID` on the master (the command may not
/// have become its leader yet when the caller gives up, hence the retries).
fn end_session(master: OwnedFd, exit: watch::Receiver<Option<i32>>) {
    let mut sid = None;
    let mut pause = Duration::from_millis(5);
    for _ in 0..200 {
        if sid.is_none() {
            sid = rustix::termios::tcgetsid(master.as_fd())
                .ok()
                .map(|p| p.as_raw_nonzero().get());
        }
        let killed = sid.map_or(0, kill_session);
        if killed == 0 && exit.borrow().is_some() {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    tracing::warn!(session = ?sid, "processes of a terminal session would not die");
}

/// Sends SIGKILL to every live process of session `sid` (host pids); returns how many.
fn kill_session(sid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        if !in_session(pid, sid) {
            continue;
        }
        let Some(nz) = rustix::process::Pid::from_raw(pid) else {
            continue;
        };
        // Through a pidfd, and checked again after opening it: the signal cannot reach a
        // process that reused the pid in between.
        let Ok(pidfd) = rustix::process::pidfd_open(nz, rustix::process::PidfdFlags::empty())
        else {
            continue;
        };
        if in_session(pid, sid)
            && rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Whether `pid` is alive (not a zombie) and in session `sid`, by `/proc/PID/stat`.
fn in_session(pid: i32, sid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // After the command name (which may hold anything, so split at its last ')'):
    // state, ppid, pgrp, session.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().take(4).collect();
    matches!(fields[..], [state, _, _, session]
        if state != "Z" && state != "X" && session.parse() == Ok(sid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_read_from_proc() {
        let me = std::process::id() as i32;
        let sid = rustix::process::getsid(None)
            .unwrap()
            .as_raw_nonzero()
            .get();
        assert!(in_session(me, sid));
        assert!(!in_session(me, sid + 1));
        assert!(!in_session(i32::MAX, sid));
    }

    #[test]
    fn a_killed_session_leaves_nothing() {
        // A shell in a session of its own with a child: both die.
        let mut child = std::process::Command::new("setsid")
            .args(["sh", "-c", "sleep 1000 & sleep 1000"])
            .spawn()
            .unwrap();
        let sid = child.id() as i32;
        let mut seen = 0;
        for _ in 0..500 {
            seen = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| in_session(*p, sid))
                .count();
            if seen >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen, 3, "sh and two sleeps");
        assert!(kill_session(sid) >= 3);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // The orphaned sleep is reaped by whoever adopts it; it is dead either way.
        for _ in 0..500 {
            if kill_session(sid) == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("session {sid} still has processes");
    }
}
