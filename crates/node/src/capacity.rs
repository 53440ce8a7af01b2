//! Node capacity: how many envs and how much memory the node and each user may have, and
//! what a spawn does when the node is full — refuse with a clear message, or evict the
//! longest-idle env of the user most over their fair share (`[capacity]` in the config).
//!
//! Memory is counted by reservation: an env counts for its memory limit (what it may use),
//! not for what it uses now, so admitting an env never overcommits the node. Activity: an env
//! is active while a session (exec, cpu, SSH) runs in it ([`Activity::session`]); its idle time
//! counts from the end of its last session, or from its spawn.

use anyhow::{bail, Result};
use human::{parse_size, size as human};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a spawn does when the node is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Refuse the spawn with a message saying what is full.
    #[default]
    Refuse,
    /// Boom the longest-idle env of the user most over their fair share, then spawn.
    Evict,
}

/// The `[capacity]` table of the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Most envs on the node.
    pub max_envs: usize,
    /// Most memory reserved by the node's envs (a size; default: the host's RAM).
    pub max_mem: Option<String>,
    /// Most envs one user may have on the node.
    pub user_max_envs: Option<usize>,
    /// Most memory one user's envs may reserve (a size).
    pub user_max_mem: Option<String>,
    /// What a spawn does when the node is full.
    pub policy: Policy,
}

impl Default for CapacityConfig {
    fn default() -> CapacityConfig {
        CapacityConfig {
            max_envs: 512,
            max_mem: None,
            user_max_envs: None,
            user_max_mem: None,
            policy: Policy::Refuse,
        }
    }
}

/// The limits in force, sizes parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most envs on the node.
    pub max_envs: usize,
    /// Most memory reserved on the node, in bytes.
    pub max_mem: u64,
    /// Most envs per user.
    pub user_max_envs: usize,
    /// Most memory per user, in bytes.
    pub user_max_mem: u64,
    /// What a full node does.
    pub policy: Policy,
}

impl CapacityConfig {
    /// Parses the sizes; `host_mem` is the default for `max_mem`.
    pub fn limits(&self, host_mem: u64) -> Result<Limits> {
        let size = |s: &Option<String>, what: &str| -> Result<Option<u64>> {
            s.as_deref()
                .map(|s| parse_size(s).map_err(|e| anyhow::anyhow!("capacity.{what}: {e:#}")))
                .transpose()
        };
        if self.max_envs == 0 {
            bail!("capacity.max_envs must be at least 1");
        }
        Ok(Limits {
            max_envs: self.max_envs,
            max_mem: size(&self.max_mem, "max_mem")?.unwrap_or(host_mem),
            user_max_envs: self.user_max_envs.unwrap_or(usize::MAX),
            user_max_mem: size(&self.user_max_mem, "user_max_mem")?.unwrap_or(u64::MAX),
            policy: self.policy,
        })
    }
}

/// One env as the admission decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Runtime env id (`ENV+USER`).
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// Its memory limit in bytes.
    pub mem: u64,
    /// Seconds since its last activity.
    pub idle: u64,
    /// Whether a session runs in it now (never evicted).
    pub busy: bool,
}

/// The outcome of asking for room for one more env.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Spawn; first boom these envs (ids), in order.
    Admit(Vec<String>),
    /// Do not spawn, the node is full now (try later): the one-line reason.
    Full(String),
    /// Do not spawn, the user is at their own limit: the one-line reason.
    OverLimit(String),
    /// Do not spawn, no node of this size could take it: the one-line reason.
    TooBig(String),
}

/// Decides whether `user` may spawn an env reserving `mem` bytes on a node running `envs`.
pub fn decide(limits: &Limits, envs: &[Usage], user: &str, mem: u64) -> Decision {
    let mine: Vec<&Usage> = envs.iter().filter(|u| u.owner == user).collect();
    if mine.len() >= limits.user_max_envs {
        return Decision::OverLimit(format!(
            "you have {} envs, the most a user may have on this node: boom one first",
            mine.len()
        ));
    }
    let my_mem: u64 = mine.iter().map(|u| u.mem).sum();
    if my_mem.saturating_add(mem) > limits.user_max_mem {
        return Decision::OverLimit(format!(
            "your envs reserve {} and this one needs {}: over your limit of {} on this node; \
             boom an env or spawn with a smaller --mem",
            human(my_mem),
            human(mem),
            human(limits.user_max_mem)
        ));
    }
    if mem > limits.max_mem {
        return Decision::TooBig(format!(
            "this env needs {} of memory, more than the node's {}: spawn with a smaller --mem",
            human(mem),
            human(limits.max_mem)
        ));
    }
    let mut live: Vec<Usage> = envs.to_vec();
    let mut evict = Vec::new();
    loop {
        let used: u64 = live.iter().map(|u| u.mem).sum();
        let fits = live.len() < limits.max_envs && used.saturating_add(mem) <= limits.max_mem;
        if fits {
            return Decision::Admit(evict);
        }
        let full = format!(
            "node full: {} envs of at most {}, {} of {} memory reserved",
            live.len(),
            limits.max_envs,
            human(used),
            human(limits.max_mem)
        );
        if limits.policy == Policy::Refuse {
            return Decision::Full(format!("{full}; try again later or boom an env"));
        }
        match victim(limits, &live, user, mem) {
            Ok(i) => evict.push(live.remove(i).id),
            Err(why) => return Decision::Full(format!("{full}; {why}")),
        }
    }
}

