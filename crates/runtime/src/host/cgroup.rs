//! Env cgroups: memory (tmpfs writes included), pids and cpu limits, freezing, group kill.
//!
//! Works on a pure cgroup v2 host (`/sys/fs/cgroup/cgroup.controllers` exists) and on a v1 or
//! hybrid host, where an env gets one directory per controller (`memory`, `pids`, `cpu`,
//! `freezer`). Either way an env's cgroup is `spawngrid-<node>/<env>` under each root, where
//! `<node>` is the node's id ([`crate::Runtime::node_id`], derived from its data directory):
//! cgroups are host-wide, and two nodes on one host may hold envs with the same id. The node's
//! parent goes with its last env. Envs spawned before node ids used `spawngrid/<env>`
//! ([`LEGACY_PARENT`]); an env's cgroup is always taken from its recorded state
//! ([`Cgroup::of_env`]), so a node restarted on newer code still freezes, kills and removes
//! them.

use crate::error::{fail, Context, Result};
use crate::host::devices;
use crate::mounts::{ensure_dir, unescape_path};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The v1 controllers an env uses, in the order they were added: an env spawned by an older
/// version has a prefix of them ([`Cgroup::recorded`]): the first four before the device
/// allow-list, five before the `/proc/stat` view (which reads `cpuacct`).
const V1_CONTROLLERS: [&str; 6] = ["memory", "pids", "cpu", "freezer", "devices", "cpuacct"];

/// The fewest v1 controllers a recorded env has.
const V1_OLDEST: usize = 4;

/// The parent of env cgroups spawned before node ids (`spawngrid/<env>`). Nodes on older
/// versions share it and expect it to stay, so it is never removed.
pub const LEGACY_PARENT: &str = "spawngrid";

/// The host's kind of cgroup hierarchies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hierarchy {
    /// One unified hierarchy (cgroup v2) at the root.
    V2,
    /// One hierarchy per controller (v1 or hybrid), mounted at `ROOT/<controller>`.
    V1,
}

/// Where a node's env cgroups are: the host's hierarchies, and the node's parent in each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The kind of hierarchies.
    pub hierarchy: Hierarchy,
    /// Where they are mounted: `/sys/fs/cgroup`.
    pub root: PathBuf,
    /// The parent of the node's env cgroups under each hierarchy root: `spawngrid-<node id>`.
    pub parent: String,
}

impl Layout {
    /// The host's hierarchies under `/sys/fs/cgroup` (v2 if `cgroup.controllers` exists there,
    /// else v1 controllers), with node `node_id`'s parent.
    pub fn detect(node_id: &str) -> Layout {
        let root = PathBuf::from("/sys/fs/cgroup");
        let hierarchy = match root.join("cgroup.controllers").exists() {
            true => Hierarchy::V2,
            false => Hierarchy::V1,
        };
        Layout {
            hierarchy,
            root,
            parent: format!("{LEGACY_PARENT}-{node_id}"),
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
            unescape_path(point),
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
    /// At most this many cpus' worth of time (a CFS quota per 100 ms period), on as many
    /// host cpus rounded up ([`crate::host::cpus`]); `None`: all of the host's.
    #[serde(default)]
    pub cpus: Option<f64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: 512 << 20,
            pids: 1024,
            cpu_weight: 100,
            cpus: None,
        }
    }
}

/// The cgroup of one env (its directories, which need not exist yet).
#[derive(Clone, Debug)]
pub struct Cgroup {
    layout: Layout,
    /// `PARENT/ENV`, the same under every hierarchy root.
    path: PathBuf,
    /// How many of [`V1_CONTROLLERS`] it has a directory in (all but envs spawned before
    /// some were added).
    v1_controllers: usize,
}

impl Cgroup {
    /// The cgroup of env `env` in `layout`: `<the node's parent>/<env>`.
    pub fn new(layout: &Layout, env: &str) -> Cgroup {
        Cgroup {
            layout: layout.clone(),
            path: Path::new(&layout.parent).join(env),
            v1_controllers: V1_CONTROLLERS.len(),
        }
    }

