//! Which host cpus an env with a cpu limit runs on.
//!
//! `nproc`, `os.cpu_count()`-style affinity checks and thread pools size themselves by the
//! process's cpu affinity, so an env limited to N cpus' worth of time (a CFS quota) also runs
//! on N host cpus (the limit rounded up): its init and every process entering it take that
//! affinity, and its `/proc/cpuinfo` lists those cpus (`inside::views`). The N cpus are
//! consecutive among the node's own, starting at a place picked from the env's name, so envs
//! spread over the host rather than all piling onto cpu 0. The quota is the limit; the
//! affinity only tells programs what they have (root inside may widen its own, and still gets
//! no more time).

use crate::error::{Context, Result};
use std::hash::{Hash, Hasher};

/// The host cpus of an env named `env` limited to `cpus` cpus (`None`: no limit, every cpu,
/// given as an empty list).
pub fn for_env(env: &str, cpus: Option<f64>) -> Result<Vec<usize>> {
    let Some(limit) = cpus else {
        return Ok(Vec::new());
    };
    Ok(pick(&node_cpus()?, limit, env))
}

/// The host cpus this node may run envs on (its own affinity).
pub fn node_cpus() -> Result<Vec<usize>> {
    let mine = rustix::thread::sched_getaffinity(None).context("reading the node's cpus")?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| mine.is_set(c))
        .collect())
}

/// `limit` rounded up (at least 1, at most all of `online`) consecutive cpus of `online`,
/// starting at a place taken from `env`'s hash, in ascending order.
fn pick(online: &[usize], limit: f64, env: &str) -> Vec<usize> {
    let n = (limit.ceil() as usize).clamp(1, online.len().max(1));
    if n >= online.len() {
        return online.to_vec();
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env.hash(&mut hasher);
    let start = (hasher.finish() % online.len() as u64) as usize;
    let mut picked: Vec<usize> = (0..n).map(|i| online[(start + i) % online.len()]).collect();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_rounded_up_consecutive_and_spread() {
        let online: Vec<usize> = (0..8).collect();
        assert_eq!(pick(&online, 1.5, "a").len(), 2);
        assert_eq!(pick(&online, 0.1, "a").len(), 1);
        assert_eq!(pick(&online, 64.0, "a"), online);
        assert_eq!(pick(&[3], 2.0, "a"), vec![3]);
        // The same env always gets the same cpus; names spread over the host.
        assert_eq!(pick(&online, 3.0, "x"), pick(&online, 3.0, "x"));
        let starts: std::collections::HashSet<usize> = (0..64)
            .map(|i| pick(&online, 1.0, &format!("env{i}"))[0])
            .collect();
        assert!(starts.len() > 4, "64 envs on cpus {starts:?}");
    }
}
