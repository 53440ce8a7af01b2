#!/usr/bin/env python3
# bench/chunking.py: measures candidate chunking parameter sets (FastCDC min/avg/max, the
# whole-file threshold, the zstd level) for the spawngrid library, in one run, on a fresh tmpfs.
# Run as root (it mounts a tmpfs, unmounted on exit):
#
#   python3 bench/chunking.py [--spawngrid target/release/spawngrid] [--repeat 3]
#                             [--sets A,B,...] [--big-mib 256] [--output PATH]
#
# For every parameter set it creates libraries by writing DATA/library/config before the first
# import, then measures (median of --repeat runs, sets interleaved within each run):
#
#   rootfs: import `scripts/rootfs.sh base` (first-import seconds and stored bytes), then
#           `scripts/rootfs.sh modified` (incremental stored growth = the cost of a change),
#           then `lib stats` (object count).
#   big:    a 256 MiB file of real binaries (unique regular files from /usr/lib concatenated in
#           sorted path order), imported, then the same file with 3 overwrites of 4 KiB at
#           different offsets and 1 MiB inserted in the middle: the stored growth of the edit.
#
# Sources are copied onto the tmpfs first, so disk speed does not enter. The load average is
# sampled before every run and printed: on a shared machine, compare sets within one run only.
# Writes a table to stdout and JSON to bench/results/chunking-<date>.json.
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import (MB, KiB, MiB, StepFailed, arg_parser, changes_of,  # noqa: E402
                      exit_on_sigterm, fresh_tmpfs, host_info, log, med, output_arg, result_path,
                      rootfs_tree, subset, tree_stats, utc_now, write_json)

PACK_TARGET = 32 * MiB
# Approximate bytes of RAM one object costs in the in-memory index: HashMap<Score, Location> has
# 112-byte buckets (32-byte key + Location = 32-byte pack score + 48-byte PackEntry) plus one
# control byte, at a load factor between 7/16 and 7/8 (hashbrown doubles at 7/8): 129..258 B.
# An estimate for comparing sets, not a measurement.
INDEX_BYTES_PER_OBJECT = 170

# name: (threshold, min, avg, max, zstd level)
SETS = {
    "32K/128K/512K t128K z3": (128 * KiB, 32 * KiB, 128 * KiB, 512 * KiB, 3),
    "64K/256K/1M t256K z3": (256 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 3),
    "128K/512K/2M t512K z3": (512 * KiB, 128 * KiB, 512 * KiB, 2 * MiB, 3),
    "256K/1M/4M t1M z3": (1 * MiB, 256 * KiB, 1 * MiB, 4 * MiB, 3),
    "256K/1M/4M t1M z1": (1 * MiB, 256 * KiB, 1 * MiB, 4 * MiB, 1),
    "512K/2M/8M t2M z3": (2 * MiB, 512 * KiB, 2 * MiB, 8 * MiB, 3),
}
CURRENT = "256K/1M/4M t1M z3"


def run(argv, timeout=1800, what=None):
    """Runs argv (benchlib.run; failures carry the tail of stderr); returns (wall seconds,
    stdout)."""
    wall, out, _ = benchlib.run(argv, timeout, what=what or " ".join(map(str, argv)),
                                err_tail=2000)
    return wall, out


def run_rss(argv, timeout=1800, what=None):
    """Like run, but under GNU time; returns (wall seconds, stdout, max RSS KiB or None).

    (wait4's ru_maxrss of a child spawned from this process would include this process's own
    RSS from before the exec, so the child's peak is taken from /usr/bin/time's %M instead.)"""
    if not os.access("/usr/bin/time", os.X_OK):
        wall, out = run(argv, timeout, what)
        return wall, out, None
    with tempfile.NamedTemporaryFile("r") as t:
        wall, out = run(["/usr/bin/time", "-f", "%M", "-o", t.name] + list(argv), timeout,
                        what or " ".join(map(str, argv)))
        t.seek(0)
        lines = t.read().strip().splitlines()
        return wall, out, int(lines[-1]) if lines and lines[-1].isdigit() else None


