//! An env's `/proc` shows its own limits: MemTotal its memory limit, MemFree following what it
//! uses, and with a cpu limit as many cpus for `nproc`, `/proc/cpuinfo` and `/proc/stat` (and
//! the quota in its cgroup); its uptime (also sysinfo's) counts from its start, its loadavg its
//! own tasks; nothing of the views is left after boom.

mod common;
use common::{assert_gone, Env, TestNode};
use std::process::Stdio;
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

/// The fields of the first line of `text` (a /proc file).
fn fields(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

#[test]
fn uptime_stat_and_loadavg_are_the_envs() {
    let node = TestNode::new();
    let mut opts = node.opts("clock");
    opts.limits.cpus = Some(1.0);
    let env = Env::spawn(&node.rt, &opts);
    // An env just spawned has no load yet (its first sample is 5 s away), whatever the host's.
    let loadavg = env.ok("cat /proc/loadavg");
    assert!(loadavg.starts_with("0.00 0.00 0.00 "), "{loadavg}");
    let host_up: f64 = fields(&std::fs::read_to_string("/proc/uptime").unwrap())[0]
        .parse()
        .unwrap();
    let up: Vec<f64> = fields(&env.ok("cat /proc/uptime"))
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
    assert!(
        up[0] < 60.0 && up[0] < host_up,
        "an env just spawned is up {up:?} s (the host {host_up} s)"
    );
    // Idle time is the env's one cpu's: at most its uptime.
    assert!(up[1] <= up[0] + 1.0, "idle {up:?}");
    // sysinfo(2) (busybox uptime) counts from the env's start too.
    let sysinfo = env.ok("uptime");
    assert!(
        sysinfo.contains("up 0 min") || sysinfo.contains("up 1 min"),
        "busybox uptime: {sysinfo}"
    );

    let stat = env.ok("cat /proc/stat");
    let cpus: Vec<&str> = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .collect();
    assert_eq!(cpus.len(), 1, "{stat}");
    assert!(cpus[0].starts_with("cpu0 "), "{stat}");
    assert!(stat.contains("\nbtime "), "{stat}");

    // Three sleeps and a cat held open: the env's tasks, not the host's, within a refresh.
    let argv = [
        "sh",
        "-c",
        "sleep 1000 & sleep 1000 & sleep 1000 & exec cat",
    ]
    .map(String::from);
    let mut held = runtime::exec::command(&node.rt, &env.state, &argv, &[])
        .unwrap()
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let total = loop {
        let line = env.ok("cat /proc/loadavg");
        let f = fields(&line);
        let (running, total) = f[3].split_once('/').unwrap();
        let (running, total): (u64, u64) = (running.parse().unwrap(), total.parse().unwrap());
        assert!(running <= total, "{line}");
        // init, cat, three sleeps (and the readers of earlier rounds, if caught running).
        if total >= 5 {
            assert!(
                total <= 10,
                "the env's loadavg counts {total} tasks: {line}"
            );
            break total;
        }
        assert!(Instant::now() < deadline, "loadavg still {line}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let host = fields(&std::fs::read_to_string("/proc/loadavg").unwrap());
    let host_total: u64 = host[3].split_once('/').unwrap().1.parse().unwrap();
    assert!(host_total > total, "the host has {host_total} tasks");
    drop(held.stdin.take());
    held.wait().unwrap();
}

#[test]
fn boom_leaves_nothing_of_the_views() {
    let node = TestNode::new();
    let mut opts = node.opts("viewboom");
    opts.limits.cpus = Some(1.0);
    let env = Env::spawn(&node.rt, &opts);
    let init = env.state.init_pid;
    let mounts = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    for view in ["meminfo", "cpuinfo", "stat", "uptime", "loadavg"] {
        assert!(mounts.contains(&format!(" /proc/{view} ")), "{mounts}");
    }
    assert!(!mounts.contains("/dev/.views"), "{mounts}");
    assert_eq!(env.ok("ls -a /dev | grep -c views || true").trim(), "0");
    let name = env.state.name.clone();
    drop(env);
    assert_gone(&node, &name, init);
}
