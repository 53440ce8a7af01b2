#!/usr/bin/env python3
# bench/node.py: the node's SSH gateway (issue 5). Measures, with the real OpenSSH client and
# key logins (no password hashing in the way):
# - spawn alone: `spawngrid spawn base --as ENV` (the client over HTTPS, to its exit);
# - spawn to shell: from the start of `spawngrid spawn base --as ENV` (client over HTTPS) to
#   the first output of `ssh -p PORT ENV+USER@127.0.0.1 echo ready` (p50/p99 of N rounds;
#   each env is boomed after its round, untimed), and the same with `spawngrid cpu ENV -- echo
#   ready` (a WebSocket terminal over the HTTPS port) instead of ssh; and spawn to prompt:
#   the same to the first byte of `ssh -tt` (a login shell on a terminal: its prompt); and
#   both in one connection from nothing, `ssh ENV=base+USER@...` spawning the env at login;
# - exec: `ssh ... true` on a new connection each time (key exchange, login, channel, exec,
#   exit status), and on an open connection (OpenSSH's ControlMaster: channel + exec only),
#   against OpenSSH's own sshd on the same machine (a private sshd on a loopback port with its
#   own config and host key, logging in as root: its exec of `true` runs on the host);
# - sessions: K concurrent connections each running `echo up; sleep 600` (new connections,
#   all started at once): the time until every one said "up", the host's MemAvailable drop
#   per session (clients included: the same OpenSSH clients for both servers) and, for
#   spawngrid, the daemon's RSS and threads with them; then the clients are killed and every
#   `sleep` must be gone;
# - scp: a file of M MB (100) up and down with OpenSSH's `scp` (the SFTP protocol): into an env
#   (`--disk` write layer) through the gateway's built-in SFTP server, against sshd with
#   OpenSSH's sftp-server into a directory of the same tmpfs (3 rounds each way, bytes checked).
#
#   python3 bench/node.py [--n 30] [--sessions 200] [--scp-mb 100] [--peers sshd]
#                         [--baseline BIN] [--host-key ecdsa|ed25519] [--output FILE]
#
# --baseline BIN: a second node of another binary on the same tmpfs; the spawn measures
# alternate between the two, round by round, so both see the same load ("baseline" in the
# JSON and the table).
#
# As root, on a quiet machine; everything on a fresh tmpfs (busybox base snapshot). sshd comes
# from openssh-server (installed if missing).
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

USER, PASSWORD = "bench", "bench-pw"


def ssh_argv(port, key, known_hosts, target, control=None):
    """The OpenSSH client with a key login and nothing from the user's configuration."""
    argv = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", key, "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR"]
    if control:
        argv += ["-o", f"ControlPath={control}"]
    return argv + [target]


def time_to_output(argv):
    """Seconds from now until argv prints its first byte; it must then exit 0."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = p.stdout.read(1)
    dt = time.perf_counter() - t0
    out, err = p.communicate(timeout=120)
    if p.returncode != 0 or not first:
        raise bl.StepFailed(f"{' '.join(argv[-3:])}: exit {p.returncode}: "
                            f"{bl.last_line(err.decode(errors='replace'))}")
    return dt


def time_to_prompt(argv):
    """Seconds from now until argv (an interactive session) prints its first byte; then it is
    killed."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        first = p.stdout.read(1)
        dt = time.perf_counter() - t0
    finally:
        p.kill()
        _, err = p.communicate(timeout=120)
    if not first:
        raise bl.StepFailed(f"{' '.join(argv[-3:])}: no prompt: "
                            f"{bl.last_line(err.decode(errors='replace'))}")
    return dt


