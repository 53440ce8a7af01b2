# bench/peers/base.py: what the peers share: limits, mount(2), the bench-made overlay, the
# peers' private mount namespace (PeerNs) and the Variant protocol of the latency rounds.
# Part of bench/runtime.py (see its header and bench/README.md, "Runtime benchmark").
import ctypes
import os
import subprocess

from benchlib import StepFailed


MEM_LIMIT = "512M"                       # spawngrid's default; applied to peers that take one
MEM_LIMIT_BYTES = 512 << 20
PIDS_LIMIT = 1024

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def mount(src, target, fstype, flags=0, data=None):
    enc = lambda s: s.encode() if s is not None else None
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise StepFailed(f"mount {fstype or ''} {target}: {os.strerror(e)}")


def umount(target, flags=0):
    if libc.umount2(target.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise StepFailed(f"umount {target}: {os.strerror(e)}")


class Overlay:
    """A fresh tmpfs write layer + overlay on `lower` at DIR/root, made with mount(2) by the
    bench (no process start) for tools that do not make one themselves; timed with the tool."""

    def __init__(self, dir_, lower):
        self.dir, self.lower = dir_, lower
        self.root = os.path.join(dir_, "root")

    def __enter__(self):
        rw = os.path.join(self.dir, "rw")
        os.makedirs(rw, exist_ok=True)
        os.makedirs(self.root, exist_ok=True)
        mount("tmpfs", rw, "tmpfs", 0, "size=100m,mode=0755")
        os.mkdir(os.path.join(rw, "upper"))
        os.mkdir(os.path.join(rw, "work"))
        mount("overlay", self.root, "overlay", 0,
              f"lowerdir={self.lower},upperdir={rw}/upper,workdir={rw}/work")
        return self

    def __exit__(self, *exc):
        for m in (self.root, os.path.join(self.dir, "rw")):
            try:
                umount(m)
            except StepFailed:
                umount(m, MNT_DETACH)
        return False


def cgroup_v2():
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


# -- the peers' private mount namespace -------------------------------------------------------

class PeerNs:
    """crun 1.8 refuses this host's hybrid cgroup layout ("cgroups in hybrid mode not supported,
    drop all controllers from cgroupv2": cgroup2 at /sys/fs/cgroup/unified has a controller,
    hugetlb), even with --cgroup-manager=disabled. In a private mount namespace without that
    cgroup2 mount it sees a plain cgroup v1 host and works. A holder process keeps the namespace;
    commands enter it with setns(2) between fork and exec (no extra process). Mounts the bench
    makes under `shared_dir` (a shared mount) propagate into it; its own mounts stay inside."""

    def __init__(self, shared_dir):
        self.shared_dir = shared_dir
        self.proc = None
        self.fd = None

    def start(self):
        if self.proc:
            return
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "slave", "sh", "-c",
             "umount -l /sys/fs/cgroup/unified 2>/dev/null; echo ready; exec sleep 1000000"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        if self.proc.stdout.readline().strip() != b"ready":
            raise StepFailed("unshare -m: the namespace holder did not start")
        self.fd = os.open(f"/proc/{self.proc.pid}/ns/mnt", os.O_RDONLY)

    def preexec(self):
        """A preexec_fn that enters the namespace (started first if it is not yet)."""
        self.start()
        fd = self.fd

        def enter():
            if libc.setns(fd, CLONE_NEWNS) != 0:
                os._exit(121)
        return enter

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Variant:
    name = "?"
    layer = ""
    kind = "peer"

    def __init__(self, b=None, name=None, layer=None):
        self.b = b
        if name:
            self.name = name
        if layer:
            self.layer = layer
        self.error = None
        self.samples = []
        self.notes = []

    def setup(self):
        pass

    def sample(self, i):
        raise NotImplementedError

    def teardown(self):
        pass

    def configure(self, setting):
        pass

    def probe(self, attempts):
        """Tries (label, in_ns, setting) in turn: self.preexec enters the peers' namespace if
        in_ns, configure(setting), then a probe sample; notes what ran and what failed.
        Returns [] once one ran, else every failure as (label, error)."""
        failed = []
        for label, in_ns, setting in attempts:
            self.preexec = self.b.ns.preexec() if in_ns else None
            self.configure(setting)
            try:
                self.sample("probe")
                self.notes.append(f"ran: {label}")
                return []
            except StepFailed as e:
                self.notes.append(f"{label}: {e}")
                failed.append((label, str(e)))
        return failed


class Unavailable(Variant):
    def __init__(self, name, why):
        super().__init__(None, name)
        self.error = why
