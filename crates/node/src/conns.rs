//! Connection limits of the HTTPS API and the SSH gateway: at most `[connections] max` open
//! at once, and `per_address` from one source (an IPv4 address, or an IPv6 /64: one host's
//! addresses cost an attacker nothing); how long a client may take to send a request's
//! headers and its body (slowloris), and how long an upgraded stream may stay silent
//! ([`crate::idle`]). A connection stays counted for as long as any part of it lives: an
//! HTTPS connection upgraded to another protocol (a WebSocket, relayed or served)
//! outlives the task that accepted it and keeps its [`Permit`] until the stream ends.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `[connections]` table of the node's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnConfig {
    /// Connections open at once (API and SSH together); more are closed at once.
    pub max: usize,
    /// Connections open at once from one source (IPv4 address or IPv6 /64).
    pub per_address: usize,
    /// Seconds a client may take to send a request's headers.
    pub header_timeout: u64,
    /// Seconds a client may take to send a request's body (JSON bodies; a `cp` upload's
    /// body may not pause longer than this between pieces).
    pub body_timeout: u64,
    /// Seconds an upgraded stream (a WebSocket through a preview or relayed from another
    /// node, a cpu terminal) may carry nothing before it is closed (a cpu terminal whose
    /// client still answers the node's pings is never idle).
    pub stream_idle_timeout: u64,
}

impl Default for ConnConfig {
    fn default() -> ConnConfig {
        ConnConfig {
            max: 4096,
            per_address: 256,
            header_timeout: 30,
            body_timeout: 60,
            stream_idle_timeout: 3600,
        }
    }
}

impl ConnConfig {
    /// Checks the table (at load).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max == 0 || self.per_address == 0 {
            anyhow::bail!("[connections] max and per_address must be at least 1");
        }
        if self.header_timeout == 0 || self.body_timeout == 0 || self.stream_idle_timeout == 0 {
            anyhow::bail!(
                "[connections] header_timeout, body_timeout and stream_idle_timeout must be at \
                 least 1"
            );
        }
        Ok(())
    }

    /// How long a client may take to send a request's headers.
    pub fn header(&self) -> Duration {
        Duration::from_secs(self.header_timeout)
    }

    /// How long a client may take to send a request's body.
    pub fn body(&self) -> Duration {
        Duration::from_secs(self.body_timeout)
    }

    /// How long an upgraded stream may carry nothing.
    pub fn stream_idle(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout)
    }
}

/// Where a client comes from, for limits: its IPv4 address (also when mapped into IPv6), or
/// the /64 network of its IPv6 address.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Connections open, in total and per source.
#[derive(Debug, Default)]
pub struct Gate {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection counted in its [`Gate`] until dropped. A clone counts the same
/// connection, which stays counted until the last clone is dropped: the HTTPS server puts one
/// in every request's extensions, for what takes the connection over (an upgrade).
#[derive(Clone, Debug)]
pub struct Permit {
    _counted: Arc<Counted>,
}

/// What a [`Permit`] and its clones share: the count they hold.
#[derive(Debug)]
struct Counted {
    gate: Arc<Gate>,
    /// The source whose share it counts in; none once vouched for ([`Permit::vouch`]).
    source: Mutex<Option<IpAddr>>,
}

impl Permit {
    /// Counts the connection in the node's max only, no longer in its source's share: a
    /// connection from another node of the grid ([`crate::peers`]), which counts its clients
    /// in its own caps.
    pub fn vouch(&self) {
        let source = self
            ._counted
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(source) = source {
            self._counted.gate.release(source);
        }
    }
}

impl Gate {
    /// A permit for a new connection from `peer`, or why not (for the log).
    pub fn admit(self: &Arc<Self>, peer: IpAddr, c: &ConnConfig) -> Result<Permit, String> {
        let source = source(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= c.max {
            return Err(format!("{} connections open (the node's max)", c.max));
        }
        let n = open.1.entry(source).or_insert(0);
        if *n >= c.per_address {
            return Err(format!(
                "{} connections open from {source} (the node's per_address)",
                c.per_address
            ));
        }
        *n += 1;
        open.0 += 1;
        Ok(Permit {
            _counted: Arc::new(Counted {
                gate: self.clone(),
                source: Mutex::new(Some(source)),
            }),
        })
    }
}

impl Gate {
    /// One connection fewer from `source` (still counted in the total).
    fn release(&self, source: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.1.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&source);
            }
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let source = self
            .source
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(source) = source {
            self.gate.release(source);
        }
        self.gate.open.lock().unwrap_or_else(|e| e.into_inner()).0 -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_their_64() {
        let s = |a: &str| source(a.parse().unwrap()).to_string();
        assert_eq!(s("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(s("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::");
        assert_eq!(s("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(s("192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn caps_per_source_and_in_total() {
        let c = ConnConfig {
            max: 3,
            per_address: 2,
            ..ConnConfig::default()
        };
        let gate = Arc::new(Gate::default());
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        let a1 = gate.admit(ip("2001:db8::1"), &c).unwrap();
        let _a2 = gate.admit(ip("2001:db8::2"), &c).unwrap();
        assert!(gate
            .admit(ip("2001:db8::3"), &c)
            .unwrap_err()
            .contains("per_address"));
        let b = gate.admit(ip("192.0.2.1"), &c).unwrap();
        assert!(gate.admit(ip("192.0.2.2"), &c).unwrap_err().contains("max"));
        // A clone holds the connection as the permit does, until both are gone.
        let a1_upgraded = a1.clone();
        drop(a1);
        assert!(gate.admit(ip("2001:db8::3"), &c).is_err());
        drop(a1_upgraded);
        let a3 = gate.admit(ip("2001:db8::3"), &c).unwrap();
        // Vouched for: counted in the max only, so the source's share is free again.
        drop(b);
        a3.vouch();
        a3.vouch();
        let _a4 = gate.admit(ip("2001:db8::4"), &c).unwrap();
        assert!(gate
            .admit(ip("2001:db8::5"), &c)
            .unwrap_err()
            .contains("max"));
        // Once gone, it leaves the total, and the source's share as it was.
        drop(a3);
        assert!(gate
            .admit(ip("2001:db8::5"), &c)
            .unwrap_err()
            .contains("per_address"));
        let _c = gate.admit(ip("192.0.2.9"), &c).unwrap();
    }
}
