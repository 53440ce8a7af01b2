//! `spawngrid up` end to end (as root): from an empty data directory to a serving node with an
//! admin user and a busybox `base` (debootstrap is skipped: `--busybox`), a login and a spawn;
//! a second run keeps everything (no new password) and serves again.

use crate::common;

use common::site::*;
use std::process::Command;

#[test]
fn up_makes_a_working_node_once_and_keeps_it() {
    let site = Site::bare("up");
    let admin = site.user("admin");
    let data = site.data_str().to_string();
    let up_args = [
        "up",
        "--busybox",
        "--admin",
        &admin.name,
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
    ];
    // A random password, printed once on stdout before the node's "listening" line.
    let printed = site.start_cmd(&up_args, &[]);
    let line = printed
        .iter()
        .find(|l| l.starts_with(&format!("admin user {}, password ", admin.name)))
        .unwrap_or_else(|| panic!("no password line in {printed:?}"));
    let password = line.split_whitespace().nth(4).unwrap().to_string();
    assert_eq!(password.len(), 20, "{line}");
    let login = || {
        let out = admin.sg(
            "login",
            &["--password-stdin"],
            Some(&format!("{password}\n")),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    login();
    // The same node serves the web UI, and `up` says where.
    assert!(
        site.log().contains("in a browser: https://127.0.0.1:"),
        "{}",
        site.log()
    );
    let (code, page) = site.raw("GET", "/", "{}", b"", false);
    assert_eq!(code, 200);
    assert!(page.contains("<title>Spawngrid</title>"), "{page}");
    let scores = admin.ok("scores", &[]);
    assert!(scores.contains("base"), "{scores}");
    admin.ok("spawn", &["base"]);
    assert_eq!(admin.exec("base", "echo hi; id -u").1, "hi\n0\n");
    admin.ok("boom", &["base"]);
    // A user added later spawns the admin's base, shared with everyone; only admins share
    // with everyone.
    let bob = site.user("bob");
    site.admin(
        &[
            "user",
            "--data",
            &data,
            "add",
            &bob.name,
            "--password-stdin",
        ],
        Some(&format!("{}-pw\n", bob.name)),
    );
    bob.login();
    let shared = format!("{}/base", admin.name);
    assert!(bob.ok("scores", &[]).contains(&shared));
    bob.ok("spawn", &[&shared, "--as", "b"]);
    assert_eq!(bob.exec("b", "echo hi").1, "hi\n");
    bob.ok("save", &["b", "mine"]);
    let err = bob.refused("share", &["mine", "*"]);
    assert!(err.contains("only admins"), "{err}");
    bob.ok("boom", &["b"]);
    site.stop();

    // Again: the admin keeps the password, base is not imported twice.
    let printed = site.start_cmd(&up_args, &[]);
    assert!(printed.is_empty(), "printed again: {printed:?}");
    login();
    let log = Command::new(common::bin())
        .args([
            "lib",
            "--data",
            &data,
            "--owner",
            &admin.name,
            "log",
            "base",
        ])
        .output()
        .unwrap();
    assert!(log.status.success());
    assert_eq!(
        String::from_utf8_lossy(&log.stdout)
            .matches("busybox root")
            .count(),
        1
    );
    site.stop();
}

#[test]
fn up_refuses_a_base_that_does_not_exist_and_binds_nothing() {
    let site = Site::bare("up-bad");
    let data = site.data_str().to_string();
    let out = Command::new(common::bin())
        .args([
            "up",
            "--no-serve",
            "--data",
            &data,
            "--base",
            "/nonexistent/root",
        ])
        .env("SPAWNGRID_ADMIN_PASSWORD", "pw-from-env")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/root"), "{err}");
    let log = Command::new(common::bin())
        .args(["lib", "--data", &data, "--owner", "admin", "log", "base"])
        .output()
        .unwrap();
    assert!(!log.status.success(), "base bound after a failed up");
    // The password came from the environment: nothing printed on stdout.
    assert!(out.stdout.is_empty());
}
