# bench/peers/nspawn.py: systemd-nspawn --volatile=overlay.
# Part of bench/runtime.py (see its header and bench/README.md, "Runtime benchmark").
from benchlib import last_line, run
from peers.base import Variant


class Nspawn(Variant):
    name = "systemd-nspawn"
    layer = "--volatile=overlay (tmpfs upper)"

    def argv(self):
        return ["systemd-nspawn", "-q", "-D", self.b.root, "--volatile=overlay", "--register=no",
                "--keep-unit", "--private-network", "--machine", "bench", "true"]

    def setup(self):
        _, _, err = run(self.argv(), 120)
        if err.strip():
            self.notes.append(f"stderr (exit 0): {last_line(err)}")

    def sample(self, i):
        return {"total": run(self.argv(), 120)[0]}