/// The index in `live` of the env to evict: the longest-idle idle env of the user most over
/// their fair share (counting the env being asked for), unless that user is the asker.
fn victim(limits: &Limits, live: &[Usage], user: &str, mem: u64) -> Result<usize, String> {
    let mut per_user: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for u in live {
        let e = per_user.entry(&u.owner).or_default();
        e.0 += 1;
        e.1 += u.mem;
    }
    let asker = per_user.entry(user).or_default();
    asker.0 += 1;
    asker.1 += mem;
    let users = per_user.len() as f64;
    let share_envs = limits.max_envs as f64 / users;
    let share_mem = limits.max_mem as f64 / users;
    let load = |&(n, m): &(usize, u64)| (n as f64 / share_envs).max(m as f64 / share_mem);
    let (worst, worst_load) = per_user
        .iter()
        .map(|(name, use_)| (*name, load(use_)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("the asker is always counted");
    if worst_load <= 1.0 {
        return Err("no user is over their fair share: try again later".into());
    }
    if worst == user {
        return Err("you are over your fair share of it: boom one of your envs first".into());
    }
    live.iter()
        .enumerate()
        .filter(|(_, u)| u.owner == worst && !u.busy)
        .max_by_key(|(_, u)| u.idle)
        .map(|(i, _)| i)
        .ok_or_else(|| {
            format!("{worst} is over their fair share but every env of theirs is in use: try again later")
        })
}

/// Sessions running in each env and when each env was last active (in memory: after a daemon
/// restart, idle time counts from the restart, or from the spawn if later).
///
/// An env's name is reused: boomed, it may be spawned again under the same name while a
/// session of the old env still ends (an `ssh -R` tunnel noticing the boom). So each name's
/// count is one instance's: [`Activity::forget`] (after a boom) ends the instance, and a
/// session of an earlier instance ends without touching the count of the next.
#[derive(Debug)]
pub struct Activity {
    inner: Mutex<Instances>,
    started: u64,
}

/// Each env's current instance, and the number the next one gets.
#[derive(Debug, Default)]
struct Instances {
    envs: HashMap<String, Instance>,
    next: u64,
}

/// One instance of an env: its number, sessions running in it, and when the last one ended.
#[derive(Debug, Clone, Copy)]
struct Instance {
    number: u64,
    sessions: usize,
    last: u64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            inner: Mutex::default(),
            started: now(),
        }
    }
}

/// A session in progress: the env is busy until this is dropped (it may move into a task).
#[must_use = "the env counts as busy only while the guard lives"]
pub struct Session {
    activity: Arc<Activity>,
    id: String,
    /// The env instance it runs in.
    instance: u64,
}

impl Activity {
    /// Marks env `id` busy until the returned guard is dropped.
    pub fn session(self: &Arc<Self>, id: &str) -> Session {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Instances { envs, next } = &mut *m;
        let e = envs.entry(id.to_string()).or_insert_with(|| {
            *next += 1;
            Instance {
                number: *next,
                sessions: 0,
                last: 0,
            }
        });
        e.sessions += 1;
        Session {
            activity: self.clone(),
            id: id.to_string(),
            instance: e.number,
        }
    }

    /// Whether env `id` has a session now, and its idle seconds (`created`: its spawn time).
    pub fn state(&self, id: &str, created: u64) -> (bool, u64) {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (sessions, last) = m.envs.get(id).map_or((0, 0), |e| (e.sessions, e.last));
        let since = last.max(created).max(self.started);
        (sessions > 0, now().saturating_sub(since))
    }

    /// Forgets env `id` (after a boom): its sessions still running no longer count.
    pub fn forget(&self, id: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.envs.remove(id);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut m = self
            .activity
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m
            .envs
            .get_mut(&self.id)
            .filter(|e| e.number == self.instance)
        {
            e.sessions = e.sessions.saturating_sub(1);
            e.last = now();
        }
    }
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn limits(max_envs: usize, max_mem: u64, policy: Policy) -> Limits {
        Limits {
            max_envs,
            max_mem,
            user_max_envs: usize::MAX,
            user_max_mem: u64::MAX,
            policy,
        }
    }

