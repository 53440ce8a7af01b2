//! SSH forwarding end to end (as root): the real binary, the real OpenSSH client (`ssh -L`,
//! `-R`, `-W`, `-A`), `ssh-agent` and `ssh-add`, and servers inside a busybox env
//! (`httpd`, `wget`, `nc`).

use crate::common;

use common::site::*;
use common::ssh::*;
use common::Bg;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

/// A free TCP port on the host's loopback (for `-L`).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP/1.0 GET of `/` from 127.0.0.1:`port` (the host's loopback); the whole answer.
fn http_get(port: u16) -> String {
    let mut answer = String::new();
    eventually("the forwarded port to answer", || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        answer.clear();
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
        s.read_to_string(&mut answer).is_ok() && !answer.is_empty()
    });
    answer
}

/// alice, logged in, with her env `base` spawned; an OpenSSH client that shows forwarding
/// refusals (`INFO`), her password and her `base+alice@127.0.0.1` target.
struct Session<'a> {
    alice: User<'a>,
    ssh: SshClient,
    pw: String,
    target: String,
}

fn session(site: &Site) -> Session<'_> {
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    let mut ssh = SshClient::new(site);
    ssh.log_level = "INFO";
    let pw = password(&alice);
    let target = format!("{}@127.0.0.1", login(&alice, "base"));
    Session {
        alice,
        ssh,
        pw,
        target,
    }
}

/// A VS Code Remote-SSH style session: one connection runs a script that starts a server
/// inside the env and says so, and carries a `-L` forward to it; the server's bytes come
/// through. A forward to a port only the host listens on does not reach the host; another
/// user cannot forward into the env.
#[test]
fn local_forwards_reach_servers_inside_the_env_only() {
    let site = Site::new("ssh-fwd-l");
    site.start("127.0.0.1:0");
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);

    let local = free_port();
    let forward = format!("{local}:127.0.0.1:8000");
    let script = "mkdir -p /srv && echo hello-from-the-env > /srv/index.html && \
                  httpd -p 127.0.0.1:8000 -h /srv && echo ready && exec sleep 600";
    let mut session = ssh
        .cmd("ssh", &pw, &["-L", &forward, &target, "--", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(session.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let answer = http_get(local);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello-from-the-env\n"), "{answer}");
    let _ = session.kill();
    let _ = session.wait();

    // `-W` (stdio forwarding, a direct-tcpip channel too) to the same server.
    let out = run(
        &mut ssh.cmd("ssh", &pw, &["-W", "127.0.0.1:8000", &target]),
        Some("GET /index.html HTTP/1.0\r\n\r\n"),
    );
    assert!(
        text(&out.stdout).ends_with("\r\n\r\nhello-from-the-env\n"),
        "{}",
        text(&out.stderr)
    );

    // The host's loopback is not the env's: a port only the host listens on is refused, and
    // the host's listener never sees a connection.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let out = run(
        &mut ssh.cmd(
            "ssh",
            &pw,
            &["-W", &format!("127.0.0.1:{host_port}"), &target],
        ),
        Some("x"),
    );
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains(&format!(
            "open failed: connect failed: spawngrid: connecting to 127.0.0.1:{host_port} in env base+alice"
        )),
        "{err}"
    );
    assert!(host.accept().is_err(), "the host's listener was reached");
    // bob names alice's env: it is not his.
    let bob = site.user("bob");
    let out = run(
        &mut ssh.cmd(
            "ssh",
            &password(&bob),
            &[
                "-W",
                "127.0.0.1:8000",
                &format!("{}@127.0.0.1", login(&bob, "base")),
            ],
        ),
        Some(""),
    );
    assert!(
        text(&out.stderr).contains("open failed: administratively prohibited: spawngrid: you have no env base on this node"),
        "{}",
        text(&out.stderr)
    );
    // A host name is not resolved on the host's behalf.
    let out = run(
        &mut ssh.cmd("ssh", &pw, &["-W", "example.com:80", &target]),
        Some(""),
    );
    assert!(
        text(&out.stderr).contains("\"example.com\" is not an IP address"),
        "{}",
        text(&out.stderr)
    );
    alice.ok("boom", &["base"]);
}

