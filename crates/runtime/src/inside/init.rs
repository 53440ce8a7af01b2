//! The `env-init` helper and the env's init.
//!
//! The spawn handshake ([`crate::protocol`]: [`InitReport`] lines on the helper's stdout;
//! [`Mapped`], an [`InitConfig`] and a [`Go`] as packets on its stdin, a Unix socket), step by
//! step:
//!
//! 1. the helper, started as `env-init UID:GID` ([`Owner`]) perhaps well ahead of its spawn
//!    ([`crate::Runtime::keep_spare_helper`]), opens its time offsets (`inside::clock`),
//!    unshares a user namespace owned by the env's own host uid ([`Owner`], neither host
//!    root nor another env's: see [`security::own_next_user_namespace`]), then the uts, ipc,
//!    net and pid namespaces (owned by it), brings up loopback and reports
//!    [`InitReport::Userns`]; once the host has written its uid/gid maps ([`Mapped`]) it
//!    becomes root inside, unshares its mount namespace and stages it ([`rootfs::stage`]:
//!    `/dev` built, the host's mounts dropped), and waits;
//! 2. at the spawn, the host sends the env's [`InitConfig`] with the exec socket's listener
//!    and the env's cgroup directories (what the views read: `inside::views`) attached, moves
//!    the helper into the env's cgroup, mounts the overlay root and sends [`Go`] with a
//!    detached copy of it attached;
//! 3. the helper attaches the root and enters it ([`rootfs::attach`]), unshares the cgroup
//!    namespace (now that it is in the env's cgroup) and the time namespace (the env's clock,
//!    which starts now), sets the hostname and forks the init (PID 1 inside), reports
//!    [`InitReport::Pid`] and exits;
//! 4. the init moves `/dev` onto the root, mounts /proc, pivots into it ([`rootfs::setup`]),
//!    restricts itself, reports [`InitReport::Ready`] (or [`InitReport::Error`] at any failing
//!    step), closes its stdio and from then on reaps orphans and serves exec requests
//!    ([`crate::inside::service`]). It is no child of the spawner, so it outlives it.
//!
//! The helper looks up no host path of the env's: the env's ids cannot traverse the data
//! directory (mode 0700) or whatever is above it (a home directory, `mktemp -d`), and its
//! mount namespace no longer holds the host's mounts by the spawn. What it needs comes as open
//! files.

use crate::fdpass;
use crate::inside::clock::Clock;
use crate::inside::{loopback, rootfs, security, service, views};
use crate::protocol::{Go, InitConfig, InitReport, Mapped, Message, Owner};
use anyhow::{Context, Result};
use rustix::fd::{BorrowedFd, OwnedFd};
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
    let spawner = rustix::stdio::stdin();
    let (Mapped, _) = receive::<Mapped>(spawner, 0).context("waiting for the id maps")?;
    security::become_root()?;
    unshare(UnshareFlags::NEWNS).context("unsharing the mount namespace")?;
    rootfs::stage()?;
    // Step 2, the spawn: the env's own.
    let (cfg, fds) =
        receive::<InitConfig>(spawner, InitConfig::FDS).context("waiting for a spawn")?;
    let [listener, memory, cpu] = <[OwnedFd; InitConfig::FDS]>::try_from(fds).expect("counted");
    let mut sources = views::Sources::new(memory, cpu, &cfg.views, clock);
    views::pin(&cfg.views.cpus)?;
    let (Go, fds) = receive::<Go>(spawner, 1).context("waiting for the spawner")?;
    // Step 3.
    rootfs::attach(fds.into_iter().next().expect("counted"))?;
    unshare(UnshareFlags::NEWCGROUP).context("unsharing the cgroup namespace")?;
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

/// The spawner's next message, an `M` with `fds` fds attached.
fn receive<M: Message>(spawner: BorrowedFd<'_>, fds: usize) -> Result<(M, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 << 10];
    let (n, got) = fdpass::recv(spawner, &mut buf)?;
    if n == 0 {
        anyhow::bail!("the spawner went away");
    }
    let msg = M::decode(&buf[..n])?;
    if got.len() != fds {
        anyhow::bail!("the spawner sent {} fds, not {fds}", got.len());
    }
    Ok((msg, got))
}

/// unshare(2) of namespaces only.
fn unshare(flags: UnshareFlags) -> std::io::Result<()> {
    // SAFETY: `unshare_unsafe` is unsafe because CLONE_FILES/CLONE_FS would change what fds
    // and cwd mean behind Rust's back; callers here pass only CLONE_NEW* namespace flags.
    Ok(unsafe { rustix::thread::unshare_unsafe(flags) }?)
}

/// The env's PID 1: finishes the environment (its root is the working directory), then reaps.
/// Returns only on a setup error.
fn pid1(listener: OwnedFd, sources: views::Sources) -> Result<std::convert::Infallible> {
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