    fn env(id: &str, owner: &str, idle: u64) -> Usage {
        Usage {
            id: id.into(),
            owner: owner.into(),
            mem: 100 * M,
            idle,
            busy: false,
        }
    }

    #[test]
    fn room_admits_without_evicting() {
        let l = limits(3, 1000 * M, Policy::Evict);
        let envs = [env("a+alice", "alice", 5)];
        assert_eq!(decide(&l, &envs, "bob", 100 * M), Decision::Admit(vec![]));
    }

    #[test]
    fn full_node_refuses_by_policy_with_the_numbers() {
        let l = limits(2, 1000 * M, Policy::Refuse);
        let envs = [env("a+alice", "alice", 5), env("b+alice", "alice", 9)];
        match decide(&l, &envs, "bob", 100 * M) {
            Decision::Full(m) => assert!(m.contains("node full: 2 envs of at most 2"), "{m}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn evicts_the_longest_idle_env_of_the_user_most_over_share() {
        let l = limits(4, 10_000 * M, Policy::Evict);
        let envs = [
            env("a+alice", "alice", 5),
            env("b+alice", "alice", 50),
            env("c+alice", "alice", 7),
            env("a+carol", "carol", 500),
        ];
        // Three users share 4 slots: alice (3) is over, carol (1) is not.
        assert_eq!(
            decide(&l, &envs, "bob", 100 * M),
            Decision::Admit(vec!["b+alice".into()])
        );
    }

    #[test]
    fn memory_can_need_several_evictions_and_busy_envs_stay() {
        let l = limits(100, 400 * M, Policy::Evict);
        let mut envs = vec![
            env("a+alice", "alice", 5),
            env("b+alice", "alice", 50),
            env("c+alice", "alice", 70),
            env("d+alice", "alice", 1),
        ];
        envs[2].busy = true;
        assert_eq!(
            decide(&l, &envs, "bob", 200 * M),
            Decision::Admit(vec!["b+alice".into(), "a+alice".into()])
        );
    }

    #[test]
    fn the_asker_over_share_is_refused_not_served_by_evicting_others() {
        let l = limits(2, 10_000 * M, Policy::Evict);
        let envs = [env("a+alice", "alice", 5), env("a+bob", "bob", 50)];
        match decide(&l, &envs, "alice", 100 * M) {
            Decision::Full(m) => assert!(m.contains("you are over your fair share"), "{m}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn per_user_limits_refuse_whatever_the_policy() {
        let mut l = limits(100, 10_000 * M, Policy::Evict);
        l.user_max_envs = 1;
        let envs = [env("a+alice", "alice", 5)];
        assert!(
            matches!(decide(&l, &envs, "alice", M), Decision::OverLimit(m) if m.contains("you have 1 envs"))
        );
        assert_eq!(decide(&l, &envs, "bob", M), Decision::Admit(vec![]));
        assert!(matches!(
            decide(&l, &[], "bob", 20_000 * M),
            Decision::TooBig(_)
        ));
        l.user_max_envs = 10;
        l.user_max_mem = 150 * M;
        assert!(
            matches!(decide(&l, &envs, "alice", 100 * M), Decision::OverLimit(m) if m.contains("over your limit of 150M"))
        );
    }

    #[test]
    fn config_sizes_parse_and_default_to_host_memory() {
        let c = CapacityConfig::default();
        let l = c.limits(24 << 30).unwrap();
        assert_eq!(
            (l.max_envs, l.max_mem, l.policy),
            (512, 24 << 30, Policy::Refuse)
        );
        let c = CapacityConfig {
            max_mem: Some("2G".into()),
            user_max_mem: Some("x".into()),
            ..CapacityConfig::default()
        };
        assert!(c
            .limits(1)
            .unwrap_err()
            .to_string()
            .contains("user_max_mem"));
    }

    #[test]
    fn sessions_make_an_env_busy_and_reset_its_idle_time() {
        let a = Arc::new(Activity::default());
        let (busy, _) = a.state("x", 0);
        assert!(!busy);
        {
            let _s = a.session("x");
            let _t = a.session("x");
            assert!(a.state("x", 0).0);
        }
        let (busy, idle) = a.state("x", 0);
        assert!(!busy && idle <= 1);
    }

    #[test]
    fn a_boomed_envs_sessions_leave_the_next_env_of_its_name_alone() {
        let a = Arc::new(Activity::default());
        let old = a.session("x");
        a.forget("x");
        let new = a.session("x");
        drop(old);
        assert!(a.state("x", 0).0, "the new env's session no longer counted");
        drop(new);
        assert!(!a.state("x", 0).0);
    }
}
