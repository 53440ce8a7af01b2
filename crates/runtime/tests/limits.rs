//! Limits: the write layer's size (ENOSPC inside, the host untouched) and pids.max.

mod common;
use common::{Env, TestNode};

#[test]
fn writing_200mb_into_a_spawn_env_is_enospc() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("enospc"));
    let out = env.sh("dd if=/dev/zero of=/root/big bs=1M count=200");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "dd said: {err}");
    // The env and the host are fine; deleting frees the space.
    env.ok("rm /root/big; echo ok > /root/small");
    assert_eq!(env.ok("cat /root/small"), "ok\n");
}

#[test]
fn disk_env_is_enospc_at_its_size_and_frees_its_loop_device() {
    let node = TestNode::new();
    let mut opts = node.opts("disk");
    opts.disk = true;
    opts.write_size = Some(64 << 20);
    let env = Env::spawn(&node.rt, &opts);
    let out = env.sh("dd if=/dev/zero of=/root/big bs=1M count=100");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("No space left"),
        "dd said: {err}"
    );
    let image = node.rt.env_dir(&env.state.name).unwrap().join("disk.img");
    drop(env);
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(
        !loops.contains(image.to_str().unwrap()),
        "loop device left: {loops}"
    );
}

#[test]
fn fork_bomb_stops_at_pids_max() {
    let node = TestNode::new();
    let mut opts = node.opts("pids");
    opts.limits.pids = 64;
    let env = Env::spawn(&node.rt, &opts);
    // A bounded "bomb": 500 sleeps against a limit of 64.
    let out = env
        .sh("i=0; while [ $i -lt 500 ]; do sleep 60 >/dev/null 2>&1 & i=$((i+1)); done; echo done");
    let cg = runtime::cgroup::Cgroup::new(&node.rt.cgroups, &env.state.name);
    let n = cg.pids().unwrap().len();
    assert!(n <= 64, "{n} processes in the env");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || err.contains("fork"),
        "no fork failed: {err}"
    );
}

#[test]
fn memory_hog_is_killed_inside_only() {
    let node = TestNode::new();
    let mut opts = node.opts("oom");
    opts.limits.memory = 32 << 20;
    let env = Env::spawn(&node.rt, &opts);
    // busybox dd allocates its whole block: 64 MiB against a 32 MiB limit.
    let out = env.sh("dd if=/dev/zero of=/dev/null bs=64M count=1");
    assert_eq!(
        out.status.code(),
        Some(128 + 9),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.ok("echo alive"), "alive\n");
}
