//! The node's configuration: a TOML file (`spawngrid serve --config FILE`), every key optional.
//!
//! ```toml
//! name = "node1"                  # this node's name in the grid (the seed's `sys`); default:
//!                                 # the host name; one node's while it is up (another host
//!                                 # given it is refused at start)
//! listen = "0.0.0.0:16998"        # address and port of the HTTPS API
//! data = "/var/lib/spawngrid"     # library, catalog.db, envs/, mounts/, tls/
//! public_host = "node1.example"   # the host name put in attach commands (default: the
//!                                 # name the client used to reach the node)
//! ssh_port = 16999                # the SSH gateway's port, for attach commands
//! ssh_listen = "0.0.0.0:16999"    # where the SSH gateway listens (default: the host of
//!                                 # `listen` with `ssh_port`); attach commands still name
//!                                 # `ssh_port` (the port clients reach, e.g. through a forward)
//! token_days = 30                 # lifetime of a login token
//! max_body = 1048576              # largest request body in bytes (413 beyond)
//! max_copy = "1G"                 # most bytes one `spawngrid cp` moves (streamed)
//! default_mem = "512M"            # memory limit of an env spawned without --mem
//! write_size = "100M"             # an env's write layer in RAM (tmpfs; counts in its memory)
//! disk_size = "1G"                # an env's write layer on disk (`spawn --disk`, ext4 image)
//! mount_idle_secs = 600           # unmount a snapshot no env has used for this long (0: never)
//! labels = ["rack=r1", "zone=z1"] # this node's labels in the grid (`spawn --label k=v`, `--near`)
//! down_after = "30s"              # a grid node not heard from for this long is down; this
//!                                 # node heartbeats three times as often (crate::registry)
//! idle_timeout = "2h"             # end an env after this long without a session (exec, cpu,
//!                                 # SSH, cp); default: never (see crate::lifetime)
//! on_expire = "boom"              # what ends an env whose ttl or idle timeout is up: "boom",
//!                                 # or "save" (as ENV@TIME, then boom); `spawn --on-expire`
//!                                 # overrides it per env
//!
//! [capacity]                      # see crate::capacity
//! max_envs = 512                  # envs on this node
//! max_mem = "20G"                 # memory reserved by envs (their limits); default: host RAM
//! user_max_envs = 10              # per user (default: no limit of its own)
//! user_max_mem = "4G"             # per user
//! policy = "refuse"               # or "evict": boom the longest-idle env of the user most
//!                                 # over their fair share
//!
//! [exec]                          # `spawngrid exec` (see crate::exec)
//! max_per_user = 16               # execs + SSH sessions one user runs at once
//! timeout = "1h"                  # kill an exec's command after this long; default: never
//!                                 # (`exec --timeout` asks for less)
//!
//! [quota]                         # per user, checked by saves (see crate::quota)
//! names = 1000                    # names one user may have; default: no limit
//! bytes = "50G"                   # bytes their names' snapshots may hold; default: no limit
//!
//! [invite]                        # see crate::invite
//! accept_from = ["alice"]         # users whose invites are accepted at once ("*": anyone's);
//!                                 # default: every invite waits for `invite accept`
//!
//! [connections]                   # see crate::conns
//! max = 4096                      # connections open at once (API and SSH together)
//! per_address = 256               # from one IPv4 address or IPv6 /64
//! header_timeout = 30             # seconds to send a request's headers
//! body_timeout = 60               # seconds to send a request's body (cp: between pieces)
//! stream_idle_timeout = 3600      # seconds a WebSocket may carry nothing (cpu: no pongs)
//!
//! [ssh]                           # the SSH gateway's forwarding, each on by default for the
//! forward_local = true            # env's owner: `ssh -L` to addresses inside the env,
//! forward_remote = true           # `ssh -R` listening inside the env,
//! forward_agent = true            # `ssh -A` (SSH_AUTH_SOCK inside the env)
//! max_forwards = 64               # forwards one SSH connection holds at once (-L/-W
//!                                 # channels, -R listeners and their connections)
//! max_forwards_per_user = 256     # forwards one user holds at once, all connections
//!
//! [nat]                           # what `--net nat` envs reach besides the internet
//! allow = ["192.168.10.0/24"]     # destinations (a.b.c.d/len or one address) otherwise
//!                                 # refused: private and link-local networks, the host's own
//!                                 # addresses (the API, the SSH gateway); default: none
//!
//! [store]                         # where the library and catalog live (store::config);
//! library = "s3://spawngrid/lib"  # default: DATA/library and DATA/catalog.db. Recorded in
//!                                 # DATA/store.toml for local commands; without this table
//!                                 # the node uses what DATA/store.toml says
//! catalog = "postgres://spawngrid:PASSWORD@db:5432/spawngrid"
//! ```

