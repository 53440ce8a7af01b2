//! The gateway's built-in SFTP server end to end (as root): the real OpenSSH `scp` and `sftp`
//! against a busybox env, which has no sftp-server of its own.

use crate::common;

use common::site::*;
use common::ssh::*;
use std::os::unix::fs::PermissionsExt;

/// Runs an `sftp` batch (commands on stdin: `-b` would forbid the password login); its
/// output, after checking it succeeded.
fn sftp(ssh: &SshClient, pw: &str, target: &str, batch: &str) -> String {
    let out = run(&mut ssh.cmd("sftp", pw, &[target]), Some(batch));
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn scp_and_sftp_work_in_an_env_without_sftp_server() {
    let site = Site::new("sftp-builtin");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    let ssh = SshClient::new(&site);
    let pw = password(&alice);
    let target = format!("{}@127.0.0.1", login(&alice, "base"));
    let scratch = site.scratch.path();
    let payload: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let up = scratch.join("up.bin");
    std::fs::write(&up, &payload).unwrap();
    std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o640)).unwrap();

    // scp up (-p: mode and times too), then down; bytes and mode both ways.
    let remote = format!("{target}:/root/up.bin");
    let out = run(
        &mut ssh.cmd("scp", &pw, &["-p", up.to_str().unwrap(), &remote]),
        None,
    );
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    let (code, inside, _) = alice.exec(
        "base",
        "stat -c '%a %s %Y' /root/up.bin; sha256sum /root/up.bin",
    );
    assert_eq!(code, 0);
    let mtime = std::fs::metadata(&up).unwrap().modified().unwrap();
    let mtime = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sum = run(std::process::Command::new("sha256sum").arg(&up), None);
    let sum = text(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        inside,
        format!("640 {} {mtime}\n{sum}  /root/up.bin\n", payload.len())
    );
    let down = scratch.join("down.bin");
    let out = run(
        &mut ssh.cmd("scp", &pw, &[&remote, down.to_str().unwrap()]),
        None,
    );
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert!(
        std::fs::read(&down).unwrap() == payload,
        "scp down: other bytes"
    );
    assert_eq!(
        std::fs::metadata(&down).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // scp -r of a tree of 300 files (several readdir answers) up and back down.
    let tree = scratch.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..300 {
        let dir = if i % 2 == 0 {
            tree.clone()
        } else {
            tree.join("sub")
        };
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let remote_tree = format!("{target}:/root/tree");
    let out = run(
        &mut ssh.cmd("scp", &pw, &["-r", tree.to_str().unwrap(), &remote_tree]),
        None,
    );
    assert!(out.status.success(), "scp -r up: {}", text(&out.stderr));
    let back = scratch.join("tree-back");
    let out = run(
        &mut ssh.cmd("scp", &pw, &["-r", &remote_tree, back.to_str().unwrap()]),
        None,
    );
    assert!(out.status.success(), "scp -r down: {}", text(&out.stderr));
    assert_same_tree(&tree, &back);
    let (_, count, _) = alice.exec("base", "find /root/tree -type f | wc -l");
    assert_eq!(count.trim(), "300");

    // sftp: mkdir, put, rename, symlink, ls, get.
    let got = scratch.join("got.bin");
    let batch = format!(
        "mkdir /root/d\nput {} /root/d/a.bin\nrename /root/d/a.bin /root/d/b.bin\n\
         symlink /root/d/b.bin /root/d/link\nls -1 /root/d\nget /root/d/link {}\n",
        up.display(),
        got.display()
    );
    let listing = sftp(&ssh, &pw, &target, &batch);
    assert!(
        std::fs::read(&got).unwrap() == payload,
        "sftp get: other bytes"
    );
    let names: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("/root/d/"))
        .collect();
    assert_eq!(names, ["/root/d/b.bin", "/root/d/link"], "{listing}");
    let long = sftp(&ssh, &pw, &target, "ls -l /root/d\n");
    assert!(
        long.lines()
            .any(|l| l.starts_with("l") && l.ends_with(" link")),
        "{long}"
    );
    assert!(
        long.lines()
            .any(|l| l.starts_with("-rw-r-----") && l.ends_with(" b.bin")),
        "{long}"
    );
    let (_, inside, _) = alice.exec("base", "ls /root/d; readlink /root/d/link");
    assert_eq!(inside, "b.bin\nlink\n/root/d/b.bin\n");
    // put -p keeps mode and mtime; chmod and chgrp by path.
    let batch = format!(
        "put -p {} /root/d/p.bin\nchmod 604 /root/d/b.bin\nchgrp 50 /root/d/b.bin\n",
        up.display()
    );
    sftp(&ssh, &pw, &target, &batch);
    let script = "stat -c '%a %Y' /root/d/p.bin; stat -c '%a %g' /root/d/b.bin";
    let (_, inside, _) = alice.exec("base", script);
    assert_eq!(inside, format!("640 {mtime}\n604 50\n"));
    // A failing request is an error line, and the session goes on.
    let out = run(
        &mut ssh.cmd("sftp", &pw, &[&target]),
        Some("rename /root/nothing /root/x\nls /root/d/b.bin\n"),
    );
    assert!(
        text(&out.stderr).contains("No such file"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("/root/d/b.bin"));
    alice.ok("boom", &["base"]);
}

/// Paths resolve inside the env: `..` stops at its `/`, a symlink to `/` is its `/`. The host's
/// `/etc/shadow` exists, the env's does not; the env's `/etc/passwd` is not the host's.
#[test]
fn sftp_paths_never_leave_the_env() {
    assert!(std::path::Path::new("/etc/shadow").exists());
    let site = Site::new("sftp-escape");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    assert_eq!(alice.exec("base", "ln -s / /root/rootlink").0, 0);
    let ssh = SshClient::new(&site);
    let pw = password(&alice);
    let target = format!("{}@127.0.0.1", login(&alice, "base"));
    let out_dir = site.scratch.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    for path in [
        "../../../../etc/shadow",
        "/root/rootlink/etc/shadow",
        "/root/rootlink/../../etc/shadow",
    ] {
        let dest = out_dir.join("shadow");
        let out = run(
            &mut ssh.cmd("sftp", &pw, &[&target]),
            Some(&format!("get {path} {}\n", dest.display())),
        );
        assert!(!dest.exists(), "{path} reached the host's /etc/shadow");
        assert!(
            text(&out.stderr).contains("not found"),
            "{path}: {}",
            text(&out.stderr)
        );
    }
    let dest = out_dir.join("passwd");
    sftp(
        &ssh,
        &pw,
        &target,
        &format!("get /root/rootlink/../../etc/passwd {}\n", dest.display()),
    );
    let (_, env_passwd, _) = alice.exec("base", "cat /etc/passwd");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), env_passwd);
    assert_ne!(env_passwd, std::fs::read_to_string("/etc/passwd").unwrap());
    alice.ok("boom", &["base"]);
}

