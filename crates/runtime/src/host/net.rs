//! Networking of an env. Every env has its own network namespace (unshared by the env-init
//! helper).
//!
//! - `none` (the default): only loopback, brought up by the init (`inside::loopback`).
//! - `nat`: also a veth pair. The host end `sgv<N>` and the env's `eth0` get the two addresses
//!   of a /30 from the host's pool ([`NAT_POOL`]); the env's default route is the host end;
//!   the host forwards IPv4 and masquerades what the env sends elsewhere (nftables table
//!   `ip spawngrid`), to the internet only unless the node allows more ([`crate::host::egress`]).
//!   Set up from the host by the spawner once the init exists ([`setup_nat`]), undone by
//!   boom ([`teardown_nat`]).
//!
//! The host side uses the iproute2 `ip` command (run inside the env's network namespace with
//! util-linux `nsenter --net=/proc/PID/ns/net`) and the `nft` command.
//!
//! Several nodes (data directories) may share a host: a grid demo runs one per network
//! namespace, tests run many data directories at once. A subnet is therefore held twice:
//!
//! - by the node: `DATA/net/lease-<subnet address>` (env, host end tag, link, the env init's
//!   pid and start time), made atomically with `link(2)` from a complete temporary file, so
//!   concurrent spawns of the node never get the same subnet and a lease is never
//!   half-written;
//! - host-wide: the claim [`HOST_CLAIMS`]`/<subnet address>`, a symbolic link to that lease
//!   file, made atomically with `symlink(2)`. Its target names the owning data directory.
//!
//! One host-wide pool rather than disjoint per-node pools: any number of data directories
//! comes and goes, and a pool split by a hash of the node would collide by chance. With the
//! subnet unique on the host, its index is too, so the host end's name `sgv<N>` (at most 8
//! bytes: `IFNAMSIZ` is 16) needs no node id. A claim is stale when its lease is gone (the data
//! directory was removed) or its env's init is gone (its veth pair went with its network
//! namespace); a spawn that finds no free subnet replaces a stale claim. Claims are removed
//! only under an exclusive lock on the claims directory, after reading their holder again.
//! `/run` is a tmpfs: claims go with a reboot, as envs do.
//!
//! The nft table `ip spawngrid` and its set `envs` are shared by the host's nodes rather than
//! made per node: env-to-env traffic is dropped across nodes as within one, no table is ever
//! deleted (so no node's teardown cuts another's envs, and no empty table is left per data
//! directory), and envs spawned before claims keep their rules. A subnet's element belongs to
//! the holder of its claim: a boom removes it only while its lease holds the claim (a dead
//! env's subnet may have been claimed by another node since; a lease without a claim, made by
//! an older version, takes the claim first). The host end carries a tag (its `ifalias`,
//! recorded in the lease), so boom deletes only the link it made. A node on an older version
//! claims nothing host-wide: the interface names then still keep subnets apart (creating
//! `sgv<N>` fails while it exists, and the spawner moves on).

use crate::error::{fail, Context, Error, Result};
use crate::host::claims::{remove as remove_file, Claims};
use crate::host::egress::{self, Cidr};
use crate::host::runtime::Runtime;
use crate::mounts::ensure_dir;
use crate::proc::start_time;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An env's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Loopback only.
    #[default]
    None,
    /// Its own address on a veth pair to the host, outbound access through the host (NAT).
    Nat,
}

impl std::str::FromStr for Network {
    type Err = Error;

    fn from_str(s: &str) -> Result<Network> {
        match s {
            "none" => Ok(Network::None),
            "nat" => Ok(Network::Nat),
            _ => fail!("unknown network {s:?} (none or nat)"),
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::None => "none",
            Network::Nat => "nat",
        })
    }
}

