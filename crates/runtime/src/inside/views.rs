//! The env's own view of itself in `/proc`, as LXCFS gives LXC and Incus containers, with no
//! daemon:
//!
//! - `/proc/meminfo` shows the env's memory cgroup (MemTotal its limit, MemFree what the
//!   cgroup leaves, Cached, Shmem, the LRU lists from its `memory.stat`; no swap);
//! - `/proc/stat` and `/proc/uptime` the env's cpus, cpu time and uptime
//!   ([`crate::inside::cpustat`], with the env's clock: [`crate::inside::clock`]);
//! - `/proc/loadavg` the env's load ([`crate::inside::load`]);
//! - for an env with a cpu limit, `/proc/cpuinfo` lists only its cpus (numbered from 0), which
//!   are also its processes' affinity (what `nproc` counts: [`crate::host::cpus`]).
//!
//! `sysinfo(2)` (busybox `free` and `uptime`'s load) is a system call, not a file: it keeps the
//! host's memory and load (its uptime is the env's, from the env's clock); only intercepting the
//! call (seccomp user notification, as Incus does) could change that.
//!
//! The spawner sends the env-init helper `O_PATH` fds of the env's memory and cpu cgroup
//! directories ([`Sources::new`]) and the helper pins itself to the env's cpus ([`pin`]); the
//! init inherits both. After the
//! pivot the init writes the views into a small tmpfs, binds them read-only over the `/proc`
//! files and detaches the tmpfs ([`mount`]): only the bind mounts (in the env's mount
//! namespace, gone with it) and the init's open files reach it. The init rewrites the views
//! every [`REFRESH`] between its other work ([`Views::refresh_if_due`]), each file with one
//! write. The meminfo view keeps its length while the numbers keep their widths (the kernel's
//! 8-digit kB columns), so a reader racing a rewrite still reads whole lines; the others may
//! grow by a digit, and a reader racing that rewrite may read a line of the old text and one of
//! the new.

use crate::inside::clock::Clock;
use crate::inside::cpustat::{self, CpuTime};
use crate::inside::load::{self, Load, Tasks};
use crate::inside::rootfs::remount_read_only;
use crate::mounts::{ensure_dir, mount as mount_fs};
use crate::protocol::ViewConfig;
use anyhow::{Context, Result};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the init rewrites the views.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Where the init finds the env's limits and use: opened by the helper as host root.
pub struct Sources {
    /// The env's memory cgroup directory (`O_PATH`).
    memory: OwnedFd,
    /// The env's cgroup directory with its cpu time (`O_PATH`).
    cpu: OwnedFd,
    /// Whether they are cgroup v2's.
    v2: bool,
    /// The env's cpus (empty: the host's).
    cpus: Vec<usize>,
    /// The env's boot clock.
    clock: Clock,
}

impl Sources {
    /// The sources of an env's views: its `memory` and `cpu` cgroup directories (`O_PATH`,
    /// opened by the spawner: the helper's mount namespace no longer holds the host's cgroup
    /// file systems) as `cfg` describes them, and the helper's time offsets.
    pub fn new(memory: OwnedFd, cpu: OwnedFd, cfg: &ViewConfig, clock: Clock) -> Sources {
        Sources {
            memory,
            cpu,
            v2: cfg.cgroup_v2,
            cpus: cfg.cpus.clone(),
            clock,
        }
    }

    /// Starts the env's clock for the helper's next child, the init ([`Clock::start`]).
    pub fn start_clock(&mut self) -> Result<()> {
        self.clock.start()
    }
}

/// Restricts this process (and so everything it starts) to `cpus`, if any.
pub fn pin(cpus: &[usize]) -> Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = rustix::thread::CpuSet::new();
    cpus.iter().for_each(|&c| set.set(c));
    rustix::thread::sched_setaffinity(None, &set)
        .with_context(|| format!("pinning to cpus {cpus:?}"))
}

