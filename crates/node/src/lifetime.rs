//! Env lifetimes: a spawn's `--ttl` (a fixed deadline, kept in `DATA/envs/ID/lifetime.json`
//! so it survives a node restart and goes with the env's directory at boom) and the node's
//! `idle_timeout` (counted from the end of the env's last session, in memory: after a node
//! restart it counts from the restart, so an env is never ended early). A sweep every second
//! ends the envs whose time is up as their `on_expire` says: boomed, or saved as `ENV@TIME`
//! (a new name of the owner) and then boomed. The owner gets a notice either way; an env
//! whose save fails keeps running, with no deadline any more, and the notice says so.

use crate::envs;
use crate::Node;
use anyhow::{Context, Result};
use api::{Expire, Expiry, ExpiryCause};
use runtime::EnvState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the node keeps of an env's lifetime (`lifetime.json` in the env's directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// The ttl asked for at spawn, in seconds.
    #[serde(default)]
    pub ttl: Option<u64>,
    /// The ttl's deadline, seconds since the Unix epoch.
    #[serde(default)]
    pub deadline: Option<u64>,
    /// What ends the env (absent: the node's `on_expire`).
    #[serde(default)]
    pub on_expire: Option<Expire>,
    /// Set when saving at expiry failed: the env is left alone from then on.
    #[serde(default)]
    pub disarmed: bool,
}

impl Lifetime {
    /// The lifetime of an env spawned with `ttl` seconds and `on_expire`, from `now`.
    pub fn new(ttl: Option<u64>, on_expire: Option<Expire>, now: u64) -> Lifetime {
        Lifetime {
            ttl,
            deadline: ttl.map(|t| now.saturating_add(t)),
            on_expire,
            disarmed: false,
        }
    }
}

fn file(node: &Node, id: &str) -> Result<PathBuf> {
    Ok(node.rt.env_dir(id)?.join("lifetime.json"))
}

/// Writes env `id`'s lifetime (whole: [`library::atomic::replace`]).
pub fn record(node: &Node, id: &str, lifetime: &Lifetime) -> Result<()> {
    let path = file(node, id)?;
    library::atomic::replace(&path, &serde_json::to_vec(lifetime)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Env `id`'s lifetime (none recorded: no ttl, the node's `on_expire`).
pub fn load(node: &Node, id: &str) -> Lifetime {
    let read = file(node, id).and_then(|p| {
        let bytes = std::fs::read(&p)?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
    });
    match read {
        Ok(l) => l,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_none_or(|e| e.kind() != std::io::ErrorKind::NotFound)
            {
                tracing::warn!(env = %id, "reading the env's lifetime: {e:#}");
            }
            Lifetime::default()
        }
    }
}

/// When and how the node will end env `st` if nothing changes: the sooner of its ttl's
/// deadline and its idle deadline (while a session runs, the idle deadline is the timeout
/// from now, so it is never due).
pub fn expiry(node: &Node, st: &EnvState) -> Option<Expiry> {
    let lifetime = load(node, &st.name);
    if lifetime.disarmed {
        return None;
    }
    let then = lifetime.on_expire.unwrap_or(node.config.on_expire);
    let now = runtime::state::now();
    let ttl = lifetime.deadline.map(|at| (at, ExpiryCause::Ttl));
    let idle = node.config.idle_timeout_secs().map(|timeout| {
        let (busy, idle) = node.activity.state(&st.name, st.created);
        let since = if busy { now } else { now.saturating_sub(idle) };
        (since.saturating_add(timeout), ExpiryCause::Idle)
    });
    let (at, cause) = [ttl, idle]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)?;
    Some(Expiry { at, cause, then })
}

/// Runs [`sweep`] every second.
pub fn start_sweeping(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = node.clone();
            match tokio::task::spawn_blocking(move || sweep(&n)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("ending expired envs: {e:#}"),
                Err(e) => tracing::warn!("ending expired envs: {e}"),
            }
        }
    });
}

