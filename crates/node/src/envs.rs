//! A user's envs on this node, over the runtime: spawn, list, save, boom (exec: [`crate::exec`]).
//!
//! Env identity is per user: the user's env `ENV` is the runtime env `ENV+USER` ([`env_id`]),
//! with hostname `ENV` inside. Every operation loads the env's recorded state and checks that
//! its owner is the caller; another user's env answers exactly as a missing one does (404).
//! These functions block (runtime calls, SQLite, Argon2-free but disk-bound): the server runs
//! them in `spawn_blocking`.

use crate::capacity::{self, Decision, Usage};
use crate::error::{Error, Kind};
use crate::Node;
use anyhow::Result;
use api::{Attach, EnvInfo, SaveResponse, SpawnRequest};
use library::Score;
use runtime::cgroup::Limits;
use runtime::{EnvState, SpawnOptions};
use std::time::Instant;

/// The runtime env id of `user`'s env `env`.
pub fn env_id(user: &str, env: &str) -> String {
    format!("{env}+{user}")
}

/// Checks a user-given name (env or snapshot name) with the catalog's rule; 400 if broken.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    catalog::check_name(name).map_err(|e| Error::invalid(format!("bad {what}: {e}")))?;
    Ok(())
}

/// The answer for an env the user does not have (missing, or someone else's).
fn no_env(env: &str) -> Error {
    Error::not_found(format!(
        "you have no env {env} on this node (list them with `spawngrid status`)"
    ))
}

/// Where in the grid `user`'s env `id` runs, if on another node than this one (an env name
/// is the user's across the grid, so attach commands and requests can name it anywhere).
fn elsewhere(node: &Node, id: &str) -> Result<Option<String>, Error> {
    Ok(node
        .cat
        .env_record(id)?
        .map(|r| r.node)
        .filter(|n| *n != node.name))
}

/// The answer for `user`'s env that runs on node `on` (when this node did not forward the
/// request: it is down, or the request came forwarded): where it runs, and how to reach it
/// there over the API and SSH.
fn runs_on(node: &Node, user: &str, env: &str, on: &str) -> Error {
    let message = match crate::registry::locate(node, on) {
        Ok(Some((n, up))) => {
            let host = n
                .address
                .rsplit_once(':')
                .map_or(n.address.as_str(), |(h, _)| h);
            let reach = format!(
                "`-h {}`, or `ssh -p {} {}@{host}`",
                n.address,
                n.ssh_port,
                env_id(user, env)
            );
            if up {
                format!("env {env} runs on node {on}: send this there ({reach})")
            } else {
                format!(
                    "env {env} runs on node {on} ({}), which is down: wait for it, or boom the \
                     env there once it is back ({reach})",
                    n.address
                )
            }
        }
        _ => format!("env {env} runs on node {on}: send this there (`-h {on}`)"),
    };
    Error::new(Kind::Misdirected, message)
}

/// The runtime id of `user`'s new env `env`, or why it cannot have that name (a bad name,
/// or an env of theirs has it, here or on another node).
pub fn free_env(node: &Node, user: &str, env: &str) -> Result<String, Error> {
    check_name("env name", env)?;
    let id = env_id(user, env);
    runtime::check_env_name(&id)
        .map_err(|e| Error::invalid(format!("{e:#} (choose another env name with --as)")))?;
    if node.rt.env_dir(&id)?.exists() {
        return Err(Error::conflict(format!(
            "you already have an env {env}: boom it, or choose another name with --as"
        )));
    }
    if let Some(on) = elsewhere(node, &id)? {
        return Err(Error::conflict(format!(
            "you already have an env {env} on node {on}: boom it there, or choose another \
             name with --as"
        )));
    }
    Ok(id)
}

