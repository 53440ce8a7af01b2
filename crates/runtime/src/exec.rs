//! Running commands inside an env: the `env-enter` helper joins the env's cgroup and
//! namespaces (from its init's `/proc/PID/ns/*`), becomes root inside with the env's
//! restrictions, optionally switches to a user of the env ([`Identity`], looked up in the
//! env's own `/etc/passwd` and `/etc/group` by [`lookup_user`]) and runs the command as its
//! child, exiting with the command's status.

use crate::state::{start_time, EnvState};
use crate::{helper, security, Runtime};
use anyhow::{bail, Context, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::thread::LinkNameSpaceType as Ns;
use serde::{Deserialize, Serialize};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The environment variables a command inside an env starts with.
pub(crate) const DEFAULT_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
];

/// Exit code of the helper when it could not start the command (like `env`'s 125).
pub const ENTER_FAILED: u8 = 125;

/// What the env-enter helper is told (its one JSON argument).
#[derive(Serialize, Deserialize)]
pub struct EnterConfig {
    /// Host pid of the env's init.
    pub init_pid: i32,
    /// Its start time (guards against pid reuse).
    pub init_start: u64,
    /// `cgroup.procs` files to join.
    pub procs_files: Vec<PathBuf>,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Its environment (besides `DEFAULT_ENV`, which these override).
    pub env: Vec<(String, String)>,
    /// Its working directory inside the env.
    pub cwd: String,
    /// Run on a new terminal of (rows, cols) whose master is sent over stdin (see [`crate::tty`]).
    pub tty: Option<(u16, u16)>,
    /// Run as this user of the env instead of root.
    #[serde(default)]
    pub user: Option<Identity>,
    /// Run this built-in server of the helper instead of `argv` (which is then empty).
    #[serde(default)]
    pub builtin: Option<Builtin>,
}

/// A server the env-enter helper runs itself, inside the env, on its stdin and stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// SFTP ([`crate::sftp`]).
    Sftp,
}

/// A `Command` that runs `builtin` inside env `state` as `user` (root if `None`), in their
/// home, once spawned; its stdin and stdout are the server's connection.
pub fn builtin_command(
    rt: &Runtime,
    state: &EnvState,
    builtin: Builtin,
    user: Option<&Identity>,
) -> Result<Command> {
    enter_command(rt, state, &[], &[], None, user, Some(builtin))
}

/// A `Command` that runs `argv` inside env `state` when spawned. Its stdin, stdout and stderr
/// are the command's (set them as needed); its exit code is the command's, 128 + N if the
/// command was killed by signal N, or [`ENTER_FAILED`] if it could not be started.
pub fn command(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
) -> Result<Command> {
    command_with(rt, state, argv, env, None, None)
}

/// [`command`], optionally on a terminal of (rows, cols) and as `user` (root if `None`: else
/// in their home, with their groups and `HOME`, `USER`, `LOGNAME` and `SHELL`); used by
/// [`crate::tty::Tty`].
pub(crate) fn command_with(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    tty: Option<(u16, u16)>,
    user: Option<&Identity>,
) -> Result<Command> {
    if argv.is_empty() {
        bail!("no command to run");
    }
    enter_command(rt, state, argv, env, tty, user, None)
}

/// The env-enter helper's command for `argv` or `builtin`.
fn enter_command(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    tty: Option<(u16, u16)>,
    user: Option<&Identity>,
    builtin: Option<Builtin>,
) -> Result<Command> {
    if argv.is_empty() && builtin.is_none() {
        bail!("no command to run");
    }
    if !state.alive() {
        bail!(
            "env {} is not running (its init {} is gone); boom it",
            state.name,
            state.init_pid
        );
    }
    // A helper joining a frozen cgroup would freeze too, and its caller wait forever.
    crate::freeze::wait_thawed(rt, state, crate::freeze::FROZEN_WAIT)?;
    let cfg = EnterConfig {
        init_pid: state.init_pid,
        init_start: state.init_start,
        procs_files: state
            .cgroups
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .collect(),
        argv: argv.to_vec(),
        env: env.to_vec(),
        cwd: user.map_or("/root", |u| u.home.as_str()).into(),
        tty,
        user: user.cloned(),
        builtin,
    };
    let mut cmd = Command::new(&rt.helper);
    cmd.arg(helper::ENTER).arg(serde_json::to_string(&cfg)?);
    Ok(cmd)
}

