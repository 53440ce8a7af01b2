//! Env cgroups: memory (tmpfs writes included), pids and cpu limits, freezing, group kill.
//!
//! Works on a pure cgroup v2 host (`/sys/fs/cgroup/cgroup.controllers` exists) and on a v1 or
//! hybrid host, where an env gets one directory per controller (`memory`, `pids`, `cpu`,
//! `freezer`). Either way an env's cgroup is `spawngrid/<env>` under each root.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The v1 controllers an env uses.
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

/// The host's cgroup layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Unified hierarchy at this root.
    V2(PathBuf),
    /// One hierarchy per controller, mounted at `ROOT/<controller>`.
    V1(PathBuf),
}

impl Layout {
    /// v2 if `/sys/fs/cgroup/cgroup.controllers` exists, else v1 controllers under /sys/fs/cgroup.
    pub fn detect() -> Layout {
        let root = PathBuf::from("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            Layout::V2(root)
        } else {
            Layout::V1(root)
        }
    }
}

/// Asks the kernel to favour cgroup migrations over fork/exit (`favordynmods` on the host's
/// cgroup2 mount), if it does not already. Every spawn moves a process into a new cgroup, and
/// without it a move after a quiet moment waits for an RCU grace period on the global
/// `cgroup_threadgroup_rwsem`: measured here 7–20 ms cold, ~2 ms with it (see
/// docs/architecture.md). The setting is host-wide (the rwsem is shared by every hierarchy,
/// v1 ones included) and costs fork and exit a little. Best effort: a host without a cgroup2
/// mount, or a kernel without the option (before 6.0), keeps the slow path.
pub fn favor_dynamic_moves() {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        let Some((mount, fs)) = line.split_once(" - ") else {
            continue;
        };
        let mut fs = fs.split(' ');
        let (Some("cgroup2"), Some(_), Some(opts)) = (fs.next(), fs.next(), fs.next()) else {
            continue;
        };
        let Some(point) = mount.split(' ').nth(4) else {
            continue;
        };
        if opts.split(',').any(|o| o == "favordynmods") {
            return;
        }
        let _ = rustix::mount::mount_remount(
            crate::mounts::unescape_path(point),
            rustix::mount::MountFlags::empty(),
            format!("{opts},favordynmods").as_str(),
        );
        return;
    }
}

/// Resource limits of one env.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes (RAM-backed write layers are charged here too).
    pub memory: u64,
    /// Maximum number of processes and threads.
    pub pids: u64,
    /// Relative cpu weight, 1..=10000, 100 = an ordinary share.
    pub cpu_weight: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: 512 << 20,
            pids: 1024,
            cpu_weight: 100,
        }
    }
}

/// The cgroup of one env (its directories, which need not exist yet).
#[derive(Clone, Debug)]
pub struct Cgroup {
    layout: Layout,
    env: String,
}

impl Cgroup {
    /// The cgroup of env `env` in `layout`.
    pub fn new(layout: &Layout, env: &str) -> Cgroup {
        Cgroup {
            layout: layout.clone(),
            env: env.to_string(),
        }
    }