/// Spawns `user`'s env from one of their names (or `OWNER/NAME` shared with them).
pub fn spawn(node: &Node, user: &str, req: &SpawnRequest) -> Result<EnvState, Error> {
    let name = crate::snapshots::check_address(user, &req.name)?;
    let env = req.as_env.as_deref().unwrap_or(name);
    let id = free_env(node, user, env)?;
    let rt = &node.rt;
    let began = Instant::now();
    let score = crate::snapshots::resolve(&node.cat, user, &req.name, false)?;
    let resolved = began.elapsed();
    let lower = crate::snapshots::mount_for(node, score)?;
    let mounted = began.elapsed();
    let mut opts = SpawnOptions::new(&id, user, &lower);
    opts.hostname = Some(env.to_string());
    opts.snapshot = Some(score);
    opts.lower_shifted = true;
    opts.disk = req.disk;
    opts.nat_allow = node.config.nat.allow.clone();
    opts.write_size = Some(node.config.write_layer_bytes(req.disk));
    opts.network = match req.net {
        api::Net::None => runtime::Network::None,
        api::Net::Nat => runtime::Network::Nat,
    };
    if let Some(egress) = &req.egress {
        if req.net != api::Net::Nat {
            return Err(Error::invalid(
                "an egress policy needs a network: spawn with --net nat",
            ));
        }
        opts.egress = crate::egress::rules(egress)?;
    }
    if req.ttl == Some(0) {
        return Err(Error::invalid("ttl must be at least 1 second"));
    }
    let memory = req.mem.unwrap_or_else(|| node.config.default_mem_bytes());
    if memory < api::MIN_MEM {
        return Err(Error::invalid(format!(
            "mem {memory} is too small: an env needs at least {} (16M)",
            api::MIN_MEM
        )));
    }
    if let Some(cpus) = req.cpus {
        runtime::cgroup::check_cpus(cpus).map_err(Error::invalid)?;
    }
    opts.limits = Limits {
        memory,
        cpus: req.cpus,
        ..Limits::default()
    };
    if req.disk {
        check_disk_room(node, opts.write_size.unwrap_or(runtime::spawn::DISK_SIZE))?;
    }
    // Recorded while the env is made (a catalog write is a commit, milliseconds on
    // PostgreSQL): the row says what the env will be; the spawn's outcome decides whether it
    // stays.
    let record = catalog::EnvRecord {
        id: id.clone(),
        owner: user.to_string(),
        env: env.to_string(),
        node: node.name.clone(),
        name: Some(req.name.clone()),
        snapshot: Some(score.to_hex()),
        created: runtime::state::now() as i64,
    };
    let start = Instant::now();
    let (result, recorded) = spawn_admitted(node, user, &opts, || node.cat.record_env(&record))?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    tracing::info!(
        "spawning {id} from {}: name {:.1} ms, mount {:.1} ms, env {:.1} ms",
        score.short(),
        ms(resolved),
        ms(mounted - resolved),
        ms(start.elapsed())
    );
    let outcome = if result.is_ok() { "ok" } else { "error" };
    node.metrics
        .inc("spawngrid_spawns_total", &[("result", outcome)]);
    if result.is_ok() {
        node.metrics
            .observe("spawngrid_spawn_seconds", &[], start.elapsed());
    }
    let st = match result {
        Ok(st) => st,
        Err(e) => {
            if recorded.is_ok() {
                forget(node, &id);
            }
            return Err(Error::internal(&e.context(format!("spawning {env}"))));
        }
    };
    let kept = recorded
        .map_err(anyhow::Error::new)
        .and_then(|()| keep_lifetime(node, &st, req));
    if let Err(e) = kept {
        // Not half-done: an env the catalog does not know, or whose deadline could not be
        // kept, is boomed again (forgetting only this node's record: the id may be another
        // node's, which spawned the env of that name first).
        let _ = runtime::boom::boom(rt, &st.name);
        forget(node, &st.name);
        if let Some(elsewhere @ catalog::Error::EnvElsewhere { .. }) = e.downcast_ref() {
            return Err(Error::conflict(elsewhere.to_string()));
        }
        return Err(Error::internal(&e.context(format!("recording env {env}"))));
    }
    Ok(st)
}

