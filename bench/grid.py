#!/usr/bin/env python3
# bench/grid.py: the grid (issue 9): a demo grid (`scripts/grid.sh up`: 3 Spawngrid nodes in
# network namespaces, a 3-node Garage cluster holding the library, PostgreSQL) on a fresh tmpfs,
# driven over its nodes' HTTPS APIs and SSH gateways. Measures, in one run:
#
# - spawn: a never-seen ~200 MB snapshot (the debootstrap tree of scripts/rootfs.sh base:
#   6700 files of mixed sizes and a 32 MiB file), imported on node1, spawned on node2 or node3
#   with an empty block and file cache (with the library's pack index cached again, with the
#   node's pack index file one pack behind: the new one, and without any), plus the latency of
#   Garage itself (curl): time to the first command (`POST /api/envs`, then
#   `exec true`) and, on another never-seen snapshot, to a shell over SSH (OpenSSH client,
#   `ssh ENV+USER@NODE echo ready`); bytes read from S3 by then (the node's
#   spawngrid_library_remote_read_bytes_total). Against pulling the whole snapshot: `spawngrid
#   lib export` on a cold node-side cache, and `restic restore` of the same tree from a restic
#   repository on the same Garage.
# - read: sequential reads of big files (4 x 64 MiB, 2:1 compressible) through the lazy mount,
#   cold (never-seen snapshot, empty caches: every byte from Garage) and warm (read again), and
#   of the same files on the tmpfs (native).
# - save: save on node1 to spawned with a first command on node2, after a small change and
#   after 200 MB of new (random) bytes.
# - api: 1, 10 and 50 concurrent clients (bench/api.py's load) listing envs and running `exec
#   true`, all on one node and spread over the three.
#
# Per section also: the host's free memory and the run's tmpfs use before it, what Garage's
# background workers had queued, and Garage's and the nodes' CPU (user + system, and system).
#
# With --perf, `perf record -a` runs through the spawn section and each first command's CPU
# is charged to the parts of the grid (Garage, node, mount servers, ...; bench/cpuwin.py).
#
#   python3 bench/grid.py [--rounds 5] [--sections spawn,read,save,api] [--perf] [--output FILE]
#
# As root. The grid is host-global: the run holds /run/lock/spawngrid-grid.lock (as `flock`
# does) from `up` to `down`, and `scripts/grid.sh down` runs whatever happens.
import base64
import contextlib
import glob
import fcntl
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import api  # noqa: E402
import cpuwin  # noqa: E402
import node as node_bench  # noqa: E402

USER, PASSWORD = "bench", "bench-pw"
LOCK = "/run/lock/spawngrid-grid.lock"
GARAGE = "/var/cache/spawngrid/garage/bin/garage"  # scripts/garage.sh install
NODES = (1, 2, 3)
SECTIONS = ["spawn", "read", "save", "api"]
BIG_FILES, BIG_SIZE = 4, 64 * bl.MiB
CASES = {"index_cached": "library index cached",
         "index_behind": "pack index file one pack behind (a save elsewhere)",
         "empty_cache": "empty node cache (no pack index file)",
         "data_cached": "its files' blocks cached (no S3 data reads: the floor)"}
GOALS = {"first_command_p50_ms": 50, "fetched_percent": 5, "cold_read_MBps": 200,
         "save_to_spawnable_s": 1, "save_200MB_to_spawnable_s": 3}


def addr(n):
    return f"10.231.0.1{n}"


