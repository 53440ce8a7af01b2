//! Isolation: each test is an attempt, as root inside, that must FAIL.

mod common;
use common::{Env, TestNode};

/// Runs `script` inside and asserts it fails.
fn denied(env: &Env, script: &str) {
    let out = env.sh(script);
    assert!(
        !out.status.success(),
        "{script:?} succeeded inside the env: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn mounting_proc_cgroups_or_block_devices_fails() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("mount"));
    env.ok("mkdir -p /mnt/a");
    denied(&env, "mount -t proc proc /mnt/a");
    denied(&env, "mount -t cgroup -o memory cgroup /mnt/a");
    denied(
        &env,
        "mount -t cgroup2 none /mnt/a && ls /mnt/a/cgroup.procs",
    );
    denied(&env, "mknod /tmp/vda b 254 0");
    denied(
        &env,
        "mount -t sysfs sysfs /mnt/a && ls /mnt/a/block | grep .",
    );
    denied(&env, "ls /dev/vda /dev/sda /dev/loop0");
    denied(&env, "ls /sys/fs/cgroup/memory");
}

#[test]
fn proc_is_masked_and_read_only() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("proc"));
    denied(&env, "echo h > /proc/sysrq-trigger");
    denied(&env, "echo 1 > /proc/sys/kernel/sysrq");
    denied(&env, "echo 1 > /proc/sys/vm/drop_caches");
    denied(&env, "head -c 1 /proc/kcore | grep -q .");
    // Nothing of the host is reachable through /proc/PID/root or /proc/PID/cwd.
    let marker = node.path().join("host-marker");
    std::fs::write(&marker, "secret").unwrap();
    let m = marker.display();
    denied(
        &env,
        &format!("cat /proc/*/root{m} /proc/*/cwd{m} {m} 2>/dev/null | grep -q secret"),
    );
}

#[test]
fn privileges_are_bounded() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("caps"));
    let status = env.ok("grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status");
    // Docker's default set: chown dac_override fowner fsetid kill setgid setuid setpcap
    // net_bind_service net_raw sys_chroot mknod audit_write setfcap.
    assert!(status.contains("CapBnd:\t00000000a80425fb"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // The init (PID 1, the only process of the env every other one can see) uses nothing and
    // permits only the bounding set, which its exec service's commands get back as root.
    let init = env.ok("grep -E '^(CapInh|CapEff|CapPrm)' /proc/1/status");
    assert_eq!(
        init,
        "CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t0000000000000000\n"
    );
    // Limits cannot be raised past the host's hard limits.
    denied(&env, "ulimit -n 1000000");
    // Signalling processes outside: pid 1 is the env's own init, host pids do not exist here.
    denied(&env, &format!("kill -0 {}", std::process::id() + 100000));
}

#[test]
fn writes_through_the_overlay_never_reach_the_lower() {
    let node = TestNode::new();
    let lower = node.path().join("lower");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(common::busybox())
        .arg(&lower)
        .output()
        .unwrap();
    assert!(out.status.success());
    let before = std::fs::read(lower.join("etc/passwd")).unwrap();
    let mut opts = node.opts("lower");
    opts.lower = lower.clone();
    let env = Env::spawn(&node.rt, &opts);
    env.ok("echo x >> /etc/passwd && rm /bin/ls && touch /bin/new && chmod 700 /etc");
    assert_eq!(std::fs::read(lower.join("etc/passwd")).unwrap(), before);
    assert!(lower.join("bin/ls").exists() && !lower.join("bin/new").exists());
    // The id-mapped lower itself is read-only, from the host too.
    let bind = node.rt.env_dir(&env.state.name).unwrap().join("lower");
    assert!(std::fs::write(bind.join("etc/hacked"), "x").is_err());
}

#[test]
fn seccomp_denies_namespaces_and_mounts() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("seccomp"));
    let status = env.ok("grep -E '^Seccomp:' /proc/self/status");
    assert_eq!(status, "Seccomp:\t2\n");
    env.ok("mkdir -p /mnt/t");
    // Root of the env's user namespace could mount a tmpfs or unshare without the filter.
    denied(&env, "mount -t tmpfs tmpfs /mnt/t");
    denied(&env, "unshare -m true");
    denied(&env, "unshare -U true");
    // Ordinary process creation still works (fork, exec, pipes, background jobs).
    assert_eq!(
        env.ok("echo a | cat; (sleep 0.01 &); wait; echo b"),
        "a\nb\n"
    );
}

#[test]
fn no_host_file_descriptor_leaks_in() {
    let node = TestNode::new();
    // An inheritable (non-CLOEXEC) fd of a host file, open in the spawning process.
    let secret = node.path().join("leak-me");
    std::fs::write(&secret, "host only").unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    use std::os::fd::AsRawFd;
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty()).unwrap();
    let env = Env::spawn(&node.rt, &node.opts("fds"));
    // The shell sees 0, 1, 2 and the directory `ls` itself opens; nothing else.
    let fds = env.ok("ls /proc/self/fd | wc -l");
    assert_eq!(
        fds.trim(),
        "4",
        "fds inside: {}",
        env.ok("ls -l /proc/self/fd")
    );
    denied(
        &env,
        &format!("cat /proc/self/fd/{} | grep -q host", file.as_raw_fd()),
    );
    // The init's fds are not even listable (it is not dumpable).
    denied(&env, "ls /proc/1/fd/3");
}
