//! Test helpers: the `spawngrid` binary, data directories with imported snapshots, mounts
//! that are always cleaned up (lazily unmounted on drop, even when a test fails).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Whether the tests can mount (they need root).
pub fn can_mount() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: snapfs tests need root (FUSE mounts, overlay, chroot)");
    false
}

/// The `spawngrid` binary: `$SPAWNGRID_BIN`, else target/release, else target/debug.
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("SPAWNGRID_BIN") {
        return p.into();
    }
    let t = workspace().join("target");
    for p in [t.join("release/spawngrid"), t.join("debug/spawngrid")] {
        if p.exists() {
            return p;
        }
    }
    panic!("build the CLI first: cargo build --release -p spawngrid");
}

/// Runs `spawngrid lib --data DATA ARGS...`.
pub fn lib(data: &Path, args: &[&str]) -> Output {
    lib_of(&bin(), data, args)
}

/// Runs `EXE lib --data DATA ARGS...` (a spawngrid binary other than the one built).
pub fn lib_of(exe: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .arg("lib")
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

/// Like [`lib`], failing the test (with its stderr) unless it succeeds; returns stdout.
pub fn lib_ok(data: &Path, args: &[&str]) -> String {
    lib_ok_of(&bin(), data, args)
}

/// Like [`lib_of`], failing the test unless it succeeds; returns stdout.
pub fn lib_ok_of(exe: &Path, data: &Path, args: &[&str]) -> String {
    let out = lib_of(exe, data, args);
    assert!(
        out.status.success(),
        "spawngrid lib {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The debootstrap test rootfs (built and cached by scripts/rootfs.sh).
pub fn base_rootfs() -> PathBuf {
    let out = Command::new(workspace().join("scripts/rootfs.sh"))
        .arg("base")
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/rootfs.sh base failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A scratch directory on the node's disk (not tmpfs: the cache lives there).
pub fn scratch() -> tempfile::TempDir {
    std::fs::create_dir_all("/var/tmp/snapfs-tests").unwrap();
    tempfile::tempdir_in("/var/tmp/snapfs-tests").unwrap()
}

/// The debootstrap rootfs, a scratch directory, and a data directory with the rootfs imported
/// as `base`; `None` (the test is skipped) without root.
pub fn base_library() -> Option<(PathBuf, tempfile::TempDir, PathBuf)> {
    if !can_mount() {
        return None;
    }
    let root = base_rootfs();
    let tmp = scratch();
    let data = data_with(tmp.path(), "base", &root);
    Some((root, tmp, data))
}

/// The library of data directory `data` and the root tree of admin's `name` in it.
pub fn opened(data: &Path, name: &str) -> (std::sync::Arc<library::Library>, library::Entry) {
    let backend = library::LocalBackend::open(data.join("library")).unwrap();
    let lib = std::sync::Arc::new(library::Library::open(std::sync::Arc::new(backend)).unwrap());
    let score = catalog::Catalog::open(data.join("catalog.db"))
        .unwrap()
        .resolve("admin", name)
        .unwrap();
    let root = lib.snapshot(&score).unwrap().root;
    (lib, root)
}

/// A library in `dir/lib` with `src` imported as a snapshot in this process (no CLI, no
/// catalog), and the snapshot's root.
pub fn imported(dir: &Path, src: &Path) -> (std::sync::Arc<library::Library>, library::Entry) {
    let backend = library::LocalBackend::open(dir.join("lib")).unwrap();
    let lib = library::Library::open_or_init(std::sync::Arc::new(backend)).unwrap();
    let opts = library::import::ImportOptions {
        author: "test".into(),
        note: String::new(),
        parent: None,
        progress: &library::progress::Silent,
        allow_devices: false,
    };
    let root = library::import::dir::import_dir(&lib, src, &opts)
        .unwrap()
        .snapshot
        .root;
    (std::sync::Arc::new(lib), root)
}

/// An overlay with `lower` as its lower layer and a 100 MiB tmpfs for its upper, under `dir`;
/// both mounts go when it is dropped.
pub struct Overlay {
    /// Where the overlay is mounted.
    pub merged: PathBuf,
    /// The upper layer.
    pub upper: PathBuf,
    _merged: Guard,
    _rw: Guard,
}

impl Overlay {
    /// Mounts it at `dir/merged` (the tmpfs at `dir/rw`).
    pub fn new(lower: &Path, dir: &Path) -> Overlay {
        let (rw, merged) = (dir.join("rw"), dir.join("merged"));
        std::fs::create_dir_all(&rw).unwrap();
        std::fs::create_dir_all(&merged).unwrap();
        sh(&format!(
            "mount -t tmpfs -o size=100M tmpfs '{}'",
            rw.display()
        ));
        let rw_guard = Guard(rw.clone());
        sh(&format!("mkdir '{0}/upper' '{0}/work'", rw.display()));
        sh(&format!(
            "mount -t overlay overlay -o lowerdir='{}',upperdir='{1}/upper',workdir='{1}/work',redirect_dir=off,metacopy=off '{2}'",
            lower.display(),
            rw.display(),
            merged.display()
        ));
        Overlay {
            _merged: Guard(merged.clone()),
            merged,
            upper: rw.join("upper"),
            _rw: rw_guard,
        }
    }
}

/// A data directory with `src` imported as `name`, device nodes kept (the mount is compared
/// with the whole original tree).
pub fn data_with(dir: &Path, name: &str, src: &Path) -> PathBuf {
    let data = dir.join("data");
    lib_ok(
        &data,
        &["import", "--allow-devices", name, src.to_str().unwrap()],
    );
    data
}

/// `python3 scripts/fslist.py ROOT` (full listing: metadata, xattrs, hardlinks, hashes).
pub fn fslist(root: &Path) -> String {
    let out = Command::new("python3")
        .arg(workspace().join("scripts/fslist.py"))
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fslist failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a shell script, failing the test if it fails; returns stdout.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "shell step failed: {script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A mount point that is lazily unmounted (and its server killed) when dropped.
pub struct Mounted {
    /// The data directory it was mounted from.
    pub data: PathBuf,
    /// The mount point.
    pub dir: PathBuf,
}

impl Mounted {
    /// Mounts `name` of `data` at a new directory `at` with extra `lib mount` arguments.
    pub fn new(data: &Path, name: &str, at: &Path, extra: &[&str]) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        let m = Mounted {
            data: data.to_path_buf(),
            dir: at.canonicalize().unwrap(),
        };
        let mut args = vec!["mount", name, at.to_str().unwrap()];
        args.extend_from_slice(extra);
        lib_ok(data, &args);
        m
    }

    /// The registry record of this mount.
    pub fn record(&self) -> snapfs::mount::Record {
        snapfs::mount::Registry::new(&self.data)
            .get(&self.dir)
            .expect("mount record")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let p = snapfs::mount::Registry::new(&self.data).log_path(&self.dir);
        std::fs::read_to_string(p).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let pid = snapfs::mount::Registry::new(&self.data)
            .get(&self.dir)
            .map(|r| r.pid);
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A mount of any filesystem made by a test, lazily unmounted on drop.
pub struct Guard(pub PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}