/// The pool of env subnets, shared by the host's nodes: `10.88.0.0/16`.
pub const NAT_POOL: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 0);
/// Prefix length of [`NAT_POOL`].
pub const NAT_POOL_PREFIX: u8 = 16;
/// Prefix length of one env's subnet: a /30 (network, host end, env end, broadcast).
pub const NAT_PREFIX: u8 = 30;
/// The nftables table (family `ip`) holding the set of env subnets and the NAT rules.
pub const NFT_TABLE: &str = "spawngrid";
/// The env's end of the veth pair, inside.
pub const ENV_IF: &str = "eth0";
/// Host end names: this prefix and the subnet's index in the pool.
const HOST_IF_PREFIX: &str = "sgv";

/// One env's veth pair and its addresses (recorded in its state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatLink {
    /// The subnet's network address.
    pub subnet: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The host end's name (in the host's network namespace).
    pub host_if: String,
    /// The host end's address: the env's default gateway.
    pub host_addr: Ipv4Addr,
    /// The env end's name (inside).
    pub env_if: String,
    /// The env's address.
    pub env_addr: Ipv4Addr,
}

impl NatLink {
    /// Subnet number `index` of the pool.
    fn nth(index: u32) -> NatLink {
        let base = u32::from(NAT_POOL) + (index << (32 - NAT_PREFIX));
        NatLink {
            subnet: Ipv4Addr::from(base),
            prefix: NAT_PREFIX,
            host_if: format!("{HOST_IF_PREFIX}{index}"),
            host_addr: Ipv4Addr::from(base + 1),
            env_if: ENV_IF.into(),
            env_addr: Ipv4Addr::from(base + 2),
        }
    }

    /// The subnet as `a.b.c.d/len`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix)
    }
}

/// Number of env subnets in the pool.
fn pool_size() -> u32 {
    1 << (NAT_PREFIX - NAT_POOL_PREFIX)
}

/// The pool index of a subnet address, if it is one.
fn index_of(subnet: Ipv4Addr) -> Option<u32> {
    let off = u32::from(subnet).checked_sub(u32::from(NAT_POOL))?;
    let index = off >> (32 - NAT_PREFIX);
    (index < pool_size() && off.trailing_zeros() >= u32::from(32 - NAT_PREFIX)).then_some(index)
}

/// A lease file's content.
#[derive(Serialize, Deserialize)]
struct Lease {
    /// The env holding the subnet.
    env: String,
    /// The host end's `ifalias`, naming the link this lease made.
    tag: String,
    /// The link.
    link: NatLink,
    /// The env's init (pid, start time): the lease is stale once that process is gone.
    /// Absent from leases made before host-wide claims (they never go stale).
    #[serde(default)]
    init: Option<(i32, u64)>,
    /// Destinations the env may reach beyond the internet (its `allowed` elements).
    #[serde(default)]
    allow: Vec<Cidr>,
}

impl Lease {
    /// Reads the lease at `path`, if it is there and whole.
    fn read(path: &Path) -> Option<Lease> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Whether the env that made it is gone (so its veth pair is too).
    fn stale(&self) -> bool {
        self.init
            .is_some_and(|(pid, start)| start_time(pid) != Some(start))
    }
}

/// Where the host-wide claims on subnets live: `HOST_CLAIMS/<subnet address>`, a symbolic
/// link to the lease file of the node that holds the subnet.
pub const HOST_CLAIMS: &str = "/run/spawngrid/net";

/// Where a node's subnet leases live: `DATA/net`.
pub fn leases_dir(rt: &Runtime) -> PathBuf {
    rt.data.join("net")
}

fn lease_path(dir: &Path, link: &NatLink) -> PathBuf {
    dir.join(format!("lease-{}", link.subnet))
}

/// A new lease's temporary file: `tmp-<pid>-<unique>` (env names may be 255 bytes long).
fn tmp_path(dir: &Path, unique: &str) -> PathBuf {
    dir.join(format!("tmp-{}-{unique}", std::process::id()))
}

/// Whether a temporary file was left by a process that is gone.
fn tmp_is_stale(name: &str) -> bool {
    let pid = name.strip_prefix("tmp-").and_then(|r| r.split('-').next());
    pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists())
}