/// Refuses a `--disk` spawn whose image (`size` bytes, sparse) the filesystem of the node's
/// env directories could not hold as it fills.
fn check_disk_room(node: &Node, size: u64) -> Result<(), Error> {
    let envs = node.rt.data.join("envs");
    let at = if envs.exists() {
        envs
    } else {
        node.rt.data.clone()
    };
    let s = rustix::fs::statvfs(&at)
        .map_err(|e| Error::internal(&anyhow::anyhow!("statvfs {}: {e}", at.display())))?;
    let free = s.f_bavail.saturating_mul(s.f_frsize);
    if free < size {
        return Err(Error::new(
            Kind::Unavailable,
            format!(
                "the node's disk has {} free, less than the {} an env's --disk write layer \
                 needs: spawn without --disk, or ask the node's admin for room",
                human::size(free),
                human::size(size)
            ),
        ));
    }
    Ok(())
}

/// Records the ttl and `on_expire` a spawn asked for (nothing when it asked for neither).
fn keep_lifetime(node: &Node, st: &EnvState, req: &SpawnRequest) -> Result<()> {
    if req.ttl.is_none() && req.on_expire.is_none() {
        return Ok(());
    }
    let lifetime = crate::lifetime::Lifetime::new(req.ttl, req.on_expire, st.created);
    crate::lifetime::record(node, &st.name, &lifetime)
}

/// Spawns `opts` for `user` once the capacity policy admits it (evicting envs if it says so,
/// or refusing): deciding, evicting and spawning under one lock, so two spawns never take one
/// free slot. A spawn of an env that exists or is being spawned is refused under that lock
/// too, so `beside`, run on a thread of its own while the env is made, runs for one spawn of
/// an env at a time. The outer error is the refusal; the inner one the runtime's; with
/// `beside`'s result.
pub fn spawn_admitted<R: Send>(
    node: &Node,
    user: &str,
    opts: &SpawnOptions,
    beside: impl FnOnce() -> R + Send,
) -> Result<(anyhow::Result<EnvState>, R), Error> {
    let held = node.admission.lock();
    if held.iter().any(|p| p.id == opts.name) || node.rt.env_dir(&opts.name)?.exists() {
        let env = opts
            .name
            .strip_suffix(&format!("+{user}"))
            .unwrap_or(&opts.name);
        return Err(Error::conflict(format!(
            "you already have an env {env}: boom it, or choose another name with --as"
        )));
    }
    make_room(node, user, opts.limits.memory, &held)?;
    let pending = crate::admission::Pending {
        id: opts.name.clone(),
        owner: user.to_string(),
        mem: opts.limits.memory,
        snapshot: opts.snapshot,
    };
    // Made outside the lock: other spawns are decided and made meanwhile.
    let _ticket = node.admission.admit(held, pending);
    Ok(std::thread::scope(|s| {
        let beside = s.spawn(beside);
        let made = runtime::spawn::spawn(&node.rt, opts).map_err(Into::into);
        let beside = beside
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (made, beside)
    }))
}

/// Admits one more env of `user` reserving `mem` bytes, evicting envs if the capacity
/// policy says so (each evicted owner gets a notice), or refuses with 503. An invite's
/// temporary env counts as its inviter's; spawns admitted and still being made (`pending`)
/// count too.
fn make_room(
    node: &Node,
    user: &str,
    mem: u64,
    pending: &[crate::admission::Pending],
) -> Result<(), Error> {
    let envs = runtime::state::list(&node.rt)?;
    let usage: Vec<Usage> = envs
        .iter()
        .map(|st| {
            let (busy, idle) = node.activity.state(&st.name, st.created);
            Usage {
                id: st.name.clone(),
                owner: st
                    .owner
                    .strip_suffix(crate::invite::OWNER_MARK)
                    .unwrap_or(&st.owner)
                    .to_string(),
                mem: memory_limit(st).unwrap_or(0),
                idle,
                busy,
            }
        })
        .collect();
    let usage = crate::admission::with_pending(usage, pending);
    match capacity::decide(&node.limits, &usage, user, mem) {
        Decision::Full(why) => Err(Error::new(Kind::Unavailable, why)),
        Decision::OverLimit(why) => Err(Error::conflict(why)),
        Decision::TooBig(why) => Err(Error::invalid(why)),
        Decision::Admit(evict) => {
            for id in evict {
                let Some(st) = envs.iter().find(|st| st.name == id) else {
                    continue;
                };
                let idle = usage.iter().find(|u| u.id == id).map_or(0, |u| u.idle);
                runtime::boom::boom(&node.rt, &id).map_err(|e| {
                    Error::internal(&anyhow::Error::new(e).context(format!("evicting {id}")))
                })?;
                forget(node, &id);
                node.metrics.inc("spawngrid_evictions_total", &[]);
                let message = format!(
                    "env {} was evicted (boomed) after {} idle to make room for another user's \
                     spawn on a full node; its names are intact: spawn it again",
                    user_env_name(st, &st.owner),
                    human::age(idle)
                );
                tracing::info!(env = %id, owner = %st.owner, for_user = %user, "evicted");
                if let Err(e) = crate::notices::add(&node.rt.data, &st.owner, &message) {
                    tracing::warn!("recording the eviction of {id}: {e:#}");
                }
            }
            Ok(())
        }
    }
}

