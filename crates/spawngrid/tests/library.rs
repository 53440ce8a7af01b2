//! End-to-end tests of the library (issue 2) through the real `spawngrid lib` binary, on the
//! cached debootstrap rootfs and its modified copy (scripts/rootfs.sh; paths from
//! SPAWNGRID_ROOTFS_BASE / SPAWNGRID_ROOTFS_MODIFIED, as exported by scripts/test.sh).
//! Each test works in a data directory on its own tmpfs. Run as root.
//!
//! Trees are compared with scripts/fslist.py: every path with type, mode, owner, size, mtime in
//! ns, link target, rdev, xattrs (ACLs and capabilities included), content hash and hardlink group.

use crate::common;

use common::{
    assert_same_listing, base, base_listing, changed_bytes, fslist, listing_entries, modified,
    modified_listing, sh, Bg, Lib, Rng, Scratch,
};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

/// Quotes a path for bash.
fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

/// Makes a GNU tar (pax, xattrs, ACLs, numeric owners) of `root` at `tar`.
fn gnu_tar(root: &Path, tar: &Path) {
    sh(&format!(
        "tar --format=posix --xattrs --xattrs-include='*' --acls --numeric-owner -C {} -cf {} .",
        q(root),
        q(tar)
    ));
}

/// A small directory whose contents appear nowhere in the rootfs (no empty files or dirs).
fn small_tree(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..3 {
        std::fs::write(
            dir.join(format!("f{i}")),
            format!("spawngrid e2e {tag} file {i}\n"),
        )
        .unwrap();
    }
    std::fs::write(dir.join("sub/g"), format!("spawngrid e2e {tag} nested\n")).unwrap();
}

// --- 1 ----------------------------------------------------------------------------------------

#[test]
fn directory_round_trip_of_the_rootfs() {
    let t = Scratch::new("dir");
    let lib = Lib::new(t.join("data"));
    let imp = lib.import("base", base());
    assert_eq!(
        imp["warnings"].as_array().map(Vec::len),
        Some(0),
        "warnings: {imp}"
    );
    // Full listing, root mtime included: export restores the root directory's metadata too.
    lib.assert_exports_as("base", &t.join("out"), base_listing());
}

// --- 2 ----------------------------------------------------------------------------------------

#[test]
fn tar_in_and_tar_out() {
    let t = Scratch::new("tar");
    let lib = Lib::new(t.join("data"));
    let tar = t.join("base.tar");
    gnu_tar(base(), &tar);

    lib.import("dir", base());
    lib.import("tar", &tar);
    let tree = lib.tree("dir");
    assert_eq!(
        lib.tree("tar"),
        tree,
        "GNU tar of the rootfs and the directory give different trees"
    );

    // Out as .tar, .tar.zst and stdout.
    let out_tar = t.join("out.tar");
    let out_zst = t.join("out.tar.zst");
    let out_stdout = t.join("stdout.tar");
    lib.ok(false, &["export", "tar", s(&out_tar)]);
    lib.ok(false, &["export", "tar", s(&out_zst)]);
    let st = lib
        .cmd(false, &["export", "tar", "-"])
        .stdout(std::fs::File::create(&out_stdout).unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "export to stdout failed");
    for p in [&out_tar, &out_zst] {
        let partial = format!("{}.partial", p.display());
        assert!(!Path::new(&partial).exists(), "{partial} left behind");
    }

    // GNU tar extracts the exported tar into the original tree, all metadata included.
    let x = t.join("x");
    std::fs::create_dir(&x).unwrap();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C {}",
        q(&out_tar),
        q(&x)
    ));
    assert_same_listing(
        base_listing(),
        &fslist(&x),
        "GNU tar extraction of the export",
    );
    sh(&format!("rm -rf {}", q(&x)));

    // Every exported form imports back to the same tree.
    for (name, p) in [
        ("re-tar", &out_tar),
        ("re-zst", &out_zst),
        ("re-stdout", &out_stdout),
    ] {
        lib.import(name, p);
        assert_eq!(
            lib.tree(name),
            tree,
            "{} imports to another tree",
            p.display()
        );
    }

    // A tar on stdin.
    let st = lib
        .cmd(false, &["import", "--allow-devices", "stdin", "-"])
        .stdin(std::fs::File::open(&tar).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "import from stdin failed");
    assert_eq!(
        lib.tree("stdin"),
        tree,
        "tar on stdin imports to another tree"
    );
}