@contextlib.contextmanager
def grid_lock():
    with open(LOCK, "a") as f:
        bl.log(f"waiting for {LOCK}")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Grid:
    """The demo grid in DIR: scripts/grid.sh, the nodes' APIs and data directories."""

    def __init__(self, sg, work, clients):
        self.sg, self.work = sg, work
        self.dir = os.path.join(work, "grid")
        # One bench user runs every client's exec at once (the api section).
        self.env = {**os.environ, "SPAWNGRID_GRID_DIR": self.dir, "SPAWNGRID_BIN": sg,
                    "SPAWNGRID_GRID_BASE": "busybox",
                    "SPAWNGRID_EXEC_MAX_PER_USER": str(2 * clients + 16)}
        self.ctx = ssl._create_unverified_context()
        self.auth = None

    def script(self, *args, timeout=1800):
        return bl.run([os.path.join(bl.REPO, "scripts/grid.sh"), *args], timeout, env=self.env,
                      what=f"grid.sh {' '.join(args)}", err_tail=2000)[1]

    def data(self, n):
        return os.path.join(self.dir, f"node{n}", "data")

    def admin(self, *args, stdin=None, n=1):
        """An offline command on node n's data directory (its store is the grid's)."""
        cmd, rest = args[0], args[1:]
        argv = [self.sg, cmd, "--data", self.data(n), *rest]
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise bl.StepFailed(f"{' '.join(argv[1:4])}: {bl.last_line(p.stderr)}")
        return p.stdout

    def conn(self, n):
        return http.client.HTTPSConnection(addr(n), 16998, context=self.ctx, timeout=300)

    def login(self):
        body = api.checked(*api.request(self.conn(1), "POST", "/api/login",
                                        {"user": USER, "password": PASSWORD}))
        self.auth = {"Authorization": "Bearer " + json.loads(body)["token"]}

    def call(self, conn, method, path, body=None, want=200):
        return json.loads(api.checked(*api.request(conn, method, path, body, self.auth), want)
                          or b"null")

    def spawn(self, conn, name, env, **extra):
        return self.call(conn, "POST", "/api/envs", {"name": name, "as": env, **extra})

    def exec(self, conn, env, argv):
        r = self.call(conn, "POST", f"/api/envs/{env}/exec", {"argv": argv})
        if r["exit_code"] != 0:
            raise bl.StepFailed(f"exec {argv} in {env}: exit {r['exit_code']}: {r}")
        return r

    def boom(self, conn, env):
        api.checked(*api.request(conn, "DELETE", f"/api/envs/{env}", headers=self.auth))

    def remote(self, n):
        """Node n's counts of its remote library traffic (from /metrics)."""
        _, body = api.request(self.conn(n), "GET", "/metrics")
        got = {}
        for line in body.decode().splitlines():
            if line.startswith("spawngrid_library_remote_"):
                k, v = line.split()
                got[k[len("spawngrid_library_remote_"):-len("_total")]] = int(float(v))
        if "read_bytes" not in got:
            raise bl.StepFailed(f"node{n}'s /metrics has no spawngrid_library_remote_* counters")
        return got

    def cold(self, n, index="cached"):
        """Empties node n's block cache and file cache (the running processes refetch what
        they find missing). index "cached": then opens the library there (the pack index
        file and every pack's trailer cached again, as on a node that has opened the library
        since the snapshot was made); "behind": keeps the node's pack index file as it is
        (it lacks the packs made since the node last opened the library); "empty": removes
        it too; None: leaves the caches as they are."""
        if index is None:
            return
        cache = os.path.join(self.data(n), "cache")
        for sub in ("blocks", "files"):
            top = os.path.join(cache, sub)
            if not os.path.isdir(top):
                continue
            for d in os.listdir(top):
                p = os.path.join(top, d)
                if os.path.isdir(p) and d != "tmp":
                    shutil.rmtree(p)
        if index == "empty":
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(cache, "packs.idx"))
        if index == "cached":
            self.admin("lib", "--owner", USER, "log", "tree", n=n)

    def import_tree(self, name, tree):
        """`lib import` on node1 as the bench user (through the grid's store)."""
        self.admin("lib", "--owner", USER, "import", name, tree)


def mark(tree, label):
    """Makes `tree` a snapshot no node has seen: a file of unique bytes in it."""
    with open(os.path.join(tree, "etc", "bench-round"), "w") as f:
        f.write(f"{label} {os.urandom(16).hex()}\n")


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after}


def new_mount(g, n, before):
    """The snapshot mount node n made since `before` (a set of mount directories)."""
    now = set(os.listdir(os.path.join(g.data(n), "mounts")))
    made = [d for d in now - before if os.path.isdir(os.path.join(g.data(n), "mounts", d, "root"))]
    if len(made) != 1:
        raise bl.StepFailed(f"node{n}: expected one new snapshot mount, found {made}")
    return os.path.join(g.data(n), "mounts", made[0], "root")


def mounts_of(g, n):
    d = os.path.join(g.data(n), "mounts")
    return set(os.listdir(d)) if os.path.isdir(d) else set()


def spawn_section(g, a, work, key, tree, logical):
    """Cross-node spawns of never-seen snapshots on a node that has opened the library since
    (its pack index cached), on one whose pack index file lacks the new pack, and on one with
    empty caches; the whole pull by export and restic."""
    result = {"s3_latency": s3_probe(g, a.rounds * 4)}
    for case, index in (("index_cached", "cached"), ("index_behind", "behind"),
                        ("empty_cache", "empty"), ("data_cached", None)):
        result[case] = spawn_rounds(g, a, work, key, tree, logical, case, index)
    result["export"] = whole_export(g, a.rounds, tree)
    result["restic"] = restic_restore(g, a, work, tree)
    return result


