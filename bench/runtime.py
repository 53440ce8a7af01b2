#!/usr/bin/env python3
# bench/runtime.py: the environment-runtime benchmark (issue 4). Measures `spawngrid env ...`
# (spawn, exec, save, boom) on a ~300 MB snapshot, and runs bubblewrap, crun, systemd-nspawn,
# LXC and podman on the same root filesystem side by side; everything on a fresh tmpfs. Prints
# one report and writes JSON to bench/results/runtime-<date>.json. Each peer's commands are in
# its module under bench/peers/ (bwrap, crun, nspawn, lxc, podman; shared parts in base). Run
# as root:
#
#   python3 bench/runtime.py [--spawngrid target/release/spawngrid] [--n 50] [--repeat 5]
#                            [--density 100] [--peers bwrap,crun,nspawn,lxc,podman]
#                            [--sections latency,attach,save,session,density]
#
# Measured (see bench/README.md, "Runtime benchmark"):
# - latency: N rounds; each round runs every variant once (round robin, so load from other
#   work on the machine spreads over all of them): spawngrid `env spawn` + `env exec ENV --
#   true` + `env boom` (from the snapshot name: snapfs lower; and from the plain directory),
#   and each peer's "start a container on this rootfs, run `true`, tear down" command;
# - attach: `env exec ENV -- true` in one running env, back to back and after 0.5 s idle, and
#   `crun exec`, `lxc-attach`, `podman exec` into a running container;
# - save: `env save` after 1 changed file, 10 MB and 100 MB of new (random) bytes;
# - session: dpkg -i of make + python3-minimal (or --session-packages; + dependencies, from a
#   local .deb cache) inside
#   an env, then `env save`, against `podman commit`, `lxc-snapshot`, `lxc-copy` and a bare
#   `tar` of the upper directory, for the same changes;
# - density: K idle envs: host MemAvailable delta / K and the envs' memory cgroups, then boom.
# All spawngrid times are wall times of the CLI commands (process start, library/catalog open
# included); the JSON also has spawngrid's own in-process spawn and save times.
import json
import os
import platform
import re
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (MB, REPO, StepFailed, arg_parser, comma_list, du_bytes,  # noqa: E402
                      ensure_tool, exit_on_sigterm, fmt, host_info, log, mount_tmpfs,
                      output_arg, remove_dir, result_path, rootfs_tree, run, summary_ms,
                      table_lines, tree_stats, unmount_tree, utc_now, version_of, write_json)
from peers import podman  # noqa: E402
from peers.base import MS_SHARED, PeerNs, Unavailable, Variant, cgroup_v2, mount  # noqa: E402
from peers.bwrap import Bwrap  # noqa: E402
from peers.crun import Crun, attach_crun  # noqa: E402
from peers.lxc import Lxc, attach_lxc, session_lxc  # noqa: E402
from peers.nspawn import Nspawn  # noqa: E402
from peers.podman import Podman, attach_podman, session_podman  # noqa: E402

