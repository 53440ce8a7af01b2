//! Faults end to end (as root, issue 11): a library on a full disk, a crash at every named
//! point of a save and of an import (`library::faults`, built with the test-only `faults`
//! feature), and kill -9 at random moments of saves through the node and of imports. Each
//! time: no name half-bound, the env keeps running, `lib verify` is clean, the next save
//! works, and gc reclaims what the crash left.

use crate::common;

use common::site::*;
use common::Bg;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `spawngrid --json lib --data DATA ARGS` with the environment variables `vars`.
fn lib(site: &Site, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(common::bin())
        .args(["--json", "lib", "--data", site.data_str()])
        .args(args)
        .envs(vars.iter().copied())
        .env("SPAWNGRID_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `lib verify` finds nothing wrong.
fn verify_clean(site: &Site, when: &str) {
    let out = lib(site, &["verify"], &[]);
    assert!(
        out.status.success(),
        "{when}: lib verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Runs `lib gc`: the bytes it freed.
fn gc(site: &Site) -> u64 {
    let out = lib(site, &["gc"], &[]);
    assert!(out.status.success(), "lib gc: {}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    r["bytes_before"].as_u64().unwrap() - r["bytes_after"].as_u64().unwrap()
}

/// The names `user` has bound.
fn names(user: &User) -> Vec<String> {
    let scores = user.json("scores", &[]);
    scores
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// Files in the library's `tmp/` (what a dead writer left).
fn temps(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count())
}

/// `sha256sum` of `path` inside `user`'s env `env`.
fn sum(user: &User, env: &str, path: &str) -> String {
    let (code, out, err) = user.exec(env, &format!("sha256sum {path}"));
    assert_eq!(code, 0, "{err}");
    out.split_whitespace().next().unwrap().to_string()
}

/// A loop-mounted ext4 filesystem of a few MiB in a directory of its own (not on the site's
/// tmpfs, so the site can be unmounted first), unmounted on drop.
struct LoopDisk {
    dir: tempfile::TempDir,
}

impl LoopDisk {
    fn new(mib: u64) -> LoopDisk {
        let dir = tempfile::Builder::new()
            .prefix("spawngrid-e2e-disk-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let disk = LoopDisk { dir };
        std::fs::create_dir(disk.path()).unwrap();
        for args in [
            vec!["mkfs.ext4", "-q", "-F", image.to_str().unwrap()],
            vec!["mount", "-o", "loop", image.to_str().unwrap()],
        ] {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            if args[0] == "mount" {
                c.arg(disk.path());
            }
            let st = c.status().unwrap();
            assert!(st.success(), "{args:?} failed (these tests run as root)");
        }
        disk
    }

    /// Where it is mounted.
    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("umount").arg(self.path()).status();
            if ok.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A library on a 48 MiB ext4 disk of its own: a save of 64 MB of random bytes fails with
/// one line and binds nothing; the env keeps running; the library verifies and keeps no
/// temporary file; once the env's big file is gone, the next save works and is bit-exact.
#[test]
fn a_save_onto_a_full_disk_fails_in_one_line_and_loses_nothing() {
    let disk = LoopDisk::new(48);
    let site = Site::bare("disk-full");
    let library = disk.path().join("library");
    std::fs::create_dir_all(&site.data).unwrap();
    std::fs::set_permissions(
        &site.data,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(
        site.data.join("store.toml"),
        format!("library = \"file:{}\"\n", library.display()),
    )
    .unwrap();
    let site = site.populated();
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    let (code, _, err) = alice.exec(
        "base",
        "head -c 64000000 /dev/urandom > /root/big && echo kept > /root/mark",
    );
    assert_eq!(code, 0, "{err}");

    let err = alice.refused("save", &["base", "full"]);
    println!("the save onto a full disk: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("the library's disk is full (writing ")
            && err.contains(": No space left on device (os error 28)): the save bound nothing")
            && !err.contains("(os error 28): No space"),
        "{err}"
    );
    assert!(!names(&alice).contains(&"full".to_string()));
    assert_eq!(alice.exec("base", "cat /root/mark").1, "kept\n");
    verify_clean(&site, "after the full disk");
    assert_eq!(temps(&library), 0, "a partial pack was left in tmp/");

    let (code, _, err) = alice.exec(
        "base",
        "rm /root/big && head -c 4000000 /dev/urandom > /root/small",
    );
    assert_eq!(code, 0, "{err}");
    alice.ok("save", &["base", "after"]);
    verify_clean(&site, "after the next save");
    next_save_is_exact(&alice, "after", "/root/small");
    drop(site);
    drop(disk);
}

/// `saved` (just saved from env base) spawns with `path` as base has it; then both are boomed.
fn next_save_is_exact(alice: &User, saved: &str, path: &str) {
    alice.ok("spawn", &[saved, "--as", "copy"]);
    assert_eq!(sum(alice, "copy", path), sum(alice, "base", path));
    alice.ok("boom", &["copy"]);
    alice.ok("boom", &["base"]);
}

/// The node's pid.
fn node_pid(site: &Site) -> i32 {
    site.server.borrow().as_ref().unwrap().child.id() as i32
}

/// Starts the node on `addr` with environment `vars` (a fault point to crash at).
#[cfg(feature = "faults")]
fn start_with_vars(site: &Site, addr: &str, vars: &[(&str, &str)]) {
    site.start_cmd(
        &["serve", "--data", site.data_str(), "--listen", addr],
        vars,
    );
}

/// After a crash: the env is alive (thawed, its files there), `name` is not bound, the
/// library verifies.
#[cfg(feature = "faults")]
fn nothing_lost(site: &Site, alice: &User, name: &str, when: &str) {
    assert_eq!(alice.exec("base", "cat /root/mark").1, "kept\n", "{when}");
    assert!(!names(alice).contains(&name.to_string()), "{when}: bound");
    verify_clean(site, when);
}

/// For each point of a save, the node is started to crash there: the save fails, the
/// restarted node has the env running and thawed, the name unbound, the library clean; gc
/// reclaims the crashed save's packs (points from `pack-written` on), and the next save of
/// the same files works and is bit-exact. Then the same for `lib import` at each of its
/// points (all but `save-frozen`).
#[cfg(feature = "faults")]
#[test]
fn a_crash_at_every_point_binds_nothing_and_loses_nothing() {
    use library::faults::*;
    let site = Site::new("faults");
    site.start("127.0.0.1:0");
    let addr = site.addr();
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    assert_eq!(alice.exec("base", "echo kept > /root/mark").0, 0);
    let library = site.data.join("library");
    let reclaims = |p: &str| [PACK_WRITTEN, SNAPSHOT_COMMITTED, BEFORE_BIND].contains(&p);

    for &point in POINTS {
        let (code, _, err) = alice.exec(
            "base",
            &format!("head -c 3000000 /dev/urandom > /root/{point}"),
        );
        assert_eq!(code, 0, "{err}");
        site.stop();
        start_with_vars(&site, &addr, &[("SPAWNGRID_FAULT", point)]);
        let pid = node_pid(&site);
        let name = format!("crash-{point}");
        let out = alice.sg("save", &["base", name.as_str()], None);
        assert!(!out.status.success(), "{point}: the save did not crash");
        let status = site.server.borrow_mut().as_mut().unwrap().child.wait();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status.unwrap()),
            Some(libc::SIGKILL),
            "{point}: node {pid} did not die at the point: {}",
            site.log()
        );
        site.stop();
        site.start(&addr);
        nothing_lost(&site, &alice, &name, point);
        assert_eq!(
            temps(&library),
            0,
            "{point}: tmp/ kept a dead writer's file"
        );
        let freed = gc(&site);
        assert_eq!(
            freed > 0,
            reclaims(point),
            "{point}: gc freed {freed} bytes"
        );
        verify_clean(&site, &format!("{point}, after gc"));
        let after = format!("after-{point}");
        alice.ok("save", &["base", &after]);
        alice.ok("spawn", &[&after, "--as", "copy"]);
        let file = format!("/root/{point}");
        assert_eq!(sum(&alice, "copy", &file), sum(&alice, "base", &file));
        alice.ok("boom", &["copy"]);
    }

    let owner = alice.name.clone();
    for point in POINTS.iter().copied().filter(|p| *p != SAVE_FROZEN) {
        let src = site.scratch.join(format!("src-{point}"));
        std::fs::create_dir_all(&src).unwrap();
        let bytes: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ point.len() as u8)
            .collect();
        std::fs::write(src.join("data"), &bytes).unwrap();
        let name = format!("import-{point}");
        let args = [
            "--owner",
            owner.as_str(),
            "import",
            name.as_str(),
            src.to_str().unwrap(),
        ];
        let out = lib(&site, &args, &[("SPAWNGRID_FAULT", point)]);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGKILL),
            "{point}: lib import did not die at the point: {}",
            text(&out.stderr)
        );
        nothing_lost(&site, &alice, &name, &format!("import at {point}"));
        let freed = gc(&site);
        assert_eq!(
            freed > 0,
            reclaims(point),
            "{point}: gc freed {freed} bytes"
        );
        let out = lib(&site, &args, &[]);
        assert!(out.status.success(), "{point}: {}", text(&out.stderr));
        verify_clean(&site, &format!("import after {point}"));
    }
    alice.ok("boom", &["base"]);
}

/// `SPAWNGRID_KILL_ROUNDS` rounds (default 6; run once with 1000, see docs/status.md), each
/// a kill -9 at a random moment of either a save through the node (the node is killed) or a
/// `lib import` (the command is killed), spread over a little more than one takes. After
/// each: the env runs, thawed; the name is bound only if the kill came after the bind; the
/// library verifies (every round up to 100 rounds, then every hundredth of them). At the
/// end gc reclaims the dead writes and the library still verifies.
#[test]
fn kill_9_at_random_moments_of_saves_and_imports() {
    let rounds: usize = std::env::var("SPAWNGRID_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let seed = common::seed();
    let mut rng = common::Rng::new(seed);
    let site = Site::new("kill9");
    site.start("127.0.0.1:0");
    let addr = site.addr();
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    assert_eq!(alice.exec("base", "echo kept > /root/mark").0, 0);
    let owner = alice.name.clone();
    let src = site.scratch.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let change = |i: usize| {
        let (code, _, err) = alice.exec(
            "base",
            &format!("head -c 2000000 /dev/urandom > /root/r; echo {i} > /root/i"),
        );
        assert_eq!(code, 0, "{err}");
        let bytes: Vec<u8> = (0..500_000u64)
            .map(|k| (k.wrapping_mul(0x9e37_79b9) ^ (i as u64).wrapping_mul(7919) >> 3) as u8)
            .collect();
        std::fs::write(src.join("data"), bytes).unwrap();
    };
    let import = |name: &str| {
        Command::new(common::bin())
            .args([
                "lib",
                "--data",
                site.data_str(),
                "--owner",
                &owner,
                "import",
            ])
            .args([name, src.to_str().unwrap()])
            .env("SPAWNGRID_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long each takes here.
    change(0);
    let t = std::time::Instant::now();
    alice.ok("save", &["base", "probe-save"]);
    let save_time = t.elapsed();
    let t = std::time::Instant::now();
    assert!(import("probe-import").wait().unwrap().success());
    let import_time = t.elapsed();
    println!(
        "kill -9 loop: {rounds} rounds, seed {seed} (SPAWNGRID_TEST_SEED repeats it); a save \
         takes {save_time:?}, an import {import_time:?}"
    );

    let every = (rounds / 100).max(1);
    let packs = || {
        std::fs::read_dir(site.data.join("library/packs"))
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum::<usize>()
    };
    let (mut killed, mut bound, mut dead_packs) = (0, 0, 0);
    for i in 1..=rounds {
        change(i);
        let packs_before = packs();
        let name = format!("k{i}");
        let on_node = rng.unit() < 0.5;
        let full = if on_node { save_time } else { import_time };
        let delay = full.mul_f64(1.2 * rng.unit());
        if on_node {
            let pid = node_pid(&site);
            let client = &alice.client;
            let out = std::thread::scope(|s| {
                let saving =
                    s.spawn(|| client.sg_at(&addr, "save", &["base", name.as_str()], None));
                std::thread::sleep(delay);
                // SAFETY: signalling our own child (the node), not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                saving.join().unwrap()
            });
            site.stop();
            site.start(&addr);
            killed += usize::from(!out.status.success());
        } else {
            let mut bg = Bg(Some(import(&name)));
            std::thread::sleep(delay);
            let _ = bg.0.as_mut().unwrap().kill();
            killed += usize::from(!bg.wait().status.success());
        }
        let when = format!(
            "round {i} ({}, {delay:?})",
            if on_node { "save" } else { "import" }
        );
        assert_eq!(alice.exec("base", "cat /root/mark").1, "kept\n", "{when}");
        let was_bound = names(&alice).contains(&name);
        bound += usize::from(was_bound);
        dead_packs += usize::from(!was_bound && packs() > packs_before);
        if i % every == 0 || i == rounds {
            verify_clean(&site, &when);
        }
    }
    println!(
        "kill -9 loop: {killed} writes killed, {bound} names bound, {dead_packs} killed \
         after writing packs and before binding; verify clean"
    );
    let freed = gc(&site);
    println!("kill -9 loop: gc freed {freed} bytes");
    verify_clean(&site, "after gc");
    alice.ok("save", &["base", "last"]);
    next_save_is_exact(&alice, "last", "/root/r");
}