/// Gives env `env` (whose init, `init_pid`, started at `init_start`, has made its network
/// namespace) a `nat` network: lease a subnet, create the veth pair with one end inside,
/// address both ends, route, forward and masquerade, to the internet and the destinations
/// `allow` only, narrowed by the env's policy `rules` ([`crate::host::egress`]). On error,
/// what was made stays for [`teardown_nat`] (boom) to remove.
pub fn setup_nat(
    rt: &Runtime,
    env: &str,
    init_pid: i32,
    init_start: u64,
    allow: &[Cidr],
    rules: &egress::Rules,
) -> Result<NatLink> {
    let (link, tag) = claim(rt, env, init_pid, init_start, allow)?;
    // The init is alive until the spawn returns (nothing else runs in the env yet), so its pid
    // still names its namespace; check anyway that it was not reused.
    if start_time(init_pid) != Some(init_start) {
        fail!("the env's init ({init_pid}) exited during network setup");
    }
    let h = &link.host_if;
    // Strict reverse-path filtering: the host accepts from the env only its own address (root
    // inside may change it), and no IPv6 on the host end. Set before the link comes up.
    sysctl(&format!("ipv4/conf/{h}/rp_filter"), "1")?;
    let v6 = format!("/proc/sys/net/ipv6/conf/{h}/disable_ipv6");
    if Path::new(&v6).exists() {
        sysctl(&format!("ipv6/conf/{h}/disable_ipv6"), "1")?;
    }
    let host = format!(
        "link set dev {h} alias {tag}\naddr add {}/{} dev {h}\nlink set dev {h} up\n",
        link.host_addr, link.prefix
    );
    let inside = format!(
        "addr add {}/{} dev {e}\nlink set dev {e} up\nroute add default via {} dev {e}\n",
        link.env_addr,
        link.prefix,
        link.host_addr,
        e = link.env_if
    );
    let netns = format!("--net=/proc/{init_pid}/ns/net");
    enable_forwarding()?;
    // Independent of each other: run at the same time (each is a few ms of process start).
    let host = Tool::start("ip", &["-batch", "-"], Some(&host))?;
    let enter = [&netns, "--", "ip", "-batch", "-"];
    let inside = Tool::start("nsenter", &enter, Some(&inside))?;
    // Usually the table exists and only the env's elements are new (a rule change costs ~10
    // ms more); the whole table is (re)defined when it is missing or older than the egress
    // rules (the probe, or the env's entry in the `egress` map, fails).
    let elements = env_elements(&link, allow, rules);
    let probe = format!("{}{elements}", egress::nft_probe(NFT_TABLE));
    let rules = Tool::start("nft", &["-f", "-"], Some(&probe))?;
    let (host, inside, rules) = (host.finish()?, inside.finish()?, rules.finish()?);
    host.context("configuring the host end")?;
    inside.context("configuring the env's end")?;
    match rules {
        Err(e) if format!("{e}").contains("No such file or directory") => {
            // Two transactions: nft cannot add a map element jumping to a chain of a table
            // made in the same one.
            tool("nft", &["-f", "-"], Some(&nft_script()))?.context("adding the nat rules")?;
            tool("nft", &["-f", "-"], Some(&elements))?
                .context("adding the env's subnet to the nat rules")?
        }
        r => r.context("adding the env's subnet to the nat rules")?,
    }
    Ok(link)
}

/// The nft commands adding env `link`'s subnet, its allowed destinations `allow` (the
/// node's), and its policy's objects for `rules`.
fn env_elements(link: &NatLink, allow: &[Cidr], rules: &egress::Rules) -> String {
    subnet_elements(link, allow)
        + &egress::env_script(NFT_TABLE, &link.host_if, &link.cidr(), rules)
}

/// The nft commands adding env `link`'s subnet and its allowed destinations `allow`.
fn subnet_elements(link: &NatLink, allow: &[Cidr]) -> String {
    let mut s = format!("add element ip {NFT_TABLE} envs {{ {} }}\n", link.cidr());
    if let Some(pairs) = egress::allowed_elements(&link.cidr(), allow) {
        s += &format!("add element ip {NFT_TABLE} allowed {pairs}\n");
    }
    s
}

