//! The env's `/proc/stat` and `/proc/uptime`, as LXCFS shows them to LXC and Incus containers:
//! the `cpu` lines count the env's cpu time on the env's cpus only.
//!
//! - One `cpuN` line per cpu of the env (those of its cpu limit, else every host cpu), numbered
//!   from 0: glibc's `get_nprocs` (`os.cpu_count()`, `sysconf(_SC_NPROCESSORS_ONLN)`) counts
//!   them when there is no `/sys`, as in an env.
//! - `user` and `system`: the env's cgroup cpu time ([`CpuTime`]), shared evenly between its
//!   cpus (cgroup v2 keeps no per-cpu times); `idle`: the rest of the env's uptime on each cpu
//!   (time spent throttled by a cpu limit included), never going back; the other columns 0.
//!   `top` and `htop` thus show the env's own use of its cpus.
//! - `procs_running` and `procs_blocked`: the env's ([`crate::inside::load`]); every other line
//!   (`intr`, `ctxt`, `btime`, `processes`, `softirq`) as the kernel shows it to the env (`btime`
//!   is the env's start when it has its own clock: [`crate::inside::clock`]).
//!
//! `/proc/uptime` is the env's uptime and the idle time of its cpus, summed as the kernel does.

use crate::inside::load::Tasks;
use anyhow::{Context, Result};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use std::fmt::Write;
use std::io::Read;
use std::time::Duration;

/// An env's cpu time as its cgroup counts it, in clock ticks (`USER_HZ`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// In user mode.
    pub user: u64,
    /// In the kernel.
    pub system: u64,
}

impl CpuTime {
    /// Reads the cgroup directory `dir`: v1 `cpuacct.stat` (ticks), v2 `cpu.stat` (µs).
    pub fn read(dir: &OwnedFd, v2: bool) -> Result<CpuTime> {
        let (file, user, system) = match v2 {
            true => ("cpu.stat", "user_usec", "system_usec"),
            false => ("cpuacct.stat", "user", "system"),
        };
        let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("opening {file}"))?;
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {file}"))?;
        let value = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ticks = |n: u64| match v2 {
            true => n * ticks_per_second() / 1_000_000,
            false => n,
        };
        Ok(CpuTime {
            user: ticks(value(user)),
            system: ticks(value(system)),
        })
    }
}

/// The unit of `/proc/stat` and `cpuacct.stat` (`USER_HZ`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    }
}

/// The number of `cpuN` lines in a `/proc/stat` text.
pub fn cpu_lines(stat: &str) -> usize {
    stat.lines().filter(|l| is_cpu_n(l)).count()
}

fn is_cpu_n(line: &str) -> bool {
    line.strip_prefix("cpu")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The idle ticks of each of `cpus` cpus after `uptime`, with `used` spent, never below
/// `before` (the last value shown).
pub fn idle_per_cpu(uptime: Duration, used: CpuTime, cpus: usize, before: u64) -> u64 {
    let elapsed = uptime.as_millis() as u64 * ticks_per_second() / 1000;
    let busy = (used.user + used.system) / cpus.max(1) as u64;
    elapsed.saturating_sub(busy).max(before)
}

/// The env's `/proc/stat` from the kernel's text `host`: `cpus` cpus that spent `used` and were
/// idle `idle` ticks each, and its `tasks`.
pub fn stat(host: &str, cpus: usize, used: CpuTime, idle: u64, tasks: &Tasks) -> String {
    let n = cpus.max(1) as u64;
    let (user, system) = (used.user / n, used.system / n);
    let line = |name: &str, k: u64| {
        format!(
            "{name} {} 0 {} {} 0 0 0 0 0 0\n",
            user * k,
            system * k,
            idle * k
        )
    };
    let mut out = String::with_capacity(host.len());
    for l in host.lines() {
        match l.split_once(' ').map_or(l, |(key, _)| key) {
            "cpu" => {
                out.push_str(&line("cpu ", n));
                for i in 0..cpus {
                    out.push_str(&line(&format!("cpu{i}"), 1));
                }
            }
            // The host's cpus: the env's are above.
            _ if is_cpu_n(l) => {}
            "procs_running" => {
                let _ = writeln!(out, "procs_running {}", tasks.running);
            }
            "procs_blocked" => {
                let _ = writeln!(out, "procs_blocked {}", tasks.blocked);
            }
            _ => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// The env's `/proc/uptime`: `uptime`, and the idle time of its `cpus` cpus (`idle` ticks each).
pub fn uptime(uptime: Duration, cpus: usize, idle: u64) -> String {
    let idle = (idle * cpus as u64) as f64 / ticks_per_second() as f64;
    format!("{:.2} {idle:.2}\n", uptime.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "cpu  900 10 300 50000 20 0 5 0 0 0\n\
        cpu0 450 5 150 25000 10 0 3 0 0 0\n\
        cpu1 450 5 150 25000 10 0 2 0 0 0\n\
        intr 123 4 5\nctxt 999\nbtime 1765000000\nprocesses 4242\n\
        procs_running 7\nprocs_blocked 2\nsoftirq 55 1 2\n";

    #[test]
    fn stat_shows_the_envs_cpus_and_time() {
        let used = CpuTime {
            user: 31,
            system: 10,
        };
        let tasks = Tasks {
            running: 1,
            blocked: 0,
            total: 5,
        };
        assert_eq!(cpu_lines(HOST), 2);
        let text = stat(HOST, 1, used, 200, &tasks);
        assert_eq!(
            text,
            "cpu  31 0 10 200 0 0 0 0 0 0\ncpu0 31 0 10 200 0 0 0 0 0 0\n\
             intr 123 4 5\nctxt 999\nbtime 1765000000\nprocesses 4242\n\
             procs_running 1\nprocs_blocked 0\nsoftirq 55 1 2\n"
        );
        assert_eq!(cpu_lines(&text), 1);
        // Three cpus share the time; the total line sums them.
        let three = stat(HOST, 3, used, 200, &tasks);
        assert_eq!(cpu_lines(&three), 3);
        assert!(three.starts_with("cpu  30 0 9 600 0 0 0 0 0 0\ncpu0 10 0 3 200 "));
    }

    #[test]
    fn idle_is_the_rest_of_the_uptime_and_never_goes_back() {
        let hz = ticks_per_second();
        let used = CpuTime {
            user: hz,
            system: hz,
        };
        let ten = Duration::from_secs(10);
        // 10 s on 2 cpus with 2 s of cpu time: 9 s idle each.
        assert_eq!(idle_per_cpu(ten, used, 2, 0), 9 * hz);
        assert_eq!(idle_per_cpu(ten, used, 2, 10 * hz), 10 * hz);
        assert_eq!(uptime(ten, 2, 9 * hz), "10.00 18.00\n");
    }
}
