//! The exec service of an env's init, inside: the init serves its exec socket between reaping
//! children, forking each requested command (the client side is [`crate::host::service`];
//! the messages are [`crate::protocol`]'s [`Request`], [`Reply`] and [`Control`]).
//!
//! The spawner binds `DATA/envs/<env>/exec.sock` (SOCK_SEQPACKET, mode 0600 root's, so only
//! host root can connect: `host::service`) and sends the listener to the env-init helper; the
//! init inherits it.
//! The command runs as root inside (or as the request's user) with the init's bounding set,
//! no_new_privs and seccomp filter (inherited), in a new session (its own process group),
//! with a clean environment ([`DEFAULT_ENV`]); on the client's stdio, or on a terminal the
//! init opens in the env's devpts (the session's controlling terminal, owned by the request's
//! user), whose master goes back with the reply.

use crate::fdpass;
use crate::identity::{Identity, DEFAULT_ENV};
use crate::inside::views::Views;
use crate::protocol::{Control, Message, Reply, Request};
use anyhow::{anyhow, Context, Result};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use rustix::net::SocketFlags;
use std::collections::HashMap;
use std::ffi::CString;

/// The init's loop: reap children (reporting the exit of requested commands), serve
/// requests and keep the env's `/proc` views current. Never returns but on a setup error.
pub fn serve(listener: OwnedFd, mut views: Views) -> Result<std::convert::Infallible> {
    let signals = sigchld_fd()?;
    let mut waiting: HashMap<i32, Waiting> = HashMap::new();
    loop {
        // The connections of running commands, watched for `kill` or a hang-up.
        let watched: Vec<i32> = waiting
            .iter()
            .filter(|(_, w)| !w.killed)
            .map(|(pid, _)| *pid)
            .collect();
        let mut fds = vec![
            PollFd::new(&listener, PollFlags::IN),
            PollFd::new(&signals, PollFlags::IN),
        ];
        fds.extend(
            watched
                .iter()
                .map(|pid| PollFd::new(&waiting[pid].conn, PollFlags::IN)),
        );
        let due = views.until_due();
        let timeout = rustix::event::Timespec {
            tv_sec: due.as_secs() as _,
            tv_nsec: due.subsec_nanos() as _,
        };
        let polled = rustix::event::poll(&mut fds, Some(&timeout));
        views.refresh_if_due();
        match polled {
            Err(rustix::io::Errno::INTR) => continue,
            r => r.context("poll in init")?,
        };
        let (conn_ready, child_ready) =
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        let to_kill: Vec<i32> = watched
            .iter()
            .zip(&fds[2..])
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(pid, _)| *pid)
            .collect();
        drop(fds);
        for pid in to_kill {
            if let Some(w) = waiting.get_mut(&pid) {
                let mut buf = [0u8; 16];
                let got = rustix::net::recv(&w.conn, &mut buf, rustix::net::RecvFlags::DONTWAIT);
                if let Some(sig) = got.ok().and_then(|(n, _)| asked_signal(&buf[..n])) {
                    signal_group(pid, sig);
                    continue;
                }
                // Anything else (`kill`, or end of file when the client went away): the
                // command's process group goes. The exit is still reported when reaped.
                signal_group(pid, libc::SIGKILL);
                w.killed = true;
            }
        }
        if child_ready {
            let mut info = [0u8; 128];
            while rustix::io::read(&signals, &mut info).is_ok() {}
            while let Ok(Some((pid, status))) =
                rustix::process::wait(rustix::process::WaitOptions::NOHANG)
            {
                if let Some(w) = waiting.remove(&pid.as_raw_nonzero().get()) {
                    let code = status
                        .exit_status()
                        .unwrap_or_else(|| 128 + status.terminating_signal().unwrap_or(0));
                    let _ = fdpass::send(&w.conn, &Reply::Exit(code).encode(), &[]);
                }
            }
        }
        if conn_ready {
            if let Ok(conn) = rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
                match run_request(&conn) {
                    Ok((pid, master)) => {
                        let master: Vec<_> = master.iter().map(|m| m.as_fd()).collect();
                        let _ = fdpass::send(&conn, &Reply::Started.encode(), &master);
                        let killed = false;
                        waiting.insert(pid, Waiting { conn, killed });
                    }
                    Err(e) => {
                        let reply = Reply::Error(format!("{e:#}"));
                        let _ = fdpass::send(&conn, &reply.encode(), &[]);
                    }
                }
            }
        }
    }
}

/// The signal a [`Control::Signal`] message asks for (anything else kills).
fn asked_signal(msg: &[u8]) -> Option<i32> {
    match Control::decode(msg) {
        Ok(Control::Signal(sig)) => Some(sig),
        _ => None,
    }
}

/// Sends `sig` to process group `pgid` (a command of ours: an unreaped child, so its pid is
/// not reused, and a session leader). The command may run as another user, so the init makes
/// CAP_KILL effective for the moment (it runs with no effective capability otherwise).
fn signal_group(pgid: i32, sig: i32) {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
    let normal = capabilities(None).ok();
    if let Some(c) = normal {
        let effective = c.permitted & CapabilitySet::KILL;
        let _ = set_capabilities(None, rustix::thread::CapabilitySets { effective, ..c });
    }
    // SAFETY: kill(2) on plain integers.
    unsafe { libc::kill(-pgid, sig) };
    if let Some(c) = normal {
        let _ = set_capabilities(None, c);
    }
}

/// Becoming a user of the env in a child of the init, prepared before the fork so the child
/// only makes syscalls.
struct UserSwitch {
    /// The init's permitted capabilities made effective (it runs with none effective), so the
    /// child may change its ids.
    caps: rustix::thread::CapabilitySets,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// Written to the command's stderr if the switch fails.
    failed: CString,
}