/// Gives this process the cpus of process `pid` (the env's init): for a process entering the
/// env from the host.
pub fn follow(pid: i32) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(pid).context("a bad init pid")?;
    let set = rustix::thread::sched_getaffinity(Some(pid)).context("reading the env's cpus")?;
    rustix::thread::sched_setaffinity(None, &set).context("taking the env's cpus")
}

/// The `/proc` files the views rewrite, in the order [`Views`] keeps them.
const REWRITTEN: [&str; 4] = ["meminfo", "stat", "uptime", "loadavg"];

/// The views of a running env, kept by its init.
pub struct Views {
    sources: Sources,
    /// The kernel's `/proc/meminfo`, `/proc/stat` and `/proc/loadavg` as the env sees them
    /// (the numbers the views start from), opened before the views cover them.
    host_meminfo: File,
    host_stat: File,
    host_loadavg: File,
    /// The views of [`REWRITTEN`], open for writing.
    files: Vec<File>,
    /// The env's load averages.
    load: Load,
    /// The idle ticks of each env cpu last shown (they never go back).
    idle: u64,
    /// When to rewrite them next.
    due: Instant,
}

/// Writes the views and binds them over their `/proc` files (`/proc/cpuinfo` only with a cpu
/// limit). Called by the init after the pivot, with /proc and /dev in place.
pub fn mount(sources: Sources) -> Result<Views> {
    let open = |name: &str| File::open(name).with_context(|| format!("opening {name}"));
    let (host_meminfo, host_stat, host_loadavg) = (
        open("/proc/meminfo")?,
        open("/proc/stat")?,
        open("/proc/loadavg")?,
    );
    let mut host_cpuinfo = String::new();
    if !sources.cpus.is_empty() {
        File::open("/proc/cpuinfo")
            .and_then(|mut f| f.read_to_string(&mut host_cpuinfo))
            .context("reading /proc/cpuinfo")?;
    }
    // A scratch tmpfs for the files, detached once they are bound.
    let dir = Path::new("/dev/.views");
    ensure_dir(dir)?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs(
        "tmpfs",
        dir,
        "tmpfs",
        flags,
        "mode=0755,size=4m,nr_inodes=16",
    )
    .context("mounting the views' tmpfs")?;
    let made = (|| {
        let files = REWRITTEN
            .iter()
            .map(|name| make(dir, name, b""))
            .collect::<Result<Vec<File>>>()?;
        let now = Instant::now();
        let mut views = Views {
            sources,
            host_meminfo,
            host_stat,
            host_loadavg,
            files,
            load: Load::new(now),
            idle: 0,
            due: now,
        };
        views.refresh()?;
        for name in REWRITTEN {
            bind(dir, name)?;
        }
        if !views.sources.cpus.is_empty() {
            let text = cpuinfo(&host_cpuinfo, &views.sources.cpus);
            make(dir, "cpuinfo", text.as_bytes())?;
            bind(dir, "cpuinfo")?;
        }
        Ok(views)
    })();
    rustix::mount::unmount(dir, UnmountFlags::DETACH).context("detaching the views' tmpfs")?;
    std::fs::remove_dir(dir).context("removing /dev/.views")?;
    made
}

/// Creates view `name` in `dir` with `text`, read-only for everyone; open for writing.
fn make(dir: &Path, name: &str, text: &[u8]) -> Result<File> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating the {name} view"))?;
    file.write_all_at(text, 0)
        .with_context(|| format!("writing the {name} view"))?;
    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o444))
        .with_context(|| format!("chmod of the {name} view"))?;
    Ok(file)
}

/// Binds view `name` read-only over `/proc/NAME`.
fn bind(dir: &Path, name: &str) -> Result<()> {
    let target = Path::new("/proc").join(name);
    rustix::mount::mount_bind(dir.join(name), &target)
        .with_context(|| format!("binding the {name} view over {}", target.display()))?;
    remount_read_only(&target)
}

/// The whole text of `file` (a `/proc` file: read again from the start).
fn reread(file: &mut File) -> Result<String> {
    let mut text = String::new();
    file.rewind()?;
    file.read_to_string(&mut text)?;
    Ok(text)
}

