//! The file cache: eviction under a tiny limit, corruption of library objects and cache files.

mod common;

use common::*;
use std::io::Read;

fn dir_bytes(p: &std::path::Path) -> u64 {
    let out = sh(&format!("find '{}' -type f -printf '%s\\n'", p.display()));
    out.lines().map(|l| l.parse::<u64>().unwrap()).sum()
}

#[test]
fn tiny_cache_evicts_and_every_read_stays_correct() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let cache = tmp.path().join("cache");
    let c = cache.to_str().unwrap();
    let m = Mounted::new(
        &data,
        "base",
        &tmp.path().join("mnt"),
        &["--cache-size", "5M", "--cache", c],
    );
    // Hashes every file (208 MB through a 5 MB cache), twice.
    let want = fslist(&root);
    assert_eq!(want, fslist(&m.dir));
    assert_eq!(want, fslist(&m.dir));
    let held = dir_bytes(&cache.join("files"));
    assert!(
        held <= 5 << 20,
        "cache holds {held} bytes with a 5 MiB limit"
    );
    assert!(m.log().lines().all(|l| !l.contains("ERROR")), "{}", m.log());
}

/// `n` incompressible bytes, different for each `seed`.
fn random(n: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut h = blake3::Hasher::new();
    h.update(&[seed]);
    h.finalize_xof().fill(&mut out);
    out
}

/// A data dir holding one incompressible file `good` and one `bad` (bytes returned).
fn small_snapshot(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let (good, bad) = (random(300_000, 1), random(300_000, 2));
    std::fs::write(src.join("good"), &good).unwrap();
    std::fs::write(src.join("bad"), &bad).unwrap();
    (data_with(dir, "small", &src), good, bad)
}