/// Replaces the egress policy of env `env`'s `nat` network `link` with `rules` (one nft
/// transaction), holding its lease's lock, so a boom (which takes it too) never runs
/// between the check that the env still holds its subnet and the change. `check` runs under
/// the lock first and may refuse (an error) or skip (`None`); `then` runs after the change
/// with what `check` gave, which is returned.
pub fn change_egress<T>(
    rt: &Runtime,
    env: &str,
    link: &NatLink,
    rules: &egress::Rules,
    check: impl FnOnce() -> Result<Option<T>>,
    then: impl FnOnce(&mut T) -> Result<()>,
) -> Result<Option<T>> {
    let path = lease_path(&leases_dir(rt), link);
    let _lock = lock_lease(&path)?
        .filter(|_| Lease::read(&path).is_some_and(|l| l.env == env))
        .with_context(|| format!("env {env} no longer has its network (it is being boomed)"))?;
    let Some(mut checked) = check()? else {
        return Ok(None);
    };
    let script = egress::env_script(NFT_TABLE, &link.host_if, &link.cidr(), rules);
    tool("nft", &["-f", "-"], Some(&script))?.context("changing the env's egress policy")?;
    then(&mut checked)?;
    Ok(Some(checked))
}

/// Locks the lease at `path` (exclusive, until the file returned is dropped), if it still
/// exists once locked.
fn lock_lease(path: &Path) -> Result<Option<std::fs::File>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", path.display()))?;
    // Released meanwhile: the file is no longer the lease at `path`.
    let same =
        |a: rustix::fs::Stat, b: rustix::fs::Stat| a.st_ino == b.st_ino && a.st_dev == b.st_dev;
    match (rustix::fs::fstat(&file), rustix::fs::stat(path)) {
        (Ok(a), Ok(b)) if same(a, b) => Ok(Some(file)),
        _ => Ok(None),
    }
}

/// Turns IPv4 forwarding on. If it was off (the host routed for nobody), first adds the
/// router guard ([`egress::nft_router_guard`]), so the host forwards only for env links.
fn enable_forwarding() -> Result<()> {
    let key = "ipv4/ip_forward";
    if std::fs::read_to_string(format!("/proc/sys/net/{key}")).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    let guard = egress::nft_router_guard(NFT_TABLE, HOST_IF_PREFIX);
    tool("nft", &["-f", "-"], Some(&guard))?.context("adding the router guard")?;
    sysctl(key, "1")
}