// --- 3 ----------------------------------------------------------------------------------------

#[test]
fn modified_copy_stores_only_the_difference() {
    let t = Scratch::new("mod");
    let lib = Lib::new(t.join("data"));
    lib.import("base", base());
    let imp = lib.import("mod", modified());
    let added = imp["stored_bytes_added"]
        .as_u64()
        .expect("stored_bytes_added");
    let changed = changed_bytes();
    // Changed data compresses; trees and chunk lists for the touched directories are extra.
    let allowance = 1 << 20;
    println!("stored growth {added} B for {changed} changed bytes (allowance {allowance} B)");
    assert!(added > 0, "nothing stored for the modified copy");
    assert!(
        added <= changed + allowance,
        "stored growth {added} B exceeds the {changed} changed bytes + {allowance} B"
    );

    lib.assert_exports_as("mod", &t.join("out"), modified_listing());

    let diff = lib.ok(false, &["diff", "base", "mod"]).stdout;
    let lines: BTreeSet<&str> = diff.lines().collect();
    for want in [
        "- /usr/share/doc/bash",
        "- /usr/share/doc/dpkg/copyright",
        "+ /usr/bin/make",
        "+ /usr/bin/python3.11",
        "+ /etc/spawngrid-modified",
        "M /var/lib/spawngrid-test/big.bin",
    ] {
        assert!(lines.contains(want), "diff lacks {want:?}:\n{diff}");
    }
    for unchanged in [
        "/etc/os-release",
        "/var/lib/spawngrid-test/xattr.txt",
        "/usr/bin/bash",
    ] {
        assert!(
            !lines.iter().any(|l| l.get(2..) == Some(unchanged)),
            "diff lists the unchanged {unchanged}"
        );
    }

    // The whole diff, from the JSON form, against what the two listings say changed: paths only
    // in base are removed, only in modified added, in both with any difference changed.
    let (a, b) = (
        listing_entries(base_listing()),
        listing_entries(modified_listing()),
    );
    let mut want = BTreeSet::new();
    for (p, la) in &a {
        match b.get(p) {
            None => want.insert(("removed", p.clone())),
            Some(lb) if lb != la && p != "/" => want.insert(("changed", p.clone())),
            Some(_) => false,
        };
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        want.insert(("added", p.clone()));
    }
    let rows = lib.ok(true, &["diff", "base", "mod"]).json();
    let got: BTreeSet<(&str, String)> = rows
        .as_array()
        .expect("diff --json is a list")
        .iter()
        .map(|r| {
            let c = match r["change"].as_str().unwrap() {
                "added" => "added",
                "removed" => "removed",
                "changed" => "changed",
                other => panic!("unknown change {other}"),
            };
            (c, r["path"].as_str().unwrap().to_string())
        })
        .collect();
    let missing: Vec<_> = want.difference(&got).take(20).collect();
    let extra: Vec<_> = got.difference(&want).take(20).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "lib diff disagrees with the listings ({} vs {} changes)\nnot reported: {missing:?}\nreported wrongly: {extra:?}",
        want.len(),
        got.len()
    );
}

// --- 4 ----------------------------------------------------------------------------------------

/// Pack files must be whole and well named: packs/<xx>/<64 hex digits starting with xx>.
fn assert_packs_well_named(data: &Path) {
    let packs = data.join("library/packs");
    if !packs.exists() {
        return; // killed before the library had any
    }
    for d in std::fs::read_dir(&packs).unwrap() {
        let d = d.unwrap();
        let dn = d.file_name().into_string().unwrap();
        assert!(d.file_type().unwrap().is_dir(), "stray {dn} in packs/");
        for f in std::fs::read_dir(d.path()).unwrap() {
            let f = f.unwrap();
            let n = f.file_name().into_string().unwrap();
            assert!(
                n.len() == 64 && n.starts_with(&dn) && n.bytes().all(|b| b.is_ascii_hexdigit()),
                "unexpected file packs/{dn}/{n}"
            );
        }
    }
}