def profiled(a, work, section):
    """Runs the spawn section, under `perf record -a` with --perf: then each case's mean CPU
    ms per part of the grid, during the spawn (request to answer) and the first command."""
    if not a.perf:
        return section()
    data = os.path.join(work, "perf.data")
    with cpuwin.Recorder(data):
        result = section()
    recorded = cpuwin.samples(data)
    result["cpu_ms_per_round"] = {
        case: {"spawn": cpuwin.attribute(recorded, [(w[0], w[1]) for w in result[case]["windows"]]),
               "first_command": cpuwin.attribute(
                   recorded, [(w[1], w[2]) for w in result[case]["windows"]])}
        for case in CASES}
    return result


def spawn_rounds(g, a, work, key, tree, logical, case, index):
    first, shell, spawn_only, fetched, fetched_shell, windows = [], [], [], [], [], []
    targets = [2, 3]
    for r in range(a.rounds):
        n = targets[r % len(targets)]
        name = f"tree-{case}-{r}"
        mark(tree, name)
        g.import_tree(name, tree)
        g.cold(n, index)
        c = g.conn(n)
        g.call(c, "GET", "/api/envs")  # the connection's TLS handshake, before the clock
        before = g.remote(n)
        t0 = time.perf_counter()
        g.spawn(c, name, f"f{r}")
        t1 = time.perf_counter()
        g.exec(c, f"f{r}", ["true"])
        t2 = time.perf_counter()
        d = delta(g.remote(n), before)
        first.append(t2 - t0)
        spawn_only.append(t1 - t0)
        windows.append((t0, t1, t2))
        fetched.append(d)
        bl.log(f"spawn ({case}) round {r} on node{n}: first command {1e3 * (t2 - t0):.1f} ms, "
               f"{d['read_bytes'] / bl.MB:.2f} MB in {d['read_requests']} requests from S3")
        # A shell over SSH on another never-seen snapshot.
        name = f"tree-{case}-{r}-ssh"
        mark(tree, name)
        g.import_tree(name, tree)
        g.cold(n, index)
        before = g.remote(n)
        ssh = node_bench.ssh_argv(16999, key, os.path.join(work, "known_hosts"),
                                  f"s{r}+{USER}@{addr(n)}")
        t0 = time.perf_counter()
        g.spawn(c, name, f"s{r}")
        node_bench.time_to_output(ssh + ["echo", "ready"])
        shell.append(time.perf_counter() - t0)
        fetched_shell.append(delta(g.remote(n), before))
        for env in (f"f{r}", f"s{r}"):
            g.boom(c, env)
    pct = [100 * d["read_bytes"] / logical for d in fetched]
    return {"first_command": bl.summary_ms(first), "spawn": bl.summary_ms(spawn_only),
            "ssh_shell": bl.summary_ms(shell),
            "fetched_first_command": fetched, "fetched_ssh_shell": fetched_shell,
            "windows": windows,
            "fetched_percent_p50": bl.med(pct), "fetched_percent_max": max(pct)}


def whole_export(g, rounds, tree):
    """`lib export` of the snapshot on node3 with cold caches: the whole pull."""
    times, fetched = [], []
    for r in range(min(rounds, 3)):
        dest = os.path.join(os.path.dirname(tree), f"export-{r}")
        g.cold(3, index="empty")
        before = g.remote(3)
        t0 = time.perf_counter()
        g.admin("lib", "--owner", USER, "export", "tree", dest, "--no-cache", n=3)
        times.append(time.perf_counter() - t0)
        fetched.append(delta(g.remote(3), before))
        shutil.rmtree(dest)
    return {"seconds": bl.summary_ms(times), "fetched": fetched}


