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
add chain ip {t} forward {{ type filter hook forward priority filter; policy accept; }}
flush chain ip {t} forward
add rule ip {t} forward ip saddr @envs ip daddr @envs drop
add rule ip {t} forward ip saddr @envs ip saddr . ip daddr @allowed accept
add rule ip {t} forward ip saddr @envs ip daddr @blocked drop
add rule ip {t} forward ip daddr @envs ct state established,related accept
add rule ip {t} forward ip daddr @envs drop
add chain ip {t} input {{ type filter hook input priority filter; policy accept; }}
flush chain ip {t} input
add rule ip {t} input iifname \"{links}\" ct state established,related accept
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
