//! `spawngrid fork` end to end (as root): one save and N spawns (counted by the node's
//! metrics), copies that start from the env's state and then live apart, all-or-nothing
//! copies when one cannot be spawned, and the lineage `lib log` shows.

use crate::common;

use common::site::*;

/// A counter of the node's `/metrics` (0 when not yet counted).
fn counter(site: &Site, line: &str) -> u64 {
    let (code, metrics) = site.raw("GET", "/metrics", "{}", b"", false);
    assert_eq!(code, 200);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Saves and spawns done so far.
fn costs(site: &Site) -> (u64, u64) {
    (
        counter(site, "spawngrid_saves_total{result=\"ok\"}"),
        counter(site, "spawngrid_spawns_total{result=\"ok\"}"),
    )
}

#[test]
fn fork_saves_once_spawns_n_copies_and_is_all_or_nothing() {
    let site = Site::new("fork");
    let config = site.config("[capacity]\nuser_max_envs = 4\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base", "--as", "web", "--mem", "64M"]);
    assert_eq!(alice.exec("web", "echo state > /f").0, 0);

    // Three copies: one save, three spawns.
    let before = costs(&site);
    let r = alice.json("fork", &["web", "--count", "3", "--as", "br"]);
    assert_eq!(costs(&site), (before.0 + 1, before.1 + 3), "{r}");
    assert_eq!(
        (r["save"]["env"].as_str(), r["save"]["name"].as_str()),
        (Some("web"), Some("br"))
    );
    let copies: Vec<&str> = r["envs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["env"].as_str().unwrap())
        .collect();
    assert_eq!(copies, ["br-1", "br-2", "br-3"]);
    assert_eq!(r["envs"][0]["from"].as_str(), Some("br"));
    // Each copy starts from the env's state, then lives apart; the source keeps running.
    assert_eq!(alice.exec("br-1", "echo one > /f").0, 0);
    for (env, want) in [
        ("web", "state\n"),
        ("br-1", "one\n"),
        ("br-2", "state\n"),
        ("br-3", "state\n"),
    ] {
        assert_eq!(alice.exec(env, "cat /f").1, want, "{env}");
    }
    // The copies have the source's memory limit.
    let state = site
        .data()
        .join(format!("envs/br-2+{}/state.json", alice.name));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    // cgroup v2's memory.max, or v1's memory.limit_in_bytes.
    let max = state["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|dir| {
            ["memory.max", "memory.limit_in_bytes"]
                .map(|f| std::path::Path::new(dir.as_str().unwrap()).join(f))
        })
        .find_map(|f| std::fs::read_to_string(f).ok())
        .expect("the copy's memory limit");
    assert_eq!(max.trim(), (64u64 << 20).to_string());

    // Lineage: a copy saved again has the fork's save, then base, as ancestors.
    alice.ok("save", &["br-1", "br-deeper"]);
    let lib = common::Lib::new(site.data());
    let log = lib
        .ok(true, &["--owner", &alice.name, "log", "br-deeper"])
        .json();
    let names: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["names"][0].as_str().unwrap_or("-").to_string())
        .collect();
    let me = &alice.name;
    assert_eq!(
        names,
        [
            format!("{me}/br-deeper"),
            format!("{me}/br"),
            format!("{me}/base")
        ]
    );
    // The same through the API (the web UI's lineage), naming only what the asker may see.
    let ask = |user: &User, name: &str| {
        let auth = format!(r#"{{"Authorization": "Bearer {}"}}"#, user.token());
        site.raw("GET", &format!("/api/log?name={name}"), &auth, b"", false)
    };
    let (code, body) = ask(&alice, "br-deeper");
    let log: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["names"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        (code, names),
        (200, vec!["br-deeper", "br", "base"]),
        "{body}"
    );
    assert_eq!(
        log[0]["note"].as_str(),
        Some(format!("saved from env br-1+{me}").as_str())
    );
    let bob = site.user("bob");
    bob.login();
    let (code, body) = ask(&bob, &format!("{me}%2Fbr-deeper"));
    assert_eq!(code, 404, "{body}");

    // What each save changed (the web UI's diff): br-deeper's save wrote /f in br-1; br's
    // save is the env's state against base; scores outside the lineage are not shown.
    let diff = |user: &User, query: &str| {
        let auth = format!(r#"{{"Authorization": "Bearer {}"}}"#, user.token());
        let (code, body) = site.raw("GET", &format!("/api/diff?{query}"), &auth, b"", false);
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        )
    };
    let (code, d) = diff(&alice, "name=br-deeper");
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["score"], log[0]["score"]);
    assert_eq!(d["parent"], log[1]["score"]);
    assert_eq!(
        d["changes"],
        serde_json::json!([{"change": "changed", "path": "/f"}]),
        "{d}"
    );
    let (code, d) = diff(
        &alice,
        &format!("name=br-deeper&score={}", log[1]["score"].as_str().unwrap()),
    );
    assert_eq!(code, 200, "{d}");
    assert!(
        d["changes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"change": "added", "path": "/f"})),
        "{d}"
    );
    let (code, d) = diff(
        &alice,
        &format!("name=br-deeper&score={}", log[2]["score"].as_str().unwrap()),
    );
    assert_eq!(
        (code, &d["parent"], &d["changes"]),
        (200, &serde_json::Value::Null, &serde_json::json!([])),
        "{d}"
    );
    let (code, d) = diff(
        &alice,
        &format!("name=br&score={}", log[0]["score"].as_str().unwrap()),
    );
    assert_eq!(code, 404, "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("not in the ancestry of br"),
        "{d}"
    );
    let (code, d) = diff(&alice, "name=br&score=nope");
    assert_eq!(code, 400, "{d}");
    let (code, d) = diff(&bob, &format!("name={me}%2Fbr-deeper"));
    assert_eq!(code, 404, "{d}");

    // A copy's name taken: refused before anything is saved or spawned.
    let before = costs(&site);
    let err = alice.refused("fork", &["web", "--as", "br"]);
    assert!(err.contains("you already have an env br-1"), "{err}");
    assert_eq!(costs(&site), before);

    // The third copy is over alice's limit of 4 envs: the two before it are boomed, the save
    // stays, and the one line says all that.
    alice.ok("boom", &["br-2"]);
    alice.ok("boom", &["br-3"]);
    let before = costs(&site);
    let err = alice.refused("fork", &["web", "--count", "3", "--as", "more"]);
    assert!(
        err.contains("fork of web: copy more-3 failed (")
            && err.contains("the 2 copies spawned before it were boomed; the save is kept as more"),
        "{err}"
    );
    assert_eq!(costs(&site), (before.0 + 1, before.1 + 2));
    assert_eq!(alice.env_names(), ["br-1", "web"]);
    let scores = alice.ok("scores", &["more"]);
    assert!(scores.contains("more "), "{scores}");

    // The default prefix: ENV-TIME; the text output names the save and each copy.
    alice.ok("boom", &["br-1"]);
    let out = alice.ok("fork", &["web"]);
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("forked web: saved as web-20") && first.contains(", 1 copy in "),
        "{out}"
    );
    let prefix = first
        .strip_prefix("forked web: saved as ")
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert_eq!(prefix.len(), "web-20261206T010203".len(), "{prefix}");
    let copy = format!("{prefix}-1");
    assert!(
        out.lines().nth(1).unwrap().trim_start().starts_with(&copy),
        "{out}"
    );
    assert_eq!(alice.exec(&copy, "cat /f").1, "state\n");
    // A bad count: one line, nothing done.
    let before = costs(&site);
    let err = alice.refused("fork", &["web", "--count", "0"]);
    assert!(err.contains("fork makes 1 to 64 copies"), "{err}");
    assert_eq!(costs(&site), before);
}
