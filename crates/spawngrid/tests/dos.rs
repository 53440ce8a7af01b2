//! Denial of service end to end (as root, issue 11): one user's execs cannot starve the node
//! (a per-user limit shared with SSH sessions, a timeout, a dropped client's command killed),
//! connections are capped
//! per source and in total and cut when they send too slowly, and a `cp` tar bomb is refused
//! without the node's memory growing.

use crate::common;

use common::site::*;
use common::ssh::{login, password, SshClient};
use common::Bg;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// A site whose node runs with `config`.
fn node_with(tag: &str, config: &str) -> Site {
    let site = Site::new(tag);
    let path = site.config(config);
    site.start_with("127.0.0.1:0", &["--config", &path]);
    site
}

/// Host pids of processes whose command line is exactly `sleep SECS`.
fn sleepers(secs: &str) -> Vec<String> {
    let want = format!("sleep\0{secs}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
            (cmdline == want.as_bytes()).then_some(name)
        })
        .collect()
}

/// A `sleep` argument no other test process uses.
fn unique_secs(n: u32) -> String {
    (1_000_000 + std::process::id() * 10 + n).to_string()
}

/// alice holds her two execs: the third is refused with one line, logins and bob's calls
/// are served meanwhile; killing her clients kills their commands and frees her slots; a
/// timeout kills a command and says so, keeping its output.
#[test]
fn execs_are_bounded_per_user_timed_out_and_killed_with_their_client() {
    let site = node_with("dos-exec", "[exec]\nmax_per_user = 2\n");
    let (alice, bob) = (site.user("alice"), site.user("bob"));
    alice.login();
    bob.login();
    alice.ok("spawn", &["base"]);
    let secs = unique_secs(1);
    let held: Vec<_> = (0..2)
        .map(|_| alice.bg("exec", &["base", "--", "sleep", &secs]))
        .collect();
    eventually("alice's two sleeps", || sleepers(&secs).len() == 2);
    let err = alice.refused("exec", &["base", "--", "true"]);
    assert!(
        err.contains("you run 2 execs and SSH sessions at once already"),
        "{err}"
    );
    alice.login();
    bob.ok("spawn", &["base"]);
    assert_eq!(bob.exec("base", "echo bob").1, "bob\n");

    drop(held);
    eventually("the dropped clients' commands gone", || {
        sleepers(&secs).is_empty()
    });
    assert_eq!(alice.exec("base", "echo free").1, "free\n");

    let script = format!("echo before; exec sleep {secs}");
    let out = alice.sg(
        "exec",
        &["--timeout", "1s", "base", "--", "sh", "-c", &script],
        None,
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before\n");
    assert!(
        text(&out.stderr).contains("ran past its timeout of 1 s and was killed"),
        "{}",
        text(&out.stderr)
    );
    eventually("the timed-out command gone", || sleepers(&secs).is_empty());
    alice.ok("boom", &["base"]);
    bob.ok("boom", &["base"]);
}

/// alice's SSH sessions count with her execs: holding two (a command, and one on a
/// terminal), a third SSH session and an API exec are refused with one line while her logins
/// and bob's sessions are served; killing her ssh clients kills their commands and frees her
/// slots.
#[test]
fn ssh_sessions_count_with_execs_and_die_with_their_client() {
    let site = node_with("dos-ssh", "[exec]\nmax_per_user = 2\n");
    let (alice, bob) = (site.user("alice"), site.user("bob"));
    alice.login();
    bob.login();
    alice.ok("spawn", &["base"]);
    bob.ok("spawn", &["base"]);
    let ssh = SshClient::new(&site);
    let (a_login, a_pw) = (login(&alice, "base"), password(&alice));
    let target = format!("{a_login}@127.0.0.1");
    let secs = unique_secs(2);
    let script = format!("exec sleep {secs}");
    let held: Vec<Bg> = [&[][..], &["-tt"][..]]
        .iter()
        .map(|flags| {
            let mut args = flags.to_vec();
            args.extend([target.as_str(), "--", script.as_str()]);
            let child = ssh
                .cmd("ssh", &a_pw, &args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Bg(Some(child))
        })
        .collect();
    eventually("alice's two ssh sleeps", || sleepers(&secs).len() == 2);
    let out = ssh.exec(&a_login, &a_pw, "echo ran", b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(1), String::new())
    );
    let want = "you run 2 execs and SSH sessions at once already";
    assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
    let err = alice.refused("exec", &["base", "--", "true"]);
    assert!(err.contains(want), "{err}");
    alice.login();
    let out = ssh.exec(&login(&bob, "base"), &password(&bob), "echo bob", b"");
    assert_eq!(text(&out.stdout), "bob\n", "{}", text(&out.stderr));

    drop(held);
    eventually("the dropped ssh clients' commands gone", || {
        sleepers(&secs).is_empty()
    });
    let out = ssh.exec(&a_login, &a_pw, "echo free", b"");
    assert_eq!(text(&out.stdout), "free\n", "{}", text(&out.stderr));
    alice.ok("boom", &["base"]);
    bob.ok("boom", &["base"]);
}

/// A raw TLS client: `hold SRC N` opens N connections from address SRC and prints `ok` or
/// `refused` for each (then holds them until stdin ends); `slow MODE` sends a request one
/// byte a second (MODE `header`: its headers; `body`: a JSON body after complete headers)
/// and prints `closed` once the node closes the connection (with what it answered), or
/// `open` if it took all 300 bytes; `upload TOKEN` starts a `cp` upload into env `base` and
/// stops sending, printing `closed` and the answer once the node closes.
const RAW_TLS: &str = r#"
import select, socket, ssl, sys
host, port, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl._create_unverified_context()
def conn(src="127.0.0.1"):
    s = socket.create_connection((host, port), source_address=(src, 0), timeout=30)
    return ctx.wrap_socket(s, server_hostname=host)
if what == "hold":
    held = []
    for _ in range(int(sys.argv[5])):
        try:
            c = conn(sys.argv[4])
            c.settimeout(1)
            try:
                gone = c.recv(1) == b""
            except (socket.timeout, ssl.SSLWantReadError):
                gone = False
            print("refused" if gone else "ok", flush=True)
            held.append(c)
        except (OSError, ssl.SSLError):
            print("refused", flush=True)
    sys.stdin.read()
    sys.exit(0)
c = conn()
head = b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
if what == "upload":
    c.sendall(b"PUT /api/envs/base/files?path=/tmp HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer " + sys.argv[4].encode() + b"\r\n"
              b"Content-Type: application/x-tar\r\nContent-Length: 100000\r\n\r\n" + bytes(512))
    c.settimeout(120)
    got = b""
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += d
    except (OSError, ssl.SSLError):
        pass
    print("closed", got.decode(errors="replace"))
    sys.exit(0)
if what == "header":
    data = head + b"X-Pad: " + b"a" * 300
else:
    c.sendall(head + b"Content-Length: 400\r\n\r\n")
    data = b"{" + b" " * 300
got = b""
for i in range(len(data)):
    try:
        c.sendall(data[i:i + 1])
        if select.select([c], [], [], 1.0)[0]:
            while True:
                d = c.recv(65536)
                if not d:
                    print("closed", got.decode(errors="replace"))
                    sys.exit(0)
                got += d
    except (OSError, ssl.SSLError):
        print("closed", got.decode(errors="replace"))
        sys.exit(0)
print("open")
"#;

/// `python3 RAW_TLS ADDR ARGS...`, not waited for.
fn raw_tls(addr: &str, args: &[&str]) -> std::process::Child {
    let (host, port) = addr.rsplit_once(':').unwrap();
    Command::new("python3")
        .args(["-c", RAW_TLS, host, port])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `n` lines from a [`raw_tls`] holder.
fn lines(child: &mut std::process::Child, n: usize) -> Vec<String> {
    let out = child.stdout.as_mut().unwrap();
    let mut r = BufReader::new(out);
    (0..n)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            l.trim().to_string()
        })
        .collect()
}

