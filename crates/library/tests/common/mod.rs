//! Test helpers: a full metadata listing of a directory tree, and a small tree with every kind
//! of entry the library must keep.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use library::import::ImportOptions;
use library::progress::Silent;
use library::{Library, LocalBackend};

/// Import options for tests: author and note "test", no parent, no progress, device nodes
/// kept (round trips keep everything).
pub fn opts() -> ImportOptions<'static> {
    ImportOptions {
        author: "test".into(),
        note: "test".into(),
        parent: None,
        progress: &Silent,
        allow_devices: true,
    }
}

/// A library in `dir/lib`.
pub fn library(dir: &Path) -> Library {
    Library::open_or_init(Arc::new(LocalBackend::open(dir.join("lib")).unwrap())).unwrap()
}

/// One line per entry: path, type, mode, uid, gid, size, mtime ns, link target, rdev, xattrs,
/// content hash and hardlink group (first path of the group). Root mtime is left out when
/// `root_mtime` is false.
pub fn listing(root: &Path, root_mtime: bool) -> Vec<String> {
    let mut paths = Vec::new();
    collect(root, Path::new(""), &mut paths);
    paths.sort();
    let mut groups: HashMap<(u64, u64), String> = HashMap::new();
    let mut out = Vec::new();
    for rel in paths {
        let full = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = std::fs::symlink_metadata(&full).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() {
                "chr"
            } else if ft.is_block_device() {
                "blk"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "socket"
            }
        };
        let shown = format!("{:?}", rel.as_os_str());
        let mtime = if rel.as_os_str().is_empty() && !root_mtime {
            "-".to_string()
        } else {
            format!("{}.{:09}", md.mtime(), md.mtime_nsec())
        };
        let mut line = format!(
            "{shown} {kind} {:o} {}:{} {} {mtime}",
            md.permissions().mode() & 0o7777,
            md.uid(),
            md.gid(),
            if ft.is_file() { md.len() } else { 0 }
        );
        if ft.is_symlink() {
            line += &format!(" -> {:?}", std::fs::read_link(&full).unwrap());
        }
        if kind == "chr" || kind == "blk" {
            line += &format!(" rdev={}", md.rdev());
        }
        if ft.is_file() {
            line += &format!(
                " blake3={}",
                blake3::hash(&std::fs::read(&full).unwrap()).to_hex()
            );
            if md.nlink() > 1 {
                let g = groups
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| shown.clone());
                line += &format!(" link={g}");
            }
        } else if !ft.is_dir() && md.nlink() > 1 {
            let g = groups
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| shown.clone());
            line += &format!(" link={g}");
        }
        for (k, v) in xattrs(&full) {
            line += &format!(" x:{k}={}", hex(&v));
        }
        out.push(line);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<std::path::PathBuf>) {
    out.push(rel.to_path_buf());
    let full = root.join(rel);
    if !std::fs::symlink_metadata(&full).unwrap().is_dir() {
        return;
    }
    for e in std::fs::read_dir(&full).unwrap() {
        collect(root, &rel.join(e.unwrap().file_name()), out);
    }
}

/// Xattrs of a path (not following symlinks), via getfattr-free syscalls.
pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let mut out = BTreeMap::new();
    let Ok(n) = rustix::fs::llistxattr(p, &mut buf[..]) else {
        return out;
    };
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut val = vec![0u8; 65536];
        let m = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut val[..]).unwrap();
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            val[..m].to_vec(),
        );
    }
    out
}

/// Runs a shell script, failing the test if it fails.
pub fn sh(script: &str) {
    let st = Command::new("sh").arg("-ec").arg(script).status().unwrap();
    assert!(st.success(), "shell step failed: {script}");
}

/// Fills `root` with one of everything: setuid file, sticky dir, symlinks (one pointing out of
/// the tree), a hardlink pair, char and block devices, a FIFO, xattrs (user and
/// security.capability), nanosecond mtimes, a name with a newline, an empty file and a big
/// file that will be chunked. Needs root.
pub fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    let r = root.display();
    sh(&format!(
        r#"cd '{r}'
        mkdir -p etc usr/bin tmp 'odd dir' deep/a/b/c
        printf 'root:x:0:0::/root:/bin/sh\n' > etc/passwd
        printf 'hello' > usr/bin/su && chmod 4755 usr/bin/su
        chmod 1777 tmp
        ln -s ../etc/passwd usr/passwd-link
        ln -s /etc/shadow escape-link
        printf 'shared' > usr/bin/a && ln usr/bin/a usr/bin/b
        mknod dev-null c 1 3 && mknod dev-loop b 7 0
        mkfifo fifo
        touch empty
        printf 'x' > "$(printf 'new\nline')"
        printf 'cap' > usr/bin/ping
        head -c 6000000 /dev/urandom > big.bin
        chown 1000:1000 'odd dir' && chown -h 33:33 usr/passwd-link
        touch -d '2020-01-02 03:04:05.123456789' etc/passwd deep/a/b/c
        "#
    ));
    setx(&root.join("etc/passwd"), "user.spawngrid", b"test");
    let cap = [
        0u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    setx(&root.join("usr/bin/ping"), "security.capability", &cap);
    setx(&root.join("odd dir"), "user.dir", b"1");
}

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}