/// Leases a free subnet for `env` (in the node's leases and host-wide) and creates its veth
/// pair, the env end (`eth0`) directly in the network namespace of `init_pid` (started at
/// `init_start`); returns the link and the host end's tag.
fn claim(
    rt: &Runtime,
    env: &str,
    init_pid: i32,
    init_start: u64,
    allow: &[Cidr],
) -> Result<(NatLink, String)> {
    let dir = leases_dir(rt);
    ensure_dir(&dir)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let unique = format!("{nonce:x}-{seq}");
    let tmp = tmp_path(&dir, &unique);
    // The host end's ifalias (at most 255 bytes): unique, and the env's name if it fits.
    let mut tag = format!("spawngrid-{:x}-{unique}", std::process::id());
    if tag.len() + 1 + env.len() <= 255 {
        tag = format!("{tag}:{env}");
    }
    let taken: HashSet<u32> = leases(&dir)?.into_iter().map(|(i, _)| i).collect();
    // Subnets nobody claims first, then those claimed host-wide (whose claims may be stale).
    let mut held: Vec<u32> = subnet_entries(Path::new(HOST_CLAIMS), "")?
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    held.sort_unstable();
    let free = (0..pool_size()).filter(|i| held.binary_search(i).is_err());
    for index in free.chain(held.iter().copied()) {
        if taken.contains(&index) {
            continue;
        }
        let link = NatLink::nth(index);
        let lease = Lease {
            env: env.into(),
            tag: tag.clone(),
            link: link.clone(),
            init: Some((init_pid, init_start)),
            allow: allow.to_vec(),
        };
        std::fs::write(
            &tmp,
            serde_json::to_vec(&lease).context("encoding a lease")?,
        )
        .with_context(|| format!("writing {}", tmp.display()))?;
        let path = lease_path(&dir, &link);
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        if !host_claim(&path, &link)? {
            remove_file(&path)?;
            continue;
        }
        let pid = init_pid.to_string();
        let add = ["link", "add", &link.host_if, "type", "veth", "peer", "name"];
        let add = [&add[..], &[ENV_IF, "netns", &pid]].concat();
        match tool("ip", &add, None)? {
            Ok(()) => {
                remove_file(&tmp)?;
                return Ok((link, tag));
            }
            Err(e) if format!("{e}").contains("File exists") => {
                // A runtime that does not claim host-wide (an older version) has this
                // subnet's interface.
                unclaim(&path, &link)?;
            }
            Err(e) => {
                remove_file(&tmp)?;
                return Err(e).context("creating the veth pair");
            }
        }
    }
    remove_file(&tmp)?;
    fail!(
        "no free subnet in the nat pool {NAT_POOL}/{NAT_POOL_PREFIX} ({} in use by this node, {} \
         claimed on the host)",
        taken.len(),
        held.len()
    )
}

/// The host-wide claims on subnets ([`HOST_CLAIMS`], keyed by subnet address).
const SUBNET_CLAIMS: Claims = Claims { dir: HOST_CLAIMS };

/// Claims `link`'s subnet host-wide for the lease at `lease`: true if the claim is the
/// lease's (now, or already). A stale claim (its lease is gone with its data directory, or
/// its env is dead) is replaced.
fn host_claim(lease: &Path, link: &NatLink) -> Result<bool> {
    SUBNET_CLAIMS.claim(&link.subnet.to_string(), lease, |holder| {
        Lease::read(holder).is_none_or(|l| l.stale())
    })
}

/// Gives up the host-wide claim on `link`'s subnet if the lease at `lease` holds it, then the
/// lease.
fn unclaim(lease: &Path, link: &NatLink) -> Result<()> {
    SUBNET_CLAIMS.unclaim(&link.subnet.to_string(), lease)?;
    remove_file(lease)
}

/// Every readable lease in `dir`, with its pool index.
fn leases(dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    subnet_entries(dir, "lease-")
}

/// Every entry of `dir` named `<prefix><subnet address>` of a pool subnet, with its index.
fn subnet_entries(dir: &Path, prefix: &str) -> Result<Vec<(u32, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    Ok(entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let index = index_of(name.strip_prefix(prefix)?.parse().ok()?)?;
            Some((index, e.path()))
        })
        .collect())
}

/// Removes everything of env `env`'s `nat` network: its host veth end (which takes the env
/// end with it), its subnet in the nft set, its lease (and temporary lease files of it, or of
/// spawners that died). Call once the env's processes are gone. Idempotent; nothing to do for
/// an env without a lease.
pub fn teardown_nat(rt: &Runtime, env: &str) -> Result<()> {
    let dir = leases_dir(rt);
    for (_, path) in leases(&dir)? {
        match Lease::read(&path) {
            Some(lease) if lease.env == env => release(&path, &lease)?,
            _ => {}
        }
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("tmp-") {
            continue;
        }
        let ours = Lease::read(&e.path()).is_some_and(|l| l.env == env);
        if ours || tmp_is_stale(&name) {
            remove_file(&e.path())?;
        }
    }
    Ok(())
}

