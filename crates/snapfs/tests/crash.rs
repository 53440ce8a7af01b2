//! The promise when the server dies (kill -9): files already open keep reading the right
//! bytes (passthrough: the kernel reads the cache file directly), every new operation on the
//! mount fails with ENOTCONN, and the next `lib mount` of that directory detaches the dead
//! mount and serves it again.

mod common;

use common::*;
use std::io::{Read, Seek};
use std::os::unix::fs::FileExt;

#[test]
fn killed_server_keeps_open_files_readable_and_mount_recovers() {
    if !can_mount() {
        return;
    }
    let root = base_rootfs();
    let tmp = scratch();
    let data = data_with(tmp.path(), "base", &root);
    let at = tmp.path().join("mnt");
    let m = Mounted::new(&data, "base", &at, &[]);
    let big = "var/lib/spawngrid-test/big.bin";
    let want = std::fs::read(root.join(big)).unwrap();
    let mut f = std::fs::File::open(m.dir.join(big)).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    let pid = m.record().pid;
    sh(&format!("kill -9 {pid}"));
    while snapfs::mount::running(pid) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The open file reads on, correctly, from anywhere in it.
    f.rewind().unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert!(
        all == want,
        "open file read wrong bytes after the server died"
    );
    let mut tail = vec![0u8; 100];
    f.read_exact_at(&mut tail, want.len() as u64 - 100).unwrap();
    assert_eq!(tail, want[want.len() - 100..]);
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
    assert_eq!(f.read_at(&mut tail, 0).unwrap(), 100);
    drop(f);
    lib_ok(&data, &["umount", at.to_str().unwrap()]);
}
