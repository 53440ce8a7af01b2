//! What a `nat` env may reach: the internet only, by default. In the nft table of
//! [`crate::host::net`] (family `ip`, shared by the host's nodes):
//!
//! - no host INPUT from an env (the node's API, its SSH gateway, anything listening on the
//!   host's addresses, the env's own gateway included), but replies to connections the host
//!   made;
//! - no forwarding to [`BLOCKED`] destinations: "this network", RFC 1918 private networks,
//!   shared address space (RFC 6598), loopback, link-local (cloud metadata at
//!   169.254.169.254), multicast, reserved and broadcast;
//! - no traffic between envs, and none into an env that it did not start;
//! - exceptions per env, from the node's config (`[nat] allow`): the set `allowed` of
//!   `env subnet . destination` pairs, checked before the two rules above, so an allowed
//!   destination may be a private network or an address of the host itself;
//! - if the host did not forward IPv4 before a node turned forwarding on, a chain
//!   `router_guard` drops every forwarded packet that neither enters nor leaves an env link
//!   (bridged traffic that `br_netfilter` shows the IPv4 hook excepted), so the node does not
//!   become a router for its neighbours. A host that already forwarded keeps its own policy.
//!
//! On top of that floor, each env has its own policy ([`Policy`]: a default, `internet` or
//! `none`, and `allow` and `deny` lists of networks and domain names), which can only narrow
//! it. Its objects are named after the env's host end (`sgv<N>`, unique on the host while the
//! env holds its subnet): a chain `sgv<N>` and two sets `sgv<N>_allow`, `sgv<N>_deny` of
//! destination addresses, reached through the verdict map `egress` (env subnet : `jump
//! sgv<N>`), which the `forward` and `input` chains consult right after dropping env-to-env
//! traffic. The env's chain returns (on to the floor) for a destination in its allow set,
//! drops one in its deny set, and drops everything else when its default is `none`. A policy
//! is replaced whole in one nft transaction ([`env_script`]), so a change takes effect at once
//! for every packet after it (established connections to a destination no longer allowed
//! stop too). Domain names are resolved by the node ([`Rules::resolve`], IPv4 addresses from
//! the host's resolver) and their addresses put in the sets.

use crate::error::{fail, Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// An IPv4 network `address/prefix` (the address with no bits past the prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = Error;

    /// `a.b.c.d/len`, or `a.b.c.d` for one address.
    fn from_str(s: &str) -> Result<Cidr> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("{s:?} is no IPv4 network (a.b.c.d/len)"))?;
        let prefix: u8 = match prefix.parse() {
            Ok(p) if p <= 32 => p,
            _ => fail!("{s:?}: the prefix length must be 0 to 32"),
        };
        let host_bits = u32::from(addr) & (u32::MAX.checked_shr(prefix.into()).unwrap_or(0));
        if host_bits != 0 {
            fail!("{s:?} has bits set past its /{prefix} (the network address, please)");
        }
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = Error;

    fn try_from(s: String) -> Result<Cidr> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Destinations a `nat` env does not reach unless allowed.
pub const BLOCKED: [&str; 9] = [
    "0.0.0.0/8",      // "this network"
    "10.0.0.0/8",     // RFC 1918 (the env pool 10.88.0.0/16 too)
    "100.64.0.0/10",  // shared address space (carrier NAT; some clouds' metadata)
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local: cloud metadata
    "172.16.0.0/12",  // RFC 1918
    "192.0.0.0/24",   // IETF protocol assignments
    "192.168.0.0/16", // RFC 1918
    "224.0.0.0/3",    // multicast, reserved, broadcast
];

/// The nft commands that (re)define the egress objects and rules of table `t` (after its
/// `envs` set exists; idempotent, part of the table's transaction). Host INPUT is matched by
/// the env links' names (`host_if_prefix*`), not by the env subnets, which hold the host
/// ends' addresses too (the host talking to itself from one of them is no env).
pub fn nft_rules(t: &str, host_if_prefix: &str) -> String {
    format!(
        "add set ip {t} blocked {{ type ipv4_addr; flags interval; }}
flush set ip {t} blocked
add element ip {t} blocked {{ {blocked} }}
add set ip {t} allowed {{ type ipv4_addr . ipv4_addr; flags interval; }}
add map ip {t} egress {{ type ipv4_addr : verdict; flags interval; }}
add chain ip {t} forward {{ type filter hook forward priority filter; policy accept; }}
flush chain ip {t} forward
add rule ip {t} forward ip saddr @envs ip daddr @envs drop
add rule ip {t} forward ip saddr vmap @egress
add rule ip {t} forward ip saddr @envs ip saddr . ip daddr @allowed accept
add rule ip {t} forward ip saddr @envs ip daddr @blocked drop
add rule ip {t} forward ip daddr @envs ct state established,related accept
add rule ip {t} forward ip daddr @envs drop
add chain ip {t} input {{ type filter hook input priority filter; policy accept; }}
flush chain ip {t} input
add rule ip {t} input iifname \"{links}\" ct state established,related accept
add rule ip {t} input iifname \"{links}\" ip saddr vmap @egress
add rule ip {t} input iifname \"{links}\" ip saddr . ip daddr @allowed accept
add rule ip {t} input iifname \"{links}\" drop
",
        blocked = BLOCKED.join(", "),
        links = format!("{host_if_prefix}*"),
    )
}

