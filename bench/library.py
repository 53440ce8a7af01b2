#!/usr/bin/env python3
# bench/library.py: the library benchmark. Imports a base rootfs and then a modified copy into
# a spawngrid library, exports the second, and does the same with restic, borg and tar|zstd,
# all on a fresh tmpfs, and prints one table plus JSON (also written to
# bench/results/library-<date>.json). Run as root (it mounts a tmpfs):
#
#   python3 bench/library.py [--spawngrid target/release/spawngrid] [--base DIR]
#                            [--modified DIR] [--repeat N] [--tools spawngrid,restic,borg,tar]
#
# Without --base/--modified it calls scripts/rootfs.sh (cached debootstrap trees).
# See bench/README.md for what is measured and how to read it.
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1e6
ALL_TOOLS = ["spawngrid", "restic", "borg", "tar"]
BORG_COMPRESSION = "zstd,3"
TAR_XATTR_FLAGS = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class StepFailed(Exception):
    pass


def run(cmd, timeout, cwd=None, env=None, check=True, what=None, stdin=subprocess.DEVNULL):
    """Runs cmd (list, or str for bash -o pipefail -c) in its own process group; kills the
    whole group on timeout. Returns (seconds, stdout, stderr)."""
    if isinstance(cmd, str):
        argv = ["bash", "-o", "pipefail", "-c", cmd]
    else:
        argv = [str(c) for c in cmd]
    what = what or (cmd if isinstance(cmd, str) else " ".join(shlex.quote(a) for a in argv))
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        raise StepFailed(f"{what}: cannot run: {e.strerror}")
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise StepFailed(f"{what}: timed out after {timeout}s")
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    dt = time.perf_counter() - t0
    out = out.decode(errors="replace")
    err = err.decode(errors="replace")
    if check and p.returncode != 0:
        lines = [l for l in (err.strip() or out.strip()).splitlines() if l.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise StepFailed(f"{what}: exit {p.returncode}: {last[:300]}")
    return dt, out, err


def tree_stats(root):
    """Logical bytes (regular files, hardlinks once) and entry count of a tree."""
    total = 0
    entries = 0
    seen = set()
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                entries += 1
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    k = (st.st_dev, st.st_ino)
                    if k not in seen:
                        seen.add(k)
                        total += st.st_size
    return total, entries


def du_bytes(path):
    if not os.path.exists(path):
        return None
    _, out, _ = run(["du", "-sb", path], 600, what=f"du -sb {path}")
    return int(out.split()[0])


def ensure_tool(cmd, package, timeout):
    if shutil.which(cmd):
        return None
    log(f"{cmd} missing: apt-get install {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        try:
            run(["apt-get", "install", "-y", "-qq", package], timeout, env=env)
        except StepFailed:
            run(["apt-get", "update", "-qq"], timeout, env=env)
            run(["apt-get", "install", "-y", "-qq", package], timeout, env=env)
    except StepFailed as e:
        return f"unavailable: apt-get install {package} failed ({e})"
    return None if shutil.which(cmd) else f"unavailable: {cmd} not found after installing {package}"


def version_of(argv):
    try:
        _, out, err = run(argv, 60, check=False)
        return (out.strip() or err.strip()).splitlines()[0]
    except (StepFailed, IndexError):
        return None


class Bench:
    def __init__(self, args, mnt, sizes):
        self.a = args
        self.mnt = mnt
        self.src = os.path.join(mnt, "src")
        self.tree = os.path.join(self.src, "tree")  # the path every tool reads from
        self.work = os.path.join(mnt, "work")
        self.sizes = sizes
        self.staged = None

    def stage(self, which):
        """Puts the base or mod copy at src/tree (renames are free), so every tool sees one
        path for both runs, as a backup tool would for two states of one directory."""
        if self.staged == which:
            return
        if self.staged:
            os.rename(self.tree, os.path.join(self.src, self.staged))
        os.rename(os.path.join(self.src, which), self.tree)
        self.staged = which

    def fresh_work(self):
        if os.path.exists(self.work):
            shutil.rmtree(self.work)
        os.makedirs(self.work)

    def fidelity(self, exported):
        """Compares scripts/fslist.py listings of the source (mod) and an export."""
        fl = [sys.executable, os.path.join(REPO, "scripts", "fslist.py"), "--no-root-mtime"]
        try:
            _, a, _ = run(fl + [self.tree], self.a.timeout)
            _, b, _ = run(fl + [exported], self.a.timeout)
        except StepFailed as e:
            return {"identical": None, "error": str(e)}
        la, lb = a.splitlines(), b.splitlines()
        if la == lb:
            return {"identical": True, "differing_lines": 0}
        sa, sb = set(la), set(lb)
        only_src = sorted(sa - sb)
        only_exp = sorted(sb - sa)
        return {"identical": False, "differing_lines": len(only_src) + len(only_exp),
                "examples_source": only_src[:5], "examples_export": only_exp[:5]}

    # -- tools: each returns a dict of measurements, raising StepFailed on failure ----------

    def run_spawngrid(self):
        sg = self.a.spawngrid
        data = os.path.join(self.work, "spawngrid-data")
        t = self.a.timeout
        r = {}

        def lib(*args, what):
            return run([sg, "lib", "--data", data, *args], t, what=f"{what}")

        def stats():
            _, out, _ = lib("stats", "--json", what="lib stats --json")
            try:
                return json.loads(out)
            except ValueError:
                raise StepFailed(f"lib stats --json: not JSON: {out.strip()[:200]!r}")

        self.stage("base")
        r["first_s"], _, _ = lib("import", "base", self.tree, what="lib import base")
        s1 = stats()
        r["stats_after_first"] = s1
        r["stored_first_bytes"] = du_bytes(data)
        r["stats_stored_first_bytes"] = s1.get("stored_bytes")
        self.stage("mod")
        r["second_s"], _, _ = lib("import", "mod", self.tree, what="lib import mod")
        s2 = stats()
        r["stats_after_second"] = s2
        r["stored_second_bytes"] = du_bytes(data)
        r["stats_stored_second_bytes"] = s2.get("stored_bytes")
        dest = os.path.join(self.work, "export")
        r["export_s"], _, _ = lib("export", "mod", dest, what="lib export mod")
        r["fidelity"] = self.fidelity(dest)
        return r

    def run_restic(self):
        t = self.a.timeout
        env = dict(os.environ, RESTIC_PASSWORD="spawngrid-bench",
                   RESTIC_REPOSITORY=os.path.join(self.work, "restic-repo"),
                   RESTIC_CACHE_DIR=os.path.join(self.work, "restic-cache"))
        r = {}
        run(["restic", "init"], t, env=env, what="restic init")
        _, cfg, _ = run(["restic", "cat", "config"], t, env=env, what="restic cat config")
        r["repo_version"] = json.loads(cfg).get("version")
        r["compression"] = "auto (restic default)"

        def backup(tag):
            dt, out, _ = run(["restic", "backup", "--json", "--host", "bench", "--tag", tag, "."],
                             t, cwd=self.tree, env=env, what=f"restic backup ({tag})")
            summary = None
            for line in out.splitlines():
                if '"summary"' in line:
                    try:
                        summary = json.loads(line)
                    except ValueError:
                        pass
            return dt, summary

        self.stage("base")
        r["first_s"], r["summary_first"] = backup("base")
        r["stored_first_bytes"] = du_bytes(env["RESTIC_REPOSITORY"])
        self.stage("mod")
        r["second_s"], r["summary_second"] = backup("mod")
        r["stored_second_bytes"] = du_bytes(env["RESTIC_REPOSITORY"])
        dest = os.path.join(self.work, "export")
        r["export_s"], _, _ = run(["restic", "restore", "latest", "--target", dest], t, env=env,
                                  what="restic restore latest")
        r["fidelity"] = self.fidelity(dest)
        return r

    def run_borg(self):
        t = self.a.timeout
        env = dict(os.environ, BORG_REPO=os.path.join(self.work, "borg-repo"),
                   BORG_BASE_DIR=os.path.join(self.work, "borg-home"),
                   BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                   BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        r = {"compression": BORG_COMPRESSION, "encryption": "none"}
        run(["borg", "init", "-e", "none"], t, env=env, what="borg init -e none")

        def create(name):
            return run(["borg", "create", "--numeric-ids", "--compression", BORG_COMPRESSION,
                        f"::{name}", "."], t, cwd=self.tree, env=env,
                       what=f"borg create ::{name}")[0]

        self.stage("base")
        r["first_s"] = create("base")
        r["stored_first_bytes"] = du_bytes(env["BORG_REPO"])
        self.stage("mod")
        r["second_s"] = create("mod")
        r["stored_second_bytes"] = du_bytes(env["BORG_REPO"])
        dest = os.path.join(self.work, "export")
        os.makedirs(dest)
        r["export_s"], _, _ = run(["borg", "extract", "--numeric-ids", "::mod"], t, cwd=dest,
                                  env=env, what="borg extract ::mod")
        r["fidelity"] = self.fidelity(dest)
        return r

    def run_tar(self):
        t = self.a.timeout
        flags = " ".join(shlex.quote(f) for f in TAR_XATTR_FLAGS)
        r = {"command": f"tar -C ROOT {flags} -cf - . | zstd -1 -T0 > out",
             "note": "no deduplication: stored after second = both archives"}
        q = shlex.quote

        def archive(name):
            out = os.path.join(self.work, f"{name}.tar.zst")
            dt, _, _ = run(f"tar -C {q(self.tree)} {flags} -cf - . | zstd -1 -T0 -q > {q(out)}", t,
                           what=f"tar | zstd ({name})")
            return dt, os.path.getsize(out), out

        self.stage("base")
        r["first_s"], size1, _ = archive("base")
        r["stored_first_bytes"] = size1
        self.stage("mod")
        r["second_s"], size2, out2 = archive("mod")
        r["stored_second_bytes"] = size1 + size2
        dest = os.path.join(self.work, "export")
        os.makedirs(dest)
        r["export_s"], _, _ = run(f"zstd -dc -q {q(out2)} | tar -C {q(dest)} {flags} -xpf -", t,
                                  what="zstd -d | tar -x")
        r["fidelity"] = self.fidelity(dest)
        return r

    def run_tool(self, tool):
        self.fresh_work()
        try:
            r = getattr(self, f"run_{tool}")()
            r["ok"] = True
        except StepFailed as e:
            r = {"ok": False, "error": f"{tool} failed: {e}"}
            log(r["error"])
        finally:
            self.stage("base")
            shutil.rmtree(self.work, ignore_errors=True)
        return r


def summarize(tool, runs, sizes, unavailable):
    row = {"tool": tool}
    if unavailable:
        row["status"] = unavailable
        return row
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        row["status"] = runs[-1]["error"] if runs else "not run"
        return row
    row["status"] = "ok" if len(ok) == len(runs) else f"ok in {len(ok)}/{len(runs)} runs"
    med = lambda k: statistics.median(r[k] for r in ok)
    row["first_s"] = med("first_s")
    row["first_MBps"] = sizes["base"]["logical_bytes"] / MB / row["first_s"]
    row["second_s"] = med("second_s")
    row["second_MBps"] = sizes["mod"]["logical_bytes"] / MB / row["second_s"]
    row["export_s"] = med("export_s")
    row["export_MBps"] = sizes["mod"]["logical_bytes"] / MB / row["export_s"]
    last = ok[-1]
    row["stored_first_bytes"] = last["stored_first_bytes"]
    row["stored_second_bytes"] = last["stored_second_bytes"]
    row["growth_bytes"] = last["stored_second_bytes"] - last["stored_first_bytes"]
    row["roundtrip_identical"] = last["fidelity"].get("identical")
    row["roundtrip_differing_lines"] = last["fidelity"].get("differing_lines")
    return row


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows, sizes):
    hdr = ["tool", "first s", "MB/s", "second s", "MB/s", "stored1 MB", "stored2 MB",
           "growth MB", "export s", "exp MB/s", "roundtrip"]
    lines = [hdr]
    for r in rows:
        if "first_s" not in r:
            lines.append([r["tool"], r["status"]])
            continue
        rt = ("exact" if r["roundtrip_identical"]
              else "?" if r["roundtrip_identical"] is None
              else f"{r['roundtrip_differing_lines']} diffs")
        lines.append([r["tool"], fmt(r["first_s"], ".2f"), fmt(r["first_MBps"], ".0f"),
                      fmt(r["second_s"], ".2f"), fmt(r["second_MBps"], ".0f"),
                      fmt(r["stored_first_bytes"] / MB, ".1f"),
                      fmt(r["stored_second_bytes"] / MB, ".1f"),
                      fmt(r["growth_bytes"] / MB, ".1f"), fmt(r["export_s"], ".2f"),
                      fmt(r["export_MBps"], ".0f"), rt])
    w = [max(len(l[i]) for l in lines if len(l) == len(hdr)) for i in range(len(hdr))]
    w[0] = max(len(l[0]) for l in lines)
    print(f"\nlibrary benchmark: base {sizes['base']['logical_bytes'] / MB:.1f} MB "
          f"({sizes['base']['entries']} entries), modified {sizes['mod']['logical_bytes'] / MB:.1f} MB "
          f"({sizes['mod']['entries']} entries); MB = 10^6 bytes; times are medians\n")
    for l in lines:
        if len(l) == len(hdr):
            print("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(l)))
        else:
            print(f"{l[0].ljust(w[0])}  {l[1]}")


def ratios(rows):
    by = {r["tool"]: r for r in rows if "first_s" in r}
    out = {}
    sg = by.get("spawngrid")
    if not sg:
        return out
    for peer in ("restic", "borg", "tar"):
        p = by.get(peer)
        if not p:
            continue
        out[f"spawngrid_vs_{peer}"] = {
            "first_throughput_ratio": sg["first_MBps"] / p["first_MBps"],
            "second_throughput_ratio": sg["second_MBps"] / p["second_MBps"],
            "export_throughput_ratio": sg["export_MBps"] / p["export_MBps"],
            "stored_after_first_ratio": sg["stored_first_bytes"] / p["stored_first_bytes"],
            "stored_after_second_ratio": sg["stored_second_bytes"] / p["stored_second_bytes"],
            "growth_ratio": (sg["growth_bytes"] / p["growth_bytes"]) if p["growth_bytes"] else None,
        }
    return out


def main():
    ap = argparse.ArgumentParser(description="spawngrid library benchmark vs restic, borg, tar|zstd")
    ap.add_argument("--spawngrid", default=os.path.join(REPO, "target", "release", "spawngrid"))
    ap.add_argument("--base", help="base rootfs (default: scripts/rootfs.sh base)")
    ap.add_argument("--modified", help="modified rootfs (default: scripts/rootfs.sh modified)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated subset")
    ap.add_argument("--tmpfs-size", default="4G")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per subprocess")
    ap.add_argument("--output", help="JSON path (default bench/results/library-<date>.json)")
    a = ap.parse_args()
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad:
        ap.error(f"unknown tools {bad}; known: {ALL_TOOLS}")
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    if os.geteuid() != 0:
        print("bench: run as root (it mounts a tmpfs and copies device nodes)", file=sys.stderr)
        return 1
    a.spawngrid = os.path.abspath(a.spawngrid)

    # SIGTERM -> normal unwinding so the tmpfs is unmounted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    rootfs = os.path.join(REPO, "scripts", "rootfs.sh")
    try:
        if not a.base:
            log("scripts/rootfs.sh base")
            a.base = run([rootfs, "base"], 3600, what="scripts/rootfs.sh base")[1].strip()
        if not a.modified:
            log("scripts/rootfs.sh modified")
            a.modified = run([rootfs, "modified"], 3600, what="scripts/rootfs.sh modified")[1].strip()
    except StepFailed as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    for p in (a.base, a.modified):
        if not os.path.isdir(p):
            print(f"bench: {p} is not a directory", file=sys.stderr)
            return 1

    unavailable = {}
    if "spawngrid" in tools and not os.access(a.spawngrid, os.X_OK):
        unavailable["spawngrid"] = (f"unavailable: {a.spawngrid} not found "
                                    "(cargo build --release -p spawngrid)")
    for tool, cmd, pkg in (("restic", "restic", "restic"), ("borg", "borg", "borgbackup"),
                           ("tar", "zstd", "zstd")):
        if tool in tools:
            u = ensure_tool(cmd, pkg, 900)
            if u:
                unavailable[tool] = u
    ensure_tool("du", "coreutils", 900)

    versions = {
        "spawngrid": version_of([a.spawngrid, "--version"]) if "spawngrid" not in unavailable else None,
        "restic": version_of(["restic", "version"]) if shutil.which("restic") else None,
        "borg": version_of(["borg", "--version"]) if shutil.which("borg") else None,
        "tar": version_of(["tar", "--version"]),
        "zstd": version_of(["zstd", "--version"]) if shutil.which("zstd") else None,
    }

    mnt = tempfile.mkdtemp(prefix="spawngrid-bench-")
    mounted = False
    results = {}
    sizes = {}
    try:
        run(["mount", "-t", "tmpfs", "-o", f"size={a.tmpfs_size},mode=0755", "spawngrid-bench", mnt],
            60, what="mount tmpfs")
        mounted = True
        src = os.path.join(mnt, "src")
        os.makedirs(src)
        for name, path in (("base", a.base), ("mod", a.modified)):
            log(f"warming the page cache and copying {path} onto the tmpfs")
            run(f"tar -C {shlex.quote(path)} -cf - . | cat > /dev/null", a.timeout,
                what=f"warm {path}")
            run(["cp", "-a", path, os.path.join(src, name)], a.timeout, what=f"cp -a {path}")
            lb, n = tree_stats(os.path.join(src, name))
            sizes[name] = {"path": path, "logical_bytes": lb, "entries": n,
                           "du_bytes": du_bytes(os.path.join(src, name))}
        b = Bench(a, mnt, sizes)
        b.stage("base")
        for tool in tools:
            if tool in unavailable:
                log(unavailable[tool])
                continue
            results[tool] = []
            for i in range(a.repeat):
                log(f"{tool}: run {i + 1}/{a.repeat}")
                results[tool].append(b.run_tool(tool))
    except StepFailed as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        if mounted:
            for attempt in range(3):
                rc = subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL).returncode
                if rc == 0:
                    break
                time.sleep(1)
            else:
                subprocess.run(["umount", "-l", mnt])
        try:
            os.rmdir(mnt)
        except OSError:
            pass

    rows = [summarize(t, results.get(t, []), sizes, unavailable.get(t)) for t in tools]
    print_table(rows, sizes)
    rat = ratios(rows)
    if rat:
        print()
        for k, v in rat.items():
            parts = [f"{n.replace('_ratio', '')} {x:.2f}x" for n, x in v.items() if x is not None]
            print(f"{k}: " + ", ".join(parts))

    changed = None
    cb = os.path.join(os.path.dirname(a.modified.rstrip("/")), ".changes.json")
    if os.path.exists(cb):
        with open(cb) as f:
            changed = json.load(f)
    doc = {
        "benchmark": "library",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "cpu_model": cpu_model(), "storage": f"tmpfs size={a.tmpfs_size}"},
        "repeat": a.repeat,
        "mb": "10^6 bytes; MB/s = logical bytes of the tree processed / wall seconds",
        "sources": sizes,
        "modified_changes": changed,
        "versions": versions,
        "settings": {
            "restic": "repo version from `restic cat config` (0.14 default: 2), compression auto",
            "borg": f"borg init -e none; borg create --numeric-ids --compression {BORG_COMPRESSION}",
            "tar": f"tar {' '.join(TAR_XATTR_FLAGS)} | zstd -1 -T0",
            "second_run": "every tool reads the same path; the modified tree is renamed into it",
        },
        "rows": rows,
        "ratios": rat,
        "runs": results,
    }
    out = a.output
    if not out:
        d = os.path.join(REPO, "bench", "results")
        os.makedirs(d, exist_ok=True)
        day = datetime.date.today().isoformat()
        out = os.path.join(d, f"library-{day}.json")
        n = 2
        while os.path.exists(out):
            out = os.path.join(d, f"library-{day}-{n}.json")
            n += 1
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print()
    print(json.dumps(doc, indent=2))
    log(f"wrote {out}")
    return 0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


if __name__ == "__main__":
    sys.exit(main())
