//! The exec service of an env's init, client side: a command started by the init itself
//! (`inside::service`), already in the env's cgroup and every namespace, so an exec
//! needs no helper process, no `setns` and no cgroup migration (which on cgroup v1 can wait for
//! an RCU grace period, ~7 ms).
//!
//! The client sends a [`Request`] with stdin, stdout and stderr attached (`SCM_RIGHTS`), or
//! asks for a terminal ([`start_tty_as`]: the init opens it inside and sends its master back,
//! so an interactive session needs no helper either); the init answers [`Reply::Started`] or
//! [`Reply::Error`], later [`Reply::Exit`]. Meanwhile a
//! [`Control`] from the client, or the client closing its socket, makes the init signal or
//! SIGKILL the command's process group: a command outlives no caller that went away.

use crate::error::{fail, Context, Error, Result};
use crate::fdpass;
use crate::host::freeze;
use crate::host::runtime::Runtime;
use crate::host::state::EnvState;
use crate::identity::Identity;
use crate::protocol::{Control, Message, Reply, Request};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::path::{Path, PathBuf};

/// The exec socket of the env whose directory is `env_dir`.
pub fn socket_path(env_dir: &Path) -> PathBuf {
    env_dir.join("exec.sock")
}

/// Binds and listens on the exec socket of the env whose directory is `env_dir`, for its init
/// (which inherits nothing of the host's: the spawn sends it this listener). Made by host root,
/// mode 0600: only host root can connect.
pub(crate) fn listen(env_dir: &Path) -> Result<OwnedFd> {
    let path = socket_path(env_dir);
    let (sock, _dir, addr) = seqpacket_for(&path)?;
    rustix::net::bind(&sock, &addr).with_context(|| format!("binding {}", path.display()))?;
    let private = rustix::fs::Mode::from_raw_mode(0o600);
    rustix::fs::chmod(&path, private).with_context(|| format!("chmod {}", path.display()))?;
    rustix::net::listen(&sock, 64).context("listening on the exec socket")?;
    Ok(sock)
}

/// A new SOCK_SEQPACKET socket and the address of `path` for it, with the directory fd the
/// address reaches it through ([`fdpass::address`]: keep it until bound or connected).
fn seqpacket_for(path: &Path) -> Result<(OwnedFd, OwnedFd, SocketAddrUnix)> {
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let (dir, addr) = fdpass::address(path)?;
    Ok((sock, dir, addr))
}

/// A command started through the init. Dropping it (closing the connection) kills the
/// command's process group, as [`Started::kill`] does.
pub struct Started {
    sock: OwnedFd,
}

impl Started {
    /// Kills the command's process group (SIGKILL); [`Started::wait`] then reports 137. May be
    /// called while another thread waits.
    pub fn kill(&self) -> Result<()> {
        fdpass::send(&self.sock, &Control::Kill.encode(), &[])
            .context("asking the env's init to kill")?;
        Ok(())
    }

    /// Sends signal `sig` (1–64) to the command's process group; the command keeps running
    /// unless the signal ends it.
    pub fn signal(&self, sig: i32) -> Result<()> {
        if !(1..=64).contains(&sig) {
            fail!("no signal {sig}");
        }
        fdpass::send(&self.sock, &Control::Signal(sig).encode(), &[])
            .context("asking the env's init to signal")?;
        Ok(())
    }

    /// Waits for the command's exit code (128 + N if killed by signal N). Returns at once
    /// once the connection ([`AsFd`]) is readable, so async callers wait for that instead of
    /// holding a thread.
    pub fn wait(&self) -> Result<i32> {
        let mut buf = [0u8; 256];
        let (n, _) = fdpass::recv(&self.sock, &mut buf)?;
        if n == 0 {
            fail!("the env's init went away (was the env boomed?)");
        }
        match Reply::decode(&buf[..n]).context("waiting for a command")? {
            Reply::Exit(code) => Ok(code),
            other => fail!("the env's init answered {other:?} where an exit code belongs"),
        }
    }
}

/// The connection to the init: readable when the command's exit is reported (or the init went
/// away).
impl AsFd for Started {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Starts `argv` in env `state` through its init as root, with the given stdin, stdout and
/// stderr.
pub fn start(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    stdio: [BorrowedFd<'_>; 3],
) -> Result<Started> {
    start_as(rt, state, argv, env, stdio, None)
}

/// [`start`] as `user` of the env (root if `None`): in their home, with their groups and
/// `HOME`, `USER`, `LOGNAME` and `SHELL`.
pub fn start_as(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    stdio: [BorrowedFd<'_>; 3],
    user: Option<&Identity>,
) -> Result<Started> {
    let (started, _) = request(rt, state, argv, env, user, None, &stdio)?;
    Ok(started)
}

/// [`start_as`] on a new terminal of `rows` x `cols` that the env's init opens in the env's
/// devpts (owned by `user`, if any): the command is a session leader with it as its
/// controlling terminal. Returns the terminal's master with the command; closing the master
/// hangs the terminal up (the session gets SIGHUP).
pub fn start_tty_as(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    user: Option<&Identity>,
    rows: u16,
    cols: u16,
) -> Result<(Started, OwnedFd)> {
    match request(rt, state, argv, env, user, Some((rows, cols)), &[])? {
        (started, Some(master)) => Ok((started, master)),
        (_, None) => fail!("env {}: its init sent no terminal", state.name),
    }
}

/// Sends one request with `fds` to the init; the command and the fd that came back, if any.
fn request(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    user: Option<&Identity>,
    tty: Option<(u16, u16)>,
    fds: &[BorrowedFd<'_>],
) -> Result<(Started, Option<OwnedFd>)> {
    if argv.is_empty() {
        fail!("no command to run");
    }
    if !state.alive() {
        return Err(Error::NotRunning {
            name: state.name.clone(),
        });
    }
    // A frozen init would take the request and never answer.
    freeze::wait_thawed(rt, state, freeze::FROZEN_WAIT)?;
    let path = socket_path(&rt.env_dir(&state.name)?);
    let (sock, _dir, addr) = seqpacket_for(&path)?;
    rustix::net::connect(&sock, &addr)
        .with_context(|| format!("connecting to {}", path.display()))?;
    let req = Request {
        argv: argv.to_vec(),
        env: user
            .iter()
            .flat_map(|u| u.env())
            .chain(env.iter().cloned())
            .collect(),
        cwd: user.map_or("/root", |u| u.home.as_str()).into(),
        user: user.cloned(),
        tty,
    };
    fdpass::send(&sock, &req.encode(), fds)?;
    let mut buf = [0u8; 4096];
    let (n, back) = fdpass::recv(&sock, &mut buf)?;
    match Reply::decode(&buf[..n]) {
        Ok(Reply::Started) => Ok((Started { sock }, back.into_iter().next())),
        Ok(Reply::Error(e)) => fail!("env {}: {e}", state.name),
        _ => fail!("env {}: no answer from its init", state.name),
    }
}
