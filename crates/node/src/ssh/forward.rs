//! Port forwarding into an env (`ssh -L`, `ssh -R`), each allowed by the node's `[ssh]`
//! table (on by default): local forwards (`direct-tcpip` channels) connect from inside the
//! env's network namespace; remote forwards (`tcpip-forward`) listen inside it and open a
//! `forwarded-tcpip` channel to the client per connection, until cancelled, the connection
//! ends or the env goes. Sockets are made in the env by [`super::netns`]; bytes are moved by
//! [`bridge`] between the socket and the channel.
//!
//! One connection holds at most `[ssh] max_forwards` forwards at once ([`Forwards`]) and finds
//! its env once, reusing it while the env's init runs. Only the env's owner logs in to it
//! (`super::session`), so only they forward. A session user who is not root inside may not
//! listen on a port below 1024, as in the env itself (the only use of the env's accounts).

use super::auth::Login;
use super::netns;
use super::session;
use crate::Node;
use runtime::EnvState;
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The first port only root may listen on.
const PRIVILEGED_BELOW: u16 = 1024;

/// How long the env's side of a forward may take to finish once the client is gone.
const GRACE: Duration = Duration::from_secs(5);

/// One forward's place: on its connection, and among its user's on the node.
type Slot = (OwnedSemaphorePermit, crate::exec::Slot);

/// What the forwards of one SSH connection share: how many it may hold at once, and its env.
pub struct Forwards {
    slots: Arc<Semaphore>,
    max: usize,
    /// The env found for the first forward.
    env: Mutex<Option<EnvState>>,
}

impl Forwards {
    /// Room for `max` forwards at once.
    pub fn new(max: usize) -> Forwards {
        Forwards {
            slots: Arc::new(Semaphore::new(max)),
            max,
            env: Mutex::default(),
        }
    }

    /// A slot for one more forward of `user`'s on this connection, held until dropped; or the
    /// one line saying why not (this connection's limit, or the user's on the node).
    fn take(&self, node: &Node, user: &str) -> Result<Slot, String> {
        let mine = self.slots.clone().try_acquire_owned().map_err(|_| {
            format!(
                "spawngrid: this connection holds {} forwards, the node's limit ([ssh] \
                 max_forwards): close one first",
                self.max
            )
        })?;
        let max = node.config.ssh.max_forwards_per_user;
        let theirs = node.forwards.try_take(user, max).ok_or_else(|| {
            format!(
                "spawngrid: you hold {max} forwards on this node, the node's limit ([ssh] \
                 max_forwards_per_user): close one first"
            )
        })?;
        Ok((mine, theirs))
    }

    /// The env the forwards of `login` go to: found once, then reused while its init runs
    /// (a boom, and a new spawn of the name, are found again).
    async fn env(&self, node: &Arc<Node>, login: &Login) -> Result<EnvState, String> {
        let known = self.env.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(st) = known.filter(EnvState::alive) {
            return Ok(st);
        }
        let st = session::forward_env(node, login).await?;
        *self.env.lock().unwrap_or_else(|e| e.into_inner()) = Some(st.clone());
        Ok(st)
    }
}

/// Moves bytes between `socket` (the env's side) and `channel` (the client's), passing each
/// side's EOF on, until both sides sent theirs (then the channel is closed). Once the client
/// is gone (its channel closed, or the connection), the socket's write side is shut down and
/// the env's side gets a grace period (5 s) to finish; then the socket is dropped, so a
/// silent env side holds nothing for long.
pub async fn bridge(socket: impl AsyncRead + AsyncWrite + Unpin, channel: Channel<Msg>) {
    let (mut rx, tx) = channel.split();
    let (mut from_env, mut to_env) = tokio::io::split(socket);
    let (client_eof, mut eof) = watch::channel(false);
    {
        let to_client = async {
            let copied = tokio::io::copy(&mut from_env, &mut tx.make_writer()).await;
            if copied.is_ok() {
                let _ = tx.eof().await;
            }
            copied
        };
        let from_client = async {
            let written = from_client(&mut rx, &mut to_env, &client_eof).await;
            let _ = to_env.shutdown().await;
            if let Err(e) = written {
                tracing::debug!("ssh forward: to the env: {e}");
            }
        };
        tokio::pin!(to_client, from_client);
        tokio::select! {
            () = &mut from_client => {
                if tokio::time::timeout(GRACE, &mut to_client).await.is_err() {
                    tracing::debug!("ssh forward: the env's side did not end within {GRACE:?}");
                }
            }
            done = &mut to_client => match done {
                Ok(_) => tokio::select! {
                    () = &mut from_client => {}
                    _ = eof.wait_for(|&eof| eof) => {}
                },
                Err(e) => tracing::debug!("ssh forward: from the env: {e}"),
            },
        }
    }
    let _ = tx.close().await;
}

/// Writes what the client sends to the env's side (`to_env`) until the client is gone; its
/// EOF shuts the write side down and is told on `eof`. While a write waits (the env reads
/// slowly or not at all) the next message is read ahead, so a client going away is seen;
/// one message at most, so the client's window still holds back what it sends. An error:
/// writing failed.
async fn from_client(
    rx: &mut ChannelReadHalf,
    to_env: &mut (impl AsyncWrite + Unpin),
    eof: &watch::Sender<bool>,
) -> std::io::Result<()> {
    let mut ahead = None;
    loop {
        let msg = match ahead.take() {
            Some(msg) => msg,
            None => rx.wait().await,
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                let write = to_env.write_all(&data);
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        written = &mut write => break written?,
                        next = rx.wait(), if ahead.is_none() => match next {
                            Some(ChannelMsg::Close) | None => return Ok(()),
                            next => ahead = Some(next),
                        },
                    }
                }
            }
            Some(ChannelMsg::Eof) => {
                to_env.shutdown().await?;
                eof.send_replace(true);
            }
            Some(ChannelMsg::Close) | None => return Ok(()),
            Some(_) => {}
        }
    }
}