impl Views {
    /// How long until the next rewrite.
    pub fn until_due(&self) -> Duration {
        self.due.saturating_duration_since(Instant::now())
    }

    /// Rewrites the views if they are due. A failed rewrite (the cgroup unreadable for a
    /// moment) keeps the last views; the init never stops for it.
    pub fn refresh_if_due(&mut self) {
        if self.until_due().is_zero() {
            let _ = self.refresh();
        }
    }

    fn refresh(&mut self) -> Result<()> {
        let now = Instant::now();
        self.due = now + REFRESH;
        let memory = Memory::read(&self.sources.memory, self.sources.v2)?;
        let meminfo = meminfo(&reread(&mut self.host_meminfo)?, &memory);

        let tasks = Tasks::scan();
        self.load.sample(&tasks, now);
        let loadavg = reread(&mut self.host_loadavg)?;
        let loadavg = self.load.text(&tasks, load::last_pid(&loadavg));

        let host_stat = reread(&mut self.host_stat)?;
        let cpus = match self.sources.cpus.len() {
            0 => cpustat::cpu_lines(&host_stat),
            n => n,
        };
        let used = CpuTime::read(&self.sources.cpu, self.sources.v2)?;
        let uptime = self.sources.clock.uptime();
        self.idle = cpustat::idle_per_cpu(uptime, used, cpus, self.idle);
        let stat = cpustat::stat(&host_stat, cpus, used, self.idle, &tasks);
        let uptime = cpustat::uptime(uptime, cpus, self.idle);

        for (file, text) in self.files.iter().zip([meminfo, stat, uptime, loadavg]) {
            file.write_all_at(text.as_bytes(), 0)?;
            file.set_len(text.len() as u64)?;
        }
        Ok(())
    }
}

/// An env's memory as its cgroup counts it, in bytes.
#[derive(Debug, Default, PartialEq)]
struct Memory {
    /// The limit (`None`: none).
    limit: Option<u64>,
    /// Everything charged (processes, page cache, tmpfs, kernel memory).
    usage: u64,
    /// `memory.stat`.
    stat: HashMap<String, u64>,
}

impl Memory {
    /// Reads the cgroup directory `dir` (v1 or v2 file names).
    fn read(dir: &OwnedFd, v2: bool) -> Result<Memory> {
        let (limit, usage) = match v2 {
            true => ("memory.max", "memory.current"),
            false => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        };
        let limit = read_at(dir, limit)?;
        // v1 says "no limit" with a page-aligned i64::MAX, v2 with "max".
        let limit = limit.trim().parse::<u64>().ok().filter(|&l| l < 1 << 62);
        let usage = read_at(dir, usage)?.trim().parse().unwrap_or(0);
        let stat = read_at(dir, "memory.stat")?
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect();
        Ok(Memory { limit, usage, stat })
    }

    fn stat(&self, key: &str) -> u64 {
        self.stat.get(key).copied().unwrap_or(0)
    }
}

/// The text of file `name` in directory `dir`.
fn read_at(dir: &OwnedFd, name: &str) -> Result<String> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {name}"))?;
    let mut text = String::new();
    File::from(fd)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {name}"))?;
    Ok(text)
}

