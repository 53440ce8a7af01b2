//! The grid end to end (as root): `scripts/grid.sh up` starts a 3-node Garage cluster (the
//! library), PostgreSQL (the catalog) and three nodes, each in its own network namespace;
//! users work through the real client against nodes on the grid's bridge. The grid's bridge,
//! addresses and ports are fixed, so one grid at a time (a lock); `grid.sh down` runs whatever
//! happens.

use crate::common;
use common::site::{raw_https, run, text, Client};
use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the test grid's nodes wait before taking a silent node for down (the default,
/// 30 s, would make each fault test wait that long).
const DOWN_AFTER: &str = "9s";

/// A grid started by `scripts/grid.sh up` in a scratch directory, taken down on drop.
struct Grid {
    scratch: Scratch,
    /// Each node's `[connections] per_address`.
    per_address: &'static str,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Grid {
    /// A grid of nodes with the default `per_address` (256).
    fn up() -> Grid {
        Grid::taking("256")
    }

    /// A grid whose nodes take `per_address` connections from one address.
    fn taking(per_address: &'static str) -> Grid {
        static LOCK: Mutex<()> = Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let scratch = Scratch::new("grid");
        let grid = Grid {
            scratch,
            per_address,
            _one_at_a_time: guard,
        };
        let out = grid.script(&["up"]);
        assert!(out.status.success(), "grid.sh up: {}", text(&out.stderr));
        grid
    }

    fn dir(&self) -> PathBuf {
        self.scratch.join("grid")
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new(common::repo_root().join("scripts/grid.sh"))
            .args(args)
            .env("SPAWNGRID_GRID_DIR", self.dir())
            .env("SPAWNGRID_BIN", common::bin())
            .env("SPAWNGRID_GRID_BASE", "busybox")
            .env("SPAWNGRID_DOWN_AFTER", DOWN_AFTER)
            .env("SPAWNGRID_PER_ADDRESS", self.per_address)
            .output()
            .expect("running scripts/grid.sh")
    }

    /// Runs one of the grid's engine scripts (`garage.sh`, `postgres.sh`) on its cluster.
    fn engine(&self, script: &str, args: &[&str]) {
        let out = Command::new(common::repo_root().join("scripts").join(script))
            .args(args)
            .env("SPAWNGRID_GARAGE_DIR", self.dir().join("garage"))
            .env("SPAWNGRID_GARAGE_ADDR", "10.231.0.1")
            .env("SPAWNGRID_GARAGE_PORT", "3950")
            .env("SPAWNGRID_PG_DIR", self.dir().join("pg"))
            .output()
            .expect("running an engine script");
        assert!(
            out.status.success(),
            "{script} {args:?}: {}",
            text(&out.stderr)
        );
    }

    /// Node `n`'s data directory (for offline admin commands: its store is the grid's).
    fn data(&self, n: u8) -> PathBuf {
        self.dir().join(format!("node{n}/data"))
    }

    fn add_user(&self, name: &str) {
        let data = self.data(1);
        let out = run(
            Command::new(common::bin())
                .args(["user", "--data", data.to_str().unwrap(), "add", name])
                .arg("--password-stdin"),
            Some(&format!("{name}-pw\n")),
        );
        assert!(
            out.status.success(),
            "user add {name}: {}",
            text(&out.stderr)
        );
    }

    fn user(&self, name: &str) -> User {
        User(Client::new(name, &self.scratch))
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        let out = self.script(&["down"]);
        if !out.status.success() {
            eprintln!("grid.sh down: {}", text(&out.stderr));
        }
    }
}

/// Node `n`'s address on the grid's bridge.
fn node(n: u8) -> String {
    format!("10.231.0.1{n}")
}

/// Node `n`'s HTTPS address.
fn https(n: u8) -> String {
    format!("{}:16998", node(n))
}

/// A client user of the grid, addressing nodes by number.
struct User(Client);

impl std::ops::Deref for User {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl User {
    fn sg(&self, n: u8, cmd: &str, args: &[&str]) -> Output {
        self.0.sg_at(&node(n), cmd, args, None)
    }

    fn ok(&self, n: u8, cmd: &str, args: &[&str]) -> String {
        self.0.ok_at(&node(n), cmd, args)
    }

    fn refused(&self, n: u8, cmd: &str, args: &[&str]) -> String {
        self.0.refused_at(&node(n), cmd, args)
    }

