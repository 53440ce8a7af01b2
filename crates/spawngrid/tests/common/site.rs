//! The node test site (as root): a data directory on its own tmpfs with a busybox `base`
//! snapshot and users alice and bob, the real binary serving HTTPS on 127.0.0.1, and client
//! commands run as a user. Shared by the end-to-end node tests (node.rs, ssh.rs, ...); every
//! env, mount and server process is cleaned up whatever happens (Drop guards).

#![allow(dead_code)]

use super as common;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const RAW_HTTPS: &str = r#"
import http.client, json, ssl, sys
host, port, method, path, headers, chunked = sys.argv[1:7]
body = sys.stdin.buffer.read()
c = http.client.HTTPSConnection(host, int(port), context=ssl._create_unverified_context(), timeout=30)
try:
    if chunked == "1":
        c.request(method, path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                  headers=json.loads(headers), encode_chunked=True)
    else:
        c.request(method, path, body=body if body else None, headers=json.loads(headers))
except OSError:
    pass  # the node answered early (413) and closed; its answer is still readable
r = c.getresponse()
sys.stdout.write("%d\n%s" % (r.status, r.read().decode()))
"#;

/// A node data directory on its own tmpfs, with a busybox snapshot imported as `base` for
/// alice and for bob, and users alice (password `alice-pw`) and bob (`bob-pw`). User names
/// carry the test process's id ([`who`]): env cgroups are named by `ENV+USER` host-wide, so
/// two test runs at once on one host must not share user names.
pub struct Site {
    pub scratch: common::Scratch,
    pub data: PathBuf,
    pub server: std::cell::RefCell<Option<Server>>,
}

/// A running `spawngrid serve`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The SSH gateway's address (a free port of its own).
    pub ssh_addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.server.replace(None);
        common::clean_envs(&self.data());
    }
}

impl Site {
    /// A site with an empty data directory: no users, no snapshots.
    pub fn bare(tag: &str) -> Site {
        let scratch = common::Scratch::new(tag);
        let data = scratch.join("data");
        Site {
            scratch,
            data,
            server: std::cell::RefCell::new(None),
        }
    }

    pub fn new(tag: &str) -> Site {
        Site::bare(tag).populated()
    }

    /// This site with the busybox `base` and the users alice and bob (see [`Site`]), made in
    /// whatever store its data directory records (a [`Site::bare`] can be given one first).
    pub fn populated(self) -> Site {
        let site = self;
        let root = busybox();
        for owner in [who("alice"), who("bob")] {
            let owner = owner.as_str();
            site.admin(
                &[
                    "lib",
                    "--data",
                    site.data_str(),
                    "--owner",
                    owner,
                    "import",
                    "base",
                    root.to_str().unwrap(),
                ],
                None,
            );
            let pw = format!("{owner}-pw\n");
            site.admin(
                &[
                    "user",
                    "--data",
                    site.data_str(),
                    "add",
                    owner,
                    "--password-stdin",
                ],
                Some(&pw),
            );
        }
        site
    }

    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    pub fn data_str(&self) -> &str {
        self.data.to_str().unwrap()
    }

    /// Runs an offline command that must succeed.
    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = run(Command::new(common::bin()).args(args), stdin);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Starts the node on `listen` and waits for its "listening" line.
    pub fn start(&self, listen: &str) {
        self.start_with(listen, &[]);
    }

    /// Writes `text` as the node's config file (for [`Site::start_with`]`(.., &["--config", P])`).
    pub fn config(&self, text: &str) -> String {
        let path = self.scratch.join("node.toml");
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// [`Site::start`] with more `spawngrid serve` arguments.
    pub fn start_with(&self, listen: &str, extra: &[&str]) {
        let mut args = vec!["serve", "--data", self.data_str(), "--listen", listen];
        args.extend_from_slice(extra);
        self.start_cmd(&args, &[]);
    }

    /// Runs `spawngrid ARGS --ssh-listen 127.0.0.1:0` (a command that ends up serving: `serve`
    /// or `up`) with environment `vars`, waits for its "listening" line, and returns the
    /// lines it printed before that one.
    pub fn start_cmd(&self, args: &[&str], vars: &[(&str, &str)]) -> Vec<String> {
        let log = std::fs::File::create(self.scratch.join("serve.log")).unwrap();
        let mut child = Command::new(common::bin())
            .args(args)
            .args(["--ssh-listen", "127.0.0.1:0"])
            .envs(vars.iter().copied())
            .env("SPAWNGRID_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting spawngrid serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Guard first, so a node that never says it listens is still stopped.
        let mut server = Server {
            child,
            addr: String::new(),
            ssh_addr: String::new(),
        };
        let mut before = Vec::new();
        let line = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(600))
                .unwrap_or_else(|_| panic!("the node did not start: {}", self.log()));
            if line.contains(" listening on ") {
                break line;
            }
            before.push(line);
        };
        let addr = line
            .split("https://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        server.addr = addr.to_string();
        server.ssh_addr = line
            .split("ssh://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no SSH address in {line:?}"))
            .to_string();
        self.server.replace(Some(server));
        before
    }