use anyhow::{bail, Context, Result};
use human::parse_size;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The `[nat]` table: destinations `nat` envs may reach besides the internet (see
/// `runtime::egress`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    /// Networks or addresses allowed (`a.b.c.d/len`, or `a.b.c.d`).
    pub allow: Vec<runtime::egress::Cidr>,
}

/// The node's configuration (see the module documentation for the file format).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name in the grid; default: the host name. While a node of that name with
    /// another certificate is up, this node does not start.
    pub name: Option<String>,
    /// Address and port of the HTTPS API.
    pub listen: SocketAddr,
    /// The data directory.
    pub data: PathBuf,
    /// The host name in attach commands; default: the `Host` the client connected to.
    pub public_host: Option<String>,
    /// The SSH gateway's port, for attach commands.
    pub ssh_port: u16,
    /// Where the SSH gateway listens; default: `listen`'s address with `ssh_port`.
    pub ssh_listen: Option<SocketAddr>,
    /// Lifetime of a login token, in days.
    pub token_days: u64,
    /// The largest request body in bytes.
    pub max_body: usize,
    /// The most bytes one copy in or out of an env moves (bytes, or with K/M/G/T).
    pub max_copy: String,
    /// Memory limit of an env spawned without one (bytes, or with K/M/G/T).
    pub default_mem: String,
    /// Size of an env's write layer in RAM (a tmpfs).
    pub write_size: String,
    /// Size of an env's write layer on disk (`spawn --disk`).
    pub disk_size: String,
    /// Seconds a snapshot's mount stays after its last env is gone (0: until the node is
    /// stopped and the mount unmounted by hand).
    pub mount_idle_secs: u64,
    /// This node's labels in the grid (`key=value`).
    pub labels: Vec<String>,
    /// How long a grid node may stay silent before this node takes it for down (`30s`).
    pub down_after: String,
    /// How long an env may go without a session before the node ends it (`30m`, `2h`;
    /// default: forever).
    pub idle_timeout: Option<String>,
    /// What ends an env whose ttl or idle timeout is up, unless its spawn said.
    pub on_expire: api::Expire,
    /// Capacity limits and the full-node policy.
    pub capacity: crate::capacity::CapacityConfig,
    /// Library quotas per user.
    pub quota: crate::quota::QuotaConfig,
    /// Whose invites are accepted without asking.
    pub invite: crate::invite::InviteConfig,
    /// Connection caps and read timeouts.
    pub connections: crate::conns::ConnConfig,
    /// Limits on execs.
    pub exec: crate::exec::ExecConfig,
    /// What the SSH gateway lets an env's owner forward.
    pub ssh: crate::ssh::SshConfig,
    /// What `nat` envs may reach besides the internet.
    pub nat: NatConfig,
    /// Where the library and the catalog live (`None`: as recorded in the data directory).
    pub store: Option<store::StoreConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: None,
            listen: SocketAddr::from(([0, 0, 0, 0], api::DEFAULT_PORT)),
            data: PathBuf::from("/var/lib/spawngrid"),
            public_host: None,
            ssh_port: api::SSH_PORT,
            ssh_listen: None,
            token_days: api::DEFAULT_TOKEN_DAYS,
            max_body: api::MAX_BODY,
            max_copy: api::MAX_COPY.to_string(),
            default_mem: "512M".into(),
            write_size: "100M".into(),
            disk_size: "1G".into(),
            mount_idle_secs: 600,
            labels: Vec::new(),
            down_after: "30s".into(),
            idle_timeout: None,
            on_expire: api::Expire::Boom,
            capacity: Default::default(),
            exec: Default::default(),
            connections: Default::default(),
            invite: Default::default(),
            quota: Default::default(),
            ssh: Default::default(),
            nat: Default::default(),
            store: Default::default(),
        }
    }
}

