//! Port forwarding into an env (`ssh -L`, `ssh -R`), each allowed by the node's `[ssh]`
//! table (on by default): local forwards (`direct-tcpip` channels) connect from inside the
//! env's network namespace; remote forwards (`tcpip-forward`) listen inside it and open a
//! `forwarded-tcpip` channel to the client per connection, until cancelled or the connection
//! ends. Sockets are made in the env by [`super::netns`]; bytes are moved by
//! [`tokio::io::copy_bidirectional`] between the socket and the channel.
//!
//! Only the env's owner logs in to it (`super::session`), so only they forward. A session
//! user who is not root inside may not listen on a port below 1024, as in the env itself.

use super::auth::Login;
use super::netns;
use super::session::{forward_target, Target};
use crate::Node;
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// The first port only root may listen on.
const PRIVILEGED_BELOW: u16 = 1024;

/// Moves bytes between `socket` and `channel` until both sides are done.
pub async fn bridge(mut socket: impl AsyncRead + AsyncWrite + Unpin, channel: Channel<Msg>) {
    let mut stream = channel.into_stream();
    if let Err(e) = tokio::io::copy_bidirectional(&mut socket, &mut stream).await {
        tracing::debug!("ssh forward: {e}");
    }
}

/// A refusal the client prints (`open failed: administratively prohibited: MESSAGE`).
fn refusal(message: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 1,
        reason: message,
    }
}

/// Serves a `direct-tcpip` channel: connects to `host`:`port` inside the login's env, then
/// accepts the channel and bridges it; or refuses it with one line saying why.
pub async fn direct(
    node: Arc<Node>,
    login: Arc<Login>,
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
        let Target { st, .. } = forward_target(&node, &login).await.map_err(refusal)?;
        let addr = netns::address(&host, port).map_err(|e| refusal(format!("spawngrid: {e}")))?;
        let tcp = netns::connect(&st, addr)
            .await
            .map_err(|e| ChannelOpenFailure::Other {
                code: 2,
                reason: format!("spawngrid: connecting to {addr} in env {}: {e:#}", st.name),
            })?;
        Ok((tcp, node.activity.session(&st.name)))
    };
    match connected.await {
        Ok((tcp, _busy)) => {
            reply.accept().await;
            bridge(tcp, channel).await;
        }
        Err(why) => {
            tracing::info!(user = %login.user, "ssh -L refused: {}", why.description());
            reply.reject(why).await;
        }
    }
}

/// Starts a remote forward: listens on `host`:`port` inside the login's env and, per
/// connection, opens a `forwarded-tcpip` channel through `handle`. The task that accepts
/// (abort it to cancel) and the port listened on; an error is the reason for the log (the
/// protocol has no room for it: the client only learns that the request failed).
pub async fn remote(
    node: &Arc<Node>,
    login: &Login,
    handle: Handle,
    host: &str,
    port: u32,
) -> Result<(tokio::task::AbortHandle, u32), String> {
    if !node.config.ssh.forward_remote {
        return Err("remote port forwarding is disabled on this node".into());
    }
    let Target { st, who, .. } = forward_target(node, login).await?;
    let addr = netns::bind_address(host, port).map_err(|e| e.to_string())?;
    let root = who.as_ref().is_none_or(|w| w.uid == 0);
    if !root && addr.port() != 0 && addr.port() < PRIVILEGED_BELOW {
        return Err(format!("port {} needs root in the env", addr.port()));
    }
    let listener = netns::listen(&st, addr)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?.port();
    let busy = node.activity.session(&st.name);
    let host = host.to_string();
    let task = tokio::spawn(async move {
        let _busy = busy;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds, most likely: let some close.
                    tracing::debug!("ssh -R accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (handle, host) = (handle.clone(), host.clone());
            tokio::spawn(async move {
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
    });
    Ok((task.abort_handle(), bound.into()))
}