/// A command that fails unless the table has the egress objects (so a table made by an
/// older version is redefined), and changes nothing.
pub fn nft_probe(t: &str) -> String {
    format!("add element ip {t} blocked {{ {} }}\n", BLOCKED[0])
}

/// The chain that keeps the host from routing for others, for a host on which a node turns
/// IPv4 forwarding on ([`crate::host::net`] adds it before writing `ip_forward`).
pub fn nft_router_guard(t: &str, host_if_prefix: &str) -> String {
    format!(
        "add table ip {t}
add chain ip {t} router_guard {{ type filter hook forward priority filter; policy accept; }}
flush chain ip {t} router_guard
add rule ip {t} router_guard iifname \"{host_if_prefix}*\" accept
add rule ip {t} router_guard oifname \"{host_if_prefix}*\" accept
add rule ip {t} router_guard meta iifkind \"bridge\" meta oifkind \"bridge\" accept
add rule ip {t} router_guard drop
"
    )
}

/// The `allowed` elements of env subnet `subnet` for destinations `allow`, as nft's
/// `{ ... }` list (`None` if there are none).
pub fn allowed_elements(subnet: &str, allow: &[Cidr]) -> Option<String> {
    if allow.is_empty() {
        return None;
    }
    let pairs: Vec<String> = allow.iter().map(|c| format!("{subnet} . {c}")).collect();
    Some(format!("{{ {} }}", pairs.join(", ")))
}

/// What an env reaches when neither of its lists names the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// The internet (what the node's floor lets through): today's `nat` env.
    #[default]
    Internet,
    /// Nothing: only its allow list (within the floor).
    None,
}

impl std::str::FromStr for Reach {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reach> {
        match s {
            "internet" => Ok(Reach::Internet),
            "none" => Ok(Reach::None),
            _ => fail!("unknown egress default {s:?} (internet or none)"),
        }
    }
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reach::Internet => "internet",
            Reach::None => "none",
        })
    }
}

/// One entry of an allow or deny list: an IPv4 network or a domain name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    /// A network (`a.b.c.d/len`) or one address.
    Net(Cidr),
    /// A host name, resolved by the node to its IPv4 addresses.
    Domain(String),
}

/// Most entries a policy's list may have.
pub const MAX_ENTRIES: usize = 256;

impl std::str::FromStr for Target {
    type Err = Error;

    /// A network or address (digits, dots and a slash), else a domain name (letters, digits,
    /// hyphens, dots; lowercased).
    fn from_str(s: &str) -> Result<Target> {
        if s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
        {
            return Ok(Target::Net(s.parse()?));
        }
        if s.contains(':') {
            fail!("{s:?}: envs have IPv4 only (give an IPv4 network or a domain name)");
        }
        if s.contains('*') {
            fail!("{s:?}: wildcards cannot be resolved (name each host)");
        }
        let name = s.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            fail!("{s:?} is neither an IPv4 network (a.b.c.d/len) nor a domain name");
        }
        Ok(Target::Domain(name))
    }
}

impl TryFrom<String> for Target {
    type Error = Error;

    fn try_from(s: String) -> Result<Target> {
        s.parse()
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        t.to_string()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Net(c) => c.fmt(f),
            Target::Domain(d) => f.write_str(d),
        }
    }
}

/// An env's egress policy: a destination in `allow` may be reached (if the node's floor lets
/// it), else one in `deny` may not, else `default` decides. The default policy (internet, no
/// lists) is a `nat` env as it was before policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// What the env reaches when neither list names the destination.
    #[serde(default)]
    pub default: Reach,
    /// Destinations reached whatever `deny` and `default` say.
    #[serde(default)]
    pub allow: Vec<Target>,
    /// Destinations not reached (unless in `allow`).
    #[serde(default)]
    pub deny: Vec<Target>,
}