/// Forgets a boomed env: its activity and its catalog record (a record left behind is
/// dropped at the next start, so a failure here is only logged).
fn forget(node: &Node, id: &str) {
    node.activity.forget(id);
    if let Err(e) = node.cat.forget_env(&node.name, id) {
        tracing::warn!(env = %id, "forgetting the env in the catalog: {e}");
    }
}

/// Makes the catalog's envs of this node match the envs the runtime has: records of envs
/// that are gone are dropped (boomed while the node was down), users' envs without a record
/// are recorded (spawned by an older node). Run at start.
pub fn reconcile(node: &Node) -> Result<()> {
    let live = runtime::state::list(&node.rt)?;
    for r in node.cat.envs_on(Some(&node.name))? {
        if !live.iter().any(|st| st.name == r.id) {
            node.cat.forget_env(&node.name, &r.id)?;
        }
    }
    for st in &live {
        let Some(env) = st.name.strip_suffix(&format!("+{}", st.owner)) else {
            continue;
        };
        if node.cat.env_record(&st.name)?.is_none() && catalog::check_name(env).is_ok() {
            node.cat.record_env(&catalog::EnvRecord {
                id: st.name.clone(),
                owner: st.owner.clone(),
                env: env.to_string(),
                node: node.name.clone(),
                name: None,
                snapshot: st.snapshot.clone(),
                created: st.created as i64,
            })?;
        }
    }
    Ok(())
}

/// `user`'s env `env`, or 404 (also for another user's env).
pub fn load_own(node: &Node, user: &str, env: &str) -> Result<EnvState, Error> {
    check_name("env name", env)?;
    let id = env_id(user, env);
    if runtime::check_env_name(&id).is_err() {
        return Err(no_env(env));
    }
    match runtime::state::load(&node.rt, &id) {
        Ok(st) if st.owner == user => Ok(st),
        _ => match elsewhere(node, &id)? {
            Some(on) => Err(runs_on(node, user, env, &on)),
            None => Err(no_env(env)),
        },
    }
}

/// The user's name of an env (its id without `+USER`).
pub fn user_env_name<'a>(st: &'a EnvState, user: &str) -> &'a str {
    st.name
        .strip_suffix(user)
        .and_then(|s| s.strip_suffix('+'))
        .unwrap_or(&st.name)
}

/// `user`'s envs on this node, sorted by name.
pub fn list(node: &Node, user: &str, host: &str) -> Result<Vec<EnvInfo>, Error> {
    let envs = runtime::state::list(&node.rt)?;
    Ok(envs
        .iter()
        .filter(|st| st.owner == user && st.name.ends_with(&format!("+{user}")))
        .map(|st| info(node, st, user, host))
        .collect())
}

