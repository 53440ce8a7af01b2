//! Commands inside an env, host side: the `Command` that starts the env-enter helper
//! (`inside::enter`) with its [`EnterConfig`], and the lookup of a user of the env
//! ([`Identity`], from the env's own `/etc/passwd` and `/etc/group`: [`Accounts`]).

pub use crate::identity::Identity;
pub use crate::protocol::{Builtin, ENTER_FAILED};

use crate::error::{fail, Context, Error, Result};
use crate::host::freeze;
use crate::host::runtime::Runtime;
use crate::host::state::EnvState;
use crate::proc::start_time;
use crate::protocol::{EnterConfig, Message, ENTER};
use rustix::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;

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
/// [`crate::host::tty::Tty`].
pub(crate) fn command_with(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    tty: Option<(u16, u16)>,
    user: Option<&Identity>,
) -> Result<Command> {
    if argv.is_empty() {
        fail!("no command to run");
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
        fail!("no command to run");
    }
    if !state.alive() {
        return Err(Error::NotRunning {
            name: state.name.clone(),
        });
    }
    // A helper joining a frozen cgroup would freeze too, and its caller wait forever.
    freeze::wait_thawed(rt, state, freeze::FROZEN_WAIT)?;
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
    cmd.arg(ENTER)
        .arg(std::ffi::OsString::from_vec(cfg.encode()));
    Ok(cmd)
}

/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// A running env's `/etc/passwd` and `/etc/group`, read once for any number of lookups. The
/// files are opened from the host through the init's root directory with every path resolved
/// inside it (`openat2` with `RESOLVE_IN_ROOT`), so a symlink in the env cannot point at a host
/// file; only regular files are read (a FIFO cannot stall the caller), and at most 4 MiB of
/// each.
pub struct Accounts {
    /// `/etc/passwd`, if the env has one.
    passwd: Option<String>,
    /// `/etc/group` (empty if the env has none).
    group: String,
}

impl Accounts {
    /// Reads env `state`'s account files.
    pub fn read(state: &EnvState) -> Result<Accounts> {
        let root = env_root(state)?;
        let passwd = read_account_file(&root, "etc/passwd")?;
        let group = match passwd {
            Some(_) => read_account_file(&root, "etc/group")?.unwrap_or_default(),
            None => String::new(),
        };
        Ok(Accounts { passwd, group })
    }

    /// User `name` of the env; `None` if it has no such user (or no `/etc/passwd`).
    pub fn user(&self, name: &str) -> Option<Identity> {
        Identity::parse(name, self.passwd.as_deref()?, &self.group)
    }
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
        return Err(Error::NotRunning {
            name: state.name.clone(),
        });
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
        fail!("/{path} in the env is not a regular file");
    }
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut text)
        .with_context(|| format!("reading /{path} in the env"))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}