    /// The cgroup whose directories are `dirs`, as [`Cgroup::dirs`] listed them (an env's
    /// recorded state), whatever its parent; `None` if they are no cgroup of `layout`.
    pub fn recorded(layout: &Layout, dirs: &[PathBuf]) -> Option<Cgroup> {
        let probe = Cgroup {
            layout: layout.clone(),
            path: PathBuf::new(),
            v1_controllers: V1_CONTROLLERS.len(),
        };
        let first = dirs
            .first()?
            .strip_prefix(probe.dir(V1_CONTROLLERS[0]))
            .ok()?;
        (V1_OLDEST..=V1_CONTROLLERS.len())
            .rev()
            .find_map(|v1_controllers| {
                let cg = Cgroup {
                    layout: layout.clone(),
                    path: first.to_path_buf(),
                    v1_controllers,
                };
                (first.components().count() == 2 && cg.dirs() == dirs).then_some(cg)
            })
    }

    /// The cgroup's directory in `controller`'s hierarchy (v1) or in the unified one (v2).
    fn dir(&self, controller: &str) -> PathBuf {
        let root = &self.layout.root;
        match self.layout.hierarchy {
            Hierarchy::V2 => root.join(&self.path),
            Hierarchy::V1 => root.join(controller).join(&self.path),
        }
    }

