#!/usr/bin/env python3
# bench/api.py: the node's HTTPS API under concurrent clients (issue 5): request latency
# (p50/p99) and throughput with 1, 10 and 50 clients, each on its own keep-alive connection,
# for a read (list the user's envs: token check, env states, cgroup reads) and for running a
# command (`POST /api/envs/ENV/exec` of `true`); against podman's REST API (`podman system
# service` on a unix socket, plain HTTP, no auth) under the same load: list containers and
# exec `true` (create + start + inspect, as podman's API does it).
#
#   python3 bench/api.py [--clients 1,10,50] [--seconds 5] [--output FILE]
#
# As root, on a quiet machine. The node runs from a fresh tmpfs (busybox base snapshot);
# the client is this Python process (threads; TLS and JSON parsing cost it CPU on the same
# 2 cores, which the report says next to the numbers).
import http.client
import json
import os
import re
import shlex
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

USER, PASSWORD = "bench", "bench-pw"


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (podman's API)."""

    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(self.path)
        self.sock = s


def request(conn, method, path, body=None, headers=None):
    """One request on a kept-alive connection; (status, body bytes)."""
    h = {"Content-Type": "application/json"} if body is not None else {}
    h.update(headers or {})
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
    r = conn.getresponse()
    return r.status, r.read()


def load(make_conn, op, clients, seconds):
    """`clients` threads each run `op(conn)` in a loop for `seconds`; latencies and errors."""
    lat, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker():
        conn = make_conn()
        mine, bad = [], []
        try:
            op(conn)  # warm the connection (TLS handshake) before the clock starts
        except Exception as e:  # noqa: BLE001 (counted; the barrier must still be reached)
            bad.append(f"warm-up: {str(e)[:200]}")
            conn.close()
            conn = make_conn()
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                op(conn)
                mine.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 (a failed request is a result)
                bad.append(str(e)[:200])
                conn.close()
                conn = make_conn()
        with lock:
            lat.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds + 0.05
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    s = bl.summary_ms(lat) or {}
    s.pop("all", None)
    return {"clients": clients, "requests": len(lat), "per_s": len(lat) / wall,
            "p50_ms": s.get("p50"), "p99_ms": s.get("p99"), "errors": len(errors),
            "first_error": errors[0] if errors else None}


def checked(status, body, want=200):
    if status != want:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    return body


class Node:
    """A spawngrid node on a fresh tmpfs with user bench and env `base`."""

    def __init__(self, sg, mnt, extra_config=""):
        self.sg, self.mnt, self.proc = sg, mnt, None
        self.data = os.path.join(mnt, "data")
        self.extra_config = extra_config

    def start(self):
        sg, mnt = self.sg, self.mnt
        bb = subprocess.run([os.path.join(bl.REPO, "scripts/rootfs.sh"), "busybox"],
                            check=True, capture_output=True, text=True).stdout.strip()
        bl.run([sg, "lib", "--data", self.data, "--owner", USER, "import", "base", bb], 300)
        subprocess.run([sg, "user", "--data", self.data, "add", USER, "--password-stdin"],
                       input=PASSWORD + "\n", text=True, check=True, capture_output=True)
        cfg = os.path.join(mnt, "node.toml")
        with open(cfg, "w") as f:
            f.write('default_mem = "64M"\n' + self.extra_config)
        self.proc = subprocess.Popen(
            [sg, "serve", "--config", cfg, "--data", self.data, "--listen", "127.0.0.1:0",
             "--ssh-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "SPAWNGRID_LOG": "warn"})
        line = self.proc.stdout.readline()
        m = re.search(r"https://([\d.]+):(\d+)", line)
        if not m:
            raise bl.StepFailed(f"node did not start: {line!r}")
        self.host, self.port = m.group(1), int(m.group(2))
        self.ctx = ssl._create_unverified_context()
        c = self.conn()
        body = checked(*request(c, "POST", "/api/login", {"user": USER, "password": PASSWORD}))
        self.auth = {"Authorization": "Bearer " + json.loads(body)["token"]}
        checked(*request(c, "POST", "/api/envs", {"name": "base"}, self.auth))

    def conn(self):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)

    def ops(self):
        def ls(c):
            checked(*request(c, "GET", "/api/envs", headers=self.auth))

        def exec_true(c):
            body = checked(*request(c, "POST", "/api/envs/base/exec", {"argv": ["true"]},
                                    self.auth))
            if json.loads(body)["exit_code"] != 0:
                raise RuntimeError("exec true failed")
        return {"list": ls, "exec": exec_true}

    def close(self):
        if not self.proc:
            return
        try:
            request(self.conn(), "DELETE", "/api/envs/base", headers=self.auth)
        except (OSError, AttributeError, http.client.HTTPException):
            bl.run([self.sg, "env", "--data", self.data, "boom", f"base+{USER}"], 60, check=False)
        self.proc.terminate()
        self.proc.wait(30)


class Podman:
    """podman's REST service on a unix socket with one running busybox container."""

    def __init__(self, mnt):
        self.proc = None
        self.sock = os.path.join(mnt, "podman.sock")
        self.root = os.path.join(mnt, "podman")
        # crun 1.8 refuses this host's hybrid cgroup layout: each podman runs in a private
        # mount namespace without the cgroup2 mount (as bench/runtime.py's peers do).
        hide = []
        if os.path.ismount("/sys/fs/cgroup/unified"):
            hide = ["unshare", "-m", "--propagation", "slave", "sh", "-c",
                    'umount -l /sys/fs/cgroup/unified; exec "$0" "$@"']
        self.base = hide + ["podman", "--root", self.root, "--runroot", self.root + "-run",
                            "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def start(self):
        bl.ensure_tool("podman", "podman")
        bb = subprocess.run([os.path.join(bl.REPO, "scripts/rootfs.sh"), "busybox"],
                            check=True, capture_output=True, text=True).stdout.strip()
        bl.run(f"tar -C {shlex.quote(bb)} -c . | {shlex.join(self.base)} import - bench-bb", 300)
        # This host's root lacks CAP_SYS_RESOURCE: podman's default rlimits fail in crun.
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
        bl.run(self.base + ["run", "-d", "--name", "b", "--ulimit", "nofile=1024:1024",
                            "--ulimit", f"nproc={nproc}:{nproc}", "--network", "none",
                            "bench-bb", "/bin/sleep", "3600"], 120)
        self.proc = subprocess.Popen(self.base + ["system", "service", "-t", "0",
                                                  "unix://" + self.sock],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.exists(self.sock):
                break
            time.sleep(0.05)
        checked(*request(self.conn(), "GET", "/v4.0.0/libpod/_ping"))

    def conn(self):
        return UnixHTTPConnection(self.sock)

    def ops(self):
        def ls(c):
            checked(*request(c, "GET", "/v4.0.0/libpod/containers/json"))

        def exec_true(c):
            body = checked(*request(c, "POST", "/v4.0.0/libpod/containers/b/exec",
                                    {"Cmd": ["true"], "AttachStdout": True}), 201)
            eid = json.loads(body)["Id"]
            checked(*request(c, "POST", f"/v4.0.0/libpod/exec/{eid}/start", {"Detach": False}))
            body = checked(*request(c, "GET", f"/v4.0.0/libpod/exec/{eid}/json"))
            if json.loads(body)["ExitCode"] != 0:
                raise RuntimeError("podman exec true failed")
        return {"list": ls, "exec": exec_true}

    def close(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(30)
        bl.run(self.base + ["rm", "-f", "-t", "0", "b"], 120, check=False)
        bl.run(self.base + ["system", "reset", "-f"], 120, check=False)
        # conmon of each API exec lingers for its --exit-delay (300 s): not after this run.
        subprocess.run(["pkill", "-f", f"conmon.*{self.root}"])


def main():
    ap = bl.arg_parser(__doc__)
    ap.add_argument("--clients", default="1,10,50")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--tools", default="spawngrid,podman")
    bl.output_arg(ap, "api")
    a = ap.parse_args()
    clients = [int(c) for c in bl.comma_list(a.clients)]
    tools = bl.subset(ap, a.tools, ["spawngrid", "podman"], "tool")
    bl.exit_on_sigterm()
    results = {}
    with bl.fresh_tmpfs("sg-bench-api-", "4g") as mnt:
        for tool in tools:
            target = None
            try:
                bl.log(f"starting {tool}")
                target = Node(a.spawngrid, mnt) if tool == "spawngrid" else Podman(mnt)
                target.start()
                for op, fn in target.ops().items():
                    for n in clients:
                        bl.log(f"{tool} {op} with {n} clients")
                        results.setdefault(tool, {}).setdefault(op, []).append(
                            load(target.conn, fn, n, a.seconds))
            except (bl.StepFailed, OSError, RuntimeError) as e:
                bl.log(f"{tool}: {e}")
                results[tool] = {"error": str(e)}
            finally:
                if target:
                    target.close()
    rows = [["tool", "op", "clients", "req/s", "p50 ms", "p99 ms", "errors", "p50 vs podman"]]
    for tool, ops in results.items():
        if "error" in ops:
            rows.append([tool, "failed: " + ops["error"]])
            continue
        for op, runs in ops.items():
            for r in runs:
                peer = next((p for p in results.get("podman", {}).get(op, [])
                             if isinstance(p, dict) and p["clients"] == r["clients"]), None)
                ratio = (r["p50_ms"] / peer["p50_ms"]) if peer and tool != "podman" and \
                    peer["p50_ms"] and r["p50_ms"] else None
                rows.append([tool, op, str(r["clients"]), bl.fmt(r["per_s"], ".0f"),
                             bl.fmt(r["p50_ms"], ".2f"), bl.fmt(r["p99_ms"], ".2f"),
                             str(r["errors"]), bl.fmt(ratio, ".2f") + ("x" if ratio else "")])
    print("\n".join(bl.table_lines(rows)))
    doc = {"bench": "api", "date": bl.utc_now(), "host": bl.host_info("tmpfs"),
           "seconds_per_run": a.seconds,
           "note": "client threads (Python, TLS) share the 2 cores with the node",
           "results": results}
    bl.save_result("api", a.output, doc)


if __name__ == "__main__":
    main()
