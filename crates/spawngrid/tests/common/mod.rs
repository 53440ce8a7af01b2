//! Helpers for the end-to-end tests of `spawngrid lib` (tests/library.rs): running the real
//! binary, a scratch data directory on its own tmpfs, the cached test root filesystems and
//! their full metadata listings (scripts/fslist.py), and a small seeded PRNG.

#![allow(dead_code)]

pub mod site;
pub mod ssh;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `spawngrid` binary under test: `SPAWNGRID_BIN` if set (worktrees sharing one target
/// directory each link their own `target/release/spawngrid` over the others'), else the one
/// cargo built for these tests.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SPAWNGRID_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_spawngrid").to_string())
    })
}

fn rootfs(var: &str, which: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let out = Command::new(repo_root().join("scripts/rootfs.sh"))
        .arg(which)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/rootfs.sh");
    assert!(
        out.status.success(),
        "scripts/rootfs.sh {which} failed ({}); set {var} or run it by hand",
        out.status
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The debootstrap rootfs with metadata variety (`scripts/rootfs.sh base`).
pub fn base() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| rootfs("SPAWNGRID_ROOTFS_BASE", "base"))
}

/// Its modified copy (`scripts/rootfs.sh modified`).
pub fn modified() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| rootfs("SPAWNGRID_ROOTFS_MODIFIED", "modified"))
}

/// Bytes added or changed from base to modified (`scripts/rootfs.sh changed-bytes`).
pub fn changed_bytes() -> u64 {
    // The manifest lives next to the modified root (see scripts/rootfs.sh).
    let manifest = modified().parent().unwrap().join(".changed-bytes");
    let text = match std::fs::read_to_string(&manifest) {
        Ok(t) => t,
        Err(_) => {
            let out = Command::new(repo_root().join("scripts/rootfs.sh"))
                .arg("changed-bytes")
                .stderr(Stdio::inherit())
                .output()
                .expect("running scripts/rootfs.sh changed-bytes");
            assert!(
                out.status.success(),
                "scripts/rootfs.sh changed-bytes failed"
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    text.trim().parse().expect("changed-bytes is an integer")
}

/// The full canonical listing of `root` (scripts/fslist.py: path, type, mode, owner, size,
/// mtime in ns, link target, rdev, xattrs, sha256, hardlink groups), root mtime included.
pub fn fslist(root: &Path) -> String {
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/fslist.py"))
        .arg(root)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/fslist.py");
    assert!(out.status.success(), "fslist.py {} failed", root.display());
    let text = String::from_utf8(out.stdout).expect("fslist output is ASCII");
    assert!(
        !text.contains("\terror="),
        "fslist could not read something under {}",
        root.display()
    );
    text
}

/// The listing of the base rootfs, computed once per test process.
pub fn base_listing() -> &'static str {
    static L: OnceLock<String> = OnceLock::new();
    L.get_or_init(|| fslist(base()))
}

/// The listing of the modified rootfs, computed once per test process.
pub fn modified_listing() -> &'static str {
    static L: OnceLock<String> = OnceLock::new();
    L.get_or_init(|| fslist(modified()))
}

/// The entries of a listing: path (unescaped, lossy UTF-8, "/"-rooted; the root is "/") to the
/// rest of its line.
pub fn listing_entries(listing: &str) -> std::collections::BTreeMap<String, String> {
    listing
        .lines()
        .map(|l| {
            let (path, rest) = l.split_once('\t').expect("fslist line has fields");
            let path = if path == "." {
                "/".to_string()
            } else {
                format!("/{}", String::from_utf8_lossy(&unescape(path)))
            };
            (path, rest.to_string())
        })
        .collect()
}

/// Undoes fslist.py's path escaping (\\, \n, \t, \xNN).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Panics, showing the differing lines, unless `got` lists the same tree as `want`.
pub fn assert_same_listing(want: &str, got: &str, what: &str) {
    if want == got {
        return;
    }
    let a: BTreeSet<&str> = want.lines().collect();
    let b: BTreeSet<&str> = got.lines().collect();
    let only_a: Vec<&str> = a.difference(&b).take(15).copied().collect();
    let only_b: Vec<&str> = b.difference(&a).take(15).copied().collect();
    panic!(
        "{what}: listings differ ({} vs {} lines)\n--- only in the original:\n{}\n+++ only in the copy:\n{}",
        want.lines().count(),
        got.lines().count(),
        only_a.join("\n"),
        only_b.join("\n")
    );
}

/// A scratch directory with a fresh tmpfs mounted on it (the host's root filesystem degrades
/// under mass deletes); unmounted and removed on drop, also when the test panics.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("spawngrid-e2e-{tag}-"))
            .tempdir()
            .expect("creating a scratch directory");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=6g,mode=0755", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "mounting a tmpfs on {} failed: these tests run as root",
            dir.path().display()
        );
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let p = self.dir.path();
        let ok = Command::new("umount")
            .arg(p)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // Something still has a file open (a child of a panicking test): detach it.
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
        // TempDir removes the (now empty) mount point.
    }
}