/// `-R`: a port listened on inside the env whose connections reach a server on the client's
/// side; it goes away with the connection.
#[test]
fn remote_forwards_listen_inside_the_env() {
    let site = Site::new("ssh-fwd-r");
    site.start("127.0.0.1:0");
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);

    // The client's side: answers one line with its reverse.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let answering = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let back: String = line.trim().chars().rev().collect();
        s.write_all(format!("{back}\n").as_bytes()).unwrap();
    });
    let forward = format!("9000:127.0.0.1:{port}");
    let out = run(
        &mut ssh.cmd(
            "ssh",
            &pw,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &forward,
                &target,
                "--",
                "echo spawngrid | nc 127.0.0.1 9000",
            ],
        ),
        None,
    );
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "dirgnwaps\n"),
        "{}",
        text(&out.stderr)
    );
    answering.join().unwrap();
    // The connection is gone, and its listener with it.
    eventually("the listener to close", || {
        alice.exec("base", "nc 127.0.0.1 9000 </dev/null").0 != 0
    });

    // A session user who is not root inside listens from port 1024 on only.
    assert_eq!(alice.exec("base", &add_env_user(&alice.name)).0, 0);
    let remote = |port: &str| {
        let forward = format!("{port}:127.0.0.1:1");
        let args = [
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &forward,
            &target,
            "--",
            "id -u",
        ];
        run(&mut ssh.cmd("ssh", &pw, &args), None)
    };
    let out = remote("80");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("remote port forwarding failed for listen port 80"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&remote("8080").stdout), "1000\n");
    alice.ok("boom", &["base"]);
}

/// `-R 0:...` twice on one connection: each gets a port the node picks (OpenSSH asks for
/// port 0 on the same address both times), and both listen inside the env; `ssh -O cancel`
/// of one (OpenSSH cancels with the port it was given) closes that port inside the env while
/// the connection lives, and leaves the other.
#[test]
fn dynamic_remote_forwards_get_ports_and_are_cancelled_by_them() {
    let site = Site::new("ssh-fwd-r0");
    site.start("127.0.0.1:0");
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);
    let control = site.scratch.join("mux");
    let control = control.to_str().unwrap();
    let mux = ["-S", control];
    let forwards = ["-R", "0:127.0.0.1:1", "-R", "0:127.0.0.1:2"];
    let args = [
        &["-o", "ExitOnForwardFailure=yes", "-M", "-N"][..],
        &mux,
        &forwards,
        &[&target],
    ];
    let mut master = Bg(Some(
        ssh.cmd("ssh", &pw, &args.concat())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // "Allocated port N for remote forward to 127.0.0.1:C", one line each.
    let stderr = BufReader::new(master.0.as_mut().unwrap().stderr.take().unwrap());
    let mut said = Vec::new();
    let mut ports = std::collections::BTreeMap::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Allocated port ") {
            let (port, to) = rest.split_once(" for remote forward to ").unwrap();
            ports.insert(to.to_string(), port.to_string());
        }
        said.push(line);
        if ports.len() == 2 {
            break;
        }
    }
    assert_eq!(ports.len(), 2, "{said:?}");
    let (one, two) = (&ports["127.0.0.1:1"], &ports["127.0.0.1:2"]);
    let listening = |port: &str| {
        alice
            .exec("base", &format!("nc 127.0.0.1 {port} </dev/null"))
            .0
            == 0
    };
    assert!(listening(one) && listening(two), "{ports:?}");
    let cancel = [&mux[..], &["-O", "cancel", "-R", "0:127.0.0.1:1", &target]].concat();
    let out = run(&mut ssh.cmd("ssh", &pw, &cancel), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("the cancelled port to close inside the env", || {
        !listening(one)
    });
    assert!(listening(two));
    assert!(master.0.as_mut().unwrap().try_wait().unwrap().is_none());
    drop(master);
    alice.ok("boom", &["base"]);
}

