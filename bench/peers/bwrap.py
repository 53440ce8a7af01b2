# bench/peers/bwrap.py: bubblewrap: a read-only root, or an overlay the bench mounts (bwrap
# 0.8 has no --overlay).
# Part of bench/runtime.py (see its header and bench/README.md, "Runtime benchmark").
import os
import time

from benchlib import run
from peers.base import Overlay, Variant


class Bwrap(Variant):
    def __init__(self, b, overlay):
        super().__init__(b, "bwrap+overlay" if overlay else "bwrap",
                         "overlay + fresh 100M tmpfs upper, mounted by the bench (bwrap 0.8 has "
                         "no --overlay)" if overlay else "read-only root, tmpfs /tmp")
        self.overlay = overlay
        self.ns_args = ["--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev"]

    def sample(self, i):
        if not self.overlay:
            return {"total": run(["bwrap", "--ro-bind", self.b.root, "/", *self.ns_args, "--tmpfs",
                                  "/tmp", "true"], 120)[0]}
        t0 = time.perf_counter()
        with Overlay(os.path.join(self.b.w, "ovl-bwrap"), self.b.root) as o:
            run(["bwrap", "--bind", o.root, "/", *self.ns_args, "true"], 120)
        return {"total": time.perf_counter() - t0}