ALL_PEERS = ["bwrap", "crun", "nspawn", "lxc", "podman"]
ALL_SECTIONS = ["api", "latency", "attach", "save", "session", "density"]
SNAP = "bench-base"                      # the ~300 MB snapshot's name
DEFAULT_SESSION_DEBS = "make,python3-minimal"
DEB_CACHE = "/var/cache/spawngrid/debs"


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def os_codename(root):
    try:
        with open(os.path.join(root, "etc/os-release")) as f:
            for line in f:
                if line.startswith("VERSION_CODENAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def json_field(out, key):
    """out[key] of a command's --json output, or None."""
    try:
        return json.loads(out)[key]
    except (ValueError, KeyError):
        return None


# -- the bench --------------------------------------------------------------------------------

class Bench:
    def __init__(self, a, w):
        self.a = a
        self.w = w                                   # the tmpfs
        self.sg = os.path.join(w, "bin", "spawngrid")  # a copy: stable while others rebuild
        self.data = os.path.join(w, "sg")
        self.root = os.path.join(w, "rootfs", "root")  # the rootfs every tool runs on
        self.peers_dir = os.path.join(w, "peers")       # a shared tmpfs (see PeerNs)
        self.ns = PeerNs(self.peers_dir)
        self.notes = {}
        self.t = a.timeout
        self.debs = None

    # spawngrid CLI
    def env(self, *args, **kw):
        return run([self.sg, "env", "--data", self.data, *args], self.t, **kw)

    def lib(self, *args, **kw):
        return run([self.sg, "lib", "--data", self.data, *args], self.t, **kw)

    def spawn(self, env, source=SNAP, disk=False, size=None):
        """`env spawn`: (wall seconds, the command's own in-process seconds or None)."""
        args = ["--json", "spawn", source, "--as", env] + (["--disk"] if disk else []) \
            + (["--size", size] if size else [])
        dt, out, _ = self.env(*args, what=f"spawngrid env spawn {source} --as {env}")
        ms = json_field(out, "ms")
        return dt, None if ms is None else ms / 1e3

    def exec_(self, env, *cmd, **kw):
        return self.env("exec", env, "--", *cmd, what=f"spawngrid env exec {env} -- {' '.join(cmd)}",
                        **kw)

    def boom(self, env):
        return self.env("boom", env, what=f"spawngrid env boom {env}")[0]

    def save(self, env, name):
        """`env save`: (wall seconds, the command's own in-process seconds or None)."""
        dt, out, _ = self.env("--json", "save", env, name, what=f"spawngrid env save {env}")
        return dt, json_field(out, "seconds")

    def cycle(self, env, source=SNAP):
        """spawn, `exec true`, boom (also if exec fails): their seconds, first_cmd and total."""
        t_spawn, inproc = self.spawn(env, source)
        try:
            t_exec = self.exec_(env, "true")[0]
        finally:
            t_boom = self.boom(env)
        return {"spawn": t_spawn, "spawn_inproc": inproc, "exec": t_exec, "boom": t_boom,
                "first_cmd": t_spawn + t_exec, "total": t_spawn + t_exec + t_boom}

    def envs(self):
        _, out, _ = self.env("--json", "ls", what="spawngrid env ls --json")
        return json.loads(out)

    def upper(self, env):
        return os.path.join(self.data, "envs", env, "rw", "upper")

    # -- setup ----------------------------------------------------------------------------

    def prepare(self, base):
        os.makedirs(os.path.dirname(self.sg))
        shutil.copy2(self.a.spawngrid, self.sg)
        log(f"warming the page cache and copying {base} onto the tmpfs")
        run(f"tar -C {shlex.quote(base)} -cf - . | cat > /dev/null", self.t)
        os.makedirs(os.path.dirname(self.root))
        run(["cp", "-a", base, self.root], self.t)
        pad = os.path.join(self.root, "var", "cache", "bench-pad.bin")
        log(f"adding a {self.a.pad_mb} MB pseudo-random pad file ({pad[len(self.root):]})")
        rng = random.Random(4)
        left = int(self.a.pad_mb * MB)
        with open(pad, "wb") as f:
            while left > 0:
                n = min(left, 1 << 20)
                f.write(rng.randbytes(n))
                left -= n
        size, entries = tree_stats(self.root)
        info = {"base": base, "logical_bytes": size, "entries": entries,
                "pad_bytes": int(self.a.pad_mb * MB)}
        log(f"importing the rootfs ({size / MB:.1f} MB, {entries} entries) as {SNAP}")
        dt, out, _ = self.lib("--json", "import", SNAP, self.root, what=f"lib import {SNAP}")
        info["import_s"] = dt
        try:
            info["import"] = json.loads(out)
        except ValueError:
            info["import"] = out.strip()
        # peers' shared tmpfs (PeerNs)
        os.makedirs(self.peers_dir)
        mount("peers", self.peers_dir, "tmpfs", 0, f"size={self.a.tmpfs_size},mode=0755")
        mount(None, self.peers_dir, None, MS_SHARED)
        # Before any spawn: the holder's namespace copies the host's mounts when it starts, and
        # a copy of the snapfs mount or of an env's mounts would keep them alive.
        self.ns.start()
        return info

    def prepare_debs(self):
        """Downloads the session packages and what they need beyond the rootfs (once, into
        /var/cache/spawngrid/debs/<codename>/<packages>/) and lists dpkg -i passes in Pre-Depends order."""
        cn, host_cn = os_codename(self.root), os_codename("/")
        if not cn or cn != host_cn:
            raise StepFailed(f"the host's apt suite ({host_cn}) differs from the rootfs' ({cn}): "
                             "cannot fetch matching .debs with apt-get download")
        self.requested_debs = comma_list(self.a.session_packages)
        cache = os.path.join(DEB_CACHE, cn, "+".join(self.requested_debs))
        manifest = os.path.join(cache, "manifest.json")
        m = None
        if os.path.exists(manifest):
            with open(manifest) as f:
                m = json.load(f)
            if (m.get("requested") != self.requested_debs or m.get("rootfs") != self.a.base_path
                    or not all(os.path.exists(os.path.join(cache, x)) for x in m["files"])):
                m = None
        if m is None:
            installed = set()
            with open(os.path.join(self.root, "var/lib/dpkg/status")) as f:
                pkg = None
                for line in f:
                    if line.startswith("Package:"):
                        pkg = line.split(":", 1)[1].strip()
                    elif line.startswith("Status:") and line.strip().endswith(" installed"):
                        installed.add(pkg)
            _, out, _ = run(["apt-cache", "depends", "--recurse", "--no-recommends",
                             "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
                             "--no-enhances", *self.requested_debs], 300)
            closure = sorted({l.split(":")[0] for l in out.splitlines()
                              if l and not l[0].isspace() and not l.startswith("<")})
            need = [p for p in closure if p not in installed]
            log(f"apt-get download {' '.join(need)} into {cache}")
            os.makedirs(cache, exist_ok=True)
            for f in os.listdir(cache):
                if f.endswith(".deb"):
                    os.unlink(os.path.join(cache, f))
            dl = ["apt-get", "download", "-o", "APT::Sandbox::User=root", *need]
            try:
                run(dl, 900, cwd=cache)
            except StepFailed:
                run(["apt-get", "update", "-qq"], 900)
                run(dl, 900, cwd=cache)
            files = sorted(f for f in os.listdir(cache) if f.endswith(".deb"))
            m = {"requested": self.requested_debs, "rootfs": self.a.base_path, "packages": need,
                 "files": files}
            with open(manifest, "w") as f:
                json.dump(m, f, indent=2)
        # dpkg -i passes: a package goes after the packages of the set it Pre-Depends on
        pre = {}
        for fn in m["files"]:
            _, out, _ = run(["dpkg-deb", "-f", os.path.join(cache, fn), "Package", "Pre-Depends"],
                            60)
            fields = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
            name = fields["Package"].strip()
            deps = {alt.strip().split()[0].split(":")[0]
                    for d in fields.get("Pre-Depends", "").split(",") if d.strip()
                    for alt in d.split("|")[:1]}
            pre[fn] = (name, deps)
        names = {v[0] for v in pre.values()}
        passes, done = [], set()
        left = dict(pre)
        while left:
            ready = [fn for fn, (n, deps) in left.items() if not (deps & names) - done]
            if not ready:
                ready = list(left)
            passes.append(sorted(ready))
            for fn in ready:
                done.add(left.pop(fn)[0])
        d = os.path.join(self.w, "debs")
        os.makedirs(d)
        for fn in m["files"]:
            shutil.copy2(os.path.join(cache, fn), d)
        tarball = os.path.join(self.w, "debs.tar")
        run(["tar", "-C", d, "-cf", tarball, "."], 60)
        self.debs = {"dir": d, "tar": tarball, "passes": passes, "packages": m["packages"],
                     "bytes": sum(os.path.getsize(os.path.join(d, f)) for f in m["files"])}
        return self.debs

    def install_script(self, dir_):
        steps = [f"dpkg -i {' '.join(f'{dir_}/{fn}' for fn in p)} >/dev/null"
                 for p in self.debs["passes"]]
        check = [f"dpkg -s {p} | grep -q '^Status: install ok installed'"
                 for p in self.requested_debs]
        return " && ".join(["set -e", "export PATH=/usr/sbin:/usr/bin:/sbin:/bin"] + steps + check)

    # -- variants for the latency rounds ------------------------------------------------------

    def variants(self, peers, unavailable):
        vs = [SgVariant(self, "spawngrid", SNAP, "snapshot (snapfs lower), tmpfs upper"),
              SgVariant(self, "spawngrid-dir", self.root, "directory lower (id-mapped), tmpfs upper")]
        for p in peers:
            if p in unavailable:
                vs.append(Unavailable(p, unavailable[p]))
                continue
            if p == "bwrap":
                vs.append(Bwrap(self, overlay=False))
                vs.append(Bwrap(self, overlay=True))
            elif p == "crun":
                vs.append(Crun(self))
            elif p == "nspawn":
                vs.append(Nspawn(self))
            elif p == "lxc":
                vs.append(Lxc(self))
            elif p == "podman":
                vs.append(Podman(self, image=False))
                vs.append(Podman(self, image=True))
        return vs


class SgVariant(Variant):
    kind = "spawngrid"

    def __init__(self, b, name, source, layer):
        super().__init__(b, name, layer)
        self.source = source

    def sample(self, i):
        return self.b.cycle(f"lat-{'n' if self.source == SNAP else 'd'}-{i}", self.source)


# -- sections ---------------------------------------------------------------------------------

def section_latency(b, peers, unavailable):
    a = b.a
    log("latency: warm-up (the first spawn mounts the snapshot with snapfs)")
    first = {}
    for i in range(3):
        c = b.cycle(f"warm-{i}")
        if i == 0:
            first = {"spawn_s": c["spawn"], "spawn_inproc_s": c["spawn_inproc"],
                     "exec_s": c["exec"], "boom_s": c["boom"]}
    vs = b.variants(peers, unavailable)
    for v in vs:
        if v.error:
            continue
        try:
            log(f"latency: setting up {v.name}")
            v.setup()
            for i in range(2):
                v.sample(f"w{i}")
        except StepFailed as e:
            v.error = f"failed: {e}"
            log(f"{v.name} {v.error}")
    for i in range(a.n):
        if i % 10 == 0:
            log(f"latency: round {i + 1}/{a.n}")
        for v in vs:
            if v.error:
                continue
            try:
                v.samples.append(v.sample(i))
            except StepFailed as e:
                v.error = f"failed in round {i + 1}: {e}"
                log(f"{v.name} {v.error}")
    for v in vs:
        try:
            v.teardown()
        except StepFailed as e:
            v.notes.append(f"teardown: {e}")
    # Diagnostic: every `env spawn NAME` runs `spawngrid lib mount SCORE DIR --uid-offset N` as a
    # child (which opens the library and reads the snapshot before it sees the mount is live).
    remount = None
    mdir = os.path.join(b.data, "mounts")
    for fn in sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []:
        if not fn.endswith(".json"):
            continue
        try:
            with open(os.path.join(mdir, fn)) as f:
                r = json.load(f)
            argv = [b.sg, "lib", "--data", b.data, "mount", r["score"], r["dir"],
                    "--uid-offset", str(r["id_offset"])]
            run(argv, 120)
            remount = summary_ms([run(argv, 120)[0] for _ in range(10)])
            remount["command"] = "spawngrid lib mount SCORE DIR --uid-offset N (already mounted)"
        except (OSError, ValueError, KeyError, StepFailed) as e:
            remount = {"error": str(e)}
        break
    rows = []
    for v in vs:
        row = {"tool": v.name, "kind": v.kind, "write_layer": v.layer, "notes": v.notes}
        if v.error and not v.samples:
            row["status"] = v.error
        else:
            row["status"] = v.error or "ok"
            keys = v.samples[0].keys()
            for k in keys:
                vals = [s[k] for s in v.samples if s.get(k) is not None]
                row[k] = summary_ms(vals)
        rows.append(row)
    return {"first_spawn": first, "rows": rows, "lib_mount_reuse": remount}


def section_api(n, timeout):
    """Spawn-to-first-command through the runtime API, in-process (what the node does): the
    runtime's latency test (crates/runtime/tests/latency.rs, busybox lower, id-mapped), run
    with SG_LATENCY_N=n; its `latency WHAT: p50 A ms, p99 B ms over N` lines, parsed."""
    _, out, _ = run(["cargo", "test", "--release", "-q", "-p", "spawngrid-runtime", "--test",
                     "latency", "--", "--nocapture"], timeout, cwd=REPO,
                    env={**os.environ, "SG_LATENCY_N": str(n)}, what="the runtime latency test")
    rows = []
    for m in re.finditer(r"^latency (.+): p50 ([\d.]+) ms, p99 ([\d.]+) ms over (\d+)$", out,
                         re.M):
        rows.append({"what": m.group(1), "p50": float(m.group(2)), "p99": float(m.group(3)),
                     "n": int(m.group(4))})
    if not rows:
        raise StepFailed("the runtime latency test printed no figures")
    return rows


def attach_times(a, one):
    """One attach untimed, then a.n back to back and a.idle_samples after 0.5 s idle each."""
    one()
    warm = [one() for _ in range(a.n)]
    idle = []
    for _ in range(a.idle_samples):
        time.sleep(0.5)
        idle.append(one())
    return {"warm": summary_ms(warm), "after_idle_0_5s": summary_ms(idle)}


ATTACH = {"crun": ("crun exec", attach_crun), "lxc": ("lxc-attach", attach_lxc),
          "podman": ("podman exec", attach_podman)}


def section_attach(b, peers, unavailable):
    env = "attach"
    b.spawn(env)
    try:
        res = attach_times(b.a, lambda: b.exec_(env, "true")[0])
    finally:
        b.boom(env)
    res["peers"] = {}
    # The peers' attach into a running container (`sleep infinity`), back to back.
    sleeper = ["sh", "-c", "exec sleep infinity </dev/null >/dev/null 2>&1"]
    for p in peers:
        if p not in ATTACH:
            continue          # no attach command for a running bwrap / nspawn without machined
        if p in unavailable:
            res["peers"][p] = {"status": unavailable[p]}
            continue
        name, start = ATTACH[p]
        stop = None
        try:
            one, stop = start(b, sleeper)
            res["peers"][p] = {"status": "ok", "name": name, **attach_times(b.a, one)}
        except StepFailed as e:
            res["peers"][p] = {"status": f"failed: {e}", "name": name}
            log(f"attach {name}: {e}")
        finally:
            if stop:
                stop()
    return res


SAVE_CASES = [
    ("1 changed file", "echo spawngrid-bench >> /etc/issue", False),
    ("10 MB new", "head -c 10000000 /dev/urandom > /root/changes.bin", False),
    ("100 MB new", "head -c 100000000 /dev/urandom > /root/changes.bin", False),
    ("1 changed file", "echo spawngrid-bench >> /etc/issue", True),
    ("10 MB new", "head -c 10000000 /dev/urandom > /root/changes.bin", True),
    ("100 MB new", "head -c 100000000 /dev/urandom > /root/changes.bin", True),
]


def section_save(b):
    rows = []
    for ci, (label, cmd, disk) in enumerate(SAVE_CASES):
        layer = "disk (1 GiB ext4 image)" if disk else "tmpfs (100 MiB)"
        row = {"case": label, "write_layer": layer, "change_cmd": cmd}
        walls, inproc, booms, uppers = [], [], [], []
        try:
            for r in range(b.a.repeat):
                env = f"save-{ci}-{r}"
                b.spawn(env, disk=disk)
                try:
                    b.exec_(env, "sh", "-c", cmd)
                    uppers.append(du_bytes(b.upper(env)))
                    dt, ip = b.save(env, f"saved-{ci}-{r}")
                    walls.append(dt)
                    if ip is not None:
                        inproc.append(ip)
                finally:
                    booms.append(b.boom(env))
            row.update(status="ok", save=summary_ms(walls), save_inproc=summary_ms(inproc),
                       boom_after=summary_ms(booms), upper_bytes=statistics.median(uppers))
        except StepFailed as e:
            row["status"] = f"failed: {e}"
            log(f"save {label} on {layer}: {e}")
        rows.append(row)
        if row["status"] == "ok":
            log(f"save {label} ({layer}): p50 {row['save']['p50']:.1f} ms")
    return rows


def session_spawngrid(b, debs, add):
    """dpkg -i in an env, `env save`, and for comparison a bare tar of the env's upper."""
    for r in range(b.a.repeat):
        env = f"sess-{r}"
        b.spawn(env, size=b.a.session_size)
        try:
            with open(debs["tar"], "rb") as f:
                b.exec_(env, "sh", "-c", "mkdir -p /tmp/debs && tar -x -C /tmp/debs", stdin=f)
            b.exec_(env, "sh", "-c", b.install_script("/tmp/debs") + " && rm -rf /tmp/debs")
            up = b.upper(env)
            add("spawngrid save", "upper_bytes", du_bytes(up))
            dt, inproc = b.save(env, f"sess-saved-{r}")
            add("spawngrid save", "s", dt)
            if inproc is not None:
                add("spawngrid save", "inproc_s", inproc)
            out_tar = os.path.join(b.w, "upper.tar")
            dt, _, _ = run(["tar", "-C", up, "--xattrs", "--xattrs-include=*", "--acls",
                            "--numeric-owner", "-cf", out_tar, "."], b.t)
            add("tar of the upper", "s", dt)
            add("tar of the upper", "bytes", os.path.getsize(out_tar))
            os.unlink(out_tar)
        finally:
            b.boom(env)


# (label in logs, peer it needs or None, its row, the function: returns None, or why it could
# not run)
SESSION_CAPTURES = [("spawngrid", None, "spawngrid save", session_spawngrid),
                    ("podman", "podman", "podman commit", session_podman),
                    ("lxc", "lxc", "lxc-snapshot", session_lxc)]


def section_session(b, peers, unavailable):
    debs = b.prepare_debs()
    res = {"debs": {k: debs[k] for k in ("packages", "passes", "bytes")}, "rows": {}}
    rows = res["rows"]

    def add(tool, key, val):
        rows.setdefault(tool, {}).setdefault(key, []).append(val)

    for label, peer, tool, capture in SESSION_CAPTURES:
        if peer is not None and peer not in peers:
            continue
        if peer in unavailable:
            rows[tool] = {"error": unavailable[peer]}
            continue
        try:
            why = capture(b, debs, add)
            if why:
                rows[tool] = {"error": why}
        except StepFailed as e:
            rows.setdefault(tool, {})["error"] = f"failed: {e}"
            log(f"session {label}: {e}")
    for tool, v in rows.items():
        if v.get("s"):
            v["all_s"] = v["s"]
            v["first_ms"] = v["s"][0] * 1e3
            v["median_ms"] = statistics.median(v["s"]) * 1e3
            v["median_later_ms"] = (statistics.median(v["s"][1:]) * 1e3
                                    if len(v["s"]) > 1 else None)
            if v.get("inproc_s"):
                v["inproc_first_ms"] = v["inproc_s"][0] * 1e3
                v["inproc_median_ms"] = statistics.median(v["inproc_s"]) * 1e3
    return res


def cgroup_mem(data, env):
    if cgroup_v2():
        usage_file, keys = "memory.current", ("anon", "file", "shmem", "kernel")
    else:
        usage_file, keys = "memory.usage_in_bytes", ("rss", "cache", "shmem", "mapped_file")
    try:
        # The env's cgroup as its state records it (`spawngrid-<node id>/<env>`).
        with open(os.path.join(data, "envs", env, "state.json")) as f:
            dirs = json.load(f)["cgroups"]
        d = next(x for x in dirs if os.path.exists(os.path.join(x, usage_file)))
        with open(os.path.join(d, usage_file)) as f:
            usage = int(f.read())
        st = {}
        with open(os.path.join(d, "memory.stat")) as f:
            for line in f:
                k, v = line.split()
                if k in keys:
                    st[k] = int(v)
        return usage, st
    except (OSError, KeyError, StopIteration):
        return None, {}


def pss_of(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def section_density(b):
    k = b.a.density
    run(["sync"], 120)
    time.sleep(1)
    m0 = meminfo()
    spawns, inprocs = [], []
    names = [f"dens-{i:04d}" for i in range(k)]
    t0 = time.perf_counter()
    res = {"k": k}
    try:
        for i, n in enumerate(names):
            dt, ip = b.spawn(n)
            spawns.append(dt)
            if ip is not None:
                inprocs.append(ip)
            if (i + 1) % 100 == 0:
                log(f"density: {i + 1}/{k} envs")
        res["spawn_all_s"] = time.perf_counter() - t0
        time.sleep(2)
        m1 = meminfo()
        envs = {e["env"]: e for e in b.envs()}
        usage_sum, stat_sum, pss_sum, pss_n = 0, {}, 0, 0
        for n in names:
            u, st = cgroup_mem(b.data, n)
            usage_sum += u or 0
            for kk, vv in st.items():
                stat_sum[kk] = stat_sum.get(kk, 0) + vv
            p = pss_of(envs.get(n, {}).get("init_pid"))
            if p is not None:
                pss_sum += p
                pss_n += 1
        t_ls = run([b.sg, "env", "--data", b.data, "--json", "ls"], b.t)[0]
        res.update({
            "running": sum(1 for n in names if envs.get(n, {}).get("running")),
            "spawn": summary_ms(spawns), "spawn_inproc": summary_ms(inprocs),
            "spawn_first10_p50_ms": statistics.median(spawns[:10]) * 1e3,
            "spawn_last10_p50_ms": statistics.median(spawns[-10:]) * 1e3,
            "memavailable_delta_per_env_bytes": (m0["MemAvailable"] - m1["MemAvailable"]) / k,
            "memfree_delta_per_env_bytes": (m0["MemFree"] - m1["MemFree"]) / k,
            "meminfo_delta_per_env_bytes": {x: (m1[x] - m0[x]) / k for x in (
                "Shmem", "Slab", "SUnreclaim", "KernelStack", "PageTables", "AnonPages",
                "Cached")},
            # Not reclaimable: what idle envs cost the host for sure (MemAvailable also moves with
            # other work, DAMON reclaim and free page reporting in a VM).
            "unreclaimable_delta_per_env_bytes": sum(m1[x] - m0[x] for x in (
                "AnonPages", "Shmem", "SUnreclaim", "KernelStack", "PageTables")) / k,
            "cgroup_usage_per_env_bytes": usage_sum / k,
            "cgroup_stat_per_env_bytes": {kk: vv / k for kk, vv in stat_sum.items()},
            "init_pss_per_env_bytes": pss_sum / pss_n if pss_n else None,
            "env_ls_s": t_ls,
        })
    finally:
        booms = []
        t0 = time.perf_counter()
        for n in names:
            if os.path.isdir(os.path.join(b.data, "envs", n)):
                booms.append(b.boom(n))
        res["boom_all_s"] = time.perf_counter() - t0
        res["boom"] = summary_ms(booms)
    time.sleep(2)
    m2 = meminfo()
    res["memavailable_after_boom_vs_before_bytes"] = m2["MemAvailable"] - m0["MemAvailable"]
    return res


# -- cleanup ----------------------------------------------------------------------------------

def cleanup(b, mnt, cgroups_before):
    if b is not None:
        if shutil.which("crun") and b.ns.proc:
            try:
                _, out, _ = run(["crun", "list", "-q"], 60, preexec_fn=b.ns.preexec(),
                                check=False)
                for c in out.split():
                    if c.startswith(f"bench-{os.getpid()}-"):
                        run(["crun", "delete", "-f", c], 60, preexec_fn=b.ns.preexec(),
                            check=False)
            except StepFailed:
                pass
        if b.ns.proc and shutil.which("podman"):
            try:
                run(podman.podman(b, "rm", "-af", "-t", "0"), 120, preexec_fn=b.ns.preexec(), check=False)
            except StepFailed:
                pass
        b.ns.stop()
    if b is not None and os.path.exists(b.sg):
        try:
            for e in b.envs():
                try:
                    b.boom(e["env"])
                except StepFailed as ex:
                    log(f"cleanup: {ex}")
        except (StepFailed, ValueError) as ex:
            log(f"cleanup: env ls: {ex}")
        mdir = os.path.join(b.data, "mounts")
        if os.path.isdir(mdir):
            for s in os.listdir(mdir):
                m = os.path.join(mdir, s, "root")
                if os.path.ismount(m):
                    try:
                        b.lib("umount", m)
                    except StepFailed as ex:
                        log(f"cleanup: {ex}")
    unmount_tree(mnt)
    remove_dir(mnt)
    # peers' leftover empty cgroup directories that this run created
    for d in sorted(set(cgroup_dirs()) - cgroups_before, key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass


def cgroup_dirs():
    out = []
    for ctl in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", ctl)
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for name in os.listdir(top):
            if name.startswith(("lxc.", "libpod", "machine")):
                p = os.path.join(top, name)
                if os.path.isdir(p):
                    for r, ds, _ in os.walk(p):
                        out.extend(os.path.join(r, x) for x in ds)
                    out.append(p)
    return out


# -- report -----------------------------------------------------------------------------------

def p50_p99_mean(x):
    return [fmt(x["p50"]), fmt(x["p99"]), fmt(x["mean"])]


def report(doc):
    lines = []
    p = lines.append
    src = doc["rootfs"]
    p(f"runtime benchmark, {doc['date']}: rootfs {src['logical_bytes'] / MB:.1f} MB "
      f"({src['entries']} entries; debootstrap minbase + {src['pad_bytes'] / MB:.0f} MB pad), "
      f"{doc['host']['cpus']} CPUs, load {doc['host']['loadavg_start']} at start")
    p("times in ms; wall time of each command from Python (process start included); "
      "p99 is nearest-rank (with N=50 it is the maximum)")
    api = doc.get("api")
    if api:
        p("")
        p("through the runtime API, in-process (crates/runtime/tests/latency.rs; goal: "
          "spawn-to-first-command p50 <= 5 ms)")
        rows = [["what", "p50", "p99", "n"]]
        rows += [[r["what"], fmt(r["p50"], ".2f"), fmt(r["p99"], ".2f"), str(r["n"])]
                 for r in api]
        table(p, rows)
    lat = doc.get("latency")
    if lat:
        p("")
        p(f"start a container on the rootfs and run `true` (N={doc['n']}, round robin; "
          "ratio = p50 / spawngrid's p50: cycle = spawn+exec+boom, first = spawn+exec)")
        hdr = ["tool", "p50", "p99", "mean", "x cycle", "x first", "write layer"]
        rows = [hdr]
        sg = next((r for r in lat["rows"] if r["tool"] == "spawngrid" and "total" in r), None)
        for r in lat["rows"]:
            if "total" not in r:
                rows.append([r["tool"], r["status"]])
                continue
            t = r["total"]
            if r["kind"] == "spawngrid":
                rows.append([f"{r['tool']} spawn+exec+boom", *p50_p99_mean(t),
                             fmt(t["p50"] / sg["total"]["p50"], ".2f") if sg else "-",
                             "", r["write_layer"]])
                parts = [("first_cmd", "spawn+exec true (first command)"), ("spawn", "spawn"),
                         ("exec", "exec true (right after spawn)"), ("boom", "boom"),
                         ("spawn_inproc", "spawn, in-process")]
                for k, label in parts:
                    if r.get(k):
                        rows.append([f"  {label}", *p50_p99_mean(r[k]), "", "", ""])
            else:
                rows.append([r["tool"], *p50_p99_mean(t),
                             fmt(t["p50"] / sg["total"]["p50"], ".2f") if sg else "-",
                             fmt(t["p50"] / sg["first_cmd"]["p50"], ".2f") if sg else "-",
                             r["write_layer"]])
        table(p, rows)
        fs = lat.get("first_spawn")
        if fs:
            p(f"first spawn (mounts the snapshot): {fs['spawn_s'] * 1e3:.1f} ms")
        rm = lat.get("lib_mount_reuse")
        if rm and "p50" in rm:
            p(f"`lib mount` of the live snapshot (run by every spawn by name): p50 {rm['p50']:.1f} ms")
    at = doc.get("attach")
    if at:
        w, i = at["warm"], at["after_idle_0_5s"]
        p("")
        p(f"attach: `exec true` in a running env/container (N={w['n']} back to back; "
          f"after 0.5 s idle: N={i['n']}; x = p50 / spawngrid's p50)")
        rows = [["tool", "p50", "p99", "mean", "x", "idle p50", "idle max", "x idle"],
                ["spawngrid env exec", *p50_p99_mean(w), "1.00",
                 fmt(i["p50"]), fmt(i["max"]), "1.00"]]
        for peer, v in at.get("peers", {}).items():
            if v["status"] != "ok":
                rows.append([v.get("name", peer), v["status"]])
                continue
            x, y = v["warm"], v["after_idle_0_5s"]
            rows.append([v["name"], *p50_p99_mean(x),
                         fmt(x["p50"] / w["p50"], ".2f"), fmt(y["p50"]), fmt(y["max"]),
                         fmt(y["p50"] / i["p50"], ".2f")])
        table(p, rows)
    sv = doc.get("save")
    if sv:
        p("")
        p(f"save (`env save`, env running; new bytes are random; {doc['repeat']} runs, fresh env each)")
        rows = [["changes", "write layer", "p50", "max", "in-process p50", "upper MB"]]
        for r in sv:
            if r["status"] != "ok":
                rows.append([r["case"], r["write_layer"], r["status"]])
                continue
            rows.append([r["case"], r["write_layer"], fmt(r["save"]["p50"]), fmt(r["save"]["max"]),
                         fmt(r["save_inproc"]["p50"]) if r.get("save_inproc") else "-",
                         fmt(r["upper_bytes"] / MB)])
        table(p, rows)
    ss = doc.get("session")
    if ss:
        p("")
        d = ss["debs"]
        p(f"session changes: dpkg -i {' '.join(d['packages'])} ({d['bytes'] / MB:.1f} MB of .debs); "
          f"{doc['repeat']} runs")
        rows = [["capture", "first", "median", "median of runs 2+", "notes"]]
        for tool, v in ss["rows"].items():
            if v.get("error"):
                rows.append([tool, v["error"]])
                continue
            note = ""
            if tool == "spawngrid save":
                note = (f"upper {statistics.median(v['upper_bytes']) / MB:.1f} MB; in-process "
                        f"first {v['inproc_first_ms']:.0f} ms")
            elif tool == "tar of the upper":
                note = f"{statistics.median(v['bytes']) / MB:.1f} MB tar"
            rows.append([tool, fmt(v["first_ms"]), fmt(v["median_ms"]), fmt(v["median_later_ms"]),
                         note])
        table(p, rows)
    dn = doc.get("density")
    if dn:
        p("")
        if dn.get("spawn"):
            md = dn["meminfo_delta_per_env_bytes"]
            p(f"density: {dn['k']} idle envs ({dn.get('running')} running), per env: MemAvailable "
              f"drop {dn['memavailable_delta_per_env_bytes'] / MB:.2f} MB; AnonPages+Shmem+"
              f"SUnreclaim+KernelStack+PageTables {dn['unreclaimable_delta_per_env_bytes'] / MB:.2f} MB "
              f"(Slab {md['Slab'] / MB:.2f}, PageTables {md['PageTables'] / MB:.2f}); memory cgroup "
              f"{dn['cgroup_usage_per_env_bytes'] / MB:.2f} MB; init PSS "
              f"{fmt((dn['init_pss_per_env_bytes'] or 0) / MB, '.2f')} MB")
            p(f"  spawn p50 {dn['spawn']['p50']:.1f} ms (first 10: {dn['spawn_first10_p50_ms']:.1f}, "
              f"last 10: {dn['spawn_last10_p50_ms']:.1f}), all {dn['spawn_all_s']:.1f} s; "
              f"`env ls` with {dn['k']} envs {dn['env_ls_s'] * 1e3:.0f} ms; boom p50 "
              f"{dn['boom']['p50']:.1f} ms, all {dn['boom_all_s']:.1f} s; MemAvailable after boom "
              f"vs before: {dn['memavailable_after_boom_vs_before_bytes'] / MB:+.1f} MB")
        else:
            p(f"density: {dn.get('error')}")
    if doc.get("errors"):
        p("")
        for e in doc["errors"]:
            p(f"error: {e}")
    return "\n".join(lines)


def numbers_right(i, cell, n):
    """Numbers ("-" for none) right-aligned, except in the first and the last column."""
    return 0 < i < n - 1 and (cell[:1].isdigit() or cell == "-")


def table(p, rows):
    for line in table_lines(rows, right=numbers_right):
        p(line)


# -- main -------------------------------------------------------------------------------------

def main():
    ap = arg_parser("spawngrid environment runtime benchmark", base=True)
    ap.add_argument("--n", type=int, default=50, help="latency rounds (default 50)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each save / session case")
    ap.add_argument("--density", type=int, default=100, help="idle envs for density (500+ works)")
    ap.add_argument("--idle-samples", type=int, default=10, help="attaches after 0.5 s idle")
    ap.add_argument("--pad-mb", type=float, default=100, help="pseudo-random pad file, MB")
    ap.add_argument("--peers", default=",".join(ALL_PEERS))
    ap.add_argument("--sections", default=",".join(ALL_SECTIONS))
    ap.add_argument("--tmpfs-size", default="8G")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    ap.add_argument("--session-packages", default=DEFAULT_SESSION_DEBS,
                    help="packages the session case installs, comma-separated "
                         f"(default {DEFAULT_SESSION_DEBS}; e.g. python3,make,git,gcc for ~200 MB)")
    ap.add_argument("--session-size", default=None,
                    help="write layer of the session env (spawn --size), e.g. 1G")
    output_arg(ap, "runtime")
    a = ap.parse_args()
    peers, sections = comma_list(a.peers), comma_list(a.sections)
    if set(peers) - set(ALL_PEERS) or set(sections) - set(ALL_SECTIONS):
        ap.error(f"known peers {ALL_PEERS}, sections {ALL_SECTIONS}")
    if os.geteuid() != 0:
        print("bench: run as root (it mounts tmpfs and spawns envs)", file=sys.stderr)
        return 1
    a.spawngrid = os.path.abspath(a.spawngrid)
    if not os.access(a.spawngrid, os.X_OK):
        print(f"bench: {a.spawngrid} not found (cargo build --release -p spawngrid)",
              file=sys.stderr)
        return 1
    exit_on_sigterm()
    started = time.perf_counter()
    loadavg_start = open("/proc/loadavg").read().split()[:3]
    if not a.base:
        a.base = rootfs_tree("base")
    a.base_path = os.path.realpath(a.base)

    unavailable = {}
    for p, cmd, pkg in (("bwrap", "bwrap", "bubblewrap"), ("crun", "crun", "crun"),
                        ("nspawn", "systemd-nspawn", "systemd-container"),
                        ("lxc", "lxc-execute", "lxc"), ("podman", "podman", "podman")):
        if p in peers:
            u = ensure_tool(cmd, pkg)
            if u:
                unavailable[p] = u
    versions = {
        "spawngrid": version_of([a.spawngrid, "--version"]),
        "bwrap": version_of(["bwrap", "--version"]),
        "crun": version_of(["crun", "--version"]),
        "systemd-nspawn": version_of(["systemd-nspawn", "--version"]),
        "lxc": version_of(["lxc-execute", "--version"]),
        "podman": version_of(["podman", "--version"]),
        "kernel": platform.release(),
    }

    # short: podman refuses a --runroot longer than 50 characters
    mnt = tempfile.mkdtemp(prefix="sgrb-")
    cg_before = set(cgroup_dirs())
    b = None
    cgroups = ("v2" if cgroup_v2() else "v1 (hybrid: cgroup2 at /sys/fs/cgroup/unified)"
               if os.path.ismount("/sys/fs/cgroup/unified") else "v1")
    doc = {"benchmark": "runtime",
           "date": utc_now(),
           "host": host_info(f"tmpfs size={a.tmpfs_size}", loadavg_start=" ".join(loadavg_start),
                             cgroups=cgroups),
           "n": a.n, "repeat": a.repeat, "versions": versions,
           "timing": "wall time of each CLI command from Python (fork+exec included); spawngrid "
                     "in-process figures are the commands' own --json timings",
           "errors": []}
    try:
        mount_tmpfs(mnt, a.tmpfs_size)
        b = Bench(a, mnt)
        doc["rootfs"] = b.prepare(a.base)
        if "api" in sections:
            log("spawn-to-first-command through the runtime API (in-process)")
            try:
                doc["api"] = section_api(a.n, a.timeout)
            except StepFailed as e:
                doc["errors"].append(f"api: {e}")
        if "latency" in sections:
            doc["latency"] = section_latency(b, peers, unavailable)
        if "attach" in sections:
            log("attach")
            doc["attach"] = section_attach(b, peers, unavailable)
        if "save" in sections:
            doc["save"] = section_save(b)
        if "session" in sections:
            log("session changes")
            try:
                doc["session"] = section_session(b, peers, unavailable)
            except StepFailed as e:
                doc["errors"].append(f"session: {e}")
        if "density" in sections:
            log(f"density: {a.density} envs")
            try:
                doc["density"] = section_density(b)
            except StepFailed as e:
                doc["density"] = {"k": a.density, "error": f"failed: {e}"}
                doc["errors"].append(f"density: {e}")
    except StepFailed as e:
        doc["errors"].append(str(e))
        log(str(e))
    finally:
        if b is not None:
            doc["notes"] = b.notes
        cleanup(b, mnt, cg_before)
    doc["unavailable"] = unavailable
    doc["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    doc["duration_s"] = time.perf_counter() - started
    if "rootfs" not in doc:
        print(json.dumps(doc, indent=2))
        return 1
    text = report(doc)
    doc["report"] = text.splitlines()
    print(text)
    out = a.output or result_path("runtime")
    write_json(out, doc)
    log(f"wrote {out} ({doc['duration_s']:.0f} s in all)")
    return 0 if not doc["errors"] else 2


if __name__ == "__main__":
    sys.exit(main())