    fn login(&self, n: u8) {
        self.0.login_at(&node(n))
    }

    /// Every piece of metadata busybox shows of the files an env made, sorted (directories
    /// without size and link count: those are the filesystem's, not the snapshot's).
    fn listing(&self, n: u8, env: &str) -> String {
        self.ok(
            n,
            "exec",
            &[
                env,
                "--",
                "sh",
                "-c",
                "find /srv -xdev -type d | sort | xargs stat -c '%n %A %u %g %Y' && \
                 find /srv -xdev ! -type d | sort | xargs stat -c '%n %A %u %g %s %Y %h %F %N'",
            ],
        )
    }
}

/// A raw HTTPS request to node `n`: (status, body).
fn raw(n: u8, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    raw_https(&https(n), method, path, headers, body.as_bytes(), false)
}

impl User {
    /// A command without `-h`: sent to node `n` as the default node (`$SPAWNGRID_HOST`).
    fn placed(&self, n: u8, cmd: &str, args: &[&str]) -> String {
        let out = self.0.sg_default(&node(n), cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} via node{n}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `--json` output of a command on node `n`.
    fn json(&self, n: u8, cmd: &str, args: &[&str]) -> serde_json::Value {
        let out = self.ok(n, cmd, &[args, &["--json"]].concat());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd}: {e}: {out}"))
    }

