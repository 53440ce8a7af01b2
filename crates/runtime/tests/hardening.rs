//! Escape classes closed at the runtime: device nodes in a lower open nothing inside the env,
//! host users other than root reach no env file (data directory 0700, nosuid mounts), and a
//! data directory under a parent the env's ids cannot traverse still spawns.

mod common;
use common::{busybox, Env, TestNode};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A private copy of the busybox root at `dir` with extra nodes made by `add` (as host root).
fn lower_with(dir: &Path, add: &str) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(busybox())
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("sh")
        .arg("-c")
        .arg(add)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{add}");
}

/// The options of the mount at `path` as `/proc/self/mountinfo` shows them (per-mount ones).
fn mount_options(path: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .rfind(|f| Path::new(f[4]) == path)
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| panic!("{} is not a mount point", path.display()))
}

#[test]
fn a_device_node_in_the_lower_opens_nothing_inside() {
    let node = TestNode::new();
    let lower = node.path().join("devices");
    // /dev/zero's numbers, readable and writable by anyone, and a setuid copy of busybox.
    lower_with(
        &lower,
        "mknod -m 666 zero c 1 5 && cp bin/busybox suid && chmod 4755 suid",
    );
    let mut opts = node.opts("devices");
    opts.lower = lower;
    let env = Env::spawn(&node.rt, &opts);
    // The node is there (a snapshot may hold one), but opening it is refused.
    assert_eq!(
        env.ok("stat -c '%F %t:%T' /zero"),
        "character special file 1:5\n"
    );
    let out = env.sh("head -c 4 /zero | od -An -tx1");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!text.contains("00 00 00 00"), "{text}");
    // The env's root and its lower are mounted nodev and nosuid.
    let dir = node.rt.env_dir(&env.state.name).unwrap();
    for m in [dir.join("root"), dir.join("lower")] {
        let opts = mount_options(&m);
        assert!(
            opts.split(',').any(|o| o == "nodev") && opts.split(',').any(|o| o == "nosuid"),
            "{}: {opts}",
            m.display()
        );
    }
}

#[test]
fn host_users_reach_no_env_file() {
    let node = TestNode::new();
    let mut opts = node.opts("private");
    opts.disk = true;
    opts.write_size = Some(64 << 20);
    let env = Env::spawn(&node.rt, &opts);
    // A setuid program owned by the env's root, on its write layer.
    env.ok("cp /bin/busybox /root/id && chmod 4755 /root/id");
    let data = &node.rt.data;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(data), 0o700);
    let dir = node.rt.env_dir(&env.state.name).unwrap();
    assert_eq!(mode(&dir.join("disk.img")), 0o600);
    // Host user nobody can neither read the env's files nor run its setuid program.
    let id = dir.join("root/root/id");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!(
            "cat {0}/root/etc/passwd; {1} id",
            dir.display(),
            id.display()
        ))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("root:"), "{text}");
    assert!(!text.contains("euid="), "{text}");
    assert_eq!(text.matches("Permission denied").count(), 2, "{text}");
}

#[test]
fn a_data_dir_under_a_parent_the_env_cannot_traverse_spawns() {
    let node = TestNode::new();
    // The data directory's parent: another user's, mode 0700 (a home directory).
    rustix::fs::chown(
        node.path(),
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let env = Env::spawn(&node.rt, &node.opts("parent"));
    assert_eq!(env.ok("echo inside; id -u"), "inside\n0\n");
    let (code, out, _) = env.run_via_init(&["cat", "/etc/passwd"]);
    assert_eq!((code, out.starts_with("root:")), (0, true));
}

/// A frozen env never hangs an exec: while a save holds its lock, an exec waits a bounded
/// time and then says why; once the save is gone (died, its lock released) with the env left
/// frozen, the next exec thaws it and runs.
#[test]
fn a_frozen_env_never_hangs_an_exec() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("frozen"));
    let cg = runtime::cgroup::Cgroup::of_env(&node.rt, &env.state.name, Some(&env.state));
    let lock = runtime::freeze::SaveLock::acquire(&node.rt, &env.state).unwrap();
    cg.freeze().unwrap();
    let wait = std::time::Duration::from_millis(100);
    let err = runtime::freeze::wait_thawed(&node.rt, &env.state, wait).unwrap_err();
    assert!(
        format!("{err:#}").contains("is frozen by a save in progress"),
        "{err:#}"
    );
    assert!(cg.frozen().unwrap());
    drop(lock);
    let (code, out, _) = env.run_via_init(&["echo", "thawed"]);
    assert_eq!((code, out.as_str()), (0, "thawed\n"));
    assert!(!cg.frozen().unwrap());
    assert_eq!(env.ok("echo entered"), "entered\n");
}