/// `-A`: `ssh-add -l` inside the env lists the key of the client's agent; the socket is in a
/// 0700 directory of the session's user and goes with the session.
#[test]
fn agent_forwarding_answers_inside_the_env() {
    let site = Site::new("ssh-fwd-a");
    site.start("127.0.0.1:0");
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);

    // ssh-add and what it links against, into the busybox env.
    install_from_host(&alice, "base", "/usr/bin/ssh-add");

    // An agent on the client's side holding one key.
    let dir = site.scratch.join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let key = keygen(&dir, "alice-agent-key", "ed25519");
    let mut agent = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("ssh-agent to listen", || sock.exists());
    let add = run(
        Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &sock),
        None,
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let want = run(
        Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &sock),
        None,
    );
    assert!(text(&want.stdout).contains("alice-agent-key (ED25519)"));

    let script = "ssh-add -l; d=${SSH_AUTH_SOCK%/*}; stat -c '%a %u %n' $d $SSH_AUTH_SOCK";
    let out = run(
        ssh.cmd("ssh", &pw, &["-A", &target, "--", script])
            .env("SSH_AUTH_SOCK", &sock),
        None,
    );
    let seen = text(&out.stdout);
    assert!(out.status.success(), "{seen}{}", text(&out.stderr));
    let mut lines = seen.lines();
    assert_eq!(lines.next(), text(&want.stdout).lines().next());
    let dir_line = lines.next().unwrap();
    assert!(
        dir_line.starts_with("700 0 /tmp/spawngrid-agent-"),
        "{seen}"
    );
    assert!(lines.next().unwrap().ends_with("/agent.sock"), "{seen}");
    // Gone with the session; without -A there is no socket.
    let (_, left, _) = alice.exec("base", "ls /tmp");
    assert!(!left.contains("spawngrid-agent-"), "{left}");
    let out = run(
        ssh.cmd("ssh", &pw, &[&target, "--", "echo \"[$SSH_AUTH_SOCK]\""])
            .env("SSH_AUTH_SOCK", &sock),
        None,
    );
    assert_eq!(text(&out.stdout), "[]\n");
    // As a user of the env who is not root: the directory and socket are theirs.
    assert_eq!(alice.exec("base", &add_env_user(&alice.name)).0, 0);
    let script = "ssh-add -l; \
                  stat -c '%a %u' ${SSH_AUTH_SOCK%/*} $SSH_AUTH_SOCK";
    let out = run(
        ssh.cmd("ssh", &pw, &["-A", &target, "--", script])
            .env("SSH_AUTH_SOCK", &sock),
        None,
    );
    let seen = text(&out.stdout);
    let mut lines = seen.lines();
    assert_eq!(lines.next(), text(&want.stdout).lines().next(), "{seen}");
    assert_eq!(lines.next(), Some("700 1000"), "{seen}");
    assert!(lines.next().unwrap().ends_with(" 1000"), "{seen}");
    let _ = agent.kill();
    let _ = agent.wait();
    alice.ok("boom", &["base"]);
}

