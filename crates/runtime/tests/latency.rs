//! Spawn-to-first-command latency: spawn an env over the busybox root (id-mapped lower,
//! tmpfs write layer) and run `true` in it; also exec and boom latencies. Prints p50/p99.
//! `SG_LATENCY_N` sets the number of spawns (default 20); run with `--release --nocapture`
//! for the figures reported in docs/architecture.md.

mod common;
use common::TestNode;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

#[test]
fn spawn_to_first_command_latency() {
    let n: usize = std::env::var("SG_LATENCY_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let node = TestNode::new();
    let lower = common::busybox();
    let (mut first, mut spawn, mut exec, mut boom) = (vec![], vec![], vec![], vec![]);
    let truth = vec!["true".to_string()];
    for i in 0..n {
        let opts = runtime::SpawnOptions::new(
            &format!("lat-{}-{i}", std::process::id()),
            "tester",
            &lower,
        );
        let t0 = Instant::now();
        let st = runtime::spawn::spawn(&node.rt, &opts).unwrap();
        let t1 = Instant::now();
        let status = runtime::exec::command(&node.rt, &st, &truth, &[])
            .unwrap()
            .status()
            .unwrap();
        let t2 = Instant::now();
        assert!(status.success());
        let status = runtime::exec::command(&node.rt, &st, &truth, &[])
            .unwrap()
            .status()
            .unwrap();
        let t3 = Instant::now();
        assert!(status.success());
        runtime::boom::boom(&node.rt, &st.name).unwrap();
        let t4 = Instant::now();
        first.push(t2 - t0);
        spawn.push(t1 - t0);
        exec.push(t3 - t2);
        boom.push(t4 - t3);
    }
    for (what, v) in [
        ("spawn-to-first-command", &mut first),
        ("spawn", &mut spawn),
        ("exec (warm)", &mut exec),
        ("boom", &mut boom),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!("latency {what}: p50 {p50:.2} ms, p99 {p99:.2} ms over {n}");
    }
    // Cold: an exec after a quiet pause pays for the cgroup migration's RCU grace period
    // (see docs/architecture.md, "Cold cgroup v1 joins").
    let opts = runtime::SpawnOptions::new(
        &format!("lat-{}-cold", std::process::id()),
        "tester",
        &lower,
    );
    let st = runtime::spawn::spawn(&node.rt, &opts).unwrap();
    let mut cold = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let status = runtime::exec::command(&node.rt, &st, &truth, &[])
            .unwrap()
            .status()
            .unwrap();
        cold.push(t.elapsed());
        assert!(status.success());
    }
    runtime::boom::boom(&node.rt, &st.name).unwrap();
    let (p50, max) = (pct(&mut cold, 0.5), pct(&mut cold, 1.0));
    println!("latency exec (cold, after 0.5 s idle): p50 {p50:.2} ms, max {max:.2} ms over 5");
    assert!(pct(&mut first, 0.5) < 1000.0);
}
