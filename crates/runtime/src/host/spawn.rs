//! Spawning an env: state directory, cgroup, write layer, overlay root, namespaces and init.
//! A spawn that fails at any step removes everything it made (the same teardown as boom).

use crate::error::{fail, Context, Error, Result};
use crate::host::cgroup::{Cgroup, Limits};
use crate::host::egress::{Cidr, Rules};
use crate::host::launch::Prepared;
use crate::host::net::{self, Network};
use crate::host::runtime::Runtime;
use crate::host::state::{self, EnvState};
use crate::host::{boom, cpus, owners, service};
use crate::mounts::{self, ensure_dir};
use crate::proc::start_time;
use crate::protocol::{Go, InitConfig, InitReport, Message, Owner, ViewConfig};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::mount::OpenTreeFlags;
use std::path::{Path, PathBuf};

/// Size of a RAM-backed write layer (`spawn`).
pub const TMPFS_SIZE: u64 = 100 << 20;
/// Size of a disk-backed write layer (`spawn --disk`).
pub const DISK_SIZE: u64 = 1 << 30;

/// What to spawn.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// The env's name on this node (see [`crate::check_env_name`]).
    pub name: String,
    /// The hostname inside; default: the name (cut to 64 bytes).
    pub hostname: Option<String>,
    /// The user it belongs to.
    pub owner: String,
    /// The snapshot the lower shows, when known (needed to save).
    pub snapshot: Option<library::Score>,
    /// The lower layer: a directory showing the snapshot.
    pub lower: PathBuf,
    /// Whether `lower` already shows owners shifted into the node's id range (a snapfs mount
    /// with `--uid-offset`); otherwise it is bind-mounted with an id mapping.
    pub lower_shifted: bool,
    /// Disk-backed write layer (ext4 image on a loop device) instead of a tmpfs.
    pub disk: bool,
    /// Size of the write layer; default [`TMPFS_SIZE`] or [`DISK_SIZE`].
    pub write_size: Option<u64>,
    /// cgroup limits.
    pub limits: Limits,
    /// The env's network: `none` (loopback only, the default) or `nat`.
    pub network: Network,
    /// Destinations a `nat` env may reach beyond the internet (private networks, the host's
    /// addresses): see [`crate::host::egress`].
    pub nat_allow: Vec<Cidr>,
    /// A `nat` env's egress policy, its domain names resolved (default: the internet).
    pub egress: Rules,
    /// For tests: fail right after the step of this name (see [`STEPS`]).
    pub fail_after: Option<String>,
}

impl SpawnOptions {
    /// Options for env `name` of `owner` over `lower` (unshifted), with default limits.
    pub fn new(name: &str, owner: &str, lower: &Path) -> SpawnOptions {
        SpawnOptions {
            name: name.into(),
            hostname: None,
            owner: owner.into(),
            snapshot: None,
            lower: lower.into(),
            lower_shifted: false,
            disk: false,
            write_size: None,
            limits: Limits::default(),
            network: Network::None,
            nat_allow: Vec::new(),
            egress: Rules::default(),
            fail_after: None,
        }
    }
}

/// The niceness at which the next spare helper is prepared (the lowest priority); a spawn
/// that takes it gives it its caller's.
const SPARE_NICE: i32 = 19;

/// The steps of a spawn, in order (names for [`SpawnOptions::fail_after`]).
pub const STEPS: [&str; 7] = [
    "cgroup",
    "write-layer",
    "helper",
    "lower",
    "overlay",
    "init",
    "net",
];

/// Spawns an env and returns its recorded state once its init is ready.
pub fn spawn(rt: &Runtime, opts: &SpawnOptions) -> Result<EnvState> {
    let dir = rt.env_dir(&opts.name)?;
    std::fs::create_dir_all(rt.envs_dir())
        .with_context(|| format!("creating {}", rt.envs_dir().display()))?;
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Exists {
                name: opts.name.clone(),
            })
        }
        r => r.with_context(|| format!("creating {}", dir.display()))?,
    }
    let mut undo = Undo {
        rt,
        name: &opts.name,
        armed: true,
    };
    let state = build(rt, opts, &dir)?;
    undo.armed = false;
    Ok(state)
}

