//! Boom: destroy an env — every process, mount, loop device, cgroup and file of it, its `nat`
//! network (veth pair, nft set element, subnet lease) and its owner uid's lease. Works from
//! the directory layout and the leases, not only from `state.json`, so it also cleans up after
//! a spawn that failed or crashed half-way. Idempotent.

use crate::error::{fail, Context, Result};
use crate::host::cgroup::Cgroup;
use crate::host::net::{self, Network};
use crate::host::owners;
use crate::host::runtime::Runtime;
use crate::host::state;
use crate::mounts;
use std::path::Path;
use std::time::{Duration, Instant};

/// Destroys env `name`. Booming an env that does not exist (any more) succeeds.
pub fn boom(rt: &Runtime, name: &str) -> Result<()> {
    let dir = rt.env_dir(name)?;
    let recorded = state::load(rt, name).ok();
    // The subnet leases are searched unless the state says the env has no `nat` network.
    let network = recorded.as_ref().map(|st| st.network);
    // The owner uid is given up last, when nothing of the env holds it any more.
    let owner = recorded.as_ref().map(|st| st.owner_uid);
    let cg = Cgroup::of_env(rt, name, recorded.as_ref());
    let st = recorded.filter(|st| st.alive());
    if let Some(pid) = st
        .as_ref()
        .and_then(|st| rustix::process::Pid::from_raw(st.init_pid))
    {
        // Killing PID 1 of the env's pid namespace kills every process in it.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    cg.kill_all()?;
    if let Some(st) = st {
        // Wait for the init to exit; it is no child of ours, so reaping it is its parent's job.
        let deadline = Instant::now() + Duration::from_secs(2);
        while st.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if network != Some(Network::None) {
        net::teardown_nat(rt, name)?;
    }
    mounts::unmount_under(&dir)?;
    detach_loops(&dir.join("disk.img"))?;
    cg.remove()?;
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => {}
    }
    match owner {
        // Recorded before per-env owners: it holds none.
        Some(None) => Ok(()),
        Some(Some(uid)) => owners::release(&dir, Some(uid)),
        // No state (a spawn that died before recording one): whichever it holds.
        None => owners::release(&dir, None),
    }
}

/// Detaches every loop device backed by `image` and waits until the kernel has freed them.
///
/// The env's mount namespace holds the disk layer's superblock until its last process is gone,
/// and autoclear runs only when the superblock goes, so the device can outlive the unmount by
/// a few milliseconds. `losetup -d` on a busy device only marks it for autoclear; the wait makes
/// boom return after the device is really free.
fn detach_loops(image: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut asked = false;
    loop {
        let devices = loops_backed_by(image);
        if devices.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            fail!(
                "loop device {} of {} is still busy; run `losetup -d` on it once its users are gone",
                devices.join(", "),
                image.display()
            );
        }
        if !asked && Instant::now() + Duration::from_secs(4) >= deadline {
            for dev in &devices {
                let out = std::process::Command::new("losetup")
                    .args(["-d", dev])
                    .output()
                    .context("running losetup -d")?;
                if !out.status.success() {
                    fail!(
                        "detaching {dev}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
            asked = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The loop devices (`/dev/loopN`) whose backing file is `image`.
fn loops_backed_by(image: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|file| Path::new(file.trim()) == image)
        })
        .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
        .collect()
}
