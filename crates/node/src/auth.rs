//! Logins: slowing down repeated bad passwords per user and per client address (in memory,
//! per node process), for the HTTPS API and the SSH gateway alike.
//!
//! The first [`FREE_FAILURES`] failures of a user cost nothing extra (Argon2 already makes
//! each check take tens of milliseconds); after that each failure locks the user's logins for
//! twice as long as the one before, from 1 s up to [`MAX_LOCK`]. A success clears the user's
//! count, not the address's (one valid account must not reset an address guessing others).
//! Attempts while the user or the address is locked are refused without checking the
//! password (429 over HTTPS). An address is an IPv4 address or an IPv6 /64
//! ([`crate::conns::source`]). Only password logins are counted and locked: SSH key logins
//! never are, so an attacker failing passwords for a user cannot lock them out of their keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before logins of the user are locked for a while.
pub const FREE_FAILURES: u32 = 3;

/// The longest lock.
pub const MAX_LOCK: Duration = Duration::from_secs(300);

/// Users remembered at most (entries past their lock are dropped first).
const MAX_TRACKED: usize = 10_000;

/// Recent login failures by user name.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, Failures>>,
}

struct Failures {
    count: u32,
    locked_until: Instant,
}

impl Backoff {
    /// How long `user`'s logins are still locked, if they are.
    pub fn locked(&self, user: &str) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let left = map
            .get(user)?
            .locked_until
            .checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// Records a failed login of `user`; returns how long their logins are now locked.
    pub fn failed(&self, user: &str) -> Duration {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(user) {
            map.retain(|_, f| f.locked_until > now);
            if map.len() >= MAX_TRACKED {
                // Under a flood of names, forget the oldest-locked half rather than grow.
                let mut ends: Vec<Instant> = map.values().map(|f| f.locked_until).collect();
                ends.sort();
                let cut = ends[ends.len() / 2];
                map.retain(|_, f| f.locked_until > cut);
            }
        }
        let f = map.entry(user.to_string()).or_insert(Failures {
            count: 0,
            locked_until: now,
        });
        f.count = f.count.saturating_add(1);
        let lock = lock_after(f.count);
        f.locked_until = now + lock;
        lock
    }

    /// Records a successful login of `user`.
    pub fn succeeded(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(user);
    }
}

/// A login attempt's keys in the backoff table: the user, and the client's address if known.
#[derive(Clone, Debug)]
pub struct Attempt {
    user: String,
    address: Option<String>,
}

impl Attempt {
    /// An attempt to log in as `user` from `peer`.
    pub fn new(user: &str, peer: Option<IpAddr>) -> Attempt {
        Attempt {
            user: user.to_string(),
            // A space cannot start a user name: no user's key is an address's. An IPv6
            // client counts by its /64 (a host rotating addresses in it stays one client).
            address: peer.map(|ip| format!(" addr {}", crate::conns::source(ip))),
        }
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.user.as_str()).chain(self.address.as_deref())
    }
}

impl Backoff {
    /// How long the attempt's user or address is still locked (the longer), if either is.
    pub fn attempt_locked(&self, a: &Attempt) -> Option<Duration> {
        a.keys().filter_map(|k| self.locked(k)).max()
    }

    /// Records a failed attempt against its user and its address; the longer lock now on.
    pub fn attempt_failed(&self, a: &Attempt) -> Duration {
        a.keys().map(|k| self.failed(k)).max().unwrap_or_default()
    }

    /// Records a successful attempt: clears its user's count (not its address's).
    pub fn attempt_succeeded(&self, a: &Attempt) {
        self.succeeded(&a.user);
    }
}

/// The lock after `count` consecutive failures.
fn lock_after(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (count - FREE_FAILURES - 1).min(16);
    Duration::from_secs(1u64 << exp).min(MAX_LOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_double_after_the_free_failures() {
        let got: Vec<u64> = (1..=14).map(|n| lock_after(n).as_secs()).collect();
        assert_eq!(got, [0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[test]
    fn per_user_and_cleared_by_success() {
        let b = Backoff::default();
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.failed("bob"), Duration::ZERO);
            assert!(b.locked("bob").is_none());
        }
        assert_eq!(b.failed("bob"), Duration::from_secs(1));
        assert!(b.locked("bob").is_some());
        assert!(b.locked("alice").is_none());
        b.succeeded("bob");
        assert!(b.locked("bob").is_none());
    }

    #[test]
    fn an_address_guessing_many_users_is_locked_and_a_success_does_not_clear_it() {
        let b = Backoff::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..=FREE_FAILURES {
            b.attempt_failed(&Attempt::new(&format!("u{i}"), Some(ip)));
        }
        let carol = Attempt::new("carol", Some(ip));
        assert!(b.attempt_locked(&carol).is_some());
        assert!(b.attempt_locked(&Attempt::new("carol", None)).is_none());
        b.attempt_succeeded(&carol);
        assert!(b.attempt_locked(&carol).is_some());
    }

    #[test]
    fn an_ipv6_64_is_one_address() {
        let b = Backoff::default();
        for i in 0..=FREE_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            b.attempt_failed(&Attempt::new(&format!("u{i}"), Some(ip)));
        }
        let same: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(b
            .attempt_locked(&Attempt::new("carol", Some(same)))
            .is_some());
        assert!(b
            .attempt_locked(&Attempt::new("carol", Some(other)))
            .is_none());
    }

    #[test]
    fn bounded_under_a_flood_of_names() {
        let b = Backoff::default();
        for i in 0..(MAX_TRACKED + 100) {
            b.failed(&format!("u{i}"));
        }
        assert!(b.failures.lock().unwrap().len() <= MAX_TRACKED);
    }
}