/// A refusal the client prints (`open failed: administratively prohibited: MESSAGE`).
fn refusal(message: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 1,
        reason: message,
    }
}

/// Serves a `direct-tcpip` channel of a connection whose forwards are `forwards`: connects to
/// `host`:`port` inside the login's env, then accepts the channel and bridges it; or refuses
/// it with one line saying why.
pub async fn direct(
    node: Arc<Node>,
    login: Arc<Login>,
    forwards: Arc<Forwards>,
    channel: Channel<Msg>,
    host: String,
    port: u32,
    reply: ChannelOpenHandle,
) {
    let connected = async {
        if !node.config.ssh.forward_local {
            return Err(refusal(
                "spawngrid: local port forwarding is disabled on this node".into(),
            ));
        }
        let slot = forwards.take(&node, &login.user).map_err(refusal)?;
        let st = forwards.env(&node, &login).await.map_err(refusal)?;
        let addr = netns::address(&host, port).map_err(|e| refusal(format!("spawngrid: {e}")))?;
        let tcp = netns::connect(&st, addr)
            .await
            .map_err(|e| ChannelOpenFailure::Other {
                code: 2,
                reason: format!("spawngrid: connecting to {addr} in env {}: {e:#}", st.name),
            })?;
        Ok((tcp, slot, node.activity.session(&st.name)))
    };
    match connected.await {
        Ok((tcp, _slot, _busy)) => {
            reply.accept().await;
            bridge(tcp, channel).await;
        }
        Err(why) => {
            tracing::info!(user = %login.user, "ssh -L refused: {}", why.description());
            reply.reject(why).await;
        }
    }
}

/// Starts a remote forward of a connection whose forwards are `forwards`: listens on
/// `host`:`port` inside the login's env and, per connection, opens a `forwarded-tcpip`
/// channel through `handle`, until the env goes. The task that accepts (abort it to cancel)
/// and the port listened on; an error is the reason for the log (the protocol has no room for
/// it: the client only learns that the request failed).
pub async fn remote(
    node: &Arc<Node>,
    login: &Login,
    forwards: Arc<Forwards>,
    handle: Handle,
    host: &str,
    port: u32,
) -> Result<(tokio::task::AbortHandle, u32), String> {
    if !node.config.ssh.forward_remote {
        return Err("remote port forwarding is disabled on this node".into());
    }
    let slot = forwards.take(node, &login.user)?;
    let st = forwards.env(node, login).await?;
    let addr = netns::bind_address(host, port).map_err(|e| e.to_string())?;
    if addr.port() != 0 && addr.port() < PRIVILEGED_BELOW {
        let (env, user) = (st.clone(), login.user.clone());
        let who =
            tokio::task::spawn_blocking(move || session::accounts(&env).map(|a| a.user(&user)))
                .await
                .unwrap_or_else(|e| Err(format!("spawngrid: internal error: {e}")))?;
        if who.is_some_and(|w| w.uid != 0) {
            return Err(format!("port {} needs root in the env", addr.port()));
        }
    }
    let listener = netns::listen(&st, addr)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?.port();
    let busy = node.activity.session(&st.name);
    let (host, node, user) = (host.to_string(), node.clone(), login.user.clone());
    let task = tokio::spawn(async move {
        let _held = (slot, busy);
        tokio::select! {
            () = relay(listener, (&forwards, &node, &user), handle, &host, bound) => {}
            () = gone(&st) => tracing::info!(env = %st.name, port = bound, "ssh -R: the env is gone: closed"),
        }
    });
    Ok((task.abort_handle(), bound.into()))
}

/// Accepts connections on `listener` (port `bound` of the client's `host`) and bridges each
/// to a new `forwarded-tcpip` channel through `handle`; one past the connection's `forwards`
/// limit is closed at once.
async fn relay(
    listener: tokio::net::TcpListener,
    (forwards, node, user): (&Forwards, &Node, &str),
    handle: Handle,
    host: &str,
    bound: u16,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, most likely: let some close.
                tracing::debug!("ssh -R accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match forwards.take(node, user) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::info!(%peer, port = bound, "ssh -R: a connection closed: {why}");
                continue;
            }
        };
        let (handle, host) = (handle.clone(), host.to_string());
        tokio::spawn(async move {
            let _slot = slot;
            let opened = handle
                .channel_open_forwarded_tcpip(
                    host,
                    bound.into(),
                    peer.ip().to_string(),
                    peer.port().into(),
                )
                .await;
            match opened {
                Ok(channel) => bridge(tcp, channel).await,
                Err(e) => tracing::debug!("ssh -R: opening a channel: {e}"),
            }
        });
    }
}

/// Waits until env `st`'s init has exited (at once if it has already), on a pidfd.
async fn gone(st: &EnvState) {
    let pidfd = rustix::process::Pid::from_raw(st.init_pid)
        .map(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()));
    // Opened before this check, so it is the right init's if the check holds.
    if !st.alive() {
        return;
    }
    let watched = match pidfd {
        Some(Ok(pidfd)) => crate::bridge::readable(pidfd).await,
        Some(Err(e)) => Err(e.into()),
        None => return,
    };
    if let Err(e) = watched {
        // Not watched: the listener lives until cancelled or the connection ends.
        tracing::warn!(env = %st.name, "ssh -R: watching the env's init: {e}");
        std::future::pending::<()>().await;
    }
}
