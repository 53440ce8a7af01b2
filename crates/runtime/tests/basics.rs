//! Spawn, exec, identity inside, and the first latency figure.

mod common;
use common::{Env, TestNode};

#[test]
fn spawn_exec_echo_and_exit_codes() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("echo"));
    let out = env.run(&["echo", "hi"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env.sh("exit 7").status.code(), Some(7));
    let out = env.sh("echo out; echo err >&2");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn root_inside_is_the_mapped_range_outside() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("ids"));
    assert_eq!(env.ok("id -u; id -g"), "0\n0\n");
    env.ok("sleep 30 >/dev/null 2>&1 &");
    let cg = runtime::cgroup::Cgroup::new(&node.rt.cgroups, &env.state.name);
    let pids = cg.pids().unwrap();
    assert!(
        pids.len() >= 2,
        "init and sleep expected in the cgroup, got {pids:?}"
    );
    let host_uid = node.rt.ids.host_uid.to_string();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
        assert_eq!(uids, vec![host_uid.as_str(); 4], "pid {pid}: {uid_line}");
    }
}

#[test]
fn hostname_is_env_name_and_pid_1_is_init() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("uts"));
    assert_eq!(env.ok("hostname").trim(), env.state.name);
    let cmdline = env.ok("tr '\\0' ' ' < /proc/1/cmdline");
    assert!(cmdline.contains("env-init"), "pid 1 is {cmdline:?}");
    // Only the env's own processes are visible: init, the shell, ls.
    let pids = env.ok("ls /proc | grep -c '^[0-9]'");
    assert!(
        pids.trim().parse::<u32>().unwrap() <= 4,
        "{pids} pids visible"
    );
    // Orphans are reaped by init: no zombies after a backgrounded child exits.
    env.ok("sleep 0.1 &");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let states = env.ok("cat /proc/[0-9]*/stat | cut -d' ' -f3 | sort | uniq -c");
    assert!(!states.contains(" Z"), "zombies: {states}");
    // The init leads its own session and process group on the host: a signal to the
    // spawner's process group (a shell's job control, a timeout's kill) does not reach it.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", env.state.init_pid)).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let pid = env.state.init_pid.to_string();
    assert_eq!(
        (fields[2], fields[3]),
        (pid.as_str(), pid.as_str()),
        "pgrp, session"
    );
}

#[test]
fn loopback_is_the_only_network() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("net"));
    let ifaces =
        env.ok("ls /sys/class/net 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: -f1");
    assert_eq!(ifaces.split_whitespace().collect::<Vec<_>>(), vec!["lo"]);
    let flags = env.ok("ip link show lo 2>/dev/null || echo none");
    assert!(flags.contains("UP") || flags.contains("none"), "{flags}");
}

#[test]
fn twenty_envs_at_once() {
    let node = TestNode::new();
    let envs: Vec<Env> = (0..20)
        .map(|_| Env::spawn(&node.rt, &node.opts("many")))
        .collect();
    let listed = runtime::state::list(&node.rt).unwrap();
    assert_eq!(listed.iter().filter(|e| e.alive()).count(), 20);
    for env in &envs {
        assert_eq!(env.ok("hostname").trim(), env.state.name);
        env.ok("echo mine > /root/who");
    }
    // Each env sees only its own writes.
    for env in &envs {
        assert_eq!(
            env.ok("cat /root/who; ls /root | wc -l")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["mine", "1"]
        );
    }
    drop(envs);
    assert!(runtime::state::list(&node.rt).unwrap().is_empty());
}

#[test]
fn a_long_env_name_gets_a_cut_hostname() {
    let node = TestNode::new();
    let mut opts = node.opts("long");
    opts.name = format!("{}-{}", opts.name, "x".repeat(100));
    let env = Env::spawn(&node.rt, &opts);
    assert_eq!(env.ok("hostname").trim(), &opts.name[..64]);
}

#[test]
fn a_per_user_env_id_with_its_own_hostname() {
    let node = TestNode::new();
    let mut opts = node.opts("box");
    opts.name = format!("{}+alice", opts.name);
    opts.hostname = Some("box".into());
    let env = Env::spawn(&node.rt, &opts);
    assert_eq!(env.ok("hostname"), "box\n");
    assert!(node.rt.env_dir(&opts.name).unwrap().is_dir());
}

/// Our children running `env-init UID:GID` (spare helpers waiting for a config).
fn spare_helpers() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .map(|(_, r)| r.split(' ').nth(1) == Some(&me));
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let arg = cmd.split(|&b| b == 0).nth(1);
            ppid == Some(true) && arg == Some(runtime::helper::INIT.as_bytes())
        })
        .collect()
}

/// Polls `f` for up to 5 s.
fn eventually(f: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn a_spare_helper_is_used_replaced_and_survives_being_killed() {
    let node = TestNode::new();
    node.rt.keep_spare_helper();
    assert!(eventually(|| spare_helpers().len() == 1), "no spare helper");
    // A spare killed from outside: the next spawn starts its own helper and still works.
    let spare = spare_helpers()[0];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(spare).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let env = Env::spawn(&node.rt, &node.opts("spare1"));
    assert_eq!(env.ok("echo up"), "up\n");
    // A new spare waits for the next spawn, which uses it.
    assert!(eventually(|| spare_helpers().len() == 1), "no new spare");
    let next = spare_helpers()[0];
    assert_ne!(next, spare);
    // Prepared at the lowest priority, so it yields to the env just spawned...
    let nice = |stat: &str| {
        stat.rsplit_once(") ")
            .unwrap()
            .1
            .split(' ')
            .nth(16)
            .map(str::to_owned)
    };
    let stat = std::fs::read_to_string(format!("/proc/{next}/stat")).unwrap();
    assert_eq!(nice(&stat).as_deref(), Some("19"), "{stat}");
    // Its mount namespace is staged: the env's /dev and the host's /proc, none of the host's
    // other mounts (they cost every spawn a copy and a drop otherwise).
    // (Once it is prepared: the refill may still be at it.)
    let mounts = || std::fs::read_to_string(format!("/proc/{next}/mountinfo")).unwrap();
    let staged = || {
        let info = mounts();
        let points: Vec<&str> = info.lines().filter_map(|l| l.split(' ').nth(4)).collect();
        let ours = |p: &&str| *p == "/" || p.starts_with("/dev") || p.starts_with("/proc");
        points.contains(&"/dev/pts") && points.iter().all(ours)
    };
    assert!(eventually(staged), "{}", mounts());
    // ...but the env it becomes runs at its spawner's.
    let env2 = Env::spawn(&node.rt, &node.opts("spare2"));
    assert_eq!(env2.ok("hostname").trim(), env2.state.name);
    let ours = rustix::process::getpriority_process(None)
        .unwrap()
        .to_string();
    let inside = env2.ok("cat /proc/self/stat");
    assert_eq!(nice(&inside), Some(ours), "{inside}");
    assert!(eventually(|| !spare_helpers().contains(&next)));
    assert!(eventually(|| spare_helpers().len() == 1));
}

#[test]
fn commands_start_with_no_signal_blocked_whatever_the_caller_blocked() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("sigmask"));
    // SAFETY: blocking SIGWINCH and SIGUSR1 in this test's own thread (sets built by libc).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
    // No shell in between (a shell sets its own dispositions): cat reports its own.
    let out = env.run(&["cat", "/proc/self/status"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("SigBlk:\t0000000000000000"), "{status}");
    assert!(status.contains("SigIgn:\t0000000000000000"), "{status}");
}