    /// Every directory of this cgroup (one on v2, one per controller on v1).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(root) => vec![root.join("spawngrid").join(&self.env)],
            Layout::V1(root) => V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c).join("spawngrid").join(&self.env))
                .collect(),
        }
    }

    /// The directory whose `cgroup.procs` lists every process (and that freezes them).
    fn main_dir(&self) -> PathBuf {
        match &self.layout {
            Layout::V2(root) => root.join("spawngrid").join(&self.env),
            Layout::V1(root) => root.join("freezer").join("spawngrid").join(&self.env),
        }
    }

    /// Creates the directories and sets `limits`. Fails if the cgroup already exists.
    pub fn create(&self, limits: &Limits) -> Result<()> {
        if let Layout::V2(root) = &self.layout {
            enable_v2_controllers(root)?;
        }
        for dir in self.dirs() {
            if let Some(parent) = dir.parent() {
                crate::ensure_dir(parent)?;
            }
            std::fs::create_dir(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        let shares = (limits.cpu_weight.clamp(1, 10000) * 1024 / 100).max(2);
        let settings: Vec<(PathBuf, String)> = match &self.layout {
            Layout::V2(_) => {
                let d = self.main_dir();
                vec![
                    (d.join("memory.max"), limits.memory.to_string()),
                    (d.join("memory.swap.max"), "0".into()),
                    (d.join("pids.max"), limits.pids.to_string()),
                    (
                        d.join("cpu.weight"),
                        limits.cpu_weight.clamp(1, 10000).to_string(),
                    ),
                ]
            }
            Layout::V1(root) => {
                let d = |c: &str| root.join(c).join("spawngrid").join(&self.env);
                vec![
                    (
                        d("memory").join("memory.limit_in_bytes"),
                        limits.memory.to_string(),
                    ),
                    (d("pids").join("pids.max"), limits.pids.to_string()),
                    (d("cpu").join("cpu.shares"), shares.to_string()),
                ]
            }
        };
        for (file, value) in settings {
            // memory.swap.max is absent without swap accounting: not an error.
            if file.ends_with("memory.swap.max") && !file.exists() {
                continue;
            }
            write(&file, &value)?;
        }
        Ok(())
    }

    /// Moves process `pid` (a host pid) into this cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process joining the env writes itself into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Host pids of every process in the cgroup (empty if it does not exist).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let file = self.main_dir().join("cgroup.procs");
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }

    /// Freezes every process of the env and waits until they are frozen.
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    /// Thaws the env's processes.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let d = self.main_dir();
        let (file, value, done_file) = match self.layout {
            Layout::V2(_) => (
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
                "cgroup.events",
            ),
            Layout::V1(_) => (
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
                "freezer.state",
            ),
        };
        write(&d.join(file), value)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(d.join(done_file))
                .with_context(|| format!("reading {}", d.join(done_file).display()))?;
            let reached = match self.layout {
                Layout::V2(_) => state
                    .lines()
                    .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" }),
                Layout::V1(_) => state.trim() == value,
            };
            if reached {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cgroup {} did not reach {value} in 10 s", d.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills every process of the env (freeze, SIGKILL each, thaw) and waits until the cgroup
    /// is empty. Does nothing if the cgroup does not exist.
    pub fn kill_all(&self) -> Result<()> {
        if !self.main_dir().exists() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "processes {pids:?} of cgroup {} survive SIGKILL",
                    self.main_dir().display()
                );
            }
            if let Layout::V2(_) = self.layout {
                write(&self.main_dir().join("cgroup.kill"), "1")?;
            } else {
                self.freeze()?;
                for pid in pids {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                        // ESRCH: already gone, which is what we want.
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
                self.thaw()?;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the cgroup's directories (after [`Cgroup::kill_all`]). Missing ones are fine.
    pub fn remove(&self) -> Result<()> {
        for dir in self.dirs() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // EBUSY while the last exiting task is released.
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing cgroup {}", dir.display()))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Enables memory, pids and cpu for `ROOT/spawngrid/*` on a v2 host.
fn enable_v2_controllers(root: &Path) -> Result<()> {
    let ours = root.join("spawngrid");
    crate::ensure_dir(&ours)?;
    for dir in [root, ours.as_path()] {
        write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
    }
    Ok(())
}

/// Writes `value` to a cgroup file.
fn write(file: &Path, value: &str) -> Result<()> {
    std::fs::write(file, value).with_context(|| format!("writing {value:?} to {}", file.display()))
}

#[cfg(test)]
mod tests {
    //! The v2 layout on a fake cgroup root (a plain directory): file names and values. (The v1
    //! layout is what the integration tests exercise on this hybrid host.)
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn v2_files_and_values() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::V2(tmp.path().to_path_buf());
        let cg = Cgroup::new(&layout, "e1");
        let dir = tmp.path().join("spawngrid/e1");
        assert_eq!(cg.dirs(), vec![dir.clone()]);
        cg.create(&Limits {
            memory: 64 << 20,
            pids: 99,
            cpu_weight: 250,
        })
        .unwrap();
        assert_eq!(
            read(&tmp.path().join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(&tmp.path().join("spawngrid/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&dir.join("pids.max")), "99");
        assert_eq!(read(&dir.join("cpu.weight")), "250");
        assert!(
            cg.create(&Limits::default()).is_err(),
            "a second create must fail"
        );

        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        cg.freeze().unwrap();
        assert_eq!(read(&dir.join("cgroup.freeze")), "1");
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        cg.thaw().unwrap();
        assert_eq!(read(&dir.join("cgroup.freeze")), "0");

        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        assert!(cg.pids().unwrap().is_empty());
        cg.add(1234).unwrap();
        assert_eq!(cg.pids().unwrap(), vec![1234]);
    }

    #[test]
    fn v1_directories_per_controller() {
        let cg = Cgroup::new(&Layout::V1(PathBuf::from("/sys/fs/cgroup")), "e2");
        let dirs: Vec<String> = cg.dirs().iter().map(|d| d.display().to_string()).collect();
        assert_eq!(
            dirs,
            ["memory", "pids", "cpu", "freezer"]
                .map(|c| format!("/sys/fs/cgroup/{c}/spawngrid/e2"))
        );
    }
}
