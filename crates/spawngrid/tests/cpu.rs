//! `spawngrid cpu` (a terminal session over the node's WebSocket) and `spawngrid cp` (tar
//! streams through the node) end to end, as root: the real binary serving HTTPS on
//! 127.0.0.1, a busybox base snapshot, users alice and bob (tests/common/site.rs).

use crate::common;

use common::site::*;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// The processes in env `sess` besides its init and the listing itself: "PID COMM" lines.
fn others(user: &User<'_>) -> String {
    let (code, out, err) = user.exec(
        "sess",
        r#"for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" = 1 ] || [ "$p" = $$ ] || { read -r c < $d/comm && echo "$p $c"; }; done; true"#,
    );
    assert_eq!(code, 0, "{err}");
    out
}

/// `spawngrid cp - DST` as `user`, its stdin, stdout and stderr piped.
fn cp_from_stdin(site: &Site, user: &User<'_>, dst: &str) -> std::process::Child {
    Command::new(common::bin())
        .args(["cp", "-h", &site.addr(), "-u", &user.name, "-", dst])
        .env("HOME", &user.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (polling) until `f` holds; false if it never did.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn cpu_on_a_terminal_through_pipes_and_refusals() {
    let site = Site::new("cpu-session");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    let bob = site.user("bob");
    alice.login();
    bob.login();
    alice.ok("spawn", &["base", "--as", "sess"]);

    // A real terminal: prompt, size, resize, ^C, exit code, the terminal restored.
    let addr = site.addr();
    common::terminal_session(
        Some(&alice.home),
        &[common::bin(), "cpu", "sess", "-h", &addr, "-u", &alice.name],
    );

    // Through pipes: input goes in, its end is a ^D, output comes out, the code is returned.
    let out = alice.sg("cpu", &["sess"], Some("echo hi\nexit 4\n"));
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{screen}{}", text(&out.stderr));
    assert!(screen.lines().any(|l| l.trim_end() == "hi"), "{screen}");
    // End of input ends the shell (exit 0).
    let out = alice.sg("cpu", &["sess"], Some("echo bye\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A command instead of the shell.
    let out = run(
        Command::new(common::bin())
            .args(["cpu", "sess", "-h", &site.addr(), "-u", &alice.name])
            .args(["--", "sh", "-c", "echo term=$TERM; tty; exit 3"])
            .env("HOME", &alice.home),
        None,
    );
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{screen}{}", text(&out.stderr));
    assert!(
        screen.contains("term=xterm-256color\r\n/dev/pts/"),
        "{screen}"
    );

    // Refusals: one line, non-zero, nothing run.
    let err = bob.refused("cpu", &["sess"]);
    assert!(err.contains("you have no env sess"), "{err}");
    let err = alice.refused("cpu", &["nope"]);
    assert!(err.contains("you have no env nope"), "{err}");
    let (status, body) = site.raw(
        "GET",
        "/api/envs/sess/cpu",
        &format!(r#"{{"Authorization": "Bearer {}"}}"#, alice.token()),
        b"",
        false,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("WebSocket"), "{body}");

    // A client that dies takes its session with it: nothing is left in the env.
    assert_eq!(others(&alice), "");
    let mut client = Command::new(common::bin())
        .args(["cpu", "sess", "-h", &site.addr(), "-u", &alice.name])
        .env("HOME", &alice.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .as_ref()
        .unwrap()
        .write_all(b"sleep 1000 & sleep 1001\n")
        .unwrap();
    assert!(
        eventually(|| others(&alice).contains("sleep")),
        "the session did not start: {}",
        site.log()
    );
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        eventually(|| others(&alice).is_empty()),
        "left behind: {}",
        others(&alice)
    );
    alice.ok("boom", &["sess"]);
}

/// `python3 -c SILENT ADDR PATH TOKEN`: a WebSocket handshake, then nothing: it never reads
/// (so never answers a ping) nor sends. Prints the status line's start.
const SILENT: &str = r#"
import socket, ssl, sys, time
addr, path, token = sys.argv[1:4]
host, port = addr.rsplit(":", 1)
s = ssl._create_unverified_context().wrap_socket(socket.create_connection((host, int(port))))
s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           "Authorization: Bearer %s\r\n\r\n" % (path, addr, token)).encode())
print(s.recv(12).decode(), flush=True)
time.sleep(3600)
"#;

/// An idle terminal is not a dead client: with `stream_idle_timeout = 2`, a `spawngrid cpu`
/// session left without input for several times that still runs what is typed next (its
/// client answers the node's pings), while a client that sends nothing, not even pongs, has
/// its session ended and its processes killed.
#[test]
fn silent_cpu_clients_are_dropped_idle_terminals_kept() {
    let site = Site::new("cpu-idle");
    let config = site.config("[connections]\nstream_idle_timeout = 2\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base", "--as", "sess"]);

    let mut idle = Command::new(common::bin())
        .args(["cpu", "sess", "-h", &site.addr(), "-u", &alice.name])
        .env("HOME", &alice.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = idle.stdin.take().unwrap();
    input.write_all(b"echo one\n").unwrap();
    std::thread::sleep(Duration::from_secs(8));
    input.write_all(b"echo two\nexit 5\n").unwrap();
    drop(input);
    let out = idle.wait_with_output().unwrap();
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{screen}");
    assert!(screen.lines().any(|l| l.trim_end() == "two"), "{screen}");

    let path = "/api/envs/sess/cpu?cmd=%5B%22sleep%22%2C%221000%22%5D";
    let mut silent = Command::new("python3")
        .args(["-c", SILENT, &site.addr(), path, &alice.token()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = [0u8; 12];
    std::io::Read::read_exact(silent.stdout.as_mut().unwrap(), &mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 101");
    assert!(
        eventually(|| others(&alice).contains("sleep")),
        "the session did not start: {}",
        site.log()
    );
    assert!(
        eventually(|| others(&alice).is_empty()),
        "the silent client's session was left: {}",
        others(&alice)
    );
    assert!(site
        .log()
        .contains("cpu client silent for 2s: ending its session"));
    silent.kill().unwrap();
    silent.wait().unwrap();
}

/// A file's (bytes, mode, mtime), or a symlink's target, or a directory's (mode, mtime).
fn describe(p: &Path) -> String {
    let m = std::fs::symlink_metadata(p).unwrap();
    let mode = m.permissions().mode() & 0o7777;
    if m.file_type().is_symlink() {
        format!("link {}", std::fs::read_link(p).unwrap().display())
    } else if m.is_dir() {
        format!("dir {mode:o} {}", m.mtime())
    } else {
        let bytes = std::fs::read(p).unwrap();
        format!(
            "file {mode:o} {} {} {:x}",
            m.mtime(),
            bytes.len(),
            bytes.iter().fold(0u64, |h, b| h.rotate_left(5) ^ *b as u64)
        )
    }
}

/// Every path under `root` (relative) with [`describe`].
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.push(format!("{rel}: {}", describe(&p)));
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Sets a path's mtime.
fn set_mtime(p: &Path, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    std::fs::File::open(p).unwrap().set_modified(t).unwrap();
}

/// A local tree with binary files, modes, mtimes, a symlink and an empty directory.
fn make_tree(root: &Path) {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("big.bin"), random(3 << 20)).unwrap();
    std::fs::write(root.join("sub/tool"), random(1000)).unwrap();
    std::fs::write(root.join("sub/deeper/secret"), b"s\0\xffcret").unwrap();
    std::fs::write(root.join("zero"), b"").unwrap();
    std::os::unix::fs::symlink("sub/tool", root.join("link")).unwrap();
    for (p, mode, mtime) in [
        ("big.bin", 0o644, 1_500_000_000),
        ("sub/tool", 0o755, 1_500_000_001),
        ("sub/deeper/secret", 0o600, 1_500_000_002),
        ("zero", 0o444, 1_500_000_003),
        ("sub/deeper", 0o700, 1_500_000_004),
        ("empty", 0o711, 1_500_000_005),
        ("sub", 0o750, 1_500_000_006),
    ] {
        let path = root.join(p);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&path, mtime);
    }
}

/// A tar with hostile entries (python's tarfile writes them as asked).
const HOSTILE_TAR: &str = r#"
import io, sys, tarfile
t = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.GNU_FORMAT)
def add(name, data=b"x", kind=tarfile.REGTYPE, link=""):
    i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
case = sys.argv[1]
add("fine")
if case == "dotdot": add("../escaped")
if case == "absolute": add("/etc/escaped")
if case == "symlink": add("l", kind=tarfile.SYMTYPE, link="/etc"); add("l/escaped")
if case == "hardlink": add("h", kind=tarfile.LNKTYPE, link="/etc/passwd")
t.close()
"#;

#[test]
fn cp_trees_in_and_out_and_errors() {
    let site = Site::new("cpu-cp");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    let bob = site.user("bob");
    alice.login();
    bob.login();
    alice.ok("spawn", &["base", "--as", "files"]);
    let work = site.scratch.join("cp");
    let src = work.join("tree");
    make_tree(&src);
    let want = tree(&src);
    let path = |p: &Path| p.to_str().unwrap().to_string();

    // In, into an existing directory; out under a new name; out into an existing directory.
    alice.ok("cp", &[&path(&src), "files:/root"]);
    let (code, out, err) = alice.exec(
        "files",
        "cd /root/tree && stat -c '%n %a %Y %s %U' sub sub/tool zero && ls -la",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sub 750 1500000006 ")
            && out.contains("sub/tool 755 1500000001 1000 root")
            && out.contains("zero 444 1500000003 0 root"),
        "{out}"
    );
    alice.ok("cp", &["files:/root/tree", &path(&work.join("back"))]);
    assert_eq!(tree(&work.join("back")), want);
    std::fs::create_dir(work.join("into")).unwrap();
    alice.ok("cp", &["files:/root/tree", &path(&work.join("into"))]);
    assert_eq!(tree(&work.join("into/tree")), want);
    // The directory's own mode and mtime come along too.
    assert_eq!(describe(&work.join("back")), describe(&src));

    // Single files, renamed both ways; a directory's contents with `/.`.
    let file = src.join("sub/tool");
    alice.ok("cp", &[&path(&file), "files:/root/renamed"]);
    alice.ok("cp", &["files:/root/renamed", &path(&work.join("tool2"))]);
    assert_eq!(describe(&work.join("tool2")), describe(&file));
    alice.ok(
        "cp",
        &["files:/root/tree/sub/.", &path(&work.join("contents"))],
    );
    assert_eq!(tree(&work.join("contents")), tree(&src.join("sub")));

    // `-`: a tar on stdout.
    let out = run(
        Command::new("sh").arg("-c").arg(format!(
            "HOME={} {} cp -h {} -u {} files:/root/tree/sub - | tar tf -",
            alice.home.display(),
            common::bin(),
            site.addr(),
            alice.name
        )),
        None,
    );
    let names = text(&out.stdout);
    assert!(
        names.lines().any(|l| l == "sub/deeper/secret"),
        "{names}{}",
        text(&out.stderr)
    );

    // Errors: one line, non-zero.
    let local = path(&work.join("x"));
    let err = alice.refused("cp", &["files:/nope", &local]);
    assert!(
        err.contains("no such file or directory in env files: /nope"),
        "{err}"
    );
    let err = alice.refused("cp", &["/nonexistent/file", "files:/root"]);
    assert!(err.contains("no such file or directory"), "{err}");
    let err = alice.refused("cp", &[&path(&file), "files:/root/tree/zero/x"]);
    assert!(err.contains("not a directory in env files"), "{err}");
    let err = alice.refused("cp", &[&path(&file), "files:/no/such/x"]);
    assert!(
        err.contains("no such directory in env files: /no/such"),
        "{err}"
    );
    let err = alice.refused("cp", &["files:/root/tree", "/no/such/dir/x"]);
    assert!(err.contains("no such directory: /no/such/dir"), "{err}");
    let err = alice.refused("cp", &[&path(&file), &local]);
    assert!(err.contains("neither side is an env"), "{err}");
    let err = bob.refused("cp", &["files:/root/tree", &local]);
    assert!(err.contains("you have no env files"), "{err}");
    let err = bob.refused("cp", &[&path(&file), "files:/root"]);
    assert!(err.contains("you have no env files"), "{err}");
    // A refusal comes before the body (`Expect: 100-continue`): stdin, a pipe left open and
    // never written, is not waited for.
    let mut waiting = cp_from_stdin(&site, &bob, "files:/root");
    let open_stdin = waiting.stdin.take();
    let refused = eventually(|| matches!(waiting.try_wait(), Ok(Some(_))));
    if !refused {
        let _ = waiting.kill();
    }
    let out = waiting.wait_with_output().unwrap();
    drop(open_stdin);
    assert!(refused, "cp waited for stdin before the node's refusal");
    assert!(!out.status.success(), "a refused upload exited 0");
    assert!(
        text(&out.stderr).contains("you have no env files"),
        "{}",
        text(&out.stderr)
    );
    assert!(!work.join("x").exists());

    // Hostile archives: refused, and nothing outside the destination changes in the env.
    let listing = |u: &User<'_>| {
        let (code, out, err) = u.exec(
            "files",
            "find / -xdev -path /proc -prune -o -path /root/dst -prune -o -print | sort | xargs stat -c '%n %Y %s %a' 2>&1",
        );
        assert_eq!(code, 0, "{err}");
        out
    };
    assert_eq!(alice.exec("files", "mkdir /root/dst").0, 0);
    let before = listing(&alice);
    for case in ["dotdot", "absolute", "symlink", "hardlink"] {
        let hostile = Command::new("python3")
            .args(["-c", HOSTILE_TAR, case])
            .output()
            .unwrap();
        assert!(hostile.status.success(), "{}", text(&hostile.stderr));
        let mut client = cp_from_stdin(&site, &alice, "files:/root/dst");
        client
            .stdin
            .take()
            .unwrap()
            .write_all(&hostile.stdout)
            .unwrap();
        let out = client.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "{case}: {err}");
        assert!(err.contains("unsafe entry"), "{case}: {err}");
    }
    assert_eq!(listing(&alice), before);

    // An env that fills up (a sparse 150 MiB file, 100 MiB write layer): tar's own message.
    let huge = work.join("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(150 << 20)
        .unwrap();
    let err = alice.refused("cp", &[&path(&huge), "files:/root/huge"]);
    assert!(
        err.contains("tar in env files failed") && err.contains("No space left on device"),
        "{err}"
    );
    alice.ok("boom", &["files"]);
}
