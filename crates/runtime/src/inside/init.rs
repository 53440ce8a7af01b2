//! The `env-init` helper and the env's init.
//!
//! The spawn handshake ([`crate::protocol`]: [`InitReport`] lines on the helper's stdout,
//! an [`InitConfig`] and a [`Go`] line on its stdin), step by step:
//!
//! 1. the helper, started as `env-init UID:GID` ([`Owner`]) perhaps well ahead of its spawn
//!    ([`crate::Runtime::keep_spare_helper`]), opens its time offsets (`inside::clock`),
//!    unshares a user namespace owned by the env's own host uid ([`Owner`], neither host
//!    root nor another env's: see [`security::own_next_user_namespace`]), then the uts, ipc,
//!    net and pid namespaces (owned by it), brings up loopback and reports
//!    [`InitReport::Userns`]; the host writes its uid/gid maps, and it waits;
//! 2. at the spawn, the host sends the env's [`InitConfig`]: the helper binds the env's exec
//!    socket and opens what the env's `/proc` views read (`inside::views`) while the host
//!    moves it into the env's cgroup and mounts the overlay root (using its user namespace
//!    for an id-mapped lower), then the host sends [`Go`];
//! 3. the helper changes directory into the overlay root (see below), becomes root inside,
//!    unshares the mount and cgroup namespaces (the cgroup one now that it is in the env's
//!    cgroup) and the time namespace (the env's clock: `inside::clock`, which starts now),
//!    sets the hostname and forks the init (PID 1 inside), reports [`InitReport::Pid`] and
//!    exits;
//! 4. the init builds /dev and /proc, pivots into the overlay, restricts itself, reports
//!    [`InitReport::Ready`] (or [`InitReport::Error`] at any failing step), closes its stdio
//!    and from then on reaps orphans and serves exec requests ([`crate::inside::service`]).
//!    It is no child of the spawner, so it outlives it.
//!
//! Nothing after step 1 looks a host path up from `/`: the env's ids cannot traverse the data
//! directory (mode 0700) or whatever is above it (a home directory, `mktemp -d`), and the
//! helper, in its own user namespace, has lost host root's capabilities to pass another
//! user's directory. The host starts it in the node's envs directory; it enters the env's
//! directory from there with host root's file ids (which it keeps until it becomes root
//! inside, and which own that directory), and the overlay root from that; the new mount
//! namespace carries that working directory over, and the init builds the env from it.

use crate::inside::clock::Clock;
use crate::inside::{loopback, rootfs, security, service, views};
use crate::protocol::{Go, InitConfig, InitReport, Message, Owner};
use anyhow::{Context, Result};
use rustix::thread::UnshareFlags;
use std::process::ExitCode;

/// Writes one report line to stdout, unbuffered (the process forks).
fn report(report: InitReport) {
    let mut line = report.encode();
    line.push(b'\n');
    let _ = rustix::io::write(rustix::stdio::stdout(), &line);
}

/// Entry point of `env-init UID:GID`.
pub fn helper_main(owner: &str) -> ExitCode {
    match run(owner) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(InitReport::Error(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(owner: &str) -> Result<()> {
    security::close_inherited_fds();
    let owner = Owner::decode(owner.as_bytes())?;
    // Step 1, ahead of the spawn: everything that does not depend on the env.
    let clock = Clock::open()?;
    security::own_next_user_namespace(owner.uid, owner.gid)?;
    unshare(UnshareFlags::NEWUSER).context("unsharing the user namespace")?;
    let ahead = UnshareFlags::NEWUTS | UnshareFlags::NEWIPC | UnshareFlags::NEWNET;
    unshare(ahead | UnshareFlags::NEWPID).context("unsharing namespaces")?;
    loopback::up()?;
    report(InitReport::Userns);
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("waiting for a spawn")?;
    // Step 2: the env's own.
    let cfg = InitConfig::decode(line.trim_end().as_bytes())?;
    // Entered from the working directory the host started us in, the node's envs directory:
    // no lookup from `/`, which the namespace's lost host capabilities might not pass.
    let env_dir = cfg.root.parent().context("the env's root has no parent")?;
    let name = env_dir
        .file_name()
        .context("the env's directory has no name")?;
    rustix::process::chdir(name).with_context(|| format!("entering {}", env_dir.display()))?;
    // Bound with host root's file ids, so only host root can connect; the init inherits it.
    let socket = match cfg.exec_socket.parent() == Some(env_dir) {
        true => cfg
            .exec_socket
            .file_name()
            .context("the exec socket has no name")?,
        false => anyhow::bail!("the exec socket is not in the env's directory"),
    };
    let listener = service::listen(std::path::Path::new(socket))?;
    let mut sources = views::open(&cfg.views, clock)?;
    views::pin(&cfg.views.cpus)?;
    line.clear();
    std::io::stdin()
        .read_line(&mut line)
        .context("waiting for the spawner")?;
    Go::decode(line.trim_end().as_bytes()).context("the spawner gave up")?;
    // Step 3. From the env's directory into the overlay mounted on `root` meanwhile; the file
    // ids are still host root's, the owner of the env's directory.
    let root = cfg.root.file_name().context("the env's root has no name")?;
    rustix::process::chdir(root).context("entering the env's root")?;
    security::become_root()?;
    unshare(UnshareFlags::NEWNS | UnshareFlags::NEWCGROUP).context("unsharing namespaces")?;
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
    security::restrict()?;
    security::restrict_init_capabilities()?;
    report(InitReport::Ready);
    security::stdio_to_null()?;
    service::serve(listener, views)
}
