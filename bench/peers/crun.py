# bench/peers/crun.py: crun: a rootful OCI bundle on an overlay the bench mounts; `crun exec`
# to attach.
# Part of bench/runtime.py (see its header and bench/README.md, "Runtime benchmark").
import json
import os
import time

from benchlib import StepFailed, run
from peers.base import MEM_LIMIT_BYTES, PIDS_LIMIT, Overlay, Variant


def crun_bundle(bundle, root, args):
    """`crun spec`'s default rootful config (pid, net, ipc, uts, mount namespaces) + a cgroup
    namespace, spawngrid's memory and pids limits, no terminal."""
    os.makedirs(bundle, exist_ok=True)
    cfg_path = os.path.join(bundle, "config.json")
    if os.path.exists(cfg_path):
        os.unlink(cfg_path)
    run(["crun", "spec"], 60, cwd=bundle)
    with open(cfg_path) as f:
        c = json.load(f)
    c["root"] = {"path": root, "readonly": False}
    c["process"]["args"] = args
    c["process"]["terminal"] = False
    c["hostname"] = "crun"
    c["linux"]["namespaces"].append({"type": "cgroup"})
    c["linux"].setdefault("resources", {})
    c["linux"]["resources"]["memory"] = {"limit": MEM_LIMIT_BYTES}
    c["linux"]["resources"]["pids"] = {"limit": PIDS_LIMIT}
    with open(cfg_path, "w") as f:
        json.dump(c, f, indent=1)


class Crun(Variant):
    name = "crun+overlay"
    layer = "overlay + fresh 100M tmpfs upper, mounted by the bench; cgroup limits"

    def __init__(self, b):
        super().__init__(b)
        self.bundle = os.path.join(b.peers_dir, "crun")
        self.ovl = os.path.join(b.peers_dir, "crun-ovl")
        self.prefix = None
        self.preexec = None

    def configure(self, prefix):
        self.prefix = prefix

    def setup(self):
        crun_bundle(self.bundle, os.path.join(self.ovl, "root"), ["true"])
        failed = self.probe([
            ("host, cgroup manager cgroupfs", False, ["crun"]),
            ("host, --cgroup-manager=disabled", False, ["crun", "--cgroup-manager=disabled"]),
            ("private mount namespace without /sys/fs/cgroup/unified, cgroupfs", True, ["crun"])])
        if failed:
            raise StepFailed("; ".join(f"{label}: {e}" for label, e in failed))

    def sample(self, i):
        t0 = time.perf_counter()
        with Overlay(self.ovl, self.b.root):
            run([*self.prefix, "run", "-b", self.bundle, f"bench-{os.getpid()}-{i}"], 120,
                preexec_fn=self.preexec)
        return {"total": time.perf_counter() - t0}


# Each starts a container of the peer running `sleeper` and returns (one attach -> seconds,
# stop); the attach commands run `true` in it.

def attach_crun(b, sleeper):
    pre = b.ns.preexec()
    bundle = os.path.join(b.peers_dir, "crun-attach")
    ovl = Overlay(os.path.join(b.peers_dir, "crun-attach-ovl"), b.root).__enter__()
    crun_bundle(bundle, ovl.root, sleeper)
    cid = f"bench-{os.getpid()}-attach"
    run(["crun", "run", "-d", "-b", bundle, cid], 120, preexec_fn=pre)

    def stop():
        run(["crun", "delete", "-f", cid], 120, preexec_fn=pre, check=False)
        ovl.__exit__(None, None, None)
    return lambda: run(["crun", "exec", cid, "true"], 120, preexec_fn=pre)[0], stop
