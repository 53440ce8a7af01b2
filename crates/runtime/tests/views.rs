//! An env's `/proc` shows its own limits: MemTotal its memory limit, MemFree following what it
//! uses, and with a cpu limit as many cpus for `nproc` and `/proc/cpuinfo` (and the quota in
//! its cgroup); nothing of the views is left after boom.

mod common;
use common::{assert_gone, Env, TestNode};
use std::time::{Duration, Instant};

/// The value in kB of `key` in the env's /proc/meminfo.
fn meminfo_kb(env: &Env, key: &str) -> u64 {
    let text = env.ok("cat /proc/meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The host's online cpus.
fn host_cpus() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

#[test]
fn meminfo_shows_the_limit_and_follows_the_use() {
    let node = TestNode::new();
    let mut opts = node.opts("meminfo");
    opts.limits.memory = 96 << 20;
    let env = Env::spawn(&node.rt, &opts);
    assert_eq!(meminfo_kb(&env, "MemTotal"), 96 << 10);
    assert_eq!(meminfo_kb(&env, "SwapTotal"), 0);
    let before = meminfo_kb(&env, "MemFree");
    assert!(before < 96 << 10, "MemFree {before} kB");
    // 32 MiB in a tmpfs, charged to the env; the view is rewritten every second.
    env.ok("dd if=/dev/zero of=/dev/shm/fill bs=1M count=32 2>/dev/null");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let free = meminfo_kb(&env, "MemFree");
        if free + (30 << 10) <= before {
            assert!(meminfo_kb(&env, "Shmem") >= 32 << 10);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "MemFree still {free} kB (was {before} kB) after writing 32 MiB"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without a cpu limit the env has every cpu of the host.
    assert_eq!(env.ok("nproc").trim(), host_cpus().to_string());
    let host_info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    assert_eq!(
        env.ok("cat /proc/cpuinfo"),
        host_info,
        "an env without a cpu limit shows the host's cpuinfo"
    );
}

#[test]
fn a_cpu_limit_is_the_envs_cpus() {
    let node = TestNode::new();
    let mut opts = node.opts("cpus");
    opts.limits.cpus = Some(0.5);
    let env = Env::spawn(&node.rt, &opts);
    assert_eq!(env.ok("nproc").trim(), "1");
    assert_eq!(env.ok("grep -c ^processor /proc/cpuinfo").trim(), "1");
    assert_eq!(
        env.ok("grep ^processor /proc/cpuinfo").trim(),
        "processor\t: 0"
    );
    // Processes entering from the host (this exec) and those the init starts agree.
    let (code, out, _) = env.run_via_init(&["nproc"]);
    assert_eq!((code, out.trim()), (0, "1"));
    let cg = runtime::cgroup::Cgroup::new(&node.rt.cgroups, &env.state.name);
    let quota = cg
        .dirs()
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .or_else(|_| std::fs::read_to_string(d.join("cpu.max")))
                .ok()
        })
        .expect("a cpu quota file");
    assert!(quota.starts_with("50000"), "quota {quota}");
}

#[test]
fn boom_leaves_nothing_of_the_views() {
    let node = TestNode::new();
    let mut opts = node.opts("viewboom");
    opts.limits.cpus = Some(1.0);
    let env = Env::spawn(&node.rt, &opts);
    let init = env.state.init_pid;
    let mounts = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    assert!(
        mounts.contains(" /proc/meminfo ") && mounts.contains(" /proc/cpuinfo "),
        "{mounts}"
    );
    assert!(!mounts.contains("/dev/.views"), "{mounts}");
    assert_eq!(env.ok("ls -a /dev | grep -c views || true").trim(), "0");
    let name = env.state.name.clone();
    drop(env);
    assert_gone(&node, &name, init);
}