fn dir_entries(p: &Path) -> Vec<String> {
    match std::fs::read_dir(p) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn kill_9_during_import_leaves_a_clean_library() {
    let t = Scratch::new("crash");
    // How long one import of the rootfs takes here, into an empty library.
    let probe = Lib::new(t.join("probe"));
    let start = Instant::now();
    probe.import("probe", base());
    let full = start.elapsed();
    sh(&format!("rm -rf {}", q(&probe.data)));

    let seed = common::seed();
    println!(
        "crash test: one import takes {full:?}; seed {seed} (set SPAWNGRID_TEST_SEED to repeat)"
    );
    let mut rng = Rng::new(seed);

    let lib = Lib::new(t.join("data"));
    let (mut killed, mut finished) = (0, 0);
    for i in 0..10 {
        let name = format!("crash{i}");
        // Spread over the whole import, a little past its end.
        let delay = full.mul_f64(1.2 * rng.unit());
        let child = lib
            .cmd(false, &["import", "--allow-devices", &name, s(base())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut bg = Bg(Some(child));
        std::thread::sleep(delay);
        let c = bg.0.as_mut().unwrap();
        let done_before = c.try_wait().unwrap().is_some();
        let _ = c.kill(); // SIGKILL
        let status = bg.wait().status;
        let tmp_dir = lib.data.join("library/tmp");
        let tmp_after_kill = dir_entries(&tmp_dir);
        println!(
            "  {name}: kill -9 after {delay:?} ({}), tmp/ held {} file(s)",
            if done_before {
                "already exited"
            } else {
                "killed"
            },
            tmp_after_kill.len()
        );
        if done_before {
            assert!(
                status.success(),
                "{name}: import failed on its own: {status}"
            );
        } else if tmp_dir.is_dir() {
            // A pack put takes milliseconds on tmpfs, so a kill rarely lands inside one: leave
            // what such a kill would, a partial temp file of the dead writer (named as in
            // docs/architecture.md, tmp/<pid>.<n>.tmp), to check that the next run removes it.
            let mut partial = b"SGPACK01".to_vec();
            partial.extend((0..100_000).map(|_| rng.next_u64() as u8));
            std::fs::write(tmp_dir.join(format!("{pid}.999999.tmp")), partial).unwrap();
        }

        if !lib.data.join("library/config").exists() {
            // Killed before the library existed: nothing was written, nothing to check.
            assert!(
                !done_before,
                "{name}: import exited {status} but made no library"
            );
            println!("  {name}: killed before the library was created");
            killed += 1;
            continue;
        }
        lib.verify_clean();
        assert_packs_well_named(&lib.data);
        let tmp = dir_entries(&tmp_dir);
        assert!(
            tmp.is_empty(),
            "{name}: tmp/ not cleaned by the next run: {tmp:?}"
        );
        if lib.bound(&name) {
            finished += 1;
            let out = t.join(format!("out{i}"));
            lib.assert_exports_as(&name, &out, base_listing());
            sh(&format!("rm -rf {}", q(&out)));
            lib.ok(false, &["retire", &name]);
        } else {
            assert!(
                !done_before,
                "{name}: import exited {status} but is not bound"
            );
            killed += 1;
        }
        // With no name bound, whatever the killed import left is unreachable and gc reclaims
        // all of it; the next round starts from an empty library, so its kill lands during
        // real writes.
        lib.ok(false, &["gc"]);
        lib.verify_clean();
        assert_eq!(
            lib.stored_bytes(),
            0,
            "{name}: gc left unreachable data behind"
        );
    }
    println!("crash test: {killed} killed mid-import, {finished} finished");

    // An import after a crash dedups against the packs the crash left: still exact.
    let mut victim = Bg(Some(
        lib.cmd(false, &["import", "--allow-devices", "half", s(base())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(full.mul_f64(0.6));
    let _ = victim.0.as_mut().unwrap().kill();
    victim.wait();
    let leftover = lib.stored_bytes();
    println!("crash test: a kill at 60% left {leftover} stored bytes");
    lib.import("after-crash", base());
    lib.verify_clean();
    lib.assert_exports_as("after-crash", &t.join("after"), base_listing());
}

// --- 5 ----------------------------------------------------------------------------------------

#[test]
fn a_flipped_byte_is_found_and_named() {
    let t = Scratch::new("corrupt");
    let lib = Lib::new(t.join("data"));
    let packs = lib.data.join("library/packs");
    let list_packs = || -> BTreeSet<std::path::PathBuf> {
        let mut v = BTreeSet::new();
        for d in std::fs::read_dir(&packs).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                v.insert(f.unwrap().path());
            }
        }
        v
    };
    lib.import("base", base());
    let base_packs = list_packs();
    let small = t.join("small");
    small_tree(&small, "corruption");
    lib.import("unrelated", &small);
    let small_packs: Vec<_> = list_packs().difference(&base_packs).cloned().collect();
    assert!(
        !small_packs.is_empty(),
        "the second import wrote no pack of its own"
    );
    lib.verify_clean();

    // Flip one byte in the middle of the stored bytes of the biggest frame of base's biggest
    // pack: an object's own bytes, not a frame header (the trailer still locates an object
    // whose header is damaged, so that damages the pack, not the snapshot).
    let victim = base_packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let (entries, err) = library::pack::scan(&bytes);
    assert!(err.is_none(), "a fresh pack does not scan: {err:?}");
    let frame = entries.iter().max_by_key(|e| e.stored_len).unwrap();
    let mid = (frame.offset + frame.stored_len / 2) as usize;
    bytes[mid] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    println!("flipped byte {mid} of {}", victim.display());

    let r = lib.run(false, &["verify"]);
    assert!(!r.ok, "verify exits 0 on a corrupt pack:\n{}", r.stdout);
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(
        text.lines()
            .any(|l| l.contains("damaged") && l.contains("base")),
        "verify does not name base:\n{text}"
    );
    assert!(
        !text.contains("unrelated"),
        "verify names the unaffected snapshot:\n{text}"
    );
    let r = lib.run(true, &["verify"]);
    assert!(!r.ok);
    let damaged: Vec<String> = r.json()["damaged_snapshots"]
        .as_array()
        .expect("damaged_snapshots")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(damaged.iter().any(|n| n.ends_with("base")), "{damaged:?}");
    assert!(
        !damaged.iter().any(|n| n.contains("unrelated")),
        "{damaged:?}"
    );

    // Export of the damaged name: one clear line, nothing left behind.
    for dest in ["out", "out.tar"] {
        let d = t.join(dest);
        let r = lib.run(false, &["export", "base", s(&d)]);
        assert!(!r.ok, "export of a damaged snapshot to {dest} succeeded");
        assert_eq!(
            r.error_lines().len(),
            1,
            "export to {dest}: not one line:\n{}",
            r.stderr
        );
        assert!(!d.exists(), "export to {dest} left {} behind", d.display());
        assert!(!t.join(format!("{dest}.partial")).exists());
    }
    // The unaffected name still exports exactly.
    lib.assert_exports_as("unrelated", &t.join("ok"), &fslist(&small));
}

// --- 6 ----------------------------------------------------------------------------------------

#[test]
fn gc_reclaims_space_and_loses_nothing() {
    let t = Scratch::new("gc");
    let lib = Lib::new(t.join("data"));
    lib.import("base", base());
    let start = Instant::now();
    lib.import("mod", modified());
    let mod_secs = start.elapsed();
    let before = lib.stored_bytes();
    lib.ok(false, &["retire", "mod"]);
    assert!(!lib.bound("mod"), "a retired name still resolves");
    lib.ok(false, &["gc"]);
    let after = lib.stored_bytes();
    println!("gc: {before} -> {after} stored bytes");
    assert!(after < before, "gc reclaimed nothing ({before} -> {after})");
    lib.assert_exports_as("base", &t.join("base-out"), base_listing());
    lib.verify_clean();

    // gc during an import. Each round first leaves the modified copy's data unreachable (import,
    // retire), so the import dedups against exactly what a careless gc would delete; gc starts
    // at various points of the import.
    for (round, frac) in [0.0, 0.3, 0.6].into_iter().enumerate() {
        let bait = format!("bait{round}");
        let name = format!("mod2-{round}");
        lib.import(&bait, modified());
        lib.ok(false, &["retire", &bait]);
        let import = Bg(Some(
            lib.cmd(true, &["import", "--allow-devices", &name, s(modified())])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
        std::thread::sleep(mod_secs.mul_f64(frac));
        let gc = lib.run(false, &["gc"]);
        let imp = import.wait();
        assert!(
            gc.ok,
            "round {round}: gc failed:\n{}{}",
            gc.stdout, gc.stderr
        );
        assert!(
            imp.status.success(),
            "round {round}: import beside gc failed:\n{}",
            String::from_utf8_lossy(&imp.stderr)
        );
        lib.verify_clean();
        let out = t.join(format!("out{round}"));
        lib.assert_exports_as(&name, &out, modified_listing());
        sh(&format!("rm -rf {}", q(&out)));
    }
    // And after one more gc with nothing in flight, both still export exactly.
    lib.ok(false, &["gc"]);
    lib.verify_clean();
    lib.assert_exports_as("mod2-2", &t.join("final-mod"), modified_listing());
    lib.assert_exports_as("base", &t.join("final-base"), base_listing());
}

// --- 7 ----------------------------------------------------------------------------------------

/// Writes a pax tar with python's tarfile (which, unlike GNU tar, writes any path it is given):
/// regular files `(path, data)`, then optionally one hard link `(path, target)`.
fn python_tar(path: &Path, entries: &[(&str, &[u8])], hardlink: Option<(&str, &str)>) {
    let mut script = String::from(
        "import io, sys, tarfile\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n",
    );
    for (name, data) in entries {
        script += &format!(
            "i = tarfile.TarInfo({name:?}); d = bytes({data:?}); i.size = len(d); i.mode = 0o644; t.addfile(i, io.BytesIO(d))\n"
        );
    }
    if let Some((name, target)) = hardlink {
        script += &format!(
            "i = tarfile.TarInfo({name:?}); i.type = tarfile.LNKTYPE; i.linkname = {target:?}; t.addfile(i)\n"
        );
    }
    script += "t.close()\n";
    let mut c = std::process::Command::new("python3")
        .arg("-")
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "python tarfile failed");
}

#[test]
fn bad_input_is_refused_cleanly() {
    let t = Scratch::new("bad");
    let lib = Lib::new(t.join("data"));
    let orig = t.join("orig");
    small_tree(&orig, "original");
    let orig_listing = fslist(&orig);
    lib.import("orig", &orig);
    let score = lib.score("orig");
    let snapshots = || lib.stats()["snapshots"].as_u64().unwrap();
    assert_eq!(snapshots(), 1);

    // Refused: one line, non-zero exit, nothing bound.
    let refused = |args: &[&str], what: &str| {
        let r = lib.run(false, args);
        assert!(!r.ok, "{what}: accepted");
        assert_eq!(
            r.error_lines().len(),
            1,
            "{what}: not one line:\n{}",
            r.stderr
        );
        assert!(r.stderr.starts_with("spawngrid: "), "{what}: {}", r.stderr);
        println!("{what}: {}", r.stderr.trim());
    };

    let other = t.join("other");
    small_tree(&other, "other");
    let long = "n".repeat(300);
    for name in ["a/b", "../x", "x..y", "", "a\nb", "-", long.as_str()] {
        refused(&["import", name, s(&other)], &format!("import as {name:?}"));
    }
    assert_eq!(snapshots(), 1, "a refused name bound something");

    // An existing name: refused, and it still means the original.
    refused(&["import", "orig", s(&other)], "import as an existing name");
    assert_eq!(lib.score("orig"), score, "orig was rebound");
    assert_eq!(snapshots(), 1);
    lib.assert_exports_as("orig", &t.join("orig-out"), &orig_listing);

    // A truncated tar (cut in the middle of a file's data).
    let big = t.join("big");
    std::fs::create_dir(&big).unwrap();
    let data: Vec<u8> = {
        let mut r = Rng::new(7);
        (0..(1 << 20)).map(|_| r.next_u64() as u8).collect()
    };
    std::fs::write(big.join("data.bin"), &data).unwrap();
    std::fs::write(big.join("z-last"), b"last\n").unwrap();
    let whole = t.join("whole.tar");
    gnu_tar(&big, &whole);
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = t.join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    refused(&["import", "trunc", s(&truncated)], "a truncated tar");
    assert!(!lib.bound("trunc"));

    // Garbage.
    let garbage = t.join("garbage.tar");
    std::fs::write(&garbage, &data[..10_000]).unwrap();
    refused(&["import", "garbage", s(&garbage)], "a garbage archive");
    assert!(!lib.bound("garbage"));

    // Entries escaping the root: a `../evil` path, and a hard link to `../../etc/passwd`.
    let evil = t.join("evil.tar");
    python_tar(&evil, &[("./ok", b"ok\n"), ("../evil", b"evil\n")], None);
    refused(&["import", "evil", s(&evil)], "a tar with ../evil");
    assert!(!lib.bound("evil"));
    let evil_link = t.join("evil-link.tar");
    python_tar(
        &evil_link,
        &[("./ok", b"ok\n")],
        Some(("./passwd", "../../etc/passwd")),
    );
    refused(
        &["import", "evil-link", s(&evil_link)],
        "a tar with a hard link out of the root",
    );
    assert!(!lib.bound("evil-link"));
    assert_eq!(snapshots(), 1, "a refused tar bound something");

    // An absolute path and a duplicate entry: either refused (one line, nothing bound) or
    // imported with a warning naming the entry, the result staying inside the root (the
    // duplicate: the last one wins, as with GNU tar).
    let abs = t.join("abs.tar");
    python_tar(&abs, &[("./ok", b"ok\n"), ("/abs", b"abs\n")], None);
    let dup = t.join("dup.tar");
    python_tar(&dup, &[("./ok", b"first\n"), ("./ok", b"second\n")], None);
    for (name, tar, entry) in [("abs", &abs, "/abs"), ("dup", &dup, "./ok")] {
        let r = lib.run(false, &["import", name, s(tar)]);
        if !r.ok {
            assert_eq!(r.error_lines().len(), 1, "{name}: {}", r.stderr);
            assert!(!lib.bound(name), "{name}: refused but bound");
            println!("{name}: refused: {}", r.stderr.trim());
            continue;
        }
        assert!(
            r.stderr.contains("warning") && r.stderr.contains(entry),
            "{name}: imported without a warning about {entry}: {:?}",
            r.stderr
        );
        let out = t.join(format!("{name}-out"));
        lib.ok(false, &["export", name, s(&out)]);
        if name == "dup" {
            assert_eq!(std::fs::read(out.join("ok")).unwrap(), b"second\n");
        } else {
            assert!(out.join("abs").exists() && out.join("ok").exists());
        }
        println!("{name}: imported with a warning");
    }

    // Export into a non-empty directory.
    let full = t.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"keep me\n").unwrap();
    let full_listing = fslist(&full);
    refused(
        &["export", "orig", s(&full)],
        "export into a non-empty directory",
    );
    assert_eq!(fslist(&full), full_listing, "the directory was touched");

    lib.verify_clean();
}

// --- export from the file cache -----------------------------------------------------------

/// The cache files (path, size) under `cache`, largest first.
fn cache_files(cache: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(cache.join("files")).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            out.push((f.path(), f.metadata().unwrap().len()));
        }
    }
    out.sort_by_key(|(p, len)| (std::cmp::Reverse(*len), p.clone()));
    out
}

/// Bytes `export --json` copied from the file cache.
fn from_cache(r: &common::Run) -> u64 {
    r.json()["bytes_from_cache"]
        .as_u64()
        .expect("bytes_from_cache")
}

#[test]
fn export_from_the_file_cache_is_exact_and_never_trusts_bad_copies() {
    let t = Scratch::new("cache");
    let lib = Lib::new(t.join("data"));
    lib.import("mod", modified());
    let out = |n: &str| t.join(n).to_str().unwrap().to_string();

    // No cache yet: everything comes from the library.
    let cold = lib.ok(true, &["export", "mod", &out("cold")]);
    assert_eq!(from_cache(&cold), 0);
    assert_same_listing(modified_listing(), &fslist(&t.join("cold")), "cold export");

    // --fill-cache: exact, and every file is then in the cache.
    let fill = lib.ok(true, &["export", "mod", &out("fill"), "--fill-cache"]);
    let all = from_cache(&fill);
    assert!(all > 100_000_000, "only {all} B went through the cache");
    assert_same_listing(
        modified_listing(),
        &fslist(&t.join("fill")),
        "filling export",
    );

    // Warm: every byte from the cache, same listing (contents, metadata, hardlinks).
    let warm = lib.ok(true, &["export", "mod", &out("warm")]);
    assert_eq!(from_cache(&warm), all);
    assert_same_listing(modified_listing(), &fslist(&t.join("warm")), "warm export");

    // --no-cache ignores it.
    let plain = lib.ok(true, &["export", "mod", &out("plain"), "--no-cache"]);
    assert_eq!(from_cache(&plain), 0);

    // A tar from the warm cache is the same archive, byte for byte, as one from the library.
    let tar_cold = lib.ok(true, &["export", "mod", &out("cold.tar"), "--no-cache"]);
    let tar_warm = lib.ok(true, &["export", "mod", &out("warm.tar")]);
    assert_eq!(from_cache(&tar_cold), 0);
    assert_eq!(from_cache(&tar_warm), all);
    assert!(
        std::fs::read(t.join("cold.tar")).unwrap() == std::fs::read(t.join("warm.tar")).unwrap(),
        "the warm tar differs from the cold one"
    );

    // A cached file with a flipped byte (the largest: a chunked file, re-hashed chunk by chunk)
    // and a truncated one are not used: the library is read for them, the export stays exact.
    let files = cache_files(&lib.data.join("cache"));
    let (flipped, flipped_len) = files[0].clone();
    let (cut, cut_len) = files
        .iter()
        .find(|f| f.1 > 1 && f.1 < 100_000)
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&flipped, bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(cut_len - 1).unwrap();
    let damaged = lib.ok(true, &["export", "mod", &out("damaged")]);
    let damaged_tar = lib.ok(true, &["export", "mod", &out("damaged.tar")]);
    assert!(from_cache(&damaged_tar) < all);
    assert!(
        std::fs::read(t.join("cold.tar")).unwrap() == std::fs::read(t.join("damaged.tar")).unwrap(),
        "a tar past a damaged cache differs from the cold one"
    );
    // (At most: a file with several names in the snapshot is written, and skipped, once.)
    assert!(
        from_cache(&damaged) <= all - flipped_len - cut_len,
        "damaged cache files were copied: {} of {all} B from the cache",
        from_cache(&damaged)
    );
    assert!(from_cache(&damaged) > 0);
    assert_same_listing(
        modified_listing(),
        &fslist(&t.join("damaged")),
        "export past a damaged cache",
    );
    assert!(
        damaged.stderr.contains("does not match its score")
            && damaged.stderr.contains("wrong size"),
        "no warnings about the damaged cache files:\n{}",
        damaged.stderr
    );
}

// --- container images -------------------------------------------------------------------------

/// The listing of `root` without the root directory's own line (an image export has no entry
/// for it).
fn below_root(root: &Path) -> String {
    let all = fslist(root);
    all.lines()
        .filter(|l| !l.starts_with(".\t"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// An image built by podman (layers with whiteouts, an opaque directory, setuid, symlinks),
/// saved as a docker-archive, an OCI archive and an OCI layout, imports as exactly what
/// `podman export` gives of a container of it; its settings land in the note; a damaged layer
/// is refused with one line and binds nothing. Needs podman (scripts/deps.sh test).
#[test]
fn container_images_import_as_podman_exports_them() {
    let t = Scratch::new("oci");
    let lib = Lib::new(t.join("data"));
    let busybox = common::repo_root().join("scripts/rootfs.sh");
    let p = format!(
        "podman --root {} --runroot {} --storage-driver vfs",
        q(&t.join("podman")),
        q(&t.join("podman-run"))
    );
    std::fs::write(
        t.join("Containerfile"),
        "FROM localhost/sgbase\n\
         RUN mkdir -p /opt/app/sub && echo hello > /opt/app/sub/f && ln -s sub/f /opt/app/link \
             && chmod 4755 /opt/app/sub/f && rm -rf /usr/share/udhcpc\n\
         RUN rm -rf /opt/app/sub && mkdir /opt/app/sub && echo new > /opt/app/sub/g \
             && rm /bin/vi && mkdir -p /var/lib/x && touch /var/lib/x/y\n\
         ENV GREETING=hi\nUSER 1000\nWORKDIR /opt/app\n\
         ENTRYPOINT [\"/bin/sh\", \"-c\"]\nCMD [\"echo hi\"]\n",
    )
    .unwrap();
    let dir = s(t.path());
    sh(&format!(
        "cd {dir} && tar -C \"$({} busybox)\" -cf base.tar . && \
         {p} import base.tar localhost/sgbase >/dev/null && \
         {p} build -q --isolation chroot -t localhost/sgtest . >/dev/null && \
         {p} save -q --format docker-archive -o docker.tar localhost/sgtest && \
         {p} save -q --format oci-archive -o oci.tar localhost/sgtest && \
         {p} save -q --format oci-dir -o layout localhost/sgtest && \
         c=$({p} create localhost/sgtest) && {p} export -o ref.tar $c && {p} rm $c >/dev/null && \
         mkdir ref && tar --numeric-owner --xattrs --xattrs-include='*' -xpf ref.tar -C ref",
        q(&busybox)
    ));
    let want = below_root(&t.join("ref"));
    // The layers did what the Containerfile says (so the comparison below means something).
    assert!(want.contains("opt/app/sub/g\t") && want.contains("opt/app/link\t"));
    assert!(!want.contains("opt/app/sub/f\t") && !want.contains("bin/vi\t"));
    assert!(!want.contains("usr/share/udhcpc"));

    for (name, path) in [
        ("docker", "docker.tar"),
        ("oci", "oci.tar"),
        ("layout", "layout"),
    ] {
        lib.import(name, &t.join(path));
        let out = t.join(format!("out-{name}"));
        lib.ok(false, &["export", name, s(&out)]);
        assert_same_listing(&want, &below_root(&out), &format!("{name} image"));
        let log = lib.ok(false, &["log", name]).stdout;
        assert!(
            log.contains(
                r#"image localhost/sgtest:latest {"cmd":["echo hi"],"entrypoint":["/bin/sh","-c"]"#
            ) && log.contains(r#""user":"1000","workdir":"/opt/app""#)
                && log.contains("GREETING=hi"),
            "{name}: {log}"
        );
    }

    // A flipped byte in the top layer: refused, naming the layer and the digest; nothing bound.
    let layout = t.join("layout");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = manifest["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(digest)).unwrap()).unwrap();
    let top = blob(
        m["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap(),
    );
    let mut bytes = std::fs::read(&top).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&top, bytes).unwrap();
    let r = lib.run(false, &["import", "damaged", s(&layout)]);
    assert!(!r.ok, "a damaged image imported");
    let lines = r.error_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("image layer 3") || lines[0].contains("gzip"),
        "{lines:?}"
    );
    assert!(!lib.bound("damaged"));

    // A layer whose content is not what the config's diff_id says (here the config lies):
    // refused at the layer's end, nothing bound.
    let docker = std::fs::read(t.join("docker.tar")).unwrap();
    let find = |from: usize, what: &[u8]| {
        from + docker[from..]
            .windows(what.len())
            .position(|w| w == what)
            .expect("a config in the docker archive")
    };
    let end = find(find(0, br#""diff_ids":["#), b"]");
    let mut lied = docker.clone();
    lied[end - 2] = if lied[end - 2] == b'0' { b'1' } else { b'0' };
    std::fs::write(t.join("lied.tar"), lied).unwrap();
    let r = lib.run(false, &["import", "lied", s(&t.join("lied.tar"))]);
    let lines = r.error_lines();
    assert!(!r.ok && lines.len() == 1, "{lines:?}");
    assert!(
        lines[0].contains("image layer 3") && lines[0].contains("content digest"),
        "{lines:?}"
    );
    assert!(!lib.bound("lied"));
    lib.verify_clean();
}