impl Runtime {
    /// Keeps one env-init helper prepared ahead of the next spawn from now on (exec'd, in its
    /// own namespaces: `host::launch`), which takes the helper's exec and start-up and the
    /// making of most of its namespaces out of every spawn. For long-lived callers (the node
    /// daemon); the spare is one idle process holding one owner uid, and it exits with its
    /// caller.
    pub fn keep_spare_helper(&self) {
        self.spare.keep(|| prepare(self));
    }
}

/// A helper prepared for the next spawn, with an owner uid leased for it.
fn prepare(rt: &Runtime) -> Result<Prepared> {
    let holder = owners::helper_holder(&rt.data);
    let uid = owners::lease(&rt.owners, &holder)?;
    let owner = Owner {
        uid,
        gid: rt.ids.host_gid,
    };
    Prepared::start(&rt.helper, &rt.envs_dir(), rt.ids, owner, holder)
}

/// Booms a half-made env when dropped armed.
struct Undo<'a> {
    rt: &'a Runtime,
    name: &'a str,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = boom::boom(self.rt, self.name) {
                eprintln!(
                    "spawngrid: cleaning up the failed spawn of {}: {e:#}",
                    self.name
                );
            }
        }
    }
}

fn build(rt: &Runtime, opts: &SpawnOptions, dir: &Path) -> Result<EnvState> {
    let step = |name: &str| match &opts.fail_after {
        Some(f) if f == name => Err(anyhow::anyhow!("injected failure after step {name}").into()),
        _ => Ok(()),
    };
    let cg = Cgroup::new(&rt.cgroups, &opts.name);
    let ids = rt.ids;
    let write_size = opts
        .write_size
        .unwrap_or(if opts.disk { DISK_SIZE } else { TMPFS_SIZE });
    let mut state = EnvState {
        name: opts.name.clone(),
        owner: opts.owner.clone(),
        snapshot: opts.snapshot.map(|s| s.to_hex()),
        lower: opts.lower.clone(),
        disk: opts.disk,
        write_size,
        init_pid: 0,
        init_start: 0,
        cgroups: cg.dirs(),
        mounts: Vec::new(),
        ids,
        owner_uid: None,
        created: state::now(),
        network: opts.network,
        nat: None,
        egress: opts.egress.policy.clone(),
    };
    if opts.network != Network::Nat && opts.egress.policy != Default::default() {
        fail!("an egress policy needs a nat network (--net nat)");
    }
    let mut helper = rt.spare.take(|| prepare(rt))?;
    let result = configure(opts, dir, &cg, &mut helper, &mut state, &step);
    if result.is_ok() {
        // It exits once it forked the init (dropping it then kills nothing).
        let _ = helper.child.wait();
    }
    drop(helper);
    // The next spawn's helper is prepared now, beside this spawn's caller, but at the lowest
    // priority: the env just made (its first command, a login's shell) goes first.
    // (No thread at all for a caller that keeps no spare: a one-shot CLI spawn.)
    if rt.spare.kept() {
        let next = rt.clone();
        std::thread::spawn(move || {
            // Linux's nice is per thread: this one's, inherited by the helper it starts.
            let _ = rustix::process::setpriority_process(None, SPARE_NICE);
            next.spare.refill(|| prepare(&next))
        });
    }
    result?;
    if opts.network == Network::Nat {
        // The init's network namespace exists (its pid is known); boom undoes this on failure.
        let (pid, start) = (state.init_pid, state.init_start);
        let link = net::setup_nat(rt, &opts.name, pid, start, &opts.nat_allow, &opts.egress)?;
        state.nat = Some(link);
    }
    step("net")?;
    state::store(dir, &state)?;
    Ok(state)
}

