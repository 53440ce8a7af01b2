//! Spawn-to-first-command latency: spawn an env over the busybox root (id-mapped lower,
//! tmpfs write layer) and run `true` in it through the env's init, as the node does, without
//! and then with a spare env-init helper (what the node keeps); also
//! warm and cold exec latencies (through the init, and through the env-enter helper for
//! comparison) and boom. Prints p50/p99 and asserts only that every command ran.
//! `SG_LATENCY_N` sets the number of spawns (default 20); run with `--release --nocapture`
//! for the figures reported in docs/architecture.md.

mod common;
use common::{Env, TestNode};
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// Times `f`, which must report success.
fn timed(v: &mut Vec<Duration>, f: impl FnOnce() -> bool) {
    let t = Instant::now();
    assert!(f(), "command failed");
    v.push(t.elapsed());
}

#[test]
fn spawn_to_first_command_latency() {
    let n: usize = std::env::var("SG_LATENCY_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let node = TestNode::new();
    let (mut first, mut spawn, mut via_init, mut via_helper, mut boom) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut first_spare, mut spawn_spare) = (vec![], vec![]);
    for i in 0..2 * n {
        // The second half keeps a spare env-init helper, as the node does.
        let with_spare = i >= n;
        if i == n {
            node.rt.keep_spare_helper();
            std::thread::sleep(Duration::from_millis(100));
        }
        let opts = node.opts(&format!("lat{i}"));
        let t0 = Instant::now();
        let env = Env::spawn(&node.rt, &opts);
        let spawned = t0.elapsed();
        assert_eq!(env.run_via_init(&["true"]).0, 0);
        let ran = t0.elapsed();
        if with_spare {
            spawn_spare.push(spawned);
            first_spare.push(ran);
        } else {
            spawn.push(spawned);
            first.push(ran);
        }
        timed(&mut via_init, || env.run_via_init(&["true"]).0 == 0);
        timed(&mut via_helper, || env.run(&["true"]).status.success());
        timed(&mut boom, || {
            runtime::boom::boom(&node.rt, &env.state.name).is_ok()
        });
    }
    // Cold: after a quiet pause. A helper exec moves a process into the env's cgroup, which
    // on cgroup v1 can wait for an RCU grace period (docs/architecture.md); the init's exec
    // service moves nothing.
    let env = Env::spawn(&node.rt, &node.opts("latcold"));
    let (mut cold_init, mut cold_helper) = (vec![], vec![]);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        timed(&mut cold_init, || env.run_via_init(&["true"]).0 == 0);
        std::thread::sleep(Duration::from_millis(500));
        timed(&mut cold_helper, || env.run(&["true"]).status.success());
    }
    for (what, v) in [
        ("spawn-to-first-command", &mut first),
        ("spawn-to-first-command (spare helper)", &mut first_spare),
        ("spawn", &mut spawn),
        ("spawn (spare helper)", &mut spawn_spare),
        ("exec via init (warm)", &mut via_init),
        ("exec via helper (warm)", &mut via_helper),
        ("exec via init (after 0.5 s idle)", &mut cold_init),
        ("exec via helper (after 0.5 s idle)", &mut cold_helper),
        ("boom", &mut boom),
    ] {
        let (p50, p99, runs) = (pct(v, 0.5), pct(v, 0.99), v.len());
        println!("latency {what}: p50 {p50:.2} ms, p99 {p99:.2} ms over {runs}");
    }
}
