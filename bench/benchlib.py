# bench/benchlib.py: what the benchmark scripts (bench/library.py, snapfs.py, chunking.py,
# runtime.py) share, so that each of them holds only its own measurements:
#
# - REPO, SPAWNGRID, KiB, MiB, MB: the repository root, the default binary (cargo build
#   --release -p spawngrid) and units (MB = 10^6 bytes, as in every report);
# - arg_parser, comma_list, subset, output_arg: the options every benchmark has (--spawngrid,
#   --base, --output) and comma-separated lists;
# - log, StepFailed, run, last_line: progress lines on stderr; subprocesses (argv, or a string
#   for `bash -o pipefail -c`) in their own process group, with a timeout that kills the whole
#   group, failing with StepFailed("WHAT: exit N: LAST LINE");
# - exit_on_sigterm, rootfs_tree, ensure_tool, version_of: SIGTERM unwinds (so mounts are
#   undone), the cached test trees of scripts/rootfs.sh, peers installed with apt-get when
#   missing, and the first line of a `--version`;
# - tree_stats, du_bytes: logical bytes (regular files, hardlinks once) and entries of a tree,
#   and `du -sb`;
# - fresh_tmpfs, mount_tmpfs, mounts_under, unmount_tree, umount_retry, remove_dir: the tmpfs
#   a run works on, unmounted at the end also on errors (three tries, then lazily);
# - med, pct, summary_ms: medians and nearest-rank percentiles of samples;
# - fmt, table_lines: number cells ("-" for None) and column-aligned text tables;
# - utc_now, cpu_model, host_info, changes_of, result_path, write_json: the common parts of
#   the JSON documents and where they go (bench/results/NAME-<date>.json).
#
# Not a script: each benchmark puts its own directory on sys.path and imports it, so they run
# as `python3 bench/X.py` from the repository root and from bench/ alike.
import argparse
import contextlib
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
SPAWNGRID = os.path.join(REPO, "target", "release", "spawngrid")
KiB, MiB = 1 << 10, 1 << 20
MB = 1e6


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class StepFailed(Exception):
    pass


# -- command line ---------------------------------------------------------------------------

def arg_parser(description=None, base=False):
    """An ArgumentParser with --spawngrid, and with base also --base (the base rootfs)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--spawngrid", default=SPAWNGRID)
    if base:
        ap.add_argument("--base", help="base rootfs (default: scripts/rootfs.sh base)")
    return ap


def comma_list(value):
    return [x.strip() for x in value.split(",") if x.strip()]


def subset(ap, value, known, what):
    """The comma-separated `value` as a list; an argparse error if it names any not in known."""
    items = comma_list(value)
    bad = [x for x in items if x not in known]
    if bad:
        ap.error(f"unknown {what} {bad}; known: {list(known)}")
    return items


def output_arg(ap, name):
    ap.add_argument("--output", help=f"JSON path (default bench/results/{name}-<date>.json)")


# -- subprocesses ----------------------------------------------------------------------------

def last_line(err, out=""):
    """The last non-empty line of stderr (of stdout if stderr is empty), at most 300 chars."""
    lines = [l for l in (err.strip() or out.strip()).splitlines() if l.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


def run(cmd, timeout, cwd=None, env=None, check=True, what=None, stdin=subprocess.DEVNULL,
        preexec_fn=None, err_tail=None):
    """Runs cmd (list, or str for bash -o pipefail -c) in its own process group; kills the
    whole group on timeout (None: no timeout) or on any exception while waiting. Returns
    (seconds, stdout, stderr). A failure says `what` (default: the command) and, with check,
    the exit status and the last line of output, or with err_tail the last err_tail
    characters of stderr."""
    if isinstance(cmd, str):
        argv = ["bash", "-o", "pipefail", "-c", cmd]
    else:
        argv = [str(c) for c in cmd]
    what = what or (cmd if isinstance(cmd, str) else " ".join(shlex.quote(a) for a in argv))
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=preexec_fn)
    except OSError as e:
        raise StepFailed(f"{what}: cannot run: {e.strerror or e}")
    except subprocess.SubprocessError as e:
        raise StepFailed(f"{what}: cannot run: {e}")

    def kill_group():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group()
        p.communicate()
        raise StepFailed(f"{what}: timed out after {timeout}s")
    except BaseException:
        kill_group()
        p.wait()
        raise
    dt = time.perf_counter() - t0
    out = out.decode(errors="replace")
    err = err.decode(errors="replace")
    if check and p.returncode != 0:
        detail = err[-err_tail:] if err_tail else last_line(err, out)
        raise StepFailed(f"{what}: exit {p.returncode}: {detail}")
    return dt, out, err


def exit_on_sigterm():
    """SIGTERM -> SystemExit(143): normal unwinding, so `finally` blocks unmount what they must."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def rootfs_tree(which):
    """The path `scripts/rootfs.sh WHICH` prints (base, modified...): a cached test tree, built
    on first use."""
    log(f"scripts/rootfs.sh {which}")
    return run([os.path.join(REPO, "scripts", "rootfs.sh"), which], 3600,
               what=f"scripts/rootfs.sh {which}")[1].strip()