/// Connections over the per-address cap and over the total are closed at once; freed ones
/// are taken again; clients sending headers or a body a byte a second are cut off while
/// others are served.
#[test]
fn connections_are_capped_and_slow_senders_cut_off() {
    let site = node_with("dos-conns", "[connections]\nmax = 6\nper_address = 4\n");
    let addr = site.addr();
    let mut a = raw_tls(&addr, &["hold", "127.0.0.1", "5"]);
    assert_eq!(lines(&mut a, 5), ["ok", "ok", "ok", "ok", "refused"]);
    let mut b = raw_tls(&addr, &["hold", "127.0.0.2", "3"]);
    assert_eq!(lines(&mut b, 3), ["ok", "ok", "refused"]);
    let alice = site.user("alice");
    let login = || {
        let pw = format!("{}-pw\n", alice.name);
        alice
            .sg("login", &["--password-stdin"], Some(&pw))
            .status
            .success()
    };
    assert!(!login(), "a login got past the caps");
    drop(a.stdin.take());
    a.wait().unwrap();
    eventually("a's connections freed", login);
    drop(b.stdin.take());
    b.wait().unwrap();
    let log = site.log();
    assert!(
        log.contains("connection refused: 4 connections open from 127.0.0.1")
            && log.contains("connection refused: 6 connections open"),
        "{log}"
    );

    site.stop();
    let config = site.config("[connections]\nheader_timeout = 3\nbody_timeout = 3\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let addr = site.addr();
    alice.login();
    for mode in ["header", "body"] {
        let slow = raw_tls(&addr, &["slow", mode]);
        // Served meanwhile.
        alice.ok("status", &[]);
        let out = slow.wait_with_output().unwrap();
        let said = text(&out.stdout);
        assert!(said.starts_with("closed"), "{mode}: {said}");
        if mode == "body" {
            assert!(said.contains("did not arrive within 3 s"), "{said}");
        }
    }
    // A cp upload that stops sending is answered and closed.
    alice.ok("spawn", &["base"]);
    let stalled = raw_tls(&addr, &["upload", &alice.token()]);
    let said = text(&stalled.wait_with_output().unwrap().stdout);
    assert!(
        said.contains("the upload paused for more than 3 s"),
        "{said}"
    );
    alice.ok("boom", &["base"]);
}

/// A GNU long-name header announcing 300 MiB, then the 300 MiB, `cp`'d into an env with a
/// raw client: refused with one line, and the node's peak RSS grows by far less.
const BOMB: &str = r#"
import http.client, ssl, sys
host, port, token = sys.argv[1:4]
size = 300 << 20
h = bytearray(512)
h[0:13] = b"././@LongLink"
h[100:108] = b"0000644\0"
h[108:116] = b"0000000\0"
h[116:124] = b"0000000\0"
h[124:136] = b"%011o\0" % size
h[136:148] = b"00000000000\0"
h[156:157] = b"L"
h[257:265] = b"ustar  \0"
h[148:156] = b"        "
h[148:156] = b"%06o\0 " % sum(h)
def body():
    yield bytes(h)
    chunk = b"a" * (1 << 20)
    for _ in range(size >> 20):
        yield chunk
    yield bytes(1024)
c = http.client.HTTPSConnection(host, int(port), context=ssl._create_unverified_context(), timeout=120)
try:
    c.request("PUT", "/api/envs/base/files?path=/tmp", body=body(), encode_chunked=True,
              headers={"Authorization": "Bearer " + token, "Content-Type": "application/x-tar"})
except OSError:
    pass
r = c.getresponse()
print(r.status, r.read().decode())
"#;

/// The node's peak resident memory (`VmHWM`), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_cp_long_name_bomb_is_refused_without_the_node_growing() {
    let site = Site::new("dos-bomb");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    let pid = site.server.borrow().as_ref().unwrap().child.id();
    let before = peak_kib(pid);
    let tmp = alice.exec("base", "ls -a /tmp").1;
    let addr = site.addr();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut bomb = Command::new("python3");
    bomb.args(["-c", BOMB, host, port, &alice.token()]);
    let out = run(&mut bomb, None);
    let said = text(&out.stdout);
    let grown = peak_kib(pid).saturating_sub(before);
    eprintln!("the node's peak RSS grew by {grown} KiB (from {before} KiB)");
    assert!(grown < 64 << 10, "the node's peak RSS grew by {grown} KiB");
    assert!(said.starts_with("400 "), "{said} {}", text(&out.stderr));
    assert!(said.contains("over cp's limit of 64 KiB"), "{said}");
    // Nothing of it landed, and the env and node still work.
    assert_eq!(alice.exec("base", "ls -a /tmp").1, tmp);
    let mut f = std::fs::File::create(site.scratch.join("small")).unwrap();
    f.write_all(b"fine\n").unwrap();
    let small = site.scratch.join("small");
    alice.ok("cp", &[small.to_str().unwrap(), "base:/tmp/small"]);
    assert_eq!(alice.exec("base", "cat /tmp/small").1, "fine\n");
    alice.ok("boom", &["base"]);
}

