#!/usr/bin/env python3
# bench/snapfs.py: the snapshot filesystem benchmark. Everything runs on a fresh loop-mounted
# ext4 image (the "native" filesystem); prints one table and writes JSON to
# bench/results/snapfs-<date>.json. Run as root:
#
#   python3 bench/snapfs.py [--spawngrid target/release/spawngrid] [--repeat 5]
#                           [--image-size 24G] [--skip-5g]
#
# Measured (see bench/README.md, "Snapshot filesystem"):
# - mount time of snapshots of ~50 MB, ~500 MB and ~5 GB (synthetic trees): the record's
#   mount_us (the keeper's mount call plus the server's root-tree decode and FUSE handshake)
#   and the wall time of `spawngrid lib mount` (process starts, library index load, catalog);
# - `find -printf` metadata walk and `tar c | cat >/dev/null` of the debootstrap tree, and a
#   sequential read of a 1 GiB file, cold and warm, on: native ext4 (the image), an exported
#   copy bind-mounted, and snapfs (cache on the same ext4).
#   cold = `echo 3 > drop_caches`; for snapfs also a fresh mount and an empty file cache.
#   warm = the same command again right after.
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (MiB, StepFailed, arg_parser, log, result_path, rootfs_tree,  # noqa: E402
                      run, utc_now, write_json)


def sh(cmd, check=True):
    """Runs a bash command (no timeout); returns (seconds, stdout). A failure ends the bench."""
    try:
        dt, out, _ = run(cmd, None, check=check)
    except StepFailed as e:
        raise SystemExit(f"bench: failed: {e}")
    return dt, out


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


class Grid:
    def __init__(self, sg, work):
        self.sg, self.work = sg, work
        self.data = os.path.join(work, "data")
        self.cache = os.path.join(work, "cache")

    def lib(self, *args):
        return sh(" ".join([self.sg, "lib", "--data", self.data] + [f"'{a}'" for a in args]))

    def record(self, mnt):
        for f in os.listdir(os.path.join(self.data, "mounts")):
            if f.endswith(".json"):
                r = json.load(open(os.path.join(self.data, "mounts", f)))
                if r["dir"] == os.path.realpath(mnt):
                    return r
        raise SystemExit(f"bench: no mount record for {mnt}")

    def mount(self, name, mnt):
        os.makedirs(mnt, exist_ok=True)
        dt, _ = self.lib("mount", name, mnt, "--cache", self.cache, "--cache-size", "20G")
        return dt, self.record(mnt)["mount_us"] / 1e6

    def umount(self, mnt):
        self.lib("umount", mnt)

    def umount_live(self, *mnts):
        for m in mnts:
            if os.path.ismount(m):
                self.umount(m)


