//! Per-env egress policies through the node (as root): set at spawn, shown by `status` and
//! `egress`, changed on a running env with `spawngrid egress` (at once, for its owner only),
//! applied again by a restarted node, and gone from nft with the env. The target is a
//! listener in a network namespace the test makes (`198.18.7.2`, of the benchmarking range 198.18.0.0/15).

use crate::common;

use common::site::*;
use std::process::{Child, Command, Stdio};

/// A network namespace `198.18.7.2/24` behind a veth whose host end is `198.18.7.1/24`, with a
/// TCP server on port 7777 answering a line with "ok"; removed on drop.
struct Target {
    name: String,
    link: String,
    server: Child,
}

impl Target {
    fn new() -> Target {
        let id = std::process::id() % 100_000;
        let (name, link) = (format!("sg-egress-{id}"), format!("sge{id}"));
        let sh = |cmd: &str| {
            let out = Command::new("sh").args(["-ec", cmd]).output().unwrap();
            assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
        };
        sh(&format!(
            "ip netns add {name}
             ip link add {link} type veth peer name eth0 netns {name}
             ip addr add 198.18.7.1/24 dev {link}; ip link set {link} up
             ip -n {name} addr add 198.18.7.2/24 dev eth0; ip -n {name} link set eth0 up"
        ));
        let serve = "import socket\n\
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
            s.bind(('198.18.7.2', 7777)); s.listen(8)\n\
            while True:\n    c, _ = s.accept(); c.settimeout(5); c.recv(100); c.sendall(b'ok\\n'); c.close()\n";
        let server = Command::new("ip")
            .args(["netns", "exec", &name, "python3", "-c", serve])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let t = Target { name, link, server };
        eventually("the target listening", || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &t.name,
                    "sh",
                    "-c",
                    "ss -ltn | grep -q :7777",
                ])
                .status()
                .is_ok_and(|s| s.success())
        });
        t
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Whether `user`'s env `env` connects to the target.
fn reaches(user: &User, env: &str) -> bool {
    let (_, out, _) = user.exec(env, "echo hi | nc -w 3 198.18.7.2 7777");
    out == "ok\n"
}

/// The host end (`sgv<N>`, which names the env's nft objects) of `user`'s env `env`.
fn host_if(site: &Site, user: &User, env: &str) -> String {
    let state = site
        .data()
        .join(format!("envs/{env}+{}/state.json", user.name));
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    st["nat"]["host_if"].as_str().unwrap().to_string()
}

fn nft(args: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("nft {args}")])
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn egress_policies_are_set_shown_changed_live_by_their_owner_and_cleaned_up() {
    let site = Site::new("egress");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    let bob = site.user("bob");
    alice.login();
    bob.login();
    let target = Target::new();

    // --deny implies --net nat; the policy is shown by spawn, status and egress.
    let out = alice.ok(
        "spawn",
        &["base", "--as", "d", "--deny", "198.18.7.0/24,localhost"],
    );
    assert!(
        out.contains("egress: internet; deny 198.18.7.0/24, localhost"),
        "{out}"
    );
    alice.ok("spawn", &["base", "--as", "open", "--net", "nat"]);
    assert!(!reaches(&alice, "d"), "denied");
    assert!(reaches(&alice, "open"), "another env");
    let status = alice.ok("status", &[]);
    assert!(
        status.contains("internet; deny 198.18.7.0/24, localhost"),
        "{status}"
    );
    let shown = alice.json("egress", &["d"]);
    assert_eq!(shown["default"], "internet");
    let d = host_if(&site, &alice, "d");
    assert!(nft(&format!("list set ip spawngrid {d}_deny")).contains("127.0.0.1"));

    // Changed on the running env, at once.
    let out = alice.ok("egress", &["d", "none", "--allow", "198.18.7.2"]);
    assert_eq!(out, "d: none; allow 198.18.7.2/32\n");
    assert!(reaches(&alice, "d"), "allowed now");
    alice.ok("egress", &["d", "none"]);
    assert!(!reaches(&alice, "d"), "sealed now");

    // Only its owner: to bob it is an env he does not have.
    let err = bob.refused("egress", &["d", "internet"]);
    assert!(err.contains("you have no env d"), "{err}");
    assert!(!reaches(&alice, "d"));
    // Bad input is one line, changing nothing; an env without a network has no policy.
    let err = alice.refused("egress", &["d", "internet", "--deny", "10.0.0.1/8"]);
    assert!(
        err.contains("bad egress policy") && err.contains("past its /8"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let err = alice.refused("egress", &["d", "--allow", "198.18.7.2"]);
    assert!(err.contains("internet or none"), "{err}");
    let token = alice.token();
    let auth =
        format!(r#"{{"Authorization": "Bearer {token}", "Content-Type": "application/json"}}"#);
    let (status, body) = site.raw(
        "PUT",
        "/api/envs/d/egress",
        &auth,
        br#"{"default":"sideways"}"#,
        false,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = site.raw(
        "PUT",
        "/api/envs/d/egress",
        &auth,
        br#"{"allow":["*.example.com"]}"#,
        false,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("wildcards"), "{body}");
    alice.ok("spawn", &["base", "--as", "lo"]);
    let err = alice.refused("egress", &["lo", "none"]);
    assert!(err.contains("no network to filter"), "{err}");
    let err = alice.refused(
        "spawn",
        &["base", "--as", "x", "--net", "none", "--egress", "none"],
    );
    assert!(err.contains("--net nat"), "{err}");
    assert!(!reaches(&alice, "d"), "still sealed");

    // A restarted node applies the recorded policy again (here: to objects emptied meanwhile).
    site.stop();
    nft(&format!("flush chain ip spawngrid {d}"));
    assert!(!nft(&format!("list chain ip spawngrid {d}")).contains("drop"));
    site.start("127.0.0.1:0");
    alice.login();
    eventually("the policy applied again", || {
        nft(&format!("list chain ip spawngrid {d}")).contains("drop")
    });
    assert!(!reaches(&alice, "d"));
    assert_eq!(alice.ok("egress", &["d"]), "d: none\n");

    // Boom leaves no object of the env in nft.
    let open = host_if(&site, &alice, "open");
    for env in ["d", "open", "lo"] {
        alice.ok("boom", &[env]);
    }
    let table = nft("list table ip spawngrid");
    for name in [&d, &open] {
        assert!(
            !table
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == name || w == format!("{name}_allow") || w == format!("{name}_deny")),
            "{name} left:\n{table}"
        );
    }
    drop(target);
}