/// What the API shows of an env.
pub fn info(node: &Node, st: &EnvState, user: &str, host: &str) -> EnvInfo {
    let env = user_env_name(st, user);
    // The name it was spawned from as the user addressed it (the catalog's record), else one
    // of the user's names for its snapshot (an env the node found at start).
    let recorded = node.cat.env_record(&st.name).ok().flatten();
    let from = recorded.and_then(|r| r.name).or_else(|| {
        let score: Score = st.snapshot.as_deref()?.parse().ok()?;
        let names = node.cat.names_of(&score).ok()?;
        names.into_iter().find(|(o, _)| o == user).map(|(_, n)| n)
    });
    let exposures = crate::exposures::of_env(node, st, env, host);
    described(node, st, user, host, from, exposures)
}

/// What the API shows of an env just spawned from `from`: as [`info`], without asking the
/// catalog what the spawn knows (its name; no exposures yet). The answer to a spawn.
pub fn info_spawned(node: &Node, st: &EnvState, user: &str, host: &str, from: &str) -> EnvInfo {
    described(node, st, user, host, Some(from.to_string()), Vec::new())
}

/// [`info`] of `st`, spawned from `from`, with `exposures`.
fn described(
    node: &Node,
    st: &EnvState,
    user: &str,
    host: &str,
    from: Option<String>,
    exposures: Vec<api::Exposure>,
) -> EnvInfo {
    let env = user_env_name(st, user).to_string();
    let running = st.alive();
    let now = runtime::state::now();
    EnvInfo {
        exposures,
        attach: Attach {
            ssh: format!("ssh -p {} {}@{host}", node.config.ssh_port, st.name),
            cpu: format!("spawngrid cpu {env}"),
        },
        env,
        node: node.name.clone(),
        from,
        snapshot: st.snapshot.clone(),
        running,
        disk: st.disk,
        created: st.created,
        age: now.saturating_sub(st.created),
        memory: if running { memory_used(st) } else { None },
        write_used: if running {
            write_used(&node.rt, st)
        } else {
            None
        },
        write_size: st.write_size,
        node_up: true,
        expiry: if running {
            crate::lifetime::expiry(node, st)
        } else {
            None
        },
        net: match st.network {
            runtime::Network::None => api::Net::None,
            runtime::Network::Nat => api::Net::Nat,
        },
        egress: st.nat.is_some().then(|| crate::egress::to_api(&st.egress)),
    }
}

/// Memory charged to the env's cgroup: `memory.current` (v2) or `memory.usage_in_bytes` (v1).
fn memory_used(st: &EnvState) -> Option<u64> {
    cgroup_number(st, &["memory.current", "memory.usage_in_bytes"])
}

/// The env's memory limit: `memory.max` (v2) or `memory.limit_in_bytes` (v1).
pub fn memory_limit(st: &EnvState) -> Option<u64> {
    cgroup_number(st, &["memory.max", "memory.limit_in_bytes"])
}

/// The env's cpu limit (its CFS quota over its period), if it has one.
pub fn cpu_limit(st: &EnvState) -> Option<f64> {
    let quota = |dir: &std::path::Path| -> Option<f64> {
        // v2: `cpu.max` is "QUOTA PERIOD" or "max PERIOD"; v1: the two files, -1 for none.
        let (q, p) = match std::fs::read_to_string(dir.join("cpu.max")) {
            Ok(max) => {
                let (q, p) = max.trim().split_once(' ')?;
                (q.to_string(), p.to_string())
            }
            Err(_) => (
                std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?,
                std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?,
            ),
        };
        let (q, p): (f64, f64) = (q.trim().parse().ok()?, p.trim().parse().ok()?);
        (q > 0.0 && p > 0.0).then_some(q / p)
    };
    st.cgroups.iter().find_map(|dir| quota(dir))
}

/// The first of `files` found in the env's cgroup directories, as a number.
fn cgroup_number(st: &EnvState, files: &[&str]) -> Option<u64> {
    st.cgroups.iter().find_map(|dir| {
        files
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .and_then(|s| s.trim().parse().ok())
    })
}

