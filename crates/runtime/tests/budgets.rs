//! The kernel's per-user budgets: an env spends its own, never host root's. A user namespace's
//! counts (inotify instances and watches among them) are charged to its owner in the parent
//! namespace, so each test lets an env take all it can through `probes/inotify.c`, then checks
//! that host root can still take one.

mod common;
use common::{env_with_probe, serial, TestNode};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Stdio};

/// Runs the probe with `args` in a new env; returns it holding what it took, and its report
/// (count, errno).
fn exhaust<'a>(node: &'a TestNode, args: &[&str]) -> (common::Env<'a>, Child, (i64, i32)) {
    let mut opts = node.opts("budget");
    // Room for the watched files' inodes and the watches themselves.
    opts.limits.memory = 1 << 30;
    let env = env_with_probe(node, &opts, "inotify");
    let argv: Vec<String> = ["/probe"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    let mut child = runtime::exec::command(&node.rt, &env.state, &argv, &[])
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 3, "probe said {line:?}");
    let report = (f[0].parse().unwrap(), f[2].parse().unwrap());
    (env, child, report)
}

/// Lets the probe exit.
fn release(mut child: Child) {
    child.stdin.take().unwrap().write_all(b"").unwrap();
    assert!(child.wait().unwrap().success());
}

/// A new inotify instance of host root (this test), or its errno.
fn host_instance() -> Result<std::os::fd::OwnedFd, std::io::Error> {
    // SAFETY: inotify_init1 takes flags and returns a new fd (owned here) or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

#[test]
fn an_env_spends_none_of_host_roots_inotify_instances() {
    let _serial = serial();
    let node = TestNode::new();
    let (_env, child, (n, errno)) = exhaust(&node, &["instances"]);
    assert_eq!(errno, libc::EMFILE, "the env stopped after {n} instances");
    let host = host_instance();
    release(child);
    if let Err(e) = host {
        panic!("host root's inotify_init1 failed ({e}) while an env held {n} instances");
    }
}

#[test]
fn an_env_spends_none_of_host_roots_inotify_watches() {
    let _serial = serial();
    let node = TestNode::new();
    let (_env, child, (n, errno)) = exhaust(&node, &["watches", "/dev/shm"]);
    assert_eq!(errno, libc::ENOSPC, "the env stopped after {n} watches");
    let file = node.path().join("watched");
    std::fs::write(&file, "").unwrap();
    let path = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
    let host = host_instance().and_then(|fd| {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        match unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) } {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        }
    });
    release(child);
    if let Err(e) = host {
        panic!("host root's inotify_add_watch failed ({e}) while an env held {n} watches");
    }
}