def s3_probe(g, n):
    """TTFB and total of n ranged GETs of 256 KiB (curl, SigV4) of a probe object on the
    grid's Garage: what one block cache miss costs before any of our code runs."""
    s3 = s3_env(g)
    url = f"{s3['AWS_ENDPOINT_URL']}/{s3['SPAWNGRID_S3_BUCKET']}/bench-probe/obj"
    auth = ["--aws-sigv4", f"aws:amz:{s3.get('AWS_REGION', 'garage')}:s3", "--user",
            f"{s3['AWS_ACCESS_KEY_ID']}:{s3['AWS_SECRET_ACCESS_KEY']}",
            "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-s", "-f"]
    src = os.path.join(g.work, "probe.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(4 * bl.MiB))
    bl.run(["curl", *auth, "-T", src, url], 60, what="curl PUT probe")
    ttfb, total = [], []
    for _ in range(n):
        _, out, _ = bl.run(["curl", *auth, "-o", "/dev/null", "-H", "Range: bytes=0-262143",
                            "-w", "%{time_starttransfer} %{time_total}", url], 60,
                           what="curl GET probe")
        a, b = out.split()
        ttfb.append(float(a))
        total.append(float(b))
    bl.run(["curl", *auth, "-X", "DELETE", url], 60, what="curl DELETE probe")
    return {"ttfb": bl.summary_ms(ttfb), "total": bl.summary_ms(total)}


def s3_env(g):
    env = {}
    with open(os.path.join(g.dir, "garage", "s3.env")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k:
                env[k] = v.strip("'\"")
    return env


def restic_restore(g, a, work, tree):
    """`restic restore` of the same tree (marker of round 0) from a restic repo on Garage."""
    reason = bl.ensure_tool("restic", "restic")
    if reason:
        return {"error": reason}
    s3 = s3_env(g)
    host = s3["AWS_ENDPOINT_URL"].split("://", 1)[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
           "RESTIC_REPOSITORY": f"s3:http://{host}/{s3['SPAWNGRID_S3_BUCKET']}/restic-bench",
           "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}
    region = ["-o", f"s3.region={s3.get('AWS_REGION', 'garage')}"]
    try:
        bl.run(["restic", *region, "init"], 300, env=env)
        bl.run(["restic", *region, "backup", "."], 1800, env=env, cwd=tree)
        _, out, _ = bl.run(["restic", *region, "stats", "--json", "--mode", "raw-data"], 300,
                           env=env)
        stored = json.loads(out).get("total_size")
        times = []
        for r in range(min(a.rounds, 3)):
            dest = os.path.join(work, f"restic-{r}")
            shutil.rmtree(env["RESTIC_CACHE_DIR"], ignore_errors=True)
            t, _, _ = bl.run(["restic", *region, "restore", "latest", "--target", dest], 1800,
                             env=env)
            times.append(t)
            shutil.rmtree(dest)
    except bl.StepFailed as e:
        return {"error": str(e)}
    return {"seconds": bl.summary_ms(times), "repo_bytes": stored,
            "version": bl.version_of(["restic", "version"])}


def make_big(root):
    """BIG_FILES files of BIG_SIZE, each 64 KiB block half random, half zero (about 2:1)."""
    os.makedirs(root, exist_ok=True)
    for i in range(BIG_FILES):
        with open(os.path.join(root, f"b{i}"), "wb") as f:
            for _ in range(BIG_SIZE // (64 * bl.KiB)):
                f.write(os.urandom(32 * bl.KiB) + bytes(32 * bl.KiB))


def read_all(path):
    """Seconds to read path sequentially in 1 MiB reads."""
    buf = bytearray(bl.MiB)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def cpu_ticks(patterns):
    """Busy and total jiffies of the host, and the user and system CPU jiffies of the
    processes whose command line contains each pattern: {pattern: (user, system)}."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy, total = sum(fields) - fields[3] - fields[4], sum(fields)
    per = {p: (0, 0) for p in patterns}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for p in patterns:
            if p in cmd:
                user, system = per[p]
                per[p] = (user + int(st[11]), system + int(st[12]))
    return busy, total, per


def cpu_share(before, after, names):
    """Host CPU busy (percent of all cores) between two cpu_ticks, and each pattern's CPU
    seconds, and of those its system (kernel) seconds (named by `names`)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {"host_busy_percent": 100 * (after[0] - before[0]) / max(1, after[1] - before[1])}
    for p, name in names.items():
        user, system = (a - b for a, b in zip(after[2][p], before[2][p]))
        out[f"{name}_cpu_s"] = (user + system) / hz
        out[f"{name}_sys_cpu_s"] = system / hz
    return out


def memory(work):
    """The host's free and available memory, the run's tmpfs use and the part of it in each
    directory of the grid (blocks allocated), in MB: on this VM first writes to new pages get
    slow when little memory is free (bench/README.md, "Grid benchmark")."""
    with open("/proc/meminfo") as f:
        info = {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f)}
    st = os.statvfs(work)
    grid = os.path.join(work, "grid")
    parts = {}
    for d in sorted(os.listdir(grid)):
        if os.path.isdir(os.path.join(grid, d)):
            _, out, _ = bl.run(["du", "-sx", "-B1", os.path.join(grid, d)], 600, what="du")
            parts[d] = int(out.split()[0]) / bl.MB
    return {"free_MB": info["MemFree"] / bl.MB, "available_MB": info["MemAvailable"] / bl.MB,
            "run_tmpfs_MB": (st.f_blocks - st.f_bfree) * st.f_frsize / bl.MB,
            "grid_MB": parts}


def read_files(root):
    total = BIG_FILES * BIG_SIZE
    secs = sum(read_all(os.path.join(root, f"b{i}")) for i in range(BIG_FILES))
    return total / bl.MB / secs


def read_section(g, a, big_tree):
    """Cold and warm sequential reads through node2's lazy mount; native on the tmpfs."""
    cold, warm, fetched, cpu = [], [], [], []
    native = [read_files(os.path.join(big_tree, "data")) for _ in range(3)]
    c = g.conn(2)
    for r in range(a.rounds):
        name = f"big-{r}"
        mark(big_tree, name)
        g.import_tree(name, big_tree)
        g.cold(2)
        before_mounts = mounts_of(g, 2)
        g.spawn(c, name, f"b{r}")
        root = new_mount(g, 2, before_mounts)
        before = g.remote(2)
        names = {os.path.join(g.dir, "garage"): "garage",
                 os.path.join(g.data(2), "mounts"): "node2_mount_server",
                 os.path.join(g.dir, "node2", "config.toml"): "node2"}
        t0 = cpu_ticks(list(names))
        cold.append(read_files(os.path.join(root, "data")))
        cpu.append(cpu_share(t0, cpu_ticks(list(names)), names))
        fetched.append(delta(g.remote(2), before))
        warm.append(read_files(os.path.join(root, "data")))
        bl.log(f"read round {r}: cold {cold[-1]:.0f} MB/s "
               f"({fetched[-1]['read_bytes'] / bl.MB:.0f} MB in "
               f"{fetched[-1]['read_requests']} requests), warm {warm[-1]:.0f} MB/s; {cpu[-1]}")
        g.boom(c, f"b{r}")
    return {"bytes": BIG_FILES * BIG_SIZE, "cold_MBps": cold, "warm_MBps": warm,
            "native_MBps": native, "cold_MBps_p50": bl.med(cold),
            "warm_MBps_p50": bl.med(warm), "native_MBps_p50": bl.med(native),
            "fetched": fetched, "cpu_during_cold": cpu}


def save_section(g, a, base_name):
    """Save on node1, spawned with a first command on node2; small change and 200 MB."""
    out = {}
    a_conn, b_conn = g.conn(1), g.conn(2)
    for case, disk, cmd in [
            ("small", False, "date +%s%N > /root/changed"),
            ("200MB", True, "dd if=/dev/urandom of=/root/new bs=1M count=200 status=none")]:
        total, save, spawn, cpu, mem = [], [], [], [], []
        rounds = a.rounds if case == "small" else max(1, min(a.rounds, 3))
        for r in range(rounds):
            env = f"w{case}{r}"
            g.spawn(a_conn, base_name, env, disk=disk)
            g.exec(a_conn, env, ["sh", "-c", cmd])
            name = f"saved-{case}-{r}"
            names = {os.path.join(g.dir, "garage"): "garage",
                     os.path.join(g.dir, "node1", "config.toml"): "node1"}
            mem.append(memory(g.work))
            c0 = cpu_ticks(list(names))
            t0 = time.perf_counter()
            g.call(a_conn, "POST", f"/api/envs/{env}/save", {"name": name})
            t1 = time.perf_counter()
            cpu.append(cpu_share(c0, cpu_ticks(list(names)), names))
            g.spawn(b_conn, name, f"v{case}{r}")
            g.exec(b_conn, f"v{case}{r}", ["true"])
            t2 = time.perf_counter()
            total.append(t2 - t0)
            save.append(t1 - t0)
            spawn.append(t2 - t1)
            if case == "200MB":
                r2 = g.exec(b_conn, f"v{case}{r}", ["stat", "-c", "%s", "/root/new"])
                size = base64.b64decode(r2["stdout"]).decode().strip()
                if size != "209715200":
                    raise bl.StepFailed(f"node2 sees /root/new as {size!r} bytes")
            bl.log(f"save {case} round {r}: save {1e3 * (t1 - t0):.0f} ms, spawn+exec on "
                   f"node2 {1e3 * (t2 - t1):.0f} ms; during the save {cpu[-1]}; before it "
                   f"{mem[-1]['free_MB']:.0f} MB free")
            g.boom(a_conn, env)
            g.boom(b_conn, f"v{case}{r}")
        out[case] = {"save_to_spawnable": bl.summary_ms(total), "save": bl.summary_ms(save),
                     "spawn_first_command_on_b": bl.summary_ms(spawn), "cpu_during_save": cpu,
                     "memory_before_save": mem}
    return out


def api_section(g, a, base_name):
    """bench/api.py's load against one node and spread over three."""
    envs = {}
    for n in NODES:
        envs[addr(n)] = f"api{n}"
        g.spawn(g.conn(n), base_name, f"api{n}")

    def ops():
        def ls(c):
            api.checked(*api.request(c, "GET", "/api/envs", headers=g.auth))

        def exec_true(c):
            body = api.checked(*api.request(c, "POST", f"/api/envs/{envs[c.host]}/exec",
                                            {"argv": ["true"]}, g.auth))
            if json.loads(body)["exit_code"] != 0:
                raise RuntimeError("exec true failed")
        return {"list": ls, "exec": exec_true}

    def spread(nodes):
        i = [0]

        def make():
            i[0] += 1
            return g.conn(nodes[i[0] % len(nodes)])
        return make

    out = {}
    for label, nodes in [("one node", [2]), ("three nodes", list(NODES))]:
        for op, fn in ops().items():
            for k in bl.comma_list(a.clients):
                bl.log(f"api {op}, {k} clients, {label}")
                out.setdefault(label, {}).setdefault(op, []).append(
                    api.load(spread(nodes), fn, int(k), a.seconds))
    for n in NODES:
        g.boom(g.conn(n), f"api{n}")
    return out


def report(results, logical):
    rows = [["measure", "n", "p50", "p90", "min", "unit", "vs"]]

    def ms_row(label, s, vs=""):
        if s:
            rows.append([label, str(s["n"]), bl.fmt(s["p50"]), bl.fmt(bl.pct(s["all"], 90)),
                         bl.fmt(s["min"]), "ms", vs])

    sp = results.get("spawn")
    if sp and "error" not in sp:
        ms_row("S3 ranged GET of 256 KiB (curl), first byte", sp["s3_latency"]["ttfb"])
        for case, label in CASES.items():
            c = sp[case]
            ms_row(f"spawn, never-seen 200 MB snapshot, {label}", c["spawn"])
            ms_row("  to first command (exec true)", c["first_command"])
            ms_row("  to a shell over SSH", c["ssh_shell"])
        head = sp["index_cached"]["first_command"]["p50"]
        ex = sp["export"]["seconds"]
        ms_row("whole pull: lib export (empty cache)", ex, f"{ex['p50'] / head:.0f}x first command")
        rs = sp["restic"]
        if "error" in rs:
            rows.append(["restic restore", rs["error"]])
        else:
            ms_row("whole pull: restic restore", rs["seconds"],
                   f"{rs['seconds']['p50'] / head:.0f}x first command, "
                   f"{rs['seconds']['p50'] / ex['p50']:.2f}x lib export")
    rd = results.get("read")
    if rd and "error" not in rd:
        for k in ("cold", "warm", "native"):
            v = rd[f"{k}_MBps"]
            rows.append([f"sequential read, {k}", str(len(v)), bl.fmt(bl.med(v), ".0f"),
                         bl.fmt(bl.pct(v, 10), ".0f"), bl.fmt(min(v), ".0f"), "MB/s",
                         f"{bl.med(v) / rd['native_MBps_p50']:.2f}x native"])
    sv = results.get("save")
    if sv and "error" not in sv:
        for case, s in sv.items():
            ms_row(f"save on node1 ({case}) to first command on node2",
                   s["save_to_spawnable"])
            ms_row("  save", s["save"])
            ms_row("  spawn + exec true on node2", s["spawn_first_command_on_b"])
    for sec, r in results.items():
        if isinstance(r, dict) and "error" in r:
            rows.append([sec, "failed: " + r["error"]])
    lines = bl.table_lines(rows)
    if sp and "error" not in sp:
        lines.append("")
        for case, label in CASES.items():
            c = sp[case]
            lines.append(f"fetched from S3 by the first command ({label}): p50 "
                         f"{c['fetched_percent_p50']:.2f}% of {logical / bl.MB:.1f} MB "
                         f"(max {c['fetched_percent_max']:.2f}%)")
        lines.append(f"lib export fetched {sp['export']['fetched'][0]['read_bytes'] / bl.MB:.1f}"
                     f" MB; restic's repository {fmt_mb(sp['restic'].get('repo_bytes'))}")
        for case, parts in sp.get("cpu_ms_per_round", {}).items():
            for step, ms in parts.items():
                spent = ", ".join(f"{part} {v:.1f}" for part, v in ms.items())
                lines.append(f"CPU ms per round during the {step.replace('_', ' ')} "
                             f"({CASES[case]}): {spent}")
    if sv and "200MB" in sv:
        c, m = sv["200MB"]["cpu_during_save"], sv["200MB"]["memory_before_save"]
        cpu = ", ".join(f"{x['garage_cpu_s']:.2f} ({x['garage_sys_cpu_s']:.2f})" for x in c)
        free = ", ".join(f"{x['free_MB']:.0f}" for x in m)
        lines.append(f"save 200MB, each round: Garage CPU s (of it system) {cpu}; "
                     f"MB free before it {free}")
    lines += [""] + section_lines(results.get("sections", {}))
    ap = results.get("api")
    if ap and "error" not in ap:
        rows = [["api", "op", "clients", "req/s", "p50 ms", "p99 ms", "errors"]]
        for label, ops in ap.items():
            for op, runs in ops.items():
                for r in runs:
                    rows.append([label, op, str(r["clients"]), bl.fmt(r["per_s"], ".0f"),
                                 bl.fmt(r["p50_ms"], ".2f"), bl.fmt(r["p99_ms"], ".2f"),
                                 str(r["errors"])])
        lines += [""] + bl.table_lines(rows)
    return lines


def section_lines(sections):
    """Per section: its time, Garage's CPU (and of it system), the memory free and the
    Garage background work queued when it began."""
    rows = [["section", "s", "Garage CPU s", "of it system", "MB free before",
             "Garage workers queued before (node1/2/3)"]]
    for sec, r in sections.items():
        w = r["before"]["garage_workers"]
        names = sorted({k for q in w.values() for k in q})
        queued = ", ".join(
            f"{k} " + "/".join(" ".join(q[k]).removeprefix("Idle ") if k in q else "-"
                               for q in w.values())
            for k in names)
        rows.append([sec, bl.fmt(r["seconds"]), bl.fmt(r["cpu"]["garage_cpu_s"], ".2f"),
                     bl.fmt(r["cpu"]["garage_sys_cpu_s"], ".2f"),
                     bl.fmt(r["before"]["memory"]["free_MB"], ".0f"), queued or "none"])
    return bl.table_lines(rows)


def fmt_mb(b):
    return "-" if b is None else f"{b / bl.MB:.1f} MB"


def goals(results):
    """Each goal of issue 9 measured here: met or not, with the figure."""
    out = {}
    sp, rd, sv = results.get("spawn"), results.get("read"), results.get("save")
    if sp and "error" not in sp:
        p50 = sp["index_cached"]["first_command"]["p50"]
        out["first_command_p50_le_50ms"] = {"met": p50 <= GOALS["first_command_p50_ms"],
                                            "ms": p50}
        pc = sp["index_cached"]["fetched_percent_p50"]
        out["fetched_lt_5_percent"] = {"met": pc < GOALS["fetched_percent"], "percent": pc}
    if rd and "error" not in rd:
        v = rd["cold_MBps_p50"]
        out["cold_read_ge_200MBps"] = {"met": v >= GOALS["cold_read_MBps"], "MBps": v}
    if sv and "error" not in sv:
        s = sv["small"]["save_to_spawnable"]["p50"] / 1e3
        out["save_to_spawnable_le_1s"] = {"met": s <= GOALS["save_to_spawnable_s"], "s": s}
        if "200MB" in sv:
            s = sv["200MB"]["save_to_spawnable"]["p50"] / 1e3
            free = min(m["free_MB"] for m in sv["200MB"]["memory_before_save"])
            out["save_200MB_to_spawnable_le_3s"] = {
                "met": s <= GOALS["save_200MB_to_spawnable_s"], "s": s,
                "least_MB_free_before_a_round": free}
    return out


def run_sections(g, a, work, sections):
    results = {}
    key = os.path.join(work, "id_ed25519")
    bl.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], 30)
    g.admin("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    g.admin("user", "key", USER, "add", key + ".pub")
    g.login()
    tree = os.path.join(work, "src", "tree")
    os.makedirs(os.path.dirname(tree))
    bl.log("copying the base tree onto the tmpfs")
    bl.run(["cp", "-a", bl.rootfs_tree("base"), tree], 600)
    logical, entries = bl.tree_stats(tree)
    results["tree"] = {"logical_bytes": logical, "entries": entries}
    mark(tree, "base")
    g.import_tree("tree", tree)
    steps = {
        "spawn": lambda: profiled(a, work, lambda: spawn_section(g, a, work, key, tree, logical)),
        "read": lambda: read_section(g, a, big_tree(work)),
        "save": lambda: save_section(g, a, "tree"),
        "api": lambda: api_section(g, a, "tree"),
    }
    names = {os.path.join(g.dir, "garage"): "garage",
             **{os.path.join(g.dir, f"node{n}", "config.toml"): f"node{n}" for n in NODES}}
    results["sections"] = {}
    for sec in sections:
        bl.log(f"section {sec}")
        before = {"memory": memory(work), "garage_workers": garage_workers(g)}
        c0, t0 = cpu_ticks(list(names)), time.perf_counter()
        try:
            results[sec] = steps[sec]()
        except (bl.StepFailed, OSError, RuntimeError, http.client.HTTPException) as e:
            bl.log(f"{sec}: {e}")
            results[sec] = {"error": str(e)}
        results["sections"][sec] = {"seconds": time.perf_counter() - t0, "before": before,
                                    "cpu": cpu_share(c0, cpu_ticks(list(names)), names)}
    results["memory_at_end"] = memory(work)
    return results


def garage_workers(g):
    """What each Garage node's background workers have to do (`garage worker list`): the
    workers that are busy or have a queue, as {node: {worker: [state, queue]}}."""
    out = {}
    for n in NODES:
        conf = os.path.join(g.dir, "garage", f"node{n}", "garage.toml")
        _, text, _ = bl.run([GARAGE, "-c", conf, "worker", "list"], 60,
                            what=f"garage worker list (node {n})")
        lines = text.splitlines()
        # Columns TID State Name Tranq Done Queue Errors Consec Last, aligned under the header.
        head = lines[0] if lines else ""
        at = {c: head.find(c) for c in ("State", "Name", "Tranq", "Queue", "Errors")}
        if min(at.values()) < 0:
            raise bl.StepFailed(f"garage worker list (node {n}): unknown header {head!r}")
        busy = {}
        for line in lines[1:]:
            state = line[at["State"]:at["Name"]].strip()
            queue = line[at["Queue"]:at["Errors"]].strip()
            if state != "Idle" or queue not in ("-", "0"):
                busy[line[at["Name"]:at["Tranq"]].strip()] = [state, queue]
        out[f"node{n}"] = busy
    return out


def big_tree(work):
    root = os.path.join(work, "src", "big")
    if not os.path.isdir(root):
        bb = bl.rootfs_tree("busybox")
        bl.run(["cp", "-a", bb, root], 300)
        make_big(os.path.join(root, "data"))
    return root


def keep_logs(g, dest):
    """Copies the nodes' logs (nodeN/log) and their mounts' (nodeN/data/mounts/*.log) to dest."""
    for f in glob.glob(os.path.join(g.dir, "node*", "log")) + \
            glob.glob(os.path.join(g.dir, "node*", "data", "mounts", "*.log")):
        to = os.path.join(dest, os.path.dirname(os.path.relpath(f, g.dir)))
        os.makedirs(to, exist_ok=True)
        shutil.copy(f, to)
    bl.log(f"logs copied to {dest}")


def main():
    ap = bl.arg_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each measurement")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--clients", default="1,10,50", help="API clients (api section)")
    ap.add_argument("--seconds", type=float, default=5, help="per API run")
    ap.add_argument("--tmpfs-size", default="8g")
    ap.add_argument("--perf", action="store_true",
                    help="perf record -a through the spawn section: CPU per part of the grid")
    ap.add_argument("--keep-logs", metavar="DIR",
                    help="copy the nodes' and their mounts' logs into DIR before the grid goes")
    bl.output_arg(ap, "grid")
    a = ap.parse_args()
    sections = bl.subset(ap, a.sections, SECTIONS, "section")
    sg = os.path.abspath(a.spawngrid)
    bl.exit_on_sigterm()
    load_before = os.getloadavg()
    with grid_lock(), bl.fresh_tmpfs("sg-bench-grid-", a.tmpfs_size) as work:
        g = Grid(sg, work, max(int(k) for k in bl.comma_list(a.clients)))
        try:
            bl.log("scripts/grid.sh up")
            g.script("up")
            results = run_sections(g, a, work, sections)
        finally:
            if a.keep_logs:
                keep_logs(g, a.keep_logs)
            bl.log("scripts/grid.sh down")
            try:
                g.script("down", timeout=600)
            except bl.StepFailed as e:
                bl.log(str(e))
    logical = results["tree"]["logical_bytes"]
    lines = report(results, logical)
    met = goals(results)
    lines.append("")
    for k, v in met.items():
        figs = ", ".join(f"{x} {y:.2f}" for x, y in v.items() if x != "met")
        lines.append(f"goal {k}: {'met' if v['met'] else 'NOT MET'} ({figs})")
    print("\n".join(lines))
    doc = {"bench": "grid", "date": bl.utc_now(),
           "host": bl.host_info("tmpfs (Garage data, node data dirs, sources)"),
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "rounds": a.rounds, "goals": met,
           "note": "one machine: Garage, PostgreSQL, 3 nodes and the Python client share "
                   f"{os.cpu_count()} cores; S3 over the grid's bridge (loopback speed)",
           "results": results}
    bl.save_result("grid", a.output, doc)


if __name__ == "__main__":
    main()