impl Policy {
    /// A policy from its parts as a user gives them: one line naming the first bad entry.
    pub fn parse(default: &str, allow: &[String], deny: &[String]) -> Result<Policy> {
        let list = |what: &str, items: &[String]| -> Result<Vec<Target>> {
            if items.len() > MAX_ENTRIES {
                fail!(
                    "the {what} list has {} entries, more than {MAX_ENTRIES}",
                    items.len()
                );
            }
            let mut out: Vec<Target> = Vec::new();
            for item in items {
                let t: Target = item
                    .parse()
                    .map_err(|e: Error| anyhow::anyhow!("{what}: {e:#}"))?;
                if !out.contains(&t) {
                    out.push(t);
                }
            }
            Ok(out)
        };
        Ok(Policy {
            default: default.parse()?,
            allow: list("allow", allow)?,
            deny: list("deny", deny)?,
        })
    }

    /// Whether the policy names any domain (its addresses need refreshing).
    pub fn has_domains(&self) -> bool {
        self.allow
            .iter()
            .chain(&self.deny)
            .any(|t| matches!(t, Target::Domain(_)))
    }
}

impl std::fmt::Display for Policy {
    /// `default internet, allow a, b; deny c` (lists only when not empty).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "default {}", self.default)?;
        for (what, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if !list.is_empty() {
                let items: Vec<String> = list.iter().map(Target::to_string).collect();
                write!(f, "; {what} {}", items.join(", "))?;
            }
        }
        Ok(())
    }
}

/// A policy with its domain names resolved: what goes into the env's nft objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// The policy.
    pub policy: Policy,
    /// The addresses of `policy.allow`.
    pub allow: Vec<Cidr>,
    /// The addresses of `policy.deny`.
    pub deny: Vec<Cidr>,
}

impl Rules {
    /// Resolves the policy's domain names with the host's resolver (IPv4 addresses; blocks).
    /// A name without one is an error naming it.
    pub fn resolve(policy: &Policy) -> Result<Rules> {
        let addrs = |list: &[Target]| -> Result<Vec<Cidr>> {
            let mut out = Vec::new();
            for t in list {
                match t {
                    Target::Net(c) => out.push(*c),
                    Target::Domain(d) => {
                        let found = std::net::ToSocketAddrs::to_socket_addrs(&(d.as_str(), 0))
                            .map(|a| a.collect::<Vec<_>>())
                            .unwrap_or_default();
                        let v4: Vec<Cidr> = found
                            .into_iter()
                            .filter_map(|a| match a.ip() {
                                std::net::IpAddr::V4(addr) => Some(Cidr { addr, prefix: 32 }),
                                std::net::IpAddr::V6(_) => None,
                            })
                            .collect();
                        if v4.is_empty() {
                            fail!(
                                "{d} has no IPv4 address from the node's resolver: check the \
                                 name, or give its addresses"
                            );
                        }
                        out.extend(v4);
                    }
                }
            }
            out.sort_by_key(|c| (c.addr, c.prefix));
            out.dedup();
            Ok(out)
        };
        Ok(Rules {
            allow: addrs(&policy.allow)?,
            deny: addrs(&policy.deny)?,
            policy: policy.clone(),
        })
    }
}

/// The nft commands that give the env whose host end is `name` and subnet `subnet` the
/// policy `rules` in table `t`: its chain and sets (made if missing) refilled, and its entry
/// in the `egress` map. One transaction: the old policy holds until the new one does.
pub fn env_script(t: &str, name: &str, subnet: &str, rules: &Rules) -> String {
    let mut s = format!(
        "{objects}flush chain ip {t} {name}
flush set ip {t} {name}_allow
flush set ip {t} {name}_deny
add rule ip {t} {name} ip daddr @{name}_allow return
add rule ip {t} {name} ip daddr @{name}_deny drop
",
        objects = env_objects(t, name, subnet)
    );
    if rules.policy.default == Reach::None {
        s += &format!("add rule ip {t} {name} drop\n");
    }
    for (set, list) in [("allow", &rules.allow), ("deny", &rules.deny)] {
        if !list.is_empty() {
            let items: Vec<String> = list.iter().map(Cidr::to_string).collect();
            s += &format!(
                "add element ip {t} {name}_{set} {{ {} }}\n",
                items.join(", ")
            );
        }
    }
    s
}

