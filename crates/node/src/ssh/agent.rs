//! Agent forwarding (`ssh -A`): for a session that asked (`auth-agent-req@openssh.com`) and
//! a node that allows it (`[ssh] forward_agent`, on by default), a unix socket inside the env,
//! `/tmp/spawngrid-agent-RANDOM/agent.sock` in a directory of mode 0700 owned by the session's
//! user (as OpenSSH's sshd makes it); the session gets `SSH_AUTH_SOCK`. Each connection to it
//! is relayed to the client through an `auth-agent@openssh.com` channel. The socket and its
//! directory go when the session ends.
//!
//! The gateway listens on the socket itself, from the host: a path-bound unix socket is
//! reached through the file system, whichever namespace the connecting process is in. The
//! directory is made through the env's root with every path resolved inside it
//! (`openat2(RESOLVE_IN_ROOT)`, `mkdirat` of a fresh name, then only fds of it), so a symlink
//! the env's users planted in `/tmp` cannot make the host root write elsewhere.

use super::forward::bridge;
use anyhow::{Context, Result};
use ring::rand::SecureRandom;
use runtime::exec::Identity;
use runtime::EnvState;
use russh::server::Handle;
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// The socket's name in its directory.
const SOCKET: &str = "agent.sock";

/// A forwarded agent's socket inside an env; removed when dropped.
pub struct Agent {
    /// The env's `/tmp`, from the host.
    tmp: OwnedFd,
    /// The directory's name in it.
    dir_name: String,
    /// The directory.
    dir: OwnedFd,
    /// The task accepting connections, once started.
    task: Option<tokio::task::AbortHandle>,
}

impl Agent {
    /// Makes the socket in env `st` for `who` (root if `None`) and relays its connections
    /// to the client of `handle`.
    pub fn start(st: &EnvState, who: Option<&Identity>, handle: Handle) -> Result<Agent> {
        let root = runtime::exec::env_root(st)?;
        let tmp = rustix::fs::openat2(
            &root,
            "tmp",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .context("opening the env's /tmp")?;
        let mut random = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| anyhow::anyhow!("no random bytes"))?;
        let dir_name = format!(
            "spawngrid-agent-{}",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        rustix::fs::mkdirat(&tmp, dir_name.as_str(), Mode::RWXU)
            .context("making the agent's directory in the env's /tmp")?;
        let dir = rustix::fs::openat(
            &tmp,
            dir_name.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .context("opening the agent's directory")?;
        // From here on, dropping the agent removes what was made.
        let mut agent = Agent {
            tmp,
            dir_name,
            dir,
            task: None,
        };
        let ids = st.ids;
        let (uid, gid) = who.map_or((0, 0), |w| (w.uid, w.gid));
        let owner = (
            Some(rustix::process::Uid::from_raw(ids.host_uid + uid)),
            Some(rustix::process::Gid::from_raw(ids.host_gid + gid)),
        );
        rustix::fs::chownat(&agent.dir, "", owner.0, owner.1, AtFlags::EMPTY_PATH)
            .context("giving the agent's directory to the session's user")?;
        let path = format!("/proc/self/fd/{}/{SOCKET}", agent.dir.as_raw_fd());
        let listener =
            std::os::unix::net::UnixListener::bind(&path).context("making the agent's socket")?;
        rustix::fs::chownat(
            &agent.dir,
            SOCKET,
            owner.0,
            owner.1,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .context("giving the agent's socket to the session's user")?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    match handle.channel_open_agent().await {
                        Ok(channel) => bridge(conn, channel).await,
                        Err(e) => tracing::debug!("ssh -A: opening a channel: {e}"),
                    }
                });
            }
        });
        agent.task = Some(task.abort_handle());
        Ok(agent)
    }

    /// The socket's path inside the env (for `SSH_AUTH_SOCK`).
    pub fn path(&self) -> String {
        format!("/tmp/{}/{SOCKET}", self.dir_name)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
        let _ = rustix::fs::unlinkat(&self.dir, SOCKET, AtFlags::empty());
        let _ = rustix::fs::unlinkat(&self.tmp, self.dir_name.as_str(), AtFlags::REMOVEDIR);
    }
}