def ensure_tool(cmd, package, timeout=900):
    """None if `cmd` is on PATH, or once `apt-get install package` puts it there; otherwise
    the reason, "unavailable: ...", for the report."""
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
    """The first line argv prints (stdout, else stderr), or None."""
    try:
        _, out, err = run(argv, 60, check=False)
        return (out.strip() or err.strip()).splitlines()[0]
    except (StepFailed, IndexError):
        return None


# -- trees and mounts ------------------------------------------------------------------------

def tree_stats(root):
    """Logical bytes (regular files, hardlinks once) and entry count of a tree."""
    total = entries = 0
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
                elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total, entries


def du_bytes(path):
    """`du -sb path` in bytes; None if path does not exist."""
    if not os.path.exists(path):
        return None
    _, out, _ = run(["du", "-sb", path], 600, what=f"du -sb {path}")
    return int(out.split()[0])


def mount_tmpfs(mnt, size, source="spawngrid-bench"):
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", source, mnt], 60,
        what="mount tmpfs")


def mounts_under(path):
    """Mount points at or below path (from /proc/self/mountinfo)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


def umount_retry(path):
    """umount path: three tries a second apart (a process may still be leaving it), then
    lazily."""
    for _ in range(3):
        if subprocess.run(["umount", path], stderr=subprocess.DEVNULL).returncode == 0:
            return
        time.sleep(1)
    subprocess.run(["umount", "-l", path])


def unmount_tree(path):
    """Unmounts everything mounted at or below path, deepest first."""
    for m in sorted(mounts_under(path), key=len, reverse=True):
        umount_retry(m)


def remove_dir(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


@contextlib.contextmanager
def fresh_tmpfs(prefix, size, source="spawngrid-bench"):
    """A tmpfs of `size` on a new temporary directory; on exit (also on errors) everything
    mounted below it is unmounted and the directory removed."""
    mnt = tempfile.mkdtemp(prefix=prefix)
    mounted = False
    try:
        mount_tmpfs(mnt, size, source)
        mounted = True
        yield mnt
    finally:
        if mounted:
            unmount_tree(mnt)
        remove_dir(mnt)


# -- statistics ------------------------------------------------------------------------------

def med(xs):
    """The median, or None for no samples."""
    return statistics.median(xs) if xs else None


def pct(vals, p):
    """Nearest-rank percentile (p99 of 50 samples is the maximum)."""
    s = sorted(vals)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def summary_ms(vals):
    """Samples in seconds -> n, p50, p99, mean, min, max and all of them in ms (None if none)."""
    if not vals:
        return None
    ms = [v * 1e3 for v in vals]
    return {"n": len(ms), "p50": statistics.median(ms), "p99": pct(ms, 99),
            "mean": statistics.fmean(ms), "min": min(ms), "max": max(ms),
            "all": [round(v, 3) for v in ms]}


# -- reports ---------------------------------------------------------------------------------

def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def right_after_first(i, cell, n):
    return i > 0


def table_lines(rows, right=right_after_first, wide_labels=False):
    """The lines of a text table, columns two spaces apart; rows[0] is the header. A row
    shorter than the widest is a label and messages (a tool that failed, say): the label is
    padded to the first column and the rest follows as is. right(i, cell, ncols) says which
    cells are right-aligned (default: all but the first column's); with wide_labels the first
    column is as wide as the longest label of any row, short rows included."""
    n = max(len(r) for r in rows)
    w = [max(len(r[i]) for r in rows if len(r) == n) for i in range(n)]
    if wide_labels:
        w[0] = max(len(r[0]) for r in rows)
    lines = []
    for r in rows:
        if len(r) == n:
            lines.append("  ".join(c.rjust(w[i]) if right(i, c, n) else c.ljust(w[i])
                                   for i, c in enumerate(r)).rstrip())
        else:
            lines.append(f"{r[0].ljust(w[0])}  {'  '.join(r[1:])}")
    return lines


def utc_now(timespec="seconds"):
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec=timespec)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def host_info(storage, **extra):
    """The JSON documents' "host": kernel, cpus, cpu_model, the extra keys, storage."""
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu_model(),
            **extra, "storage": storage}


def changes_of(modified):
    """The .changes.json scripts/rootfs.sh writes next to the modified root (None if absent)."""
    path = os.path.join(os.path.dirname(modified.rstrip("/")), ".changes.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def result_path(name, unique=True):
    """bench/results/NAME-<date>.json; with unique, NAME-<date>-2.json, -3... if that exists."""
    d = os.path.join(REPO, "bench", "results")
    os.makedirs(d, exist_ok=True)
    day = datetime.date.today().isoformat()
    out = os.path.join(d, f"{name}-{day}.json")
    n = 2
    while unique and os.path.exists(out):
        out = os.path.join(d, f"{name}-{day}-{n}.json")
        n += 1
    return out


def save_result(name, output, doc):
    """Writes doc to output (given with --output) or to result_path(name); returns the path."""
    out = output or result_path(name)
    write_json(out, doc)
    log(f"wrote {out}")
    return out


def write_json(path, doc):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