/// Flips one byte in the middle of the first occurrence of `needle` in any file below `dir`.
fn flip_in(dir: &std::path::Path, needle: &[u8]) {
    for e in walk(dir) {
        let mut bytes = std::fs::read(&e).unwrap();
        if let Some(pos) = bytes.windows(64).position(|w| w == &needle[..64]) {
            bytes[pos + 1000] ^= 0x55;
            std::fs::write(&e, bytes).unwrap();
            return;
        }
    }
    panic!("bytes not found under {}", dir.display());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn corrupt_object_is_eio_and_the_log_names_its_score() {
    if !can_mount() {
        return;
    }
    let tmp = scratch();
    let (data, good, bad) = small_snapshot(tmp.path());
    flip_in(&data.join("library/packs"), &bad);
    let m = Mounted::new(&data, "small", &tmp.path().join("mnt"), &[]);
    assert_eq!(std::fs::read(m.dir.join("good")).unwrap(), good);
    let err = std::fs::read(m.dir.join("bad")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let score = library::Score::of(&bad).to_hex();
    assert!(
        m.log().contains(&score),
        "log does not name {score}:\n{}",
        m.log()
    );
    // Never wrong bytes: nothing of the bad file reached the cache.
    assert!(!walk(&data.join("cache/files"))
        .iter()
        .any(|p| p.ends_with(&score)));
}

#[test]
fn corrupt_cache_file_is_detected_after_restart_and_fetched_again() {
    if !can_mount() {
        return;
    }
    let tmp = scratch();
    let (data, good, _) = small_snapshot(tmp.path());
    let at = tmp.path().join("mnt");
    let m = Mounted::new(&data, "small", &at, &[]);
    assert_eq!(std::fs::read(m.dir.join("good")).unwrap(), good);
    lib_ok(&data, &["umount", at.to_str().unwrap()]);
    drop(m);
    flip_in(&data.join("cache/files"), &good);
    let m = Mounted::new(&data, "small", &at, &[]);
    let mut got = Vec::new();
    std::fs::File::open(m.dir.join("good"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(got == good, "served bytes differ from the snapshot");
    let score = library::Score::of(&good).to_hex();
    assert!(
        m.log()
            .lines()
            .any(|l| l.contains(&score) && l.contains("does not match")),
        "log does not name {score}:\n{}",
        m.log()
    );
}

/// The fetch-ahead brings the loader, its cache, libc and the shell into the file cache
/// (symlinks followed inside the snapshot: `lib64` → `usr/lib64`, then an absolute link to
/// `/lib/...` → `usr/lib`), with the bytes the rootfs has; a path the snapshot lacks is none.
#[test]
fn the_fetch_ahead_brings_the_first_command_files() {
    let Some((root, tmp, data)) = base_library() else {
        return;
    };
    let (lib, snap_root) = opened(&data, "base");
    let nodes = snapfs::nodes::Nodes::new(lib.clone(), snap_root.clone());
    // Where each file is in the rootfs itself (its symlinks resolved by hand).
    let expected = [
        ("etc/ld.so.cache", "etc/ld.so.cache"),
        (
            "lib64/ld-linux-x86-64.so.2",
            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        (
            "lib/x86_64-linux-gnu/libc.so.6",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
        ),
        ("bin/sh", "usr/bin/dash"),
    ];
    assert!(snapfs::warm::resolve(&nodes, "no/such/file").is_none());
    let cache = snapfs::Cache::open(&tmp.path().join("cache"), 1 << 30).unwrap();
    snapfs::warm::fetch(&lib, snap_root, &cache);
    for (path, real) in expected {
        assert!(snapfs::warm::FIRST_FILES.contains(&path), "{path}");
        let node = snapfs::warm::resolve(&nodes, path).unwrap_or_else(|| panic!("{path}"));
        let library::Content::File {
            data: library::FileData::Blob(s) | library::FileData::Chunks(s),
            ..
        } = &node.entry.content
        else {
            panic!("{path} is not a regular file with contents");
        };
        let want = std::fs::read(root.join(real)).unwrap();
        assert_eq!(std::fs::read(cache.path(s)).unwrap(), want, "{path}");
    }
}

/// Bytes in use on the filesystem holding `dir` (unlinked files still open included).
fn used(dir: &std::path::Path) -> u64 {
    let st = rustix::fs::statfs(dir).unwrap();
    (st.f_blocks - st.f_bfree) * st.f_bsize as u64
}

/// The cache's limit bounds the disk its files use, files the kernel still holds as
/// passthrough backing files included: a server mounted in this process (one thread, so a
/// `statfs` of the mount is answered after the `release`s of the files closed before it) with
/// its cache alone on a fresh tmpfs reads 48 files of 64 KiB, one held open all along,
/// through a 1 MiB cache, twice. After each file, the bytes the tmpfs has in use (beyond
/// the empty cache's `VERSION` page) are the cache's total, within the limit: the files are
/// page multiples, so no slack. The recent backing ids used to keep every file read on disk,
/// unlinked and uncounted (3 MiB). Last, with the mount gone, every pin is given back: using
/// the files once more through the cache leaves exactly the last 16 in it.
#[test]
fn the_cache_limit_bounds_its_disk_use_with_backing_files_held() {
    if !can_mount() {
        return;
    }
    let tmp = scratch();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..48u8)
        .map(|i| (format!("f{i:02}"), random(64 << 10, i)))
        .collect();
    for (name, bytes) in &files {
        std::fs::write(src.join(name), bytes).unwrap();
    }
    let (lib, root) = imported(tmp.path(), &src);
    let cache_dir = tmp.path().join("cache");
    std::fs::create_dir_all(&cache_dir).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=64M,huge=never tmpfs '{}'",
        cache_dir.display()
    ));
    let _tmpfs = Guard(cache_dir.clone());
    let limit = 1 << 20;
    let cache = std::sync::Arc::new(snapfs::Cache::open(&cache_dir, limit).unwrap());
    let empty = used(&cache_dir);
    let nodes = snapfs::nodes::Nodes::new(lib.clone(), root.clone());
    let fs = snapfs::fs::SnapFs::new(
        lib.clone(),
        root,
        cache.clone(),
        snapfs::fs::FsOptions::default(),
        snapfs::journal::Journal::create(&tmp.path().join("ids")).unwrap(),
        Default::default(),
    );
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut cfg = fuser::Config::default();
    cfg.n_threads = Some(1);
    let session = fuser::spawn_mount(fs, &mnt, &cfg).unwrap();
    let _mount = Guard(mnt.clone());

    let mut open = std::fs::File::open(mnt.join(&files[0].0)).unwrap();
    for (name, bytes) in files.iter().chain(&files) {
        assert!(std::fs::read(mnt.join(name)).unwrap() == *bytes, "{name}");
        rustix::fs::statfs(&mnt).unwrap();
        let disk = used(&cache_dir) - empty;
        assert_eq!(
            disk,
            cache.total(),
            "after {name}: the disk against the count"
        );
        assert!(
            disk <= limit,
            "after {name}: {disk} bytes on disk, limit {limit}"
        );
    }
    let mut got = Vec::new();
    open.read_to_end(&mut got).unwrap();
    assert!(got == files[0].1, "the file open all along");
    drop(open);
    session.umount_and_join().unwrap();

    let paths: Vec<std::path::PathBuf> = files
        .iter()
        .map(|(name, bytes)| {
            let node = snapfs::warm::resolve(&nodes, name).unwrap();
            let library::Content::File {
                data: data @ (library::FileData::Blob(s) | library::FileData::Chunks(s)),
                ..
            } = &node.entry.content
            else {
                panic!("{name} is a file with contents");
            };
            let mut got = Vec::new();
            let mut f = cache.acquire(&lib, *s, data).unwrap();
            f.read_to_end(&mut got).unwrap();
            cache.release(s);
            assert!(got == *bytes, "{name} through the cache");
            cache.path(s)
        })
        .collect();
    let kept: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
    let last = (limit / (64 << 10)) as usize;
    assert_eq!(kept.iter().filter(|k| **k).count(), last, "{kept:?}");
    assert!(kept[files.len() - last..].iter().all(|k| *k), "{kept:?}");
    assert_eq!(used(&cache_dir) - empty, cache.total());
}
