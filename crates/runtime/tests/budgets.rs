//! The kernel's per-user budgets: an env spends its own, never host root's nor another env's.
//! A user namespace's counts (inotify instances and watches among them) are charged to its
//! owner in the parent namespace, so each test lets an env take all it can through
//! `probes/inotify.c`, then checks that host root, or a second env, can still take as much; and
//! the owner uids are leased one per env (`runtime::owners`).

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

#[test]
fn each_env_has_inotify_instances_of_its_own() {
    let _serial = serial();
    let node = TestNode::new();
    let (a, a_child, (n, errno)) = exhaust(&node, &["instances"]);
    assert_eq!(errno, libc::EMFILE, "env A stopped after {n} instances");
    // Env B of the same node, while A holds all it could take, gets as many.
    let (b, b_child, (m, _)) = exhaust(&node, &["instances"]);
    release(a_child);
    release(b_child);
    assert_eq!(
        m, n,
        "env B took {m} inotify instances while env A held {n}"
    );
    assert_ne!(a.state.owner_uid, b.state.owner_uid);
}

/// The host uid that owns the user namespace of process `pid` (`NS_GET_OWNER_UID`).
fn userns_owner(pid: i32) -> u32 {
    use std::os::fd::AsRawFd;
    const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
    let mut uid: libc::uid_t = u32::MAX;
    // SAFETY: a namespace fd and a pointer to a uid_t the ioctl fills in.
    let rc = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_OWNER_UID, &mut uid) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    uid
}

#[test]
fn owner_uids_are_leased_refused_when_all_are_held_and_recovered_from_dead_envs() {
    let _serial = serial();
    let mut node = TestNode::new();
    // One uid, outside the default range (so no other test's env holds it).
    let only = runtime::ids::OWNERS_DEFAULT.start + runtime::ids::OWNERS_DEFAULT.count;
    node.rt.owners = runtime::ids::OwnerRange {
        start: only,
        count: 1,
    };
    let claim = std::path::Path::new(runtime::owners::HOST_OWNERS).join(only.to_string());
    let a = runtime::spawn::spawn(&node.rt, &node.opts("owner-a")).unwrap();
    assert_eq!(a.owner_uid, Some(only));
    assert_eq!(userns_owner(a.init_pid), only);
    // Files made inside still belong to the env's root (the node's id range), not the owner.
    let made = runtime::exec::command(&node.rt, &a, &["touch".into(), "/made".into()], &[])
        .unwrap()
        .status()
        .unwrap();
    assert!(made.success());
    let upper = a.upper(&node.rt).unwrap().join("made");
    let meta = std::fs::metadata(&upper).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), node.rt.ids.host_uid);

    let opts_b = node.opts("owner-b");
    let err = runtime::spawn::spawn(&node.rt, &opts_b).unwrap_err();
    assert!(
        err.to_string().contains("no free env owner uid"),
        "a spawn with every owner uid held: {err}"
    );
    assert!(!node.rt.env_dir(&opts_b.name).unwrap().exists());
    // Env A dies with its node (no boom): its uid is free for the next spawn.
    let pid = rustix::process::Pid::from_raw(a.init_pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    while a.alive() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let b = runtime::spawn::spawn(&node.rt, &opts_b).unwrap();
    assert_eq!(b.owner_uid, Some(only));
    // Booming the dead env leaves B's claim; booming B gives it up.
    runtime::boom::boom(&node.rt, &a.name).unwrap();
    let holder = std::fs::read_link(&claim).unwrap();
    assert_eq!(holder, node.rt.env_dir(&b.name).unwrap());
    runtime::boom::boom(&node.rt, &b.name).unwrap();
    assert!(!claim.exists(), "{} left after boom", claim.display());
}

#[test]
fn a_spare_helper_leases_an_owner_uid_hands_it_to_its_env_and_gives_it_back_when_dropped() {
    use std::path::Path;
    let _serial = serial();
    let mut node = TestNode::new();
    // One uid of its own, outside the default range and the other test's.
    let only = runtime::ids::OWNERS_DEFAULT.start + runtime::ids::OWNERS_DEFAULT.count + 1;
    node.rt.owners = runtime::ids::OwnerRange {
        start: only,
        count: 1,
    };
    let claim = Path::new(runtime::owners::HOST_OWNERS).join(only.to_string());
    let helpers = node.rt.data.join("helpers");
    // A claim left by a helper whose node died (its pid is gone) is stale: taken over.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    std::fs::create_dir_all(runtime::owners::HOST_OWNERS).unwrap();
    let _ = std::fs::remove_file(&claim);
    std::os::unix::fs::symlink(helpers.join(format!("{dead}-1-0")), &claim).unwrap();

    node.rt.keep_spare_helper();
    let held = std::fs::read_link(&claim).unwrap();
    assert_eq!(held.parent(), Some(helpers.as_path()), "held by {held:?}");
    let ours = format!("{}-", std::process::id());
    assert!(held
        .file_name()
        .unwrap()
        .as_bytes()
        .starts_with(ours.as_bytes()));

    let a = runtime::spawn::spawn(&node.rt, &node.opts("spare-a")).unwrap();
    assert_eq!(a.owner_uid, Some(only));
    assert_eq!(userns_owner(a.init_pid), only);
    assert_eq!(
        std::fs::read_link(&claim).unwrap(),
        node.rt.env_dir(&a.name).unwrap()
    );
    // Its only uid held, the node has no spare and says why a spawn fails.
    let err = runtime::spawn::spawn(&node.rt, &node.opts("spare-b")).unwrap_err();
    assert!(err.to_string().contains("no free env owner uid"), "{err}");
    runtime::boom::boom(&node.rt, &a.name).unwrap();
    // Free again (or taken by a spare prepared meanwhile): dropping the node's runtime, and
    // with it its spare, gives it back.
    if let Ok(holder) = std::fs::read_link(&claim) {
        assert_eq!(
            holder.parent(),
            Some(helpers.as_path()),
            "held by {holder:?}"
        );
    }
    drop(node);
    for _ in 0..1000 {
        if !claim.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} left by a dropped spare", claim.display());
}