/// The logical size of `user`'s name `name` (`scores`).
fn size_of(user: &User, name: &str) -> u64 {
    let scores = user.json("scores", &[]);
    let entry = scores
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name);
    entry.unwrap()["size"].as_u64().unwrap()
}

/// Saves past the names quota or the bytes quota are refused with one line and bind
/// nothing, the env keeps running; a `--disk` spawn the node's disk cannot hold is refused
/// and leaves no env.
#[test]
fn quotas_refuse_saves_and_a_disk_that_cannot_fit() {
    let site = Site::new("dos-quota");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    let base = size_of(&alice, "base");
    site.stop();
    let room = base + (2 << 20);
    let config = site.config(&format!(
        "disk_size = \"1000T\"\n[quota]\nbytes = \"{room}\"\n"
    ));
    site.start_with("127.0.0.1:0", &["--config", &config]);
    alice.login();
    alice.ok("spawn", &["base"]);
    // 4 MiB more than base: over the bytes quota.
    let big = "dd if=/dev/urandom of=/root/big bs=1M count=4 2>/dev/null && sync";
    assert_eq!(alice.exec("base", big).0, 0);
    let err = alice.refused("save", &["base", "big"]);
    assert!(
        err.contains("over the node's library quota per user"),
        "{err}"
    );
    assert!(!alice.ok("scores", &[]).contains("big"));
    assert_eq!(alice.exec("base", "echo alive").1, "alive\n");

    let err = alice.refused("spawn", &["base", "--disk", "--as", "huge"]);
    assert!(err.contains("less than the 1000T"), "{err}");
    assert_eq!(alice.json("status", &[]).as_array().unwrap().len(), 1);

    // The names quota (the env outlives the restart).
    site.stop();
    let config = site.config("[quota]\nnames = 2\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    alice.login();
    alice.ok("save", &["base", "one"]);
    let err = alice.refused("save", &["base", "two"]);
    assert!(
        err.contains("you have 2 names, the node's limit per user"),
        "{err}"
    );
    let names = alice.json("scores", &[]);
    assert_eq!(names.as_array().unwrap().len(), 2, "{names}");
    alice.ok("boom", &["base"]);
}