    /// The user's envs as `status` on node `n` lists them: (env, node, node up).
    fn envs(&self, n: u8) -> Vec<(String, String, bool)> {
        let list = self.json(n, "status", &[]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["env"].as_str().unwrap().to_string(),
                    e["node"].as_str().unwrap().to_string(),
                    e["node_up"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// The node the user's env `env` runs on, as node `n` says.
    fn node_of(&self, n: u8, env: &str) -> String {
        let envs = self.envs(n);
        let found = envs.iter().find(|(e, _, _)| e == env);
        found
            .unwrap_or_else(|| panic!("no {env} in {envs:?}"))
            .1
            .clone()
    }

    /// A token of the user's, from a login on node 1.
    fn token(&self) -> String {
        let (status, body) = raw(
            1,
            "POST",
            "/api/login",
            r#"{"Content-Type": "application/json"}"#,
            &format!(r#"{{"user": "{0}", "password": "{0}-pw"}}"#, self.name),
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// Headers (JSON) carrying a token of the user's.
    fn auth(&self) -> String {
        format!(r#"{{"Authorization": "Bearer {}"}}"#, self.token())
    }
}

/// `work` runs on node 1 (with `/srv/big` of md5sum `sum`): exec, cpu, cp, save and boom of
/// it sent to node 3 are forwarded there; status on any node lists every env with its node.
fn reached_from_any_node(alice: &User, sum: &str) {
    assert_eq!(
        alice.ok(3, "exec", &["work", "--", "md5sum", "/srv/big"]),
        sum
    );
    let out = alice.ok(3, "exec", &["work", "--", "hostname"]);
    assert_eq!(out, "work\n");
    // The WebSocket of `cpu` goes through too (stdin a pipe).
    let out = alice.ok(3, "cpu", &["work", "--", "cat", "/srv/d/f"]);
    assert!(out.contains("data"), "{out}");
    let local = alice.home.join("f-copy");
    alice.ok(3, "cp", &["work:/srv/d/f", local.to_str().unwrap()]);
    assert_eq!(std::fs::read(&local).unwrap(), b"data\n");
    // A copy in (a streamed upload) through node 2 lands in node 1's env.
    std::fs::write(&local, b"up\n").unwrap();
    alice.ok(2, "cp", &[local.to_str().unwrap(), "work:/srv/up"]);
    let out = alice.ok(3, "exec", &["work", "--", "cat", "/srv/up"]);
    assert_eq!(out, "up\n");
    alice.ok(1, "exec", &["work", "--", "rm", "/srv/up"]);
    preview_from_any_node(alice);
    alice.ok(3, "save", &["work", "work-f"]);
    // Names are the grid's: node 2 lists the name node 1 just bound.
    assert!(alice.ok(2, "scores", &["work-f"]).contains("work-f "));
    alice.ok(2, "spawn", &["work-f", "--as", "wf"]);
    assert_eq!(
        alice.ok(2, "exec", &["wf", "--", "cat", "/srv/d/f"]),
        "data\n"
    );
    alice.ok(3, "boom", &["wf"]);
    let err = alice.refused(2, "exec", &["wf", "--", "true"]);
    assert!(err.contains("no env wf"), "{err}");
    for n in [1, 2, 3] {
        let mut envs = alice.envs(n);
        envs.sort();
        assert_eq!(
            envs,
            [
                ("w2".into(), "node2".into(), true),
                ("w3".into(), "node3".into(), true),
                ("work".into(), "node1".into(), true),
            ],
            "status on node{n}"
        );
    }
    // SSH is not forwarded: another node's gateway names the env's node and how to get there.
    let out = ssh(alice, 3, "work+alice", "hostname");
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("env work runs on node node1")
            && err.contains("`ssh -p 16999 work+alice@10.231.0.11`"),
        "{err}"
    );
    assert_eq!(
        text(&ssh(alice, 1, "work+alice", "hostname").stdout),
        "work\n"
    );
    let status = alice.ok(3, "status", &[]);
    let line = status.lines().find(|l| l.starts_with("work ")).unwrap();
    assert!(
        line.contains("node1") && line.contains("work+alice@10.231.0.11"),
        "{line}"
    );
}

/// A preview of a server in `work` (node 1), exposed through node 3 (the API route is
/// forwarded), is served through node 2 (the preview request is forwarded) with the env's
/// bytes; listed by `status` on any node; ended through node 2.
fn preview_from_any_node(alice: &User) {
    alice.ok(
        1,
        "exec",
        &[
            "work",
            "--",
            "sh",
            "-c",
            "mkdir -p /srv/www && echo hi-from-node1 > /srv/www/index.html && \
             httpd -p 127.0.0.1:8000 -h /srv/www",
        ],
    );
    let r = alice.json(3, "expose", &["work", "8000"]);
    let url = r["exposure"]["url"].as_str().unwrap();
    let rest = url.strip_prefix("https://").unwrap();
    let path = &rest[rest.find('/').unwrap()..];
    assert_eq!(
        raw(2, "GET", path, &alice.auth(), ""),
        (200, "hi-from-node1\n".into())
    );
    let (status, body) = raw(2, "GET", path, "{}", "");
    assert_eq!(status, 401, "{body}");
    assert!(alice.ok(2, "status", &[]).contains(url));
    alice.ok(2, "unexpose", &["work", "8000"]);
    assert_eq!(raw(1, "GET", path, &alice.auth(), "").0, 404);
}

/// `ssh -p 16999 LOGIN@node(n) -- CMD` as `user` with their password (OpenSSH through
/// `SSH_ASKPASS`, its own known_hosts).
fn ssh(user: &User, n: u8, login: &str, cmd: &str) -> Output {
    let askpass = user.home.join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$SG_PASSWORD\"\n").unwrap();
    let exe = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&askpass, exe).unwrap();
    let known = format!(
        "UserKnownHostsFile={}",
        user.home.join("known_hosts").display()
    );
    run(
        Command::new("ssh")
            .args(["-F", "/dev/null", "-p", "16999", "-o", &known])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"])
            .args(["-o", "PreferredAuthentications=password"])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .arg(format!("{login}@{}", node(n)))
            .args(["--", cmd])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("SG_PASSWORD", format!("{}-pw", user.name))
            .env("DISPLAY", ":0"),
        None,
    )
}

/// Spawns without `-h` land on the node with the most room (node 3 once nodes 1 and 2
/// run more), or as `--label`, `--near` and `--node` say; `-h` alone still wins.
fn placed_by_room(alice: &User) {
    alice.ok(1, "spawn", &["work-1", "--as", "f1"]);
    alice.ok(2, "spawn", &["work-1", "--as", "f2"]);
    let out = alice.placed(1, "spawn", &["work-1", "--as", "p1"]);
    assert!(
        out.starts_with("spawned p1 from work-1 on node3\n"),
        "{out}"
    );
    assert_eq!(alice.node_of(1, "p1"), "node3");
    assert_eq!(alice.placed(2, "exec", &["p1", "--", "hostname"]), "p1\n");
    // Now node 3 runs as many as node 1: ties go by name.
    let out = alice.placed(2, "spawn", &["work-1", "--as", "p2"]);
    assert!(out.contains(" on node1\n"), "{out}");
    let out = alice.placed(1, "spawn", &["work-1", "--as", "p3", "--label", "rack=r2"]);
    assert!(out.contains(" on node2\n"), "{out}");
    let out = alice.placed(1, "spawn", &["work-1", "--as", "p4", "--near", "node3"]);
    assert!(out.contains(" on node3\n"), "{out}");
    let out = alice.ok(1, "spawn", &["work-1", "--as", "p5", "--node", "node2"]);
    assert!(out.contains(" on node2\n"), "{out}");
    let out = alice.ok(3, "spawn", &["work-1", "--as", "p6"]);
    assert!(out.contains(" on node3\n"), "{out}");
    let err = alice.refused(1, "spawn", &["work-1", "--as", "p7", "--label", "rack=r9"]);
    assert!(err.contains("no up node has the labels rack=r9"), "{err}");
    for env in ["f1", "f2", "p1", "p2", "p3", "p4", "p5", "p6"] {
        alice.placed(2, "boom", &[env]);
    }
    assert_eq!(alice.envs(1).len(), 3);
}

/// `nodes`, `GET /api/nodes`, `/metrics` and the web UI show the whole grid from any node.
fn grid_view(alice: &User) {
    let nodes = alice.json(2, "nodes", &[]);
    let nodes = nodes.as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node1", "node2", "node3"]);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["up"], true, "{n}");
        assert_eq!(n["address"], format!("{}:16998", node(i as u8 + 1)));
        assert_eq!(n["labels"], serde_json::json!([format!("rack=r{}", i + 1)]));
        assert_eq!(n["envs"], 1, "{n}");
        assert_eq!(n["fingerprint"].as_str().unwrap().len(), 95);
    }
    let table = alice.ok(3, "nodes", &[]);
    assert!(
        table.lines().nth(2).unwrap().starts_with("node2 "),
        "{table}"
    );
    let auth = alice.auth();
    let (status, body) = raw(3, "GET", "/api/nodes", &auth, "");
    assert_eq!(status, 200, "{body}");
    let via3: serde_json::Value = serde_json::from_str(&body).unwrap();
    let prints = |v: &serde_json::Value| -> Vec<String> {
        let list = v.as_array().unwrap().iter();
        list.map(|n| n["fingerprint"].to_string()).collect()
    };
    assert_eq!(prints(&via3), prints(&alice.json(1, "nodes", &[])));
    let (status, metrics) = raw(2, "GET", "/metrics", "{}", "");
    assert_eq!(status, 200);
    for n in 1..=3 {
        assert!(
            metrics.contains(&format!("spawngrid_grid_node_up{{node=\"node{n}\"}} 1\n")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("spawngrid_grid_node_envs{{node=\"node{n}\"}} 1\n")),
            "{metrics}"
        );
    }
    // The web UI: a nodes table, and its envs list (the API's) holds every node's envs.
    let (status, page) = raw(1, "GET", "/", "{}", "");
    assert_eq!(status, 200);
    assert!(page.contains(r#"<table id="nodes">"#), "{page}");
    let (_, script) = raw(1, "GET", "/ui/app.js", "{}", "");
    assert!(script.contains("api('GET', '/api/nodes')"));
    let out = browser_terminal(alice, 2, "work");
    assert!(out.starts_with("101 spawngrid\nwork\r\n"), "{out}");
    assert!(out.contains(r#"{"exit":0}"#), "{out}");
    let (status, body) = raw(1, "GET", "/api/envs", &auth, "");
    assert_eq!(status, 200, "{body}");
    let envs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let on: Vec<(&str, &str)> = envs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["env"].as_str().unwrap(), e["node"].as_str().unwrap()))
        .collect();
    assert_eq!(on, [("w2", "node2"), ("w3", "node3"), ("work", "node1")]);
}

/// A browser's terminal session (python): `GET PATH` upgraded to a WebSocket with the token
/// as the `bearer.TOKEN` subprotocol, as the web UI does; prints the status, the protocol
/// answered, then the terminal's bytes and control messages until the node closes.
const BROWSER_TERMINAL: &str = r#"
import base64, os, socket, ssl, struct, sys
host, path, token = sys.argv[1:4]
s = ssl._create_unverified_context().wrap_socket(socket.create_connection((host, 16998), 30))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n"
           "Sec-WebSocket-Protocol: spawngrid, bearer.%s\r\n\r\n" % (path, host, key, token)).encode())
f = s.makefile("rb")
status = f.readline().split()[1].decode()
proto = ""
while True:
    line = f.readline().strip().decode()
    if not line:
        break
    k, _, v = line.partition(":")
    if k.lower() == "sec-websocket-protocol":
        proto = v.strip()
out = []
while status == "101":
    b0, b1 = f.read(2)
    n = b1 & 127
    if n == 126:
        n = struct.unpack(">H", f.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", f.read(8))[0]
    data = f.read(n)
    if b0 & 15 == 8:
        break
    out.append(data.decode("utf-8", "replace"))
print(status, proto)
print("".join(out))
"#;

/// The web UI's terminal on node `via` to `alice`'s env `env` (on another node): its output.
fn browser_terminal(alice: &User, via: u8, env: &str) -> String {
    let token = alice.token();
    let path = format!("/api/envs/{env}/cpu?cmd=%5B%22hostname%22%5D");
    let out = run(
        Command::new("python3").args(["-c", BROWSER_TERMINAL, &node(via), &path, &token]),
        None,
    );
    assert!(
        out.status.success(),
        "browser terminal: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Node 2 stopped: once silent for [`DOWN_AFTER`] it is down in `nodes`, its env is marked so in
/// `status`, and a request for it says so in one line.
fn node2_seen_down(alice: &User) {
    let deadline = Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let nodes = alice.json(1, "nodes", &[]);
        if nodes[1]["up"] == false {
            assert_eq!(
                (&nodes[0]["up"], &nodes[2]["up"]),
                (&true.into(), &true.into())
            );
            break;
        }
        assert!(Instant::now() < deadline, "node2 is still up: {nodes}");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    assert!(alice
        .envs(3)
        .contains(&("w2".into(), "node2".into(), false)));
    let status = alice.ok(3, "status", &[]);
    assert!(status.contains("(its node is down)"), "{status}");
    let err = alice.refused(3, "exec", &["w2", "--", "true"]);
    assert!(
        err.contains("runs on node node2 (10.231.0.12:16998), which is down"),
        "{err}"
    );
    let table = alice.ok(1, "nodes", &[]);
    assert!(table.contains("down ("), "{table}");
}

#[test]
fn a_name_saved_on_one_node_spawns_exactly_on_the_others() {
    let grid = Grid::up();
    assert!(Path::new("/run/netns/sg-node2").exists());
    grid.add_user("alice");
    grid.add_user("bob");
    let alice = grid.user("alice");
    let bob = grid.user("bob");
    for n in [1, 2, 3] {
        alice.login(n);
    }
    bob.login(2);

    // alice works on node 1 and saves.
    alice.ok(1, "spawn", &["admin/base", "--as", "work"]);
    alice.ok(
        1,
        "exec",
        &[
            "work",
            "--",
            "sh",
            "-c",
            "mkdir -p /srv/d && echo data > /srv/d/f && chown 1000:1001 /srv/d/f && \
             chmod 4750 /srv/d/f && touch -d '2020-01-02 03:04:05' /srv/d/f && \
             ln /srv/d/f /srv/d/hard && ln -s ../d/f /srv/d/link && mkfifo /srv/fifo && \
             mkdir -m 1777 /srv/tmp && dd if=/dev/urandom of=/srv/big bs=1k count=3000 2>/dev/null",
        ],
    );
    let want = alice.listing(1, "work");
    assert!(
        want.contains("/srv/d/f -rwsr-x--- 1000 1001 5 1577934245 2"),
        "{want}"
    );
    let sum = |n: u8, env: &str| alice.ok(n, "exec", &[env, "--", "md5sum", "/srv/big"]);
    let want_sum = sum(1, "work");
    alice.ok(1, "save", &["work", "work-1"]);

    // Node 2 has never seen it: it spawns it at once, with every byte and bit of metadata.
    let start = Instant::now();
    alice.ok(2, "spawn", &["work-1", "--as", "w2"]);
    let first = alice.ok(2, "exec", &["w2", "--", "true"]);
    let took = start.elapsed();
    assert_eq!(first, "");
    eprintln!("saved on node1 → spawned with a first command on node2: {took:?}");
    common::assert_same_listing(&want, &alice.listing(2, "w2"), "node2's w2");
    assert_eq!(sum(2, "w2"), want_sum);
    // And node 3.
    alice.ok(3, "spawn", &["work-1", "--as", "w3"]);
    common::assert_same_listing(&want, &alice.listing(3, "w3"), "node3's w3");

    // An env name is the user's across the grid: any node reaches it (sent on to its node).
    reached_from_any_node(&alice, &want_sum);
    let err = alice.refused(2, "spawn", &["work-1", "--as", "work"]);
    assert!(err.contains("on node node1"), "{err}");
    // bob on node 2 gets nothing of alice's: not her env, not her unshared name.
    let err = bob.refused(2, "exec", &["work", "--", "true"]);
    assert!(err.contains("no env work"), "{err}");
    let err = bob.refused(2, "spawn", &["alice/work-1"]);
    assert!(!err.contains("node1"), "{err}");

    // A token issued by node 1 works on node 3 (one user database).
    let (status, body) = raw(
        1,
        "POST",
        "/api/login",
        r#"{"Content-Type": "application/json"}"#,
        r#"{"user": "alice", "password": "alice-pw"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let auth = format!(
        r#"{{"Authorization": "Bearer {}"}}"#,
        token["token"].as_str().unwrap()
    );
    let (status, body) = raw(3, "GET", "/api/envs", &auth, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("w3"), "{body}");

    // Spawns without -h go where there is room; the grid's nodes, metrics and web UI.
    placed_by_room(&alice);
    grid_view(&alice);

    // A node killed with -9 takes nothing else down; started again, its envs are still there.
    let out = grid.script(&["node-stop", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    node2_seen_down(&alice);
    alice.ok(3, "exec", &["w3", "--", "true"]);
    alice.ok(1, "save", &["work", "work-2"]);
    alice.ok(3, "spawn", &["work-2", "--as", "w3b"]);
    let out = grid.script(&["node-start", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sum(2, "w2"), want_sum);

    // One Garage node stopped: saves and cross-node spawns go on (replication 3, quorum 2).
    grid.engine("garage.sh", &["stop-node", "3"]);
    alice.ok(
        1,
        "exec",
        &["work", "--", "sh", "-c", "echo more >> /srv/d/f"],
    );
    alice.ok(1, "save", &["work", "work-3"]);
    alice.ok(2, "spawn", &["work-3", "--as", "w2c"]);
    let f = alice.ok(2, "exec", &["w2c", "--", "cat", "/srv/d/f"]);
    assert_eq!(f, "data\nmore\n");
    grid.engine("garage.sh", &["start-node", "3"]);

    // PostgreSQL stopped: one clear line naming the catalog; started again, the nodes carry
    // on without a restart.
    grid.engine("postgres.sh", &["down"]);
    let err = alice.refused(1, "exec", &["work", "--", "true"]);
    assert!(err.contains("catalog"), "{err}");
    grid.engine("postgres.sh", &["up"]);
    let back = (0..20).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(250));
        alice
            .sg(1, "exec", &["work", "--", "true"])
            .status
            .success()
    });
    assert!(back, "node1 did not recover after PostgreSQL came back");
    alice.ok(3, "exec", &["w3", "--", "true"]);
}

/// Runs `nft` in node `n`'s network namespace.
fn nft_in(n: u8, script: &str) {
    let out = run(
        Command::new("ip").args(["netns", "exec", &format!("sg-node{n}"), "nft", "-f", "-"]),
        Some(script),
    );
    assert!(
        out.status.success(),
        "nft in node{n}: {}",
        text(&out.stderr)
    );
}

/// Polls `f` every half second for up to `secs` seconds; whether it came true.
fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    f()
}

#[test]
fn a_partitioned_node_is_reported_down_and_heals() {
    let grid = Grid::up();
    grid.add_user("carol");
    let carol = grid.user("carol");
    for n in [1, 2] {
        carol.login(n);
    }
    carol.ok(2, "spawn", &["admin/base", "--as", "p2"]);
    carol.ok(
        2,
        "exec",
        &[
            "p2",
            "--",
            "sh",
            "-c",
            "mkdir -p /srv && echo before > /srv/mark",
        ],
    );

    // Node 2 loses the network: every packet in or out of its namespace is dropped.
    nft_in(
        2,
        "table inet partition {\n\
           chain in { type filter hook input priority -10; policy drop; iif lo accept; }\n\
           chain out { type filter hook output priority -10; policy drop; oif lo accept; }\n\
         }\n",
    );
    // Clients of node 2 get one line naming the address (the connect timeout), not a hang.
    let err = carol.refused(2, "exec", &["p2", "--", "true"]);
    assert!(err.contains("10.231.0.12"), "{err}");
    // The rest of the grid works on.
    carol.ok(1, "spawn", &["admin/base", "--as", "p1"]);
    carol.ok(
        1,
        "exec",
        &["p1", "--", "sh", "-c", "mkdir -p /srv && echo on1 > /srv/f"],
    );
    carol.ok(1, "save", &["p1", "p1-a"]);
    // Past the heartbeat deadline, node 1 says node 2 is down.
    let down = within(60, || {
        let out = carol.sg(1, "exec", &["p2", "--", "true"]);
        text(&out.stderr).contains("which is down")
    });
    assert!(down, "node1 never reported node2 down");

    // Healed: node 2 beats again, its env is there, it saves to the grid, node 1 spawns that.
    nft_in(2, "delete table inet partition\n");
    // (node 1 forwards to node 2 again once node 2 is back in the registry)
    let up = within(40, || {
        carol.sg(1, "exec", &["p2", "--", "true"]).status.success()
    });
    assert!(up, "node1 never saw node2 back");
    let mark = carol.ok(2, "exec", &["p2", "--", "cat", "/srv/mark"]);
    assert_eq!(mark, "before\n");
    carol.ok(2, "save", &["p2", "p2-a"]);
    carol.ok(1, "spawn", &["p2-a", "--as", "p1b"]);
    let mark = carol.ok(1, "exec", &["p1b", "--", "cat", "/srv/mark"]);
    assert_eq!(mark, "before\n");
    // And node 2 reads what node 1 saved while it was away.
    carol.ok(2, "spawn", &["p1-a", "--as", "p2b"]);
    assert_eq!(
        carol.ok(2, "exec", &["p2b", "--", "cat", "/srv/f"]),
        "on1\n"
    );
}

/// The `spawngrid-*` cgroup parents (one per node) holding a cgroup of env `id`, or a
/// process in one: the cgroup tree and every process's `/proc/PID/cgroup`.
fn cgroup_parents_of(id: &str) -> std::collections::BTreeSet<String> {
    let mut parents = std::collections::BTreeSet::new();
    let mut note = |path: &str| {
        let parts: Vec<&str> = path.split('/').collect();
        for w in parts.windows(2) {
            if w[1] == id && w[0].starts_with("spawngrid") {
                parents.insert(w[0].to_string());
            }
        }
    };
    let mut todo = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if depth < 3 && e.file_type().is_ok_and(|t| t.is_dir()) {
                note(&e.path().display().to_string());
                todo.push((e.path(), depth + 1));
            }
        }
    }
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cgroups) = std::fs::read_to_string(p.path().join("cgroup")) {
            cgroups.lines().for_each(&mut note);
        }
    }
    parents
}

/// Env names and node names are had once across the grid.
/// - Node 1 and node 2 both get `spawn NAME` for one user at the same moment, five times:
///   each time exactly one env of that name exists afterwards (`status` on either node lists
///   one), the other spawn fails in one line naming the node that has it, and its node keeps
///   nothing of it: no env directory, mount, cgroup or process.
/// - A second host started with node 1's name (its own certificate and address) does not
///   start while node 1 is up: one line naming the name and what to do; node 1's row stays.
#[test]
fn one_env_name_and_one_node_name_at_a_time() {
    let grid = Grid::up();
    grid.add_user("dave");
    let dave = grid.user("dave");
    for n in [1, 2] {
        dave.login(n);
    }
    let mut raced = 0;
    for round in 0..5 {
        let env = format!("race{round}");
        let id = format!("{env}+dave");
        let start = std::sync::Barrier::new(2);
        let outs: Vec<Output> = std::thread::scope(|s| {
            let spawns: Vec<_> = [1, 2]
                .map(|n| {
                    let (dave, start, env) = (&dave, &start, &env);
                    s.spawn(move || {
                        start.wait();
                        dave.sg(n, "spawn", &["admin/base", "--as", env])
                    })
                })
                .into_iter()
                .collect();
            spawns.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<u8> = [1, 2]
            .into_iter()
            .filter(|&n| outs[usize::from(n) - 1].status.success())
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {outs:?}");
        let (winner, loser) = (won[0], 3 - won[0]);
        let err = text(&outs[usize::from(loser) - 1].stderr);
        assert!(
            err.trim().lines().count() == 1
                && err.contains(&format!("on node node{winner}"))
                && (err.contains(&format!("you already have an env {env}"))
                    || err.contains(&format!("env {id} runs on node node{winner} already"))),
            "round {round}, node{loser}: {err}"
        );
        raced += usize::from(err.contains("spawned there at the same time"));
        let dir = grid.data(loser).join("envs").join(&id);
        assert!(!dir.exists(), "{} is left", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
        assert_eq!(cgroup_parents_of(&id).len(), 1, "round {round}: {id}");
        for n in [1, 2] {
            let listed: Vec<_> = dave.envs(n).into_iter().filter(|e| e.0 == env).collect();
            assert_eq!(listed, [(env.clone(), format!("node{winner}"), true)]);
        }
    }
    eprintln!("{raced} of 5 rounds were decided by the catalog's env row (both spawned)");

    let impostor = grid.dir().join("impostor");
    std::fs::create_dir_all(&impostor).unwrap();
    let config = impostor.join("config.toml");
    std::fs::copy(grid.dir().join("node1/config.toml"), &config).unwrap();
    let data = impostor.join("data");
    let mut serve = Command::new(common::bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--data", data.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--ssh-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = within(60, || serve.try_wait().unwrap().is_some());
    if !ended {
        let _ = serve.kill();
    }
    let out = serve.wait_with_output().unwrap();
    assert!(ended, "a second node1 started: {}", text(&out.stderr));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "spawngrid: registering this node in the catalog: node name node1 is held by a \
             live node at 10.231.0.11:16998"
        ) && last.contains("give this node another name"),
        "{err}"
    );
    let nodes = dave.json(2, "nodes", &[]);
    assert_eq!(nodes[0]["address"], "10.231.0.11:16998", "{nodes}");
    assert_eq!(nodes[0]["up"], true, "{nodes}");
}

/// `python3 -c TERMINALS HOST PATH TOKEN SRC...`: a terminal WebSocket to `HOST:16998` from
/// each address SRC in turn, each printing its status (`refused` when the node closes the
/// connection first), all held open until stdin ends.
const TERMINALS: &str = r#"
import socket, ssl, sys
host, path, token = sys.argv[1:4]
held = []
for src in sys.argv[4:]:
    try:
        tcp = socket.create_connection((host, 16998), 30, source_address=(src, 0))
        s = ssl._create_unverified_context().wrap_socket(tcp)
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\n"
                   "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Protocol: spawngrid, bearer.%s\r\n\r\n" % (path, host, token)).encode())
        line = s.makefile("rb").readline().split()
        said = line[1].decode() if line else "refused"
        held.append(s)
    except (OSError, ssl.SSLError):
        said = "refused"
    print(said, flush=True)
sys.stdin.read()
"#;

/// [`TERMINALS`] to node `n` from `sources`: what each said, and the process holding them.
fn terminals(n: u8, path: &str, token: &str, sources: &[&str]) -> (Vec<String>, common::Bg) {
    let mut child = Command::new("python3")
        .args(["-c", TERMINALS, &node(n), path, token])
        .args(sources)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let said = std::io::BufRead::lines(out)
        .take(sources.len())
        .map(Result::unwrap)
        .collect();
    (said, common::Bg(Some(child)))
}

/// Requests a node forwards count in the receiving node's `max` only, not in the
/// `per_address` share of the forwarding node's address: with `per_address = 2` on every node,
/// four terminals of an env on node 2 opened through node 1, by clients from four addresses,
/// are all taken (node 2 sees each from node 1's address), while a client opening three
/// straight to node 2 from one address has its third closed at accept.
#[test]
fn forwarded_connections_count_per_client_not_per_forwarding_node() {
    let grid = Grid::taking("2");
    grid.add_user("alice");
    let alice = grid.user("alice");
    alice.login(2);
    alice.ok(2, "spawn", &["admin/base", "--as", "t"]);
    let sources = ["10.231.0.2", "10.231.0.3", "10.231.0.4", "10.231.0.5"];
    for a in sources {
        // The bridge goes with the grid, and these addresses with it.
        let out = run(
            Command::new("ip").args(["addr", "add", &format!("{a}/24"), "dev", "sggrid0"]),
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (token, path) = (
        alice.token(),
        "/api/envs/t/cpu?cmd=%5B%22sleep%22%2C%22600%22%5D",
    );
    let (through_1, _held) = terminals(1, path, &token, &sources);
    assert_eq!(through_1, ["101"; 4]);
    let (straight, _held) = terminals(2, path, &token, &[sources[0]; 3]);
    assert_eq!(straight, ["101", "101", "refused"]);
}
