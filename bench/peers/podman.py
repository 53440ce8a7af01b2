# bench/peers/podman.py: podman: run on the rootfs (--rootfs DIR:O) or on an image imported
# from it, exec into a running container, commit.
# Part of bench/runtime.py (see its header and bench/README.md, "Runtime benchmark").
import os
import resource
import shlex

from benchlib import StepFailed, run
from peers.base import MEM_LIMIT, PIDS_LIMIT, Variant


def podman(b, *args):
    """podman with its storage on the peers' tmpfs, cgroupfs, no events."""
    return podman_in(os.path.join(b.peers_dir, "podman"), *args)


def podman_in(p, *args):
    """podman with its storage under directory p, cgroupfs, no events."""
    return ["podman", "--root", f"{p}/root", "--runroot", f"{p}/run", "--storage-driver",
            "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
            "--tmpdir", f"{p}/tmp", *args]


def podman_import(b, preexec):
    """Imports the rootfs as the image localhost/bench-base (once; its time goes to notes)."""
    if b.notes.get("podman_import_s"):
        return
    dt, _, _ = run(f"tar -C {shlex.quote(b.root)} --numeric-owner -cf - . | "
                   + " ".join(shlex.quote(x) for x in podman(
                       b, "import", "-q", "-", "localhost/bench-base")),
                   b.t, preexec_fn=preexec, what="tar | podman import")
    b.notes["podman_import_s"] = dt


def podman_run_opts():
    """podman run options: spawngrid's limits, and rlimits within this host's hard limits."""
    return ["--network", "none", "--memory", MEM_LIMIT.lower(), "--pids-limit", str(PIDS_LIMIT),
            *ulimit_opts()]


def ulimit_opts():
    """podman run options for rlimits within this host's hard limits."""
    # This host's root lacks CAP_SYS_RESOURCE, so podman's default rlimits (nofile 1048576,
    # nproc 4194304) fail in crun with EPERM; podman also lowers its own nproc to 32768.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


class Podman(Variant):
    def __init__(self, b, image):
        super().__init__(b, "podman-image" if image else "podman-rootfs",
                         "image imported from the rootfs, overlay driver" if image
                         else "--rootfs DIR:O (overlay on the directory)")
        self.image = image
        self.preexec = None
        self.opts = []

    def target(self):
        return ["localhost/bench-base"] if self.image else ["--rootfs", f"{self.b.root}:O"]

    def configure(self, opts):
        self.opts = opts

    def setup(self):
        b = self.b
        if self.image:
            self.preexec = b.ns.preexec()
            self.opts = podman_run_opts()
            podman_import(b, self.preexec)
            self.sample("probe")
            self.notes.append("ran in the private mount namespace (see crun), with --ulimit")
            return
        failed = self.probe([
            ("host, defaults", False, ["--network", "none"]),
            ("host, --ulimit nofile/nproc within the hard limits", False, podman_run_opts()),
            ("private mount namespace without /sys/fs/cgroup/unified", True,
             podman_run_opts())])
        if failed:
            raise StepFailed("; ".join(e for _, e in failed))

    def sample(self, i):
        return {"total": run(podman(self.b, "run", "--rm", *self.opts, *self.target(), "true"),
                             120, preexec_fn=self.preexec)[0]}


def attach_podman(b, sleeper):
    pre = b.ns.preexec()
    run(podman(b, "run", "-d", "--name", "attach", *podman_run_opts(), "--rootfs",
                 f"{b.root}:O", *sleeper), 120, preexec_fn=pre)

    def stop():
        run(podman(b, "rm", "-f", "-t", "0", "attach"), 120, preexec_fn=pre, check=False)
    return lambda: run(podman(b, "exec", "attach", "true"), 120, preexec_fn=pre)[0], stop


def session_podman(b, debs, add):
    """dpkg -i in a container of the imported image (in the peers' namespace), podman commit."""
    pre = b.ns.preexec()
    podman_import(b, pre)
    for r in range(b.a.repeat):
        c = f"sess-{r}"
        run(podman(b, "run", "--name", c, *podman_run_opts(), "-v", f"{debs['dir']}:/debs:ro",
                     "localhost/bench-base", "sh", "-c", b.install_script("/debs")), b.t,
            preexec_fn=pre, what="podman run (dpkg -i)")
        dt, _, _ = run(podman(b, "commit", "-q", c, f"localhost/sess-{r}"), b.t, preexec_fn=pre,
                       what="podman commit")
        add("podman commit", "s", dt)
        run(podman(b, "rm", c), b.t, preexec_fn=pre)
        run(podman(b, "rmi", f"localhost/sess-{r}"), b.t, preexec_fn=pre)
