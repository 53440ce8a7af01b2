//! The device allow-list, enforced by the env's cgroup: a block device node (or any device
//! off the list) on a mount without `nodev` does not open inside an env, while the devices of
//! its /dev do. Also the v2 device program, attached to a cgroup of a cgroup2 hierarchy
//! mounted for the test (this host's controllers are v1, but device programs need none).

mod common;
use common::{Env, TestNode};
use rustix::fd::AsFd;
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Makes device nodes (name, `b` or `c`, major, minor) in `dir`, mode 0666, as host root.
fn make_nodes(dir: &Path, nodes: &[(&str, &str, u32, u32)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, kind, major, minor) in nodes {
        let p = dir.join(name);
        common::run(
            "mknod",
            &[
                "-m",
                "666",
                p.to_str().unwrap(),
                kind,
                &major.to_string(),
                &minor.to_string(),
            ],
        );
    }
}

/// Binds host directory `dir` (on the test's tmpfs, mounted without `nodev`) at `at` in the
/// env's mount namespace, from a child process that joins it.
fn bind_into(env: &Env, dir: &Path, at: &str) {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        dir,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .unwrap();
    let mntns = std::fs::File::open(format!("/proc/{}/ns/mnt", env.state.init_pid)).unwrap();
    let at = at.to_string();
    let mut cmd = Command::new("true");
    // SAFETY: the child only makes syscalls (setns, move_mount) before exec.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::move_into_link_name_space(
                mntns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Mount),
            )?;
            rustix::mount::move_mount(
                tree.as_fd(),
                "",
                rustix::fs::CWD,
                at.as_str(),
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )?;
            Ok(())
        });
    }
    assert!(cmd.status().unwrap().success(), "binding into the env");
}

/// Opens each of `paths` for reading in `sh` and prints `NAME ok` or the shell's error.
const OPEN_EACH: &str = "for f in \"$@\"; do (exec 3< \"$f\") 2>&1 && echo \"$f ok\"; done";

#[test]
fn devices_off_the_list_do_not_open_even_without_nodev() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("devices"));
    let dir = node.path().join("devs");
    make_nodes(
        &dir,
        &[
            ("loop0", "b", 7, 0),
            ("loop-control", "c", 10, 237),
            ("null", "c", 1, 3),
        ],
    );
    env.ok("mkdir -p /mnt/devs");
    bind_into(&env, &dir, "/mnt/devs");
    let out = env.run(&[
        "sh",
        "-c",
        OPEN_EACH,
        "sh",
        "/mnt/devs/loop0",
        "/mnt/devs/loop-control",
        "/mnt/devs/null",
        "/dev/null",
        "/dev/urandom",
        "/dev/ptmx",
    ]);
    let out = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for (line, dev) in lines[..2].iter().zip(["loop0", "loop-control"]) {
        assert!(
            line.contains(dev) && line.contains("Operation not permitted"),
            "/mnt/devs/{dev} opened: {out}"
        );
    }
    assert_eq!(
        lines[2..],
        [
            "/mnt/devs/null ok",
            "/dev/null ok",
            "/dev/urandom ok",
            "/dev/ptmx ok"
        ]
    );
}

#[test]
fn the_v2_device_program_allows_only_the_list() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    runtime::mounts::mount(
        "none",
        root,
        "cgroup2",
        rustix::mount::MountFlags::empty(),
        "",
    )
    .unwrap();
    let cg = root.join(common::unique("sg-devices"));
    std::fs::create_dir(&cg).unwrap();
    runtime::devices::restrict_v2(&cg).unwrap();
    let procs =
        std::ffi::CString::new(cg.join("cgroup.procs").into_os_string().into_vec()).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        OPEN_EACH,
        "sh",
        "/dev/loop0",
        "/dev/loop-control",
        "/dev/null",
    ]);
    // SAFETY: the child only makes syscalls before exec (no allocation): "0" moves the
    // writer itself.
    unsafe {
        cmd.pre_exec(move || {
            let fd = rustix::fs::open(procs.as_c_str(), OFlags::WRONLY, Mode::empty())?;
            rustix::io::write(&fd, b"0")?;
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir(&cg);
    let _ = rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH);
    let out = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("/dev/loop0") && lines[0].contains("Operation not permitted"));
    assert!(lines[1].contains("/dev/loop-control") && lines[1].contains("not permitted"));
    assert_eq!(lines[2], "/dev/null ok");
}
