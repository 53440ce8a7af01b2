//! The real OpenSSH client for the SSH gateway's tests (tests/ssh.rs, tests/ssh_forward.rs):
//! options of its own per test, password logins through `SSH_ASKPASS`.

use super::site::*;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// OpenSSH client options for one test: its own known_hosts, no user config, password only.
pub struct SshClient {
    pub dir: PathBuf,
    pub port: String,
    /// OpenSSH's `LogLevel` (`ERROR`; `INFO` shows why a channel was refused).
    pub log_level: &'static str,
}

impl SshClient {
    pub fn new(site: &Site) -> SshClient {
        let dir = site.scratch.join("ssh-client");
        std::fs::create_dir_all(&dir).unwrap();
        let askpass = dir.join("askpass");
        std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$SG_PASSWORD\"\n").unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&askpass).unwrap().permissions(),
            0o755,
        );
        Command::new("chmod")
            .arg("755")
            .arg(&askpass)
            .status()
            .unwrap();
        let port = site.ssh_addr().rsplit_once(':').unwrap().1.to_string();
        SshClient {
            dir,
            port,
            log_level: "ERROR",
        }
    }

    /// `ssh` (or `sftp`) with this test's known_hosts and no user configuration.
    pub fn base(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        let port_flag = if prog == "ssh" { "-p" } else { "-P" };
        c.args(["-F", "/dev/null", port_flag, &self.port])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ))
            .args(["-o", "StrictHostKeyChecking=no", "-o"])
            .arg(format!("LogLevel={}", self.log_level));
        c
    }

    /// `ssh` with the private key `key` only, never asking anything; `args` after the options.
    pub fn with_key(&self, key: &std::path::Path, args: &[&str]) -> Command {
        let mut c = self.base("ssh");
        c.arg("-i")
            .arg(key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "PreferredAuthentications=publickey"])
            .args(args);
        c
    }

    /// `ssh` (or `sftp`) logging in with `password`, with `args` after the options.
    pub fn cmd(&self, prog: &str, password: &str, args: &[&str]) -> Command {
        let mut c = self.base(prog);
        c.args(["-o", "PreferredAuthentications=password"])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .args(args)
            .env("SSH_ASKPASS", self.dir.join("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("SG_PASSWORD", password)
            .env("DISPLAY", ":0");
        c
    }

    /// `ssh LOGIN@127.0.0.1 -- SCRIPT` with `stdin`; the output.
    pub fn exec(&self, login: &str, password: &str, script: &str, stdin: &[u8]) -> Output {
        let target = format!("{login}@127.0.0.1");
        let mut child = self
            .cmd("ssh", password, &[&target, "--", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut w = child.stdin.take().unwrap();
        let bytes = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut w, &bytes);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        out
    }
}

/// `ssh-keygen -t KIND` without a passphrase into `dir/name` (the public key beside it, `.pub`).
pub fn keygen(dir: &std::path::Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen -t {kind}");
    path
}

/// Registers the public key of `key` (made by [`keygen`]) for `user` (offline, as root).
pub fn add_key(site: &Site, user: &str, key: &std::path::Path) {
    let pubkey = format!("{}.pub", key.display());
    site.admin(
        &[
            "user",
            "--data",
            site.data_str(),
            "key",
            user,
            "add",
            &pubkey,
        ],
        None,
    );
}

/// alice's login for her env `env`.
pub fn login(user: &User, env: &str) -> String {
    format!("{env}+{}", user.name)
}

pub fn password(user: &User) -> String {
    format!("{}-pw", user.name)
}

/// A script making `name` a user of an env (uid and gid 1000, home `/home/NAME`, in group
/// `staff` (50)): the gateway then runs their sessions as that user.
pub fn add_env_user(name: &str) -> String {
    format!(
        "echo '{name}:x:1000:1000::/home/{name}:/bin/sh' >> /etc/passwd; \
         echo 'staff:x:50:{name}' >> /etc/group; mkdir -p /home/{name}; \
         chown 1000:1000 /home/{name}"
    )
}

/// Copies the host's program `path` (e.g. `/usr/bin/ssh-add`) and every library `ldd` names
/// into `user`'s env `env` (the loader at its own path, the others in
/// `/lib/x86_64-linux-gnu`), executable: for a busybox env that has neither.
pub fn install_from_host(user: &User, env: &str, path: &str) {
    let ldd = Command::new("ldd").arg(path).output().unwrap();
    let libs = text(&ldd.stdout);
    let dirs = "mkdir -p /lib64 /usr/bin /lib/x86_64-linux-gnu";
    assert_eq!(user.exec(env, dirs).0, 0);
    let mut dests = Vec::new();
    for f in std::iter::once(path).chain(libs.split_whitespace().filter(|w| w.starts_with('/'))) {
        let real = std::fs::canonicalize(f).unwrap();
        let dest = match f.starts_with("/lib64/") || f == path {
            true => f.to_string(),
            false => format!("/lib/x86_64-linux-gnu/{}", f.rsplit('/').next().unwrap()),
        };
        user.ok("cp", &[real.to_str().unwrap(), &format!("{env}:{dest}")]);
        dests.push(dest);
    }
    assert_eq!(
        user.exec(env, &format!("chmod 755 {}", dests.join(" "))).0,
        0
    );
}
