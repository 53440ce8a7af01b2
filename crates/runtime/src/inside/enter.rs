//! The env-enter helper (`BIN env-enter CONFIG`, an [`EnterConfig`]): joins the env's cgroup
//! and namespaces (from its init's `/proc/PID/ns/*`), becomes root inside with the env's
//! restrictions, optionally becomes a user of the env, and runs the command (or a built-in
//! server) as its child, exiting with the command's status: the inside half of
//! [`crate::host::exec`].

use crate::identity::{Identity, DEFAULT_ENV};
use crate::inside::{security, sftp, tty, views};
use crate::proc::start_time;
use crate::protocol::{Builtin, EnterConfig, Message, ENTER_FAILED};
use anyhow::{bail, Context, Result};
use rustix::fd::AsFd;
use rustix::thread::LinkNameSpaceType as Ns;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

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
    let cfg = EnterConfig::decode(config.as_bytes())?;
    // Time first, while still host root: joining it needs CAP_SYS_ADMIN over the host's user
    // namespace too (an env spawned before envs had clocks of their own is in the host's).
    let kinds = [
        ("time", Ns::Time),
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
        let fd = match std::fs::File::open(&path) {
            Ok(fd) => fd,
            // A kernel without time namespaces.
            Err(e) if kind == Ns::Time && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(e).with_context(|| format!("opening {path} (is the env running?)"))?,
        };
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
    views::follow(cfg.init_pid)?;
    for (fd, kind) in &fds {
        rustix::thread::move_into_link_name_space(fd.as_fd(), Some(*kind))
            .with_context(|| format!("setns {kind:?}"))?;
    }
    drop(fds);
    security::become_root()?;
    security::restrict()?;
    if let Some(user) = &cfg.user {
        become_user(user)?;
    }
    if rustix::process::chdir(cfg.cwd.as_str()).is_err() {
        rustix::process::chdir("/").context("chdir / inside the env")?;
    }
    match cfg.builtin {
        Some(Builtin::Sftp) => return Ok(sftp::serve()),
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
        tty::attach(&mut cmd, rows, cols)?;
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

/// Becomes `user` (groups, then gid, then uid: the last step drops every capability).
fn become_user(user: &Identity) -> Result<()> {
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    use rustix::thread::{Gid, Uid};
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let fail = |what: &str| format!("switching to user {} ({what})", user.name);
    set_thread_groups(&groups).with_context(|| fail("setgroups"))?;
    let gid = Gid::from_raw(user.gid);
    set_thread_res_gid(gid, gid, gid).with_context(|| fail(&format!("gid {}", user.gid)))?;
    let uid = Uid::from_raw(user.uid);
    set_thread_res_uid(uid, uid, uid).with_context(|| fail(&format!("uid {}", user.uid)))?;
    Ok(())
}