/// Bytes used in the env's write layer (the tmpfs or ext4 mounted at `DATA/envs/ID/rw`).
fn write_used(rt: &runtime::Runtime, st: &EnvState) -> Option<u64> {
    let rw = rt.env_dir(&st.name).ok()?.join("rw");
    if !st.mounts.iter().any(|m| m == &rw) {
        return None;
    }
    let s = rustix::fs::statvfs(&rw).ok()?;
    Some(
        s.f_blocks
            .saturating_sub(s.f_bfree)
            .saturating_mul(s.f_frsize),
    )
}

/// When env `st`'s write layer is full (less than 1 MiB, or 1 %, left): what that means and
/// how to get a bigger one, for the answer to a command that failed (most likely of ENOSPC).
pub fn full_write_layer(rt: &runtime::Runtime, st: &EnvState) -> Option<String> {
    let rw = rt.env_dir(&st.name).ok()?.join("rw");
    let s = rustix::fs::statvfs(&rw).ok()?;
    let free = s.f_bavail.saturating_mul(s.f_frsize);
    if free >= (st.write_size / 100).max(1 << 20) {
        return None;
    }
    let size = human::size(st.write_size);
    Some(if st.disk {
        format!(
            "the env's write layer is full ({size} on disk, the node's disk_size): remove \
             files, or ask the node's admin for a bigger disk_size"
        )
    } else {
        format!(
            "the env's write layer is full ({size} of RAM): spawn with --disk for a bigger \
             one on disk (to keep this env's files: `spawngrid save ENV NEW`, then \
             `spawngrid spawn NEW --disk`)"
        )
    })
}

/// Saves `user`'s env as their new name `name`.
pub fn save(node: &Node, user: &str, st: &EnvState, name: &str) -> Result<SaveResponse, Error> {
    check_name("name", name)?;
    if node.cat.resolve(user, name).is_ok() {
        return Err(Error::conflict(format!(
            "you already have a name {name} (names are bound once, forever): choose another"
        )));
    }
    if !st.alive() {
        return Err(Error::conflict(format!(
            "env {} is not running: boom it",
            user_env_name(st, user)
        )));
    }
    crate::quota::admit(node, user, name, None)?;
    let lib = node.store.library()?;
    let start = Instant::now();
    let _busy = node.activity.session(&st.name);
    // Past the bytes quota, the name is not bound (what was written is garbage for gc).
    let mut refused = None;
    let saved = runtime::save::save(&node.rt, &st.name, &lib).map_err(anyhow::Error::from);
    let imported = saved.and_then(|saved| {
        let score = saved.imported.score;
        if let Err(e) = crate::quota::admit(node, user, name, Some(&score)) {
            refused = Some(e);
            return Ok(None);
        }
        library::faults::point(library::faults::BEFORE_BIND);
        store::bind_written(&node.cat, &lib, &saved.lease, user, name, score)?;
        Ok(Some(saved.imported))
    });
    let outcome = if matches!(imported, Ok(Some(_))) {
        "ok"
    } else {
        "error"
    };
    node.metrics
        .inc("spawngrid_saves_total", &[("result", outcome)]);
    let imported = imported.map_err(|e| {
        let what = "the save bound nothing and the env runs on";
        crate::error::disk_full(&e, what).unwrap_or_else(|| e.into())
    })?;
    let Some(imported) = imported else {
        return Err(refused.unwrap_or_else(|| Error::internal(&anyhow::anyhow!("save refused"))));
    };
    node.metrics
        .observe("spawngrid_save_seconds", &[], start.elapsed());
    Ok(SaveResponse {
        env: user_env_name(st, user).to_string(),
        name: name.to_string(),
        score: imported.score.to_hex(),
        seconds: start.elapsed().as_secs_f64(),
        warnings: imported.warnings.iter().map(|w| w.to_string()).collect(),
    })
}

/// Booms `user`'s env.
pub fn boom(node: &Node, st: &EnvState) -> Result<(), Error> {
    runtime::boom::boom(&node.rt, &st.name)?;
    forget(node, &st.name);
    node.metrics.inc("spawngrid_booms_total", &[]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_join_env_and_user() {
        assert_eq!(env_id("alice", "base"), "base+alice");
        runtime::check_env_name(&env_id("alice", "base")).unwrap();
    }
}
