#!/usr/bin/env python3
# bench/soak.py: a soak of one node through its HTTPS API (issue 11, "Tests"). C concurrent
# clients (50) share E envs (500) among them; each client, for each of its envs: spawns it
# from the busybox base snapshot, attaches (an exec writing a file, then one reading it back),
# saves it under a new name, and booms it; all within M minutes (10) at most. Then nothing of
# the envs may be left: mounts under the data directory, env cgroups, veth links, processes in
# env cgroups, files under DATA/envs and DATA/net (leases of addresses), library lease files,
# owner uid leases (/run/spawngrid/owners);
# and the node's resident memory, sampled every second, must be flat (the last quarter's peak
# within 20 % + 16 MiB of the first quarter's).
#
#   python3 bench/soak.py [--envs 500] [--clients 50] [--minutes 10] [--until-deadline]
#                         [--output FILE]
#
# As root, on a quiet machine; the node runs from a fresh tmpfs (as bench/api.py's). Exit
# status 1 if a step failed, something leaked or the memory grew.
import json
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import api  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def residue(data, user):
    """What envs of `user` left behind on this host (counts, and a few examples)."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        mounts = [l.split()[4] for l in f if data in l.split()[4]]
    # The node's own: the tmpfs itself is above DATA, the base env is boomed first.
    out["mounts"] = mounts
    tag = f"+{user}"
    cgroups = []
    for top in ("/sys/fs/cgroup",):
        for root, dirs, _ in os.walk(top):
            if root.count("/") > 8:
                dirs[:] = []
                continue
            cgroups += [os.path.join(root, d) for d in dirs if d.endswith(tag)]
    out["cgroups"] = cgroups
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    # Env veths are sgvN on the host (runtime::net).
    out["links"] = [l.split(":")[1].strip() for l in links.splitlines()
                    if l.split(":")[1].strip().startswith("sgv")]
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                if tag in f.read():
                    procs.append(pid)
        except OSError:
            pass
    out["processes"] = procs
    files = []
    for sub in ("envs", "net", "library/leases", "library/locks"):
        d = os.path.join(data, sub)
        if os.path.isdir(d):
            files += [os.path.join(sub, n) for n in os.listdir(d)]
    out["files"] = files
    # Owner uid leases of envs (runtime::owners): symlinks to the envs' directories.
    owners = "/run/spawngrid/owners"
    held = []
    for uid in os.listdir(owners) if os.path.isdir(owners) else []:
        try:
            if os.readlink(os.path.join(owners, uid)).startswith(data):
                held.append(uid)
        except OSError:
            pass  # released meanwhile (another node's env)
    out["owner_uids"] = held
    return out


class Node(api.Node):
    """bench/api.py's node with room for every client's env at once."""

    def __init__(self, sg, mnt, clients):
        super().__init__(sg, mnt, f'write_size = "16M"\n[capacity]\nmax_envs = {clients + 16}\n'
                                  f'max_mem = "{(clients + 16) * 64}M"\n'
                                  f'[exec]\nmax_per_user = {clients * 2 + 16}\n')


def soak(node, envs, clients, deadline):
    """Runs the clients over `envs` envs (None: new ones until the deadline); per-step
    latencies, failures, envs done."""
    nxt = [0]
    lock = threading.Lock()
    lat = {"spawn": [], "attach": [], "save": [], "boom": []}
    errors = []

    def step(name, c, method, path, body=None):
        t0 = time.perf_counter()
        out = api.checked(*api.request(c, method, path, body, node.auth))
        with lock:
            lat[name].append(time.perf_counter() - t0)
        return out

    def client():
        c = node.conn()
        while time.monotonic() < deadline:
            with lock:
                if envs is not None and nxt[0] >= envs:
                    return
                i = nxt[0]
                nxt[0] += 1
            env = f"soak{i}"
            try:
                step("spawn", c, "POST", "/api/envs", {"name": "base", "as": env})
                step("attach", c, "POST", f"/api/envs/{env}/exec",
                     {"argv": ["sh", "-c", f"echo {i} > /root/i"]})
                got = json.loads(step("attach", c, "POST", f"/api/envs/{env}/exec",
                                      {"argv": ["cat", "/root/i"]}))
                if got["exit_code"] != 0:
                    raise RuntimeError(f"{env}: cat failed")
                step("save", c, "POST", f"/api/envs/{env}/save", {"name": f"s{i}"})
                step("boom", c, "DELETE", f"/api/envs/{env}")
            except Exception as e:  # noqa: BLE001 (a failed step is a result)
                with lock:
                    errors.append(f"{env}: {str(e)[:200]}")
                c.close()
                c = node.conn()
                api.request(c, "DELETE", f"/api/envs/{env}", headers=node.auth)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, nxt[0]


def main():
    ap = bl.arg_parser(__doc__)
    ap.add_argument("--envs", type=int, default=500)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--until-deadline", action="store_true",
                    help="new envs until --minutes are up (--envs is then a minimum)")
    bl.output_arg(ap, "soak")
    a = ap.parse_args()
    bl.exit_on_sigterm()
    with bl.fresh_tmpfs("sg-bench-soak-", "6g") as mnt:
        node = Node(a.spawngrid, mnt, a.clients)
        node.start()
        try:
            api.checked(*api.request(node.conn(), "DELETE", "/api/envs/base",
                                     headers=node.auth))
            pid = node.proc.pid
            before = residue(node.data, api.USER)
            samples, stop = [], threading.Event()

            def sample():
                while not stop.wait(1):
                    samples.append(rss_kib(pid))
            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.perf_counter()
            lat, errors, done = soak(node, None if a.until_deadline else a.envs, a.clients,
                                     time.monotonic() + a.minutes * 60)
            wall = time.perf_counter() - t0
            threads_fds = (len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd")))
            stop.set()
            sampler.join()
            time.sleep(2)  # booms end their last cleanup steps
            after = residue(node.data, api.USER)
        finally:
            node.close()
    q = max(1, len(samples) // 4)
    first, last = max(samples[:q] or [0]), max(samples[-q:] or [0])
    flat = last <= first * 1.2 + 16 * 1024
    leaks = {k: v for k, v in after.items() if len(v) > len(before[k])}
    doc = {
        "bench": "soak", "date": bl.utc_now(), "host": bl.host_info("tmpfs"),
        "envs": a.envs, "envs_done": done, "clients": a.clients, "wall_s": wall,
        "errors": len(errors), "first_errors": errors[:5],
        "steps": {k: {"n": len(v), **(bl.summary_ms(v) or {})} for k, v in lat.items()},
        "rss_kib": {"first_quarter_max": first, "last_quarter_max": last,
                    "max": max(samples or [0]), "flat": flat, "every_s": samples},
        "node_threads_fds_at_end": threads_fds, "leaks": leaks, "residue_before": {k: len(v) for k, v in before.items()},
        "residue_after": {k: len(v) for k, v in after.items()},
    }
    for k in lat:
        doc["steps"][k].pop("all", None)
    out = bl.save_result("soak", a.output, doc)
    bl.log(f"soak: {done}/{a.envs} envs by {a.clients} clients in {wall:.1f} s, "
           f"{len(errors)} errors; node RSS {first} -> {last} KiB (flat: {flat}); "
           f"leaks: {leaks or 'none'}; {out}")
    for e in errors[:5]:
        bl.log(f"  {e}")
    return 0 if not errors and not leaks and flat and done >= a.envs else 1


if __name__ == "__main__":
    sys.exit(main())