/// Each kind of forwarding is refused when the node's `[ssh]` table turns it off.
#[test]
fn forwarding_is_refused_when_disabled_or_not_the_owner() {
    let site = Site::new("ssh-fwd-off");
    let config = site
        .config("[ssh]\nforward_local = false\nforward_remote = false\nforward_agent = false\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base", "--as", "work"]);
    let mut ssh = SshClient::new(&site);
    ssh.log_level = "INFO";
    let pw = password(&alice);
    let target = format!("{}@127.0.0.1", login(&alice, "work"));

    let out = run(
        &mut ssh.cmd("ssh", &pw, &["-W", "127.0.0.1:8000", &target]),
        Some(""),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains(
            "open failed: administratively prohibited: spawngrid: local port forwarding is disabled on this node"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &mut ssh.cmd(
            "ssh",
            &pw,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "9000:127.0.0.1:1",
                &target,
                "--",
                "echo ran",
            ],
        ),
        None,
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("remote port forwarding failed for listen port 9000"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
    let out = run(
        ssh.cmd(
            "ssh",
            &pw,
            &["-A", &target, "--", "echo \"[$SSH_AUTH_SOCK]\""],
        )
        .env("SSH_AUTH_SOCK", "/nonexistent"),
        None,
    );
    assert_eq!(text(&out.stdout), "[]\n", "{}", text(&out.stderr));

    alice.ok("boom", &["work"]);
}

/// Starts busybox `httpd` (a daemon, so it outlives the exec) on the env's 127.0.0.1:8000,
/// serving `hello-from-the-env`, then runs `then`.
fn httpd_then(user: &User, env: &str, then: &str) {
    let script = format!(
        "mkdir -p /srv && echo hello-from-the-env > /srv/index.html && \
         httpd -p 127.0.0.1:8000 -h /srv && {then}"
    );
    let (code, _, err) = user.exec(env, &script);
    assert_eq!(code, 0, "{err}");
}

/// How many connections to the env's port 8000 the node's forwards hold open (their remote
/// address is 127.0.0.1:8000 and they are established, or closed by the server only, as
/// `/proc/net/tcp` inside the env lists them).
fn forwarded_to_8000(user: &User, env: &str) -> usize {
    let (_, out, _) = user.exec(
        env,
        "awk '$3 == \"0100007F:1F40\" && ($4 == \"01\" || $4 == \"08\")' /proc/net/tcp | wc -l",
    );
    out.trim().parse().unwrap()
}

/// A local forward needs only the env, not its accounts: it works with an `/etc/passwd` no
/// session could start with. One connection holds at most `[ssh] max_forwards` forwards:
/// one more is refused with the reason, and a forward that ends makes room.
#[test]
fn local_forwards_need_only_the_env_and_are_capped_per_connection() {
    let site = Site::new("ssh-fwd-cap");
    let config = site.config("[ssh]\nmax_forwards = 2\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);
    httpd_then(&alice, "base", "rm /etc/passwd && mkdir /etc/passwd");
    let local = free_port();
    let forward = format!("{local}:127.0.0.1:8000");
    // Its refusals go to a file (a pipe left unread would stop the client once full).
    let said = site.scratch.join("ssh-stderr");
    let tunnel = Bg(Some(
        ssh.cmd("ssh", &pw, &["-N", "-L", &forward, &target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&said).unwrap())
            .spawn()
            .unwrap(),
    ));
    assert!(http_get(local).ends_with("hello-from-the-env\n"));
    eventually("that forward to end", || {
        forwarded_to_8000(&alice, "base") == 0
    });

    // Two connections that send nothing hold both forwards (httpd waits for their requests).
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", local)).unwrap())
        .collect();
    eventually("both forwards to connect inside the env", || {
        forwarded_to_8000(&alice, "base") == 2
    });
    let mut third = TcpStream::connect(("127.0.0.1", local)).unwrap();
    let mut got = Vec::new();
    third.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    drop(held);
    assert!(http_get(local).ends_with("hello-from-the-env\n"));
    drop(tunnel);
    let err = std::fs::read_to_string(&said).unwrap();
    assert!(
        err.contains(
            "open failed: administratively prohibited: spawngrid: this connection holds 2 \
             forwards, the node's limit ([ssh] max_forwards): close one first"
        ),
        "{err}"
    );
    alice.ok("boom", &["base"]);
}

/// One user holds at most `[ssh] max_forwards_per_user` forwards across their connections
/// (each is a socket of the node's): with 2 per connection and 3 per user, a second tunnel
/// forwards one connection while the first holds two, and its next one is refused with the
/// user's limit named; once the first tunnel's are closed, it forwards again.
#[test]
fn forwards_are_capped_per_user_across_connections() {
    let site = Site::new("ssh-fwd-user-cap");
    let config = site.config("[ssh]\nmax_forwards = 2\nmax_forwards_per_user = 3\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);
    httpd_then(&alice, "base", "true");
    let said = site.scratch.join("ssh-stderr-2");
    let tunnel = |local: u16, stderr: std::fs::File| {
        let forward = format!("{local}:127.0.0.1:8000");
        Bg(Some(
            ssh.cmd("ssh", &pw, &["-N", "-L", &forward, &target])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        ))
    };
    let (first, second) = (free_port(), free_port());
    let _first = tunnel(
        first,
        std::fs::File::create(site.scratch.join("ssh-stderr-1")).unwrap(),
    );
    let _second = tunnel(second, std::fs::File::create(&said).unwrap());
    let held: Vec<TcpStream> = [first, first, second]
        .into_iter()
        .map(eventually_connect)
        .collect();
    eventually("three forwards to connect inside the env", || {
        forwarded_to_8000(&alice, "base") == 3
    });
    let mut fourth = TcpStream::connect(("127.0.0.1", second)).unwrap();
    let mut got = Vec::new();
    fourth.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    eventually("the refusal to be printed", || {
        std::fs::read_to_string(&said).unwrap().contains(
            "open failed: administratively prohibited: spawngrid: you hold 3 forwards on this \
             node, the node's limit ([ssh] max_forwards_per_user): close one first",
        )
    });
    drop(held);
    eventually("the forwards to end", || {
        forwarded_to_8000(&alice, "base") == 0
    });
    assert!(http_get(second).ends_with("hello-from-the-env\n"));
    alice.ok("boom", &["base"]);
}

/// A forward to a server inside the env that never answers nor closes ends soon after the
/// client goes: the env is no longer in use, so the node's idle timeout ends it.
#[test]
fn a_forward_to_a_silent_server_ends_soon_after_the_client() {
    let site = Site::new("ssh-fwd-silent");
    let config = site.config("idle_timeout = \"6s\"\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);
    // Stopped, httpd never reads, writes or closes; the kernel still completes connections
    // to it, which wait in its queue.
    httpd_then(&alice, "base", "kill -STOP $(pidof httpd)");
    let local = free_port();
    let forward = format!("{local}:127.0.0.1:8000");
    // The session keeps the env in use until the forward does.
    let client = Bg(Some(
        ssh.cmd(
            "ssh",
            &pw,
            &["-L", &forward, &target, "--", "exec sleep 600"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    ));
    let conn = eventually_connect(local);
    eventually("the forward to connect inside the env", || {
        forwarded_to_8000(&alice, "base") == 1
    });
    drop(client); // killed
    drop(conn);
    eventually("the idle env to end", || alice.env_names().is_empty());
}

/// A connection to 127.0.0.1:`port` on the host, once something listens there.
fn eventually_connect(port: u16) -> TcpStream {
    let mut conn = None;
    eventually("the forwarded port to listen", || {
        conn = TcpStream::connect(("127.0.0.1", port)).ok();
        conn.is_some()
    });
    conn.unwrap()
}

/// A remote forward ends with its env: once the env is boomed and spawned again, the same
/// connection forwards the same port into the new env.
#[test]
fn a_remote_forward_ends_with_its_env() {
    let site = Site::new("ssh-fwd-r-boom");
    site.start("127.0.0.1:0");
    let Session {
        alice,
        ssh,
        pw,
        target,
    } = session(&site);
    let control = site.scratch.join("mux");
    let control = control.to_str().unwrap();
    let args = [
        "-o",
        "ExitOnForwardFailure=yes",
        "-M",
        "-N",
        "-S",
        control,
        "-R",
        "9000:127.0.0.1:1",
        &target,
    ];
    let _master = Bg(Some(
        ssh.cmd("ssh", &pw, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let listening = || alice.exec("base", "nc 127.0.0.1 9000 </dev/null").0 == 0;
    eventually("the port to listen inside the env", listening);
    alice.ok("boom", &["base"]);
    alice.ok("spawn", &["base"]);
    assert!(!listening());
    let again = [
        "-S",
        control,
        "-O",
        "forward",
        "-R",
        "9000:127.0.0.1:2",
        &target,
    ];
    let out = run(&mut ssh.cmd("ssh", &pw, &again), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(listening());
    alice.ok("boom", &["base"]);
}