/// Entry point of `env-enter CONFIG`.
pub fn helper_main(config: &str) -> ExitCode {
    match run(config) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("spawngrid env-enter: {e:#}");
            ExitCode::from(ENTER_FAILED)
        }
    }
}

fn run(config: &str) -> Result<u8> {
    security::close_inherited_fds();
    let cfg: EnterConfig = serde_json::from_str(config).context("bad env-enter config")?;
    let kinds = [
        ("user", Ns::User),
        ("mnt", Ns::Mount),
        ("pid", Ns::ProcessID),
        ("uts", Ns::HostNameAndNISDomainName),
        ("ipc", Ns::InterProcessCommunication),
        ("net", Ns::Network),
        ("cgroup", Ns::ControlGroup),
    ];
    let mut fds = Vec::new();
    for (name, kind) in kinds {
        let path = format!("/proc/{}/ns/{name}", cfg.init_pid);
        let fd = std::fs::File::open(&path)
            .with_context(|| format!("opening {path} (is the env running?)"))?;
        fds.push((fd, kind));
    }
    // The fds were opened before this check, so they belong to the right process if it holds.
    if start_time(cfg.init_pid) != Some(cfg.init_start) {
        bail!("the env's init (pid {}) is gone", cfg.init_pid);
    }
    let me = std::process::id().to_string();
    for f in &cfg.procs_files {
        std::fs::write(f, &me).with_context(|| format!("joining cgroup {}", f.display()))?;
    }
    for (fd, kind) in &fds {
        rustix::thread::move_into_link_name_space(fd.as_fd(), Some(*kind))
            .with_context(|| format!("setns {kind:?}"))?;
    }
    drop(fds);
    security::become_root()?;
    security::restrict()?;
    if let Some(user) = &cfg.user {
        user.switch()?;
    }
    if rustix::process::chdir(cfg.cwd.as_str()).is_err() {
        rustix::process::chdir("/").context("chdir / inside the env")?;
    }
    match cfg.builtin {
        Some(Builtin::Sftp) => return Ok(crate::sftp::serve()),
        None if cfg.argv.is_empty() => bail!("no command to run"),
        None => {}
    }
    let mut cmd = Command::new(&cfg.argv[0]);
    cmd.args(&cfg.argv[1..])
        .env_clear()
        .envs(DEFAULT_ENV)
        .envs(cfg.user.iter().flat_map(Identity::env))
        .envs(cfg.env.iter().map(|(k, v)| (k, v)));
    if let Some((rows, cols)) = cfg.tty {
        cmd.env("TERM", "xterm-256color");
        crate::tty::attach(&mut cmd, rows, cols)?;
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {:?}", cfg.argv[0]))?;
    // Close our copies of the terminal's slave so the master sees EOF when the command ends.
    drop(cmd);
    let status = child.wait().context("waiting for the command")?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => ENTER_FAILED,
    })
}

/// A user of an env, from its `/etc/passwd` and `/etc/group`: who a command runs as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user name.
    pub name: String,
    /// User id inside the env.
    pub uid: u32,
    /// Primary group id inside the env.
    pub gid: u32,
    /// Supplementary group ids (the groups of `/etc/group` listing the user, and `gid`).
    pub groups: Vec<u32>,
    /// Home directory (absolute; `/` if the entry has none).
    pub home: String,
    /// Login shell (absolute; `/bin/sh` if the entry has none).
    pub shell: String,
}

/// The most supplementary groups kept for a user (the kernel allows 65536; no env needs more).
const MAX_GROUPS: usize = 256;

/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

impl Identity {
    /// The variables a login of this user sets: `HOME`, `USER`, `LOGNAME`, `SHELL`.
    pub fn env(&self) -> [(String, String); 4] {
        [
            ("HOME".into(), self.home.clone()),
            ("USER".into(), self.name.clone()),
            ("LOGNAME".into(), self.name.clone()),
            ("SHELL".into(), self.shell.clone()),
        ]
    }

