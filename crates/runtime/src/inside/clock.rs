//! The env's own boot clock: a time namespace whose `CLOCK_BOOTTIME` starts at 0 when the env
//! does. The kernel then counts from the env's start wherever it shows that clock: the first
//! field of `/proc/uptime`, `sysinfo(2)`'s uptime (busybox `uptime`), `/proc/stat`'s `btime`
//! (the env's start as wall time) and every process's start time in `/proc/PID/stat` (so `ps`
//! computes start and elapsed times that agree with the env's uptime). `CLOCK_MONOTONIC` and
//! the wall clock are the host's.
//!
//! The env-init helper opens `/proc/self/timens_offsets` while still host root ([`Clock::open`]):
//! the kernel checks the opener's capabilities when the offsets are written, and the helper,
//! once root of its user namespace, is no longer dumpable, so it could not open the file then.
//! After unsharing the env's other namespaces it unshares a time namespace, writes the boot
//! offset (minus the host's boot time now) and forks the init into it ([`Clock::start`]);
//! processes entering the env join it (`inside::enter`). A kernel without time namespaces
//! (`CONFIG_TIME_NS`, Linux 5.6) keeps the host's clock: the views then count the env's uptime
//! from its start all the same, but sysinfo(2), `btime` and start times stay the host's.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::time::Duration;

/// The env's boot clock, as its init reads it.
pub struct Clock {
    /// `/proc/self/timens_offsets` of the helper, until [`Clock::start`].
    offsets: Option<File>,
    /// The env's start on the init's `CLOCK_BOOTTIME` (zero in a time namespace of its own).
    origin: Duration,
}

impl Clock {
    /// Opens the helper's time offsets (as host root, before any namespace is unshared).
    pub fn open() -> Result<Clock> {
        let offsets = match std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/timens_offsets")
        {
            Ok(f) => Some(f),
            // No time namespaces in this kernel.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context("opening /proc/self/timens_offsets"),
        };
        Ok(Clock {
            offsets,
            origin: Duration::ZERO,
        })
    }

    /// Gives the helper's next child (the init) a time namespace whose boot clock starts now;
    /// without time namespaces, records now as the env's start.
    pub fn start(&mut self) -> Result<()> {
        let Some(mut offsets) = self.offsets.take() else {
            self.origin = boottime();
            return Ok(());
        };
        // SAFETY: CLONE_NEWTIME is a namespace flag (it changes no fd or cwd meaning).
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWTIME) }
            .context("unsharing the time namespace")?;
        let now = boottime();
        // Minus now, with the nanoseconds in 0..1e9 as the kernel wants them.
        let (secs, nanos) = match now.subsec_nanos() {
            0 => (-(now.as_secs() as i64), 0),
            n => (-(now.as_secs() as i64) - 1, 1_000_000_000 - n),
        };
        offsets
            .write_all(format!("boottime {secs} {nanos}\n").as_bytes())
            .context("setting the env's boot clock")
    }

    /// How long the env has been up.
    pub fn uptime(&self) -> Duration {
        boottime().saturating_sub(self.origin)
    }
}

/// `CLOCK_BOOTTIME` of this process's time namespace.
fn boottime() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer; CLOCK_BOOTTIME always
    // exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