def make_tree(root, total, small=25_000, big=256 * MiB):
    """A synthetic tree of about `total` bytes: unique small files in 100-file directories
    (10% of the bytes, at most 20000 files), the rest in sparse zero-filled big files (cheap
    to build and to import: they deduplicate to one chunk)."""
    os.makedirs(root)
    n_small = min(20_000, max(100, int(total * 0.1) // small))
    for i in range(n_small):
        d = os.path.join(root, f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(os.urandom(small // 2) + bytes(small - small // 2))
    left = total - n_small * small
    os.makedirs(os.path.join(root, "big"))
    i = 0
    while left > 0:
        size = min(big, left)
        with open(os.path.join(root, "big", f"b{i:03d}"), "wb") as f:
            f.truncate(size)
        left -= size
        i += 1


def make_1g(path):
    """1 GiB, about 2:1 compressible and unique: every 64 KiB block is half random, half zero."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(1024 * 16):
            f.write(os.urandom(32 * 1024) + bytes(32 * 1024))


def median_of(fn, n):
    vals = [fn() for _ in range(n)]
    return statistics.median(vals), vals


def main():
    ap = arg_parser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--image-size", default="24G")
    ap.add_argument("--skip-5g", action="store_true")
    ap.add_argument("--output")
    a = ap.parse_args()
    sg = os.path.abspath(a.spawngrid)
    try:
        base = rootfs_tree("base")
    except StepFailed as e:
        raise SystemExit(f"bench: {e}")
    tmp = tempfile.mkdtemp(prefix="snapfs-bench-", dir="/var/tmp")
    img, work = os.path.join(tmp, "ext4.img"), os.path.join(tmp, "w")
    os.makedirs(work)
    sh(f"truncate -s {a.image_size} {img} && mkfs.ext4 -q -F {img} && mount -o loop {img} {work}")
    mounts = []
    results = {"date": utc_now("auto"),
               "kernel": os.uname().release, "cpus": os.cpu_count(), "base_rootfs": base}
    try:
        g = Grid(sg, work)
        # Snapshots for the mount-time series.
        sizes = [("50MB", 50_000_000), ("500MB", 500_000_000)]
        if not a.skip_5g:
            sizes.append(("5GB", 5_000_000_000))
        for label, total in sizes:
            src = os.path.join(work, "src", label)
            log(f"building and importing the {label} tree")
            make_tree(src, total)
            g.lib("import", f"s{label}", src)
        log("importing the debootstrap tree and a 1 GiB file")
        native_tree, native_big = os.path.join(work, "native/tree"), os.path.join(work, "native/big")
        sh(f"mkdir -p {os.path.dirname(native_tree)} && cp -a {base} {native_tree}")
        make_1g(os.path.join(native_big, "1g.bin"))
        g.lib("import", "tree", native_tree)
        g.lib("import", "big", native_big)
        for n in ["tree", "big"]:
            ex, bind = os.path.join(work, "extract", n), os.path.join(work, "bind", n)
            os.makedirs(os.path.dirname(ex), exist_ok=True)
            g.lib("export", n, ex)
            os.makedirs(bind)
            sh(f"mount --bind {ex} {bind}")
            mounts.append(bind)

        # Mount time (after writeback of the imports, which otherwise stalls file creation).
        sh("sync")
        mt = {}
        for label, _ in sizes:
            mnt = os.path.join(work, "mnt", f"s{label}")
            runs = []
            for _ in range(a.repeat):
                runs.append(g.mount(f"s{label}", mnt))
                g.umount(mnt)
            mt[label] = {"server_ms": statistics.median(r[1] for r in runs) * 1e3,
                         "cli_ms": statistics.median(r[0] for r in runs) * 1e3,
                         "server_ms_all": [r[1] * 1e3 for r in runs]}
            log(f"mount {label}: {mt[label]}")
        results["mount"] = mt

        # Walk, tar, read on the three setups.
        snap_tree, snap_big = os.path.join(work, "mnt/tree"), os.path.join(work, "mnt/big")
        setups = {
            "native": (native_tree, native_big, None),
            "bind": (os.path.join(work, "bind/tree"), os.path.join(work, "bind/big"), None),
            "snapfs": (snap_tree, snap_big, True),
        }
        cmds = {
            "walk": lambda t, b: f"find {t} -printf '%p %m %U %G %s %T@ %l\\n' > /dev/null",
            "tar": lambda t, b: f"tar cf - -C {t} . | cat > /dev/null",
            "read1g": lambda t, b: f"dd if={b}/1g.bin of=/dev/null bs=1M status=none",
        }
        bench = {}
        for setup, (t, b, is_snap) in setups.items():
            for what, cmd in cmds.items():
                if is_snap:
                    g.umount_live(snap_tree, snap_big)
                    sh(f"rm -rf {g.cache}")
                    g.mount("tree", snap_tree)
                    g.mount("big", snap_big)
                drop_caches()
                cold, _ = sh(cmds[what](t, b))
                warm, allw = median_of(lambda: sh(cmds[what](t, b))[0], a.repeat)
                bench[f"{setup}/{what}"] = {"cold_s": cold, "warm_s": warm, "warm_all": allw}
                log(f"{setup} {what}: cold {cold:.3f} s, warm {warm:.3f} s")
        g.umount_live(snap_tree, snap_big)
        results["io"] = bench
        gib = (1 << 30) / 1e6
        for k, v in bench.items():
            if k.endswith("read1g"):
                v["cold_MBps"], v["warm_MBps"] = gib / v["cold_s"], gib / v["warm_s"]
    finally:
        for m in reversed(mounts):
            sh(f"umount -l {m}", check=False)
        for d in ["mnt/tree", "mnt/big"]:
            sh(f"umount -l {os.path.join(work, d)}", check=False)
        sh(f"umount -l {work}", check=False)
        sh(f"rm -rf {tmp}", check=False)

    # Table.
    print("\nmount time (median of %d)" % a.repeat)
    print(f"{'snapshot':<10}{'server ms':>12}{'lib mount ms':>15}")
    for label, v in results["mount"].items():
        print(f"{label:<10}{v['server_ms']:>12.2f}{v['cli_ms']:>15.1f}")
    print("\nI/O (seconds; ratio = snapfs / native, <1 is faster)")
    print(f"{'test':<8}{'state':<6}{'native':>9}{'bind':>9}{'snapfs':>9}{'ratio':>8}")
    io = results["io"]
    ratios = {}
    for what in cmds:
        for state in ["cold", "warm"]:
            n, bnd, s = (io[f"{x}/{what}"][f"{state}_s"] for x in ["native", "bind", "snapfs"])
            ratios[f"{what}_{state}"] = s / n
            print(f"{what:<8}{state:<6}{n:>9.3f}{bnd:>9.3f}{s:>9.3f}{s / n:>8.2f}")
    results["ratios_snapfs_over_native"] = ratios
    for state in ["cold", "warm"]:
        print(f"read1g {state}: native {io['native/read1g'][state + '_MBps']:.0f} MB/s, "
              f"snapfs {io['snapfs/read1g'][state + '_MBps']:.0f} MB/s")
    out = a.output or result_path("snapfs", unique=False)
    write_json(out, results)
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
