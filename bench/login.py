#!/usr/bin/env python3
# bench/login.py: spawn at SSH login to a prompt (issue 12), A/B. One connection from nothing:
# `ssh -tt -p PORT ENV=base+USER@127.0.0.1` spawns the env at login and runs a login shell on
# a terminal; measured to the first byte of its prompt (wall) and the OpenSSH client's CPU
# (user + sys from wait4), each env boomed after its round, untimed.
#
#   python3 bench/login.py [--n 20] [--bin LABEL=PATH]... [--host-keys made,ed25519,ecdsa]
#                          [--kex default,ecdh-sha2-nistp256] [--output FILE]
#
# Variants are every (binary, host key type, client kex) combination: one node per binary and
# host key type (`made`: the one the node makes itself, its default; `ed25519`, `ecdsa`: made
# with ssh-keygen before its first start as DATA/ssh/host_ed25519, which every binary loads
# whatever its type), the kex a client option (`-o KexAlgorithms=...`; `default` leaves
# OpenSSH's own order, whose first common choice with the gateway is curve25519-sha256). Every round runs each variant once, in
# a rotating order, so all see the same load (this machine's timings drift between runs
# minutes apart). Each node logs `node::ssh::session=debug` and `node::envs=info` to
# MNT/node.log; the p50 of the gateway's per-session steps (kex, auth, channel open,
# requests, spawn wait, resolve, start) is reported from it.
#
# As root, on a quiet machine (hold the CPU lock exclusively); a fresh tmpfs, busybox base.
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
from node import Node  # noqa: E402

LOG = "warn,node::ssh::session=debug,node::envs=info"
STEPS = ("kex_ms", "auth_ms", "open_ms", "requests_ms", "spawn_ms", "pick_ms", "resolve_ms",
         "start_ms", "total_ms")


def prompt(argv):
    """Seconds until argv prints its first byte, and the client's CPU seconds; then killed."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = p.stdout.read(1)
    dt = time.perf_counter() - t0
    os.kill(p.pid, signal.SIGKILL)  # not p.kill(): it would reap the client, losing its rusage
    _, _, ru = os.wait4(p.pid, 0)
    p.returncode = 0
    err = p.stderr.read()
    if not first:
        raise bl.StepFailed(f"{' '.join(argv[-2:])}: no prompt: "
                            f"{bl.last_line(err.decode(errors='replace'))}")
    return dt, ru.ru_utime + ru.ru_stime


def steps(log):
    """The gateway's per-session step times (ms lists by name) from a node's log."""
    out = {}
    if not os.path.exists(log):
        return out
    for line in open(log, errors="replace"):
        m = re.search(r"spawning .*: name ([\d.]+) ms, mount ([\d.]+) ms, env ([\d.]+) ms", line)
        if m:
            for k, v in zip(("spawn_name_ms", "spawn_mount_ms", "spawn_env_ms"), m.groups()):
                out.setdefault(k, []).append(float(v) / 1e3)
        if "ssh session started" not in line:
            continue
        for k in STEPS:
            m = re.search(rf"\b{k}=([\d.]+)", line)
            if m:
                out.setdefault(k, []).append(float(m.group(1)) / 1e3)
    return out


def main():
    ap = bl.arg_parser(__doc__)
    ap.add_argument("--n", type=int, default=20, help="rounds")
    ap.add_argument("--bin", action="append", default=[],
                    help="LABEL=PATH: a spawngrid binary (default: this=--spawngrid)")
    ap.add_argument("--host-keys", default="made", type=bl.comma_list,
                    help="host key types (made: the node's own; ed25519, ecdsa)")
    ap.add_argument("--kex", default="default", type=bl.comma_list,
                    help="client KexAlgorithms (default: OpenSSH's own)")
    bl.output_arg(ap, "login")
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin] or [["this", a.spawngrid]]
    bl.exit_on_sigterm()
    nodes, samples = {}, {}
    with bl.fresh_tmpfs("sg-bench-login-", "2g") as mnt:
        key = os.path.join(mnt, "id_ed25519")
        bl.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], 30)
        try:
            for label, path in bins:
                for hk in a.host_keys:
                    d = os.path.join(mnt, f"{label}-{hk}")
                    os.makedirs(os.path.join(d, "data/ssh"))
                    kt = {"ed25519": ["-t", "ed25519"], "ecdsa": ["-t", "ecdsa", "-b", "256"]}
                    if hk != "made":
                        bl.run(["ssh-keygen", "-q", *kt[hk], "-N", "", "-C", "bench host key",
                                "-f", os.path.join(d, "data/ssh/host_ed25519")], 30)
                    n = Node(path, d, key, log=LOG)
                    bl.log(f"starting node {label} ({hk} host key)")
                    n.start()
                    nodes[(label, hk)] = n
            variants = [(lb, hk, kx) for (lb, hk) in nodes for kx in a.kex]
            for i in range(a.n):
                k = i % len(variants)
                for lb, hk, kx in variants[k:] + variants[:k]:
                    n = nodes[(lb, hk)]
                    # Env ids must differ between the nodes (cgroups, mounts are host-wide).
                    env = f"e{i}-{list(nodes).index((lb, hk))}"
                    ssh = n.ssh(env, spawn_from="base")
                    if kx != "default":
                        ssh = ssh[:1] + ["-o", f"KexAlgorithms={kx}"] + ssh[1:]
                    wall, cpu = prompt(ssh[:1] + ["-tt"] + ssh[1:])
                    s = samples.setdefault(f"{lb} {hk} {kx}", {"wall": [], "client_cpu": []})
                    s["wall"].append(wall)
                    s["client_cpu"].append(cpu)
                    n.client("boom", env)
        except bl.StepFailed:
            for n in nodes.values():
                log = os.path.join(n.mnt, "node.log")
                bl.log(f"{log}: {bl.last_line(open(log, errors='replace').read())}")
            raise
        finally:
            for n in nodes.values():
                n.close()
        results = {}
        for (lb, hk), n in nodes.items():
            st = steps(os.path.join(n.mnt, "node.log"))
            for kx in a.kex:
                r = {k: bl.summary_ms(v) for k, v in samples[f"{lb} {hk} {kx}"].items()}
                # The node's log mixes its kex variants: its steps are per node.
                r["gateway_steps_p50_ms"] = {k: round(bl.med(v) * 1e3, 2) for k, v in st.items()}
                results[f"{lb} {hk} {kx}"] = r
    rows = [["variant", "n", "wall p50 ms", "wall min ms", "client CPU p50 ms"]]
    for v, r in results.items():
        rows.append([v, str(r["wall"]["n"]), bl.fmt(r["wall"]["p50"]), bl.fmt(r["wall"]["min"]),
                     bl.fmt(r["client_cpu"]["p50"], ".2f")])
    print("\n".join(bl.table_lines(rows, wide_labels=True)))
    for (lb, hk) in nodes:
        st = results[f"{lb} {hk} {a.kex[0]}"]["gateway_steps_p50_ms"]
        print(f"gateway steps p50 ({lb}, {hk}): " + ", ".join(f"{k} {v}" for k, v in st.items()))
    doc = {"bench": "login", "date": bl.utc_now(), "host": bl.host_info("tmpfs"),
           "load_avg": os.getloadavg(), "ssh_client": bl.version_of(["ssh", "-V"]),
           "results": results}
    bl.save_result("login", a.output, doc)


if __name__ == "__main__":
    main()
