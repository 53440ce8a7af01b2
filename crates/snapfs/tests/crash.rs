//! The promise when a server dies (docs/architecture.md, "Snapshot filesystem"): the keeper
//! starts another one on the same connection, and users notice nothing — open files, new
//! opens, calls in flight, overlays stacked on the mount. An upgrade (`lib restart`) is the same
//! replacement, with the binary now on disk. A crash loop, or the keeper's own death, ends the
//! mount: open files keep reading, new calls fail with ENOTCONN, the next mount recovers.

mod common;

use common::*;
use std::io::{Read, Seek};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BIG: &str = "var/lib/spawngrid-test/big.bin";

/// Kills the current server of `m` and waits until the keeper has started its replacement.
fn kill_server(m: &Mounted) {
    let before = m.record();
    sh(&format!("kill -9 {}", before.server));
    while m.record().restarts == before.restarts {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_ne!(m.record().server, before.server);
}

/// Up to `n` regular files of `root` (relative paths), in a stable order.
fn some_files(root: &Path, n: usize) -> Vec<PathBuf> {
    let out = sh(&format!(
        "cd '{}' && find usr/bin usr/lib etc -type f -size -200k | sort | head -n {n}",
        root.display()
    ));
    out.lines().map(PathBuf::from).collect()
}

#[test]
fn killed_server_is_replaced_and_its_users_carry_on() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let m = Mounted::new(&data, "base", &tmp.path().join("mnt"), &[]);
    let want_big = std::fs::read(root.join(BIG)).unwrap();
    let mut big = std::fs::File::open(m.dir.join(BIG)).unwrap();
    let mut head = vec![0u8; 4096];
    big.read_exact(&mut head).unwrap();
    // An inode the kernel holds open on a backing file the first server registered.
    let bash = std::fs::File::open(m.dir.join("bin/bash")).unwrap();
    // A hardlink the kernel has looked up (by the group's node id) but not opened.
    let link_a = m.dir.join("var/lib/spawngrid-test/hardlink-a");
    let ino = std::fs::metadata(&link_a).unwrap().ino();

    // Readers open and read files all along, through every replacement.
    let files = some_files(&root, 300);
    let want: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(root.join(f)).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, passes, dir) = (stop.clone(), passes.clone(), m.dir.clone());
        std::thread::spawn(move || -> Vec<String> {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (f, w) in files.iter().zip(&want) {
                    match std::fs::read(dir.join(f)) {
                        Ok(got) if &got == w => {}
                        Ok(_) => errors.push(format!("{}: wrong bytes", f.display())),
                        Err(e) => errors.push(format!("{}: {e}", f.display())),
                    }
                }
                passes.fetch_add(1, Ordering::Relaxed);
            }
            errors
        })
    };
    let wait_passes = |n: usize| {
        let target = passes.load(Ordering::Relaxed) + n;
        while passes.load(Ordering::Relaxed) < target {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_passes(1);
    for _ in 0..3 {
        kill_server(&m);
        wait_passes(2);
    }
    stop.store(true, Ordering::Relaxed);
    let errors = reader.join().unwrap();
    assert!(
        errors.is_empty(),
        "{} failed reads across server restarts, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(m.record().restarts, 3);

    // The file open all along reads on, correctly, from anywhere.
    big.rewind().unwrap();
    let mut all = Vec::new();
    big.read_to_end(&mut all).unwrap();
    assert!(all == want_big, "the open file read wrong bytes");
    // Opening an inode that is still open elsewhere reuses its predecessor's backing id.
    assert_eq!(
        std::fs::read(m.dir.join("bin/bash")).unwrap(),
        std::fs::read(root.join("bin/bash")).unwrap()
    );
    drop(bash);
    // The hardlink group's node id was handed out by a dead server.
    assert_eq!(
        std::fs::read(&link_a).unwrap(),
        std::fs::read(root.join("var/lib/spawngrid-test/hardlink-a")).unwrap()
    );
    let b = std::fs::metadata(m.dir.join("var/lib/spawngrid-test/hardlink-b")).unwrap();
    assert_eq!(b.ino(), ino);
    assert!(m.log().contains("starting another"), "{}", m.log());

    drop(big);
    // Unmounting ends the keeper and clears the registry.
    let keeper = m.record().pid;
    lib_ok(&data, &["umount", m.dir.to_str().unwrap()]);
    assert!(!snapfs::mount::running(keeper));
    let reg = snapfs::mount::Registry::new(&data);
    assert!(reg.get(&m.dir).is_none());
    assert!(!reg.journal_path(&m.dir).exists());
}

#[test]
fn without_passthrough_a_files_reads_stay_its_own_across_a_restart() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    // A file cache on an overlay: the kernel refuses it as a passthrough backing file, so
    // reads come to the server, by the file handle the kernel keeps across servers.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let cache = Overlay::new(&empty, &tmp.path().join("cache"));
    let m = Mounted::new(
        &data,
        "base",
        &tmp.path().join("mnt"),
        &["--cache", cache.merged.to_str().unwrap()],
    );
    let want_big = std::fs::read(root.join(BIG)).unwrap();
    let big = std::fs::File::open(m.dir.join(BIG)).unwrap();
    let mut head = vec![0u8; 4096];
    big.read_exact_at(&mut head, 0).unwrap();
    assert!(m.log().contains("passthrough refused"), "{}", m.log());
    kill_server(&m);
    // The new server opens another file; its handle must not be mistaken for the old one's.
    let other = std::fs::File::open(m.dir.join("bin/bash")).unwrap();
    let mut some = vec![0u8; 4096];
    other.read_exact_at(&mut some, 0).unwrap();
    let at = 1 << 20;
    let mut got = vec![0u8; 4096];
    big.read_exact_at(&mut got, at).unwrap();
    assert!(
        got == want_big[at as usize..at as usize + 4096],
        "the file open across the restart read another file's bytes"
    );
    drop((big, other));
}

#[test]
fn an_overlay_on_the_mount_keeps_working_across_server_deaths() {
    let Some((_, tmp, data)) = base_library() else {
        return;
    };
    let lower = Mounted::new(&data, "base", &tmp.path().join("lower"), &[]);
    let overlay = Overlay::new(&lower.dir, tmp.path());
    let merged = &overlay.merged;
    // A shell in the env works in a loop: new lookups, opens and execs in the lower layer.
    let mut env = std::process::Command::new("chroot")
        .arg(merged)
        .args([
            "/bin/sh",
            "-c",
            "n=0; while [ ! -e /tmp/stop ]; do \
               cat /etc/os-release >/dev/null && ls -R /usr/share/doc >/dev/null \
               && md5sum /usr/bin/* >/dev/null && echo $n > /tmp/passes \
               || echo \"pass $n failed\" >> /tmp/failures; n=$((n+1)); done",
        ])
        .spawn()
        .unwrap();
    let passes = || {
        std::fs::read_to_string(merged.join("tmp/passes"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    let wait_passes = |n: u32| {
        let from = passes().unwrap_or(0);
        while passes().is_none_or(|p| p < from + n) {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_passes(1);
    kill_server(&lower);
    wait_passes(2);
    kill_server(&lower);
    wait_passes(2);
    std::fs::write(merged.join("tmp/stop"), "").unwrap();
    assert!(env.wait().unwrap().success());
    let failures = std::fs::read_to_string(merged.join("tmp/failures")).unwrap_or_default();
    assert!(failures.is_empty(), "the env saw failures: {failures}");
    // Real work after the restarts: dpkg reads its database from the lower layer.
    let out = sh(&format!(
        "chroot '{}' dpkg-query -W -f '${{Package}}\\n' | wc -l",
        merged.display()
    ));
    assert!(out.trim().parse::<u32>().unwrap() > 50, "{out}");
}

#[test]
fn restart_replaces_the_server_with_the_binary_now_on_disk() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    // The "installed" binary: a copy that an upgrade will replace.
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let installed = bin_dir.join("spawngrid");
    std::fs::copy(bin(), &installed).unwrap();
    let at = tmp.path().join("mnt");
    std::fs::create_dir_all(&at).unwrap();
    let run = |args: &[&str]| lib_ok_of(&installed, &data, args);
    run(&["mount", "base", at.to_str().unwrap()]);
    let m = Mounted {
        data: data.clone(),
        dir: at.canonicalize().unwrap(),
    };
    let big = std::fs::File::open(m.dir.join(BIG)).unwrap();
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let old = m.record();
    assert_eq!(exe(old.server), installed);
    // The upgrade: a new file renamed over the old one, as package managers do.
    let staged = bin_dir.join("spawngrid.new");
    std::fs::copy(bin(), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    assert!(exe(old.server).to_string_lossy().ends_with(" (deleted)"));
    assert!(
        snapfs::mount::outdated(&old),
        "what the node checks at start"
    );
    let out = run(&["restart", at.to_str().unwrap()]);
    assert!(out.contains("restarted the server"), "{out}");
    let new = m.record();
    assert_eq!(new.pid, old.pid, "the keeper stays");
    assert_ne!(new.server, old.server);
    assert_eq!(
        exe(new.server),
        installed,
        "the new server runs the new file"
    );
    assert!(!snapfs::mount::running(old.server));
    assert!(!snapfs::mount::outdated(&new));
    let mut tail = vec![0u8; 100];
    let len = std::fs::metadata(root.join(BIG)).unwrap().len();
    big.read_exact_at(&mut tail, len - 100).unwrap();
    assert_eq!(
        tail,
        std::fs::read(root.join(BIG)).unwrap()[len as usize - 100..]
    );
    assert_eq!(
        std::fs::read(m.dir.join("etc/os-release")).unwrap(),
        std::fs::read(root.join("etc/os-release")).unwrap()
    );
    // A restart is not a crash: the log says it was asked for.
    assert!(m.log().contains("restart asked for"), "{}", m.log());
    let err = lib(&data, &["restart", tmp.path().to_str().unwrap()]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("has no running keeper"));
}

#[test]
fn a_crash_loop_gives_the_mount_up() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let m = Mounted::new(&data, "base", &tmp.path().join("mnt"), &[]);
    let keeper = m.record().pid;
    let reg = snapfs::mount::Registry::new(&data);
    for _ in 0..=snapfs::keeper::MAX_CRASHES {
        let Some(rec) = reg.get(&m.dir) else { break };
        sh(&format!("kill -9 {} || true", rec.server));
        while reg.get(&m.dir).is_some_and(|r| r.server == rec.server) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    while snapfs::mount::running(keeper) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(m.log().contains("giving the mount up"), "{}", m.log());
    assert!(reg.get(&m.dir).is_none(), "the record outlived the keeper");
    assert_eq!(
        snapfs::mount::state(&m.dir),
        snapfs::mount::State::NotMounted
    );
    // The directory can be mounted again.
    lib_ok(&data, &["mount", "base", m.dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(m.dir.join("etc/os-release")).unwrap(),
        std::fs::read(root.join("etc/os-release")).unwrap()
    );
}

#[test]
fn killed_keeper_ends_the_mount_and_the_next_mount_recovers() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let at = tmp.path().join("mnt");
    let m = Mounted::new(&data, "base", &at, &[]);
    let want = std::fs::read(root.join(BIG)).unwrap();
    let mut f = std::fs::File::open(m.dir.join(BIG)).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    let rec = m.record();
    sh(&format!("kill -9 {}", rec.pid));
    // The server dies with its keeper.
    while snapfs::mount::running(rec.pid) || snapfs::mount::running(rec.server) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The open file reads on, correctly (passthrough: the kernel holds the cache file).
    f.rewind().unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert!(
        all == want,
        "open file read wrong bytes after the keeper died"
    );
    // New operations: ENOTCONN.
    let err = std::fs::File::open(m.dir.join("etc/os-release")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    assert_eq!(snapfs::mount::state(&m.dir), snapfs::mount::State::Dead);
    // The next mount recovers the directory.
    let out = lib_ok(&data, &["mount", "base", at.to_str().unwrap()]);
    assert!(out.contains("mounted base"), "{out}");
    assert_eq!(
        std::fs::read(m.dir.join("etc/os-release")).unwrap(),
        std::fs::read(root.join("etc/os-release")).unwrap()
    );
    // The old descriptor still works (it pins the detached old mount).
    let mut tail = vec![0u8; 100];
    assert_eq!(f.read_at(&mut tail, 0).unwrap(), 100);
    drop(f);
    lib_ok(&data, &["umount", at.to_str().unwrap()]);
}

#[test]
fn a_foreground_mount_serves_until_unmounted() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let at = tmp.path().join("mnt");
    std::fs::create_dir_all(&at).unwrap();
    // A fresh data directory has no DATA/mounts yet: the keeper makes what it needs.
    assert!(!data.join("mounts").exists());
    let mut keeper = std::process::Command::new(bin())
        .arg("lib")
        .arg("--data")
        .arg(&data)
        .args(["mount", "base"])
        .arg(&at)
        .arg("--foreground")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let m = Mounted {
        data: data.clone(),
        dir: at.canonicalize().unwrap(),
    };
    while snapfs::mount::Registry::new(&data).get(&m.dir).is_none() {
        assert!(keeper.try_wait().unwrap().is_none(), "the keeper exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        m.record().pid,
        keeper.id(),
        "the command itself is the keeper"
    );
    assert_eq!(
        std::fs::read(m.dir.join("etc/os-release")).unwrap(),
        std::fs::read(root.join("etc/os-release")).unwrap()
    );
    lib_ok(&data, &["umount", m.dir.to_str().unwrap()]);
    let out = keeper.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("mounted"));
}

/// Regular, non-empty files of `root` under `under` with their sizes, in a stable order.
fn sized_files(root: &Path, under: &str) -> Vec<(PathBuf, u64)> {
    let out = sh(&format!(
        "cd '{}' && find {under} -type f -size +0 -size -1024k -printf '%s %p\\n' | sort -k2",
        root.display()
    ));
    out.lines()
        .map(|l| {
            let (size, path) = l.split_once(' ').unwrap();
            (PathBuf::from(path), size.parse().unwrap())
        })
        .collect()
}

/// Bytes the files under `dir` have allocated (directories not counted: tmpfs gives them
/// no pages).
fn allocated(dir: &Path) -> u64 {
    let out = sh(&format!(
        "find '{}' -type f -printf '%b\\n' | awk '{{s += $1}} END {{print s * 512}}'",
        dir.display()
    ));
    out.trim().parse().unwrap()
}

/// A restarted server counts the cache files its predecessor's backing ids still hold (the
/// kernel keeps those registered until they are reused or the mount goes): it pins them once
/// adopted, so reading twice the cache's limit afterwards evicts other files, and every byte
/// the cache's own tmpfs has in use is in a file the cache still lists. It used to evict
/// those files first (as files found on disk): unlinked, still held, uncounted.
#[test]
fn a_restarted_server_counts_the_files_its_predecessors_ids_hold() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=256M,huge=never tmpfs '{}'",
        cache.display()
    ));
    let _tmpfs = Guard(cache.clone());
    let limit: u64 = 8 << 20;
    let m = Mounted::new(
        &data,
        "base",
        &tmp.path().join("mnt"),
        &["--cache", cache.to_str().unwrap(), "--cache-size", "8M"],
    );
    let read = |path: &Path| {
        let got = std::fs::read(m.dir.join(path)).unwrap();
        assert!(got == std::fs::read(root.join(path)).unwrap(), "{path:?}");
    };
    // Below a quarter of the limit: the recent backing ids keep them all.
    let mut held = 0;
    let mut held_bytes = 0;
    for (path, size) in sized_files(&root, "etc") {
        if held_bytes + size > limit / 8 {
            break;
        }
        read(&path);
        held += 1;
        held_bytes += size;
    }
    assert!(held > 10, "{held} files in etc");
    kill_server(&m);
    let waited = std::time::Instant::now();
    let pinned = loop {
        let log = m.log();
        // Not a speed check: a server that never pins would leave this waiting forever.
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the new server never said it pinned the files: {log}"
        );
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("cache files the previous server"));
        if let Some(line) = line {
            let n = line
                .split("pinned ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            break n.parse::<usize>().unwrap();
        }
        assert!(!log.contains("ERROR"), "{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(pinned >= held, "pinned {pinned} of the {held} files read");
    let mut pressure = 0;
    for (path, size) in sized_files(&root, "usr") {
        if pressure > 2 * limit {
            break;
        }
        read(&path);
        pressure += size;
    }
    assert!(pressure > 2 * limit, "only {pressure} bytes in usr");
    let st = rustix::fs::statfs(&cache).unwrap();
    let used = (st.f_blocks - st.f_bfree) * st.f_bsize as u64;
    let listed = allocated(&cache);
    assert_eq!(
        used, listed,
        "the cache's tmpfs has {used} bytes in use, its files {listed}"
    );
    assert!(
        listed <= limit + held_bytes + (4 << 20),
        "{listed} bytes in the cache"
    );
}