    pub fn stop(&self) {
        self.server.replace(None);
    }

    pub fn addr(&self) -> String {
        let server = self.server.borrow();
        server.as_ref().expect("node running").addr.clone()
    }

    /// The SSH gateway's address.
    pub fn ssh_addr(&self) -> String {
        let server = self.server.borrow();
        server.as_ref().expect("node running").ssh_addr.clone()
    }

    /// The SSH gateway's port (what attach commands name).
    pub fn ssh_port(&self) -> String {
        self.ssh_addr().rsplit_once(':').unwrap().1.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.join("serve.log")).unwrap_or_default()
    }

    /// A client user with their own HOME (so their own token and pin files).
    pub fn user(&self, name: &str) -> User<'_> {
        User {
            site: self,
            client: Client::new(&who(name), &self.scratch),
        }
    }

    /// A raw HTTPS request: (status, body).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
        chunked: bool,
    ) -> (u16, String) {
        raw_https(&self.addr(), method, path, headers, body, chunked)
    }
}

/// A raw HTTPS request to `addr` (`host:port`), certificate unchecked: (status, body).
pub fn raw_https(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    chunked: bool,
) -> (u16, String) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = run(
        Command::new("python3").args([
            "-c",
            RAW_HTTPS,
            host,
            port,
            method,
            path,
            headers,
            if chunked { "1" } else { "0" },
        ]),
        Some(std::str::from_utf8(body).unwrap()),
    );
    assert!(out.status.success(), "raw request: {}", text(&out.stderr));
    let t = text(&out.stdout);
    let (status, body) = t.split_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// A GET with headers (JSON object) printing `{status, headers, body}` as JSON; the body of a
/// 101 (a WebSocket upgrade) is not read.
pub const GET: &str = r#"
import http.client, json, ssl, sys
host, port, path, headers = sys.argv[1:5]
c = http.client.HTTPSConnection(host, int(port), context=ssl._create_unverified_context(), timeout=30)
c.request(sys.argv[5] if len(sys.argv) > 5 else "GET", path, headers=json.loads(headers))
r = c.getresponse()
body = b"" if r.status == 101 else r.read()
print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
                  "body": body.decode("utf-8", "replace")}))
"#;

/// An answer: status, headers (lowercase names), body.
pub struct Answer {
    pub status: u16,
    pub headers: serde_json::Value,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers[name].as_str().unwrap_or("")
    }
}

/// `METHOD path` on the site's node with `headers` (a JSON object).
pub fn request(site: &Site, method: &str, path: &str, headers: &str) -> Answer {
    let addr = site.addr();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = run(
        Command::new("python3").args(["-c", GET, host, port, path, headers, method]),
        None,
    );
    assert!(
        out.status.success(),
        "{method} {path}: {}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Answer {
        status: v["status"].as_u64().unwrap() as u16,
        headers: v["headers"].clone(),
        body: v["body"].as_str().unwrap().to_string(),
    }
}

/// A client user with their own HOME (token and pin files), talking to any node.
pub struct Client {
    pub name: String,
    pub home: PathBuf,
}

