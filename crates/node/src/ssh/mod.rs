//! The SSH gateway (`ssh -p 16999 ENV+USER@HOST`): the russh server side over the node's
//! envs. A login is checked against the catalog ([`auth`]); each session channel then runs a
//! login shell (on a terminal inside the env), a command, or the built-in SFTP server
//! (`runtime::sftp`) ([`session`]), its bytes moved by [`crate::bridge`]; `ENV=NAME+USER`
//! spawns the env at login ([`spawn`]). The host key is
//! [`keys`]. Port forwards into the env ([`forward`], [`netns`]) and agent forwarding
//! ([`agent`]) are allowed by the node's `[ssh]` table ([`SshConfig`]); no X11 forwarding.
//!
//! Many connections at once, many channels per connection; every channel is its own task.

pub mod agent;
pub mod auth;
pub mod forward;
pub mod keys;
pub mod netns;
pub mod quickack;
pub mod session;
pub mod spawn;

use crate::Node;
use auth::Login;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet};
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How long a connection may take to log in (from its first byte).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The node config's `[ssh]` table: what an env's owner may forward through the gateway, and
/// the type of host key a new node makes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// `ssh -L`: connections from the client to addresses inside the env.
    pub forward_local: bool,
    /// `ssh -R`: listeners inside the env whose connections go to the client.
    pub forward_remote: bool,
    /// `ssh -A`: a socket inside the env that the client's agent answers.
    pub forward_agent: bool,
    /// The most forwards one SSH connection holds at once: `-L`/`-W` channels, `-R`
    /// listeners, and connections an `-R` listener relays; one more is refused.
    pub max_forwards: usize,
    /// The most forwards one user holds at once across their SSH connections (each is a
    /// socket: one user's many connections must not take the node's descriptors).
    pub max_forwards_per_user: usize,
    /// The type of host key made on the node's first start (a node keeps the key it has).
    pub host_key: keys::HostKeyType,
}

impl Default for SshConfig {
    fn default() -> SshConfig {
        SshConfig {
            forward_local: true,
            forward_remote: true,
            forward_agent: true,
            max_forwards: 64,
            max_forwards_per_user: 256,
            host_key: keys::HostKeyType::default(),
        }
    }
}

/// The russh server configuration: the host key, password logins, keepalives, and russh's
/// key exchanges plus `ecdh-sha2-nistp256`, which a client may prefer (OpenSSH's own
/// curve25519 code costs its client more CPU than OpenSSL's P-256; its default order still
/// picks curve25519).
pub fn config(host_key: russh::keys::PrivateKey) -> Arc<russh::server::Config> {
    let defaults = russh::Preferred::default();
    let mut kex = defaults.kex.to_vec();
    let after = kex
        .iter()
        .rposition(|k| k.as_ref().starts_with("curve25519"))
        .map_or(0, |i| i + 1);
    kex.insert(after, russh::kex::ECDH_SHA2_NISTP256);
    Arc::new(russh::server::Config {
        preferred: russh::Preferred {
            kex: kex.into(),
            ..defaults
        },
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-spawngrid_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        auth_rejection_time: Duration::from_secs(1),
        // OpenSSH first tries "none" to learn the methods: no need to make it wait.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        ..Default::default()
    })
}

/// Serves SSH on `listener` until `shutdown` completes; then open connections are left to the
/// async runtime's shutdown (their commands are killed or hung up as their channels drop).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        // `accept` sets TCP_NODELAY (russh's own `nodelay` applies only to its accept loop).
        let (tcp, peer) = tokio::select! {
            c = crate::http::accept(&listener, "ssh") => c,
            _ = &mut shutdown => break,
        };
        let permit = match node.gate.admit(peer.ip(), &node.config.connections) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(%peer, "ssh connection refused: {why}");
                node.metrics.inc("spawngrid_connections_refused_total", &[]);
                continue;
            }
        };
        let logged_in = Arc::new(AtomicBool::new(false));
        let conn = Conn {
            node: node.clone(),
            peer,
            steps: Steps::new(),
            offered: None,
            login: None,
            logged_in: logged_in.clone(),
            remote: HashMap::new(),
            forwards: Arc::new(forward::Forwards::new(node.config.ssh.max_forwards)),
        };
        let config = config.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = tokio::time::sleep(LOGIN_TIMEOUT);
            tokio::pin!(deadline);
            let session = tokio::select! {
                s = russh::server::run_stream(config, quickack::QuickAck::new(tcp), conn) => match s {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, "ssh handshake: {e}");
                        return;
                    }
                },
                _ = &mut deadline => return,
            };
            let handle = session.handle();
            tokio::pin!(session);
            let result = tokio::select! {
                r = &mut session => r,
                _ = &mut deadline => {
                    // Checked when the time is up (a select guard would be read only once,
                    // at the start, and cut every session at the deadline).
                    if !logged_in.load(Ordering::Relaxed) {
                        let _ = handle
                            .disconnect(Disconnect::ByApplication, "login timed out".into(), String::new())
                            .await;
                    }
                    session.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "ssh connection: {e}");
            }
        });
    }
}

