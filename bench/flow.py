#!/usr/bin/env python3
# bench/flow.py: a VS Code Remote-SSH style flow through the node's SSH gateway (issue 12),
# against OpenSSH's sshd in a podman container on the same host. Both serve the same tree,
# `scripts/rootfs.sh sshd` (Debian minbase with openssh-server and busybox): spawngrid as an
# env of a snapshot imported from it (root's login shell, bash), podman as an image imported
# from it (sshd as the container's command, root login by key, podman's bridge network with
# the container's port 22 published on a loopback port). The real OpenSSH client, key logins:
#
# - flow: one new connection `ssh -L LPORT:127.0.0.1:PORT TARGET SCRIPT` where the bash
#   SCRIPT starts a server inside (`busybox httpd` on PORT, a new port each round) and says
#   "ready"; then an HTTP GET through the forward. Timed: connect + exec (start to "ready"),
#   forward (from "ready" to the first byte of the reply through the forward), and the total;
# - exec, new connection: `ssh ... true`;
# - scp: a file of M MB (100) up and down with OpenSSH's `scp` (the SFTP protocol): the
#   gateway's built-in SFTP server into an env with a `--disk` write layer, against the
#   container's sftp-server into its overlay root (3 rounds each way, bytes checked).
#
#   python3 bench/flow.py [--n 20] [--scp-mb 100] [--peers podman-sshd] [--output FILE]
#
# As root; everything (the node's data, podman's storage) on a fresh tmpfs. podman runs in the
# peers' private mount namespace (bench/peers/base.py, PeerNs: crun refuses this host's hybrid
# cgroup layout otherwise).
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import node as nb  # noqa: E402
from peers.base import PeerNs  # noqa: E402
from peers.podman import podman_in, ulimit_opts  # noqa: E402

IMAGE, CONTAINER = "localhost/flow-sshd", "flow-sshd"


def flow_round(ssh, port):
    """One round on a new connection (ssh is the server's ssh argv ending with its target):
    seconds of connect + exec, of the forward's first byte, and of both."""
    lport = nb.free_port()
    script = (f"mkdir -p /srv && echo hello-from-the-env > /srv/index.html && "
              f"busybox httpd -p 127.0.0.1:{port} -h /srv && echo ready && exec sleep 600")
    argv = ssh[:-1] + ["-L", f"{lport}:127.0.0.1:{port}", ssh[-1], script]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline()
        t1 = time.perf_counter()
        if line != b"ready\n":
            p.kill()
            raise bl.StepFailed(f"flow: the script said {line!r}: "
                                f"{bl.last_line(p.stderr.read().decode(errors='replace'))}")
        with socket.create_connection(("127.0.0.1", lport), timeout=60) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            reply = s.recv(1)
            t2 = time.perf_counter()
            while chunk := s.recv(65536):
                reply += chunk
        if not reply.endswith(b"\r\n\r\nhello-from-the-env\n"):
            raise bl.StepFailed(f"flow: the forward answered {reply[:200]!r}")
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()
    return t1 - t0, t2 - t1, t2 - t0


def flow(ssh, n):
    """n rounds of flow_round (ports 8000 + round): the summaries of each part."""
    parts = ([], [], [])
    for i in range(n):
        for samples, dt in zip(parts, flow_round(ssh, 8000 + i)):
            samples.append(dt)
    return {k: bl.summary_ms(v) for k, v in zip(("connect_exec", "forward", "total"), parts)}