    /// Becomes this user (groups, then gid, then uid: the last step drops every capability).
    fn switch(&self) -> Result<()> {
        use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
        use rustix::thread::{Gid, Uid};
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let fail = |what: &str| format!("switching to user {} ({what})", self.name);
        set_thread_groups(&groups).with_context(|| fail("setgroups"))?;
        let gid = Gid::from_raw(self.gid);
        set_thread_res_gid(gid, gid, gid).with_context(|| fail(&format!("gid {}", self.gid)))?;
        let uid = Uid::from_raw(self.uid);
        set_thread_res_uid(uid, uid, uid).with_context(|| fail(&format!("uid {}", self.uid)))?;
        Ok(())
    }

    /// The user described by `passwd` and `group` (the files' text), if `passwd` has them.
    pub fn parse(name: &str, passwd: &str, group: &str) -> Option<Identity> {
        let fields = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && f[0] == name)?;
        let uid: u32 = fields[2].parse().ok()?;
        let gid: u32 = fields[3].parse().ok()?;
        let absolute =
            |p: &str, default: &str| if p.starts_with('/') { p } else { default }.to_string();
        let mut groups = vec![gid];
        for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() < 4 || !f[3].split(',').any(|m| m.trim() == name) {
                continue;
            }
            if let Ok(g) = f[2].parse::<u32>() {
                if !groups.contains(&g) && groups.len() < MAX_GROUPS {
                    groups.push(g);
                }
            }
        }
        Some(Identity {
            name: name.to_string(),
            uid,
            gid,
            groups,
            home: absolute(fields[5], "/"),
            shell: absolute(fields[6], "/bin/sh"),
        })
    }
}

/// Looks up user `name` in the running env's `/etc/passwd` and `/etc/group`; `None` if the env
/// has no such user (or no `/etc/passwd`). The files are opened from the host through the
/// init's root directory with every path resolved inside it (`openat2` with
/// `RESOLVE_IN_ROOT`), so a symlink in the env cannot point at a host file; only regular
/// files are read (a FIFO cannot stall the caller), and at most 4 MiB of each.
pub fn lookup_user(state: &EnvState, name: &str) -> Result<Option<Identity>> {
    let root = env_root(state)?;
    let Some(passwd) = read_account_file(&root, "etc/passwd")? else {
        return Ok(None);
    };
    let group = read_account_file(&root, "etc/group")?.unwrap_or_default();
    Ok(Identity::parse(name, &passwd, &group))
}

/// An `O_PATH` fd of the running env's root directory, seen from the host (its init's
/// `/proc/PID/root`, checked to be that init's): paths opened under it with `openat2` and
/// `RESOLVE_IN_ROOT` stay inside the env.
pub fn env_root(state: &EnvState) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let root_path = format!("/proc/{}/root", state.init_pid);
    let root = rustix::fs::open(
        &root_path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {root_path} (is env {} running?)", state.name))?;
    if start_time(state.init_pid) != Some(state.init_start) {
        bail!(
            "env {} is not running (its init is gone); boom it",
            state.name
        );
    }
    Ok(root)
}

/// Reads `path` under `root` (an env's root), resolved inside it; `None` if missing.
fn read_account_file(root: &OwnedFd, path: &str) -> Result<Option<String>> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use std::io::Read;
    let fd = match rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening /{path} in the env")),
    };
    let st = rustix::fs::fstat(&fd).with_context(|| format!("stat /{path} in the env"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        bail!("/{path} in the env is not a regular file");
    }
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut text)
        .with_context(|| format!("reading /{path} in the env"))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::Identity;

    #[test]
    fn identity_from_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nbob:x:1001:1001:Bob:/home/bob:/bin/bash\n\
                      weird:x:7:7::relative:\nbad:x:nan:1::/:/bin/sh\n";
        let group =
            "root:x:0:\nsudo:x:27:alice,bob\nbob:x:1001:\nadm:x:4: bob \nusers:x:100:bobby\n";
        let bob = Identity::parse("bob", passwd, group).unwrap();
        assert_eq!((bob.uid, bob.gid), (1001, 1001));
        assert_eq!(bob.groups, [1001, 27, 4]);
        assert_eq!((&bob.home[..], &bob.shell[..]), ("/home/bob", "/bin/bash"));
        let weird = Identity::parse("weird", passwd, group).unwrap();
        assert_eq!((&weird.home[..], &weird.shell[..]), ("/", "/bin/sh"));
        assert!(Identity::parse("bad", passwd, group).is_none());
        assert!(Identity::parse("alice", passwd, group).is_none());
        assert!(Identity::parse("", passwd, group).is_none());
    }
}
