#!/usr/bin/env python3
# bench/burst.py: a burst of spawns through the node's HTTPS API (issue 12): N clients (100 by
# default), each on its own keep-alive connection already logged in and past its TLS
# handshake, are released at once; each spawns an env of the busybox base snapshot
# (`POST /api/envs`) and runs a first command in it (`POST /api/envs/ENV/exec` of `true`).
# Measured: the time from the release to the last first command done (goal ≤ 1 s for 100),
# and each client's spawn and spawn + first command latency. Against podman's REST API
# (`podman system service` on a unix socket) under the same burst: create a container of the
# same busybox tree running `true`, start it, wait for its exit.
#
#   python3 bench/burst.py [--n 100] [--rounds 3] [--tools spawngrid,podman] [--output FILE]
#
# As root, on a quiet machine; the node runs from a fresh tmpfs (as bench/api.py's), its
# capacity raised so that N envs fit. The clients are threads of this Python process (TLS
# and JSON cost it CPU on the same cores, said next to the numbers).
import json
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import api  # noqa: E402

GOAL_S = 1.0


def burst(n, connect, one):
    """n clients, each with `connect()`'s connection, released together to run `one(conn, i)`
    (which returns its own timings); the wall time from the release to the last done."""
    conns = [connect() for _ in range(n)]
    go = threading.Barrier(n + 1)
    out, errors = [None] * n, []

    def client(i):
        go.wait()
        try:
            out[i] = one(conns[i], i)
        except (OSError, RuntimeError, ValueError) as e:
            errors.append(f"client {i}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    if errors:
        raise bl.StepFailed(f"{len(errors)} of {n} clients failed, e.g. {errors[0]}")
    return wall, out


class Node(api.Node):
    """bench/api.py's node, with room for the burst (capacity, execs at once for its one user,
    and a 16 MiB write layer): the burst measures spawns, not the node's per-user limits."""

    def __init__(self, sg, mnt, n):
        super().__init__(sg, mnt, f'write_size = "16M"\n[capacity]\nmax_envs = {n + 16}\n'
                                  f'max_mem = "{(n + 16) * 64}M"\n'
                                  f'[exec]\nmax_per_user = {n + 16}\n')
        self.n = n

    def connect(self):
        c = self.conn()
        api.checked(*api.request(c, "GET", "/api/envs", headers=self.auth))
        return c

    def one(self, c, i):
        env = f"burst{i}"
        t0 = time.perf_counter()
        api.checked(*api.request(c, "POST", "/api/envs", {"name": "base", "as": env}, self.auth))
        t1 = time.perf_counter()
        body = api.checked(*api.request(c, "POST", f"/api/envs/{env}/exec", {"argv": ["true"]},
                                        self.auth))
        t2 = time.perf_counter()
        if json.loads(body)["exit_code"] != 0:
            raise RuntimeError(f"exec true in {env} failed")
        return t1 - t0, t2 - t0

    def clean(self):
        c = self.conn()
        for i in range(self.n):
            api.request(c, "DELETE", f"/api/envs/burst{i}", headers=self.auth)


class Podman(api.Podman):
    """bench/api.py's podman REST service; a burst creates, starts and waits containers."""

    # This host's root lacks CAP_SYS_RESOURCE: podman's default rlimits fail in crun.
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    rlimits = [{"type": "nofile", "soft": 1024, "hard": 1024},
               {"type": "nproc", "soft": nproc, "hard": nproc}]

    def connect(self):
        return self.conn()

    def one(self, c, i):
        t0 = time.perf_counter()
        body = api.checked(*api.request(c, "POST", "/v4.0.0/libpod/containers/create", {
            "name": f"burst{i}", "image": "bench-bb", "command": ["/bin/true"],
            "netns": {"nsmode": "none"},
            "r_limits": self.rlimits}), 201)
        cid = json.loads(body)["Id"]
        api.checked(*api.request(c, "POST", f"/v4.0.0/libpod/containers/{cid}/start"), 204)
        t1 = time.perf_counter()
        body = api.checked(*api.request(c, "POST", f"/v4.0.0/libpod/containers/{cid}/wait"))
        t2 = time.perf_counter()
        if int(body or b"0") != 0:
            raise RuntimeError(f"container {i}: true exited {body!r}")
        return t1 - t0, t2 - t0

    def clean(self):
        c = self.conn()
        for i in range(self.n):
            api.request(c, "DELETE", f"/v4.0.0/libpod/containers/burst{i}?force=true")


def measure(target, n, rounds):
    walls, spawn, first = [], [], []
    for r in range(rounds):
        try:
            wall, out = burst(n, target.connect, target.one)
        finally:
            target.clean()
        walls.append(wall)
        spawn += [s for s, _ in out]
        first += [f for _, f in out]
        bl.log(f"round {r}: {n} spawns with a first command in {wall:.2f} s")
    return {"n": n, "wall_s": walls, "wall_s_p50": bl.med(walls),
            "spawn": bl.summary_ms(spawn), "spawn_first_command": bl.summary_ms(first)}


def main():
    ap = bl.arg_parser(__doc__)
    ap.add_argument("--n", type=int, default=100, help="concurrent spawns in a burst")
    ap.add_argument("--rounds", type=int, default=3, help="bursts per tool")
    ap.add_argument("--tools", default="spawngrid,podman")
    bl.output_arg(ap, "burst")
    a = ap.parse_args()
    tools = bl.subset(ap, a.tools, ["spawngrid", "podman"], "tool")
    bl.exit_on_sigterm()
    load_before = os.getloadavg()
    results = {}
    with bl.fresh_tmpfs("sg-bench-burst-", "4g") as mnt:
        for tool in tools:
            target = Node(a.spawngrid, mnt, a.n) if tool == "spawngrid" else Podman(mnt)
            target.n = a.n
            try:
                bl.log(f"{tool}: starting")
                target.start()
                results[tool] = measure(target, a.n, a.rounds)
            except (bl.StepFailed, OSError, RuntimeError) as e:
                bl.log(f"{tool}: {e}")
                results[tool] = {"error": str(e)}
            finally:
                target.close()
    rows = [["tool", "burst", "all done s (p50)", "spawn p50 ms", "spawn p99 ms",
             "+ first command p50 ms", "p99 ms"]]
    for tool, r in results.items():
        if "error" in r:
            rows.append([tool, "failed: " + r["error"]])
            continue
        rows.append([tool, str(r["n"]), bl.fmt(r["wall_s_p50"], ".2f"),
                     bl.fmt(r["spawn"]["p50"]), bl.fmt(r["spawn"]["p99"]),
                     bl.fmt(r["spawn_first_command"]["p50"]),
                     bl.fmt(r["spawn_first_command"]["p99"])])
    print("\n".join(bl.table_lines(rows)))
    sg = results.get("spawngrid", {})
    goal = {"met": sg.get("wall_s_p50", GOAL_S + 1) <= GOAL_S, "seconds": sg.get("wall_s_p50")}
    print(f"goal: {a.n} spawns with a first command <= {GOAL_S:.0f} s: "
          f"{'met' if goal['met'] else 'NOT MET'}")
    doc = {"bench": "burst", "date": bl.utc_now(), "host": bl.host_info("tmpfs"),
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "goal_le_1s": goal,
           "note": "clients are threads of one Python process on the same cores",
           "results": results}
    bl.save_result("burst", a.output, doc)


if __name__ == "__main__":
    main()
