//! The seccomp allow list, tried as root inside an env: each class of denied syscall fails
//! with ENOSYS (an i386 `int 0x80` kills the caller), ordinary calls still work. The calls are
//! made by `probes/syscalls.c`, built static with the host's C compiler, with arguments an
//! unfiltered kernel answers with success or another errno.

mod common;
use common::{Env, TestNode};

/// An env with the syscall probe at `/probe`.
fn env_with_probe(node: &TestNode) -> Env<'_> {
    common::env_with_probe(node, &node.opts("seccomp"), "syscalls")
}

/// Runs the probe for `calls`; its lines.
fn probe(env: &Env, calls: &[&str]) -> String {
    let argv = [&["/probe"], calls].concat();
    let out = env.run(&argv);
    assert!(
        out.status.success(),
        "probe {calls:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const ENOSYS: i32 = libc::ENOSYS;

#[test]
fn every_denied_class_fails_with_enosys() {
    let node = TestNode::new();
    let env = env_with_probe(&node);
    let denied = [
        "x32",
        "io_uring_setup",
        "bpf",
        "userfaultfd",
        "keyctl",
        "add_key",
        "open_by_handle_at",
        "name_to_handle_at",
        "fsopen",
        "fsmount",
        "fsconfig",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
        "quotactl_fd",
        "fanotify_init",
        "af_packet",
        "unshare_user",
        "clone3",
    ];
    let expected: String = denied
        .iter()
        .map(|c| format!("{c} errno {ENOSYS}\n"))
        .collect();
    assert_eq!(probe(&env, &denied), expected);
}

#[test]
fn ordinary_calls_still_work() {
    let node = TestNode::new();
    let env = env_with_probe(&node);
    // A raw ICMP socket (ping) is no AF_PACKET socket.
    assert_eq!(
        probe(&env, &["getpid", "af_inet_raw"]),
        "getpid ok\naf_inet_raw ok\n"
    );
    // Fork, exec, pipes, background jobs, files, links, renames.
    let script = "echo a | cat; (sleep 0.01 &); wait; mkdir /t && echo x > /t/f && \
                  ln -s g /t/l && mv /t/f /t/g && cat /t/l && chmod 600 /t/g && stat -c %a /t/g";
    assert_eq!(env.ok(script), "a\nx\n600\n");
}

#[test]
fn an_i386_syscall_kills_the_caller() {
    let node = TestNode::new();
    let env = env_with_probe(&node);
    let out = env.run(&["/probe", "int80"]);
    // The exec helper reports a command killed by a signal as 128 + the signal.
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGSYS),
        "int 0x80 was not stopped: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.stdout, b"", "the call returned");
}