/// The nft commands that remove every object of the env whose host end is `name` (subnet
/// `subnet`) from table `t`. They make the objects first, so the transaction succeeds
/// whichever of them exist.
pub fn env_teardown(t: &str, name: &str, subnet: &str) -> String {
    format!(
        "{objects}flush chain ip {t} {name}
delete element ip {t} egress {{ {subnet} }}
delete chain ip {t} {name}
delete set ip {t} {name}_allow
delete set ip {t} {name}_deny
",
        objects = env_objects(t, name, subnet)
    )
}

/// The nft commands adding (if missing) the env's chain, sets and map entry.
fn env_objects(t: &str, name: &str, subnet: &str) -> String {
    let set = "{ type ipv4_addr; flags interval; auto-merge; }";
    format!(
        "add chain ip {t} {name}
add set ip {t} {name}_allow {set}
add set ip {t} {name}_deny {set}
add element ip {t} egress {{ {subnet} : jump {name} }}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_print() {
        let c: Cidr = "192.168.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "192.168.0.0/16");
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        for bad in [
            "10.1.2.3/8",
            "10.0.0.0/33",
            "example.com",
            "10.0.0/8",
            "::1/128",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        for b in BLOCKED {
            b.parse::<Cidr>().unwrap();
        }
        let json: Vec<Cidr> = serde_json::from_str(r#"["10.0.0.0/8"]"#).unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), r#"["10.0.0.0/8"]"#);
    }

    #[test]
    fn policies_parse_entries_and_refuse_bad_ones_in_one_line() {
        let p = Policy::parse(
            "none",
            &["PyPI.org.".into(), "10.0.0.53".into(), "pypi.org".into()],
            &["0.0.0.0/0".into()],
        )
        .unwrap();
        assert_eq!(p.default, Reach::None);
        assert_eq!(
            p.to_string(),
            "default none; allow pypi.org, 10.0.0.53/32; deny 0.0.0.0/0"
        );
        assert!(p.has_domains());
        assert!(!Policy::default().has_domains());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
        for (bad, says) in [
            ("10.0.0.1/8", "past its /8"),
            ("*.example.com", "wildcards"),
            ("::1", "IPv4 only"),
            ("a..b", "neither"),
            ("-a.com", "neither"),
            ("10.0.0", "no IPv4 network"),
        ] {
            let err = Policy::parse("internet", &[], &[bad.into()]).unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.starts_with("deny: ") && err.contains(says),
                "{bad}: {err}"
            );
            assert_eq!(err.lines().count(), 1);
        }
        assert!(Policy::parse("sideways", &[], &[]).is_err());
        let many: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        assert!(Policy::parse("internet", &many, &[]).is_err());
    }

    #[test]
    fn the_env_script_returns_for_allowed_drops_denied_and_seals_none() {
        let rules = |default: &str| Rules {
            policy: Policy::parse(default, &[], &[]).unwrap(),
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            deny: vec![],
        };
        let open = env_script("t", "sgv1", "10.88.0.4/30", &rules("internet"));
        assert!(open.contains("add rule ip t sgv1 ip daddr @sgv1_allow return\n"));
        assert!(open.contains("add rule ip t sgv1 ip daddr @sgv1_deny drop\n"));
        assert!(open.contains("add element ip t sgv1_allow { 192.0.2.0/24 }\n"));
        assert!(!open.contains("add element ip t sgv1_deny"));
        assert!(open.contains("add element ip t egress { 10.88.0.4/30 : jump sgv1 }\n"));
        assert!(!open.contains("add rule ip t sgv1 drop\n"));
        let sealed = env_script("t", "sgv1", "10.88.0.4/30", &rules("none"));
        assert!(sealed
            .ends_with("add rule ip t sgv1 drop\nadd element ip t sgv1_allow { 192.0.2.0/24 }\n"));
        let gone = env_teardown("t", "sgv1", "10.88.0.4/30");
        assert!(gone.ends_with("delete set ip t sgv1_deny\n"));
    }

    #[test]
    fn allowed_elements_pair_the_env_with_each_destination() {
        let allow = [
            "192.168.1.0/24".parse().unwrap(),
            "10.0.0.53".parse().unwrap(),
        ];
        assert_eq!(
            allowed_elements("10.88.0.4/30", &allow).unwrap(),
            "{ 10.88.0.4/30 . 192.168.1.0/24, 10.88.0.4/30 . 10.0.0.53/32 }"
        );
        assert_eq!(allowed_elements("10.88.0.4/30", &[]), None);
    }
}