def spawn_round(node, env, out, at_login=True):
    """One round of the spawn measures on `node` (env named `env`, boomed after each): each
    appended to its list in `out`; `at_login`: also spawning at an SSH login (`ENV=NAME+USER`,
    which older binaries lack)."""
    def add(k, dt):
        out.setdefault(k, []).append(dt)
    t0 = time.perf_counter()
    node.client("spawn", "base", "--as", env)
    add("spawn_alone", time.perf_counter() - t0)
    time_to_output(node.ssh(env) + ["echo", "ready"])
    add("spawn_to_shell", time.perf_counter() - t0)
    node.client("boom", env)
    # A login shell on a terminal: to its prompt.
    t0 = time.perf_counter()
    node.client("spawn", "base", "--as", env)
    ssh = node.ssh(env)
    time_to_prompt(ssh[:1] + ["-tt"] + ssh[1:])
    add("spawn_to_prompt", time.perf_counter() - t0)
    node.client("boom", env)
    # The same through `spawngrid cpu` (HTTPS + WebSocket terminal).
    t0 = time.perf_counter()
    node.client("spawn", "base", "--as", env)
    time_to_output(node.cpu(env) + ["echo", "ready"])
    add("spawn_to_shell_cpu", time.perf_counter() - t0)
    node.client("boom", env)
    if not at_login:
        return
    # One connection from nothing: `ssh ENV=base+USER` spawns the env at login.
    t0 = time.perf_counter()
    time_to_output(node.ssh(env, spawn_from="base") + ["echo", "ready"])
    add("login_spawn_to_shell", time.perf_counter() - t0)
    node.client("boom", env)
    ssh = node.ssh(env, spawn_from="base")
    t0 = time.perf_counter()
    time_to_prompt(ssh[:1] + ["-tt"] + ssh[1:])
    add("login_spawn_to_prompt", time.perf_counter() - t0)
    node.client("boom", env)


def exec_latencies(argv, n):
    """n runs of argv + ['true'] (each must exit 0): their wall times in seconds."""
    return [bl.run(argv + ["true"], 120)[0] for _ in range(n)]


def with_master(argv_of, n):
    """exec latencies on one open connection: a ControlMaster started first, stopped after."""
    control = argv_of(True)
    master = control[:-1] + ["-o", "ControlMaster=yes", "-o", "ControlPersist=yes", "-N", "-f",
                             control[-1]]
    bl.run(master, 60)
    try:
        return exec_latencies(control, n)
    finally:
        bl.run(control[:-1] + ["-O", "exit", control[-1]], 30, check=False)


def scp_times(ssh, remote, mnt, mb, rounds=3):
    """Seconds of `scp` of an MB-megabyte file up to `remote` (HOST:PATH) and back down, each
    round; ssh is the ssh argv of the server (its options are reused)."""
    src, back = os.path.join(mnt, "scp-src.bin"), os.path.join(mnt, "scp-back.bin")
    if not os.path.exists(src):
        with open(src, "wb") as f:
            f.write(os.urandom(mb * 10**6))
    i = ssh.index("-p")
    opts = ssh[1:i] + ["-P", ssh[i + 1]] + ssh[i + 2:-1]
    up, down = [], []
    for _ in range(rounds):
        for times, argv in ((up, [src, remote]), (down, [remote, back])):
            t0 = time.perf_counter()
            bl.run(["scp", "-q", *opts, *argv], 600)
            times.append(time.perf_counter() - t0)
        if not filecmp.cmp(src, back, shallow=False):
            raise bl.StepFailed("scp: the file came back different")
        os.unlink(back)
    return {"mb": mb, "up": bl.summary_ms(up), "down": bl.summary_ms(down)}


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise bl.StepFailed("no MemAvailable in /proc/meminfo")


