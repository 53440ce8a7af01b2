//! Running commands inside an env: the `env-enter` helper joins the env's cgroup and
//! namespaces (from its init's `/proc/PID/ns/*`), becomes root inside with the env's
//! restrictions and runs the command as its child, exiting with the command's status.

use crate::state::{start_time, EnvState};
use crate::{helper, security, Runtime};
use anyhow::{bail, Context, Result};
use rustix::fd::AsFd;
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
    /// Its environment (besides [`DEFAULT_ENV`], which these override).
    pub env: Vec<(String, String)>,
    /// Its working directory inside the env.
    pub cwd: String,
    /// Run on a new terminal of (rows, cols) whose master is sent over stdin (see [`crate::tty`]).
    pub tty: Option<(u16, u16)>,
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
    command_with_tty(rt, state, argv, env, None)
}

/// [`command`], optionally on a terminal of (rows, cols) (used by [`crate::tty::Tty`]).
pub(crate) fn command_with_tty(
    rt: &Runtime,
    state: &EnvState,
    argv: &[String],
    env: &[(String, String)],
    tty: Option<(u16, u16)>,
) -> Result<Command> {
    if argv.is_empty() {
        bail!("no command to run");
    }
    if !state.alive() {
        bail!(
            "env {} is not running (its init {} is gone); boom it",
            state.name,
            state.init_pid
        );
    }
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
        cwd: "/root".into(),
        tty,
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
    if rustix::process::chdir(cfg.cwd.as_str()).is_err() {
        rustix::process::chdir("/").context("chdir / inside the env")?;
    }
    security::restrict()?;
    let mut cmd = Command::new(&cfg.argv[0]);
    cmd.args(&cfg.argv[1..])
        .env_clear()
        .envs(DEFAULT_ENV)
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
