//! Sockets inside an env's network namespace, for the gateway's port forwards. A socket
//! belongs to the namespace it was created in, whichever thread uses it later: a short-lived
//! thread of our own joins the env's namespace (`setns` on its init's `/proc/PID/ns/net`;
//! only this thread moves), creates the socket there and hands it back to tokio.
//!
//! So a forward reaches exactly what a process of the env reaches: every env has a network
//! namespace of its own (`runtime::net`), with `127.0.0.1` its own loopback, never the
//! host's; a `nat` env also reaches what its veth link routes to.
//!
//! The threads are few (a connect may wait 10 s for an address that never answers), and one
//! user's envs get at most a quarter of them: many connects to an unanswering address in one
//! user's env leave the other users' forwards and previews their threads. A socket waits at
//! most 20 s for a thread, then fails with [`Busy`].

use anyhow::{anyhow, bail, Context, Result};
use runtime::EnvState;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a forward's connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The threads in envs' namespaces at once, node-wide (each may wait [`CONNECT_TIMEOUT`]):
/// many forwards to an unanswering address cannot pile up threads.
const THREADS: usize = 64;

/// The threads at once for one user's envs: a quarter, so one user's connects to an
/// unanswering address leave the rest to everybody else.
const SHARE: usize = THREADS / 4;

/// How long a socket may wait for a thread: long enough for a user's own earlier connects to
/// time out, short enough that a client hears why.
const SLOT_WAIT: Duration = Duration::from_secs(2 * CONNECT_TIMEOUT.as_secs());

/// The threads in envs' namespaces of the node.
static SLOTS: LazyLock<Slots> = LazyLock::new(|| Slots::new(THREADS, SHARE, SLOT_WAIT));

/// Why a socket was not made: its user's envs already have their share of the threads, or
/// the node all of them, for as long as it may wait.
#[derive(Debug)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "too many connections are being opened in your envs at once; try again in a few \
             seconds",
        )
    }
}

impl std::error::Error for Busy {}

/// Threads handed out: at most `max` at once and `share` per user; a caller waits at most
/// `wait` for one.
struct Slots {
    max: usize,
    share: usize,
    wait: Duration,
    /// Threads taken, in total and per user (users with none are not kept).
    taken: Mutex<(usize, HashMap<String, usize>)>,
    /// Told whenever a thread is given back.
    freed: Notify,
}

/// One thread's slot, given back when dropped.
struct Slot<'a> {
    slots: &'a Slots,
    user: String,
}

impl Slots {
    /// Slots for `max` threads, `share` per user, waited for at most `wait`.
    fn new(max: usize, share: usize, wait: Duration) -> Slots {
        Slots {
            max,
            share,
            wait,
            taken: Mutex::default(),
            freed: Notify::new(),
        }
    }

    /// A slot for a thread of `user`'s, as soon as one is free for them, or [`Busy`].
    async fn take(&self, user: &str) -> Result<Slot<'_>, Busy> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Listening before looking, so a slot given back in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_take(user) {
                return Ok(slot);
            }
            tokio::time::timeout_at(deadline, freed)
                .await
                .map_err(|_| Busy)?;
        }
    }

    /// A slot for `user` if one is free for them now.
    fn try_take(&self, user: &str) -> Option<Slot<'_>> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let theirs = taken.1.get(user).copied().unwrap_or(0);
        if taken.0 >= self.max || theirs >= self.share {
            return None;
        }
        taken.0 += 1;
        taken.1.insert(user.to_string(), theirs + 1);
        Some(Slot {
            slots: self,
            user: user.to_string(),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.0 -= 1;
        if let Some(n) = taken.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                taken.1.remove(&self.user);
            }
        }
        drop(taken);
        self.slots.freed.notify_waiters();
    }
}

/// Runs `f` on a new thread inside env `st`'s network namespace, once its owner may have one
/// more ([`Busy`] if not in time); its result.
async fn in_env<T: Send + 'static>(
    st: &EnvState,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let (pid, start, env) = (st.init_pid, st.init_start, st.name.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let slot = SLOTS.take(&st.owner).await?;
    std::thread::Builder::new()
        .name("ssh-netns".into())
        .spawn(move || {
            let _slot = slot;
            let run = || -> Result<T> {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                    .with_context(|| format!("env {env} is not running"))?;
                // Opened before this check, so it is the right init's if the check holds.
                if runtime::state::start_time(pid) != Some(start) {
                    bail!("env {env} is not running");
                }
                rustix::thread::move_into_link_name_space(
                    rustix::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .context("entering the env's network namespace")?;
                Ok(f()?)
            };
            let _ = tx.send(run());
        })
        .context("starting a thread")?;
    rx.await.map_err(|_| anyhow!("the network thread died"))?
}

/// Connects to `addr` from inside env `st`.
pub async fn connect(st: &EnvState, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let tcp = in_env(st, move || {
        let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    Ok(tokio::net::TcpStream::from_std(tcp)?)
}

/// Listens on `addr` inside env `st` (port 0: a free one).
pub async fn listen(st: &EnvState, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let l = in_env(st, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .await?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

/// The address a forward names: an IP address (IPv6 with or without brackets) or
/// `localhost`; other names are not resolved (the host's resolver is not the env's).
pub fn address(host: &str, port: u32) -> Result<SocketAddr> {
    let port = u16::try_from(port).map_err(|_| anyhow!("port {port} is out of range"))?;
    let ip = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                anyhow!("{host:?} is not an IP address (use 127.0.0.1 or the env's address)")
            })?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// The address a remote forward listens on: every address for `""`, `*` or `0.0.0.0`
/// (as OpenSSH's `GatewayPorts`), else as [`address`].
pub fn bind_address(host: &str, port: u32) -> Result<SocketAddr> {
    match host {
        "" | "*" => address("0.0.0.0", port),
        h => address(h, port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_name_ip_addresses_or_localhost() {
        assert_eq!(
            address("localhost", 80).unwrap().to_string(),
            "127.0.0.1:80"
        );
        assert_eq!(address("10.0.0.1", 1).unwrap().to_string(), "10.0.0.1:1");
        assert_eq!(address("[::1]", 2).unwrap().to_string(), "[::1]:2");
        assert_eq!(bind_address("", 3).unwrap().to_string(), "0.0.0.0:3");
        assert!(address("example.com", 80).is_err());
        assert!(address("127.0.0.1", 70000).is_err());
    }

    /// A user holding their share waits, and is told so once the wait is up, while another
    /// user still gets a slot at once; a slot given back goes to the one waiting; nothing is
    /// kept of a user without slots.
    #[tokio::test]
    async fn each_user_gets_a_share_of_the_threads_and_waits_a_bounded_time() {
        let slots = Slots::new(3, 2, Duration::from_millis(300));
        let (a1, _a2) = (
            slots.take("a").await.unwrap(),
            slots.take("a").await.unwrap(),
        );
        assert_eq!(
            slots.take("a").await.err().unwrap().to_string(),
            Busy.to_string()
        );
        let b = slots.take("b").await.unwrap();
        // The node's max: nobody gets a fourth.
        assert!(slots.take("c").await.is_err());
        let (a3, ()) = tokio::join!(slots.take("a"), async {
            tokio::task::yield_now().await;
            drop(a1);
        });
        assert!(a3.is_ok());
        drop(b);
        assert!(!slots.taken.lock().unwrap().1.contains_key("b"));
    }
}