impl Config {
    /// Reads a configuration file; keys it lacks keep their defaults.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses configuration text and checks it.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // toml's messages span lines (a source excerpt); keep one line.
            anyhow::anyhow!("{}", e.message().trim())
        })?;
        if config.token_days == 0 {
            bail!("token_days must be at least 1");
        }
        parse_size(&config.max_copy).context("max_copy")?;
        if config.max_body < 1024 {
            bail!("max_body must be at least 1024 bytes");
        }
        if parse_size(&config.default_mem).context("default_mem")? < api::MIN_MEM {
            bail!("default_mem must be at least 16M");
        }
        if parse_size(&config.write_size).context("write_size")? < 1 << 20 {
            bail!("write_size must be at least 1M");
        }
        // ext4 needs room for its own metadata.
        if parse_size(&config.disk_size).context("disk_size")? < 16 << 20 {
            bail!("disk_size must be at least 16M");
        }
        match human::parse_duration(&config.down_after) {
            Ok(d) if d.as_secs() >= 3 => {}
            Ok(_) => bail!("down_after must be at least 3s (a node heartbeats every third of it)"),
            Err(e) => bail!("down_after: {e}"),
        }
        if let Some(t) = &config.idle_timeout {
            if let Err(e) = human::parse_timeout(t) {
                bail!("idle_timeout: {e}");
            }
        }
        config.capacity.limits(1)?;
        config.exec.check()?;
        config.connections.check()?;
        config.quota.check()?;
        for l in &config.labels {
            crate::place::check_label(l).map_err(anyhow::Error::msg)?;
        }
        Ok(config)
    }

    /// Where the SSH gateway listens.
    pub fn ssh_addr(&self) -> SocketAddr {
        self.ssh_listen
            .unwrap_or_else(|| SocketAddr::new(self.listen.ip(), self.ssh_port))
    }

    /// The most bytes one copy moves.
    pub fn max_copy_bytes(&self) -> u64 {
        parse_size(&self.max_copy).unwrap_or(api::MAX_COPY)
    }

    /// How long a grid node may stay silent before it is down.
    pub fn down_after(&self) -> std::time::Duration {
        human::parse_duration(&self.down_after).unwrap_or(std::time::Duration::from_secs(30))
    }

    /// The idle timeout in seconds, if any.
    pub fn idle_timeout_secs(&self) -> Option<u64> {
        let t = self.idle_timeout.as_deref()?;
        human::parse_duration(t).ok().map(|d| d.as_secs())
    }

    /// The size of an env's write layer in bytes: on disk (`--disk`) or in RAM.
    pub fn write_layer_bytes(&self, disk: bool) -> u64 {
        let (text, default) = if disk {
            (&self.disk_size, runtime::spawn::DISK_SIZE)
        } else {
            (&self.write_size, runtime::spawn::TMPFS_SIZE)
        };
        parse_size(text).unwrap_or(default)
    }

    /// The default memory limit in bytes.
    pub fn default_mem_bytes(&self) -> u64 {
        parse_size(&self.default_mem).unwrap_or(512 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen.port(), 16998);
        assert_eq!(c.data, PathBuf::from("/var/lib/spawngrid"));
        assert_eq!((c.token_days, c.max_body), (30, 1 << 20));
        assert_eq!(c.max_copy_bytes(), 1 << 30);
        let c = Config::parse("max_copy = \"2M\"").unwrap();
        assert_eq!(c.max_copy_bytes(), 2 << 20);
        assert!(Config::parse("max_copy = \"lots\"").is_err());
        assert_eq!(c.default_mem_bytes(), 512 << 20);
        assert_eq!(c.ssh_addr().to_string(), "0.0.0.0:16999");
        let c = Config::parse("listen = \"127.0.0.1:1\"\nssh_port = 2").unwrap();
        assert_eq!(c.ssh_addr().to_string(), "127.0.0.1:2");
        let c = Config::parse("ssh_listen = \"[::1]:3\"").unwrap();
        assert_eq!(
            (c.ssh_addr().to_string(), c.ssh_port),
            ("[::1]:3".into(), 16999)
        );
    }

    #[test]
    fn ssh_forwarding_is_on_unless_turned_off() {
        let c = Config::parse("").unwrap().ssh;
        assert!(c.forward_local && c.forward_remote && c.forward_agent);
        assert_eq!((c.max_forwards, c.max_forwards_per_user), (64, 256));
        let c = Config::parse("[ssh]\nforward_agent = false\n").unwrap().ssh;
        assert!(c.forward_local && c.forward_remote && !c.forward_agent);
        assert!(Config::parse("[ssh]\nforward_x11 = true\n").is_err());
    }

    #[test]
    fn keys_are_read_and_checked() {
        let c = Config::parse(
            "listen = \"127.0.0.1:1234\"\ndata = \"/d\"\npublic_host = \"n1\"\ntoken_days = 2\ndefault_mem = \"1G\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1234");
        assert_eq!(c.public_host.as_deref(), Some("n1"));
        assert_eq!(c.default_mem_bytes(), 1 << 30);
        let err = Config::parse("lisen = \"x\"").unwrap_err().to_string();
        assert!(err.contains("lisen") && !err.contains('\n'), "{err}");
        assert!(Config::parse("token_days = 0").is_err());
        assert!(Config::parse("listen = \"nope\"").is_err());
        assert!(Config::parse("default_mem = \"5Q\"").is_err());
        assert!(Config::parse("default_mem = \"1M\"").is_err());
        let c = Config::parse("[capacity]\nmax_envs = 3\npolicy = \"evict\"\n").unwrap();
        assert_eq!(c.capacity.max_envs, 3);
        assert_eq!(c.capacity.policy, crate::capacity::Policy::Evict);
        assert!(Config::parse("[capacity]\npolicy = \"random\"\n").is_err());
        assert!(Config::parse("[capacity]\nmax_envs = 0\n").is_err());
        let c = Config::parse("labels = [\"rack=r1\"]").unwrap();
        assert_eq!(c.labels, ["rack=r1"]);
        assert!(Config::parse("labels = [\"rack\"]").is_err());
        let c = Config::parse("[nat]\nallow = [\"192.168.10.0/24\", \"10.0.0.53\"]\n").unwrap();
        let allow: Vec<String> = c.nat.allow.iter().map(|a| a.to_string()).collect();
        assert_eq!(allow, ["192.168.10.0/24", "10.0.0.53/32"]);
        let err = Config::parse("[nat]\nallow = [\"10.0.0.1/8\"]\n").unwrap_err();
        assert!(err.to_string().contains("10.0.0.1/8"), "{err}");
        assert!(Config::default().nat.allow.is_empty());
    }

    #[test]
    fn down_after_is_a_duration_of_at_least_three_seconds() {
        assert_eq!(Config::parse("").unwrap().down_after().as_secs(), 30);
        let c = Config::parse("down_after = \"1m\"").unwrap();
        assert_eq!(c.down_after().as_secs(), 60);
        for bad in ["down_after = \"2s\"", "down_after = \"soon\""] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("down_after"), "{e}");
        }
    }

    #[test]
    fn idle_timeouts() {
        assert_eq!(Config::parse("").unwrap().idle_timeout_secs(), None);
        let c = Config::parse("idle_timeout = \"1h 30m\"\non_expire = \"save\"").unwrap();
        assert_eq!(c.idle_timeout_secs(), Some(5400));
        assert_eq!(c.on_expire, api::Expire::Save);
        assert_eq!(c.write_layer_bytes(false), 100 << 20);
        assert_eq!(c.write_layer_bytes(true), 1 << 30);
        let c = Config::parse("write_size = \"8M\"\ndisk_size = \"2G\"").unwrap();
        assert_eq!(
            (c.write_layer_bytes(false), c.write_layer_bytes(true)),
            (8 << 20, 2 << 30)
        );
        for bad in [
            "idle_timeout = \"soon\"",
            "idle_timeout = \"0s\"",
            "on_expire = \"x\"",
            "write_size = \"10K\"",
            "disk_size = \"1M\"",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }
}
