//! Shared fixtures for the runtime tests: a runtime on a tmpfs, a busybox lower, a guard that
//! booms its env whatever happens, and a helper to run commands inside.

#![allow(dead_code)]

use runtime::{Runtime, SpawnOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A runtime whose data directory is a private tmpfs (unmounted on drop).
pub struct TestNode {
    pub rt: Runtime,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub fn new() -> TestNode {
        let dir = tempfile::Builder::new()
            .prefix("sg-rt-")
            .tempdir_in("/tmp")
            .unwrap();
        runtime::mounts::mount(
            "tmpfs",
            dir.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            "size=512m,mode=0755",
        )
        .unwrap();
        let helper = env!("CARGO_BIN_EXE_spawngrid-env-helper");
        let rt = Runtime::new(dir.path().join("data"), helper).unwrap();
        TestNode { rt, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Options for a fresh uniquely named env over the busybox root.
    pub fn opts(&self, prefix: &str) -> SpawnOptions {
        SpawnOptions::new(&unique(prefix), "tester", &busybox())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Ok(envs) = runtime::state::list(&self.rt) {
            for e in envs {
                let _ = runtime::boom::boom(&self.rt, &e.name);
            }
        }
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// A unique env name (tests run in parallel and share the host's cgroups).
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cached busybox root (built by scripts/rootfs.sh).
pub fn busybox() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rootfs.sh");
    let out = Command::new(script)
        .arg("busybox")
        .output()
        .expect("running scripts/rootfs.sh");
    assert!(
        out.status.success(),
        "rootfs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Booms env `name` when dropped (so a failing test still cleans up).
pub struct Env<'a> {
    pub rt: &'a Runtime,
    pub state: runtime::EnvState,
}

impl<'a> Env<'a> {
    pub fn spawn(rt: &'a Runtime, opts: &SpawnOptions) -> Env<'a> {
        let state = runtime::spawn::spawn(rt, opts).expect("spawn");
        Env { rt, state }
    }

    /// Runs `sh -c script` inside; returns the output.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["sh", "-c", script])
    }

    pub fn run(&self, argv: &[&str]) -> Output {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        runtime::exec::command(self.rt, &self.state, &argv, &[])
            .unwrap()
            .output()
            .unwrap()
    }

    /// Runs `argv` through the env's init (the exec service) with piped stdout and stderr;
    /// returns (exit code, stdout, stderr).
    pub fn run_via_init(&self, argv: &[&str]) -> (i32, String, String) {
        use rustix::fd::{AsFd, OwnedFd};
        use std::io::Read;
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let null = std::fs::File::open("/dev/null").unwrap();
        let (out_r, out_w) = rustix::pipe::pipe().unwrap();
        let (err_r, err_w) = rustix::pipe::pipe().unwrap();
        let stdio = [null.as_fd(), out_w.as_fd(), err_w.as_fd()];
        let started = runtime::service::start(self.rt, &self.state, &argv, &[], stdio).unwrap();
        drop((out_w, err_w));
        let read = |fd: OwnedFd| {
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s).unwrap();
            s
        };
        let err_thread = std::thread::spawn(move || read(err_r));
        let out = read(out_r);
        (started.wait().unwrap(), out, err_thread.join().unwrap())
    }

    /// Runs a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script:?} failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Env<'_> {
    fn drop(&mut self) {
        if let Err(e) = runtime::boom::boom(self.rt, &self.state.name) {
            eprintln!("boom {}: {e:#}", self.state.name);
        }
    }
}

/// One test at a time within a test binary: host-wide resources (interfaces, nft rules, the
/// subnet pool, fixed env ids) are checked for "nothing left" by each test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The nat link a nat env records.
pub fn link_of(env: &Env) -> runtime::net::NatLink {
    env.state.nat.clone().expect("a nat env records its link")
}

/// Runs a host command that must succeed; its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Builds `tests/probes/NAME.c` static with the host's C compiler into `dir`; its path.
pub fn build_probe(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/probes/{name}.c"));
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running cc (the probe tests need a C compiler and a static libc)");
    assert!(status.success(), "building {}", src.display());
    out
}

/// An env spawned with `opts` with probe `NAME` ([`build_probe`]) at `/probe`.
pub fn env_with_probe<'a>(node: &'a TestNode, opts: &SpawnOptions, name: &str) -> Env<'a> {
    let env = Env::spawn(&node.rt, opts);
    let probe = build_probe(node.path(), name);
    let argv = ["sh", "-c", "cat > /probe && chmod 755 /probe"].map(String::from);
    let out = runtime::exec::command(&node.rt, &env.state, &argv, &[])
        .unwrap()
        .stdin(std::fs::File::open(probe).unwrap())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env
}

/// Asserts that nothing of env `name` remains on the host.
pub fn assert_gone(node: &TestNode, name: &str, init_pid: i32) {
    let dir = node.rt.env_dir(name).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(name), "mounts left:\n{mountinfo}");
    let cg = runtime::cgroup::Cgroup::new(&node.rt.cgroups, name);
    for d in cg.dirs() {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    assert!(!dir.exists(), "{} left", dir.display());
    let owners = std::fs::read_dir(runtime::owners::HOST_OWNERS)
        .into_iter()
        .flatten();
    for claim in owners.flatten() {
        let holder = std::fs::read_link(claim.path()).unwrap_or_default();
        assert_ne!(holder, dir, "owner uid {:?} left", claim.file_name());
    }
    if init_pid > 0 {
        // Gone, or a zombie waiting for the host's init (its parent) to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{init_pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "init {init_pid} left: {stat}"
        );
    }
}