/// The host's `/proc/meminfo` text `host` with the lines about memory in use and free
/// replaced by the env's (`mem`), in the kernel's format; other lines as the host has them.
fn meminfo(host: &str, mem: &Memory) -> String {
    let host_total = host
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb * 1024);
    let total = mem.limit.unwrap_or(u64::MAX).min(host_total);
    let used = mem.usage.min(total);
    let free = total - used;
    // v1 names the page cache `cache`, v2 `file`; both include tmpfs (shmem).
    let cached = mem.stat("cache").max(mem.stat("file")).min(used);
    let reclaimable = mem.stat("slab_reclaimable");
    let available =
        (free + mem.stat("active_file") + mem.stat("inactive_file") + reclaimable).min(total);
    let active = mem.stat("active_anon") + mem.stat("active_file");
    let inactive = mem.stat("inactive_anon") + mem.stat("inactive_file");
    let slab_unreclaimable = mem.stat("slab_unreclaimable");
    let ours: HashMap<&str, u64> = [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", available),
        ("Buffers", 0),
        ("Cached", cached),
        ("SwapCached", 0),
        ("Active", active),
        ("Inactive", inactive),
        ("Active(anon)", mem.stat("active_anon")),
        ("Inactive(anon)", mem.stat("inactive_anon")),
        ("Active(file)", mem.stat("active_file")),
        ("Inactive(file)", mem.stat("inactive_file")),
        ("Unevictable", mem.stat("unevictable")),
        ("SwapTotal", 0),
        ("SwapFree", 0),
        ("Shmem", mem.stat("shmem")),
        ("Slab", reclaimable + slab_unreclaimable),
        ("SReclaimable", reclaimable),
        ("SUnreclaim", slab_unreclaimable),
    ]
    .into_iter()
    .collect();
    let mut out = String::with_capacity(host.len());
    for line in host.lines() {
        let key = line.split_once(':').map(|(k, _)| k);
        match key.and_then(|k| ours.get(k).map(|v| (k, v))) {
            Some((k, bytes)) => {
                out.push_str(&format!("{:<15} {:>8} kB\n", format!("{k}:"), bytes / 1024))
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The host's `/proc/cpuinfo` text `host` with only the blocks of `cpus`, numbered from 0
/// (blocks that describe no processor are kept as they are).
fn cpuinfo(host: &str, cpus: &[usize]) -> String {
    let mut out = String::with_capacity(host.len());
    let mut next = 0;
    for block in host.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let number = block.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "processor").then(|| v.trim().parse::<usize>().ok())?
        });
        match number {
            Some(n) if !cpus.contains(&n) => continue,
            Some(_) => {
                for line in block.lines() {
                    match line.split_once(':') {
                        Some((k, _)) if k.trim() == "processor" => {
                            out.push_str(&format!("{k}: {next}\n"))
                        }
                        _ => {
                            out.push_str(line);
                            out.push('\n');
                        }
                    }
                }
                next += 1;
            }
            None => {
                out.push_str(block.trim_end_matches('\n'));
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "MemTotal:       24684328 kB\nMemFree:        18000000 kB\n\
        MemAvailable:   23000000 kB\nBuffers:          100000 kB\nCached:          4000000 kB\n\
        SwapTotal:       1000000 kB\nShmem:             10000 kB\nHugePages_Total:       0\n";

    #[test]
    fn meminfo_shows_the_cgroup() {
        let mem = Memory {
            limit: Some(64 << 20),
            usage: 24 << 20,
            stat: [
                ("cache", 8 << 20),
                ("shmem", 6 << 20),
                ("inactive_file", 2 << 20),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into_iter()
            .collect(),
        };
        let text = meminfo(HOST, &mem);
        assert_eq!(
            text,
            "MemTotal:          65536 kB\nMemFree:           40960 kB\n\
             MemAvailable:      43008 kB\nBuffers:               0 kB\n\
             Cached:             8192 kB\nSwapTotal:             0 kB\n\
             Shmem:              6144 kB\nHugePages_Total:       0\n"
        );
        // The same widths whatever the numbers (below 100 GB): rewrites keep the length.
        let more = Memory {
            usage: 60 << 20,
            ..mem
        };
        assert_eq!(meminfo(HOST, &more).len(), text.len());
        // No limit, or one above the host's memory: the host's total.
        let unlimited = Memory::default();
        assert!(meminfo(HOST, &unlimited).starts_with("MemTotal:       24684328 kB\n"));
    }

    #[test]
    fn cpuinfo_keeps_the_envs_cpus_numbered_from_0() {
        let host = "processor\t: 0\nmodel name\t: A\n\nprocessor\t: 1\nmodel name\t: B\n\n\
                    processor\t: 2\nmodel name\t: C\n\n";
        assert_eq!(
            cpuinfo(host, &[1, 2]),
            "processor\t: 0\nmodel name\t: B\n\nprocessor\t: 1\nmodel name\t: C\n\n"
        );
    }
}