/// Makes the env's cgroup and write layer around the prepared `helper` and drives it through
/// the rest of the spawn handshake (see `inside::init`): its config, then the go-ahead once the
/// root is mounted; fills in the init's pid and the mounts.
fn configure(
    opts: &SpawnOptions,
    dir: &Path,
    cg: &Cgroup,
    helper: &mut Prepared,
    state: &mut EnvState,
    step: &dyn Fn(&str) -> Result<()>,
) -> Result<()> {
    // Recorded at once: the claim is stale for a state that records another owner.
    helper.hand_over(dir)?;
    state.owner_uid = Some(helper.owner.uid);
    state::store(dir, state)?;
    cg.create(&opts.limits)?;
    cg.restrict_devices()?;
    step("cgroup")?;

    // The helper takes its config (while the write layer is made) with what it cannot reach
    // itself: the exec socket's listener and the cgroup directories its views read.
    let root = dir.join("root");
    let (memory_cgroup, cgroup_v2) = cg.memory_dir();
    let cfg = InitConfig {
        hostname: hostname(opts.hostname.as_deref().unwrap_or(&opts.name)),
        views: ViewConfig {
            cgroup_v2,
            cpus: cpus::for_env(&opts.name, opts.limits.cpus)?,
        },
    };
    let listener = service::listen(dir)?;
    let (memory, cpu) = (open_dir(&memory_cgroup)?, open_dir(&cg.cpu_usage_dir())?);
    let fds = [listener.as_fd(), memory.as_fd(), cpu.as_fd()];
    helper
        .send(&cfg.encode(), &fds)
        .context("configuring env-init")?;
    drop((listener, memory, cpu));
    write_layer(opts, dir, state)?;
    step("write-layer")?;

    let pid = helper.child.id();
    cg.add(pid as i32)?;
    step("helper")?;
    let lower = if opts.lower_shifted {
        opts.lower.clone()
    } else {
        let bind = dir.join("lower");
        ensure_dir(&bind)?;
        let userns = std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .context("opening the env's userns")?;
        mounts::idmapped_bind(&opts.lower, &bind, &userns)?;
        state.mounts.push(bind.clone());
        bind
    };
    step("lower")?;
    let rw = dir.join("rw");
    ensure_dir(&root)?;
    mounts::mount_overlay(&lower, &rw.join("upper"), &rw.join("work"), &root)?;
    state.mounts.push(root.clone());
    step("overlay")?;

    // A detached copy of the root for the helper's mount namespace (made ahead, so the
    // overlay mounted since is not in it).
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        &root,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .with_context(|| format!("cloning {}", root.display()))?;
    helper
        .send(&Go.encode(), &[tree.as_fd()])
        .context("starting env-init")?;
    drop(tree);
    let (mut init_pid, mut ready) = (None, false);
    while !(ready && init_pid.is_some()) {
        match helper.next()? {
            InitReport::Pid(pid) => {
                init_pid = Some(pid);
                state.init_pid = pid;
                state.init_start = start_time(pid).unwrap_or(0);
            }
            InitReport::Ready => ready = true,
            other => fail!("env-init reported {other:?} after the go-ahead"),
        }
    }
    step("init")
}

/// An `O_PATH` fd of directory `path`.
fn open_dir(path: &Path) -> Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(path, flags, Mode::empty())
        .with_context(|| format!("opening {}", path.display()))
}

/// Mounts the env's write layer (a tmpfs, or an ext4 image with `--disk`) on `DIR/rw` with
/// its `upper` and `work` directories; the upper shows the lower root's own mode and times.
fn write_layer(opts: &SpawnOptions, dir: &Path, state: &mut EnvState) -> Result<()> {
    let (ids, write_size) = (state.ids, state.write_size);
    let rw = dir.join("rw");
    ensure_dir(&rw)?;
    if opts.disk {
        mounts::mount_disk(
            &dir.join("disk.img"),
            &rw,
            write_size,
            ids.host_uid,
            ids.host_gid,
        )?;
    } else {
        mounts::mount_tmpfs(&rw, write_size, ids.host_uid, ids.host_gid)?;
    }
    state.mounts.push(rw.clone());
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        rustix::fs::chown(d, Some(uid(ids.host_uid)), Some(gid(ids.host_gid)))
            .with_context(|| format!("chown {}", d.display()))?;
    }
    // The merged root shows the upper's own mode and times: the lower root's, so an env's `/`
    // is its snapshot's until the env changes it (and a save records no change it did not make).
    let top = rustix::fs::stat(&opts.lower)
        .with_context(|| format!("reading the root of {}", opts.lower.display()))?;
    rustix::fs::chmod(
        &upper,
        rustix::fs::Mode::from_raw_mode(top.st_mode & 0o7777),
    )
    .with_context(|| format!("chmod {}", upper.display()))?;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: top.st_atime,
            tv_nsec: top.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: top.st_mtime,
            tv_nsec: top.st_mtime_nsec as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &upper,
        &times,
        rustix::fs::AtFlags::empty(),
    )
    .with_context(|| format!("setting the times of {}", upper.display()))?;
    Ok(())
}

/// The hostname for env `name`: the name, cut to the kernel's 64 bytes.
fn hostname(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

fn uid(n: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(n)
}

fn gid(n: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(n)
}
