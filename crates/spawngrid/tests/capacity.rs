//! Node capacity end to end (as root): a full node refuses or evicts by policy, the evicted
//! owner's `status` says what happened, per-user limits hold, and `/metrics` counts it all.

use crate::common;

use common::site::*;

/// alice fills a two-env node; bob's spawn evicts alice's longest-idle env (not the one she
/// used last), alice's status tells her, and her names stay spawnable.
#[test]
fn a_full_node_evicts_the_longest_idle_env_of_the_user_over_share() {
    let site = Site::new("cap-evict");
    let config = site.config("[capacity]\nmax_envs = 2\npolicy = \"evict\"\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    let bob = site.user("bob");
    alice.login();
    bob.login();
    alice.ok("spawn", &["base", "--as", "old"]);
    alice.ok("spawn", &["base", "--as", "recent"]);
    // Idle times count in seconds: make `recent` clearly the more recently used.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(alice.exec("recent", "echo hi").1, "hi\n");
    let out = bob.ok("spawn", &["base"]);
    assert!(out.contains("ssh -p"), "{out}");

    let status = alice.ok("status", &[]);
    assert!(status.contains("recent"), "{status}");
    assert!(
        status.contains("note (") && status.contains("env old was evicted"),
        "{status}"
    );
    let envs = alice.json("status", &[]);
    let names: Vec<&str> = envs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["env"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["recent"]);
    // Bob sees no notice of alice's; alice's name is intact but the node is full for her.
    assert!(!bob.ok("status", &[]).contains("evicted"));
    let err = alice.refused("spawn", &["base", "--as", "again"]);
    assert!(err.contains("you are over your fair share"), "{err}");

    let (code, metrics) = site.raw("GET", "/metrics", "{}", b"", false);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("spawngrid_evictions_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("spawngrid_spawns_total{result=\"ok\"} 3\n"));
    assert!(metrics.contains("spawngrid_envs 2\n"));
    assert!(metrics.contains(
        "spawngrid_http_requests_total{route=\"/api/envs\",method=\"POST\",status=\"503\"} 1\n"
    ));
    bob.ok("boom", &["base"]);
    alice.ok("boom", &["recent"]);
}

/// `policy = "refuse"` and per-user limits: a clear 503 line, nothing spawned, nothing evicted.
#[test]
fn refusals_name_the_limit_and_change_nothing() {
    let site = Site::new("cap-refuse");
    let config =
        site.config("default_mem = \"64M\"\n[capacity]\nmax_envs = 2\nuser_max_mem = \"100M\"\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    let bob = site.user("bob");
    alice.login();
    bob.login();
    // Too little memory for an env at all: 400, whatever the node's room.
    let err = alice.refused("spawn", &["base", "--mem", "1M"]);
    assert!(err.contains("too small"), "{err}");
    alice.ok("spawn", &["base"]);
    let err = alice.refused("spawn", &["base", "--as", "two"]);
    assert!(err.contains("over your limit of 100M"), "{err}");
    bob.ok("spawn", &["base"]);
    // Within bob's own limit (64M + 16M), but the node has its two envs.
    let err = bob.refused("spawn", &["base", "--as", "two", "--mem", "16M"]);
    assert!(err.contains("node full: 2 envs of at most 2"), "{err}");
    assert_eq!(alice.json("status", &[]).as_array().unwrap().len(), 1);
    assert_eq!(bob.json("status", &[]).as_array().unwrap().len(), 1);
    assert!(!alice.ok("status", &[]).contains("evicted"));
    // An invite's temporary env is an env too, made when the invite is accepted and counted
    // as the accepting user's: bob is over his limit, and nothing is bound.
    alice.ok("invite", &[&bob.name, "base", "--as", "gift"]);
    let err = bob.refused("invite", &["accept", "gift"]);
    assert!(err.contains("over your limit of 100M"), "{err}");
    assert!(!bob.ok("scores", &[]).contains("gift"));
    bob.ok("invite", &["refuse", "gift"]);
    alice.ok("boom", &["base"]);
    bob.ok("spawn", &["base", "--as", "two", "--mem", "16M"]);
    bob.ok("boom", &["base"]);
    bob.ok("boom", &["two"]);
}

/// Spawns are made in parallel, but admitted one at a time: a burst of eight on a node with
/// room for three makes exactly three envs (each runs a command), refuses five with the
/// node-full line, and leaves nothing of the refused ones.
#[test]
fn a_burst_of_spawns_never_takes_more_than_the_free_slots() {
    let site = Site::new("cap-burst");
    let config = site.config("default_mem = \"64M\"\n[capacity]\nmax_envs = 3\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    alice.login();
    let addr = site.addr();
    let outs: Vec<(String, std::process::Output)> = std::thread::scope(|s| {
        let (client, addr) = (&alice.client, &addr);
        let spawns: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let env = format!("b{i}");
                    let out = client.sg_at(addr, "spawn", &["base", "--as", &env], None);
                    (env, out)
                })
            })
            .collect();
        spawns.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let made: Vec<&str> = outs
        .iter()
        .filter(|(_, o)| o.status.success())
        .map(|(env, _)| env.as_str())
        .collect();
    assert_eq!(made.len(), 3, "{outs:?}");
    for (_, o) in outs.iter().filter(|(_, o)| !o.status.success()) {
        let err = text(&o.stderr);
        assert!(err.contains("node full: 3 envs of at most 3"), "{err}");
    }
    let listed = alice.env_names();
    let mut want: Vec<String> = made.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    for env in &made {
        assert_eq!(alice.exec(env, "hostname").1, format!("{env}\n"));
        alice.ok("boom", &[env]);
    }
    let envs = std::fs::read_dir(site.data().join("envs")).unwrap().count();
    assert_eq!(envs, 0, "refused spawns left env directories");
}

/// A snapshot's mount stays while an env uses it, goes once none has for `mount_idle_secs`
/// (its keeper and server with it), and comes back with the next spawn.
#[test]
fn idle_snapshot_mounts_are_unmounted() {
    let site = Site::new("cap-sweep");
    let config = site.config("mount_idle_secs = 1\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let user = site.user("alice");
    user.login();
    let mounts = site.data().join("mounts");
    let records = || {
        std::fs::read_dir(&mounts)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    };
    user.ok("spawn", &["base", "--as", "swept"]);
    assert_eq!(records(), 1);
    // Several sweeps (every second) pass while the env runs: the mount stays.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert_eq!(user.exec("swept", "hostname").1, "swept\n");
    assert!(mounted_under(&mounts) && records() == 1);
    user.ok("boom", &["swept"]);
    // The sweeper logs once the mount and its record are gone: wait for all three.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while mounted_under(&mounts)
        || records() > 0
        || !site.log().contains("unmounted an idle snapshot")
    {
        assert!(
            std::time::Instant::now() < end,
            "the idle mount was never swept:\n{}",
            site.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    user.ok("spawn", &["base", "--as", "swept"]);
    assert_eq!(user.exec("swept", "hostname").1, "swept\n");
    user.ok("boom", &["swept"]);
}