/// Ends every user env whose time is up (envs still spawning, invites' temporary envs and
/// envs made offline with `spawngrid env` are left alone).
pub fn sweep(node: &Node) -> Result<()> {
    let now = runtime::state::now();
    for st in runtime::state::list(&node.rt)? {
        let Some(env) = st.name.strip_suffix(&format!("+{}", st.owner)) else {
            continue;
        };
        if st.init_pid == 0 || st.owner.ends_with(crate::invite::OWNER_MARK) {
            continue;
        }
        if let Some(e) = expiry(node, &st).filter(|e| e.at <= now) {
            let env = env.to_string();
            expire(node, &st, &env, e);
        }
    }
    Ok(())
}

/// Ends `st` (the owner's env `env`) as `e` says, with a notice for its owner.
fn expire(node: &Node, st: &EnvState, env: &str, e: Expiry) {
    let why = match e.cause {
        ExpiryCause::Ttl => {
            let ttl = load(node, &st.name).ttl.unwrap_or(0);
            format!("its ttl ({}) ran out", span(ttl))
        }
        ExpiryCause::Idle => format!(
            "it was idle for {} (the node's idle timeout)",
            span(node.config.idle_timeout_secs().unwrap_or(0))
        ),
    };
    let saved = match e.then {
        Expire::Boom => None,
        Expire::Save => {
            let name = save_name(env, std::time::SystemTime::now());
            match envs::save(node, &st.owner, st, &name) {
                Ok(_) => Some(name),
                Err(err) => {
                    let disarmed = Lifetime {
                        disarmed: true,
                        ..load(node, &st.name)
                    };
                    if let Err(e) = record(node, &st.name, &disarmed) {
                        tracing::warn!(env = %st.name, "disarming the env's expiry: {e:#}");
                    }
                    notify(
                        node,
                        st,
                        &format!(
                            "env {env} expired ({why}) but saving it failed ({}): it was left \
                             running with no deadline; save what you need and boom it",
                            err.message
                        ),
                    );
                    return;
                }
            }
        }
    };
    if let Err(err) = envs::boom(node, st) {
        tracing::warn!(env = %st.name, "booming an expired env: {}", err.message);
        return;
    }
    let cause = match e.cause {
        ExpiryCause::Ttl => "ttl",
        ExpiryCause::Idle => "idle",
    };
    node.metrics
        .inc("spawngrid_expired_total", &[("cause", cause)]);
    tracing::info!(env = %st.name, cause, saved = ?saved, "expired");
    let message = match saved {
        Some(name) => format!("env {env} expired ({why}): saved as {name}, then boomed"),
        None => format!("env {env} expired ({why}) and was boomed; its names are intact"),
    };
    notify(node, st, &message);
}

fn notify(node: &Node, st: &EnvState, message: &str) {
    if let Err(e) = crate::notices::add(&node.rt.data, &st.owner, message) {
        tracing::warn!(env = %st.name, "recording a notice: {e:#}");
    }
}

/// The name an env is saved as when it expires: `ENV@20261206T010203Z`.
pub fn save_name(env: &str, at: std::time::SystemTime) -> String {
    format!("{env}@{}Z", stamp(at))
}

/// A time in names: `20261206T010203` (UTC; ISO 8601's basic format, which has no `:`, so
/// a name with it can also be an env's name).
pub fn stamp(at: std::time::SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text.trim_end_matches('Z').replace(['-', ':'], "")
}

/// A duration for messages: `90s`, `30m`, `2h 30m`.
pub fn span(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_names_follow_the_name_rule() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let name = save_name("web-1", at);
        assert_eq!(name, "web-1@20261130T005320Z");
        runtime::check_env_name(&name).unwrap();
    }

    #[test]
    fn a_ttl_sets_a_deadline() {
        let l = Lifetime::new(Some(60), None, 1000);
        assert_eq!((l.deadline, l.disarmed), (Some(1060), false));
        assert_eq!(Lifetime::new(None, Some(Expire::Save), 5).deadline, None);
        assert_eq!(span(5400), "1h 30m");
    }
}
