//! The mounted debootstrap snapshot lists exactly like the original rootfs; ids and offsets.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;

#[test]
fn mounted_snapshot_lists_like_the_original() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let m = Mounted::new(&data, "base", &tmp.path().join("mnt"), &[]);
    // Full listing, root mtime included: path, type, mode, owner, size, mtime, symlink target,
    // device numbers, xattrs (security.capability too), hardlink groups, sha256 of contents.
    let (want, got) = (fslist(&root), fslist(&m.dir));
    assert!(want.lines().count() > 6000);
    if want != got {
        let diff: Vec<_> = want
            .lines()
            .zip(got.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        panic!("listings differ, e.g. {diff:#?}");
    }
    assert!(
        got.contains("security.capability="),
        "{}",
        "no file capability listed"
    );
    assert!(got.contains("hardlink=usr/bin/perl"));
    // Again, now from the kernel's caches (plain readdir of cached listings and dentries).
    assert!(want == fslist(&m.dir), "second listing differs");
    // The same mount again is a no-op; the server measured the mount itself.
    let out = lib_ok(&data, &["mount", "base", m.dir.to_str().unwrap()]);
    assert!(out.contains("already mounted"), "{out}");
    let rec = m.record();
    eprintln!("server-side mount time: {} us", rec.mount_us);
    // umount waits for the server and removes the record.
    lib_ok(&data, &["umount", m.dir.to_str().unwrap()]);
    assert!(!snapfs::mount::running(rec.pid));
    assert!(snapfs::mount::Registry::new(&data).get(&m.dir).is_none());
    assert_eq!(
        snapfs::mount::state(&m.dir),
        snapfs::mount::State::NotMounted
    );
}

#[test]
fn uid_offset_shifts_every_owner_and_errors_leave_nothing_mounted() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let m = Mounted::new(
        &data,
        "base",
        &tmp.path().join("mnt"),
        &["--uid-offset", "100000"],
    );
    for p in ["etc/passwd", "var/lib/spawngrid-test", "usr/bin/perl", "."] {
        let (a, b) = (
            std::fs::symlink_metadata(root.join(p)).unwrap(),
            std::fs::symlink_metadata(m.dir.join(p)).unwrap(),
        );
        assert_eq!(
            (a.uid() + 100000, a.gid() + 100000),
            (b.uid(), b.gid()),
            "{p}"
        );
        assert_eq!((a.mode(), a.mtime()), (b.mode(), b.mtime()), "{p}");
        if !a.is_dir() {
            assert_eq!(a.size(), b.size(), "{p}");
        }
    }
    // Read-only: writes fail, the snapshot is untouched.
    assert!(std::fs::write(m.dir.join("etc/passwd"), b"x").is_err());
    // A bad name: one line, non-zero exit, nothing mounted.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = lib(&data, &["mount", "no-such-name", other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    assert_eq!(
        snapfs::mount::state(&other),
        snapfs::mount::State::NotMounted
    );
    // A score the library does not hold (only the server opens the library): one line
    // naming it, non-zero exit, nothing mounted, no keeper left.
    let missing = "ab".repeat(32);
    let out = lib(&data, &["mount", &missing, other.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&missing[..12]), "{err}");
    assert_eq!(
        snapfs::mount::state(&other),
        snapfs::mount::State::NotMounted
    );
    assert!(snapfs::mount::Registry::new(&data).get(&other).is_none());
    let out = lib(&data, &["umount", other.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn node_ids_resolve_from_the_snapshot_alone() {
    // Walk a snapshot by name with one namespace, then resolve every id with a fresh one (as a
    // restarted server would): same entries. Needs no root.
    let root = base_rootfs();
    let tmp = scratch();
    let data = data_with(tmp.path(), "base", &root);
    let (lib, snap_root) = opened(&data, "base");
    let walker = snapfs::nodes::Nodes::new(lib.clone(), snap_root.clone());
    let mut seen = Vec::new();
    let mut stack = vec![walker.root().clone()];
    while let Some(n) = stack.pop() {
        if let Ok(dir) = walker.dir(&n) {
            for i in 0..dir.tree.entries.len() {
                let c = walker.child(&n, &dir, i);
                seen.push((c.id, c.entry.name.clone()));
                stack.push(c);
            }
        }
    }
    assert_eq!(seen.len() as u64 + 1, walker.count());
    let fresh = snapfs::nodes::Nodes::new(lib, snap_root);
    for (id, name) in &seen {
        if id & snapfs::nodes::LINK_BIT != 0 {
            continue; // hardlink groups are known once handed out (see nodes.rs)
        }
        assert_eq!(&fresh.get(*id).unwrap().entry.name, name);
    }
    assert!(fresh.get(walker.count() + 1).is_err());
}