/// Booms every env of node data directory `data` and unmounts its snapshot mounts: what a
/// test must not leave behind, whether it passed or not.
pub fn clean_envs(data: &Path) {
    let sg = |args: &[&str]| {
        Command::new(bin())
            .arg("--json")
            .arg(args[0])
            .arg("--data")
            .arg(data)
            .args(&args[1..])
            .output()
    };
    let envs: serde_json::Value = sg(&["env", "ls"])
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    for env in envs.as_array().into_iter().flatten() {
        let _ = sg(&["env", "boom", env["env"].as_str().unwrap_or("")]);
    }
    if let Ok(dirs) = std::fs::read_dir(data.join("mounts")) {
        for d in dirs.flatten().filter(|d| d.path().is_dir()) {
            let root = d.path().join("root");
            let _ = sg(&["lib", "umount", root.to_str().unwrap(), "--lazy"]);
        }
    }
}

/// A child process killed and reaped on drop unless it was waited for.
pub struct Bg(pub Option<Child>);

impl Bg {
    pub fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().expect("waiting")
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `spawngrid lib --data DATA ...` for one data directory.
pub struct Lib {
    pub data: PathBuf,
}

/// What a finished command printed.
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// The non-empty lines of stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl Lib {
    pub fn new(data: PathBuf) -> Lib {
        Lib { data }
    }

    /// A command line `spawngrid [--json] lib --data DATA ARGS...`.
    pub fn cmd(&self, json: bool, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        if json {
            c.arg("--json");
        }
        c.arg("lib").arg("--data").arg(&self.data).args(args);
        c.env_remove("SPAWNGRID_DATA")
            .env("SPAWNGRID_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs a command to completion.
    pub fn run(&self, json: bool, args: &[&str]) -> Run {
        Run::from(self.cmd(json, args).output().expect("running spawngrid"))
    }

    /// Runs a command that must succeed; returns its output.
    pub fn ok(&self, json: bool, args: &[&str]) -> Run {
        let r = self.run(json, args);
        assert!(
            r.ok,
            "spawngrid lib {} failed ({:?}):\n{}{}",
            args.join(" "),
            r.code,
            r.stdout,
            r.stderr
        );
        r
    }

    /// Imports a directory or tar file as `name`, device nodes kept (`--allow-devices`: these
    /// tests compare whole trees, devices included); returns the `--json` report.
    pub fn import(&self, name: &str, path: &Path) -> serde_json::Value {
        self.ok(
            true,
            &["import", "--allow-devices", name, path.to_str().unwrap()],
        )
        .json()
    }

    /// The root tree score of a name (first row of `log --json`).
    pub fn tree(&self, name: &str) -> String {
        let v = self.ok(true, &["log", name]).json();
        v[0]["tree"].as_str().expect("log has a tree").to_string()
    }

    /// The snapshot score of a name.
    pub fn score(&self, name: &str) -> String {
        let v = self.ok(true, &["log", name]).json();
        v[0]["score"].as_str().expect("log has a score").to_string()
    }

    /// True if `name` resolves.
    pub fn bound(&self, name: &str) -> bool {
        self.run(true, &["log", name]).ok
    }

    /// `stats --json`.
    pub fn stats(&self) -> serde_json::Value {
        self.ok(true, &["stats"]).json()
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stats()["stored_bytes"].as_u64().expect("stored_bytes")
    }

    /// `verify` must exit 0.
    pub fn verify_clean(&self) {
        let r = self.run(false, &["verify"]);
        assert!(
            r.ok,
            "verify is not clean ({:?}):\n{}{}",
            r.code, r.stdout, r.stderr
        );
    }

    /// Exports `name` to the new directory `dest` and compares its full listing with `want`.
    pub fn assert_exports_as(&self, name: &str, dest: &Path, want: &str) {
        self.ok(false, &["export", name, dest.to_str().unwrap()]);
        assert_same_listing(want, &fslist(dest), &format!("export of {name}"));
    }
}

/// Runs a shell command line that must succeed.
pub fn sh(script: &str) {
    let st = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .status()
        .expect("running bash");
    assert!(st.success(), "failed: {script}");
}

/// The seed of a test's random choices: `SPAWNGRID_TEST_SEED`, else the clock (print it, so
/// a failing run can be repeated).
pub fn seed() -> u64 {
    std::env::var("SPAWNGRID_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// splitmix64: a small deterministic PRNG for reproducible random kill points.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs tests/common/terminal.py: `argv` on a real pseudo-terminal (prompt, size, resize, ^C,
/// `exit 7`, terminal restored), with HOME set to `home` if given; panics with what it saw.
pub fn terminal_session(home: Option<&Path>, argv: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/terminal.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(home.map_or("-".into(), |h| h.display().to_string()))
        .arg("--")
        .args(argv)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "terminal session {argv:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
