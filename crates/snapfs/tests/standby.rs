//! A mount keeper started on standby (`lib standby`, the one a node keeps ahead): it mounts the
//! snapshot it is told and serves it as any keeper does (a killed server is replaced, the
//! output goes to the mount's log); one never told ends with its server when its stdin
//! closes; one told a snapshot its server cannot read fails with the server's error and
//! leaves nothing mounted, registered or running; one gone before it is told is replaced by a
//! keeper started then.

mod common;

use common::*;
use snapfs::launch::{LaunchError, Standby};
use snapfs::mount::{Registry, State};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `spawngrid lib --data DATA standby`, started on standby.
fn standby(data: &Path) -> Standby {
    let mut keeper = Command::new(bin());
    keeper
        .arg("lib")
        .arg("--data")
        .arg(data)
        .args(["standby", "--uid-offset", "0"]);
    Standby::start(keeper).unwrap()
}

/// The pids of the processes whose command line names `data`.
fn processes_of(data: &Path) -> Vec<u32> {
    let needle = data.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()?
                .rsplit(')')
                .next()?
                .trim_start()
                .starts_with('Z');
            (!zombie && cmdline.windows(needle.len()).any(|w| w == needle)).then_some(pid)
        })
        .collect()
}

/// Waits (up to 10 s) until `what` holds.
fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A new mount point under `dir`.
fn mount_point(dir: &Path) -> PathBuf {
    let at = dir.join("mnt");
    std::fs::create_dir_all(&at).unwrap();
    at.canonicalize().unwrap()
}

/// A data directory with a small tree imported as `small`.
fn small_library(tmp: &Path) -> PathBuf {
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), "hello from a standby\n").unwrap();
    data_with(tmp, "small", &src)
}

/// When this machine can mount: a scratch directory, a [`small_library`] in it, a mount
/// point and the library's mount registry.
fn small_mount() -> Option<(tempfile::TempDir, PathBuf, PathBuf, Registry)> {
    if !can_mount() {
        return None;
    }
    let tmp = scratch();
    let data = small_library(tmp.path());
    let at = mount_point(tmp.path());
    let registry = Registry::new(&data);
    Some((tmp, data, at, registry))
}

/// The score (hex) of `admin`'s name `name` in `data`'s catalog.
fn score_of(data: &Path, name: &str) -> String {
    catalog::Catalog::open(data.join("catalog.db"))
        .unwrap()
        .resolve("admin", name)
        .unwrap()
        .to_hex()
}

#[test]
fn a_keeper_on_standby_mounts_what_it_is_told_and_keeps_serving_it() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let at = mount_point(tmp.path());
    let mut s = standby(&data);
    // The keeper and its server are up before any mount is asked for.
    eventually("a keeper and a server on standby", || {
        processes_of(&data).len() == 2
    });
    assert!(s.waiting());
    assert_eq!(snapfs::mount::state(&at), State::NotMounted);

    let score = score_of(&data, "base");
    let registry = Registry::new(&data);
    let (rec, _) = s.mount(&registry, &at, &score).unwrap();
    let m = Mounted {
        data: data.clone(),
        dir: at.clone(),
    };
    assert_eq!(rec.score, score);
    assert_eq!(snapfs::mount::state(&at), State::Live);
    // The whole tree, bytes and every piece of metadata, as imported.
    assert_eq!(fslist(&at), fslist(&root));
    // Its output went to the mount's log once it knew the mount.
    let log = m.log();
    assert!(log.contains(&format!("mounted {score} at")), "{log}");
    assert!(log.contains("serving "), "{log}");

    // A killed server is replaced on the same connection, as for any keeper.
    let before = m.record();
    sh(&format!("kill -9 {}", before.server));
    eventually("a replacement server", || m.record().restarts == 1);
    assert_ne!(m.record().server, before.server);
    assert_eq!(
        std::fs::read(at.join("etc/os-release")).unwrap(),
        std::fs::read(root.join("etc/os-release")).unwrap()
    );

    lib_ok(&data, &["umount", at.to_str().unwrap()]);
    eventually("the keeper and its server gone after the unmount", || {
        processes_of(&data).is_empty()
    });
    assert!(registry.get(&at).is_none());
}

#[test]
fn a_keeper_on_standby_never_told_ends_with_its_server() {
    if !can_mount() {
        return;
    }
    let tmp = scratch();
    let data = small_library(tmp.path());
    let s = standby(&data);
    eventually("a keeper and a server on standby", || {
        processes_of(&data).len() == 2
    });
    // Dropped unused (the node's end of its stdin closes, as when the node exits).
    drop(s);
    eventually("the keeper and its server gone", || {
        processes_of(&data).is_empty()
    });
    assert!(Registry::new(&data).records().is_empty());
}

#[test]
fn a_keeper_on_standby_told_a_missing_snapshot_fails_and_leaves_nothing() {
    let Some((_tmp, data, at, registry)) = small_mount() else {
        return;
    };
    let s = standby(&data);
    let missing = "ab".repeat(32);
    let err = s.mount(&registry, &at, &missing).unwrap_err();
    let LaunchError::Exited { cause, .. } = &err else {
        panic!("want the keeper's exit, got {err}");
    };
    assert!(
        cause.contains(&format!("reading snapshot {missing}")),
        "{cause}"
    );
    assert_eq!(snapfs::mount::state(&at), State::NotMounted);
    assert!(registry.get(&at).is_none());
    eventually("the keeper and its server gone", || {
        processes_of(&data).is_empty()
    });
}

#[test]
fn a_keeper_on_standby_gone_before_it_is_told_is_replaced_by_a_new_keeper() {
    let Some((tmp, data, at, registry)) = small_mount() else {
        return;
    };
    let score = score_of(&data, "small");
    // Killed from outside after the node saw it waiting, before it was told its mount.
    let kill_standby = || {
        let s = standby(&data);
        eventually("a keeper and a server on standby", || {
            processes_of(&data).len() == 2
        });
        for pid in processes_of(&data) {
            sh(&format!("kill -9 {pid}"));
        }
        eventually("the keeper and its server gone", || {
            processes_of(&data).is_empty()
        });
        s
    };

    let err = kill_standby().mount(&registry, &at, &score).unwrap_err();
    assert!(matches!(err, LaunchError::Gone(_)), "{err}");
    assert_eq!(snapfs::mount::state(&at), State::NotMounted);
    assert!(registry.get(&at).is_none());

    // What the node calls: a keeper is started instead, and the mount is whole.
    let mut keeper = Command::new(bin());
    keeper
        .arg("lib")
        .arg("--data")
        .arg(&data)
        .args(["mount", &score])
        .arg(&at)
        .args(["--uid-offset", "0", "--keep"]);
    let (rec, _) = kill_standby()
        .mount_or_start(&registry, &at, &score, keeper)
        .unwrap();
    let _m = Mounted {
        data: data.clone(),
        dir: at.clone(),
    };
    assert_eq!(rec.score, score);
    assert_eq!(snapfs::mount::state(&at), State::Live);
    assert_eq!(fslist(&at), fslist(&tmp.path().join("src")));
    lib_ok(&data, &["umount", at.to_str().unwrap()]);
    eventually("the keeper and its server gone after the unmount", || {
        processes_of(&data).is_empty()
    });
}