impl Client {
    /// User `name` with a fresh HOME under `scratch`.
    pub fn new(name: &str, scratch: &common::Scratch) -> Client {
        let home = scratch.join(format!("home-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        Client {
            name: name.to_string(),
            home,
        }
    }

    /// `spawngrid [--json] CMD -h ADDR -u USER ARGS...` with this user's HOME.
    fn command(&self, json: bool, addr: &str, cmd: &str, args: &[&str]) -> Command {
        self.command_to(json, Some(addr), cmd, args)
    }

    /// `spawngrid [--json] CMD [-h ADDR] -u USER ARGS...` with this user's HOME.
    fn command_to(&self, json: bool, addr: Option<&str>, cmd: &str, args: &[&str]) -> Command {
        let mut c = self.bare_command();
        if json {
            c.arg("--json");
        }
        c.arg(cmd);
        if let Some(addr) = addr {
            c.args(["-h", addr]);
        }
        c.args(["-u", &self.name]).args(args);
        c
    }

    /// `spawngrid` with this user's HOME (their token and pin files).
    fn bare_command(&self) -> Command {
        let mut c = Command::new(common::bin());
        c.env("HOME", &self.home).env_remove("XDG_CONFIG_HOME");
        c
    }

    /// `spawngrid CMD -h ADDR ARGS...` without `-u`, as Unix user `unix` (`$USER`): the
    /// client picks the user.
    pub fn sg_unnamed(&self, addr: &str, unix: &str, cmd: &str, args: &[&str]) -> Output {
        let mut c = self.bare_command();
        c.args([cmd, "-h", addr]).args(args).env("USER", unix);
        run(&mut c, None)
    }

    /// `spawngrid CMD -h ADDR -u USER ARGS...`.
    pub fn sg_at(&self, addr: &str, cmd: &str, args: &[&str], stdin: Option<&str>) -> Output {
        run(&mut self.command(false, addr, cmd, args), stdin)
    }

    /// `spawngrid CMD -u USER ARGS...` with `addr` as the default node (`$SPAWNGRID_HOST`),
    /// not an explicit `-h`.
    pub fn sg_default(&self, addr: &str, cmd: &str, args: &[&str]) -> Output {
        let mut c = self.command_to(false, None, cmd, args);
        run(c.env("SPAWNGRID_HOST", addr), None)
    }

    /// A command that must succeed; its stdout.
    pub fn ok_at(&self, addr: &str, cmd: &str, args: &[&str]) -> String {
        let out = self.sg_at(addr, cmd, args, None);
        assert!(
            out.status.success(),
            "{} at {addr}: {cmd} {args:?}: {}",
            self.name,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// A command that must fail; its stderr (one line).
    pub fn refused_at(&self, addr: &str, cmd: &str, args: &[&str]) -> String {
        let out = self.sg_at(addr, cmd, args, None);
        assert!(
            !out.status.success(),
            "{} at {addr}: {cmd} {args:?} should fail: {}",
            self.name,
            text(&out.stdout)
        );
        let err = text(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        err
    }

    /// Logs in with the test password (`NAME-pw`).
    pub fn login_at(&self, addr: &str) {
        let out = self.sg_at(
            addr,
            "login",
            &["--password-stdin"],
            Some(&format!("{}-pw\n", self.name)),
        );
        assert!(
            out.status.success(),
            "login {} at {addr}: {}",
            self.name,
            text(&out.stderr)
        );
    }

    /// `--json CMD`, which must succeed; its output.
    pub fn json_at(&self, addr: &str, cmd: &str, args: &[&str]) -> serde_json::Value {
        let out = run(&mut self.command(true, addr, cmd, args), None);
        assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A client user of the site's node.
pub struct User<'a> {
    pub site: &'a Site,
    pub client: Client,
}

impl std::ops::Deref for User<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl User<'_> {
    /// `spawngrid CMD -h ADDR -u USER ARGS...` with this user's HOME.
    pub fn sg(&self, cmd: &str, args: &[&str], stdin: Option<&str>) -> Output {
        self.sg_at(&self.site.addr(), cmd, args, stdin)
    }

    /// A command that must succeed; its stdout.
    pub fn ok(&self, cmd: &str, args: &[&str]) -> String {
        self.ok_at(&self.site.addr(), cmd, args)
    }

    /// A command that must fail; its stderr (one line).
    pub fn refused(&self, cmd: &str, args: &[&str]) -> String {
        self.refused_at(&self.site.addr(), cmd, args)
    }

    pub fn login(&self) {
        self.login_at(&self.site.addr())
    }

    pub fn json(&self, cmd: &str, args: &[&str]) -> serde_json::Value {
        self.json_at(&self.site.addr(), cmd, args)
    }

    /// The names of the user's envs (`status`), sorted.
    pub fn env_names(&self) -> Vec<String> {
        let list = self.json("status", &[]);
        let mut names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["env"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// `spawngrid CMD ARGS...` running in the background (killed on drop).
    pub fn bg(&self, cmd: &str, args: &[&str]) -> common::Bg {
        let child = self
            .command(false, &self.site.addr(), cmd, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting spawngrid");
        common::Bg(Some(child))
    }

    /// Runs `sh -c script` in env `env`: (exit code, stdout, stderr).
    pub fn exec(&self, env: &str, script: &str) -> (i32, String, String) {
        let out = self.sg("exec", &[env, "--", "sh", "-c", script], None);
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    }

    pub fn token(&self) -> String {
        let path = self.home.join(".config/spawngrid/tokens.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v[self.site.addr().as_str()][&self.name]["token"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Polls `check` until it holds (or fails after a minute).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test user's name: NAME-PID.
pub fn who(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running a command");
    if let Some(s) = stdin {
        let mut w = child.stdin.take().unwrap();
        let bytes = s.as_bytes().to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
    }
    child.wait_with_output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The cached busybox root (scripts/rootfs.sh busybox).
pub fn busybox() -> PathBuf {
    let out = Command::new(common::repo_root().join("scripts/rootfs.sh"))
        .arg("busybox")
        .output()
        .expect("running scripts/rootfs.sh");
    assert!(out.status.success(), "rootfs.sh: {}", text(&out.stderr));
    PathBuf::from(text(&out.stdout).trim())
}

pub fn mounted_under(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.contains(dir.to_str().unwrap())
}