class PodmanSshd:
    """sshd as the command of a podman container of the tree, port 22 on a loopback port."""

    def __init__(self, mnt, key, root):
        self.mnt, self.key, self.root = mnt, key, root
        self.dir = os.path.join(mnt, "podman")
        self.cfg = os.path.join(mnt, "podman-sshd")
        self.ns = PeerNs(self.dir)
        self.started = False

    def podman(self, *args, timeout=300, check=True):
        return bl.run(podman_in(self.dir, *args), timeout, preexec_fn=self.ns.preexec(),
                      check=check)

    def start(self):
        reason = bl.ensure_tool("podman", "podman")
        if reason:
            raise bl.StepFailed(reason)
        os.makedirs(self.cfg, mode=0o700)
        bl.run(f"tar -C {self.root} --numeric-owner -cf - . | "
               + " ".join(podman_in(self.dir, "import", "-q", "-", IMAGE)), 600,
               preexec_fn=self.ns.preexec(), what="tar | podman import")
        bl.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                os.path.join(self.cfg, "host_ed25519")], 30)
        auth = os.path.join(self.cfg, "authorized_keys")
        with open(self.key + ".pub") as src, open(auth, "w") as dst:
            dst.write(src.read())
        os.chmod(auth, 0o600)
        with open(os.path.join(self.cfg, "sshd_config"), "w") as f:
            f.write("Port 22\nHostKey /bench/host_ed25519\n"
                    "AuthorizedKeysFile /bench/authorized_keys\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nPidFile none\n"
                    "StrictModes no\nPrintMotd no\nMaxStartups 10000\n"
                    "Subsystem sftp /usr/lib/openssh/sftp-server\n")
        self.port = nb.free_port()
        self.podman("run", "-d", "--name", CONTAINER, *ulimit_opts(),
                    "-p", f"127.0.0.1:{self.port}:22", "-v", f"{self.cfg}:/bench:ro", IMAGE,
                    "sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f "
                    "/bench/sshd_config")
        self.started = True
        for _ in range(100):
            if subprocess.run(self.ssh() + ["true"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise bl.StepFailed("sshd in the container did not accept a login")

    def ssh(self):
        return nb.ssh_argv(self.port, self.key, os.path.join(self.cfg, "known_hosts"),
                           "root@127.0.0.1")

    def close(self):
        if self.started:
            self.podman("rm", "-f", "-t", "0", CONTAINER, check=False)
        self.ns.stop()


def measure(ssh, remote, mnt, a):
    """The flow, exec on a new connection and scp of one server."""
    bl.log("flow")
    r = {"flow": flow(ssh, a.n)}
    bl.log("exec, new connection")
    r["exec_new_connection"] = bl.summary_ms(nb.exec_latencies(ssh, a.n))
    if a.scp_mb:
        bl.log(f"scp of {a.scp_mb} MB")
        r["scp"] = nb.scp_times(ssh, remote, mnt, a.scp_mb)
    return r


def main():
    ap = bl.arg_parser(__doc__)
    ap.add_argument("--n", type=int, default=20, help="rounds of each measurement")
    ap.add_argument("--scp-mb", type=int, default=100, help="size of the scp file (0: skip)")
    ap.add_argument("--peers", default="podman-sshd")
    bl.output_arg(ap, "flow")
    a = ap.parse_args()
    peers = bl.subset(ap, a.peers, ["podman-sshd"], "peer")
    bl.exit_on_sigterm()
    root = bl.rootfs_tree("sshd")
    results = {}
    with bl.fresh_tmpfs("sg-bench-flow-", "3g") as mnt:
        key = os.path.join(mnt, "id_ed25519")
        bl.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], 30)
        node = nb.Node(a.spawngrid, mnt, key)
        try:
            bl.log("spawngrid: starting the node")
            node.start(root)
            node.client("spawn", "base", "--as", "work", "--disk")
            results["spawngrid"] = measure(node.ssh("work"),
                                           f"work+{nb.USER}@127.0.0.1:/root/f.bin", mnt, a)
        except (bl.StepFailed, OSError, subprocess.SubprocessError) as e:
            bl.log(f"spawngrid: {e}")
            results["spawngrid"] = {"error": str(e)}
        finally:
            node.close()
        if "podman-sshd" in peers:
            peer = PodmanSshd(mnt, key, root)
            try:
                bl.log("podman-sshd: importing the tree, starting the container")
                peer.start()
                results["podman-sshd"] = measure(peer.ssh(), "root@127.0.0.1:/root/f.bin",
                                                 mnt, a)
            except (bl.StepFailed, OSError, subprocess.SubprocessError) as e:
                bl.log(f"podman-sshd: {e}")
                results["podman-sshd"] = {"error": str(e)}
            finally:
                peer.close()
    rows = [["server", "measure", "n", "p50 ms", "p99 ms", "min ms"]]

    def row(server, label, s):
        rows.append([server, label, str(s["n"]), bl.fmt(s["p50"], ".1f"),
                     bl.fmt(s["p99"], ".1f"), bl.fmt(s["min"], ".1f")])
    for server, r in results.items():
        if "error" in r:
            rows.append([server, "failed: " + r["error"]])
            continue
        for part, label in (("connect_exec", "flow: connect + exec to ready"),
                            ("forward", "flow: first byte through -L"),
                            ("total", "flow: total")):
            row(server, label, r["flow"][part])
        row(server, "exec, new connection", r["exec_new_connection"])
        if "scp" in r:
            for way in ("up", "down"):
                row(server, f"scp {r['scp']['mb']} MB {way}", r["scp"][way])
    print("\n".join(bl.table_lines(rows)))
    doc = {"bench": "flow", "date": bl.utc_now(), "host": bl.host_info("tmpfs"),
           "ssh_client": bl.version_of(["ssh", "-V"]),
           "podman": bl.version_of(["podman", "--version"]),
           "note": "same tree (scripts/rootfs.sh sshd) for the env and the container; "
                   "key logins as root; podman bridge network, port published on loopback",
           "results": results}
    bl.save_result("flow", a.output, doc)


if __name__ == "__main__":
    main()
