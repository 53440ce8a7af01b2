# bench/peers/lxc.py: LXC: lxc-execute on an overlay rootfs, lxc-attach, lxc-snapshot and lxc-copy.
# Part of bench/runtime.py (see its header and bench/README.md, "Runtime benchmark").
import os
import shutil

from benchlib import ensure_tool, run
from peers.base import MEM_LIMIT_BYTES, PIDS_LIMIT, Variant, cgroup_v2


LXC_COMMON = """\
lxc.net.0.type = empty
lxc.apparmor.profile = unconfined
lxc.include = /usr/share/lxc/config/common.conf
# common.conf.d/00-lxcfs.conf (installed with lxc) adds lxcfs hooks; its post-stop hook sleeps
# 0.5 s after every container. Cleared: lxcfs is not in use here.
lxc.hook.mount =
lxc.hook.post-stop =
"""


def lxc_limits():
    if cgroup_v2():
        return f"lxc.cgroup2.memory.max = {MEM_LIMIT_BYTES}\nlxc.cgroup2.pids.max = {PIDS_LIMIT}\n"
    return (f"lxc.cgroup.memory.limit_in_bytes = {MEM_LIMIT_BYTES}\n"
            f"lxc.cgroup.pids.max = {PIDS_LIMIT}\n")


def lxc_config(path, name, rootfs, extra=""):
    """Writes PATH/NAME/config: container NAME on `rootfs` (an lxc.rootfs.path value), with
    LXC_COMMON, spawngrid's limits and the `extra` lines."""
    os.makedirs(os.path.join(path, name), exist_ok=True)
    with open(os.path.join(path, name, "config"), "w") as f:
        f.write(f"lxc.uts.name = {name}\nlxc.rootfs.path = {rootfs}\n" + LXC_COMMON + lxc_limits()
                + extra)


def lxc_overlay(b, name):
    """Container NAME under b.w/lxc on an overlay of the rootfs, its upper directory (returned)
    b.w/lxc-upper/NAME."""
    upper = os.path.join(b.w, "lxc-upper", name)
    os.makedirs(upper)
    lxc_config(os.path.join(b.w, "lxc"), name, f"overlay:{b.root}:{upper}")
    return upper


class Lxc(Variant):
    name = "lxc-execute"
    layer = "overlay rootfs (upper on the bench tmpfs, emptied between runs)"

    def setup(self):
        self.path = os.path.join(self.b.w, "lxc")
        self.upper = lxc_overlay(self.b, "lat")
        self.sample("probe")

    def sample(self, i):
        dt = run(["lxc-execute", "-n", "lat", "-P", self.path, "--", "true"], 120)[0]
        for e in os.listdir(self.upper):   # a fresh write layer per run, untimed
            p = os.path.join(self.upper, e)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        return {"total": dt}


def attach_lxc(b, sleeper):
    path = os.path.join(b.w, "lxc")
    lxc_overlay(b, "att")
    run(["lxc-start", "-n", "att", "-P", path, "-d", "--", *sleeper], 120)
    run(["lxc-wait", "-n", "att", "-P", path, "-s", "RUNNING", "-t", "10"], 120)

    def stop():
        run(["lxc-stop", "-k", "-n", "att", "-P", path], 120, check=False)
    return lambda: run(["lxc-attach", "-n", "att", "-P", path, "--", "true"], 120)[0], stop


def session_lxc(b, debs, add):
    """dpkg -i in a dir-backed container, then lxc-snapshot and lxc-copy of it."""
    u = ensure_tool("rsync", "rsync")
    if u:
        return f"{u} (lxc-snapshot of a dir rootfs uses rsync)"
    path = os.path.join(b.w, "lxc-sess")
    try:
        for r in range(b.a.repeat):
            c = f"sess{r}"
            d = os.path.join(path, c)
            os.makedirs(d)
            run(["cp", "-a", b.root, os.path.join(d, "rootfs")], b.t)
            lxc_config(path, c, f"dir:{d}/rootfs",
                       f"lxc.mount.entry = {debs['dir']} debs none bind,ro,create=dir 0 0\n")
            run(["lxc-execute", "-n", c, "-P", path, "--", "sh", "-c",
                 b.install_script("/debs")], b.t, what="lxc-execute (dpkg -i)")
            dt, _, _ = run(["lxc-snapshot", "-n", c, "-P", path], b.t)
            add("lxc-snapshot", "s", dt)
            dt, _, _ = run(["lxc-copy", "-n", c, "-N", f"{c}copy", "-P", path], b.t)
            add("lxc-copy", "s", dt)
            shutil.rmtree(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return None