/// When a connection reached its steps before its sessions: what a session's debug line
/// (`SPAWNGRID_LOG=node::ssh=debug`) reports of where a new connection's time went.
#[derive(Clone, Copy, Debug)]
pub struct Steps {
    /// The TCP connection was accepted.
    pub accepted: Instant,
    /// Key exchange done: the client asked to authenticate.
    pub kex: Option<Instant>,
    /// The client logged in.
    pub login: Option<Instant>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            accepted: Instant::now(),
            kex: None,
            login: None,
        }
    }
}

/// One client connection.
pub struct Conn {
    node: Arc<Node>,
    peer: SocketAddr,
    steps: Steps,
    /// The login and key fingerprint last accepted in a key offer (the signed request that
    /// follows is then not looked up again).
    offered: Option<(String, String, Login)>,
    /// Set once the client has logged in.
    login: Option<Arc<Login>>,
    /// Whether it has (seen by the login timeout).
    logged_in: Arc<AtomicBool>,
    /// Its remote forwards by the address the client named and the port bound (the one a
    /// client cancels with, also when it asked for port 0): their accept tasks.
    remote: HashMap<(String, u32), tokio::task::AbortHandle>,
    /// What its forwards share: their count and their env.
    forwards: Arc<forward::Forwards>,
}

impl Drop for Conn {
    /// Remote forwards end with the connection.
    fn drop(&mut self) {
        self.remote.values().for_each(|t| t.abort());
    }
}

impl Conn {
    fn logged_in(&mut self, login: Login) {
        if let (Some(spawn), Some(env)) = (&login.spawn, &login.env) {
            spawn.start(&self.node, &login.user, env);
        }
        self.login = Some(Arc::new(login));
        self.steps.login = Some(Instant::now());
        self.logged_in.store(true, Ordering::Relaxed);
    }

    /// Whether `key` may log in as `user` (a [`auth::key`] lookup, or the answer to the
    /// offer of the same key a moment ago).
    async fn key_login(&mut self, user: &str, key: &russh::keys::PublicKey) -> Option<Login> {
        let fingerprint = auth::fingerprint(key);
        if let Some((u, f, login)) = &self.offered {
            if u == user && *f == fingerprint {
                return Some(login.clone());
            }
        }
        let login = auth::key(&self.node, user, &fingerprint).await?;
        self.offered = Some((user.to_string(), fingerprint, login.clone()));
        Some(login)
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    /// Called once the key exchange is done and the client asks to authenticate.
    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        self.steps.kex.get_or_insert_with(Instant::now);
        Ok(None)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        match auth::password(&self.node, Some(self.peer.ip()), user, password).await {
            Some(login) => {
                self.logged_in(login);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.key_login(user, offer.public_key).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.key_login(user, key.public_key).await {
            Some(login) => {
                tracing::info!(user = %login.user, peer = %self.peer, "ssh login (key)");
                self.logged_in(login);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            return Ok(()); // dropping the reply refuses the channel
        };
        reply.accept().await;
        let handle = session.handle();
        let steps = self.steps;
        tokio::spawn(session::run(
            self.node.clone(),
            login,
            steps,
            channel,
            handle,
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            return Ok(());
        };
        let (node, host) = (self.node.clone(), host_to_connect.to_string());
        tokio::spawn(forward::direct(
            node,
            login,
            self.forwards.clone(),
            channel,
            host,
            port_to_connect,
            reply,
        ));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(login) = self.login.clone() else {
            return Ok(false);
        };
        // Keys are bound ports, so port 0 (a port the node picks, as `-R 0:...` asks) is
        // never a duplicate. A listener whose env went is gone.
        self.remote.retain(|_, task| !task.is_finished());
        if self.remote.contains_key(&(address.to_string(), *port)) {
            tracing::info!(user = %login.user, address, port = *port, "ssh -R refused: a duplicate");
            return Ok(false);
        }
        let (node, forwards) = (&self.node, self.forwards.clone());
        match forward::remote(node, &login, forwards, session.handle(), address, *port).await {
            Ok((task, bound)) => {
                tracing::info!(user = %login.user, address, port = bound, "ssh -R");
                self.remote.insert((address.to_string(), bound), task);
                *port = bound;
                Ok(true)
            }
            Err(why) => {
                tracing::info!(user = %login.user, address, port = *port, "ssh -R refused: {why}");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(match self.remote.remove(&(address.to_string(), port)) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        })
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // The session's task makes the socket once it knows the env.
        Ok(self.login.is_some() && self.node.config.ssh.forward_agent)
    }

    // Requests are answered here, in the order they came (the channel's task acts on them).

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if session::allowed_env(name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }
}
