//! The Spawngrid node daemon (`spawngrid serve`): users and tokens in the catalog, and the
//! HTTPS API (types in the `api` crate) over the env runtime, which it calls in-process.
//!
//! - [`config`]: the TOML configuration.
//! - [`conns`]: connection caps (in total, per source) and request read timeouts.
//! - [`tls`]: the self-signed certificate made on first start (`DATA/tls/`).
//! - [`auth`]: slowing down repeated bad passwords.
//! - [`envs`]: a user's envs (`ENV+USER` in the runtime) — spawn, list, exec, save, boom.
//! - [`egress`]: envs' egress policies: the change route, applied at start, domains refreshed.
//! - [`exec`]: `exec` in an env: bounded per user, timed out, killed with its client.
//! - [`snapshots`]: from a name to a mounted snapshot (shared with `spawngrid env spawn`).
//! - [`error`]: the node's error (a kind and one line), what the service code returns.
//! - [`http`]: JSON answers, extractors, the blocking pool, errors as HTTP statuses.
//! - [`server`]: the router, the session routes, the access log, the TLS accept loop.
//! - [`ssh`]: the SSH gateway (login shells, commands and sftp inside envs).
//! - [`users`]: password, SSH key and user deletion routes (yourself, or anyone for admins).
//! - [`invite`]: `invite USER NAME`, a copy of a name with USER added to its system.
//! - [`lifetime`]: envs' ttl and the idle timeout (boom, or save then boom, when time is up).
//! - [`fork`]: one save of an env, N copies spawned from it.
//! - [`lineage`]: a name's ancestry (`GET /api/log`).
//! - [`capacity`]: limits on envs and memory, refusal or eviction when the node is full.
//! - [`quota`]: names and library bytes per user, checked by every save.
//! - [`admission`]: spawns admitted and still being made (counted, their mounts kept).
//! - [`notices`]: what the node did to a user's envs unasked (evictions).
//! - [`malloc`]: the allocator's arenas, capped at one per CPU.
//! - [`metrics`]: Prometheus counters, histograms and gauges (`GET /metrics`).
//! - [`registry`]: the grid's node registry (register, heartbeat, where a node is).
//! - [`place`]: where on the grid a spawn goes (most room, `--near`, labels).
//! - [`forward`]: requests sent on to the node that can answer them (HTTPS, pinned).
//! - [`nodes`]: the grid as one: `GET /api/nodes`, grid-wide env listing, grid gauges.
//! - [`pty`]: an async terminal session inside an env (for `cpu` and the SSH gateway).
//! - [`cpu`]: `spawngrid cpu`'s WebSocket route (a terminal session).
//! - [`files`]: `spawngrid cp`'s routes (tar streams in and out of an env).
//! - [`bridge`]: bytes between fds and async streams (terminal sessions of SSH and `cpu`).
//! - [`ui`]: the web UI's page and files (`/`, `/ui/...`; embedded by the `web` crate).

pub mod admission;
pub mod ahead;
pub mod auth;
pub mod bridge;
pub mod capacity;
pub mod config;
pub mod conns;
pub mod cpu;
pub mod egress;
pub mod envs;
pub mod error;
pub mod exec;
pub mod exposures;
pub mod files;
pub mod fork;
pub mod forward;
pub mod http;
pub mod idle;
pub mod invite;
pub mod lifetime;
pub mod lineage;
pub mod malloc;
pub mod metrics;
pub mod nodes;
pub mod notices;
pub mod peers;
pub mod place;
pub mod preview;
pub mod pty;
pub mod quota;
pub mod registry;
pub mod server;
pub mod snapshots;
pub mod ssh;
pub mod tls;
pub mod ui;
pub mod users;

use anyhow::{Context, Result};
pub use config::Config;
use std::sync::Arc;

/// Everything a request handler needs: the configuration, the runtime, the catalog.
pub struct Node {
    /// The configuration in force.
    pub config: Config,
    /// The env runtime on the data directory (its helper is this executable).
    pub rt: runtime::Runtime,
    /// Where the library and the catalog live, and the data directory's layout.
    pub store: store::Store,
    /// The catalog: names, users, tokens.
    pub cat: Arc<catalog::Catalog>,
    /// Recent failed logins.
    pub backoff: auth::Backoff,
    /// This node's name (its host name), reported in env listings.
    pub name: String,
    /// Snapshot sizes: the library (opened on first use) and sizes already read.
    pub sizes: snapshots::Sizes,
    /// Capacity limits in force.
    pub limits: capacity::Limits,
    /// Sessions in progress and last activity of each env.
    pub activity: Arc<capacity::Activity>,
    /// Locked while a spawn decides and makes room, so two spawns cannot both take the last
    /// slot (and while idle snapshot mounts are swept); holds the spawns being made.
    pub admission: admission::Admission,
    /// When each snapshot mount was last asked for or seen in use.
    pub mount_uses: snapshots::MountUses,
    /// Counters and histograms for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Execs in progress per user.
    pub execs: Arc<exec::Slots>,
    /// SSH forwards held per user, across their connections.
    pub forwards: Arc<exec::Slots>,
    /// Connections open (API and SSH), in total and per source.
    pub gate: Arc<conns::Gate>,
    /// The node's certificate and key, presented to the nodes it forwards requests to (set
    /// when it starts serving; without it, it forwards as a client would).
    pub card: Option<tls::Card>,
}

