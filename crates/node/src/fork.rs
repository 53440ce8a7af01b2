//! `spawngrid fork ENV --count N --as PREFIX`: one save of a running env, bound to the new name
//! PREFIX, then N copies spawned from it as envs `PREFIX-1` … `PREFIX-N` (what agents
//! branching need: N spawns and one save, whatever N). The copies get the source env's write
//! layer kind, memory limit and network. All or nothing for the envs: the copies' names are
//! checked before the save, and a copy that cannot be spawned (a full node, a user limit)
//! booms the copies spawned before it; the save stays bound (names are forever) and the
//! error names it.

use crate::envs;
use crate::error::Error;
use crate::Node;
use api::{ForkRequest, ForkResponse, SpawnRequest, MAX_FORK};
use runtime::EnvState;
use std::time::Instant;

/// Forks `user`'s running env `st` as `req` asks; `host` is the name attach commands use.
pub fn fork(
    node: &Node,
    user: &str,
    st: &EnvState,
    req: &ForkRequest,
    host: &str,
) -> Result<ForkResponse, Error> {
    let start = Instant::now();
    let env = envs::user_env_name(st, user).to_string();
    if !(1..=MAX_FORK).contains(&req.count) {
        return Err(Error::invalid(format!(
            "count {} is out of range: fork makes 1 to {MAX_FORK} copies",
            req.count
        )));
    }
    let prefix = req.prefix.clone().unwrap_or_else(|| {
        format!(
            "{env}-{}",
            crate::lifetime::stamp(std::time::SystemTime::now())
        )
    });
    let copies: Vec<String> = (1..=req.count).map(|i| format!("{prefix}-{i}")).collect();
    for copy in &copies {
        envs::free_env(node, user, copy)?;
    }
    let save = envs::save(node, user, st, &prefix)?;
    let spawn = SpawnRequest {
        name: prefix.clone(),
        disk: st.disk,
        mem: envs::memory_limit(st),
        cpus: envs::cpu_limit(st),
        net: match st.network {
            runtime::Network::None => api::Net::None,
            runtime::Network::Nat => api::Net::Nat,
        },
        // The copies are held to the env's policy as it is now.
        egress: st.nat.is_some().then(|| crate::egress::to_api(&st.egress)),
        ..SpawnRequest::default()
    };
    let mut spawned: Vec<EnvState> = Vec::new();
    for copy in &copies {
        let req = SpawnRequest {
            as_env: Some(copy.clone()),
            ..spawn.clone()
        };
        match envs::spawn(node, user, &req) {
            Ok(s) => spawned.push(s),
            Err(e) => {
                let undone = undo(node, user, &spawned);
                return Err(Error::new(
                    e.kind,
                    format!(
                        "fork of {env}: copy {copy} failed ({}); {undone}; the save is kept as \
                         {prefix} (spawn copies of it with `spawngrid spawn {prefix} --as ENV`)",
                        e.message
                    ),
                ));
            }
        }
    }
    node.metrics.inc("spawngrid_forks_total", &[]);
    Ok(ForkResponse {
        save,
        envs: spawned
            .iter()
            .map(|s| envs::info_spawned(node, s, user, host, &prefix))
            .collect(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Booms the copies spawned so far; says what became of them.
fn undo(node: &Node, user: &str, spawned: &[EnvState]) -> String {
    let left: Vec<&str> = spawned
        .iter()
        .filter(|s| envs::boom(node, s).is_err())
        .map(|s| envs::user_env_name(s, user))
        .collect();
    match (spawned.len(), left.len()) {
        (0, _) => "no copy was spawned".to_string(),
        (1, 0) => "the copy spawned before it was boomed".to_string(),
        (n, 0) => format!("the {n} copies spawned before it were boomed"),
        (_, _) => format!(
            "these copies could not be boomed: {} (boom them)",
            left.join(", ")
        ),
    }
}
