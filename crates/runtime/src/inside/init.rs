//! The `env-init` helper and the env's init.
//!
//! The spawn handshake ([`crate::protocol`]: [`InitReport`] lines on the helper's stdout,
//! one [`Go`] on its stdin), step by step:
//!
//! 0. with `-` for its config argument, the helper reads its [`InitConfig`] as the first line
//!    of its stdin (so it can be started ahead of the spawn: [`crate::Runtime::keep_spare_helper`]);
//! 1. the helper opens what the env's `/proc` views read (`inside::views`), then unshares a
//!    user namespace owned by the env's own host uid ([`InitConfig::owner`], neither host
//!    root nor another env's: see [`security::own_next_user_namespace`]) and reports
//!    [`InitReport::Userns`];
//! 2. the spawner ([`crate::host::spawn`]) writes the uid/gid maps, moves the helper into the
//!    env's cgroup, mounts the overlay root (using the new user namespace for an id-mapped
//!    lower) and sends [`Go`];
//! 3. the helper changes directory into the overlay root (see below), becomes root inside,
//!    unshares mount, uts, ipc, net, cgroup, pid and time namespaces (the env's clock:
//!    `inside::clock`), sets the hostname and forks the init (PID 1 inside), reports
//!    [`InitReport::Pid`] and exits;
//! 4. the init builds /dev and /proc, pivots into the overlay, brings up loopback, restricts
//!    itself, reports [`InitReport::Ready`] (or [`InitReport::Error`] at any failing step),
//!    closes its stdio and from then on reaps orphans and serves exec requests
//!    ([`crate::inside::service`]). It is no child of the spawner, so it outlives it.
//!
//! The env's ids cannot traverse the data directory (mode 0700) or whatever is above it (a
//! home directory, `mktemp -d`), so nothing after step 1 looks a host path up from `/`: the
//! helper enters the env's directory while still host root, and the overlay root from there
//! (still with host root's file ids) before it becomes root inside; the new mount namespace
//! carries that working directory over, and the init builds the env from it.

use crate::inside::{loopback, rootfs, security, service, views};
use crate::protocol::{Go, InitConfig, InitReport, Message};
use anyhow::{Context, Result};
use rustix::thread::UnshareFlags;
use std::process::ExitCode;

/// Writes one report line to stdout, unbuffered (the process forks).
fn report(report: InitReport) {
    let mut line = report.encode();
    line.push(b'\n');
    let _ = rustix::io::write(rustix::stdio::stdout(), &line);
}

/// Entry point of `env-init CONFIG`.
pub fn helper_main(config: &str) -> ExitCode {
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(InitReport::Error(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(config: &str) -> Result<()> {
    security::close_inherited_fds();
    // `-`: the config is the first line of stdin (a spare helper, started before its spawn).
    let mut line = String::new();
    let config = if config == "-" {
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the config")?;
        line.as_str()
    } else {
        config
    };
    let cfg = InitConfig::decode(config.trim_end().as_bytes())?;
    let env_dir = cfg.root.parent().context("the env's root has no parent")?;
    rustix::process::chdir(env_dir).with_context(|| format!("entering {}", env_dir.display()))?;
    // Bound while still host root, so only host root can connect; the init inherits it.
    let listener = service::listen(&cfg.exec_socket)?;
    let mut sources = views::open(&cfg.views)?;
    views::pin(&cfg.views.cpus)?;
    security::own_next_user_namespace(cfg.owner.0, cfg.owner.1)?;
    unshare(UnshareFlags::NEWUSER).context("unsharing the user namespace")?;
    report(InitReport::Userns);
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("waiting for the spawner")?;
    Go::decode(line.trim_end().as_bytes()).context("the spawner gave up")?;
    // From the env's directory (looked up as host root, above) into the overlay mounted on
    // `root` meanwhile; the file ids are still host root's, the owner of the env's directory.
    let root = cfg.root.file_name().context("the env's root has no name")?;
    rustix::process::chdir(root).context("entering the env's root")?;
    security::become_root()?;
    let flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWCGROUP
        | UnshareFlags::NEWPID;
    unshare(flags).context("unsharing namespaces")?;
    sources.start_clock()?;
    rustix::system::sethostname(cfg.hostname.as_bytes()).context("setting the hostname")?;
    // SAFETY: this helper was just exec'd and never starts a thread, so the child of fork is a
    // complete copy that may run arbitrary code (allocate, take locks).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("forking init"),
        0 => {
            let err = pid1(listener, sources).unwrap_err();
            report(InitReport::Error(format!("{err:#}")));
            std::process::exit(1)
        }
        pid => {
            report(InitReport::Pid(pid));
            Ok(())
        }
    }
}

/// unshare(2) of namespaces only.
fn unshare(flags: UnshareFlags) -> std::io::Result<()> {
    // SAFETY: `unshare_unsafe` is unsafe because CLONE_FILES/CLONE_FS would change what fds
    // and cwd mean behind Rust's back; callers here pass only CLONE_NEW* namespace flags.
    Ok(unsafe { rustix::thread::unshare_unsafe(flags) }?)
}

/// The env's PID 1: finishes the environment (its root is the working directory), then reaps.
/// Returns only on a setup error.
fn pid1(
    listener: rustix::fd::OwnedFd,
    sources: views::Sources,
) -> Result<std::convert::Infallible> {
    // Its own session and process group, so nothing aimed at the spawner's group reaches it.
    rustix::process::setsid().context("setsid")?;
    rootfs::setup()?;
    let views = views::mount(sources)?;
    loopback::up()?;
    security::restrict()?;
    security::restrict_init_capabilities()?;
    report(InitReport::Ready);
    security::stdio_to_null()?;
    service::serve(listener, views)
}