impl Node {
    /// Opens the node on `config.data` (created if missing).
    pub fn open(config: Config) -> Result<Node> {
        let exe = runtime::helper::self_exe();
        let rt = runtime::Runtime::new(&config.data, exe)?;
        let data = store::DataDir::new(&config.data);
        let store = store::Store::for_node(data, config.store.as_ref())?;
        let cat = store.catalog()?;
        let sizes = snapshots::Sizes::new(store.clone());
        let limits = config.capacity.limits(host_memory()?)?;
        let name = config.name.clone().unwrap_or_else(host_name);
        Ok(Node {
            config,
            rt,
            store,
            cat: Arc::new(cat),
            backoff: auth::Backoff::default(),
            name,
            sizes,
            limits,
            activity: Arc::default(),
            admission: admission::Admission::default(),
            mount_uses: snapshots::MountUses::default(),
            metrics: metrics::Metrics::default(),
            execs: Arc::default(),
            forwards: Arc::default(),
            gate: Arc::default(),
            card: None,
        })
    }
}

/// The host's RAM in bytes (`MemTotal` of `/proc/meminfo`).
fn host_memory() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no MemTotal in /proc/meminfo")
}

/// The machine's host name (`uname -n`).
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Runs the node until SIGINT or SIGTERM: opens the data directory, loads or makes the TLS
/// certificate, listens, and prints one line with the address and the certificate's
/// fingerprint (what clients will be asked to trust).
pub fn run(config: Config) -> Result<()> {
    // A pipe whose reader is gone (an exec's stdin) must be an error, not the daemon's death.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    malloc::cap_arenas();
    let node = Node::open(config)?;
    node.rt.keep_spare_helper();
    envs::reconcile(&node).context("matching the catalog's envs with this node's")?;
    // A save cut short by a crash of this node left its env frozen.
    for line in runtime::freeze::recover_all(&node.rt).context("thawing envs")? {
        tracing::warn!("{line}");
    }
    snapshots::upgrade_mounts(&node.rt);
    snapshots::refill_standby(&node, std::time::Duration::ZERO);
    invite::sweep(&node);
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.push(node.name.clone());
    if let Some(h) = &node.config.public_host {
        names.push(h.clone());
    }
    names.dedup();
    let id = tls::load_or_create(&node.rt.data, &names)?;
    let host_key = ssh::keys::load_or_create(&node.rt.data, node.config.ssh.host_key)?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("spawngrid-node")
        .build()
        .context("starting the async runtime")?;
    let listen = node.config.listen;
    let result = tokio.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let ssh_listen = node.config.ssh_addr();
        let ssh_listener = tokio::net::TcpListener::bind(ssh_listen)
            .await
            .with_context(|| format!("listening for SSH on {ssh_listen}"))?;
        let ssh_addr = ssh_listener
            .local_addr()
            .context("reading the bound SSH address")?;
        // Attach commands name `ssh_port`; a listener moved with `ssh_listen` and no
        // `ssh_port` of its own (a forward) is reached at the port it is bound to.
        let mut node = node;
        if node.config.ssh_listen.is_some() && node.config.ssh_port == api::SSH_PORT {
            node.config.ssh_port = ssh_addr.port();
        }
        // Preview URLs name the HTTPS port bound (port 0: the one picked).
        node.config.listen.set_port(addr.port());
        if host_key.generated {
            tracing::info!("made an SSH host key in {}", host_key.path.display());
        }
        if id.generated {
            tracing::info!(
                "made a self-signed TLS certificate in {}",
                tls::cert_path(&node.rt.data).display()
            );
        }
        println!(
            "spawngrid: node {} listening on https://{addr} and ssh://{ssh_addr} (data {}, certificate SHA-256 {}, SSH host key {})",
            node.name,
            node.rt.data.display(),
            id.fingerprint,
            host_key.fingerprint
        );
        node.card = Some(id.card);
        let public = format!(
            "{}:{}",
            node.config.public_host.as_deref().unwrap_or(&node.name),
            addr.port()
        );
        let node = Arc::new(node);
        let (n, fingerprint) = (node.clone(), id.fingerprint.clone());
        tokio::task::spawn_blocking(move || registry::register(&n, &public, &fingerprint))
            .await
            .context("registering this node in the catalog")?
            .context("registering this node in the catalog")?;
        tokio::spawn(registry::heartbeat(node.clone(), id.fingerprint.clone()));
        let leaving = id.fingerprint.clone();
        snapshots::start_sweeping(node.clone());
        lifetime::start_sweeping(node.clone());
        egress::start_refreshing(node.clone());
        // One signal stops both listeners.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut ssh_stop = stop.clone();
        let ssh_config = ssh::config(host_key.key);
        let ssh = tokio::spawn(ssh::serve(node.clone(), ssh_listener, ssh_config, async move {
            let _ = ssh_stop.wait_for(|s| *s).await;
        }));
        let stopping = async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        };
        server::serve(node.clone(), listener, (id.config, id.peers), stopping).await;
        let _ = ssh.await;
        let _ = tokio::task::spawn_blocking(move || registry::leave(&node, &leaving)).await;
        tracing::info!("shutting down (envs keep running)");
        Ok(())
    });
    // Requests still running (a long exec) get a moment; envs are not touched either way.
    tokio.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default dispositions still end the process.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
