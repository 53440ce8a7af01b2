//! Sockets inside an env's network namespace, for the gateway's port forwards. A socket
//! belongs to the namespace it was created in, whichever thread uses it later: a short-lived
//! thread of our own joins the env's namespace (`setns` on its init's `/proc/PID/ns/net`;
//! only this thread moves), creates the socket there and hands it back to tokio.
//!
//! So a forward reaches exactly what a process of the env reaches: every env has a network
//! namespace of its own (`runtime::net`), with `127.0.0.1` its own loopback, never the
//! host's; a `nat` env also reaches what its veth link routes to.

use anyhow::{anyhow, bail, Context, Result};
use runtime::EnvState;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How long a forward's connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of these threads at once (each may wait [`CONNECT_TIMEOUT`]); more wait their turn,
/// so many forwards to an unanswering address cannot pile up threads.
static THREADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);

/// Runs `f` on a new thread inside env `st`'s network namespace; its result.
async fn in_env<T: Send + 'static>(
    st: &EnvState,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let (pid, start, env) = (st.init_pid, st.init_start, st.name.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let permit = THREADS.acquire().await?;
    std::thread::Builder::new()
        .name("ssh-netns".into())
        .spawn(move || {
            let _permit = permit;
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
}