def proc_status(pid):
    """VmRSS (bytes) and Threads of process pid."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                got[k] = int(v.split()[0])
    return got["VmRSS"] * 1024, got["Threads"]


def hold_sessions(argv, k, server_pid=None, count_sleeps=None):
    """K concurrent `argv echo up; sleep 600` sessions: seconds until all are up, memory per
    session, the server's RSS/threads (if server_pid); then kills them and waits until
    count_sleeps() (if given) says none is left."""
    import select
    before = mem_available()
    rss0 = proc_status(server_pid) if server_pid else None
    t0 = time.perf_counter()
    procs = [subprocess.Popen(argv + ["echo up; exec sleep 600"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
             for _ in range(k)]
    try:
        waiting = {p.stdout.fileno(): p for p in procs}
        deadline = time.time() + 300
        while waiting:
            if time.time() > deadline:
                raise bl.StepFailed(f"{len(waiting)} of {k} sessions not up after 300 s")
            ready, _, _ = select.select(list(waiting), [], [], 1)
            for fd in ready:
                p = waiting.pop(fd)
                if os.read(fd, 3) != b"up\n":
                    raise bl.StepFailed(f"a session failed (exit {p.wait()})")
        up = time.perf_counter() - t0
        time.sleep(1)  # let the servers settle before measuring memory
        result = {"sessions": k, "all_up_s": up,
                  "mem_per_session_kb": (before - mem_available()) / k / 1024}
        if server_pid:
            rss, threads = proc_status(server_pid)
            result.update(rss_mb=rss / 2**20, rss_before_mb=rss0[0] / 2**20,
                          threads=threads, threads_before=rss0[1])
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    if count_sleeps:
        deadline = time.time() + 120
        while count_sleeps() > 0:
            if time.time() > deadline:
                raise bl.StepFailed("commands of killed sessions still running after 120 s")
            time.sleep(0.5)
    return result


class Node:
    """spawngrid serve on a fresh data dir with user bench (key registered) and a base name."""

    def __init__(self, sg, mnt, key, sessions=0, log=None, config=""):
        """`log`: a SPAWNGRID_LOG filter whose lines go to MNT/node.log (default: warnings,
        dropped); `config`: more lines for the node's config file."""
        self.sg, self.mnt, self.key, self.proc = sg, mnt, key, None
        self.sessions, self.log, self.config = sessions, log, config
        self.data = os.path.join(mnt, "data")
        self.home = os.path.join(mnt, "home")
        os.makedirs(self.home, exist_ok=True)

    def start(self, root=None):
        """Starts the node, its `base` imported from `root` (default: the busybox tree)."""
        sg = self.sg
        root = root or bl.run([os.path.join(bl.REPO, "scripts/rootfs.sh"), "busybox"],
                              600)[1].strip()
        bl.run([sg, "lib", "--data", self.data, "--owner", USER, "import", "base", root], 600)
        subprocess.run([sg, "user", "--data", self.data, "add", USER, "--password-stdin"],
                       input=PASSWORD + "\n", text=True, check=True, capture_output=True)
        bl.run([sg, "user", "--data", self.data, "key", USER, "add", self.key + ".pub"], 60)
        # The sessions measure holds that many SSH sessions of one user at once.
        cfg = os.path.join(self.mnt, "node.toml")
        with open(cfg, "w") as f:
            f.write(f"[exec]\nmax_per_user = {self.sessions + 16}\n{self.config}")
        stderr = subprocess.DEVNULL
        if self.log:
            stderr = open(os.path.join(self.mnt, "node.log"), "a")
        self.proc = subprocess.Popen(
            [sg, "serve", "--config", cfg, "--data", self.data, "--listen", "127.0.0.1:0",
             "--ssh-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "SPAWNGRID_LOG": self.log or "warn"})
        if self.log:
            stderr.close()
        line = self.proc.stdout.readline()
        https = re.search(r"https://(\S+)", line)
        ssh = re.search(r"ssh://[\d.]+:(\d+)", line)
        if not (https and ssh):
            raise bl.StepFailed(f"node did not start: {line!r}")
        self.addr, self.ssh_port = https.group(1), int(ssh.group(1))
        self.client("login", "--password-stdin", stdin=PASSWORD + "\n")

    def client(self, cmd, *args, stdin=None):
        argv = [self.sg, cmd, "-h", self.addr, "-u", USER, *args]
        p = subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=300,
                           env={**os.environ, "HOME": self.home})
        if p.returncode != 0:
            raise bl.StepFailed(f"spawngrid {cmd} {' '.join(args)}: {bl.last_line(p.stderr)}")
        return p.stdout

    def cpu(self, env):
        """`spawngrid cpu ENV --` (its HOME set by the caller's env: see time_to_output)."""
        return ["env", f"HOME={self.home}", self.sg, "cpu", "-h", self.addr, "-u", USER, env,
                "--"]

    def ssh(self, env, control=None, spawn_from=None):
        login = f"{env}={spawn_from}" if spawn_from else env
        return ssh_argv(self.ssh_port, self.key, os.path.join(self.mnt, "known_hosts"),
                        f"{login}+{USER}@127.0.0.1", control)

    def close(self):
        if not self.proc:
            return
        self.proc.terminate()
        self.proc.wait(30)
        # Envs a failed round left behind.
        _, out, _ = bl.run([self.sg, "--json", "env", "--data", self.data, "ls"], 60,
                           check=False)
        for env in json.loads(out or "[]"):
            bl.run([self.sg, "env", "--data", self.data, "boom", env["env"]], 60, check=False)


class Sshd:
    """OpenSSH's sshd on a loopback port: its own config, host key and authorized key."""

    def __init__(self, mnt, key):
        self.mnt, self.key, self.proc = mnt, key, None
        self.dir = os.path.join(mnt, "sshd")

    def start(self):
        reason = bl.ensure_tool("/usr/sbin/sshd", "openssh-server")
        if reason:
            raise bl.StepFailed(reason)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)
        host_key = os.path.join(self.dir, "host_ed25519")
        bl.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], 30)
        auth = os.path.join(self.dir, "authorized_keys")
        shutil.copy(self.key + ".pub", auth)
        os.chmod(auth, 0o600)
        self.port = free_port()
        conf = os.path.join(self.dir, "sshd_config")
        with open(conf, "w") as f:
            f.write(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                    f"AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "UsePAM no\nPidFile none\nStrictModes no\nPrintMotd no\n"
                    "MaxStartups 10000\nSubsystem sftp /usr/lib/openssh/sftp-server\n")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        argv = self.ssh()
        for _ in range(100):
            if subprocess.run(argv + ["true"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise bl.StepFailed("sshd did not accept a login")

    def ssh(self, control=None):
        return ssh_argv(self.port, self.key, os.path.join(self.dir, "known_hosts"),
                        "root@127.0.0.1", control)

    def close(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(30)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = bl.arg_parser(__doc__)
    ap.add_argument("--n", type=int, default=30, help="rounds of each measurement")
    ap.add_argument("--sessions", type=int, default=200,
                    help="concurrent sessions to hold (0: skip)")
    ap.add_argument("--scp-mb", type=int, default=100, help="size of the scp file (0: skip)")
    ap.add_argument("--peers", default="sshd")
    ap.add_argument("--host-key", help="the node's `[ssh] host_key` (ecdsa, ed25519; default: "
                    "none in its config, the binary's default)")
    ap.add_argument("--baseline", help="another spawngrid binary (e.g. main's) whose spawn "
                    "measures run interleaved with this one's, round by round")
    bl.output_arg(ap, "node")
    a = ap.parse_args()
    peers = bl.subset(ap, a.peers, ["sshd"], "peer")
    bl.exit_on_sigterm()
    results = {}
    with bl.fresh_tmpfs("sg-bench-node-", "2g") as mnt:
        key = os.path.join(mnt, "id_ed25519")
        bl.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], 30)
        config = f'[ssh]\nhost_key = "{a.host_key}"\n' if a.host_key else ""
        node = Node(a.spawngrid, mnt, key, a.sessions, config=config)
        try:
            bl.log("starting the node")
            node.start()
            baseline = None
            if a.baseline:
                baseline = Node(a.baseline, os.path.join(mnt, "baseline"), key, a.sessions)
                bl.log("starting the baseline node")
                baseline.start()
            rounds = {"spawngrid": {}, "baseline": {}}
            for i in range(a.n):
                spawn_round(node, f"s{i}", rounds["spawngrid"])
                if baseline:
                    spawn_round(baseline, f"b{i}", rounds["baseline"], at_login=False)
            if baseline:
                baseline.close()
                results["baseline"] = {k: bl.summary_ms(v) for k, v in rounds["baseline"].items()}
            node.client("spawn", "base")
            bl.log("spawngrid exec")
            results["spawngrid"] = {
                **{k: bl.summary_ms(v) for k, v in rounds["spawngrid"].items()},
                "exec_new_connection": bl.summary_ms(exec_latencies(node.ssh("base"), a.n)),
                "exec_open_connection": bl.summary_ms(with_master(
                    lambda c: node.ssh("base", os.path.join(mnt, "cm-sg") if c else None), a.n)),
            }
            if a.sessions:
                bl.log(f"spawngrid: {a.sessions} concurrent sessions")
                results["spawngrid"]["sessions"] = hold_sessions(
                    node.ssh("base"), a.sessions, node.proc.pid,
                    lambda: int(subprocess.run(node.ssh("base") + ["ps -o args | grep -c '^sleep 600'"],
                                               capture_output=True, text=True).stdout or 0))
            node.client("boom", "base")
            if a.scp_mb:
                bl.log(f"spawngrid: scp of {a.scp_mb} MB")
                node.client("spawn", "base", "--as", "files", "--disk")
                results["spawngrid"]["scp"] = scp_times(
                    node.ssh("files"), f"files+{USER}@127.0.0.1:/root/f.bin", mnt, a.scp_mb)
                node.client("boom", "files")
        except (bl.StepFailed, OSError, subprocess.SubprocessError) as e:
            bl.log(f"spawngrid: {e}")
            results["spawngrid"] = {"error": str(e)}
        finally:
            node.close()
        if "sshd" in peers:
            sshd = Sshd(mnt, key)
            try:
                bl.log("OpenSSH sshd exec")
                sshd.start()
                results["sshd"] = {
                    "exec_new_connection": bl.summary_ms(exec_latencies(sshd.ssh(), a.n)),
                    "exec_open_connection": bl.summary_ms(with_master(
                        lambda c: sshd.ssh(os.path.join(mnt, "cm-sshd") if c else None), a.n)),
                }
                if a.sessions:
                    bl.log(f"sshd: {a.sessions} concurrent sessions")
                    results["sshd"]["sessions"] = hold_sessions(sshd.ssh(), a.sessions)
                if a.scp_mb:
                    bl.log(f"sshd: scp of {a.scp_mb} MB")
                    os.makedirs(os.path.join(mnt, "sshd-files"), exist_ok=True)
                    results["sshd"]["scp"] = scp_times(
                        sshd.ssh(), f"root@127.0.0.1:{mnt}/sshd-files/f.bin", mnt, a.scp_mb)
            except (bl.StepFailed, OSError, subprocess.SubprocessError) as e:
                bl.log(f"sshd: {e}")
                results["sshd"] = {"error": str(e)}
            finally:
                sshd.close()
    rows = [["server", "measure", "n", "p50 ms", "p99 ms", "min ms"]]
    for server, r in results.items():
        if "error" in r:
            rows.append([server, "failed: " + r["error"]])
            continue
        if "scp" in r:
            for way in ("up", "down"):
                s = r["scp"][way]
                rows.append([server, f"scp {r['scp']['mb']} MB {way}", str(s["n"]),
                             bl.fmt(s["p50"], ".1f"), bl.fmt(s["p99"], ".1f"),
                             bl.fmt(s["min"], ".1f")])
        for measure, s in r.items():
            if measure not in ("sessions", "scp"):
                rows.append([server, measure.replace("_", " "), str(s["n"]),
                             bl.fmt(s["p50"], ".1f"), bl.fmt(s["p99"], ".1f"),
                             bl.fmt(s["min"], ".1f")])
    print("\n".join(bl.table_lines(rows)))
    rows = [["server", "sessions", "all up s", "host KB/session", "daemon RSS MB", "threads"]]
    for server, r in results.items():
        s = r.get("sessions")
        if s:
            rss = f"{s['rss_before_mb']:.0f} -> {s['rss_mb']:.0f}" if "rss_mb" in s else "-"
            thr = f"{s['threads_before']} -> {s['threads']}" if "threads" in s else "-"
            rows.append([server, str(s["sessions"]), bl.fmt(s["all_up_s"], ".2f"),
                         bl.fmt(s["mem_per_session_kb"], ".0f"), rss, thr])
    if len(rows) > 1:
        print()
        print("\n".join(bl.table_lines(rows)))
    doc = {"bench": "node", "date": bl.utc_now(), "host": bl.host_info("tmpfs"),
           "ssh_client": bl.version_of(["ssh", "-V"]),
           "note": "key logins; sshd runs `true` on the host as root, spawngrid inside an env",
           "results": results}
    bl.save_result("node", a.output, doc)


if __name__ == "__main__":
    main()
