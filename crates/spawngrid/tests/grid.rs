//! The grid end to end (as root): `scripts/grid.sh up` starts a 3-node Garage cluster (the
//! library), PostgreSQL (the catalog) and three nodes, each in its own network namespace;
//! users work through the real client against nodes on the grid's bridge. One test, since
//! the grid's bridge, addresses and ports are fixed; `grid.sh down` runs whatever happens.

mod common;
use common::site::{raw_https, run, text, Client};
use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// A grid started by `scripts/grid.sh up` in a scratch directory, taken down on drop.
struct Grid {
    scratch: Scratch,
}

impl Grid {
    fn up() -> Grid {
        let scratch = Scratch::new("grid");
        let grid = Grid { scratch };
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

    // An env name is the user's across the grid: other nodes say where it runs.
    let err = alice.refused(3, "exec", &["work", "--", "true"]);
    assert!(err.contains("runs on node node1"), "{err}");
    // The registry gives its address.
    assert!(err.contains("-h 10.231.0.11:16998"), "{err}");
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

    // A node killed with -9 takes nothing else down; started again, its envs are still there.
    let out = grid.script(&["node-stop", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