/// Frees one lease: the link it made, the nft element (if the lease holds the subnet's
/// host-wide claim: a lease of a dead env may have lost it to another node, whose element it
/// now is; a lease without a claim, made by an older version, takes it first), the claim, the
/// file.
fn release(path: &Path, lease: &Lease) -> Result<()> {
    // Not while a policy change is under way (it holds the lock; it finds the lease gone after).
    let _lock = lock_lease(path)?;
    let owned = host_claim(path, &lease.link)?;
    let h = &lease.link.host_if;
    let alias = std::fs::read_to_string(format!("/sys/class/net/{h}/ifalias")).unwrap_or_default();
    // Both wait for the kernel (RCU grace periods): run at the same time.
    let del_link = match alias.trim_end_matches('\n') == lease.tag {
        true => Some(Tool::start("ip", &["link", "del", "dev", h], None)?),
        false => None,
    };
    let cidr = lease.link.cidr();
    let mut del = format!("delete element ip {NFT_TABLE} envs {{ {cidr} }}\n");
    if let Some(pairs) = egress::allowed_elements(&cidr, &lease.allow) {
        del += &format!("delete element ip {NFT_TABLE} allowed {pairs}\n");
    }
    // Made first, so the one transaction succeeds whichever of them exist (a table of an
    // older version has no `egress` map: that fails, and the old way follows below).
    let all = format!(
        "{}{}{del}",
        subnet_elements(&lease.link, &lease.allow),
        egress::env_teardown(NFT_TABLE, h, &cidr)
    );
    let del_element = match owned {
        true => Some(Tool::start("nft", &["-f", "-"], Some(&all))?),
        false => None,
    };
    let (link_done, element_done) = (
        del_link.map(Tool::finish).transpose()?,
        del_element.map(Tool::finish).transpose()?,
    );
    // Gone already is what we want: the link dies with the env's network namespace, and that
    // may happen between reading its alias and deleting it ("No such device").
    match link_done {
        Some(Err(e))
            if !format!("{e}").contains("Cannot find device")
                && !format!("{e}").contains("No such device") =>
        {
            return Err(e).with_context(|| format!("deleting {h}"))
        }
        _ => {}
    }
    let missing = |e: &Error| {
        let e = format!("{e}");
        e.contains("does not exist") || e.contains("No such file or directory")
    };
    if let Some(Err(e)) = element_done {
        if !missing(&e) {
            return Err(e).context("removing the env's subnet from the nat rules");
        }
        // A table without the egress objects, or no table: what it has goes.
        match tool("nft", &["-f", "-"], Some(&del))? {
            // A missing element (or table) is what we want.
            Err(e) if !missing(&e) => {
                return Err(e).context("removing the env's subnet from the nat rules")
            }
            _ => {}
        }
    }
    unclaim(path, &lease.link)
}

/// The nft commands that (re)define the table, sets and rules (the env's elements follow in
/// the same transaction). Idempotent and atomic, so concurrent spawns may run it at the same
/// time (a spawn that finds the table missing or older runs it; a flushed ruleset loses the
/// subnets of running envs, though).
fn nft_script() -> String {
    let t = NFT_TABLE;
    format!(
        "add table ip {t}
add set ip {t} envs {{ type ipv4_addr; flags interval; }}
add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain ip {t} postrouting
add rule ip {t} postrouting ip saddr @envs ip daddr != @envs masquerade
{}",
        egress::nft_rules(t, HOST_IF_PREFIX)
    )
}

/// Writes `value` to `/proc/sys/net/<key>` unless it already holds it.
fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

/// Runs a host tool with `input` on its stdin. The outer error: it could not be run; the inner:
/// it failed (with its stderr).
fn tool(program: &str, args: &[&str], input: Option<&str>) -> Result<Result<()>> {
    Tool::start(program, args, input)?.finish()
}

