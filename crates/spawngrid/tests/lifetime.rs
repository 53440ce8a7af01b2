//! Env lifetimes end to end (as root): `spawn --ttl`, the node's `idle_timeout`, and what ends
//! an env (`on_expire`: boom, or save then boom), through the real node with short times;
//! every outcome is polled for, never timed.

use crate::common;

use common::site::*;
use std::time::Duration;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The user's notices, as `status` prints them.
fn notes(user: &User) -> String {
    user.ok("status", &[])
        .lines()
        .filter(|l| l.starts_with("note ("))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A ttl is a deadline kept on disk: the node down through it, the env waits; the node back,
/// it ends the env at once and says so. An env without a ttl is left alone.
#[test]
fn a_ttl_ends_the_env_even_across_a_node_restart() {
    let site = Site::new("ttl");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    let info = alice.json("spawn", &["base", "--ttl", "5s"]);
    let at = info["expiry"]["at"].as_u64().unwrap();
    assert_eq!(at, info["created"].as_u64().unwrap() + 5, "{info}");
    assert_eq!(
        (
            info["expiry"]["cause"].as_str(),
            info["expiry"]["then"].as_str()
        ),
        (Some("ttl"), Some("boom"))
    );
    alice.ok("spawn", &["base", "--as", "keep"]);
    let table = alice.ok("status", &[]);
    let row = table.lines().find(|l| l.starts_with("base ")).unwrap();
    assert!(row.contains("(ttl; boom)"), "{table}");
    let row = table.lines().find(|l| l.starts_with("keep ")).unwrap();
    assert!(!row.contains("ttl"), "{table}");

    let state = site
        .data()
        .join(format!("envs/base+{}/state.json", alice.name));
    site.stop();
    let stopped = now();
    while now() <= at {
        std::thread::sleep(Duration::from_millis(200));
    }
    if stopped < at {
        assert!(state.exists(), "ended while its node was down");
    }
    site.start("127.0.0.1:0");
    alice.login();
    eventually("the env past its ttl to end", || !state.exists());
    assert_eq!(alice.env_names(), ["keep"]);
    let notes = notes(&alice);
    assert!(
        notes.contains(
            "env base expired (its ttl (5s) ran out) and was boomed; its names are intact"
        ),
        "{notes}"
    );
    // Bad durations: a usage error before any request; the API refuses a zero ttl.
    let out = alice.sg("spawn", &["base", "--ttl", "soon"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("30m, 2h"),
        "{}",
        text(&out.stderr)
    );
    let auth = format!(r#"{{"Authorization": "Bearer {}"}}"#, alice.token());
    let (status, body) = site.raw(
        "POST",
        "/api/envs",
        &auth,
        br#"{"name": "base", "ttl": 0}"#,
        false,
    );
    assert_eq!(
        (status, body.contains("ttl must be at least 1 second")),
        (400, true),
        "{body}"
    );
    assert_eq!(alice.env_names(), ["keep"]);
}

/// The node's idle timeout: an env with a session running past it is not ended; idle envs
/// are, as their `on_expire` says: saved as ENV@TIME with their files, then boomed.
#[test]
fn the_idle_timeout_spares_busy_envs_and_saves_idle_ones() {
    let site = Site::new("idle");
    let config = site.config("idle_timeout = \"4s\"\non_expire = \"save\"\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    alice.login();
    let info = alice.json("spawn", &["base", "--as", "work"]);
    assert_eq!(
        (
            info["expiry"]["cause"].as_str(),
            info["expiry"]["then"].as_str()
        ),
        (Some("idle"), Some("save"))
    );
    let out = alice.ok("spawn", &["base", "--as", "quick", "--on-expire", "boom"]);
    assert!(
        out.contains("ends in ") && out.contains("(idle; boom)"),
        "{out}"
    );
    // A session twice as long as the timeout: the env is busy, not idle.
    let (code, stdout, stderr) = alice.exec("work", "echo kept > /f; sleep 8; echo alive");
    assert_eq!((code, stdout.as_str()), (0, "alive\n"), "{stderr}");
    eventually("the idle envs to end", || alice.env_names().is_empty());
    let notes = notes(&alice);
    assert!(
        notes.contains(
            "env quick expired (it was idle for 4s (the node's idle timeout)) and was boomed"
        ),
        "{notes}"
    );
    let saved = notes
        .split("env work expired (it was idle for 4s (the node's idle timeout)): saved as ")
        .nth(1)
        .and_then(|r| r.split(", then boomed").next())
        .unwrap_or_else(|| panic!("{notes}"))
        .to_string();
    assert!(saved.starts_with("work@20"), "{saved}");
    // The saved name holds what the env wrote (read offline: a spawn would go idle again).
    let lib = common::Lib::new(site.data());
    let out = site.scratch.join("saved");
    let owner = ["--owner", &alice.name];
    lib.ok(
        false,
        &[&owner[..], &["export", &saved, out.to_str().unwrap()]].concat(),
    );
    assert_eq!(std::fs::read_to_string(out.join("f")).unwrap(), "kept\n");
    let names = alice.json("scores", &[]);
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&saved.as_str()) && !names.iter().any(|n| n.starts_with("quick@")));
}
