#!/usr/bin/env python3
# bench/library.py: the library benchmark. Imports a base rootfs and then a modified copy into
# a spawngrid library, exports the second, and does the same with restic, borg and tar|zstd,
# all on a fresh tmpfs, and prints one table plus JSON (also written to
# bench/results/library-<date>.json). Run as root (it mounts a tmpfs):
#
#   python3 bench/library.py [--spawngrid target/release/spawngrid] [--base DIR]
#                            [--modified DIR] [--repeat N] [--tools spawngrid,restic,borg,tar]
#
# spawngrid also exports the second snapshot from its file cache (filled by a first export
# with --fill-cache), next to the cold export. With --repeat, tools run round-robin.
#
# Without --base/--modified it calls scripts/rootfs.sh (cached debootstrap trees).
# See bench/README.md for what is measured and how to read it.
import json
import os
import shlex
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (MB, REPO, StepFailed, arg_parser, changes_of, du_bytes,  # noqa: E402
                      ensure_tool, exit_on_sigterm, fmt, fresh_tmpfs, host_info, log, output_arg,
                      result_path, rootfs_tree, run, subset, table_lines, tree_stats, utc_now,
                      version_of, write_json)

ALL_TOOLS = ["spawngrid", "restic", "borg", "tar"]
BORG_COMPRESSION = "zstd,3"
TAR_XATTR_FLAGS = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]


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

    def both_states(self, r, measure):
        """Stages base, then mod; measure(which, nth) runs the tool on the tree for the "first"
        and "second" run and returns its keys for r."""
        for which, nth in (("base", "first"), ("mod", "second")):
            self.stage(which)
            r.update(measure(which, nth))

    def export(self, r, fn, mkdir=True):
        """fn(dest) exports the mod state to work/export (made first if mkdir) and returns its
        seconds; then the round trip is checked."""
        dest = os.path.join(self.work, "export")
        if mkdir:
            os.makedirs(dest)
        r["export_s"] = fn(dest)
        r["fidelity"] = self.fidelity(dest)
        return r

    # -- tools: each returns a dict of measurements, raising StepFailed on failure ----------

    def run_spawngrid(self):
        sg = self.a.spawngrid
        data = os.path.join(self.work, "spawngrid-data")
        t = self.a.timeout

        def lib(*args, what):
            return run([sg, "lib", "--data", data, *args], t, what=f"{what}")

        def stats():
            _, out, _ = lib("stats", "--json", what="lib stats --json")
            try:
                return json.loads(out)
            except ValueError:
                raise StepFailed(f"lib stats --json: not JSON: {out.strip()[:200]!r}")

        def measure(which, nth):
            dt, _, _ = lib("import", which, self.tree, what=f"lib import {which}")
            st = stats()
            return {f"{nth}_s": dt, f"stats_after_{nth}": st, f"stored_{nth}_bytes": du_bytes(data),
                    f"stats_stored_{nth}_bytes": st.get("stored_bytes")}

        r = {}
        self.both_states(r, measure)
        self.export(r, lambda dest: lib("export", "mod", dest, "--no-cache",
                                        what="lib export mod --no-cache")[0], mkdir=False)
        # The node-local file cache (DATA/cache): an export that also fills it (cold, plus
        # writing every file to the cache), then one from the warm cache (every file cached,
        # page cache hot; cached files are re-hashed before they are copied).
        for key, dest, extra in (("export_fill", "export-fill", ["--fill-cache"]),
                                 ("export_warm", "export-warm", [])):
            dest = os.path.join(self.work, dest)
            dt, out, _ = run([sg, "--json", "lib", "--data", data, "export", "mod", dest, *extra],
                             t, what=f"lib export mod {' '.join(extra)}".strip())
            r[f"{key}_s"] = dt
            r[f"{key}_bytes_from_cache"] = json.loads(out).get("bytes_from_cache")
            r[f"{key}_fidelity"] = self.fidelity(dest)
            shutil.rmtree(dest)
        return r

    def run_restic(self):
        t = self.a.timeout
        repo = os.path.join(self.work, "restic-repo")
        env = dict(os.environ, RESTIC_PASSWORD="spawngrid-bench", RESTIC_REPOSITORY=repo,
                   RESTIC_CACHE_DIR=os.path.join(self.work, "restic-cache"))
        r = {}
        run(["restic", "init"], t, env=env, what="restic init")
        _, cfg, _ = run(["restic", "cat", "config"], t, env=env, what="restic cat config")
        r["repo_version"] = json.loads(cfg).get("version")
        r["compression"] = "auto (restic default)"

        def measure(tag, nth):
            dt, out, _ = run(["restic", "backup", "--json", "--host", "bench", "--tag", tag, "."],
                             t, cwd=self.tree, env=env, what=f"restic backup ({tag})")
            summary = None
            for line in out.splitlines():
                if '"summary"' in line:
                    try:
                        summary = json.loads(line)
                    except ValueError:
                        pass
            return {f"{nth}_s": dt, f"summary_{nth}": summary, f"stored_{nth}_bytes": du_bytes(repo)}

        self.both_states(r, measure)
        return self.export(r, lambda dest: run(["restic", "restore", "latest", "--target", dest],
                                               t, env=env, what="restic restore latest")[0],
                           mkdir=False)

    def run_borg(self):
        t = self.a.timeout
        repo = os.path.join(self.work, "borg-repo")
        env = dict(os.environ, BORG_REPO=repo, BORG_BASE_DIR=os.path.join(self.work, "borg-home"),
                   BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                   BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        r = {"compression": BORG_COMPRESSION, "encryption": "none"}
        run(["borg", "init", "-e", "none"], t, env=env, what="borg init -e none")

        def measure(name, nth):
            dt, _, _ = run(["borg", "create", "--numeric-ids", "--compression", BORG_COMPRESSION,
                            f"::{name}", "."], t, cwd=self.tree, env=env,
                           what=f"borg create ::{name}")
            return {f"{nth}_s": dt, f"stored_{nth}_bytes": du_bytes(repo)}

        self.both_states(r, measure)
        return self.export(r, lambda dest: run(["borg", "extract", "--numeric-ids", "::mod"], t,
                                               cwd=dest, env=env, what="borg extract ::mod")[0])

    def run_tar(self):
        t = self.a.timeout
        flags = " ".join(shlex.quote(f) for f in TAR_XATTR_FLAGS)
        r = {"command": f"tar -C ROOT {flags} -cf - . | zstd -1 -T0 > out",
             "note": "no deduplication: stored after second = both archives"}
        q = shlex.quote
        archives = []

        def measure(name, nth):
            out = os.path.join(self.work, f"{name}.tar.zst")
            dt, _, _ = run(f"tar -C {q(self.tree)} {flags} -cf - . | zstd -1 -T0 -q > {q(out)}", t,
                           what=f"tar | zstd ({name})")
            archives.append(out)
            return {f"{nth}_s": dt, f"stored_{nth}_bytes": sum(map(os.path.getsize, archives))}

        self.both_states(r, measure)
        return self.export(r, lambda dest: run(f"zstd -dc -q {q(archives[-1])} | tar -C {q(dest)} "
                                               f"{flags} -xpf -", t, what="zstd -d | tar -x")[0])

    def run_tool(self, tool):
        self.fresh_work()
        load = os.getloadavg()[0]
        try:
            r = getattr(self, f"run_{tool}")()
            r["ok"] = True
            r["load_average_before"] = load
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
    for key in ("export_fill", "export_warm"):
        if f"{key}_s" in last:
            row[f"{key}_s"] = med(f"{key}_s")
            row[f"{key}_MBps"] = sizes["mod"]["logical_bytes"] / MB / row[f"{key}_s"]
            row[f"{key}_roundtrip_identical"] = last[f"{key}_fidelity"].get("identical")
            row[f"{key}_bytes_from_cache"] = last[f"{key}_bytes_from_cache"]
    return row


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
    print(f"\nlibrary benchmark: base {sizes['base']['logical_bytes'] / MB:.1f} MB "
          f"({sizes['base']['entries']} entries), modified {sizes['mod']['logical_bytes'] / MB:.1f} MB "
          f"({sizes['mod']['entries']} entries); MB = 10^6 bytes; times are medians\n")
    for line in table_lines(lines, wide_labels=True):
        print(line)
    for r in rows:
        if "export_warm_s" in r:
            exact = lambda k: "exact" if r[f"{k}_roundtrip_identical"] else "NOT EXACT"
            print(f"\n{r['tool']} export with the file cache: filling it {r['export_fill_s']:.2f} s "
                  f"({r['export_fill_MBps']:.0f} MB/s, {exact('export_fill')}); from the warm "
                  f"cache {r['export_warm_s']:.2f} s ({r['export_warm_MBps']:.0f} MB/s, "
                  f"{exact('export_warm')}). The table's export is cold (--no-cache).")


def goals(rows, rat):
    """The library issue's goals, as measured in this run."""
    by = {r["tool"]: r for r in rows if "first_s" in r}
    sg, restic = by.get("spawngrid"), by.get("restic")
    out = {}
    if sg and restic:
        ratio = rat["spawngrid_vs_restic"]["first_throughput_ratio"]
        out["first_import_4x_restic"] = {"ratio": ratio, "met": ratio >= 4}
        out["stored_not_larger_than_restic"] = {
            "spawngrid_bytes": sg["stored_first_bytes"], "restic_bytes": restic["stored_first_bytes"],
            "met": sg["stored_first_bytes"] <= restic["stored_first_bytes"]}
    if sg and "export_warm_MBps" in sg:
        out["warm_export_1GBps"] = {"MBps": sg["export_warm_MBps"],
                                    "met": sg["export_warm_MBps"] >= 1000}
    return out


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
    ap = arg_parser("spawngrid library benchmark vs restic, borg, tar|zstd", base=True)
    ap.add_argument("--modified", help="modified rootfs (default: scripts/rootfs.sh modified)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated subset")
    ap.add_argument("--tmpfs-size", default="4G")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per subprocess")
    output_arg(ap, "library")
    a = ap.parse_args()
    tools = subset(ap, a.tools, ALL_TOOLS, "tools")
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    if os.geteuid() != 0:
        print("bench: run as root (it mounts a tmpfs and copies device nodes)", file=sys.stderr)
        return 1
    a.spawngrid = os.path.abspath(a.spawngrid)

    exit_on_sigterm()
    try:
        a.base = a.base or rootfs_tree("base")
        a.modified = a.modified or rootfs_tree("modified")
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

    results = {}
    sizes = {}
    load_at_start = os.getloadavg()
    log(f"load average at start: {load_at_start[0]:.2f} {load_at_start[1]:.2f} {load_at_start[2]:.2f}")
    try:
        with fresh_tmpfs("spawngrid-bench-", a.tmpfs_size) as mnt:
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
                else:
                    results[tool] = []
            # Round-robin (every tool once per round), so that load from other work on the
            # machine falls on all tools alike rather than on whichever ran during it.
            for i in range(a.repeat):
                for tool in results:
                    log(f"{tool}: run {i + 1}/{a.repeat} (load {os.getloadavg()[0]:.2f})")
                    results[tool].append(b.run_tool(tool))
    except StepFailed as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1

    rows = [summarize(t, results.get(t, []), sizes, unavailable.get(t)) for t in tools]
    print_table(rows, sizes)
    rat = ratios(rows)
    if rat:
        print()
        for k, v in rat.items():
            parts = [f"{n.replace('_ratio', '')} {x:.2f}x" for n, x in v.items() if x is not None]
            print(f"{k}: " + ", ".join(parts))
    met = goals(rows, rat)
    if met:
        print()
        for k, v in met.items():
            print(f"goal {k}: {'met' if v['met'] else 'NOT met'} "
                  f"({', '.join(f'{n} {x:.2f}' if isinstance(x, float) else f'{n} {x}' for n, x in v.items() if n != 'met')})")

    doc = {
        "benchmark": "library",
        "date": utc_now(),
        "host": host_info(f"tmpfs size={a.tmpfs_size}"),
        "repeat": a.repeat,
        "mb": "10^6 bytes; MB/s = logical bytes of the tree processed / wall seconds",
        "sources": sizes,
        "modified_changes": changes_of(a.modified),
        "versions": versions,
        "settings": {
            "restic": "repo version from `restic cat config` (0.14 default: 2), compression auto",
            "borg": f"borg init -e none; borg create --numeric-ids --compression {BORG_COMPRESSION}",
            "tar": f"tar {' '.join(TAR_XATTR_FLAGS)} | zstd -1 -T0",
            "second_run": "every tool reads the same path; the modified tree is renamed into it",
        },
        "rows": rows,
        "ratios": rat,
        "goals": met,
        "load_average_at_start": load_at_start,
        "runs": results,
    }
    out = a.output or result_path("library")
    write_json(out, doc)
    print()
    print(json.dumps(doc, indent=2))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