/// A running host tool (`ip`, `nsenter`, `nft`); waited for when dropped unfinished.
struct Tool {
    what: String,
    child: Option<std::process::Child>,
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Tool {
    /// Starts `program` and writes `input` (small: fits the pipe) to its stdin.
    fn start(program: &str, args: &[&str], input: Option<&str>) -> Result<Tool> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "running {program} (nat networking needs iproute2, util-linux and nftables)"
                )
            })?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().context("tool stdin")?;
            // A tool that exits early closes its stdin; its status and stderr tell why.
            let _ = stdin.write_all(input.as_bytes());
        }
        Ok(Tool {
            what: format!("{program} {}", args.join(" ")),
            child: Some(child),
        })
    }

    /// Waits for it. The outer error: waiting failed; the inner: it failed (with its stderr).
    fn finish(mut self) -> Result<Result<()>> {
        let child = self.child.take().context("tool already waited for")?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", self.what))?;
        if out.status.success() {
            return Ok(Ok(()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Ok(Err(Error::Failed(anyhow::anyhow!(
            "{} failed ({}): {}",
            self.what,
            out.status,
            stderr.trim()
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_indexes() {
        let l = NatLink::nth(1);
        assert_eq!(l.cidr(), "10.88.0.4/30");
        assert_eq!(l.host_addr, Ipv4Addr::new(10, 88, 0, 5));
        assert_eq!(l.env_addr, Ipv4Addr::new(10, 88, 0, 6));
        assert_eq!(l.host_if, "sgv1");
        let last = NatLink::nth(pool_size() - 1);
        assert_eq!(last.cidr(), "10.88.255.252/30");
        assert!(last.host_if.len() <= 15);
        assert_eq!(index_of(last.subnet), Some(pool_size() - 1));
        assert_eq!(index_of(Ipv4Addr::new(10, 88, 0, 4)), Some(1));
        assert_eq!(index_of(Ipv4Addr::new(10, 88, 0, 5)), None);
        assert_eq!(index_of(Ipv4Addr::new(10, 89, 0, 0)), None);
        assert_eq!(index_of(Ipv4Addr::new(10, 87, 0, 0)), None);
        assert_eq!("nat".parse::<Network>().unwrap(), Network::Nat);
        assert_eq!(Network::default().to_string(), "none");
        assert!("bridge".parse::<Network>().is_err());
    }

    /// On the host's real claims directory (as root), with the pool's last subnet, which no
    /// test env gets.
    #[test]
    fn stale_host_claims_are_replaced_live_ones_kept() {
        let link = NatLink::nth(pool_size() - 1);
        let key = link.subnet.to_string();
        let holder = || SUBNET_CLAIMS.holder(&key).unwrap();
        let claim = SUBNET_CLAIMS.path(&key);
        let tmp = tempfile::tempdir().unwrap();
        let (mine, theirs) = (tmp.path().join("mine"), tmp.path().join("theirs"));
        let write = |path: &Path, init| {
            let lease = Lease {
                env: "e".into(),
                tag: "t".into(),
                link: link.clone(),
                init,
                allow: Vec::new(),
            };
            std::fs::write(path, serde_json::to_vec(&lease).unwrap()).unwrap();
        };
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        let (live, dead) = (Some((me, start)), Some((me, 1)));
        write(&mine, live);
        // A claim whose lease is gone (with its data directory) is replaced.
        std::fs::create_dir_all(HOST_CLAIMS).unwrap();
        std::os::unix::fs::symlink(&theirs, &claim).unwrap();
        assert!(host_claim(&mine, &link).unwrap());
        assert_eq!(holder().as_ref(), Some(&mine));
        assert!(host_claim(&mine, &link).unwrap(), "already ours");
        // A live claim is kept, also when another lease gives up the subnet.
        write(&theirs, live);
        assert!(!host_claim(&theirs, &link).unwrap());
        unclaim(&theirs, &link).unwrap();
        assert!(!theirs.exists());
        assert_eq!(holder().as_ref(), Some(&mine));
        // The claim of a dead env is replaced; its holder then leaves it alone.
        write(&mine, dead);
        write(&theirs, live);
        assert!(host_claim(&theirs, &link).unwrap());
        unclaim(&mine, &link).unwrap();
        assert_eq!(holder().as_ref(), Some(&theirs));
        unclaim(&theirs, &link).unwrap();
        assert_eq!(holder(), None);
    }
}