impl UserSwitch {
    fn new(user: &Identity) -> Result<UserSwitch> {
        let cur = rustix::thread::capabilities(None).context("reading the init's capabilities")?;
        Ok(UserSwitch {
            caps: rustix::thread::CapabilitySets {
                effective: cur.permitted,
                ..cur
            },
            groups: user.groups.clone(),
            uid: user.uid,
            gid: user.gid,
            failed: CString::new(format!(
                "spawngrid: cannot become user {} (uid {}, gid {}) in this env\n",
                user.name, user.uid, user.gid
            ))?,
        })
    }

    /// In the forked child: gives the terminal `tty` (if any) to the user, sets groups, gid
    /// and uid (which drops every capability), or reports on `stderr` and exits 126.
    ///
    /// # Safety
    /// Only raw syscalls on data prepared before the fork: safe between fork and exec.
    unsafe fn apply_or_exit(&self, stderr: libc::c_int, tty: Option<libc::c_int>) {
        // SAFETY: raw syscalls on memory prepared before the fork (the groups vector, the
        // message), with no allocation or lock: what the caller's contract allows.
        unsafe {
            let ok = rustix::thread::set_capabilities(None, self.caps).is_ok()
                && tty.is_none_or(|t| libc::fchown(t, self.uid, libc::gid_t::MAX) == 0)
                && libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) == 0
                && libc::syscall(libc::SYS_setresgid, self.gid, self.gid, self.gid) == 0
                && libc::syscall(libc::SYS_setresuid, self.uid, self.uid, self.uid) == 0;
            if !ok {
                let msg = self.failed.as_bytes();
                libc::write(stderr, msg.as_ptr().cast(), msg.len());
                libc::_exit(126);
            }
        }
    }
}

/// A command of the exec service that has not exited yet.
struct Waiting {
    /// The client's connection (its exit code goes there).
    conn: OwnedFd,
    /// Killed already (its connection is not watched any more).
    killed: bool,
}

/// A non-blocking signalfd for SIGCHLD (blocked for normal delivery).
fn sigchld_fd() -> Result<OwnedFd> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; signalfd returns a new fd
    // that is owned right away.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("signalfd");
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads a request from `conn` and forks its command; returns its pid and the master of its
/// terminal, if it asked for one.
fn run_request(conn: &OwnedFd) -> Result<(i32, Option<OwnedFd>)> {
    // A client that connects and sends nothing must not stall the init (and every exec).
    rustix::net::sockopt::set_socket_timeout(
        conn,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(1)),
    )?;
    let mut buf = vec![0u8; 65536];
    let (n, fds) = fdpass::recv(conn, &mut buf)?;
    let req = Request::decode(&buf[..n])?;
    let (master, [stdin, stdout, stderr]): (_, [OwnedFd; 3]) = match req.tty {
        None => (None, fds.try_into().map_err(|_| anyhow!("want 3 fds"))?),
        Some(_) if !fds.is_empty() => return Err(anyhow!("a terminal request carries no fds")),
        Some((rows, cols)) => {
            let (master, slave) = crate::inside::tty::open(rows, cols)?;
            let slave = OwnedFd::from(slave);
            (
                Some(master),
                [slave.try_clone()?, slave.try_clone()?, slave],
            )
        }
    };
    let tty = req.tty.map(|_| stdin.as_raw_fd());
    let cstr = |s: &str| CString::new(s).map_err(|_| anyhow!("NUL in {s:?}"));
    let argv: Vec<CString> = req.argv.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let mut vars: Vec<(String, String)> = DEFAULT_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in req.env {
        vars.retain(|(k2, _)| *k2 != k);
        vars.push((k, v));
    }
    let envp: Vec<CString> = vars
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<_>>()?;
    let program = argv.first().context("empty argv")?.to_str()?.to_string();
    let path = vars
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let candidates: Vec<CString> = if program.contains('/') {
        vec![cstr(&program)?]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstr(&format!("{d}/{program}")))
            .collect::<Result<_>>()?
    };
    let cwd = cstr(&req.cwd)?;
    // What the child says if nothing could be executed (as a shell would; it exits 127).
    let not_found = format!("spawngrid: {program}: not found or not executable in the env\n");
    let argv_p: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp_p: Vec<*const libc::c_char> = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let raw = [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
    let switch = req.user.as_ref().map(UserSwitch::new).transpose()?;
    // SAFETY: the init is single-threaded, so the child may run anything; it only makes raw
    // syscalls on data prepared above (no allocation) and ends in execve or _exit.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => unsafe {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::setsid();
            if let Some(sw) = &switch {
                sw.apply_or_exit(raw[2], tty);
            }
            // The received fds are above 2 (0-2 are the init's /dev/null), so dup2 cannot
            // clobber one before it is copied.
            for (i, fd) in raw.iter().enumerate() {
                libc::dup2(*fd, i as libc::c_int);
            }
            // A terminal of ours becomes the new session's controlling terminal.
            if tty.is_some() {
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if libc::chdir(cwd.as_ptr()) != 0 {
                libc::chdir(c"/".as_ptr());
            }
            for c in &candidates {
                libc::execve(c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            }
            libc::write(2, not_found.as_ptr().cast(), not_found.len());
            libc::_exit(127)
        },
        pid => {
            drop((stdin, stdout, stderr));
            Ok((pid, master))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::asked_signal;

    #[test]
    fn only_well_formed_signal_requests_are_signals() {
        assert_eq!(asked_signal(b"signal 2"), Some(2));
        assert_eq!(asked_signal(b"signal 64"), Some(64));
        for bad in [
            &b"signal 0"[..],
            b"signal 65",
            b"signal -9",
            b"signal x",
            b"kill",
            b"",
        ] {
            assert_eq!(
                asked_signal(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
