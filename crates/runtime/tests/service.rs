//! Exec through the env's init (no helper process, no setns, no cgroup migration).

mod common;
use common::{Env, TestNode};
use rustix::fd::AsFd;
use std::time::Duration;

#[test]
fn exec_through_init_streams_and_returns_the_exit_code() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("svc"));
    assert_eq!(
        env.run_via_init(&["echo", "hi"]),
        (0, "hi\n".into(), String::new())
    );
    assert_eq!(
        env.run_via_init(&["sh", "-c", "echo out; echo err >&2; exit 7"]),
        (7, "out\n".into(), "err\n".into())
    );
    assert_eq!(env.run_via_init(&["sh", "-c", "kill -9 $$"]).0, 128 + 9);
    assert_eq!(env.run_via_init(&["no-such-command"]).0, 127);
    // Same identity and restrictions as a helper exec.
    let (_, status, _) = env.run_via_init(&[
        "sh",
        "-c",
        "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    assert_eq!(
        status,
        "0\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    );
    // Commands start with default signal dispositions, whatever the caller ignored.
    // SAFETY: ignoring SIGINT in this test process (its other threads never expect it).
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let ignored = Env::spawn(&node.rt, &node.opts("svcsig"));
    let sigign = [
        "grep",
        "-h",
        "SigIgn",
        "/proc/self/status",
        "/proc/1/status",
    ];
    let zero = "SigIgn:\t0000000000000000\n".repeat(2);
    assert_eq!(ignored.run_via_init(&sigign).1, zero);
    assert_eq!(
        String::from_utf8(ignored.run(&sigign).stdout).unwrap(),
        zero
    );
    // Orphans are reaped whatever their process group (the command runs in its own session).
    env.run_via_init(&["sh", "-c", "sleep 0.1 & exit 0"]);
    std::thread::sleep(Duration::from_millis(500));
    let (_, zombies, _) =
        env.run_via_init(&["sh", "-c", "grep -l '^State:.*Z' /proc/[0-9]*/status; true"]);
    assert_eq!(zombies, "");
    // A client that connects and sends nothing does not stall the next one.
    let sock_path = runtime::service::socket_path(&node.rt.env_dir(&env.state.name).unwrap());
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let silent = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::connect(&silent, &SocketAddrUnix::new(&sock_path).unwrap()).unwrap();
    assert_eq!(env.run_via_init(&["echo", "after"]).1, "after\n");
    // Only host root can connect: the socket is root's, mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let sock = runtime::service::socket_path(&node.rt.env_dir(&env.state.name).unwrap());
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Booming the env answers a waiting client instead of hanging it.
    let argv = vec!["sleep".to_string(), "100".to_string()];
    let null = std::fs::File::open("/dev/null").unwrap();
    let started =
        runtime::service::start(&node.rt, &env.state, &argv, &[], [null.as_fd(); 3]).unwrap();
    runtime::boom::boom(&node.rt, &env.state.name).unwrap();
    assert!(started.wait().is_err());
}
