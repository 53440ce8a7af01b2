# bench/cpuwin.py: where the CPU of a short window went, for `bench/grid.py --perf`.
#
# `perf record -a` samples every CPU (idle included) at FREQ Hz with CLOCK_MONOTONIC
# timestamps, the clock of Python's time.perf_counter(), so windows timed by the bench can be
# cut out of the samples afterwards. Each sample is charged to a part of the grid by the name
# of the thread it caught (its `comm`): a sample is ~1 ms of one CPU.
import bisect
import collections
import shutil
import signal
import subprocess

FREQ = 999

# Thread names, first match wins. Garage runs on tokio's default worker names; Spawngrid's
# processes name their threads (`spawngrid-node`, `spawngrid-s3`, `snapfs-*`, `fuser-N`).
PARTS = [
    ("idle", ("swapper",)),
    ("garage", ("tokio-rt-worker",)),
    ("node (API, spawn)", ("spawngrid-node",)),
    ("mount servers (FUSE, fetch, S3 client)",
     ("snapfs-", "fuser-", "block-readahead", "spawngrid-s3", "cache-scan")),
    ("postgres", ("postgres",)),
    ("bench client", ("python3",)),
]
OTHER = "env processes and the rest"


def part_of(comm):
    for part, prefixes in PARTS:
        if comm.startswith(prefixes):
            return part
    return OTHER


class Recorder:
    """`perf record -a` into `path` while the `with` block runs."""

    def __init__(self, path):
        if not shutil.which("perf"):
            raise SystemExit("bench: --perf needs perf: apt-get install linux-perf")
        self.path = path

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["perf", "record", "-a", "-k", "CLOCK_MONOTONIC", "-F", str(FREQ), "-q",
             "-o", self.path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return False


def samples(path):
    """(time, comm) of every sample in the recording, in time order."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,time"],
                         capture_output=True, text=True, check=True).stdout
    got = []
    for line in out.splitlines():
        head, _, rest = line.rpartition(":")
        fields = head.split()
        if rest.strip() or len(fields) < 3:
            continue
        try:
            got.append((float(fields[-1]), " ".join(fields[:-2])))
        except ValueError:
            continue
    got.sort()
    return got


def attribute(recorded, windows):
    """CPU ms per part of the grid per window (mean over `windows`, (start, end) pairs)."""
    counts = collections.Counter()
    times = [t for t, _ in recorded]
    for start, end in windows:
        for _, comm in recorded[bisect.bisect_left(times, start):bisect.bisect_left(times, end)]:
            counts[part_of(comm)] += 1
    n = max(1, len(windows))
    return {part: round(c * 1000 / FREQ / n, 1) for part, c in counts.most_common()}