/// `rsync -e ssh` (an exec of `rsync --server` in the env, not SFTP) into an env given rsync:
/// a tree with modes and a symlink, up and back, identical.
#[test]
fn rsync_over_ssh_copies_a_tree_both_ways() {
    let rsync = std::path::Path::new("/usr/bin/rsync");
    assert!(
        rsync.exists(),
        "no rsync on this host: install it (scripts/deps.sh test)"
    );
    let site = Site::new("sftp-rsync");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    install_from_host(&alice, "base", "/usr/bin/rsync");
    let ssh = SshClient::new(&site);
    let pw = password(&alice);
    let target = format!("{}@127.0.0.1", login(&alice, "base"));
    let tree = site.scratch.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(tree.join("data"), vec![7u8; 200_000]).unwrap();
    std::os::unix::fs::symlink("sub/run.sh", tree.join("link")).unwrap();
    // The ssh command line rsync runs (its environment carries the password).
    let ssh_cmd = ssh.cmd("ssh", &pw, &[]);
    let shell: Vec<String> = std::iter::once(ssh_cmd.get_program())
        .chain(ssh_cmd.get_args())
        .map(|a| a.to_str().unwrap().to_string())
        .collect();
    let rsync_cmd = |from: &str, to: &str| {
        let mut c = std::process::Command::new("rsync");
        c.args(["-a", "-e", &shell.join(" "), from, to]);
        for (k, v) in ssh_cmd.get_envs() {
            c.env(k, v.unwrap());
        }
        let out = run(&mut c, None);
        assert!(
            out.status.success(),
            "rsync {from} {to}: {}",
            text(&out.stderr)
        );
    };
    rsync_cmd(
        &format!("{}/", tree.display()),
        &format!("{target}:/root/tree/"),
    );
    let (_, inside, _) = alice.exec(
        "base",
        "stat -c '%a %N' /root/tree/sub/run.sh /root/tree/link",
    );
    assert_eq!(
        inside,
        "750 /root/tree/sub/run.sh\n777 '/root/tree/link' -> 'sub/run.sh'\n"
    );
    let back = site.scratch.join("back");
    rsync_cmd(
        &format!("{target}:/root/tree/"),
        &format!("{}/", back.display()),
    );
    assert_same_tree(&tree, &back);
    let mode = std::fs::metadata(back.join("sub/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        std::path::Path::new("sub/run.sh")
    );
    alice.ok("boom", &["base"]);
}

/// Panics with `diff -r`'s output unless the trees `a` and `b` hold the same files and bytes.
fn assert_same_tree(a: &std::path::Path, b: &std::path::Path) {
    let diff = run(
        std::process::Command::new("diff").arg("-r").arg(a).arg(b),
        None,
    );
    assert!(diff.status.success(), "{}", text(&diff.stdout));
}
