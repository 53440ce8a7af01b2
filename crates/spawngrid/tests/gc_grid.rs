//! gc across a grid with the real binary and the real engines (Garage, PostgreSQL): two data
//! directories ("node A" and "node B") share one S3 prefix and one catalog schema.
//! - gc loops on A while B imports and retires names, 50 rounds: every name still bound at
//!   the end exports bit-exact (bytes, modes, times), from both nodes;
//! - gc loops on A while a node serving B saves an env 50 times (each round's files copied in
//!   with `cp`), and names are retired: every saved name exports bit-exact from A;
//! - a process importing a large tree is killed -9: no name is bound, verify is clean, its
//!   lease expires, one gc run marks its packs and a later one sweeps them.

use crate::common;
#[path = "../../store/tests/engines/mod.rs"]
mod engines;

use common::bin;
use common::site::{who, Site};
use engines::{bytes, listing};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Runs `spawngrid --json lib --data DATA ARGS...`.
fn lib(data: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--json")
        .arg("lib")
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("SPAWNGRID_DATA")
        .env("SPAWNGRID_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// [`lib`], which must succeed; its JSON output.
fn lib_ok(data: &Path, args: &[&str]) -> Value {
    let out = lib(data, args);
    assert!(
        out.status.success(),
        "spawngrid lib {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A tree for round `r`: files shared with other rounds (by `r % 4`), and its own.
fn round_tree(dir: &Path, r: u64) {
    use std::os::unix::fs::PermissionsExt;
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    for i in 0..6 {
        let seed = (r % 4) * 100 + i;
        let len = if i == 0 {
            700_000
        } else {
            20_000 + 5000 * i as usize
        };
        std::fs::write(shared.join(format!("s{i}")), bytes(seed, len)).unwrap();
    }
    let own = dir.join(format!("round{r}"));
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("data"), bytes(10_000 + r, 300_000)).unwrap();
    std::fs::write(own.join("small"), format!("round {r}\n")).unwrap();
    let mode = std::fs::Permissions::from_mode(0o600 + (r as u32 % 2) * 0o155);
    std::fs::set_permissions(own.join("small"), mode).unwrap();
}

/// Exports `name` from `data` and checks it against `src`.
fn assert_exports(data: &Path, name: &str, src: &Path, scratch: &Path) {
    let dest = scratch.join(format!(
        "export-{name}-{}",
        data.display().to_string().len()
    ));
    let _ = std::fs::remove_dir_all(&dest);
    lib_ok(data, &["export", name, dest.to_str().unwrap()]);
    assert!(
        listing(src) == listing(&dest),
        "{name} exported from {} differs from {}",
        data.display(),
        src.display()
    );
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn gc_on_a_while_b_imports_and_retires_50_rounds_loses_nothing() {
    let Some(e) = engines::engines("gc_50_rounds", 5) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    e.store(&a);
    e.store(&b);
    let srcs = t.path().join("src");
    let stop = AtomicBool::new(false);
    let mut bound: Vec<(String, PathBuf)> = Vec::new();
    let reports: Vec<Value> = std::thread::scope(|s| {
        let gc = s.spawn(|| gc_loop(&a, &stop));
        for r in 0..50u64 {
            let src = srcs.join(format!("r{r}"));
            round_tree(&src, r);
            let name = format!("round-{r}");
            lib_ok(&b, &["import", &name, src.to_str().unwrap()]);
            bound.push((name, src));
            // Retire an older name now and then, so gc has real work.
            if r % 3 == 2 {
                let (old, _) = bound.remove(bound.len() - 3);
                lib_ok(&b, &["retire", &old]);
            }
        }
        stop.store(true, Ordering::SeqCst);
        gc.join().unwrap()
    });
    // Two more runs, a grace apart: what the last loop run condemned is swept.
    let mut reports = reports;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1100));
        reports.push(lib_ok(&a, &["gc", "--grace", "1s"]));
    }
    for (i, (name, src)) in bound.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_exports(node, name, src, t.path());
    }
    let sum = |k: &str| {
        reports
            .iter()
            .map(|r| r[k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    let runs = reports.len() as f64;
    println!(
        "gc runs: {runs}; gc time {:.2} s in all, {:.3} s per run; marked {}, swept {} ({:.1} MB), \
         revived {}, kept for leases {}; library {:.1} MB at the end, {} names bound",
        sum("seconds"),
        sum("seconds") / runs.max(1.0),
        sum("marked"),
        sum("swept"),
        sum("bytes_swept") / 1e6,
        sum("revived"),
        sum("kept_because_lease"),
        reports.last().unwrap()["bytes_after"].as_f64().unwrap() / 1e6,
        bound.len()
    );
    assert!(
        sum("swept") > 0.0 && sum("marked") > 0.0,
        "gc had real work"
    );
    let verify = lib(&a, &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Runs `lib gc --grace 1s` on `a` until `stop`; its reports.
fn gc_loop(a: &Path, stop: &AtomicBool) -> Vec<Value> {
    let mut reports = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let out = lib(a, &["gc", "--grace", "1s"]);
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("no library in") {
            continue; // B has not written anything yet
        }
        assert!(out.status.success(), "gc on A failed: {err}");
        reports.push(serde_json::from_slice::<Value>(&out.stdout).unwrap());
    }
    reports
}

#[test]
fn gc_on_a_while_a_node_on_b_saves_50_rounds_loses_nothing() {
    let Some(e) = engines::engines("gc_node_saves", 5) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    e.store(&a);
    let site = Site::bare("gc-saves");
    e.store(&site.data());
    let site = site.populated();
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base", "--as", "w"]);
    let srcs = t.path().join("src");
    let stop = AtomicBool::new(false);
    let mut bound: Vec<(String, PathBuf)> = Vec::new();
    let mut reports = std::thread::scope(|s| {
        let gc = s.spawn(|| gc_loop(&a, &stop));
        for r in 0..50u64 {
            let src = srcs.join(format!("r{r}"));
            round_tree(&src, r);
            alice.ok("exec", &["w", "--", "rm", "-rf", "/work"]);
            alice.ok("cp", &[src.to_str().unwrap(), "w:/work"]);
            let name = format!("saved-{r}");
            alice.ok("save", &["w", &name]);
            bound.push((name, src));
            if r % 3 == 2 {
                let (old, _) = bound.remove(bound.len() - 3);
                let owner = who("alice");
                lib_ok(&site.data(), &["--owner", &owner, "retire", &old]);
            }
        }
        stop.store(true, Ordering::SeqCst);
        gc.join().unwrap()
    });
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1100));
        reports.push(lib_ok(&a, &["gc", "--grace", "1s"]));
    }
    let owner = who("alice");
    for (name, src) in &bound {
        let dest = t.path().join(format!("export-{name}"));
        lib_ok(
            &a,
            &["--owner", &owner, "export", name, dest.to_str().unwrap()],
        );
        assert!(
            listing(src) == listing(&dest.join("work")),
            "{name} exported from A differs from what was copied into the env"
        );
        std::fs::remove_dir_all(&dest).unwrap();
    }
    let sum = |k: &str| {
        reports
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    println!(
        "node saves under gc: {} gc runs, marked {}, swept {}, revived {}; {} names bound",
        reports.len(),
        sum("marked"),
        sum("swept"),
        sum("revived"),
        bound.len()
    );
    assert!(sum("swept") > 0, "gc had real work");
}

#[test]
fn an_import_killed_mid_write_binds_nothing_and_gc_reclaims_it() {
    let Some(e) = engines::engines("gc_kill_9", 3) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let store_a = e.store(&a);
    e.store(&b);
    let small = t.path().join("small");
    round_tree(&small, 0);
    lib_ok(&b, &["import", "small", small.to_str().unwrap()]);
    let lib_a = store_a.library().unwrap();
    let before = lib_a.packed_bytes().unwrap();
    let big = t.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..12 {
        std::fs::write(big.join(format!("f{i}")), bytes(5000 + i, 12 << 20)).unwrap();
    }
    let mut child = Command::new(bin())
        .args(["lib", "--data", b.to_str().unwrap(), "import", "big"])
        .arg(&big)
        .env("SPAWNGRID_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lib_a.packed_bytes().unwrap() <= before {
        assert!(Instant::now() < deadline, "the import wrote no pack");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let written = lib_a.packed_bytes().unwrap() - before;
    let cat = store_a.catalog().unwrap();
    assert!(cat.resolve("admin", "big").is_err(), "no name bound");
    assert_eq!(cat.live_leases().unwrap().len(), 1, "its lease outlives it");
    let verify = lib(&a, &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cat.live_leases().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dead import's lease never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mark = lib_ok(&a, &["gc", "--grace", "1s"]);
    assert!(mark["marked"].as_u64().unwrap() >= 1, "{mark}");
    std::thread::sleep(Duration::from_millis(1100));
    let sweep = lib_ok(&a, &["gc", "--grace", "1s"]);
    assert!(sweep["swept"].as_u64().unwrap() >= 1, "{sweep}");
    println!(
        "killed import: {:.1} MB of packs written, {:.1} MB swept",
        written as f64 / 1e6,
        sweep["bytes_swept"].as_f64().unwrap() / 1e6
    );
    assert_eq!(store_a.library().unwrap().packed_bytes().unwrap(), before);
    assert_exports(&a, "small", &small, t.path());
}
