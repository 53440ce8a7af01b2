//! Logins: slowing down repeated bad passwords per user (in memory, per node process).
//!
//! The first [`FREE_FAILURES`] failures of a user cost nothing extra (Argon2 already makes
//! each check take tens of milliseconds); after that each failure locks the user's logins for
//! twice as long as the one before, from 1 s up to [`MAX_LOCK`]. A success clears the count.
//! Attempts while locked are refused without checking the password (429).

use std::collections::HashMap;
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
    fn bounded_under_a_flood_of_names() {
        let b = Backoff::default();
        for i in 0..(MAX_TRACKED + 100) {
            b.failed(&format!("u{i}"));
        }
        assert!(b.failures.lock().unwrap().len() <= MAX_TRACKED);
    }
}