    /// Every directory of this cgroup (one on v2, one per controller on v1).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self.layout.hierarchy {
            Hierarchy::V2 => vec![self.main_dir()],
            Hierarchy::V1 => V1_CONTROLLERS[..self.v1_controllers]
                .iter()
                .map(|c| self.dir(c))
                .collect(),
        }
    }

    /// The directory with the memory controller's files, and whether it is cgroup v2's.
    pub fn memory_dir(&self) -> (PathBuf, bool) {
        (self.dir("memory"), self.layout.hierarchy == Hierarchy::V2)
    }

    /// The directory with the env's cpu time (v1 `cpuacct.stat`, v2 `cpu.stat`).
    pub fn cpu_usage_dir(&self) -> PathBuf {
        self.dir("cpuacct")
    }

    /// The directory whose `cgroup.procs` lists every process (and that freezes them).
    fn main_dir(&self) -> PathBuf {
        self.dir("freezer")
    }

    /// Creates the directories and sets `limits`. Fails if the cgroup already exists.
    pub fn create(&self, limits: &Limits) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        // v1 hosts often mount `cpu` and `cpuacct` together (`cpu,cpuacct`, each name a
        // symbolic link to it): then two of the directories are one, made once.
        let mut made = Vec::new();
        for dir in self.dirs() {
            let same = |m: std::fs::Metadata| made.contains(&(m.dev(), m.ino()));
            if std::fs::metadata(&dir).is_ok_and(same) {
                continue;
            }
            self.create_dir(&dir)?;
            let m =
                std::fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
            made.push((m.dev(), m.ino()));
        }
        let shares = (limits.cpu_weight.clamp(1, 10000) * 1024 / 100).max(2);
        let mut settings: Vec<(PathBuf, String)> = match self.layout.hierarchy {
            Hierarchy::V2 => {
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
            Hierarchy::V1 => vec![
                (
                    self.dir("memory").join("memory.limit_in_bytes"),
                    limits.memory.to_string(),
                ),
                (self.dir("pids").join("pids.max"), limits.pids.to_string()),
                (self.dir("cpu").join("cpu.shares"), shares.to_string()),
            ],
        };
        if let Some(cpus) = limits.cpus {
            let quota = cpu_quota(cpus)?;
            settings.push(match self.layout.hierarchy {
                Hierarchy::V2 => (
                    self.main_dir().join("cpu.max"),
                    format!("{quota} {CPU_PERIOD_US}"),
                ),
                Hierarchy::V1 => (self.dir("cpu").join("cpu.cfs_quota_us"), quota.to_string()),
            });
        }
        for (file, value) in settings {
            // memory.swap.max is absent without swap accounting: not an error.
            if file.ends_with("memory.swap.max") && !file.exists() {
                continue;
            }
            write(&file, &value)?;
        }
        Ok(())
    }

    /// Creates one directory of the cgroup, and its parent (with the controllers enabled for
    /// its children on v2) if missing. The parent may vanish in between (another env of the
    /// node was the last and removed it): then it is made again.
    fn create_dir(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().context("a cgroup without a parent")?;
        let mut attempts = 0;
        loop {
            match self.layout.hierarchy {
                Hierarchy::V2 => enable_v2_controllers(&self.layout.root, parent)?,
                Hierarchy::V1 => ensure_dir(parent)?,
            }
            match std::fs::create_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 10 => {
                    attempts += 1
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating cgroup {}", dir.display()))
                }
            }
        }
    }

    /// Restricts the devices its processes may use to [`devices::allowed`] (after
    /// [`Cgroup::create`]): the v1 `devices` controller, or a v2 device program.
    pub fn restrict_devices(&self) -> Result<()> {
        match self.layout.hierarchy {
            Hierarchy::V1 => devices::restrict_v1(&self.dir("devices")),
            Hierarchy::V2 => devices::restrict_v2(&self.main_dir()),
        }
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

    /// Whether the env is frozen or being frozen (false if the cgroup does not exist).
    pub fn frozen(&self) -> Result<bool> {
        let d = self.main_dir();
        let (file, thawed) = match self.layout.hierarchy {
            Hierarchy::V2 => ("cgroup.freeze", "0"),
            Hierarchy::V1 => ("freezer.state", "THAWED"),
        };
        match std::fs::read_to_string(d.join(file)) {
            Ok(state) => Ok(state.trim() != thawed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("reading {}", d.join(file).display())),
        }
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let d = self.main_dir();
        let (file, value, done_file) = match self.layout.hierarchy {
            Hierarchy::V2 => (
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
                "cgroup.events",
            ),
            Hierarchy::V1 => (
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
            let reached = match self.layout.hierarchy {
                Hierarchy::V2 => state
                    .lines()
                    .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" }),
                Hierarchy::V1 => state.trim() == value,
            };
            if reached {
                return Ok(());
            }
            if Instant::now() > deadline {
                fail!("cgroup {} did not reach {value} in 10 s", d.display());
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
                fail!(
                    "processes {pids:?} of cgroup {} survive SIGKILL",
                    self.main_dir().display()
                );
            }
            if self.layout.hierarchy == Hierarchy::V2 {
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

    /// Removes the cgroup's directories (after [`Cgroup::kill_all`]), and the node's parent
    /// directories once they are empty (not [`LEGACY_PARENT`]). Missing ones are fine.
    pub fn remove(&self) -> Result<()> {
        let dirs = self.dirs();
        for dir in &dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(dir) {
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
        if !self.path.starts_with(LEGACY_PARENT) {
            for parent in dirs.iter().filter_map(|d| d.parent()) {
                // Best effort: busy (ENOTEMPTY, EBUSY) while another env of the node lives.
                let _ = std::fs::remove_dir(parent);
            }
        }
        Ok(())
    }
}

/// The CFS period of an env's cpu quota (the kernel's default), in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest cpu limit: the kernel's smallest quota is 1 ms per period.
pub const MIN_CPUS: f64 = 0.01;

/// Why a cpu limit of `cpus` is not possible on this node, if it is not: it must be from
/// [`MIN_CPUS`] to the node's own cpus (more would be no limit, and past `u64` a quota the
/// kernel refuses).
pub fn check_cpus(cpus: f64) -> std::result::Result<(), String> {
    let most = crate::host::cpus::node_cpus().map_or(0, |c| c.len());
    if cpus.is_finite() && cpus >= MIN_CPUS && cpus <= most as f64 {
        return Ok(());
    }
    Err(format!(
        "a cpu limit of {cpus} is not possible on this node: give from {MIN_CPUS} to {most} cpus"
    ))
}

/// The CFS quota (µs per [`CPU_PERIOD_US`]) of a limit of `cpus` cpus.
fn cpu_quota(cpus: f64) -> Result<u64> {
    if let Err(why) = check_cpus(cpus) {
        fail!("{why}");
    }
    Ok((cpus * CPU_PERIOD_US as f64).round() as u64)
}

/// Makes `parent` (a child of `root`) and enables memory, pids and cpu for its children on a
/// v2 host.
fn enable_v2_controllers(root: &Path, parent: &Path) -> Result<()> {
    ensure_dir(parent)?;
    for dir in [root, parent] {
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

    #[test]
    fn a_cpu_limit_is_from_the_least_quota_to_the_nodes_cpus() {
        let most = crate::host::cpus::node_cpus().unwrap().len() as f64;
        for ok in [MIN_CPUS, 0.5, 1.0, most] {
            assert_eq!(check_cpus(ok), Ok(()), "{ok}");
        }
        for bad in [
            0.0,
            0.001,
            -1.0,
            most + 0.5,
            3.6e306,
            f64::INFINITY,
            f64::NAN,
        ] {
            let why = check_cpus(bad).unwrap_err();
            assert!(
                why.contains(&format!("give from 0.01 to {most} cpus")),
                "{why}"
            );
        }
        // A limit past the node's cpus never reaches the kernel as a quota it refuses.
        assert!(cpu_quota(3.6e306).is_err());
        assert_eq!(cpu_quota(1.5).unwrap(), 150_000);
    }

    fn layout(hierarchy: Hierarchy, root: &Path, node_id: &str) -> Layout {
        Layout {
            hierarchy,
            root: root.to_path_buf(),
            parent: format!("spawngrid-{node_id}"),
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn v2_files_and_values() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = layout(Hierarchy::V2, tmp.path(), "n1");
        let cg = Cgroup::new(&layout, "e1");
        let dir = tmp.path().join("spawngrid-n1/e1");
        assert_eq!(cg.dirs(), vec![dir.clone()]);
        cg.create(&Limits {
            memory: 64 << 20,
            pids: 99,
            cpu_weight: 250,
            cpus: Some(1.5),
        })
        .unwrap();
        assert_eq!(
            read(&tmp.path().join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(&tmp.path().join("spawngrid-n1/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&dir.join("pids.max")), "99");
        assert_eq!(read(&dir.join("cpu.weight")), "250");
        assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
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
        let layout = layout(Hierarchy::V1, Path::new("/sys/fs/cgroup"), "n2");
        let cg = Cgroup::new(&layout, "e2+bob");
        let dirs: Vec<String> = cg.dirs().iter().map(|d| d.display().to_string()).collect();
        assert_eq!(
            dirs,
            ["memory", "pids", "cpu", "freezer", "devices", "cpuacct"]
                .map(|c| format!("/sys/fs/cgroup/{c}/spawngrid-n2/e2+bob"))
        );
        assert_eq!(main_dir_of(&layout, &cg.dirs()), cg.main_dir());
    }

    fn main_dir_of(layout: &Layout, dirs: &[PathBuf]) -> PathBuf {
        Cgroup::recorded(layout, dirs).expect("recorded").main_dir()
    }

    #[test]
    fn recorded_directories_keep_their_parent() {
        // Envs spawned before node ids recorded `spawngrid/<env>`.
        let v1 = layout(Hierarchy::V1, Path::new("/sys/fs/cgroup"), "n3");
        let legacy: Vec<PathBuf> = V1_CONTROLLERS
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join("spawngrid/old"))
            .collect();
        let main = main_dir_of(&v1, &legacy);
        assert_eq!(main, Path::new("/sys/fs/cgroup/freezer/spawngrid/old"));
        // Envs spawned before the device allow-list have no `devices` directory, those
        // spawned before the /proc/stat view no `cpuacct` one.
        for n in [4, 5] {
            let older = Cgroup::recorded(&v1, &legacy[..n]).expect("older controllers");
            assert_eq!(older.dirs(), &legacy[..n]);
        }
        let v2 = layout(Hierarchy::V2, Path::new("/sys/fs/cgroup"), "n3");
        let dirs = [PathBuf::from("/sys/fs/cgroup/spawngrid-n3/e3")];
        assert_eq!(main_dir_of(&v2, &dirs), dirs[0]);
        // Not a cgroup of the layout: the caller falls back to the node's name.
        assert!(Cgroup::recorded(&v2, &legacy).is_none());
        assert!(Cgroup::recorded(&v1, &legacy[..2]).is_none());
        assert!(Cgroup::recorded(&v2, &[PathBuf::from("/sys/fs/cgroup/e3")]).is_none());
        assert!(Cgroup::recorded(&v2, &[]).is_none());
    }
}