def make_big(path, size, sources=("/usr/lib",)):
    """Writes `size` bytes of unique regular files from `sources` (sorted path order, exact
    duplicates skipped) to path; returns a description (file count, sha256)."""
    h = hashlib.sha256()
    seen = set()
    written = files = 0
    with open(path, "wb") as out:
        for src in sources:
            for d, dirs, names in os.walk(src):
                dirs.sort()
                for name in sorted(names):
                    if written >= size:
                        break
                    p = os.path.join(d, name)
                    try:
                        st = os.lstat(p)
                        if (st.st_mode & 0o170000) != 0o100000 or st.st_size == 0:
                            continue
                        with open(p, "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    key = hashlib.blake2b(data, digest_size=16).digest()
                    if key in seen:
                        continue
                    seen.add(key)
                    data = data[: size - written]
                    out.write(data)
                    h.update(data)
                    written += len(data)
                    files += 1
                if written >= size:
                    break
    if written < size:
        raise StepFailed(f"only {written} bytes of unique files under {sources}; need {size}")
    return {"bytes": size, "source": list(sources), "files": files, "sha256": h.hexdigest()}


def make_edited(src, dst):
    """dst = src with 3 overwrites of 4 KiB (at ~17%, ~41%, ~83%, unaligned) and 1 MiB of new
    bytes inserted at ~50%. Edit bytes are deterministic pseudo-random (incompressible), so the
    unavoidable growth is about 1 MiB + 12 KiB."""
    size = os.path.getsize(src)
    rnd = hashlib.shake_256(b"spawngrid chunking bench edits v1").digest(3 * 4 * KiB + MiB)
    overwrites = [(int(size * f) + 1234 * (i + 1), rnd[i * 4 * KiB:(i + 1) * 4 * KiB])
                  for i, f in enumerate((0.17, 0.41, 0.83))]
    insert_at = size // 2 + 777
    insert = rnd[3 * 4 * KiB:]
    with open(src, "rb") as f:
        data = bytearray(f.read())
    for off, b in overwrites:
        data[off:off + len(b)] = b
    data[insert_at:insert_at] = insert
    with open(dst, "wb") as f:
        f.write(data)
    del data
    return {"overwrites": [{"offset": o, "length": len(b)} for o, b in overwrites],
            "insert": {"offset": insert_at, "length": len(insert)},
            "new_bytes": sum(len(b) for _, b in overwrites) + len(insert)}


class Bench:
    def __init__(self, exe, mnt):
        self.exe = exe
        self.mnt = mnt
        self.n = 0

    def new_lib(self, params):
        thr, mn, avg, mx, z = params
        self.n += 1
        data = os.path.join(self.mnt, f"lib{self.n}")
        os.makedirs(os.path.join(data, "library"))
        cfg = {"format": "spawngrid-library", "version": 1, "chunk_threshold": thr,
               "chunk_min": mn, "chunk_avg": avg, "chunk_max": mx, "pack_target": PACK_TARGET,
               "zstd_level": z}
        with open(os.path.join(data, "library", "config"), "w") as f:
            json.dump(cfg, f)
        return data

    def lib(self, data, *args):
        """`lib --json ARGS` on the library at data: (wall seconds, its JSON, max RSS KiB)."""
        wall, out, rss = run_rss([self.exe, "lib", "--data", data, "--json", *args])
        return wall, json.loads(out), rss

    def imp(self, data, name, path):
        wall, j, rss = self.lib(data, "import", name, path)
        return {"seconds": j["seconds"], "wall": wall, "stored_added": j["stored_bytes_added"],
                "bytes": j["bytes"], "max_rss_kib": rss}

    def stats(self, data):
        _, j, rss = self.lib(data, "stats")
        j["max_rss_kib"] = rss
        return j

    def measure(self, params, src):
        """Two fresh libraries: base then mod imported into one, big1 then big2 into the other."""
        r = {}
        for first, second, stats in (("base", "mod", "stats"), ("big1", "big2", "big_stats")):
            data = self.new_lib(params)
            try:
                r[first] = self.imp(data, first, src[first])
                r[second] = self.imp(data, second, src[second])
                r[stats] = self.stats(data)
            finally:
                shutil.rmtree(data)
        return r


def summarize(name, params, runs, logical):
    thr, mn, avg, mx, z = params
    g = lambda f: med([f(r) for r in runs])  # noqa: E731
    objects = g(lambda r: r["stats"]["objects"])
    row = {
        "set": name, "current": name == CURRENT,
        "chunk_threshold": thr, "chunk_min": mn, "chunk_avg": avg, "chunk_max": mx, "zstd_level": z,
        "runs": len(runs),
        "base_seconds": g(lambda r: r["base"]["seconds"]),
        "base_stored_bytes": g(lambda r: r["base"]["stored_added"]),
        "mod_seconds": g(lambda r: r["mod"]["seconds"]),
        "mod_stored_growth_bytes": g(lambda r: r["mod"]["stored_added"]),
        "objects": objects,
        "stored_bytes_total": g(lambda r: r["stats"]["stored_bytes"]),
        "packs": g(lambda r: r["stats"]["packs"]),
        "big_first_seconds": g(lambda r: r["big1"]["seconds"]),
        "big_first_stored_bytes": g(lambda r: r["big1"]["stored_added"]),
        "big_edit_seconds": g(lambda r: r["big2"]["seconds"]),
        "big_edit_growth_bytes": g(lambda r: r["big2"]["stored_added"]),
        "big_objects": g(lambda r: r["big_stats"]["objects"]),
        "import_max_rss_kib": g(lambda r: r["base"]["max_rss_kib"] or 0),
        "big_import_max_rss_kib": g(lambda r: r["big1"]["max_rss_kib"] or 0),
        "index_bytes_estimate": objects * INDEX_BYTES_PER_OBJECT,
        "bytes_per_object": (logical["base"] + logical["mod"]) / objects if objects else None,
        # objects (and index RAM) per TiB of large-file data, extrapolated from the big file
        "big_objects_per_tib": None,
        "big_index_bytes_per_tib_estimate": None,
        "raw": runs,
    }
    row["big_objects_per_tib"] = row["big_objects"] * (1 << 40) / logical["big1"]
    row["big_index_bytes_per_tib_estimate"] = row["big_objects_per_tib"] * INDEX_BYTES_PER_OBJECT
    row["base_mb_s"] = logical["base"] / MB / row["base_seconds"]
    row["big_first_mb_s"] = logical["big1"] / MB / row["big_first_seconds"]
    return row


def print_table(rows, changed, big_new, big_mib):
    hdr = ("set (min/avg/max thr zstd)", "base MB", "base s", "MB/s", "mod +MB", "mod s",
           "objects", "big MB", "big s", "big MB/s", "edit +MB", "objs/TiB", "RSS MB")
    print(f"{hdr[0]:<24} " + " ".join(f"{h:>9}" for h in hdr[1:]))
    for r in rows:
        vals = (r["base_stored_bytes"] / MB, r["base_seconds"], r["base_mb_s"],
                r["mod_stored_growth_bytes"] / MB, r["mod_seconds"], r["objects"],
                r["big_first_stored_bytes"] / MB, r["big_first_seconds"], r["big_first_mb_s"],
                r["big_edit_growth_bytes"] / MB, r["big_objects_per_tib"] / 1e6,
                r["big_import_max_rss_kib"] * 1024 / MB)
        fmt = ("{:9.1f}", "{:9.2f}", "{:9.0f}", "{:9.2f}", "{:9.2f}", "{:9.0f}", "{:9.1f}",
               "{:9.2f}", "{:9.0f}", "{:9.2f}", "{:8.2f}M", "{:9.0f}")
        mark = "*" if r["current"] else " "
        print(f"{r['set']:<23}{mark} " + " ".join(f.format(v) for f, v in zip(fmt, vals)))
    print("* = current defaults. MB = 10^6 bytes; medians; 'mod +MB' = stored growth importing "
          "the modified rootfs after the base;")
    if changed:
        print(f"  the modified rootfs changes {changed / MB:.1f} MB of file bytes (added + "
              "differing 4 KiB blocks, before compression).")
    print("  'objs/TiB' = objects per TiB of large-file data (from the big file); 'RSS MB' = peak "
          "RSS importing the big file;")
    print(f"  'edit +MB' = stored growth of the edited {big_mib} MiB file; it contains "
          f"{big_new / MB:.2f} MB of new incompressible bytes.")


def main():
    ap = arg_parser("spawngrid chunking parameter benchmark")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of: " + ", ".join(SETS))
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--tmpfs-size", default="4G")
    output_arg(ap, "chunking")
    a = ap.parse_args()
    sets = subset(ap, a.sets, SETS, "sets")
    if os.geteuid() != 0:
        log("run as root (it mounts a tmpfs)")
        return 1
    exe = os.path.abspath(a.spawngrid)
    if not os.access(exe, os.X_OK):
        log(f"{exe} not found: cargo build --release -p spawngrid")
        return 1
    exit_on_sigterm()
    try:
        base = rootfs_tree("base")
        mod = rootfs_tree("modified")
    except StepFailed as e:
        log(str(e))
        return 1
    changed = changes_of(mod)

    loads = [{"when": "start", "loadavg": os.getloadavg()}]
    results = {s: [] for s in sets}
    t_start = time.time()
    try:
        with fresh_tmpfs("spawngrid-chunking-", a.tmpfs_size, "spawngrid-chunking") as mnt:
            src = {k: os.path.join(mnt, "src", k) for k in ("base", "mod", "big1", "big2")}
            os.makedirs(os.path.join(mnt, "src"))
            log("copying the rootfs trees onto the tmpfs")
            run(["cp", "-a", base, src["base"]])
            run(["cp", "-a", mod, src["mod"]])
            log(f"building the {a.big_mib} MiB big file and its edited copy")
            os.makedirs(src["big1"])
            os.makedirs(src["big2"])
            big_desc = make_big(os.path.join(src["big1"], "data.bin"), a.big_mib * MiB)
            big_desc["edits"] = make_edited(os.path.join(src["big1"], "data.bin"),
                                            os.path.join(src["big2"], "data.bin"))
            logical = {k: tree_stats(v)[0] for k, v in src.items()}
            b = Bench(exe, mnt)
            for i in range(a.repeat):
                for s in sets:
                    la = os.getloadavg()
                    loads.append({"when": f"run {i + 1} {s}", "loadavg": la})
                    log(f"run {i + 1}/{a.repeat}: {s} (load {la[0]:.2f} {la[1]:.2f} {la[2]:.2f})")
                    results[s].append(b.measure(SETS[s], src))
            loads.append({"when": "end", "loadavg": os.getloadavg()})
    except StepFailed as e:
        log(str(e))
        return 1

    rows = [summarize(s, SETS[s], results[s], logical) for s in sets]
    print_table(rows, changed and changed.get("changed_bytes"), big_desc["edits"]["new_bytes"], a.big_mib)
    l1 = [x["loadavg"][0] for x in loads]
    print(f"load average (1 min) during the run: min {min(l1):.2f}, median {med(l1):.2f}, "
          f"max {max(l1):.2f} on {os.cpu_count()} cpus; {a.repeat} runs per set, "
          f"{time.time() - t_start:.0f} s total")

    version = run([exe, "--version"])[1].strip()
    doc = {
        "benchmark": "chunking",
        "date": utc_now(),
        "host": host_info(f"tmpfs size={a.tmpfs_size}"),
        "spawngrid": version,
        "repeat": a.repeat,
        "aggregate": "median over runs; sets interleaved within each run",
        "mb": "10^6 bytes",
        "load_average": loads,
        "sources": {"base": base, "mod": mod, "logical_bytes": logical, "big_file": big_desc,
                    "modified_changes": changed},
        "index_bytes_per_object_estimate": INDEX_BYTES_PER_OBJECT,
        "rows": rows,
    }
    out = a.output or result_path("chunking", unique=False)
    write_json(out, doc)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
