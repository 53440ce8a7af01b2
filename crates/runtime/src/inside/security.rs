//! Process hardening shared by init and every process entering an env: identity inside,
//! capability bounding set, no_new_privs, inherited file descriptors.

use crate::inside::seccomp;
use anyhow::{Context, Result};
use rustix::fd::AsFd;
use rustix::thread::CapabilitySet;

/// Capabilities kept in the bounding set (Docker's default set).
const KEEP: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::AUDIT_WRITE)
    .union(CapabilitySet::SETFCAP);

/// Becomes root of the user namespace just entered (uid/gid 0 inside, no supplementary groups).
pub fn become_root() -> Result<()> {
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid, Gid, Uid};
    set_thread_groups(&[]).context("setgroups")?;
    set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT).context("setresgid(0)")?;
    set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).context("setresuid(0)")?;
    Ok(())
}

/// Makes `uid` and `gid` (host ids) the owner of the user namespace this process unshares
/// next, instead of host root: the kernel charges a user namespace's per-user counts
/// (inotify instances and watches, user namespaces, ...) to its owner in the parent
/// namespace, so an env owned by root would spend host root's. Only the effective ids change:
/// the real and saved ids stay root, so the file-system ids are set back to root (lookups of
/// the env's host paths go on as before) and the capabilities stay effective (a kernel that
/// refuses unprivileged user namespaces still lets this one be made).
pub fn own_next_user_namespace(uid: u32, gid: u32) -> Result<()> {
    use rustix::thread::{set_thread_res_gid, set_thread_res_uid, Gid, Uid};
    let caps = rustix::thread::capabilities(None).context("reading the helper's capabilities")?;
    set_thread_res_gid(Gid::ROOT, Gid::from_raw(gid), Gid::ROOT)
        .with_context(|| format!("setting the effective gid to {gid}"))?;
    set_thread_res_uid(Uid::ROOT, Uid::from_raw(uid), Uid::ROOT)
        .with_context(|| format!("setting the effective uid to {uid}"))?;
    // setfsuid/setfsgid report the previous id, not errors: read the result back.
    // SAFETY: plain integer syscalls on this (single) thread's credentials.
    let (fsuid, fsgid) = unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
        (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX))
    };
    if (fsuid, fsgid) != (0, 0) {
        anyhow::bail!("setting the file-system ids back to root: they are {fsuid}:{fsgid}");
    }
    // Changing the effective uid from 0 cleared the effective set; the permitted one is kept.
    rustix::thread::set_capabilities(None, caps).context("restoring the helper's capabilities")
}

/// Reduces the capability bounding set to `KEEP`, sets no_new_privs and installs the seccomp
/// filter, so every program executed from here on holds at most those capabilities (of the
/// env's user namespace), cannot gain more through setuid or file capabilities, and cannot
/// make the syscalls [`seccomp`] denies.
pub fn restrict() -> Result<()> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in (0..=last).filter(|&c| !KEEP.contains(CapabilitySet::from_bits_retain(1 << c))) {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes plain integers and touches no memory.
        // (rustix only takes its own `Capability` enum, which cannot be iterated by number.)
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("dropping capability {cap}"));
        }
    }
    rustix::thread::set_no_new_privs(true).context("setting no_new_privs")?;
    seccomp::install()
}

/// For the init, which reaps and starts the commands of the exec service: keeps only the
/// capabilities of the bounding set as *permitted* (what its children regain when root execs
/// a program; with no_new_privs they get no more than the init permits), uses none itself
/// (empty effective and inheritable sets), and becomes non-dumpable, so a process of the env
/// that could reach PID 1 would find nothing to borrow.
pub fn restrict_init_capabilities() -> Result<()> {
    use rustix::thread::CapabilitySets;
    let current = rustix::thread::capabilities(None).context("reading the init's capabilities")?;
    let mut bounding = CapabilitySet::empty();
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_READ only reads the calling thread's bounding set.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } {
            1 => bounding |= CapabilitySet::from_bits_retain(1 << cap),
            0 => {}
            _ => break, // EINVAL: past the last capability this kernel knows
        }
    }
    let sets = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: current.permitted & bounding,
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, sets).context("restricting the init's capabilities")?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .context("making the init non-dumpable")
}

/// Closes every file descriptor above stderr (a helper must not pass the caller's open files
/// into an env).
pub fn close_inherited_fds() {
    // SAFETY: close_range(2) on integers; called at helper start, before this process owns any
    // fd above 2, so no Rust object's fd is closed behind its back.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

/// Points stdin, stdout and stderr at `/dev/null` (for the long-lived init).
pub fn stdio_to_null() -> Result<()> {
    let null = open_null()?;
    rustix::stdio::dup2_stdin(null.as_fd())?;
    rustix::stdio::dup2_stdout(null.as_fd())?;
    rustix::stdio::dup2_stderr(null.as_fd())?;
    Ok(())
}

/// Points stdin at `/dev/null`.
pub fn stdin_to_null() -> Result<()> {
    Ok(rustix::stdio::dup2_stdin(open_null()?.as_fd())?)
}

fn open_null() -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")
}
